import CVFIO
import FoundationEssentials
import Synchronization
import SystemPackage
import Testing
import VFIOCommands
@testable import VFIOKit
@testable import VFIOHost
@testable import VFIOObjects
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Little helpers to read recorded argument bytes.
extension FakeKernel.Call {
    func u32(_ offset: Int) -> UInt32 { bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self) } }
    func i32(_ offset: Int) -> Int32 { bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: Int32.self) } }
    func u64(_ offset: Int) -> UInt64 { bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self) } }
}

/// What a fake kernel saw in a `VFIO_DEVICE_FEATURE_DMA_LOGGING_START`
/// payload at `data`: the page size, the range count, then each range's IOVA and length.
func loggingControlWords(_ data: UnsafeMutableRawPointer) -> [UInt64] {
    let c = data.loadUnaligned(as: vfio_device_feature_dma_logging_control.self)
    let r = UnsafeRawPointer(bitPattern: UInt(c.ranges))!
    var out = [c.page_size, UInt64(c.num_ranges)]
    for i in 0..<Int(c.num_ranges) {
        let x = r.loadUnaligned(fromByteOffset: i * 16, as: vfio_device_feature_dma_logging_range.self)
        out += [x.iova, x.length]
    }
    return out
}

/// Runs `body` on the cdev `vfio0` of a fake kernel that answers every
/// `request` with the errno `code`, and closes the device afterwards.
func withCdevDevice(failing request: UInt, with code: Int32, _ body: (VFIODevice) throws -> Void) throws {
    let kernel = FakeKernel()
    kernel.files["/dev/vfio/devices/vfio0"] = .node
    kernel.onIoctl(request) { _, _ in -code }
    try Syscalls.withProvider(kernel) {
        let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
        try body(device)
        try device.close()
    }
}

private func cdevKernel() -> FakeKernel {
    let k = FakeKernel()
    k.files["/dev/vfio/devices/vfio0"] = .node
    k.files["/dev/iommu"] = .node
    k.files["/dev/vfio/vfio"] = .node
    k.files["/dev/vfio/7"] = .node
    return k
}

@Suite struct IRQEncodingTests {
    @Test func eventfdTriggerCarriesFdsAndMinusOneForGaps() throws {
        let kernel = cdevKernel()
        kernel.onIoctl(VFIO_DEVICE_SET_IRQS) { _, _ in 0 }
        try Syscalls.withProvider(kernel) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let e1 = try EventFD()
            let e2 = try EventFD()
            try device.setIRQTrigger(.msix, start: 2, eventfds: [e1, nil, e2])
            let call = try #require(kernel.calls(VFIO_DEVICE_SET_IRQS).last)
            #expect(call.u32(0) == 20 + 12)  // argsz: header + 3 x s32
            #expect(call.u32(4) == VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER)
            #expect(call.u32(8) == 2)  // index MSI-X
            #expect(call.u32(12) == 2)  // start
            #expect(call.u32(16) == 3)  // count
            #expect(call.i32(20) == e1.fd.number)
            #expect(call.i32(24) == -1)
            #expect(call.i32(28) == e2.fd.number)

            try device.disableIRQ(.msix)
            let off = try #require(kernel.calls(VFIO_DEVICE_SET_IRQS).last)
            #expect(off.u32(0) == 20 && off.u32(4) == VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER)
            #expect(off.u32(16) == 0)

            try device.unmaskIRQ(.intx)
            let un = try #require(kernel.calls(VFIO_DEVICE_SET_IRQS).last)
            #expect(un.u32(4) == VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK && un.u32(8) == 0 && un.u32(16) == 1)

            try device.maskIRQ(.intx)
            #expect(kernel.calls(VFIO_DEVICE_SET_IRQS).last?.u32(4) == VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK)

            try device.setIRQs(.msi, action: .trigger, flags: [true, false])
            let b = try #require(kernel.calls(VFIO_DEVICE_SET_IRQS).last)
            #expect(b.u32(0) == 22 && b.u32(4) == VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER)
            #expect(b.bytes[20] == 1 && b.bytes[21] == 0)

            try device.setIRQUnmaskEventFD(.intx, eventfd: e1)
            let u = try #require(kernel.calls(VFIO_DEVICE_SET_IRQS).last)
            #expect(u.u32(4) == VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK && u.i32(20) == e1.fd.number)
            try device.close()
            try e1.close()
            try e2.close()
        }
        #expect(kernel.openFDCount == 0)
    }

    @Test func irqInfoDecodesFlags() throws {
        let kernel = cdevKernel()
        kernel.onIoctl(VFIO_DEVICE_GET_IRQ_INFO) { _, arg in
            let p = arg!.assumingMemoryBound(to: vfio_irq_info.self)
            p.pointee.flags = VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED
            p.pointee.count = p.pointee.index == 0 ? 1 : 0
            return 0
        }
        try Syscalls.withProvider(kernel) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let intx = try device.irqInfo(.intx)
            #expect(intx.count == 1 && intx.isAutomasked && intx.isMaskable && intx.supportsEventFD)
            #expect(try device.irqInfo(.msix).count == 0)
            #expect(kernel.calls(VFIO_DEVICE_GET_IRQ_INFO).last?.u32(8) == 2)
        }
    }

    @Test func eventfdWaitReturnsCountOrNilOnTimeout() async throws {
        let e = try EventFD()
        // The blocking wait (in async code the async overload is preferred).
        func blocking(_ t: Duration) throws(VFIOError) -> UInt64? { try e.wait(timeout: t) }
        #expect(try blocking(.milliseconds(10)) == nil)
        try e.signal()
        try e.signal(2)
        #expect(try blocking(.seconds(1)) == 3)
        try e.signal(4)
        #expect(try await e.wait(timeout: .seconds(1)) == 4)
        #expect(try await e.wait(timeout: .milliseconds(10)) == nil)
        // Async: a dedicated thread delivers counts; cancelling stops it.
        var it = e.interrupts().makeAsyncIterator()
        try e.signal(5)
        #expect(await it.next() == 5)
        try e.close()
    }
}

