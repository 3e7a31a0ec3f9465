import CVFIO
import Foundation
import SystemPackage
import Testing
import VFIOHost
import VFIOKit
import VFIOObjects
import VFIOSystem
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The kernel's iommufd contract (drivers/iommu/iommufd/io_pagetable.c,
/// ioas.c, main.c; tools/testing/selftests/iommu/iommufd.c), one case a test,
/// through VFIOKit's public API: each failing case asserts the error's
/// operation, its errno and that its description names the cause. Driven
/// against the kernel's mock domains (CONFIG_IOMMUFD_TEST), which do not depend
/// on the emulated IOMMU: the suite runs in every guest.
@Suite(.serialized, .exclusiveGuestDevices, .guestOnly("ContractGuestTests"))
struct ContractGuestTests {
    /// The error of `body`, which must fail with `operation` and `errno` and
    /// whose description must contain every one of `cause`.
    @discardableResult
    static func expectFailure(_ operation: VFIOError.Operation, _ errno: Errno?, naming cause: [String],
                              sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) -> VFIOError?
    {
        do {
            try body()
            Issue.record("expected \(operation) to fail, it succeeded", sourceLocation: sourceLocation)
        } catch let e as VFIOError {
            #expect(e.operation == operation, "\(e)", sourceLocation: sourceLocation)
            #expect(e.errno == errno, "\(e)", sourceLocation: sourceLocation)
            for c in cause {
                #expect(e.description.contains(c), "\(e)", sourceLocation: sourceLocation)
            }
            return e
        } catch {
            Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
        }
        return nil
    }

    // io_pagetable.c iopt_unmap_iova(): the length unmapped is returned; unmap-all
    // (iova 0, length U64_MAX) returns the sum of every area.
    @Test func unmapReturnsExactlyTheUnmappedLengthAndUnmapAllTheWholeSize() throws {
        try withMockDevice { ctx, ioas, dev in
            let buf = try DMABuffer(length: 0x10000)
            let p = UnsafeRawPointer(buf.baseAddress)
            let a = try ioas.unsafeMap(address: p, length: 0x4000, at: IOVA(mockBase))
            let b = try ioas.unsafeMap(address: p, length: 0x10000, at: IOVA(mockBase + 0x100000))
            _ = try ioas.unsafeMap(address: p, length: 0x2000, at: IOVA(mockBase + 0x200000))
            _ = try ioas.unsafeMap(address: p, length: 0x1000, at: nil)
            #expect(try ioas.unmap(iova: a, length: 0x4000) == 0x4000)
            #expect(try ioas.unmap(iova: b, length: 0x10000) == 0x10000)
            #expect(try ioas.unmapAll() == 0x3000)
            #expect(try ioas.unmapAll() == 0)
            withExtendedLifetime((dev, buf)) {}
        }
    }

    // io_pagetable.c iopt_check_iova() and iopt_unmap_iova(): iova + length - 1
    // overflowing is EOVERFLOW, on map and on unmap.
    @Test func aRangeWrappingPast2To64IsEOVERFLOWOnMapAndOnUnmap() throws {
        try withMockContext { ctx in
            let ioas = try IOAS(ctx)
            let buf = try DMABuffer(length: 8192)
            let p = UnsafeRawPointer(buf.baseAddress)
            let top = IOVA(UInt64.max - 4095)
            Self.expectFailure(.ioctl(.iommuIOASMap), .overflow,
                               naming: ["8192 bytes at IOVA 0xfffffffffffff000", "past the end of the 64-bit IOVA space"]) {
                _ = try ioas.unsafeMap(address: p, length: 8192, at: top)
            }
            Self.expectFailure(.ioctl(.iommuIOASUnmap), .overflow,
                               naming: ["IOVA 0xfffffffffffff000 length 8192", "past the end of the 64-bit IOVA space"]) {
                _ = try ioas.unmap(iova: top, length: 8192)
            }
            withExtendedLifetime(buf) {}
        }
    }

