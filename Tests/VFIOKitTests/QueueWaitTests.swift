import CVFIO
import Synchronization
import Testing
@testable import VFIOKit
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
        k.onIoctl(IOMMU_FAULT_QUEUE_ALLOC) { [unowned k] _, a in
            let fd = k.eventfd(0, CVFIO_EFD_CLOEXEC | CVFIO_EFD_NONBLOCK)
            queueFD.set(fd)
            arg(a, iommu_fault_alloc.self).pointee.out_fault_id = 30
            arg(a, iommu_fault_alloc.self).pointee.out_fault_fd = UInt32(bitPattern: fd)
            return 0
        }
        k.onIoctl(IOMMU_VEVENTQ_ALLOC) { [unowned k] _, a in
            let fd = k.eventfd(0, CVFIO_EFD_CLOEXEC | CVFIO_EFD_NONBLOCK)
            queueFD.set(fd)
            arg(a, iommu_veventq_alloc.self).pointee.out_veventq_id = 50
            arg(a, iommu_veventq_alloc.self).pointee.out_veventq_fd = UInt32(bitPattern: fd)
            return 0
        }
        return (k, queueFD)
    }

    /// Starts `wait`, lets it sit 200 ms with nothing queued, cancels it.
    /// Returns the reads it made while idle, the cancel latency, and its error.
    static func idleThenCancel<R: Sendable>(
        _ kernel: FakeKernel, fd: Int32, _ wait: @escaping @Sendable () async throws -> R
    ) async throws -> (reads: Int, latency: Duration, error: VFIOError?) {
        let task = Task { try await wait() }
        try await Task.sleep(for: .milliseconds(200))
        let reads = kernel.readCount(fd)
        let start = ContinuousClock.now
        task.cancel()
        let result = await task.result
        let latency = ContinuousClock.now - start
        if case .failure(let e) = result { return (reads, latency, e as? VFIOError) }
        return (reads, latency, nil)
    }

    @Test func faultQueueNextWaitsOnReadinessAndCancelsPromptly() async throws {
        let (k, queueFD) = QueueWaitTests.kernel()
        let q = try Syscalls.withProvider(k) { try FaultQueue(try IOMMUFD()) }
        let fd = queueFD.value
        let r = try await QueueWaitTests.idleThenCancel(k, fd: fd) { try await q.next() }
        #expect(r.reads <= 2, "next() read the queue \(r.reads) times in 200 ms while nothing was queued")
        #expect(r.latency < .milliseconds(50), "cancel took \(r.latency)")
        #expect(r.error?.operation == "wait for page faults")
        #expect(r.error?.detail == "cancelled")
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
        let r = try await QueueWaitTests.idleThenCancel(k, fd: fd) { try await queue.next() }
        #expect(r.reads <= 2, "next() read the queue \(r.reads) times in 200 ms while nothing was queued")
        #expect(r.latency < .milliseconds(50), "cancel took \(r.latency)")
        #expect(r.error?.operation == "wait for vEVENTs")
        #expect(r.error?.detail == "cancelled")
        try queue.destroy()
        #expect(k.staleFDUses == [])
    }

    /// Destroying the queue while a task waits on it ends the wait with
    /// "closed" at once; the fd closes when the waiting thread has left.
    @Test func destroyEndsAnAsyncWait() async throws {
        let (k, queueFD) = QueueWaitTests.kernel()
        let q = try Syscalls.withProvider(k) { try FaultQueue(try IOMMUFD()) }
        let fd = queueFD.value
        let task = Task { try await q.next() }
        try await Task.sleep(for: .milliseconds(100))
        let start = ContinuousClock.now
        try q.destroy()
        let result = await task.result
        #expect(ContinuousClock.now - start < .milliseconds(50))
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
        let outcome = Mutex<Result<Bool, VFIOError>?>(nil)
        _ = DetachedThread.start {
            let r = Result { () throws(VFIOError) -> Bool in try q.wait(timeoutMilliseconds: 10_000) }
            outcome.withLock { $0 = r }
        }
        try await Task.sleep(for: .milliseconds(100))
        let start = ContinuousClock.now
        try q.destroy()
        while outcome.withLock({ $0 }) == nil && ContinuousClock.now - start < .seconds(5) {
            try await Task.sleep(for: .milliseconds(2))
        }
        #expect(ContinuousClock.now - start < .milliseconds(50))
        guard case .failure(let e)? = outcome.withLock({ $0 }) else {
            Issue.record("wait did not end with an error: \(String(describing: outcome.withLock { $0 }))")
            return
        }
        #expect(e.detail == "the fd was already closed")
        #expect(k.staleFDUses == [])
    }
}