@Suite struct RegionInfoTests {
    /// Answers GET_REGION_INFO the way the kernel does: the first call with a
    /// bare struct learns the size; the second gets a sparse-mmap cap and a type cap.
    static func install(_ kernel: FakeKernel) {
        kernel.onIoctl(VFIO_DEVICE_GET_REGION_INFO) { _, arg in
            let raw = arg!
            let h = raw.assumingMemoryBound(to: vfio_region_info.self)
            let base = MemoryLayout<vfio_region_info>.size  // 32
            let sparseSize = MemoryLayout<vfio_region_info_cap_sparse_mmap>.size + 2 * 16
            let typeSize = MemoryLayout<vfio_region_info_cap_type>.size
            let needed = UInt32(base + sparseSize + typeSize)
            h.pointee.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP
                | VFIO_REGION_INFO_FLAG_CAPS
            h.pointee.size = 0x4000
            h.pointee.offset = UInt64(h.pointee.index) << 40
            guard h.pointee.argsz >= needed else {
                h.pointee.argsz = needed
                h.pointee.cap_offset = 0
                return 0
            }
            h.pointee.cap_offset = UInt32(base)
            var sparse = vfio_region_info_cap_sparse_mmap()
            sparse.header.id = VFIO_REGION_INFO_CAP_SPARSE_MMAP
            sparse.header.version = 1
            sparse.header.next = UInt32(base + sparseSize)
            sparse.nr_areas = 2
            raw.storeBytes(of: sparse, toByteOffset: base, as: vfio_region_info_cap_sparse_mmap.self)
            let areas = base + MemoryLayout<vfio_region_info_cap_sparse_mmap>.size
            raw.storeBytes(of: vfio_region_sparse_mmap_area(offset: 0, size: 0x1000), toByteOffset: areas,
                           as: vfio_region_sparse_mmap_area.self)
            raw.storeBytes(of: vfio_region_sparse_mmap_area(offset: 0x3000, size: 0x1000), toByteOffset: areas + 16,
                           as: vfio_region_sparse_mmap_area.self)
            var type = vfio_region_info_cap_type()
            type.header.id = VFIO_REGION_INFO_CAP_TYPE
            type.header.version = 1
            type.type = VFIO_REGION_TYPE_PCI_VENDOR_TYPE | 0x8086
            type.subtype = 1
            raw.storeBytes(of: type, toByteOffset: base + sparseSize, as: vfio_region_info_cap_type.self)
            return 0
        }
    }

    @Test func twoCallGrowthAndSparseMmapParse() throws {
        let kernel = cdevKernel()
        Self.install(kernel)
        try Syscalls.withProvider(kernel) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let info = try device.regionInfo(PCIRegion.bar(2))
            let calls = kernel.calls(VFIO_DEVICE_GET_REGION_INFO)
            #expect(calls.count == 2)
            #expect(calls[0].u32(0) == 32 && calls[0].u32(8) == 2)
            #expect(calls[1].u32(0) == 32 + (16 + 2 * 16) + 16)  // header, sparse cap + 2 areas, type cap
            #expect(info.index == 2 && info.size == 0x4000 && info.offset == 2 << 40)
            #expect(info.isMappable && info.isReadable && info.isWritable)
            #expect(info.sparseAreas == [.init(offset: 0, size: 0x1000), .init(offset: 0x3000, size: 0x1000)])
            #expect(info.type?.type == VFIO_REGION_TYPE_PCI_VENDOR_TYPE | 0x8086 && info.type?.subtype == 1)
            #expect(info.capabilities.map(\.id) == [VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_CAP_TYPE])
            // A sparse region cannot be mapped whole; its areas can.
            let whole = #expect(throws: VFIOError.self) { _ = try device.map(region: info) }
            #expect(whole?.detail?.contains("0x3000+0x1000") == true)
            let area = try device.map(region: info, area: .init(offset: 0x3000, size: 0x1000))
            #expect(area.length == 0x1000 && area.regionOffset == 0x3000)
            area.store32(0xdead_beef, at: 0xffc)
            #expect(area.load32(at: 0xffc) == 0xdead_beef)
            area.store64(0x0102_0304_0506_0708, at: 8)
            #expect(area.load16(at: 8) == 0x0708 && area.load8(at: 15) == 0x01)
        }
    }

    @Test func regionReadWriteIsBoundsCheckedAndUsesTheRegionOffset() throws {
        let kernel = cdevKernel()
        Self.install(kernel)
        let seen = Mutex<[Int64]>([])
        kernel.onFileIO { _, offset, buffer, _ in
            seen.withLock { $0.append(offset) }
            return buffer.count
        }
        try Syscalls.withProvider(kernel) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let cfg = try device.regionInfo(PCIRegion.config)
            try device.write(UInt16(4), region: cfg, at: 4)
            _ = try device.read(UInt32.self, region: cfg, at: 0x10)
            #expect(seen.withLock { $0 } == [Int64(7 << 40) + 4, Int64(7 << 40) + 0x10])
            let e = #expect(throws: VFIOError.self) { _ = try device.read(UInt32.self, region: cfg, at: 0x3ffe) }
            #expect(e?.detail?.contains("past the end") == true)
        }
    }
}

