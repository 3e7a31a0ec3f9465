import CVFIO
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A task executor whose one thread also waits for interrupts: it runs the
/// jobs of the tasks that prefer it and, when it has none, blocks in `poll(2)`
/// on the eventfds of the ``EventFD/interrupts(on:)`` sequences made with it
/// (and on a wake eventfd of its own, signalled when a job arrives from
/// another thread). An interrupt's count resumes the waiting task on this same
/// thread: no hand-off to another thread, nothing allocated per interrupt.
///
/// Use it for a driver's completion loop that awaits interrupts one after the
/// other, where ``EventFD/interrupts()`` costs two thread hand-offs per
/// interrupt (its poll thread resumes the task onto Swift's global executor):
///
/// ```swift
/// let executor = try InterruptExecutor()
/// await withTaskExecutorPreference(executor) {
///     await eventFD.withInterrupts(on: executor) { interrupts in
///         for await count in interrupts { handle(count) }
///     }
/// }
/// ```
///
/// (`for await count in eventFD.interrupts(on: executor)` works too, with a
/// cancellation handler per `next()`: about 1.7 times the instructions.)
///
/// Cost: one dedicated thread for the executor's life, which does nothing but
/// this executor's jobs and polls. Jobs run one at a time, in the order they
/// were enqueued; code that blocks the thread delays every interrupt behind it.
/// Keep a reference while tasks prefer it (`withTaskExecutorPreference` holds
/// one for its scope). When the last reference goes, the thread runs the jobs
/// already enqueued, ends the sequences made with it (their `next()` returns
/// nil) and exits.
public final class InterruptExecutor: TaskExecutor {
    let core: InterruptExecutorCore

    /// Starts the thread. Throws when no eventfd or no thread could be made.
    public init() throws(VFIOError) {
        let kernel = Sys.current
        let raw = try Sys.eventfd(kernel, flags: CVFIO_EFD_NONBLOCK)
        let wake = OwnedFD(raw, label: "wake eventfd of an InterruptExecutor", kernel: kernel)
        core = InterruptExecutorCore(wake: wake)
        let executor = asUnownedTaskExecutor()
        do throws(VFIOError) {
            try Sys.startThread(kernel, object: "InterruptExecutor") { [core] in core.run(as: executor) }
        } catch {
            try? wake.close()
            var e = error
            e.detail = "no thread for an InterruptExecutor"
            throw e
        }
    }

    /// Queues `job` for the executor's thread (woken when it is polling and
    /// the caller is another thread).
    public func enqueue(_ job: consuming ExecutorJob) {
        core.enqueue(UnownedJob(job))
    }

    deinit { core.shutdown() }
}

/// What the executor's thread and the enqueuing threads share. The thread
/// holds it (not the executor), so releasing the executor ends the thread.
final class InterruptExecutorCore: Sendable {
    struct State {
        /// Jobs to run: `jobs[head..<tail]`. Slots are reused (both indices go
        /// back to 0 when the queue empties), so the array is not mutated per job
        /// once it has grown (emptying it cost a `replaceSubrange` call per interrupt).
        var jobs: [UnownedJob] = []
        var head = 0
        var tail = 0
        /// The thread is in (or about to enter) poll: an enqueue must wake it.
        var sleeping = false
        /// The executor was released: run what is queued, end the feeds, exit.
        var stopping = false
        /// The thread has exited: feeds are refused.
        var exited = false
        var feeds: [ExecutorFeed] = []
        /// Changes with `feeds`, so the thread rebuilds its poll set only then.
        var generation = 0

        mutating func pop() -> UnownedJob? {
            if head == tail {
                head = 0
                tail = 0
                return nil
            }
            defer { head += 1 }
            return jobs[head]
        }

        mutating func push(_ job: UnownedJob) {
            if tail < jobs.count { jobs[tail] = job } else { jobs.append(job) }
            tail += 1
        }
    }

    let wake: OwnedFD
    let state: Mutex<State>

