import CVFIO
import Synchronization
import Testing
import VFIOKit
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The async waits of fault queues and vEVENTQs wait on the fd's readiness
/// (no read every millisecond), end promptly on cancellation and on close.
@Suite struct QueueWaitTests {
    /// A fake /dev/iommu whose fault queue and vEVENTQ fds are real,
    /// non-blocking eventfds: pollable, and a read of an empty one says EAGAIN.
    final class QueueFD: Sendable {
        private let number = Atomic<Int32>(-1)
        var value: Int32 { number.load(ordering: .acquiring) }
        func set(_ fd: Int32) { number.store(fd, ordering: .releasing) }
    }

    static func kernel() -> (FakeKernel, queueFD: QueueFD) {
        let k = iommuKernel()
        let queueFD = QueueFD()
        k.onIoctl(IOMMU_HWPT_ALLOC) { _, a in arg(a, iommu_hwpt_alloc.self).pointee.out_hwpt_id = 20; return 0 }
        // As in the kernel, a queue's open file holds its object: destroying it before the close is EBUSY.
        k.onIoctl(IOMMU_DESTROY) { [unowned k] _, a in
            let id = arg(a, iommu_destroy.self).pointee.id
            return (id == 30 || id == 50) && k.isOpen(queueFD.value) ? -EBUSY : 0
        }
        k.onIoctl(IOMMU_VIOMMU_ALLOC) { _, a in arg(a, iommu_viommu_alloc.self).pointee.out_viommu_id = 40; return 0 }
        // A queue's fd: a nonblocking eventfd, remembered as the queue's.
        let newQueueFD: @Sendable () -> UInt32 = { [unowned k] in
            let fd = k.eventfd(0, CVFIO_EFD_CLOEXEC | CVFIO_EFD_NONBLOCK)
            queueFD.set(fd)
            return UInt32(bitPattern: fd)
        }
        k.onIoctl(IOMMU_FAULT_QUEUE_ALLOC) { _, a in
            arg(a, iommu_fault_alloc.self).pointee.out_fault_id = 30
            arg(a, iommu_fault_alloc.self).pointee.out_fault_fd = newQueueFD()
            return 0
        }
        k.onIoctl(IOMMU_VEVENTQ_ALLOC) { _, a in
            arg(a, iommu_veventq_alloc.self).pointee.out_veventq_id = 50
            arg(a, iommu_veventq_alloc.self).pointee.out_veventq_fd = newQueueFD()
            return 0
        }
        return (k, queueFD)
    }

    /// Starts `wait`, lets it sit 200 ms with nothing queued once it waits,
    /// cancels it. Returns the reads it made while idle, whether a thread
    /// waited in poll, the cancel latency, and the error.
    ///
    /// The latency runs to the moment the waiting thread (not one of the
    /// cooperative pool) closed its wake eventfd on the way out, timed by the
    /// fake kernel on that thread: the awaiting task may run later when other
    /// tests keep the pool busy, but the wait itself is over then.
    static func idleThenCancel<R: Sendable>(
        _ kernel: FakeKernel, fd: Int32, _ wait: @escaping @Sendable () async throws -> R
    ) async throws -> (reads: Int, waiting: Bool, latency: Duration?, error: VFIOError?) {
        let base = kernel.openFDCount
        let task = Task { try await wait() }
        let waiting = await waitForOpenCount(kernel, base + 1)  // the wake eventfd of a thread in poll
        try await Task.sleep(for: .milliseconds(200))
        let reads = kernel.readCount(fd)
        let start = ContinuousClock.now
        task.cancel()
        let result = await task.result
        let latency = await waitForOpenCount(kernel, base) ? kernel.lastClosed.map { $0.at - start } : nil
        if case .failure(let e) = result { return (reads, waiting, latency, e as? VFIOError) }
        return (reads, waiting, latency, nil)
    }

    /// "Promptly": far below the 5 s a wait that nobody woke would reach,
    /// and loose enough for a loaded two-core CI machine (50 ms was seen to
    /// fail there while the code under test was fine).
    static let prompt: Duration = .seconds(1)

    /// Runs ``idleThenCancel(_:fd:_:)`` on `wait` and expects a wait that
    /// neither spun nor read while idle, was cancelled within ``prompt`` and
    /// threw the "cancelled" error of `step`.
    static func expectIdleWaitCancelledPromptly<R: Sendable>(
        _ kernel: FakeKernel, fd: Int32, step: VFIOError.Step, _ wait: @escaping @Sendable () async throws -> R
    ) async throws {
        let r = try await idleThenCancel(kernel, fd: fd, wait)
        #expect(r.reads <= 2, "next() read the queue \(r.reads) times in 200 ms while nothing was queued")
        #expect(r.waiting, "no thread was waiting in poll")
        #expect(r.latency.map { $0 < prompt } == true, "cancel took \(String(describing: r.latency))")
        #expect(r.error?.operation == .step(step))
        #expect(r.error?.detail == "cancelled")
    }