@Suite struct HotResetTests {
    static func installInfo(_ kernel: FakeKernel, cdev: Bool) {
        kernel.onIoctl(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO) { _, arg in
            let h = arg!.assumingMemoryBound(to: vfio_pci_hot_reset_info.self)
            let room = (Int(h.pointee.argsz) - 12) / 8
            h.pointee.flags = 0
            guard room >= 6 else {
                h.pointee.count = 6
                return -ENOSPC
            }
            h.pointee.count = 6
            if cdev { h.pointee.flags = VFIO_PCI_HOT_RESET_FLAG_DEV_ID }
            for i in 0..<6 {
                var d = vfio_pci_dependent_device()
                d.segment = 0
                d.bus = 1
                d.devfn = UInt8(i << 3)
                if cdev {
                    d.devid = i == 0 ? 5 : (i == 1 ? VFIO_PCI_DEVID_OWNED : VFIO_PCI_DEVID_NOT_OWNED)
                } else {
                    d.group_id = 9 + UInt32(i % 2)
                }
                arg!.storeBytes(of: d, toByteOffset: 12 + i * 8, as: vfio_pci_dependent_device.self)
            }
            return 0
        }
        kernel.onIoctl(VFIO_DEVICE_PCI_HOT_RESET) { _, _ in 0 }
    }

    @Test func groupPathInfoGrowsOnENOSPCAndResetCarriesGroupFds() throws {
        let kernel = cdevKernel()
        kernel.files["/dev/vfio/9"] = .node
        kernel.files["/dev/vfio/10"] = .node
        Self.installInfo(kernel, cdev: false)
        kernel.onIoctl(VFIO_GROUP_GET_STATUS) { _, arg in
            arg!.assumingMemoryBound(to: vfio_group_status.self).pointee.flags = VFIO_GROUP_FLAGS_VIABLE
            return 0
        }
        kernel.onIoctl(VFIO_GROUP_GET_DEVICE_FD) { _, _ in 0 }
        try Syscalls.withProvider(kernel) {
            let g9 = try VFIOGroup(number: 9)
            let g10 = try VFIOGroup(number: 10)
            let device = VFIODevice(fd: try OwnedFD.open("/dev/vfio/devices/vfio0"), path: .group("0000:01:00.0"), group: g9)
            let info = try device.hotResetInfo()
            #expect(kernel.calls(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO).count == 2)
            #expect(kernel.calls(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO)[1].u32(0) == 12 + 6 * 8)
            #expect(info.devices.count == 6 && !info.usesDeviceIDs)
            #expect(info.devices[1].address.description == "0000:01:01.0" && info.devices[1].groupID == 10)
            #expect(info.groupIDs == [9, 10])
            try device.hotReset(groups: [g9, g10])
            let call = try #require(kernel.calls(VFIO_DEVICE_PCI_HOT_RESET).last)
            #expect(call.u32(0) == 12 + 8 && call.u32(4) == 0 && call.u32(8) == 2)
            #expect(call.i32(12) == g9.fd.number && call.i32(16) == g10.fd.number)
            // The cdev form is refused on a group device.
            #expect(throws: VFIOError.self) { try device.hotReset() }
        }
        #expect(kernel.openFDCount == 0)
    }

    @Test func cdevPathReportsDeviceIdsAndOwnershipAndResetsWithNoGroups() throws {
        let kernel = cdevKernel()
        Self.installInfo(kernel, cdev: true)
        try Syscalls.withProvider(kernel) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let info = try device.hotResetInfo()
            #expect(info.usesDeviceIDs && !info.allOwned)
            #expect(info.devices[0].deviceID == 5 && info.devices[0].owned == true)
            #expect(info.devices[1].deviceID == nil && info.devices[1].owned == true)
            #expect(info.devices[2].deviceID == nil && info.devices[2].owned == false)
            #expect(info.devices[2].description.contains("not owned"))
            try device.hotReset()
            let call = try #require(kernel.calls(VFIO_DEVICE_PCI_HOT_RESET).last)
            #expect(call.u32(0) == 12 && call.u32(8) == 0)
        }
    }

    @Test func enodevSaysNotSupportedByThisDevice() throws {
        let kernel = cdevKernel()
        kernel.onIoctl(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO) { _, _ in -ENODEV }
        kernel.onIoctl(VFIO_DEVICE_RESET) { _, _ in -ENOTTY }
        try Syscalls.withProvider(kernel) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let e = #expect(throws: VFIOError.self) { _ = try device.hotResetInfo() }
            #expect(e?.operation == .ioctl(.vfioDeviceGetPCIHotResetInfo) && e?.detail?.contains("not supported by this device") == true)
            let r = #expect(throws: VFIOError.self) { try device.reset() }
            #expect(r?.detail?.contains("not supported by this device") == true)
        }
    }
}

