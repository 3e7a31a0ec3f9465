import CVFIO
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A wait in `poll(2)` for an owned fd to become readable that something else
/// can end at once: a second eventfd (the wake fd) is polled with it, and
/// cancellation, a stopped iterator or the owner's close signal it.
///
/// The wait holds a use of the fd from ``begin(_:)`` to ``end()``, so the
/// number stays open (a close meanwhile is deferred to ``end()``), and it is
/// registered with the owner, so a close wakes it instead of leaving it asleep
/// on a number that is about to go.
package final class ReadinessWait: Sendable {
    package let target: OwnedFD
    package let wake: OwnedFD
    private let closeWaker = Mutex<Int?>(nil)

    /// What one poll ended with.
    package enum Outcome { case readable, timedOut, closed, woken }

    /// Makes the wake eventfd, served by the target's kernel.
    package init(_ target: OwnedFD) throws(VFIOError) {
        self.target = target
        let raw = try Sys.eventfd(target.kernel, flags: CVFIO_EFD_NONBLOCK)
        wake = OwnedFD(raw, label: "wake eventfd of \(target.label)", kernel: target.kernel)
    }

    /// Ends a wait in progress (or the next one) from any thread. After
    /// ``end()`` it does nothing (the wake fd is closed, so no number is touched).
    package func wakeUp() {
        var one: UInt64 = 1
        _ = try? withUnsafeBytes(of: &one) { (b) throws(VFIOError) in try wake.write(b) }
    }

    /// Takes a use of the fd and registers for its close; "closed" when it is.
    package func begin(_ operation: VFIOError.Operation) throws(VFIOError) {
        guard target.enter() else { throw target.closedError(operation) }
        guard let id = target.onClose({ [self] in wakeUp() }) else {
            target.leave()
            throw target.closedError(operation)
        }
        closeWaker.withLock { $0 = id }
    }

    /// Blocks until the fd is readable (or reports an error, which the
    /// following read will name), the timeout passes (-1: never), the owner
    /// closes, or ``wakeUp()``. Between ``begin(_:)`` and ``end()`` only.
    package func poll(timeoutMilliseconds: Int32) throws(VFIOError) -> Outcome {
        try wake.withDescriptor(.syscall(.poll)) { (w) throws(VFIOError) -> Outcome in
            var fds = (pollfd(fd: target.number, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: w, events: Int16(POLLIN), revents: 0))
            let n = try withUnsafeMutableBytes(of: &fds) { (raw) throws(VFIOError) -> Int32 in
                try target.pollHeld(raw.baseAddress!.assumingMemoryBound(to: pollfd.self), count: 2,
                                    timeoutMilliseconds: timeoutMilliseconds)
            }
            if n == 0 { return .timedOut }
            if target.isClosed { return .closed }
            if fds.0.revents & Int16(POLLIN | POLLERR | POLLHUP) != 0 { return .readable }
            return .woken
        }
    }

    /// Gives back the use (closing the fd if it was closed meanwhile) and
    /// closes the wake fd.
    package func end() {
        if let id = closeWaker.withLock({ $0.take() }) { target.removeCloseWaker(id) }
        target.leave()
        try? wake.close()
    }

    /// One wait from start to end: true when readable, false on timeout.
    /// Throws "closed" when the owner closed, "cancelled" when woken.
    package func run(timeoutMilliseconds: Int32, operation: VFIOError.Operation, object: String) throws(VFIOError) -> Bool {
        defer { try? wake.close() }
        try begin(operation)
        defer { end() }
        switch try poll(timeoutMilliseconds: timeoutMilliseconds) {
        case .readable: return true
        case .timedOut: return false
        case .closed: throw target.closedError(operation)
        case .woken: throw VFIOError.invalid(operation, "cancelled", object: object)
        }
    }
}

extension OwnedFD {
    /// Suspends until the fd is readable, without blocking a thread of Swift's
    /// cooperative pool: a dedicated thread waits in `poll(2)`. Task
    /// cancellation ends the wait at once with an error whose detail is
    /// "cancelled"; the owner's close ends it with "closed".
    package func readable(operation: VFIOError.Operation, object: String) async throws(VFIOError) {
        if Task.isCancelled { throw VFIOError.invalid(operation, "cancelled", object: object) }
        let wait = try ReadinessWait(self)
        let result: Result<Bool, VFIOError> = await withTaskCancellationHandler {
            await withUnsafeContinuation { (c: UnsafeContinuation<Result<Bool, VFIOError>, Never>) in
                do throws(VFIOError) {
                    try Sys.startThread(kernel, object: object) {
                        c.resume(returning: Result { () throws(VFIOError) -> Bool in
                            try wait.run(timeoutMilliseconds: -1, operation: operation, object: object)
                        })
                    }
                } catch {
                    try? wait.wake.close()
                    var e = error
                    e.detail = "no thread to wait on \(label)"
                    c.resume(returning: .failure(e))
                }
            }
        } onCancel: {
            wait.wakeUp()
        }
        _ = try result.get()
    }

    /// Blocks the calling thread until the fd is readable (true) or the
    /// timeout passes (false; -1 waits forever). A close of the owner from
    /// another thread ends the wait at once with "closed".
    package func waitReadableOrClose(timeoutMilliseconds: Int32, operation: VFIOError.Operation) throws(VFIOError) -> Bool {
        try ReadinessWait(self).run(timeoutMilliseconds: timeoutMilliseconds, operation: operation, object: label)
    }
}

import SystemPackage