    init(wake: OwnedFD) {
        self.wake = wake
        var s = State()
        s.jobs.reserveCapacity(64)
        s.feeds.reserveCapacity(8)
        state = Mutex(s)
    }

    func enqueue(_ job: UnownedJob) {
        let wakeUp = state.withLock { s -> Bool in
            s.push(job)
            defer { s.sleeping = false }
            return s.sleeping
        }
        if wakeUp { signalWake() }
    }

    func shutdown() {
        let wakeUp = state.withLock { s -> Bool in
            s.stopping = true
            defer { s.sleeping = false }
            return s.sleeping
        }
        if wakeUp { signalWake() }
    }

    /// Adds a feed to the poll set; false when the thread has exited or is exiting.
    func register(_ feed: ExecutorFeed) -> Bool {
        let result = state.withLock { s -> (ok: Bool, wake: Bool) in
            if s.stopping || s.exited { return (false, false) }
            s.feeds.append(feed)
            s.generation &+= 1
            defer { s.sleeping = false }
            return (true, s.sleeping)
        }
        if result.wake { signalWake() }
        return result.ok
    }

    /// Makes the thread look at its feeds again (one stopped, or its eventfd closed).
    func poke() {
        let wakeUp = state.withLock { s -> Bool in
            s.generation &+= 1
            defer { s.sleeping = false }
            return s.sleeping
        }
        if wakeUp { signalWake() }
    }

    private func signalWake() {
        var one: UInt64 = 1
        _ = try? withUnsafeBytes(of: &one) { (b) throws(VFIOError) in try wake.write(b) }
    }

    private func drainWake() {
        var value: UInt64 = 0
        _ = try? withUnsafeMutableBytes(of: &value) { (b) throws(VFIOError) in try wake.read(b) }
    }

    private enum Step { case run, poll, exit }

    /// The thread: jobs first, then one poll over the wake fd and the feeds' eventfds.
    func run(as executor: UnownedTaskExecutor) {
        var polled: [ExecutorFeed] = []
        var fds: [pollfd] = []
        fds.reserveCapacity(9)
        var seen = -1
        defer {
            let feeds = state.withLock { s -> [ExecutorFeed] in
                s.exited = true
                defer { s.feeds = [] }
                return s.feeds
            }
            for feed in feeds { feed.end() }
            try? wake.close()
        }
        guard wake.enter() else { return }
        defer { wake.leave() }
        while true {
            // One lock per turn: the next job, or else the decision to exit or to poll.
            let (step, job, gone) = state.withLock { s -> (Step, UnownedJob?, [ExecutorFeed]?) in
                if let job = s.pop() { return (.run, job, nil) }
                if s.stopping { return (.exit, nil, nil) }
                var gone: [ExecutorFeed]? = nil
                if s.generation != seen {
                    // Drop the feeds that stopped or whose eventfd closed. `polled` shares the
                    // array's storage until `feeds` changes again (no copy per interrupt).
                    if s.feeds.contains(where: { $0.isDone }) {
                        gone = s.feeds.filter { $0.isDone }
                        s.feeds.removeAll { $0.isDone }
                    }
                    polled = s.feeds
                    seen = s.generation
                    gone = gone ?? []
                }
                s.sleeping = true
                return (.poll, nil, gone)
            }
            if step == .exit { return }
            if let job {
                // Safety: each job is run once, on the executor it was enqueued on, as the runtime requires.
                job.runSynchronously(on: executor)
                continue
            }
            if let gone {
                // Give back the dropped feeds' fd uses (outside the lock), then rebuild the poll set.
                for feed in gone { feed.end() }
                fds.removeAll(keepingCapacity: true)
                fds.append(pollfd(fd: wake.number, events: Int16(POLLIN), revents: 0))
                for feed in polled { fds.append(pollfd(fd: feed.eventfd.fd.number, events: Int16(POLLIN), revents: 0)) }
            }
            for i in fds.indices { fds[i].revents = 0 }
            // Every polled number is held open: the wake fd by this thread, each feed's eventfd
            // by its feed's use (taken at registration, given back by `end()` on this thread).
            let ready: Int32
            do throws(VFIOError) {
                ready = try fds.withUnsafeMutableBufferPointer { (b) throws(VFIOError) -> Int32 in
                    // Safety: `b` is the array's own storage, `b.count` entries, for this call only.
                    try wake.pollHeld(b.baseAddress!, count: b.count, timeout: nil)
                }
            } catch {
                state.withLock { $0.sleeping = false }
                return
            }
            state.withLock { $0.sleeping = false }
            if ready <= 0 { continue }
            if fds[0].revents != 0 { drainWake() }
            for i in polled.indices where fds[i + 1].revents != 0 {
                if !polled[i].readAndDeliver() { poke() }
            }
        }
    }
}