    // The last page of the last usable range maps (no off-by-one at `last`).
    @Test func theLastPageOfTheLastUsableIOVARangeMaps() throws {
        try withMockDevice { ctx, ioas, dev in
            let usable = try ioas.iovaRanges()
            let last = try #require(usable.ranges.last)
            #expect(last.upperBound == IOVA(MockIOMMU.apertureLast))
            // One CPU page (the IOVA's offset in a page must match the memory's), aligned for the IOAS.
            let size = max(UInt64(getpagesize()), usable.alignment)
            let page = IOVA(last.upperBound.rawValue - (size - 1))
            let buf = try DMABuffer(length: Int(size))
            let m = try ioas.map(buf, at: page)
            #expect(m.iova == page)
            try MockIOMMU.checkMap(ctx, hwpt: dev.hwptID, iova: page.rawValue, length: size,
                                   address: UnsafeRawPointer(buf.baseAddress))
            // One page further runs past the range's last IOVA: refused.
            Self.expectFailure(.ioctl(.iommuIOASMap), .invalidArgument, naming: ["allowed IOVA ranges"]) {
                _ = try ioas.map(buf, at: IOVA(last.upperBound.rawValue + 1))
            }
            try m.unmap()
        }
    }

    // IOMMU_IOAS_IOVA_RANGES: sorted, disjoint, each start < last.
    @Test func iovaRangesAreSortedDisjointAndStartBelowLast() throws {
        try withMockDevice { ctx, ioas, dev in
            for i in [5, 1, 3] {
                try MockIOMMU.addReserved(ioas, start: mockBase + UInt64(i) * 0x100000, length: 0x3000)
            }
            let ranges = try ioas.iovaRanges().ranges
            #expect(ranges.count == 4)
            for r in ranges { #expect(r.lowerBound < r.upperBound, "\(r)") }
            for (x, y) in zip(ranges, ranges.dropFirst()) {
                #expect(x.upperBound < y.lowerBound, "\(x) then \(y)")
            }
        }
    }

    // io_pagetable.c: a zero length is EINVAL on map (iopt_alloc_area_pages) and
    // on unmap (iopt_unmap_iova).
    @Test func zeroLengthIsEINVALOnMapAndOnUnmap() throws {
        try withMockContext { ctx in
            let ioas = try IOAS(ctx)
            let buf = try DMABuffer(length: 4096)
            Self.expectFailure(.ioctl(.iommuIOASMap), .invalidArgument, naming: ["mapping 0 bytes", "non-zero"]) {
                _ = try ioas.unsafeMap(address: UnsafeRawPointer(buf.baseAddress), length: 0, at: IOVA(mockBase))
            }
            Self.expectFailure(.ioctl(.iommuIOASUnmap), .invalidArgument, naming: ["length 0", "non-zero"]) {
                _ = try ioas.unmap(iova: IOVA(mockBase), length: 0)
            }
        }
    }

    // iopt_check_iova() and iopt_alloc_area_pages(): IOVA, address and length
    // must agree with the IOAS's alignment (the mock domain's page size).
    @Test func misalignedIOVAAddressOrLengthIsEINVAL() throws {
        try withMockDevice { ctx, ioas, dev in
            let buf = try DMABuffer(length: 16384)
            let p = UnsafeRawPointer(buf.baseAddress)
            Self.expectFailure(.ioctl(.iommuIOASMap), .invalidArgument, naming: ["at IOVA 0x1000001", "alignment"]) {
                _ = try ioas.unsafeMap(address: p, length: 8192, at: IOVA(mockBase + 1))
            }
            Self.expectFailure(.ioctl(.iommuIOASMap), .invalidArgument, naming: ["alignment"]) {
                _ = try ioas.unsafeMap(address: p + 1, length: 8192, at: IOVA(mockBase))
            }
            Self.expectFailure(.ioctl(.iommuIOASMap), .invalidArgument, naming: ["mapping 4097 bytes", "alignment"]) {
                _ = try ioas.unsafeMap(address: p, length: 4097, at: IOVA(mockBase))
            }
            #expect(try ioas.unmapAll() == 0)
        }
    }

    // iopt_check_iova(): an area already in the range is EEXIST.
    @Test func overlappingMapsAreEEXIST() throws {
        try withMockContext { ctx in
            let ioas = try IOAS(ctx)
            let a = try DMABuffer(length: 8192), b = try DMABuffer(length: 8192)
            let m = try ioas.map(a, at: IOVA(mockBase + 0x4000))
            for at in [mockBase + 0x3000, mockBase + 0x4000, mockBase + 0x5000] {
                Self.expectFailure(.ioctl(.iommuIOASMap), .fileExists,
                                   naming: ["at IOVA 0x\(String(at, radix: 16))", "overlap an existing mapping"]) {
                    _ = try ioas.map(b, at: IOVA(at))
                }
            }
            try m.unmap()
        }
    }

    // iopt_check_iova(): a fixed IOVA that intersects a reserved range is EINVAL.
    @Test func aFixedIOVAInAReservedRangeIsEINVAL() throws {
        try withMockDevice { ctx, ioas, dev in
            try MockIOMMU.addReserved(ioas, start: mockBase + 0x100000, length: 0x1000)
            let buf = try DMABuffer(length: 8192)
            Self.expectFailure(.ioctl(.iommuIOASMap), .invalidArgument,
                               naming: ["at IOVA 0x10ff000", "allowed IOVA ranges"]) {
                _ = try ioas.map(buf, at: IOVA(mockBase + 0xff000))
            }
        }
    }

    // iopt_alloc_iova(): no hole of the length in the allowed ranges is ENOSPC.
    @Test func noRoomForAKernelChosenIOVAIsENOSPC() throws {
        try withMockContext { ctx in
            let ioas = try IOAS(ctx)
            try ioas.allowIOVAs([IOVA(mockBase)...IOVA(mockBase + 0xfff)])
            let buf = try DMABuffer(length: 8192)
            Self.expectFailure(.ioctl(.iommuIOASMap), .noSpace,
                               naming: ["no free IOVA range of 8192 bytes in the allowed ranges"]) {
                _ = try ioas.map(buf, at: nil)
            }
            try ioas.allowIOVAs([])
        }
    }

    // iopt_unmap_iova(): a range that splits an area is ENOENT, nothing unmapped.
    @Test func anUnmapThatSplitsAMappingIsENOENT() throws {
        try withMockContext { ctx in
            let ioas = try IOAS(ctx)
            let buf = try DMABuffer(length: 8192)
            let iova = try ioas.unsafeMap(address: UnsafeRawPointer(buf.baseAddress), length: 8192, at: IOVA(mockBase))
            for (at, length) in [(mockBase, UInt64(4096)), (mockBase + 4096, UInt64(4096))] {
                Self.expectFailure(.ioctl(.iommuIOASUnmap), .noSuchFileOrDirectory,
                                   naming: ["IOVA 0x\(String(at, radix: 16)) length \(length)", "splits a mapping"]) {
                    _ = try ioas.unmap(iova: IOVA(at), length: length)
                }
            }
            #expect(try ioas.unmap(iova: iova, length: 8192) == 8192)
            withExtendedLifetime(buf) {}
        }
    }

    // main.c iommufd_get_object(): id 0 is never an object (ENOENT); a destroyed
    // owner is refused by construction (its id may be reused): no errno, the
    // kernel is not asked.
    @Test func zeroAndStaleObjectIDs() throws {
        try withMockContext { ctx in
            Self.expectFailure(.ioctl(.iommuDestroy), .noSuchFileOrDirectory, naming: ["object 0"]) {
                try ctx.destroy(objectID: 0)
            }
            let ioas = try IOAS(ctx)
            try ioas.destroy()
            let buf = try DMABuffer(length: 4096)
            Self.expectFailure(.ioctl(.iommuIOASMap), nil,
                               naming: ["IOAS \(ioas.objectID) was destroyed", "reuses ids"]) {
                _ = try ioas.map(buf, at: IOVA(mockBase))
            }
            Self.expectFailure(.ioctl(.iommuIOASUnmap), nil, naming: ["was destroyed"]) {
                _ = try ioas.unmap(iova: IOVA(mockBase), length: 4096)
            }
        }
    }

    // main.c iommufd_destroy(): an IOAS with a device attached is EBUSY.
    @Test func destroyingAnIOASInUseIsEBUSY() throws {
        try withMockDevice { ctx, ioas, dev in
            Self.expectFailure(.ioctl(.iommuDestroy), .resourceBusy, naming: ["IOAS \(ioas.objectID)", "still in use"]) {
                try ioas.destroy()
            }
            try dev.destroy()
            try ioas.destroy()
        }
    }

    // pages.c pin_user_pages: memory not mapped in the process is EFAULT when
    // a domain is attached (the pages are pinned at map time).
    @Test func unmappedUserMemoryIsEFAULT() throws {
        try withMockDevice { ctx, ioas, dev in
            // Safety: an anonymous mapping, unmapped at once; only its (now unmapped) address is used.
            let hole = mmap(nil, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            let addr = try #require(hole == MAP_FAILED ? nil : hole)
            // Safety: the mapping made above, of that length.
            #expect(munmap(addr, 8192) == 0)
            Self.expectFailure(.ioctl(.iommuIOASMap), .badAddress, naming: ["not mapped in this process"]) {
                _ = try ioas.unsafeMap(address: UnsafeRawPointer(addr), length: 8192, at: IOVA(mockBase))
            }
            #expect(try ioas.unmapAll() == 0)
        }
    }

    // MARK: the edu device: the type1 container, the group, the cdev

    // container.c vfio_fops_unl_ioctl(): before VFIO_SET_IOMMU every other
    // ioctl is EINVAL. group.c vfio_group_fops_open(): a group opens once
    // (EBUSY). vfio_iommu_type1.c vfio_dma_do_unmap(): the size unmapped is
    // returned, and VFIO_DMA_UNMAP_FLAG_ALL unmaps the whole of it.
    @Test func type1ContainerBeforeSetIOMMUGroupOpenedTwiceAndExactUnmaps() throws {
        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(bdf) } }
        let fdsBefore = Guest.openFDCount()
        do {
            let address = try PCIAddress(parsing: bdf)
            let container = try VFIOContainer(backend: .legacy)
            Self.expectFailure(.ioctl(.vfioIOMMUGetInfo), .invalidArgument, naming: ["VFIO_SET_IOMMU"]) {
                _ = try container.info()
            }
            let buf = try DMABuffer(length: 0x10000)
            let p = UnsafeRawPointer(buf.baseAddress)
            Self.expectFailure(.ioctl(.vfioIOMMUMapDMA), .invalidArgument, naming: ["VFIO_SET_IOMMU"]) {
                try container.unsafeMapDMA(address: p, length: 4096, at: 0x100000)
            }
            let group = try VFIOGroup(of: address)
            let number = try #require(Guest.iommuGroup(of: bdf).flatMap { Int($0) })
            Self.expectFailure(.syscall(.open), .resourceBusy, naming: ["/dev/vfio/\(number)", "held by another process or fd"]) {
                _ = try VFIOGroup(number: number)
            }
            try group.setContainer(container)
            try container.setIOMMU(.type1v2)
            try container.unsafeMapDMA(address: p, length: 0x4000, at: 0x100000)
            try container.unsafeMapDMA(address: p, length: 0x10000, at: 0x200000)
            try container.unsafeMapDMA(address: p, length: 0x2000, at: 0x300000)
            try container.unsafeMapDMA(address: p, length: 0x1000, at: 0x400000)
            #expect(try container.unmapDMA(iova: 0x100000, length: 0x4000) == 0x4000)
            #expect(try container.unmapDMA(iova: 0x200000, length: 0x10000) == 0x10000)
            #expect(try container.unmapAll() == 0x3000)
            #expect(try container.unmapAll() == 0)
            try group.unsetContainer()
            withExtendedLifetime(buf) {}
        }
        #expect(MockIOMMU.fdCountSettles(at: fdsBefore), "fds leaked or closed twice")
    }

