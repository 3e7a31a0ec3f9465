import CVFIO
import Synchronization
import Testing
import VFIOKit
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A type1 container whose unmap answers with `answer(iova, size)` bytes
/// (type1 answers success and 0 bytes for a mapping that is gone).
func type1Kernel(unmapAnswer: @escaping @Sendable (UInt64, UInt64) -> UInt64 = { _, size in size }) -> FakeKernel {
    let k = FakeKernel()
    k.files["/dev/vfio/vfio"] = .node
    k.onIoctl(VFIO_GET_API_VERSION) { _, _ in 0 }
    k.onIoctl(VFIO_CHECK_EXTENSION) { _, _ in 1 }
    k.onIoctl(VFIO_SET_IOMMU) { _, _ in 0 }
    k.onIoctl(VFIO_IOMMU_GET_INFO) { _, _ in -EINVAL }
    k.onIoctl(VFIO_IOMMU_MAP_DMA) { _, _ in 0 }
    k.onIoctl(VFIO_IOMMU_UNMAP_DMA) { _, a in
        let u = arg(a, vfio_iommu_type1_dma_unmap.self)
        u.pointee.size = unmapAnswer(u.pointee.iova, u.pointee.size)
        return 0
    }
    return k
}

/// Failed and short unmaps: errors on every path, and the buffer and IOVA of
/// a mapping that may still be mapped are never released.
@Suite struct UnmapFailureTests {
    @Test func containerRawUnmapOfNothingIsAShortUnmapError() throws {
        let k = type1Kernel { _, _ in 0 }  // nothing was mapped there
        try Syscalls.withProvider(k) {
            let c = try VFIOContainer()
            let e = #expect(throws: VFIOError.self) { _ = try c.unmapDMA(iova: 0x10_0000, length: 4096) }
            #expect(e?.operation == .ioctl(.vfioIOMMUUnmapDMA))
            #expect(e?.description.contains("short unmap") == true, "\(String(describing: e))")
            #expect(e?.description.contains("unmapped 0") == true)
        }
    }

    @Test func aShortContainerUnmapOfADMAMappingKeepsItsBufferForGood() throws {
        let k = type1Kernel { _, _ in 0 }
        weak var weakBuffer: DMABuffer?
        let e: VFIOError? = try Syscalls.withProvider(k) {
            let c = try VFIOContainer()
            let m: DMAMapping
            do {
                let buffer = try DMABuffer(length: 8192)
                weakBuffer = buffer
                m = try c.mapDMA(buffer, at: 0x10_0000)
            }
            return unmapError(m)
        }
        #expect(e?.description.contains("short unmap") == true, "\(String(describing: e))")
        #expect(e?.description.contains("kept alive") == true, "\(String(describing: e))")
        #expect(weakBuffer != nil, "the buffer of a mapping that may still be mapped was freed")
    }

    @Test func aDroppedContainerMappingThatFailsToUnmapKeepsItsBufferToo() throws {
        let k = type1Kernel { _, _ in 0 }
        weak var weakBuffer: DMABuffer?
        try Syscalls.withProvider(k) {
            let c = try VFIOContainer()
            do {
                let buffer = try DMABuffer(length: 4096)
                weakBuffer = buffer
                _ = try c.mapDMA(buffer, at: 0x10_0000)  // dropped at once: deinit unmaps, short
            }
            withExtendedLifetime(c) {}
        }
        #expect(weakBuffer != nil)
    }

    @Test func dmaSpaceKeepsTheIOVAOfAMappingThatFailedToUnmap() throws {
        let k = type1Kernel { iova, size in iova == 0x10_0000 ? 0 : size }
        try Syscalls.withProvider(k) {
            let space = try DMASpace(mode: .type1v2, dmaMask: .max)
            let buffer = try DMABuffer(length: 4096)
            let m = try space.map(buffer, at: 0x10_0000)
            let ok = try space.map(buffer, at: 0x20_0000)
            #expect(space.iovaAllocator.allocatedBytes == 8192)
            let e = unmapError(m)
            #expect(e?.description.contains("IOVA stays reserved") == true, "\(String(describing: e))")
            #expect(space.iovaAllocator.allocatedBytes == 8192, "a failed unmap released its IOVA")
            try ok.unmap()
            #expect(space.iovaAllocator.allocatedBytes == 4096)
            // The reserved IOVA is not handed out again.
            let again = #expect(throws: VFIOError.self) { _ = try space.map(buffer, at: 0x10_0000) }
            #expect(again?.detail?.contains("overlaps") == true)
        }
    }