/// One ``EventFD/interrupts(on:)`` iterator's state: the counts the executor's
/// thread read and the task waiting for the next one. Holds a use of the
/// eventfd from registration to ``end()`` (on the executor's thread), so its
/// number stays open while it is polled.
final class ExecutorFeed: StoppableFeed {
    let eventfd: EventFD
    let core: InterruptExecutorCore
    let handoff = CountHandoff()
    /// Made inside an ``InterruptScope``, whose one cancellation handler stops it.
    let scoped: Bool
    private let closeWaker = Mutex<Int?>(nil)
    /// Set once the feed holds its use of the eventfd (see ``start()``).
    private let holding = Atomic<Bool>(false)

    init(eventfd: EventFD, core: InterruptExecutorCore, scoped: Bool) {
        self.eventfd = eventfd
        self.core = core
        self.scoped = scoped
    }

    /// Takes a use of the eventfd and joins the executor's poll set; when
    /// either fails (closed eventfd, released executor, another kernel), the
    /// sequence ends at once.
    func start() {
        let fd = eventfd.fd
        if handoff.isFinished { return }  // stopped already (its scope ended)
        guard fd.isLinux == core.wake.isLinux, fd.enter() else { return finish() }
        guard let id = fd.onClose({ [core] in core.poke() }) else {
            fd.leave()
            return finish()
        }
        closeWaker.withLock { $0 = id }
        holding.store(true, ordering: .releasing)
        if !core.register(self) { end() }
    }

    /// Stopped, or its eventfd closed: the executor's thread drops it.
    var isDone: Bool { eventfd.fd.isClosed || handoff.isFinished }

    @inline(__always)
    nonisolated(nonsending) func next() async -> UInt64? {
        if scoped { return await handoff.next() }
        return await handoff.next { [self] in stop() }
    }

    /// The iterator stopped (dropped or cancelled): a waiting task gets nil and
    /// the executor's thread is poked to drop the feed.
    func stop() {
        finish()
        core.poke()
    }

    /// No more counts: a waiting task gets nil (counts kept before are still taken).
    private func finish() { handoff.finish() }

    /// On the executor's thread, when poll found the eventfd readable: reads
    /// the count and resumes the waiting task (which the runtime enqueues on
    /// this same executor) or keeps it. False when the feed is done.
    func readAndDeliver() -> Bool {
        let fd = eventfd.fd
        var value: UInt64 = 0
        let n: Int?
        do throws(VFIOError) {
            n = try withUnsafeMutableBytes(of: &value) { (b) throws(VFIOError) in try fd.readHeld(b, object: nil) }
        } catch {
            finish()
            return false
        }
        // A count read after the close may hold the close's own signal: drop it.
        if fd.isClosed {
            finish()
            return false
        }
        guard n == 8 else { return true }  // another reader took it (EAGAIN)
        return handoff.deliver(value)
    }

    /// Leaves the poll set for good: the waiting task gets nil, and the use of
    /// the eventfd is given back (closing it, if it was closed meanwhile).
    /// On the executor's thread (or in ``start()`` when registration failed).
    func end() {
        finish()
        guard holding.exchange(false, ordering: .acquiringAndReleasing) else { return }
        if let id = closeWaker.withLock({ $0.take() }) { eventfd.fd.removeCloseWaker(id) }
        eventfd.fd.leave()
    }
}

