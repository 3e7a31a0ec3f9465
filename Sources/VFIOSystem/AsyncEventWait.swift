import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension EventFD {
    /// Suspends until the counter is non-zero or `timeout` passes (nil:
    /// forever); returns the count read, or nil on timeout. The blocking
    /// ``wait(timeout:)-6sc0d`` for Swift concurrency: no thread of the cooperative
    /// pool blocks. A thread of the eventfd's own (started by the first async
    /// wait, kept until the eventfd closes) polls it with the deadline and
    /// resumes the task, so one wait costs a thread handoff and no thread start.
    ///
    /// One async wait at a time per eventfd (each read takes the whole
    /// count); a second one throws. Task cancellation ends the wait at once
    /// with an error whose detail is "cancelled"; ``close()`` ends it with "closed".
    public func wait(timeout: Duration? = nil) async throws(VFIOError) -> UInt64? {
        if Task.isCancelled { throw VFIOError.invalid(.step(.waitForEventFD), "cancelled", object: fd.label) }
        let waits = try asyncWaits()
        return try await waits.wait(timeout: timeout)
    }

    /// The thread that serves async waits, started on first use.
    private func asyncWaits() throws(VFIOError) -> AsyncEventWaits {
        try asyncWaiter.withLock { (w) throws(VFIOError) -> AsyncEventWaits in
            if let w, !w.hasEnded { return w }
            let new = try AsyncEventWaits(fd)
            w = new
            return new
        }
    }
}

/// The async waits of one ``EventFD``: one thread holds a use of the fd for
/// its life and serves one waiting task at a time, with a deadline. It polls
/// only its wake eventfd while no task waits (so a count that arrives then
/// stays for the next wait) and ends when the eventfd closes.
final class AsyncEventWaits: Sendable {
    typealias Continuation = UnsafeContinuation<Result<UInt64?, VFIOError>, Never>

    struct Request {
        var id: UInt64
        var deadline: ContinuousClock.Instant?
        var continuation: Continuation
        var cancelled: Bool
    }

    struct State {
        var request: Request?
        var nextID: UInt64 = 0
        /// The last wait cancelled, also while the thread holds its request.
        var cancelledID: UInt64 = 0
        /// Set when the thread ended (the eventfd closed, or a read failed).
        var ended: VFIOError?
    }

    let fd: OwnedFD
    let waiter: ReadinessWait
    let state = Mutex(State())

    init(_ fd: OwnedFD) throws(VFIOError) {
        self.fd = fd
        waiter = try ReadinessWait(fd)
        do throws(VFIOError) {
            try waiter.begin(.step(.waitForEventFD))
        } catch {
            try? waiter.wake.close()
            throw error
        }
        do throws(VFIOError) {
            try Sys.startThread(fd.kernel, object: fd.label) { [self] in run() }
        } catch {
            waiter.end()
            var e = error
            e.detail = "no thread to wait on \(fd.label)"
            throw e
        }
    }

    var hasEnded: Bool { state.withLock { $0.ended != nil } }

    func wait(timeout: Duration?) async throws(VFIOError) -> UInt64? {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        let id = state.withLock { s -> UInt64 in
            s.nextID &+= 1
            return s.nextID
        }
        let result: Result<UInt64?, VFIOError> = await withTaskCancellationHandler {
            await withUnsafeContinuation { (c: Continuation) in
                let refused: VFIOError? = state.withLock { s in
                    if let e = s.ended { return e }
                    if s.request != nil {
                        return VFIOError.invalid(.step(.waitForEventFD), "another task is already waiting on it; each "
                                                     + "read takes the whole count, so one waiter at a time",
                                                 object: fd.label)
                    }
                    s.request = Request(id: id, deadline: deadline, continuation: c, cancelled: Task.isCancelled)
                    return nil
                }
                if let refused { c.resume(returning: .failure(refused)) } else { waiter.wakeUp() }
            }
        } onCancel: {
            state.withLock { s in
                s.cancelledID = id
                if s.request?.id == id { s.request?.cancelled = true }
            }
            waiter.wakeUp()
        }
        return try result.get()
    }

    private enum Step {
        case idle
        case poll(Duration?)
        case resume(Continuation, Result<UInt64?, VFIOError>)
    }

    /// The thread: decide, poll, read, resume; until the eventfd closes.
    private func run() {
        defer { waiter.end() }
        while true {
            let step = state.withLock { s -> Step in
                guard let r = s.request else { return .idle }
                if r.cancelled {
                    s.request = nil
                    return .resume(r.continuation, .failure(.invalid(.step(.waitForEventFD), "cancelled", object: fd.label)))
                }
                guard let deadline = r.deadline else { return .poll(nil) }
                let left = deadline - ContinuousClock.now
                if left <= .zero {
                    s.request = nil
                    return .resume(r.continuation, .success(nil))
                }
                return .poll(left)
            }
            let outcome: ReadinessWait.Outcome
            do throws(VFIOError) {
                switch step {
                case .resume(let c, let result):
                    c.resume(returning: result)
                    continue
                case .idle: outcome = try waiter.pollWake()
                case .poll(let left): outcome = try waiter.poll(timeout: left)
                }
            } catch {
                finish(error)
                return
            }
            switch outcome {
            case .timedOut: continue  // the next round resumes the waiter with nil
            case .woken: waiter.drainWake()
            case .closed:
                finish(fd.closedError(.step(.waitForEventFD)))
                return
            case .readable:
                // Take the waiter before reading, so a count is never read for nobody.
                guard let request = state.withLock({ s -> Request? in
                    defer { s.request = nil }
                    return s.request
                }) else { continue }
                var value: UInt64 = 0
                let n: Int?
                do throws(VFIOError) {
                    n = try withUnsafeMutableBytes(of: &value) { (b) throws(VFIOError) in try fd.readHeld(b, object: nil) }
                } catch {
                    request.continuation.resume(returning: .failure(error))
                    finish(error)
                    return
                }
                if fd.isClosed {  // the count may hold the close's own signal
                    let e = fd.closedError(.step(.waitForEventFD))
                    request.continuation.resume(returning: .failure(e))
                    finish(e)
                    return
                }
                if n == 8 {
                    request.continuation.resume(returning: .success(value))
                } else {
                    // Another reader took the count first (EAGAIN): the request waits on.
                    state.withLock { s in
                        var r = request
                        r.cancelled = r.cancelled || s.cancelledID == r.id
                        s.request = r
                    }
                }
            }
        }
    }

    /// Ends the thread's service: the waiter (if any) and every later wait get `error`.
    private func finish(_ error: VFIOError) {
        let pending = state.withLock { s -> Continuation? in
            s.ended = error
            defer { s.request = nil }
            return s.request?.continuation
        }
        pending?.resume(returning: .failure(error))
    }
}