@Suite struct BindAttachTests {
    @Test func bindCarriesIommufdAndTokenAndReturnsDevid() throws {
        let kernel = cdevKernel()
        let token = UUID(uuidString: "01234567-89AB-CDEF-0123-456789ABCDEF")!
        let seenToken = Mutex<[UInt8]>([])
        kernel.onIoctl(VFIO_DEVICE_BIND_IOMMUFD) { _, arg in
            let p = arg!.assumingMemoryBound(to: vfio_device_bind_iommufd.self)
            if p.pointee.flags & VFIO_DEVICE_BIND_FLAG_TOKEN != 0,
               let t = UnsafeRawPointer(bitPattern: UInt(p.pointee.token_uuid_ptr)) {
                seenToken.withLock { $0 = Array(UnsafeRawBufferPointer(start: t, count: 16)) }
            }
            p.pointee.out_devid = 42
            return 0
        }
        kernel.onIoctl(IOMMU_IOAS_ALLOC) { _, arg in
            arg!.assumingMemoryBound(to: iommu_ioas_alloc.self).pointee.out_ioas_id = 3
            return 0
        }
        kernel.onIoctl(VFIO_DEVICE_ATTACH_IOMMUFD_PT) { _, arg in
            let p = arg!.assumingMemoryBound(to: vfio_device_attach_iommufd_pt.self)
            if p.pointee.flags == 0 { p.pointee.pt_id = 4 }  // the kernel reports the HWPT it made
            return 0
        }
        kernel.onIoctl(VFIO_DEVICE_DETACH_IOMMUFD_PT) { _, _ in 0 }
        kernel.onIoctl(IOMMU_DESTROY) { _, _ in 0 }
        try Syscalls.withProvider(kernel) {
            let ctx = try IOMMUFD()
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            #expect(throws: VFIOError.self) { try device.attach(to: try IOAS(ctx)) }  // not bound yet
            #expect(try device.bind(to: ctx, token: token) == 42)
            let bind = try #require(kernel.calls(VFIO_DEVICE_BIND_IOMMUFD).last)
            #expect(bind.u32(0) == UInt32(MemoryLayout<vfio_device_bind_iommufd>.size))
            #expect(bind.u32(4) == VFIO_DEVICE_BIND_FLAG_TOKEN)
            #expect(bind.i32(8) == ctx.fd.number)
            #expect(seenToken.withLock { $0 } == withUnsafeBytes(of: token.uuid) { Array($0) })
            #expect(device.deviceID == 42)
            #expect(throws: VFIOError.self) { try device.bind(to: ctx) }  // binds once

            let ioas = try IOAS(ctx)
            #expect(try device.attach(to: ioas) == 4)
            let attach = try #require(kernel.calls(VFIO_DEVICE_ATTACH_IOMMUFD_PT).last)
            #expect(attach.u32(0) == 16 && attach.u32(4) == 0 && attach.u32(8) == 3)
            #expect(device.attachedTarget === ioas)

            _ = try device.attach(to: ioas, pasid: 7)
            let pasid = try #require(kernel.calls(VFIO_DEVICE_ATTACH_IOMMUFD_PT).last)
            #expect(pasid.u32(4) == VFIO_DEVICE_ATTACH_PASID && pasid.u32(12) == 7)
            try device.detach(pasid: 7)
            let dp = try #require(kernel.calls(VFIO_DEVICE_DETACH_IOMMUFD_PT).last)
            #expect(dp.u32(0) == 12 && dp.u32(4) == VFIO_DEVICE_DETACH_PASID && dp.u32(8) == 7)
            try device.detach()
            #expect(kernel.calls(VFIO_DEVICE_DETACH_IOMMUFD_PT).last?.u32(4) == 0)
            #expect(device.attachedTarget == nil)

            // An IOAS of another context is refused before the kernel is asked.
            let other = try IOMMUFD()
            let foreign = try IOAS(other)
            let e = #expect(throws: VFIOError.self) { try device.attach(to: foreign) }
            #expect(e?.detail?.contains("another iommufd context") == true)
            try device.close()
        }
        #expect(kernel.openFDCount == 0)
    }

    @Test func groupDeviceFdRequestCarriesTheVFToken() throws {
        let kernel = cdevKernel()
        let asked = Mutex<[String]>([])
        kernel.onIoctl(VFIO_GROUP_GET_STATUS) { _, arg in
            arg!.assumingMemoryBound(to: vfio_group_status.self).pointee.flags = VFIO_GROUP_FLAGS_VIABLE
            return 0
        }
        kernel.onIoctl(VFIO_GROUP_GET_DEVICE_FD) { _, arg in
            asked.withLock { $0.append(String(cString: arg!.assumingMemoryBound(to: CChar.self))) }
            return -ENODEV
        }
        try Syscalls.withProvider(kernel) {
            let group = try VFIOGroup(number: 7)
            #expect(throws: VFIOError.self) { _ = try group.device(try PCIAddress(parsing: "0000:00:03.0")) }
            let token = UUID(uuidString: "01234567-89AB-CDEF-0123-456789ABCDEF")!
            let e = #expect(throws: VFIOError.self) { _ = try group.device(try PCIAddress(parsing: "0000:00:03.0"), vfToken: token) }
            #expect(e?.operation == .ioctl(.vfioGroupGetDeviceFD))
            #expect(asked.withLock { $0 } == ["0000:00:03.0", "0000:00:03.0 vf_token=01234567-89ab-cdef-0123-456789abcdef"])
            try group.close()
        }
        #expect(kernel.openFDCount == 0)
    }
}