extension EventFD {
    /// Each signal as a count, read and delivered by an ``InterruptExecutor``'s
    /// thread: await it from a task that prefers that executor
    /// (`withTaskExecutorPreference(executor)`), and the task resumes on that
    /// thread with no hand-off and no allocation per interrupt.
    ///
    /// Use it for a driver's completion loop; it costs the executor's one
    /// thread (shared by every sequence made with it). Awaited from elsewhere it
    /// still works, with a hand-off per count like ``interrupts()``. The
    /// sequence ends when the eventfd closes, the task is cancelled, the
    /// iterator is dropped or the executor is released.
    public func interrupts(on executor: InterruptExecutor) -> ExecutorInterrupts {
        ExecutorInterrupts(eventfd: self, executor: executor, scope: nil)
    }

    /// Runs `body` with ``interrupts(on:)`` of this eventfd whose `next()`
    /// costs less: one cancellation handler covers the whole call instead of
    /// one per `next()`, which with the executor's preference saves about
    /// 1,000 user instructions per interrupt (four lookups of the preference
    /// under the task's lock, and the record added and removed). Cancelling
    /// the task still ends a waiting `next()` at once with nil; the iterators
    /// made from the sequence stop when `body` returns.
    ///
    /// ```swift
    /// await withTaskExecutorPreference(executor) {
    ///     await eventFD.withInterrupts(on: executor) { interrupts in
    ///         for await count in interrupts { handle(count) }
    ///     }
    /// }
    /// ```
    public nonisolated(nonsending) func withInterrupts<R, E: Error>(
        on executor: InterruptExecutor,
        _ body: nonisolated(nonsending) (ExecutorInterrupts) async throws(E) -> R
    ) async throws(E) -> R {
        try await InterruptScope.run { (scope) throws(E) in
            try await body(ExecutorInterrupts(eventfd: self, executor: executor, scope: scope))
        }
    }

    /// The signals of an ``EventFD`` as counts, polled by an ``InterruptExecutor``.
    public struct ExecutorInterrupts: AsyncSequence, Sendable {
        /// The count read: signals since the last read (counts read while no
        /// task waited are summed into the next element).
        public typealias Element = UInt64
        /// The sequence never throws: a closed eventfd, a cancelled task or a
        /// released executor ends it.
        public typealias Failure = Never
        let eventfd: EventFD
        let executor: InterruptExecutor
        /// Set by ``EventFD/withInterrupts(on:_:)``: cancellation is handled once for its scope.
        let scope: InterruptScope?

        /// Adds the eventfd to the executor's poll set until the iterator is
        /// dropped or its task is cancelled.
        public func makeAsyncIterator() -> Iterator {
            let feed = ExecutorFeed(eventfd: eventfd, core: executor.core, scoped: scope != nil)
            // Adopted before it starts: made after its scope ended, it never joins the poll set.
            scope?.adopt(feed)
            feed.start()
            return Iterator(handle: ExecutorFeedHandle(feed))
        }

        /// The counts, one await each.
        public struct Iterator: AsyncIteratorProtocol {
            let handle: ExecutorFeedHandle

            /// The next count; nil once the eventfd closed (after the counts
            /// read before), the task was cancelled or the executor released.
            public nonisolated(nonsending) mutating func next() async -> UInt64? {
                await handle.feed.next()
            }

            /// ``next()`` on the caller's actor.
            public mutating func next(isolation actor: isolated (any Actor)?) async -> UInt64? {
                await handle.feed.next()
            }
        }
    }
}

/// Stops an ``ExecutorFeed`` when the last copy of its iterator goes.
final class ExecutorFeedHandle: Sendable {
    let feed: ExecutorFeed
    init(_ feed: ExecutorFeed) { self.feed = feed }
    deinit { feed.stop() }
}