    /// Until `kernel` has `count` fds open (false after 60 s); sleeps between
    /// looks, so the tasks it waits for can run.
    static func waitForOpenCount(_ kernel: FakeKernel, _ count: Int) async -> Bool {
        // Not a promptness bound (``prompt`` is): the waiting thread or task has to be scheduled,
        // and on a loaded 2-core machine other tests can hold the cooperative pool for seconds.
        let deadline = ContinuousClock.now + .seconds(60)
        while kernel.openFDCount != count {
            if ContinuousClock.now > deadline { return false }
            try? await Task.sleep(for: .milliseconds(1))
        }
        return true
    }

    @Test func faultQueueNextWaitsOnReadinessAndCancelsPromptly() async throws {
        let (k, queueFD) = QueueWaitTests.kernel()
        let q = try Syscalls.withProvider(k) { try FaultQueue(try IOMMUFD()) }
        let fd = queueFD.value
        try await QueueWaitTests.expectIdleWaitCancelledPromptly(k, fd: fd, step: .waitForPageFaults) { try await q.next() }
        try q.destroy()
        #expect(!k.isOpen(fd))
        #expect(k.staleFDUses == [])
    }

    @Test func vEventQueueNextWaitsOnReadinessAndCancelsPromptly() async throws {
        let (k, queueFD) = QueueWaitTests.kernel()
        let queue = try Syscalls.withProvider(k) { () throws(VFIOError) -> VEventQueue in
            let ctx = try IOMMUFD()
            let parent = try HWPT(ioas: try IOAS(ctx), device: 3, flags: .nestParent)
            let viommu = try VIOMMU(device: 3, parent: parent, type: VIOMMU.typeARMSMMUv3)
            return try VEventQueue(viommu: viommu, type: VEventQueue.typeARMSMMUv3, depth: 8)
        }
        let fd = queueFD.value
        try await QueueWaitTests.expectIdleWaitCancelledPromptly(k, fd: fd, step: .waitForVEvents) { try await queue.next() }
        try queue.destroy()
        #expect(k.staleFDUses == [])
    }

    /// Destroying the queue while a task waits on it ends the wait with
    /// "closed" at once; the fd closes when the waiting thread has left.
    @Test func destroyEndsAnAsyncWait() async throws {
        let (k, queueFD) = QueueWaitTests.kernel()
        let q = try Syscalls.withProvider(k) { try FaultQueue(try IOMMUFD()) }
        let fd = queueFD.value
        let base = k.openFDCount
        let task = Task { try await q.next() }
        try #require(await QueueWaitTests.waitForOpenCount(k, base + 1), "next() never waited in poll")
        // destroy() returns once the woken thread has left and the fd is closed.
        let start = ContinuousClock.now
        try q.destroy()
        #expect(ContinuousClock.now - start < QueueWaitTests.prompt)
        let result = await task.result
        guard case .failure(let e) = result else {
            Issue.record("next() returned after destroy: \(result)")
            return
        }
        #expect((e as? VFIOError)?.detail == "the fd was already closed")
        #expect(!k.isOpen(fd))
        #expect(k.staleFDUses == [])
    }

    /// A blocking wait in another thread is woken by the close too.
    @Test func closeEndsABlockingWait() async throws {
        let (k, _) = QueueWaitTests.kernel()
        let q = try Syscalls.withProvider(k) { try FaultQueue(try IOMMUFD()) }
        let base = k.openFDCount
        let outcome = Mutex<(result: Result<Bool, VFIOError>, at: ContinuousClock.Instant)?>(nil)
        try Sys.startThread(nil) {
            // Longer than this test can take: in a full host run on 2 cores the cooperative pool that
            // runs this test's checks can be busy with the other tests for over 16 s, and a wait that
            // timed out meanwhile closed its wake fd before the test saw it (a CI rehearsal failure).
            let r = Result { () throws(VFIOError) -> Bool in try q.wait(timeout: .seconds(120)) }
            outcome.withLock { $0 = (r, ContinuousClock.now) }
        }
        try #require(await QueueWaitTests.waitForOpenCount(k, base + 1), "wait() never waited in poll")
        let start = ContinuousClock.now
        try q.destroy()
        while outcome.withLock({ $0 }) == nil && ContinuousClock.now - start < .seconds(5) {
            try await Task.sleep(for: .milliseconds(1))
        }
        let ended = try #require(outcome.withLock { $0 }, "the blocking wait did not end")
        #expect(ended.at - start < QueueWaitTests.prompt)
        guard case .failure(let e) = ended.result else {
            Issue.record("wait did not end with an error: \(ended.result)")
            return
        }
        #expect(e.detail == "the fd was already closed")
        #expect(k.staleFDUses == [])
    }
}