@Suite struct Type1Tests {
    static func container(_ kernel: FakeKernel) {
        kernel.onIoctl(VFIO_GET_API_VERSION) { _, _ in 0 }
        kernel.onIoctl(VFIO_CHECK_EXTENSION) { _, arg in
            let ext = UInt(bitPattern: arg)
            return ext == VFIO_TYPE1v2_IOMMU || ext == VFIO_TYPE1_IOMMU || ext == VFIO_UNMAP_ALL ? 1 : 0
        }
        kernel.onIoctl(VFIO_SET_IOMMU) { _, _ in 0 }
        kernel.onIoctl(VFIO_IOMMU_MAP_DMA) { _, _ in 0 }
        kernel.onIoctl(VFIO_IOMMU_UNMAP_DMA) { _, arg in
            let p = arg!.assumingMemoryBound(to: vfio_iommu_type1_dma_unmap.self)
            if p.pointee.flags & VFIO_DMA_UNMAP_FLAG_ALL != 0 { p.pointee.size = 0x3000 }
            return 0
        }
    }

    @Test func mapAndUnmapEncodeTheType1Structs() throws {
        let kernel = cdevKernel()
        Self.container(kernel)
        try Syscalls.withProvider(kernel) {
            let c = try VFIOContainer(backend: .legacy)
            #expect(try c.supports(.type1v2) && !(try c.checkExtension(VFIO_NOIOMMU_IOMMU)))
            try c.setIOMMU(.type1v2)
            #expect(kernel.calls(VFIO_SET_IOMMU).count == 1)
            let buffer = try DMABuffer(length: 8192)
            do {
                let mapping = try c.mapDMA(buffer, at: 0x100000, writable: false)
                let map = try #require(kernel.calls(VFIO_IOMMU_MAP_DMA).last)
                #expect(map.u32(0) == 32 && map.u32(4) == VFIO_DMA_MAP_FLAG_READ)
                #expect(map.u64(8) == UInt64(UInt(bitPattern: buffer.baseAddress)) && map.u64(16) == 0x100000 && map.u64(24) == 8192)
                #expect(mapping.iova == 0x100000 && mapping.length == 8192)
            }  // dropped: deinit unmaps
            let unmap = try #require(kernel.calls(VFIO_IOMMU_UNMAP_DMA).last)
            #expect(unmap.u32(0) == 24 && unmap.u32(4) == 0 && unmap.u64(8) == 0x100000 && unmap.u64(16) == 8192)

            let m2 = try c.mapDMA(buffer, at: 0x200000)
            #expect(kernel.calls(VFIO_IOMMU_MAP_DMA).last?.u32(4) == VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE)
            try m2.unmap()
            #expect(kernel.calls(VFIO_IOMMU_UNMAP_DMA).count == 2)  // consuming unmap, no second unmap in deinit

            #expect(try c.unmapAll() == 0x3000)
            let all = try #require(kernel.calls(VFIO_IOMMU_UNMAP_DMA).last)
            #expect(all.u32(4) == VFIO_DMA_UNMAP_FLAG_ALL && all.u64(8) == 0 && all.u64(16) == 0)

            try c.invalidateVirtualAddresses(iova: 0x200000, length: 8192)
            #expect(kernel.calls(VFIO_IOMMU_UNMAP_DMA).last?.u32(4) == VFIO_DMA_UNMAP_FLAG_VADDR)
            try buffer.withUnsafeMutableBytes { (raw) throws(VFIOError) in
                try c.updateVirtualAddress(UnsafeRawPointer(raw.baseAddress!), iova: 0x200000, length: 8192)
            }
            #expect(kernel.calls(VFIO_IOMMU_MAP_DMA).last?.u32(4) == VFIO_DMA_MAP_FLAG_VADDR)
            try c.close()
        }
        #expect(kernel.openFDCount == 0)
    }

    @Test func getInfoParsesIovaRangesDmaAvailAndMigration() throws {
        let kernel = cdevKernel()
        Self.container(kernel)
        kernel.onIoctl(VFIO_IOMMU_GET_INFO) { _, arg in
            let raw = arg!
            let h = raw.assumingMemoryBound(to: vfio_iommu_type1_info.self)
            let base = MemoryLayout<vfio_iommu_type1_info>.size  // 24
            let rangesCap = MemoryLayout<vfio_iommu_type1_info_cap_iova_range>.size + 2 * 16
            let migCap = MemoryLayout<vfio_iommu_type1_info_cap_migration>.size
            let availCap = MemoryLayout<vfio_iommu_type1_info_dma_avail>.size
            let needed = UInt32(base + rangesCap + migCap + availCap)
            h.pointee.flags = VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS
            h.pointee.iova_pgsizes = 0x4020_1000
            guard h.pointee.argsz >= needed else { h.pointee.argsz = needed; return 0 }
            h.pointee.cap_offset = UInt32(base)
            var r = vfio_iommu_type1_info_cap_iova_range()
            r.header = vfio_info_cap_header(id: VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, version: 1, next: UInt32(base + rangesCap))
            r.nr_iovas = 2
            raw.storeBytes(of: r, toByteOffset: base, as: vfio_iommu_type1_info_cap_iova_range.self)
            let first = base + MemoryLayout<vfio_iommu_type1_info_cap_iova_range>.size
            raw.storeBytes(of: vfio_iova_range(start: 0, end: 0xfedf_ffff), toByteOffset: first, as: vfio_iova_range.self)
            raw.storeBytes(of: vfio_iova_range(start: 0xfef0_0000, end: 0xff_ffff_ffff), toByteOffset: first + 16, as: vfio_iova_range.self)
            var m = vfio_iommu_type1_info_cap_migration()
            m.header = vfio_info_cap_header(id: VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, version: 1, next: UInt32(base + rangesCap + migCap))
            m.flags = 0
            m.pgsize_bitmap = 0x1000
            m.max_dirty_bitmap_size = 0x800_0000
            raw.storeBytes(of: m, toByteOffset: base + rangesCap, as: vfio_iommu_type1_info_cap_migration.self)
            var a = vfio_iommu_type1_info_dma_avail()
            a.header = vfio_info_cap_header(id: VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, version: 1, next: 0)
            a.avail = 65535
            raw.storeBytes(of: a, toByteOffset: base + rangesCap + migCap, as: vfio_iommu_type1_info_dma_avail.self)
            return 0
        }
        try Syscalls.withProvider(kernel) {
            let c = try VFIOContainer()
            let info = try c.info()
            #expect(kernel.calls(VFIO_IOMMU_GET_INFO).count == 2)
            #expect(info.pageSizes == 0x4020_1000)
            #expect(info.iovaRanges == [0...0xfedf_ffff, 0xfef0_0000...0xff_ffff_ffff])
            #expect(info.dmaAvailable == 65535)
            #expect(info.migration?.maxDirtyBitmapSize == 0x800_0000)
        }
    }

