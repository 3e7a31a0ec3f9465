import CVFIO
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An eventfd: the kernel signals a device interrupt (or a request to release
/// the device) by adding to its counter.
///
/// Three ways to wait, each with a timeout but the sequence:
/// - ``wait(timeout:)-6sc0d`` blocks the calling thread in `ppoll(2)` (nanosecond
///   resolution) and reads the counter: no allocation, no locks, one syscall
///   pair per interrupt. Use it from your own threads (a driver's completion
///   thread), not from Swift concurrency's cooperative pool.
/// - `await wait(timeout:)`, its async twin: the task suspends while a thread
///   of the eventfd's own polls with the deadline (see the async overload).
/// - ``interrupts()`` is an `AsyncSequence` for Swift concurrency: a dedicated
///   thread (one per sequence, not from the cooperative pool) blocks in
///   `poll(2)` and yields each count; cancelling the task or dropping the
///   iterator stops the thread through a second eventfd. Tasks awaiting it never
///   block a pool thread.
/// - ``interrupts(on:)`` is the same sequence polled by an ``InterruptExecutor``'s
///   thread, which also runs the awaiting task (it prefers that executor): each
///   count resumes the task on the thread that read it, with no hand-off and no
///   allocation. For a driver's completion loop; it costs the executor's thread.
/// - ``withInterrupts(on:_:)`` and ``withInterrupts(_:)`` run a closure with those
///   sequences under one cancellation handler for the whole call instead of one
///   per `next()`: the cheapest async waits (about half the instructions per
///   interrupt on an executor), for a loop that lives in one scope.
/// Do not use both on one eventfd at the same time: each read consumes the count.
///
/// ``close()`` ends both: a blocked ``wait(timeout:)-6sc0d`` throws "closed" and the
/// sequence ends; the fd itself closes when the last of them has returned
/// (see ``OwnedFD``), so the kernel never sees its number after the close.
public final class EventFD: Sendable {
    /// The eventfd's descriptor (what `VFIO_DEVICE_SET_IRQS` is given).
    public let fd: OwnedFD
    /// The thread serving async waits (``wait(timeout:)-9n4dt`` from async code), once one ran.
    let asyncWaiter = Mutex<AsyncEventWaits?>(nil)

    /// A non-blocking eventfd (the reads here never block; waits use poll).
    /// With `semaphore`, each read takes 1 instead of the whole count.
    public init(semaphore: Bool = false) throws(VFIOError) {
        let flags = CVFIO_EFD_NONBLOCK | (semaphore ? CVFIO_EFD_SEMAPHORE : 0)
        let kernel = Sys.current
        let raw = try Sys.eventfd(kernel, flags: flags)
        fd = OwnedFD(raw, label: "eventfd \(raw)", kernel: kernel)
    }

    /// Reads and resets the counter; nil when it is zero.
    @inline(__always)
    public func consume() throws(VFIOError) -> UInt64? {
        var value: UInt64 = 0
        let n = try withUnsafeMutableBytes(of: &value) { (raw) throws(VFIOError) -> Int? in
            try fd.read(raw)
        }
        return n == 8 ? value : nil
    }

    /// Blocks until the counter is non-zero or `timeout` passes (nil: forever);
    /// returns the count read (the number of signals since the last read), or
    /// nil on timeout. Throws "closed" when the eventfd is closed, also by
    /// another thread while this one waits.
    public func wait(timeout: Duration? = nil) throws(VFIOError) -> UInt64? {
        // poll, then read: the same two syscalls a C driver makes per interrupt,
        // inside one use of the fd (a close meanwhile signals it to wake us).
        guard fd.enter() else { throw fd.closedError(.step(.waitForEventFD)) }
        defer { fd.leave() }
        let number = fd.number
        while true {
            var pfd = pollfd(fd: number, events: Int16(POLLIN), revents: 0)
            let ready = try fd.pollHeld(&pfd, count: 1, timeout: timeout)
            if ready == 0 { return nil }
            if fd.isClosed { throw fd.closedError(.step(.waitForEventFD)) }
            var value: UInt64 = 0
            let n = try withUnsafeMutableBytes(of: &value) { (raw) throws(VFIOError) -> Int? in
                try fd.readHeld(raw, object: nil)
            }
            // A count read after the close may include the close's own signal: drop it.
            if fd.isClosed { throw fd.closedError(.step(.waitForEventFD)) }
            if n == 8 { return value }
            // Another reader took the count first: wait again.
        }
    }

    /// Adds `value` to the counter (what the kernel does on an interrupt).
    public func signal(_ value: UInt64 = 1) throws(VFIOError) {
        var v = value
        _ = try withUnsafeBytes(of: &v) { (raw) throws(VFIOError) -> Int in try fd.write(raw) }
    }

    /// Each signal as a count, delivered to Swift concurrency by a dedicated thread.
    public func interrupts() -> Interrupts { Interrupts(eventfd: self) }

    /// Runs `body` with ``interrupts()`` of this eventfd whose `next()` costs
    /// less: one cancellation handler covers the whole call instead of one per
    /// `next()` (cancelling the task still ends a waiting `next()` at once with
    /// nil). The iterators made from the sequence stop when `body` returns.
    public nonisolated(nonsending) func withInterrupts<R, E: Error>(
        _ body: nonisolated(nonsending) (Interrupts) async throws(E) -> R
    ) async throws(E) -> R {
        try await InterruptScope.run { (scope) throws(E) in try await body(Interrupts(eventfd: self, scope: scope)) }
    }

    /// Closes the eventfd. Waiters in ``wait(timeout:)-6sc0d`` and ``interrupts()``
    /// are woken (they end with "closed" and the end of the sequence); the
    /// number is closed when the last of them has left.
    public func close() throws(VFIOError) {
        try fd.close(wakingUsers: { number in
            var one: UInt64 = 1
            _ = withUnsafeBytes(of: &one) { b in Sys.call(fd.kernel) { $0.write(number, b) } }
        })
    }

    /// Closes the eventfd if ``close()`` did not (and ends the thread of its
    /// async waits, which holds a use of the fd).
    deinit { try? close() }

    /// The signals of an ``EventFD`` as an async sequence of counts.
    public struct Interrupts: AsyncSequence, Sendable {
        /// The count read: signals since the last read (counts read while no
        /// task waited are summed into the next element).
        public typealias Element = UInt64
        /// The sequence never throws: a closed eventfd or a cancelled task ends it.
        public typealias Failure = Never
        let eventfd: EventFD
        /// Set by ``EventFD/withInterrupts(_:)``: cancellation is handled once for its scope.
        let scope: InterruptScope?

        init(eventfd: EventFD, scope: InterruptScope? = nil) {
            self.eventfd = eventfd
            self.scope = scope
        }

        /// Starts the waiter thread; it stops when the iterator is dropped or its
        /// task is cancelled, and the sequence ends when the eventfd closes.
        public func makeAsyncIterator() -> Iterator {
            guard let wait = try? ReadinessWait(eventfd.fd) else { return Iterator(feed: nil) }
            let feed = InterruptFeed(eventfd: eventfd, wait: wait, scoped: scope != nil)
            // Adopted before it starts: made after its scope ended, it never reads a count.
            scope?.adopt(feed)
            feed.start()
            return Iterator(feed: feed)
        }

        /// The counts, one await each. Not an `AsyncStream`: its generic code,
        /// unspecialised in the concurrency library, cost about 5,000 user
        /// instructions (13 generic metadata lookups) and one allocation per
        /// count (callgrind, vfiokit-bench).
        public struct Iterator: AsyncIteratorProtocol {
            let handle: IteratorHandle

            init(feed: InterruptFeed?) { handle = IteratorHandle(feed) }

            /// The next count; nil once the eventfd closed (after the counts
            /// read before), the task was cancelled, or no thread could start.
            public nonisolated(nonsending) mutating func next() async -> UInt64? {
                guard let feed = handle.feed else { return nil }
                return await feed.next()
            }

            /// ``next()`` on the caller's actor (no hop to the global executor and back).
            public mutating func next(isolation actor: isolated (any Actor)?) async -> UInt64? {
                guard let feed = handle.feed else { return nil }
                return await feed.next()
            }
        }
    }
}

/// Stops an ``EventFD/Interrupts`` thread when the last copy of its iterator goes.
final class IteratorHandle: Sendable {
    let feed: InterruptFeed?
    init(_ feed: InterruptFeed?) { self.feed = feed }
    deinit { feed?.stop() }
}

/// The thread behind ``EventFD/Interrupts`` and what it hands over: holds a
/// use of the eventfd for its whole life, polls it with a wake eventfd, and
/// resumes the waiting task with each count (or keeps the count for the next
/// `next()`). It exits when the iterator stops, the eventfd closes, or a read
/// fails. The eventfd's close(2), when it was closed meanwhile, happens as
/// this thread leaves. Allocates nothing per count.
final class InterruptFeed: StoppableFeed {
    let eventfd: EventFD
    let wait: ReadinessWait
    let handoff = CountHandoff()
    /// Made inside an ``InterruptScope``, whose one cancellation handler stops it.
    let scoped: Bool

    init(eventfd: EventFD, wait: ReadinessWait, scoped: Bool) {
        self.eventfd = eventfd
        self.wait = wait
        self.scoped = scoped
    }

    /// Starts the thread; when none can start (pthread_create fails), the
    /// sequence ends at once (it has no error to carry).
    func start() {
        if handoff.isFinished {  // stopped already (its scope ended): no thread
            try? wait.wake.close()
            return
        }
        do throws(VFIOError) {
            try Sys.startThread(eventfd.fd.kernel, object: eventfd.fd.label) { [self] in run() }
        } catch {
            try? wait.wake.close()
            finish()
        }
    }

    @inline(__always)
    nonisolated(nonsending) func next() async -> UInt64? {
        if scoped { return await handoff.next() }
        return await handoff.next { [self] in stop() }
    }

    /// The iterator stopped (dropped, or its task cancelled): a waiting task
    /// gets nil, and the thread is woken to leave.
    func stop() {
        handoff.finish()
        wait.wakeUp()
    }

    /// The thread ends: a waiting task gets nil (counts kept before are still taken).
    private func finish() { handoff.finish() }

    private func run() {
        defer { finish() }
        do throws(VFIOError) {
            try wait.begin(.step(.waitForEventFD))
        } catch {
            try? wait.wake.close()
            return
        }
        defer { wait.end() }
        let fd = eventfd.fd
        while true {
            guard case .readable? = try? wait.poll(timeout: nil) else { return }
            var value: UInt64 = 0
            let n: Int?
            do throws(VFIOError) {
                n = try withUnsafeMutableBytes(of: &value) { (b) throws(VFIOError) in try fd.readHeld(b, object: nil) }
            } catch {
                return  // the eventfd failed
            }
            if fd.isClosed { return }  // the count may hold the close's own signal
            // nil: another reader took the count (EAGAIN); poll again.
            if n == 8, !handoff.deliver(value) { return }
        }
    }
}

/// The hand-over of counts from a thread that reads an eventfd to the task
/// that awaits them (``EventFD/Interrupts`` and ``EventFD/ExecutorInterrupts``):
/// a count finds the waiting task or is kept, summed, for the next `next()`.
/// Allocates nothing per count.
final class CountHandoff: Sendable {
    typealias Continuation = UnsafeContinuation<UInt64?, Never>

    struct State {
        /// Counts read while no task waited, summed.
        var pending: UInt64 = 0
        /// The task waiting in ``next(isolation:)``.
        var waiter: Continuation?
        /// The reader is gone or the iterator stopped: after `pending`, nil.
        var finished = false

        /// What ``next(isolation:)`` gets without waiting.
        mutating func take() -> Now {
            if pending > 0 {
                defer { pending = 0 }
                return .value(pending)
            }
            return finished ? .end : .wait
        }
    }

    enum Now { case value(UInt64), end, wait }

    let state = Mutex(State())

    /// Finished (``finish()``): no count is handed over any more.
    var isFinished: Bool { state.withLock { $0.finished } }

    /// The next count, waiting for one when none is kept; nil once finished
    /// (after the counts kept before). `onCancel` runs when the task is
    /// cancelled while it waits (or was before): it must end the wait
    /// (``finish()``). Runs on the caller's executor (`nonisolated(nonsending)`):
    /// with a task-executor preference each executor hop costs a lookup of the
    /// preference under the task's lock in the Swift runtime, and
    /// `withTaskCancellationHandler` alone costs four (callgrind, vfiokit-bench --host-irq).
    nonisolated(nonsending) func next(onCancel: @Sendable () -> Void) async -> UInt64? {
        switch state.withLock({ $0.take() }) {
        case .value(let v): return v
        case .end: return nil
        case .wait: break
        }
        return await withTaskCancellationHandler {
            await wait()
        } onCancel: {
            onCancel()
        }
    }

    /// ``next(onCancel:)`` for a caller whose cancellation is already handled
    /// for the whole scope (``InterruptScope``): no cancellation record and no
    /// hop per count.
    @inline(__always)
    nonisolated(nonsending) func next() async -> UInt64? {
        switch state.withLock({ $0.take() }) {
        case .value(let v): return v
        case .end: return nil
        case .wait: return await wait()
        }
    }

    @inline(__always)
    private nonisolated(nonsending) func wait() async -> UInt64? {
        // Not `withUnsafeContinuation(isolation:)`: its hop to the isolation it is given (ours,
        // we are on it already) is a runtime call that looks up the task-executor preference
        // under the task's lock, ~600 instructions per count (callgrind, --host-irq). This
        // variant suspends on the caller's executor as is; the resume lands on the generic
        // executor (every continuation does), and the hop after the await brings the task back.
        await _unsafeInheritExecutor_withUnsafeContinuation { (c: Continuation) in
            let now = state.withLock { s -> Now in
                let now = s.take()
                if case .wait = now { s.waiter = c }
                return now
            }
            switch now {
            case .value(let v): c.resume(returning: v)
            case .end: c.resume(returning: nil)
            case .wait: break
            }
        }
    }

    /// No more counts: a waiting task gets nil (counts kept before are still taken).
    func finish() {
        let waiter = state.withLock { s -> Continuation? in
            s.finished = true
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume(returning: nil)
    }

    /// Hands `value` to the waiting task, or keeps it; false once finished.
    func deliver(_ value: UInt64) -> Bool {
        let (waiter, go) = state.withLock { s -> (Continuation?, Bool) in
            if s.finished { return (nil, false) }
            if let w = s.waiter {
                s.waiter = nil
                return (w, true)
            }
            s.pending &+= value
            return (nil, true)
        }
        waiter?.resume(returning: value)
        return go
    }
}


/// A feed an ``InterruptScope`` can stop.
protocol StoppableFeed: AnyObject, Sendable {
    func stop()
}

/// One cancellation handler for the interrupt sequences made inside
/// ``EventFD/withInterrupts(_:)`` or ``EventFD/withInterrupts(on:_:)``: when the
/// task is cancelled (or the scope ends), every feed made in it stops, so their
/// `next()` need no cancellation record of their own. Allocates once per scope
/// and once per iterator, never per count.
final class InterruptScope: Sendable {
    struct State {
        var feeds: [any StoppableFeed] = []
        /// Cancelled or ended: feeds adopted from now on stop at once.
        var over = false
    }

    let state = Mutex(State())

    /// Runs `body` under the scope's one cancellation handler and stops the
    /// scope's feeds when it returns.
    static nonisolated(nonsending) func run<R, E: Error>(
        _ body: nonisolated(nonsending) (InterruptScope) async throws(E) -> R
    ) async throws(E) -> R {
        let scope = InterruptScope()
        defer { scope.end() }
        let result: Result<R, E> = await withTaskCancellationHandler {
            do throws(E) {
                return .success(try await body(scope))
            } catch {
                return .failure(error)
            }
        } onCancel: {
            scope.end()
        }
        return try result.get()
    }

    /// Stops `feed` with the scope (at once when the scope is already over).
    func adopt(_ feed: any StoppableFeed) {
        let over = state.withLock { s -> Bool in
            if !s.over { s.feeds.append(feed) }
            return s.over
        }
        if over { feed.stop() }
    }

    /// The task was cancelled or the scope ended: stops every feed made in it.
    func end() {
        let feeds = state.withLock { s -> [any StoppableFeed] in
            s.over = true
            defer { s.feeds = [] }
            return s.feeds
        }
        for feed in feeds { feed.stop() }
    }
}
