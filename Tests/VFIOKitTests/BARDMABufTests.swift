import CVFIO
import Synchronization
import Testing
import VFIOKit
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// BAR ranges exported as dma-bufs (`VFIO_DEVICE_FEATURE_DMA_BUF`) and mapped
/// into an IOAS (`IOMMU_IOAS_MAP_FILE`), against the iommufd model: the
/// payload the kernel gets, the owner of the fd, the mapping's lifetime, and
/// the revocations VFIOKit records (reset, close, memory decoding off).
@Suite struct BARDMABufTests {
    typealias Area = IOMMUModel.Area

    struct Export: Equatable {
        var region: UInt32, openFlags: UInt32, flags: UInt32, ranges: [UInt64]
    }

    /// What the fake device saw: each export's argument and the fds it returned.
    final class Seen: Sendable {
        let exports = Mutex<[Export]>([])
        let fds = Mutex<[Int32]>([])
    }

    /// The model with a cdev device whose DMA_BUF export returns a fresh fake
    /// fd (recorded in `seen`), and which answers reset and config writes.
    static func rig(_ seen: Seen, exportErrno: Int32? = nil) -> IOMMUModel {
        let model = IOMMUModel()
        let k = model.kernel
        k.files["/dev/vfio/devices/vfio0"] = .node
        k.onIoctl(VFIO_DEVICE_FEATURE) { _, a in
            let h = a!.assumingMemoryBound(to: vfio_device_feature.self).pointee
            guard h.flags & VFIO_DEVICE_FEATURE_MASK == VFIO_DEVICE_FEATURE_DMA_BUF,
                  h.flags & VFIO_DEVICE_FEATURE_GET != 0 else { return -ENOTTY }
            let d = (a! + 8).loadUnaligned(as: vfio_device_feature_dma_buf.self)
            var ranges: [UInt64] = []
            for i in 0..<Int(d.nr_ranges) {
                let r = (a! + 8 + 16 + 16 * i).loadUnaligned(as: vfio_region_dma_range.self)
                ranges += [r.offset, r.length]
            }
            seen.exports.withLock { $0.append(Export(region: d.region_index, openFlags: d.open_flags, flags: d.flags, ranges: ranges)) }
            if let exportErrno { return -exportErrno }
            let fd = k.makeFD("dma-buf")
            seen.fds.withLock { $0.append(fd) }
            return fd
        }
        k.onIoctl(VFIO_DEVICE_RESET) { _, _ in 0 }
        k.onIoctl(VFIO_DEVICE_GET_REGION_INFO) { _, a in
            let info = a!.assumingMemoryBound(to: vfio_region_info.self)
            let bar0 = info.pointee.index == 0
            info.pointee.size = bar0 ? 4096 : 256
            info.pointee.offset = UInt64(info.pointee.index) << 40
            info.pointee.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | (bar0 ? VFIO_REGION_INFO_FLAG_MMAP : 0)
            return 0
        }
        k.onFileIO { _, _, buffer, _ in buffer.count }
        return model
    }