    @Test func dmaSpaceAllocatesBelowTheMaskAndFreesOnUnmap() throws {
        let kernel = cdevKernel()
        Self.container(kernel)
        kernel.onIoctl(VFIO_IOMMU_GET_INFO) { _, _ in -EINVAL }
        try Syscalls.withProvider(kernel) {
            let space = try DMASpace(mode: .type1v2, dmaMask: (1 << 28) - 1)
            let buffer = try DMABuffer(length: 8192)
            let a = try space.map(buffer)
            let b = try space.map(buffer)
            #expect(a.iova != b.iova && a.lastIOVA < IOVA(1 << 28) && b.lastIOVA < IOVA(1 << 28))
            let fixed = #expect(throws: VFIOError.self) { _ = try space.map(buffer, at: a.iova) }
            #expect(fixed?.detail?.contains("overlaps") == true)
            let reused = a.iova
            try a.unmap()
            let c = try space.map(buffer)
            #expect(c.iova == reused)
            _ = consume b
            _ = consume c
        }
    }
}

@Suite struct IOVAAllocatorTests {
    @Test func honoursRangesAlignmentAndMask() throws {
        var a = try IOVAAllocator(ranges: [0x1000...0x1fff, 0x10_0000...0xfff_ffff, 0x1000_0000...0xffff_ffff],
                              alignment: 0x1000, dmaMask: (1 << 28) - 1)
        #expect(try a.allocate(length: 0x1000) == 0x1000)
        #expect(try a.allocate(length: 0x2000) == 0x10_0000)  // the first range is full
        #expect(try a.allocate(length: 0x1000, align: 0x20_0000) == 0x20_0000)
        #expect(try a.allocate(length: 0x1000_0000) == nil)  // would cross the 28-bit mask
        #expect((a.reserve(0x10_2000, length: 0x1000) as Bool))
        #expect(!(a.reserve(0x10_1000, length: 0x2000) as Bool))  // overlaps
        #expect(!(a.reserve(0x1000_0000, length: 0x1000) as Bool))  // above the mask
        a.free(0x10_0000)
        #expect(try a.allocate(length: 0x2000) == 0x10_0000)
        #expect(a.allocatedBytes == 0x1000 + 0x2000 + 0x1000 + 0x1000)
    }

    @Test func skipsAHoleThatIsTooSmall() throws {
        var a = try IOVAAllocator(ranges: [0...0xffff], alignment: 0x1000)
        #expect((a.reserve(0x0, length: 0x1000) as Bool))
        #expect((a.reserve(0x2000, length: 0x1000) as Bool))
        #expect(try a.allocate(length: 0x2000) == 0x3000)
        #expect(try a.allocate(length: 0x1000) == 0x1000)
    }
}

@Suite struct GroupViabilityTests {
    @Test func strictPolicyNamesUnboundAndForeignDriverMembers() throws {
        func member(_ bdf: String, _ driver: String?, _ status: GroupViability.MemberStatus, bridge: Bool = false) throws
            -> GroupViability.Member
        {
            GroupViability.Member(address: try PCIAddress(parsing: bdf), driver: driver, status: status, reason: "",
                                  isBridge: bridge)
        }
        let v = GroupViability(group: 5, viable: false, members: [
            try member("0000:00:04.0", nil, .unbound, bridge: true),
            try member("0000:01:01.0", "vfio-pci", .vfio),
            try member("0000:01:02.0", nil, .unbound),
            try member("0000:01:03.0", "e1000e", .blocking),
            try member("0000:01:04.0", "pci-stub", .stub),
        ], blocking: [try PCIAddress(parsing: "0000:01:03.0")], remedies: [])
        #expect(v.blockers(requireVFIO: true).map(\.address.description) == ["0000:01:02.0", "0000:01:03.0"])
        #expect(v.blockers(requireVFIO: false).map(\.address.description) == ["0000:01:03.0"])
        let e = VFIOGroup.blockedError(.step(.openGroup), v, v.blockers(requireVFIO: true))
        #expect(e.description.contains("0000:01:02.0 (no driver"))
        #expect(e.description.contains("0000:01:03.0 (bound to e1000e)"))
        // One command binds every endpoint (binding members one by one would be refused while another blocks).
        #expect(e.remedies.first == .bindGroup(try PCIAddress(parsing: "0000:01:01.0")))
        #expect(CLIWording.message(e).contains("`vfioctl bind 0000:01:01.0 --group`"))
    }
}