    // vfio_main.c vfio_device_fops_unl_ioctl(): a cdev fd does nothing before
    // its bind (EINVAL). device_cdev.c: one fd binds once (refused before the
    // kernel is asked), and vfio_df_open() refuses a second cdev fd's bind
    // (EINVAL). device.c iommufd_device_attach(): a pt_id that is no IOAS or
    // HWPT is ENOENT.
    @Test func cdevInfoBeforeBindSecondBindAndABogusPtID() throws {
        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(bdf) } }
        let fdsBefore = Guest.openFDCount()
        do {
            let path = try VFIODevice.cdevPath(of: try PCIAddress(parsing: bdf))
            let device = try VFIODevice.open(cdev: path)
            Self.expectFailure(.ioctl(.vfioDeviceGetInfo), .invalidArgument, naming: [path, "bind"]) {
                _ = try device.info()
            }
            let ctx = try IOMMUFD()
            try device.bind(to: ctx)
            Self.expectFailure(.ioctl(.vfioDeviceBindIOMMUFD), nil, naming: [path, "already bound"]) {
                try device.bind(to: ctx)
            }
            let other = try VFIODevice.open(cdev: path)
            Self.expectFailure(.ioctl(.vfioDeviceBindIOMMUFD), .invalidArgument, naming: [path, "already bound through another fd"]) {
                try other.bind(to: ctx)
            }
            try other.close()
            // A bogus pt_id never reaches the attach: an IOAS owner of an id checks it exists.
            Self.expectFailure(.ioctl(.iommuIOASIOVARanges), .noSuchFileOrDirectory, naming: ["has no IOAS with id 2989"]) {
                _ = try IOAS(existing: 2989, in: ctx)
            }
            // Nor does a destroyed one (its id may be reused by then).
            let gone = try IOAS(ctx)
            try gone.destroy()
            Self.expectFailure(.ioctl(.vfioDeviceAttachIOMMUFDPT), nil, naming: ["IOAS \(gone.objectID) was destroyed"]) {
                _ = try device.attach(to: gone)
            }
            #expect(try device.info().regionCount > 0)
            try device.close()
            try ctx.close()
        }
        #expect(MockIOMMU.fdCountSettles(at: fdsBefore), "fds leaked or closed twice")
    }

    // vfio_pci_core.c vfio_pci_core_mmap(): only BARs mmap; config space has no
    // VFIO_REGION_INFO_FLAG_MMAP and VFIOKit refuses its mmap before the kernel is asked.
    // pages.c pfn_reader_user_pin(): a BAR's mmap (VM_PFNMAP) cannot be pinned,
    // so mapping it into an IOAS fails EFAULT; the error points to a dma-buf.
    @Test func configSpaceNeverMmapsAndABARMmapIsRefusedByIOMMUFD() throws {
        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(bdf) } }
        let fdsBefore = Guest.openFDCount()
        do {
            let device = try VFIODevice.open(cdev: try VFIODevice.cdevPath(of: try PCIAddress(parsing: bdf)))
            let ctx = try IOMMUFD()
            try device.bind(to: ctx)
            let ioas = try IOAS(ctx)
            try device.attach(to: ioas)
            let config = try device.regionInfo(PCIRegion.config)
            #expect(!config.isMappable)
            Self.expectFailure(.syscall(.mmap), nil, naming: ["region \(PCIRegion.config) cannot be mmapped"]) {
                _ = try device.map(region: config)
            }
            let bar0 = try device.map(region: try device.regionInfo(PCIRegion.bar(0)))
            Self.expectFailure(.ioctl(.iommuIOASMap), .badAddress, naming: ["BAR", "dma-buf"]) {
                _ = try ioas.unsafeMap(address: UnsafeRawPointer(bar0.base), length: bar0.length, at: IOVA(0x100000))
            }
            #expect(try ioas.unmapAll() == 0)
            // The hint, followed: a dma-buf of the BAR maps.
            let dmabuf = try device.exportDMABuf(bar: 0, offset: 0, length: UInt64(bar0.length))
            let mapping = try ioas.map(dmabuf, at: IOVA(0x100000))
            #expect(mapping.iova == IOVA(0x100000) && mapping.length == UInt64(bar0.length))
            try mapping.unmap()
            try dmabuf.close()
            try bar0.unmap()
            try device.close()
            try ctx.close()
        }
        #expect(MockIOMMU.fdCountSettles(at: fdsBefore), "fds leaked or closed twice")
    }

    // MARK: argument sizes, unknown flags, RLIMIT_MEMLOCK

    /// make() of an argument type: zeroed, its size field the struct's size.
    static func expectMade<A: IOMMUArgument>(_: A.Type, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(Int(A.make().size) == MemoryLayout<A>.size, "\(A.self)", sourceLocation: sourceLocation)
    }
    static func expectMade<A: VFIOArgument>(_: A.Type, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(Int(A.make().argsz) == MemoryLayout<A>.size, "\(A.self)", sourceLocation: sourceLocation)
    }

    /// An iommufd argument larger than the kernel's struct: `iommu_ioas_alloc`
    /// and a tail of 12 bytes (no padding between them: 24 bytes in all).
    struct OversizedIOASAlloc: IOMMUArgument {
        var base = iommu_ioas_alloc()
        var tail: (UInt32, UInt32, UInt32) = (0, 0, 0)
        var size: UInt32 {
            get { base.size }
            set { base.size = newValue }
        }
    }

    // main.c iommufd_fops_ioctl(): a size below the op's min_size is EINVAL;
    // copy_struct_from_user() takes a larger struct only with a zero tail (E2BIG
    // otherwise). vfio_pci_core.c: an argsz below minsz is EINVAL. VFIOKit's
    // arguments come from make(), which fills size/argsz, so its own calls never
    // hand-size one; a raw ioctl with a wrong size is reported with the sizes.
    @Test func argumentSizeShortByOneIsEINVALAndAnOversizedStructWithANonZeroTailIsE2BIG() throws {
        Self.expectMade(iommu_destroy.self)
        Self.expectMade(iommu_ioas_alloc.self)
        Self.expectMade(iommu_ioas_iova_ranges.self)
        Self.expectMade(iommu_ioas_allow_iovas.self)
        Self.expectMade(iommu_ioas_map.self)
        Self.expectMade(iommu_ioas_map_file.self)
        Self.expectMade(iommu_ioas_copy.self)
        Self.expectMade(iommu_ioas_unmap.self)
        Self.expectMade(iommu_option.self)
        Self.expectMade(iommu_hwpt_alloc.self)
        Self.expectMade(iommu_hw_info.self)
        Self.expectMade(vfio_device_info.self)
        Self.expectMade(vfio_region_info.self)
        Self.expectMade(vfio_irq_info.self)
        Self.expectMade(vfio_irq_set.self)
        Self.expectMade(vfio_device_bind_iommufd.self)
        Self.expectMade(vfio_device_attach_iommufd_pt.self)
        Self.expectMade(vfio_iommu_type1_dma_map.self)
        Self.expectMade(vfio_iommu_type1_dma_unmap.self)
        let ctx = try IOMMUFD()
        var short = iommu_ioas_alloc.make()
        short.size -= 1
        Self.expectFailure(.ioctl(.iommuIOASAlloc), .invalidArgument,
                           naming: ["size is 11 bytes", "struct iommu_ioas_alloc", "12 bytes", "make()"]) {
            _ = try ctx.fd.ioctl(.iommuIOASAlloc, &short)
        }
        #expect(MemoryLayout<OversizedIOASAlloc>.size == 24)
        var big = OversizedIOASAlloc.make()
        big.tail.2 = 1
        Self.expectFailure(.ioctl(.iommuIOASAlloc), .argListTooLong,
                           naming: ["size is 24 bytes", "not zero", "make()"]) {
            _ = try ctx.fd.ioctl(.iommuIOASAlloc, &big)
        }
        // The same struct with a zero tail is accepted: a newer struct on an older kernel.
        big = OversizedIOASAlloc.make()
        _ = try ctx.fd.ioctl(.iommuIOASAlloc, &big)
        try ctx.destroy(objectID: big.base.out_ioas_id)
        try ctx.close()

        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(bdf) } }
        let fdsBefore = Guest.openFDCount()
        do {
            let device = try VFIODevice.open(cdev: try VFIODevice.cdevPath(of: try PCIAddress(parsing: bdf)))
            let dctx = try IOMMUFD()
            try device.bind(to: dctx)
            var info = vfio_region_info.make()
            info.index = 0
            info.argsz -= 1
            Self.expectFailure(.ioctl(.vfioDeviceGetRegionInfo), .invalidArgument,
                               naming: ["argsz is 31 bytes", "struct vfio_region_info", "32 bytes", "make()"]) {
                _ = try device.fd.ioctl(.vfioDeviceGetRegionInfo, &info)
            }
            info = vfio_region_info.make()
            _ = try device.fd.ioctl(.vfioDeviceGetRegionInfo, &info)
            #expect(info.size == 1 << 20)
            try device.close()
            try dctx.close()
        }
        #expect(MockIOMMU.fdCountSettles(at: fdsBefore), "fds leaked or closed twice")
    }

    // hw_pagetable.c iommufd_hwpt_paging_alloc(): flags the kernel does not
    // know are EOPNOTSUPP. The map and unmap calls take Bools (readable,
    // writable), never raw flags, and VFIO's interrupt calls take enums
    // (IRQIndex, IRQAction): unknown ones cannot be expressed there. A raw
    // IOMMU_IOAS_MAP with an unknown flag (ioas.c iommufd_ioas_map()) is
    // EOPNOTSUPP; type1 (vfio_iommu_type1.c vfio_iommu_type1_map_dma()) answers EINVAL.
    @Test func unknownFlagsAreEOPNOTSUPPNamingTheBits() throws {
        try withMockDevice { ctx, ioas, dev in
            let buf = try DMABuffer(length: 4096)
            var map = iommu_ioas_map.make()
            map.flags = UInt32(IOMMU_IOAS_MAP_READABLE.rawValue | IOMMU_IOAS_MAP_FIXED_IOVA.rawValue) | 1 << 31
            map.ioas_id = ioas.objectID
            map.user_va = UInt64(UInt(bitPattern: buf.baseAddress))
            map.length = 4096
            map.iova = mockBase
            Self.expectFailure(.ioctl(.iommuIOASMap), .notSupported, naming: ["flags", "this kernel does not know"]) {
                _ = try ctx.fd.ioctl(.iommuIOASMap, &map)
            }
            #expect(try ioas.unmapAll() == 0)
            Self.expectFailure(.ioctl(.iommuHWPTAlloc), .notSupported,
                               naming: ["flags 0x80000000", "unknown to VFIOKit: 0x80000000"]) {
                _ = try HWPT(ioas: ioas, device: dev.deviceID, flags: HWPT.Flags(rawValue: 1 << 31))
            }
            // A known flag with an unknown one: the unknown bit alone is named as such.
            Self.expectFailure(.ioctl(.iommuHWPTAlloc), .notSupported,
                               naming: ["flags 0x40000001", "unknown to VFIOKit: 0x40000000"]) {
                _ = try HWPT(ioas: ioas, device: dev.deviceID, flags: [.nestParent, HWPT.Flags(rawValue: 1 << 30)])
            }
            withExtendedLifetime((dev, buf)) {}
        }
    }

    // pages.c / io_pagetable.c (iommufd, accounted to the user by default) and
    // vfio_iommu_type1.c vfio_pin_pages_remote() (accounted to the process):
    // past RLIMIT_MEMLOCK a map is ENOMEM; the error names the limit and the size,
    // and its remedy raises the limit to what the map needs.
    @Test func memlockExhaustedIsENOMEMNamingTheLimitOnIOMMUFDAndType1() throws {
        let limit: UInt64 = 65536, length = 1 << 20
        try withMockContext { ctx in
            #expect(try ctx.rlimitMode() == .perUser)
            let ioas = try IOAS(ctx)
            let dev = try MockDevice(attachedTo: ioas)
            let buf = try DMABuffer(length: length)
            try Unprivileged.withMemlockLimit(limit) {
                let e = Self.expectFailure(.ioctl(.iommuIOASMap), .noMemory,
                                           naming: ["RLIMIT_MEMLOCK is 65536 bytes", "asked to pin 1048576 bytes",
                                                    "raise RLIMIT_MEMLOCK to at least"]) {
                    _ = try ioas.map(buf, at: IOVA(mockBase))
                }
                #expect(e?.remedies.first == .raiseMemlock(atLeast: limit + UInt64(length)), "\(String(describing: e))")
            }
            let m = try ioas.map(buf, at: IOVA(mockBase))
            try m.unmap()
            withExtendedLifetime(dev) {}
        }

        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(bdf) } }
        let fdsBefore = Guest.openFDCount()
        do {
            let container = try VFIOContainer(backend: .legacy)
            let group = try VFIOGroup(of: try PCIAddress(parsing: bdf))
            try group.setContainer(container)
            try container.setIOMMU(.type1v2)
            let buf = try DMABuffer(length: length)
            let p = UnsafeRawPointer(buf.baseAddress)
            try Unprivileged.withMemlockLimit(limit) {
                let e = Self.expectFailure(.ioctl(.vfioIOMMUMapDMA), .noMemory,
                                           naming: ["RLIMIT_MEMLOCK is 65536 bytes", "asked to pin 1048576 bytes",
                                                    "raise RLIMIT_MEMLOCK to at least"]) {
                    try container.unsafeMapDMA(address: p, length: length, at: 0x100000)
                }
                #expect(e?.remedies.first == .raiseMemlock(atLeast: limit + UInt64(length)), "\(String(describing: e))")
            }
            #expect(try container.unmapAll() == 0, "a failed map leaves nothing mapped")
            try container.unsafeMapDMA(address: p, length: length, at: 0x100000)
            #expect(try container.unmapDMA(iova: 0x100000, length: UInt64(length)) == UInt64(length))
            try group.unsetContainer()
            withExtendedLifetime(buf) {}
        }
        #expect(MockIOMMU.fdCountSettles(at: fdsBefore), "fds leaked or closed twice")
    }

    // MARK: a device removed through sysfs, then rescanned

    static func sysfsWrite(_ path: String, _ text: String) throws {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        try #require(fd >= 0, "open \(path): errno \(errno)")
        defer { close(fd) }
        let n = text.withCString { write(fd, $0, strlen($0)) }
        try #require(n == text.utf8.count, "write \(text) to \(path): errno \(errno)")
    }

    // drivers/pci/pci-sysfs.c remove_store() and rescan_store(): a device listed,
    // then removed, is gone for bind and open: the error names it and says how
    // to bring it back; after a rescan it is back and works.
    @Test func aDeviceRemovedBetweenListAndBindThenRescanned() throws {
        let bdf = try Guest.requireEdu()
        let address = try PCIAddress(parsing: bdf)
        let dir = "/sys/bus/pci/devices/\(bdf)"
        #expect(PCIHost.system.devices().contains { $0.address == address })
        try Self.sysfsWrite("\(dir)/remove", "1")
        defer {
            if access(dir, F_OK) != 0 {
                #expect(throws: Never.self, "rescan the bus") { try Self.sysfsWrite("/sys/bus/pci/rescan", "1") }
            }
        }
        #expect(access(dir, F_OK) != 0)
        let e = Self.expectFailure(.step(.findPCIDevice), nil, naming: [bdf, "does not exist", "rescan the PCI bus"]) {
            _ = try PCIHost.system.bind(address)
        }
        #expect(e?.remedies.contains(.rescanPCI) == true, "\(String(describing: e))")
        Self.expectFailure(.step(.findPCIDevice), nil, naming: [bdf, "does not exist", "rescan the PCI bus"]) {
            _ = try AttachedDevice.open(address)
        }
        try Self.sysfsWrite("/sys/bus/pci/rescan", "1")
        try #require(access(dir, F_OK) == 0, "\(bdf) is back after the rescan")
        #expect(Guest.driver(of: bdf) == nil)
        try Guest.withBoundToVFIO(bdf) {
            let device = try AttachedDevice.open(address)
            let edu = try EduDevice(device.device)
            #expect(edu.liveness(0x1234_5678) == ~UInt32(0x1234_5678))
            try device.close()
        }
    }

    // MARK: one interrupt trigger, one eventfd count

    // vfio_pci_intrs.c: INTx is automasked (one count per assertion, however
    // long the line stays up, until unmasked); each MSI message is one
    // eventfd_signal().
    @Test func oneINTxOrMSIGivesExactlyOneEventFDCount() throws {
        let bdf = try Guest.requireEdu()
        try Guest.withBoundToVFIO(bdf) {
            let space = try DMASpace(mode: .iommufd, dmaMask: EduDevice.dmaMask)
            let device = try space.openDevice(try PCIAddress(parsing: bdf))
            let edu = try EduDevice(device)
            try edu.enableBusMaster()
            let intx = try device.interrupt(.intx)
            for round in 0..<3 {
                edu.raise(0x1)
                #expect(try intx.wait(timeout: .seconds(20)) == 1, "INTx round \(round)")
                // The line is still asserted (not acknowledged yet): automasked, no second count.
                #expect(try intx.wait(timeout: .milliseconds(200)) == nil, "INTx round \(round): a second count")
                edu.acknowledge(0x1)
                try device.unmaskIRQ(.intx)
                #expect(try intx.wait(timeout: .milliseconds(200)) == nil, "INTx round \(round): a count after unmask")
            }
            try intx.close()
            let msi = try edu.enableMSI()
            for round in 0..<3 {
                edu.raise(0x1)
                #expect(try msi.wait(timeout: .seconds(20)) == 1, "MSI round \(round)")
                #expect(try msi.wait(timeout: .milliseconds(200)) == nil, "MSI round \(round): a second count")
                edu.acknowledge(0x1)
            }
            try msi.close()
            try edu.config.setBusMaster(false)
            try device.close()
        }
    }

    // vfio_pci_intrs.c vfio_pci_set_msi_trigger(): DATA_NONE | ACTION_TRIGGER
    // signals each vector of the range once. On the nvme's MSI-X, with many
    // vectors: firing one gives that vector's eventfd exactly one count, the
    // others none.
    @Test func oneMSIXTriggerOnTheNVMeGivesExactlyOneCountOnThatVectorOnly() throws {
        let bdf = try Guest.require("VFIOKIT_NVME")
        let address = try PCIAddress(parsing: bdf)
        _ = try PCIHost.system.bind(address)
        defer { #expect(throws: Never.self, "put the device back") { _ = try PCIHost.system.unbind(address, restore: true) } }
        let fdsBefore = Guest.openFDCount()
        do {
            let ctx = try IOMMUFD()
            let device = try VFIODevice.open(cdev: try VFIODevice.cdevPath(of: address))
            try device.bind(to: ctx)
            let available = Int(try device.irqInfo(.msix).count)
            try #require(available >= 16, "the nvme has \(available) MSI-X vectors")
            let count = min(available, 32)
            let vectors = try device.interrupts(.msix, count: count)
            for v in 0..<count {
                try vectors[v].trigger()
                for w in 0..<count {
                    let got = try vectors[w].wait(timeout: w == v ? .seconds(5) : .zero)
                    #expect(got == (w == v ? 1 : nil), "vector \(v) fired: vector \(w) counted \(String(describing: got))")
                }
            }
            try vectors.close()
            try device.close()
            try ctx.close()
        }
        #expect(MockIOMMU.fdCountSettles(at: fdsBefore), "fds leaked or closed twice")
    }
}
