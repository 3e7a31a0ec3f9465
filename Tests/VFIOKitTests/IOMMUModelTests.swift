import CVFIO
import Testing
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The test scaffolding's iommufd model answers as the kernel would, whatever
/// else the test process does at the same time.
@Suite struct IOMMUModelTests {
    /// A queue object is busy while its file is open, in this model's kernel.
    /// Probing the number in the process (fcntl) answered EBUSY once a test
    /// running beside it had opened a file that reused the number: that failed
    /// `ObjectLifetimeTests/closingASharedContextDestroysWhatThisProcessAllocated`
    /// in a CI rehearsal (`fault queue 3: EBUSY`).
    @Test func aClosedQueueFdIsFreeEvenWhenItsNumberIsReused() throws {
        let model = IOMMUModel()
        let k = model.kernel
        let ctx = k.open("/dev/iommu", O_RDWR, 0)
        defer { _ = k.close(ctx) }
        let devnull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { _ = Glibc.close(devnull) }
        // Tests run side by side: take the number only if it is still free (F_DUPFD gives the
        // lowest free number from `fd` up, never another's), and try again with a new queue if not.
        for _ in 0..<20 {
            var alloc = iommu_fault_alloc()
            alloc.size = UInt32(MemoryLayout<iommu_fault_alloc>.size)
            #expect(k.ioctl(ctx, IOMMU_FAULT_QUEUE_ALLOC, &alloc) == 0)
            let fd = Int32(bitPattern: alloc.out_fault_fd)
            var destroy = iommu_destroy(size: UInt32(MemoryLayout<iommu_destroy>.size), id: alloc.out_fault_id)
            #expect(k.ioctl(ctx, IOMMU_DESTROY, &destroy) == -EBUSY, "its file is open: the file holds the object")
            #expect(k.close(fd) == 0)
            // Another test's file, outside this kernel, with the same number.
            let other = fcntl(devnull, F_DUPFD_CLOEXEC, fd)
            defer { _ = Glibc.close(other) }
            guard other == fd else {
                #expect(k.ioctl(ctx, IOMMU_DESTROY, &destroy) == 0)
                continue
            }
            #expect(k.ioctl(ctx, IOMMU_DESTROY, &destroy) == 0, "the model saw another test's file as the queue's")
            return
        }
        Issue.record("the closed queue's number was taken by other tests 20 times in a row: nothing was proven")
    }
}