@Suite struct FeatureTests {
    @Test func probeTreatsNotSupportedAsAnswerAndEncodesFlags() throws {
        let kernel = cdevKernel()
        kernel.onIoctl(VFIO_DEVICE_FEATURE) { _, arg in
            let p = arg!.assumingMemoryBound(to: vfio_device_feature.self)
            let id = p.pointee.flags & VFIO_DEVICE_FEATURE_MASK
            if id == VFIO_DEVICE_FEATURE_BUS_MASTER { return p.pointee.flags & VFIO_DEVICE_FEATURE_GET != 0 ? -EINVAL : 0 }
            return -ENOTTY
        }
        try Syscalls.withProvider(kernel) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            #expect(try device.probeFeature(VFIO_DEVICE_FEATURE_BUS_MASTER) == FeatureSupport(get: false, set: true))
            #expect(try device.probeFeature(VFIO_DEVICE_FEATURE_MIGRATION).isSupported == false)
            try device.setBusMasterFeature(true)
            let set = try #require(kernel.calls(VFIO_DEVICE_FEATURE).last)
            #expect(set.u32(0) == 12 && set.u32(4) == VFIO_DEVICE_FEATURE_BUS_MASTER | VFIO_DEVICE_FEATURE_SET)
            #expect(set.u32(8) == VFIO_DEVICE_FEATURE_SET_MASTER)
            let e = #expect(throws: VFIOError.self) { _ = try device.migrationFlags() }
            #expect(e?.detail == "not supported by this device")
        }
    }
}

@Suite struct TeardownOrderTests {
    @Test func groupDeviceKeepsGroupAndContainerOpenUntilItCloses() throws {
        let kernel = cdevKernel()
        Type1Tests.container(kernel)
        kernel.onIoctl(VFIO_GROUP_GET_STATUS) { _, arg in
            arg!.assumingMemoryBound(to: vfio_group_status.self).pointee.flags = VFIO_GROUP_FLAGS_VIABLE
            return 0
        }
        kernel.onIoctl(VFIO_GROUP_SET_CONTAINER) { _, _ in 0 }
        try Syscalls.withProvider(kernel) {
            var device: VFIODevice?
            do {
                let container = try VFIOContainer()
                let group = try VFIOGroup(number: 7)
                try group.setContainer(container)
                try container.setIOMMU(.type1v2)
                #expect(kernel.calls(VFIO_GROUP_SET_CONTAINER).last?.i32(0) == container.fd.number)
                // Stand-in for GET_DEVICE_FD (the fake cannot mint an fd from an ioctl).
                device = VFIODevice(fd: try OwnedFD.open("/dev/vfio/devices/vfio0"), path: .group("0000:00:03.0"), group: group)
            }
            #expect(kernel.openPaths == ["/dev/vfio/7", "/dev/vfio/devices/vfio0", "/dev/vfio/vfio"])
            #expect(device?.group?.container != nil)
            device = nil
            #expect(kernel.openPaths.isEmpty, "device, then group, then container: \(kernel.openPaths)")
        }
    }

    @Test func cdevDeviceClosesBeforeItsIOASAndIommufd() throws {
        let kernel = cdevKernel()
        kernel.onIoctl(VFIO_DEVICE_BIND_IOMMUFD) { _, _ in 0 }
        kernel.onIoctl(VFIO_DEVICE_ATTACH_IOMMUFD_PT) { _, _ in 0 }
        kernel.onIoctl(IOMMU_IOAS_ALLOC) { _, arg in
            arg!.assumingMemoryBound(to: iommu_ioas_alloc.self).pointee.out_ioas_id = 2
            return 0
        }
        let deviceOpenAtDestroy = Mutex<Bool?>(nil)
        kernel.onIoctl(IOMMU_DESTROY) { [kernel] _, _ in
            // Runs inside the fake kernel: peek at what is still open.
            let open = kernel.openPaths.contains("/dev/vfio/devices/vfio0")
            deviceOpenAtDestroy.withLock { $0 = open }
            return 0
        }
        try Syscalls.withProvider(kernel) {
            var device: VFIODevice?
            do {
                let ctx = try IOMMUFD()
                let ioas = try IOAS(ctx)
                let d = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
                try d.bind(to: ctx)
                try d.attach(to: ioas)
                device = d
            }
            #expect(kernel.openPaths == ["/dev/iommu", "/dev/vfio/devices/vfio0"])
            #expect(kernel.calls(IOMMU_DESTROY).isEmpty, "the attached IOAS must outlive the device")
            #expect(device?.attachedTarget != nil)
            device = nil
            #expect(deviceOpenAtDestroy.withLock { $0 } == false, "the device closes before its IOAS is destroyed")
            #expect(kernel.openPaths.isEmpty)
        }
    }
}