    @Test func exportSendsOneRangeOfTheBARAndOwnsTheFD() throws {
        let seen = Seen()
        let model = Self.rig(seen)
        try Syscalls.withProvider(model.kernel) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let buf = try device.exportDMABuf(bar: 0, offset: 0x40000, length: 4096)
            #expect(seen.exports.withLock { $0 } == [Export(region: 0, openFlags: UInt32(O_RDWR | O_CLOEXEC), flags: 0,
                                                       ranges: [0x40000, 4096])])
            #expect(buf.bar == 0 && buf.offset == 0x40000 && buf.length == 4096)
            #expect(buf.label == "/dev/vfio/devices/vfio0 BAR 0 [0x40000, +4096)")
            let fd = try #require(seen.fds.withLock { $0.first })
            #expect(try buf.withDescriptor { $0 } == fd)
            #expect(model.kernel.isOpen(fd))
            try buf.close()
            #expect(!model.kernel.isOpen(fd), "close() closes the dma-buf")
            // Dropped without close: the fd closes with the owner.
            do { _ = try device.exportDMABuf(bar: 2, length: 8192) }
            #expect(seen.fds.withLock { $0.count } == 2 && !model.kernel.isOpen(seen.fds.withLock { $0[1] }))
        }
    }

    @Test func exportRefusesWhatTheKernelWouldAndExplainsWhatItRefuses() throws {
        let seen = Seen()
        try Syscalls.withProvider(Self.rig(seen).kernel) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let rom = #expect(throws: VFIOError.self) { _ = try device.exportDMABuf(bar: 6, length: 4096) }
            #expect(rom?.detail?.contains("BAR 6 does not exist") == true, "\(String(describing: rom))")
            let odd = #expect(throws: VFIOError.self) { _ = try device.exportDMABuf(bar: 0, offset: 0x40, length: 4096) }
            #expect(odd?.detail?.contains("multiples of the page size") == true && odd?.hint?.contains("whole pages") == true)
            let empty = #expect(throws: VFIOError.self) { _ = try device.exportDMABuf(bar: 0, length: 0) }
            #expect(empty?.operation == .ioctl(.vfioDeviceFeature))
            #expect(seen.exports.withLock { $0.isEmpty }, "refused before the kernel was asked")
        }
        for (errno, words) in [(ENODEV, "not a memory BAR"), (EINVAL, "inside the BAR"), (ENOTTY, "CONFIG_VFIO_PCI_DMABUF")] {
            try Syscalls.withProvider(Self.rig(seen, exportErrno: errno).kernel) {
                let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
                let e = #expect(throws: VFIOError.self) { _ = try device.exportDMABuf(bar: 0, length: 4096) }
                #expect(e?.errno?.rawValue == errno && e?.detail?.contains(words) == true, "\(String(describing: e))")
            }
        }
    }

    @Test func aMappingMapsTheDMABufByFileAndUnmapsExactlyItsRange() throws {
        let seen = Seen()
        let model = Self.rig(seen)
        try Syscalls.withProvider(model.kernel) {
            let ctx = try IOMMUFD()
            let ioas = try IOAS(ctx)
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let buf = try device.exportDMABuf(bar: 0, offset: 0x40000, length: 8192)
            let mapping = try ioas.map(buf, at: IOVA(0x20_0000), writable: true)
            let call = try #require(model.kernel.calls(IOMMU_IOAS_MAP_FILE).last)
            let arg = call.argument(as: iommu_ioas_map_file.self)
            #expect(arg.fd == seen.fds.withLock { $0[0] } && arg.start == 0 && arg.length == 8192 && arg.iova == 0x20_0000)
            #expect(mapping.iova == IOVA(0x20_0000) && mapping.lastIOVA == IOVA(0x20_1fff) && mapping.length == 8192)
            #expect(mapping.bar == 0 && mapping.barOffset == 0x40000 && mapping.revocation == nil)
            try mapping.checkLive()
            // The kernel holds its own reference: closing the dma-buf leaves the mapping.
            try buf.close()
            #expect(model.areas(ioas.objectID) == [Area(iova: 0x20_0000, length: 8192)])
            // The mapping owns its range: no raw unmap, no destroy under it.
            #expect(throws: VFIOError.self) { _ = try ioas.unmap(iova: IOVA(0x20_0000), length: 8192) }
            #expect(throws: VFIOError.self) { try ioas.destroy() }
            try mapping.unmap()
            #expect(model.areas(ioas.objectID) == [])
            // Kernel-chosen IOVA, and unmapAll leaves the mapping inert.
            let again = try device.exportDMABuf(bar: 0, length: 4096)
            let chosen = try ioas.map(again, at: nil)
            #expect(chosen.iova == IOVA(0x10_0000))
            #expect(try ioas.unmapAll() == 4096)
            let unmapsBefore = model.kernel.calls(IOMMU_IOAS_UNMAP).count
            try chosen.unmap()
            #expect(model.kernel.calls(IOMMU_IOAS_UNMAP).count == unmapsBefore, "an inert mapping issues nothing")
            try ioas.destroy()
        }
    }

    @Test func aResetRevokesTheMappingAndCheckLiveSaysSo() throws {
        let seen = Seen()
        try Syscalls.withProvider(Self.rig(seen).kernel) {
            let ioas = try IOAS(try IOMMUFD())
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let buf = try device.exportDMABuf(bar: 0, length: 4096)
            let mapping = try ioas.map(buf, at: IOVA(0x20_0000))
            try device.reset()
            #expect(mapping.revocation == "VFIO_DEVICE_RESET of /dev/vfio/devices/vfio0")
            let e = #expect(throws: VFIOError.self) { try mapping.checkLive() }
            #expect(e?.operation == .step(.barMapping))
            #expect(e?.detail?.contains("the kernel revoked the dma-buf of /dev/vfio/devices/vfio0 BAR 0 [0x0, +4096) mapped "
                + "at IOVA 0x200000-0x200fff: VFIO_DEVICE_RESET") == true, "\(String(describing: e))")
            #expect(e?.detail?.contains("DMA to it faults") == true)
            #expect(e?.hint?.contains("map its dma-buf again") == true, "\(String(describing: e?.hint))")
            // The hint, followed: unmap, then map the same dma-buf again: the new mapping is live.
            try mapping.unmap()
            let fresh = try ioas.map(buf, at: IOVA(0x20_0000))
            #expect(fresh.revocation == nil)
            try fresh.checkLive()
            // Memory decoding turned off through config space revokes too; turning it on does not count.
            let config = try device.configSpace()
            try config.setCommand([.memorySpace, .busMaster])
            #expect(fresh.revocation == nil)
            try config.setCommand([.busMaster])
            #expect(fresh.revocation?.contains("memory decoding of /dev/vfio/devices/vfio0 was turned off") == true)
        }
    }

    @Test func closingTheExporterRevokesForGoodOnceItsLastRegionMmapIsGone() throws {
        let seen = Seen()
        try Syscalls.withProvider(Self.rig(seen).kernel) {
            let ioas = try IOAS(try IOMMUFD())
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let mapping = try ioas.map(try device.exportDMABuf(bar: 0, length: 4096), at: IOVA(0x20_0000))
            try device.close()
            #expect(mapping.revocation == "/dev/vfio/devices/vfio0 was closed: the kernel released it")
            let e = #expect(throws: VFIOError.self) { try mapping.checkLive() }
            #expect(e?.hint?.contains("open the device again, export the BAR again") == true, "\(String(describing: e))")
            try mapping.unmap()

            // With BAR 0 mmapped, the close does not release the device yet (the mmap holds the kernel's
            // file): the mapping stays live until the last region mmap goes.
            let other = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let bar = try other.map(region: try other.regionInfo(PCIRegion.bar(0)))
            let held = try ioas.map(try other.exportDMABuf(bar: 0, length: 4096), at: IOVA(0x20_0000))
            try other.close()
            #expect(held.revocation == nil, "released while a region was still mmapped")
            try bar.unmap()
            #expect(held.revocation == "/dev/vfio/devices/vfio0 was closed and its last region mmap went: the kernel released it")
            try held.unmap()
        }
    }

    @Test func aMapOfARevokedDMABufSaysItIsRevoked() throws {
        let seen = Seen()
        let model = Self.rig(seen)
        model.kernel.onIoctl(IOMMU_IOAS_MAP_FILE) { _, _ in -ENODEV }
        try Syscalls.withProvider(model.kernel) {
            let ioas = try IOAS(try IOMMUFD())
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let buf = try device.exportDMABuf(bar: 0, length: 4096)
            let e = #expect(throws: VFIOError.self) { _ = try ioas.map(buf, at: IOVA(0x20_0000)) }
            #expect(e?.operation == .ioctl(.iommuIOASMapFile) && e?.errno == .noSuchDevice)
            #expect(e?.detail?.contains("is revoked: the device does not decode memory now") == true, "\(String(describing: e))")
            #expect(e?.hint?.contains("turn memory decoding back on") == true)
        }
    }

    /// EFAULT from VFIO_IOMMU_MAP_DMA: on iommufd's compat container it points
    /// to the dma-buf way (native iommufd); on the legacy container it does not.
    @Test(arguments: [VFIOContainer.Backend.iommufdCompat, .legacy])
    func aContainerMapEFAULTPointsToTheDMABufOnlyOnTheCompatContainer(_ backend: VFIOContainer.Backend) throws {
        let k = FakeKernel()
        k.files[backend.rawValue] = .node
        k.onIoctl(VFIO_GET_API_VERSION) { _, _ in VFIO_API_VERSION }
        k.onIoctl(VFIO_IOMMU_MAP_DMA) { _, _ in -EFAULT }
        try Syscalls.withProvider(k) {
            let container = try VFIOContainer(backend: backend)
            let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
            defer { page.deallocate() }
            let e = #expect(throws: VFIOError.self) {
                try container.unsafeMapDMA(address: page, length: 4096, at: IOVA(0x20_0000))
            }
            #expect(e?.errno == .badAddress && e?.detail?.contains("4096 bytes at IOVA 0x200000") == true)
            if backend == .iommufdCompat {
                #expect(e?.detail?.contains("never maps a BAR by address") == true, "\(String(describing: e))")
                #expect(e?.hint?.contains("VFIODevice.exportDMABuf(bar:offset:length:)") == true)
            } else {
                #expect(e?.hint == nil, "\(String(describing: e))")
            }
        }
    }
}