    @Test func aFailedIOASUnmapKeepsTheBufferAndSaysSo() throws {
        let model = IOMMUModel()
        weak var weakBuffer: DMABuffer?
        let e: VFIOError? = try Syscalls.withProvider(model.kernel) {
            let ioas = try IOAS(try IOMMUFD())
            let m: DMAMapping
            do {
                let buffer = try DMABuffer(length: 4096)
                weakBuffer = buffer
                m = try ioas.map(buffer, at: 0x10_0000)
            }
            model.pin(ioas: ioas.objectID, iova: 0x10_0000)  // a HW queue or an access pins it
            let e = unmapError(m)
            // The range is no mapping's any more: the caller may unmap it raw once unpinned.
            model.unpinAll()
            #expect(try ioas.unmap(iova: 0x10_0000, length: 4096) == 4096)
            return e
        }
        #expect(e?.errno == .resourceBusy)
        #expect(e?.description.contains("kept alive") == true, "\(String(describing: e))")
        #expect(weakBuffer != nil, "the buffer of a mapping that may still be mapped was freed")
    }
    /// iommufd's own fault injection (CONFIG_IOMMUFD_TEST with fail-nth) fails
    /// the IOAS lookup of an IOMMU_IOAS_UNMAP with ENOENT before anything is
    /// unmapped (`iommufd_get_object`). For a live DMAMapping's exact range,
    /// ENOENT has no other cause (a raw unmap of an owned range is refused,
    /// unmap-all and the IOAS's destruction make the mapping inert), so the
    /// unmap is asked once more: the mapping goes, its buffer with it.
    @Test func anIOASUnmapWhoseLookupFailedOnceIsAskedAgain() throws {
        let model = IOMMUModel()
        weak var weakBuffer: DMABuffer?
        var ioasID: UInt32 = 0
        try Syscalls.withProvider(model.kernel) {
            let ioas = try IOAS(try IOMMUFD())
            ioasID = ioas.objectID
            let m: DMAMapping
            do {
                let buffer = try DMABuffer(length: 4096)
                weakBuffer = buffer
                m = try ioas.map(buffer, at: 0x10_0000)
            }
            model.kernel.failCall(1, errno: ENOENT)  // the unmap's ioctl: as iommufd_should_fail() in iommufd_get_object
            do { try m.unmap() } catch { Issue.record("the unmap failed: \(error)") }
            #expect(model.kernel.injectedFailure?.kind == .ioctl)
            #expect(model.areas(ioasID) == [], "the mapping is still in the IOAS")
            withExtendedLifetime(ioas) {}
        }
        #expect(weakBuffer == nil, "the buffer of an unmapped mapping was kept")
    }

    /// A second ENOENT: the range is not mapped there (not by this mapping):
    /// still an error, and the buffer is kept (nothing VFIOKit knows of unmapped it).
    @Test func anIOASUnmapThatFindsNothingTwiceStaysAnError() throws {
        let model = IOMMUModel()
        weak var weakBuffer: DMABuffer?
        let e: VFIOError? = try Syscalls.withProvider(model.kernel) {
            let ioas = try IOAS(try IOMMUFD())
            let id = ioas.objectID
            let m: DMAMapping
            do {
                let buffer = try DMABuffer(length: 4096)
                weakBuffer = buffer
                m = try ioas.map(buffer, at: 0x10_0000)
            }
            model.state.withLock { $0.objects[id]?.areas = [] }  // gone behind VFIOKit's back
            return unmapError(m)
        }
        #expect(e?.errno == .noSuchFileOrDirectory)
        #expect(e?.description.contains("kept alive") == true, "\(String(describing: e))")
        #expect(weakBuffer != nil)
    }
}