@Suite struct ConfigSpaceTests {
    /// A fake 4 KiB config space: PM at 0x40 -> MSI at 0x50 -> PCIe at 0x70; AER at
    /// 0x100 -> a vendor cap at 0x140 whose next points back at 0x100 (a loop).
    static func space() -> [UInt8] {
        var c = [UInt8](repeating: 0, count: 4096)
        c[0] = 0x34; c[1] = 0x12; c[2] = 0xe8; c[3] = 0x11
        c[4] = 0x02  // memory space on
        c[6] = 0x10  // status: capability list
        c[0x34] = 0x40
        c[0x40] = 0x01; c[0x41] = 0x50
        c[0x50] = 0x05; c[0x51] = 0x70
        c[0x70] = 0x10; c[0x71] = 0x00
        func ext(_ at: Int, _ id: UInt16, _ version: UInt32, _ next: UInt32) {
            let v = UInt32(id) | version << 16 | next << 20
            withUnsafeBytes(of: v.littleEndian) { for (i, b) in $0.enumerated() { c[at + i] = b } }
        }
        ext(0x100, 0x0001, 2, 0x140)
        ext(0x140, 0x000b, 1, 0x100)
        return c
    }

    @Test func walksCapabilitiesSafelyAndSetsBusMaster() throws {
        let kernel = cdevKernel()
        RegionInfoTests.install(kernel)
        let config = Mutex(Self.space())
        kernel.onFileIO { _, offset, buffer, isWrite in
            let at = Int(offset - (7 << 40))
            config.withLock { c in
                for i in 0..<buffer.count {
                    if isWrite { c[at + i] = buffer[i] } else { buffer[i] = c[at + i] }
                }
            }
            return buffer.count
        }
        try Syscalls.withProvider(kernel) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let cfg = try device.configSpace()
            #expect(try cfg.vendorID == 0x1234 && cfg.deviceID == 0x11e8)
            #expect(try cfg.capabilities().map(\.known) == [.powerManagement, .msi, .pciExpress])
            #expect(try cfg.find(.msi) == 0x50)
            let ext = try cfg.extendedCapabilities()
            #expect(ext.map(\.offset) == [0x100, 0x140], "the loop back to 0x100 ends the walk")
            #expect(ext.first?.known == .aer && ext.first?.version == 2)
            try cfg.setBusMaster(true)
            #expect(try cfg.command() == [.memorySpace, .busMaster])
            try cfg.setBusMaster(false)
            #expect(config.withLock { $0[4] } == 0x02)
        }
    }

    /// The bounds and permission checks of every config access stay in force (they are
    /// inlined, their errors built out of line): an access past the end of the region
    /// is refused with the sizes, before any pread reaches the kernel.
    @Test func accessPastTheRegionEndIsRefusedBeforeTheKernel() throws {
        let kernel = cdevKernel()
        RegionInfoTests.install(kernel)
        let preads = Mutex(0)
        kernel.onFileIO { _, _, buffer, isWrite in
            if !isWrite { preads.withLock { $0 += 1 } }
            return buffer.count
        }
        try Syscalls.withProvider(kernel) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let cfg = try device.configSpace()
            let size = cfg.region.size
            _ = try cfg.read32(size - 4)
            #expect(preads.withLock { $0 } == 1)
            let error = #expect(throws: VFIOError.self) { _ = try cfg.read32(size - 2) }
            #expect(error?.operation == .syscall(.pread))
            #expect(error?.detail == "4 bytes at 0x\(String(size - 2, radix: 16)) run past the end of region "
                + "\(cfg.region.index) (size 0x\(String(size, radix: 16)))")
            #expect(throws: VFIOError.self) { _ = try cfg.read32(UInt64.max) }
            #expect(preads.withLock { $0 } == 1, "a refused access reached the kernel")
        }
    }
}

@Suite struct DirtyTrackingAndDMABufTests {
    @Test func loggingControlCarriesRangesAndReportFillsTheBitmap() throws {
        let kernel = cdevKernel()
        let seenRanges = Mutex<[UInt64]>([])
        kernel.onIoctl(VFIO_DEVICE_FEATURE) { _, arg in
            let p = arg!.assumingMemoryBound(to: vfio_device_feature.self)
            let data = arg! + 8
            switch p.pointee.flags & VFIO_DEVICE_FEATURE_MASK {
            case VFIO_DEVICE_FEATURE_DMA_LOGGING_START:
                seenRanges.withLock { $0 = loggingControlWords(data) }
                return 0
            case VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT:
                let rep = data.loadUnaligned(as: vfio_device_feature_dma_logging_report.self)
                UnsafeMutableRawPointer(bitPattern: UInt(rep.bitmap))!.storeBytes(of: UInt64(0b1010), as: UInt64.self)
                return 0
            case VFIO_DEVICE_FEATURE_DMA_BUF:
                let h = data.loadUnaligned(as: vfio_device_feature_dma_buf.self)
                return h.nr_ranges == 2 && h.region_index == 0 ? 77 : -EINVAL
            default:
                return -ENOTTY
            }
        }
        try Syscalls.withProvider(kernel) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            try device.startDMALogging(pageSize: 4096, ranges: [(0x10000, 0x4000), (0x100000, 0x2000)])
            #expect(seenRanges.withLock { $0 } == [4096, 2, 0x10000, 0x4000, 0x100000, 0x2000])
            #expect(try device.dmaLoggingReport(iova: 0x10000, length: 0x4000, pageSize: 4096) == [0b1010])
            let e = #expect(throws: VFIOError.self) { try device.stopDMALogging() }
            #expect(e?.detail == "not supported by this device")
            let buf = try device.exportDMABuf(region: 0, ranges: [(0, 0x1000), (0x2000, 0x1000)])
            #expect(buf.number == 77)
            _ = buf.release()  // 77 is not a real fd
        }
    }
}
