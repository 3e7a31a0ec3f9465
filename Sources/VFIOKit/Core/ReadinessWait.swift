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
final class ReadinessWait: Sendable {
    let target: OwnedFD
    let wake: OwnedFD
    private let closeWaker = Mutex<Int?>(nil)

    /// What one poll ended with.
    enum Outcome { case readable, timedOut, closed, woken }

    /// Makes the wake eventfd, served by the target's kernel.
    init(_ target: OwnedFD) throws(VFIOError) {
        self.target = target
        let raw = try Sys.eventfd(target.kernel, flags: CVFIO_EFD_NONBLOCK)
        wake = OwnedFD(raw, label: "wake eventfd of \(target.label)", kernel: target.kernel)
    }

    /// Ends a wait in progress (or the next one) from any thread. After
    /// ``end()`` it does nothing (the wake fd is closed, so no number is touched).
    func wakeUp() {
        var one: UInt64 = 1
        _ = try? withUnsafeBytes(of: &one) { (b) throws(VFIOError) in try wake.write(b) }
    }

    /// Takes a use of the fd and registers for its close; "closed" when it is.
    func begin(_ operation: String) throws(VFIOError) {
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
    func poll(timeoutMilliseconds: Int32) throws(VFIOError) -> Outcome {
        try wake.withDescriptor("poll") { (w) throws(VFIOError) -> Outcome in
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
    func end() {
        if let id = closeWaker.withLock({ $0.take() }) { target.removeCloseWaker(id) }
        target.leave()
        try? wake.close()
    }

    /// One wait from start to end: true when readable, false on timeout.
    /// Throws "closed" when the owner closed, "cancelled" when woken.
    func run(timeoutMilliseconds: Int32, operation: String, object: String) throws(VFIOError) -> Bool {
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
    func readable(operation: String, object: String) async throws(VFIOError) {
        if Task.isCancelled { throw VFIOError.invalid(operation, "cancelled", object: object) }
        let wait = try ReadinessWait(self)
        let result: Result<Bool, VFIOError> = await withTaskCancellationHandler {
            await withUnsafeContinuation { (c: UnsafeContinuation<Result<Bool, VFIOError>, Never>) in
                let started = DetachedThread.start {
                    c.resume(returning: Result { () throws(VFIOError) -> Bool in
                        try wait.run(timeoutMilliseconds: -1, operation: operation, object: object)
                    })
                }
                if let failure = started {
                    try? wait.wake.close()
                    c.resume(returning: .failure(VFIOError(operation: "pthread_create", errno: failure, object: object,
                                                           detail: "no thread to wait on \(label)")))
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
    func waitReadableOrClose(timeoutMilliseconds: Int32, operation: String) throws(VFIOError) -> Bool {
        try ReadinessWait(self).run(timeoutMilliseconds: timeoutMilliseconds, operation: operation, object: label)
    }
}

/// Starts detached threads (not from Swift's cooperative pool) for blocking waits.
enum DetachedThread {
    private final class Body: Sendable {
        let run: @Sendable () -> Void
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }

    /// Runs `body` on a new detached thread. Returns nil, or the errno of
    /// `pthread_create` when no thread could start (then `body` never runs).
    static func start(_ body: @escaping @Sendable () -> Void) -> Errno? {
        let context = Unmanaged.passRetained(Body(body)).toOpaque()
        var thread = pthread_t()
        let r = pthread_create(&thread, nil, { arg in
            Unmanaged<Body>.fromOpaque(arg!).takeRetainedValue().run()
            return nil
        }, context)
        if r != 0 {
            Unmanaged<Body>.fromOpaque(context).release()
            return Errno(rawValue: r)
        }
        pthread_detach(thread)
        return nil
    }
}

import SystemPackage
