import CVFIO
import Synchronization
import Testing
@testable import VFIOCommands
import VFIOKit
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Numbers at the edges (2^32 vectors, 2^64 IOVAs, Int.max bytes) throw a
/// VFIOError instead of trapping on arithmetic overflow.
@Suite struct CraftedNumberTests {
    @Test func irqVectorsPastTwoToThe32ThrowInsteadOfTrapping() throws {
        try withCdevDevice(failing: VFIO_DEVICE_SET_IRQS, with: EINVAL) { device in
            let e = #expect(throws: VFIOError.self) { try device.maskIRQ(.msix, start: UInt32.max, count: 2) }
            #expect(e?.description.contains("4294967295") == true, "\(String(describing: e))")
            // The last vector is UInt32.max: a valid request as far as the numbers go; the kernel says no.
            let k = #expect(throws: VFIOError.self) { try device.unmaskIRQ(.msix, start: UInt32.max, count: 1) }
            #expect(k?.errno == .invalidArgument)
        }
    }

    @Test func containerMapAtTheTopOfTheIOVASpaceThrowsInsteadOfTrapping() throws {
        // The CLI's container maps go through DMASpace's allocator: a fixed
        // IOVA at the top of the space is checked against the usable ranges
        // without overflowing.
        let top: IOVA = 0xffff_ffff_ffff_f000
        var narrow = try IOVAAllocator(ranges: [IOVA(0)...IOVA(0xfedf_ffff), IOVA(0xfef0_0000)...IOVA(0x7f_ffff_ffff)],
                                       alignment: 4096)
        let outside = narrow.reserve(top, length: 4096), past = narrow.reserve(top, length: 0x2000)
        #expect(!outside, "outside every usable range")
        #expect(!past, "runs past 2^64")
        try Syscalls.withProvider(type1Kernel()) {  // no usable-range info: the whole space
            let space = try DMASpace(mode: .type1v2, dmaMask: .max)
            // With the whole space usable the top page fits; two pages there do not.
            let m = try space.map(try DMABuffer(length: 4096), at: top)
            #expect(m.lastIOVA == .max)
            let e = #expect(throws: VFIOError.self) { _ = try space.map(try DMABuffer(length: 8192), at: top) }
            #expect(e?.description.contains("outside the usable ranges") == true, "\(String(describing: e))")
            try m.unmap()
        }
    }

    @Test func aMappingThatEndsAtTwoToThe64HasAClosedRange() throws {
        let model = IOMMUModel()
        try Syscalls.withProvider(model.kernel) {
            let ioas = try IOAS(try IOMMUFD())
            let m = try ioas.map(try DMABuffer(length: 8192), at: 0xffff_ffff_ffff_e000)
            #expect(m.lastIOVA == .max)
            #expect(m.range == IOVA(0xffff_ffff_ffff_e000)...IOVA.max, "a closed range holds it")
            #expect(try m.iova(at: 8191) == .max)
            #expect(throws: VFIOError.self) { _ = try m.iova(at: 8192) }
            #expect(throws: VFIOError.self) { _ = try m.iova(at: -1) }
            try m.unmap()
        }
    }

    @Test func bufferSizesNearIntMaxThrowInsteadOfTrapping() throws {
        let e = #expect(throws: VFIOError.self) { _ = try DMABuffer(length: Int.max) }
        #expect(e?.description.contains("\(Int.max)") == true, "\(String(describing: e))")
        #expect(throws: VFIOError.self) { _ = try DMABuffer(length: Int.max - 4095, backing: .hugePages) }
    }

    @Test func allocatorRangesNearTwoToThe64() throws {
        // An allocation that ends exactly at 2^64.
        var a = try IOVAAllocator(ranges: [IOVA.zero...IOVA.max], alignment: 0x1000)
        #expect((a.reserve(0, length: 0x1000) as Bool))
        #expect((a.reserve(0x1000, length: 0 &- UInt64(0x1000)) as Bool))  // [0x1000, 2^64)
        #expect(try a.allocate(length: 0x1000) == nil, "the space is full")
        // The whole 64-bit space allocated: 2^64 bytes.
        var b = try IOVAAllocator(ranges: [IOVA.zero...IOVA.max], alignment: 0x1000)
        #expect((b.reserve(0, length: 1 << 63) as Bool))
        #expect((b.reserve(IOVA(1 << 63), length: 1 << 63) as Bool))
        #expect(b.allocatedBytes == UInt64.max, "saturates: 2^64 bytes do not fit in a UInt64")
        // Alignments that are not a power of two, or 0.
        #expect(throws: VFIOError.self) { _ = try IOVAAllocator(alignment: 0) }
        #expect(throws: VFIOError.self) { _ = try IOVAAllocator(alignment: 3000) }
        #expect(throws: VFIOError.self) { try b.setAlignment(0) }
        #expect(throws: VFIOError.self) { _ = try b.allocate(length: 0x1000, align: 3000) }
        // The top page of a range that ends at 2^64 - 1.
        var c = try IOVAAllocator(ranges: [IOVA(UInt64.max - 0xfff)...IOVA.max], alignment: 0x1000)
        #expect(try c.allocate(length: 0x1000) == IOVA(UInt64.max - 0xfff))
        #expect(try c.allocate(length: 0x1000) == nil)
        c.free(IOVA(UInt64.max - 0xfff))
        #expect(try c.allocate(length: 0x2000) == nil)
    }

    @Test func deviceDirtyReportsOfCraftedSizesThrow() throws {
        let kernel = FakeKernel()
        kernel.files["/dev/vfio/devices/vfio0"] = .node
        kernel.onIoctl(VFIO_DEVICE_FEATURE) { _, _ in 0 }
        try Syscalls.withProvider(kernel) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            #expect(throws: VFIOError.self) { _ = try device.dmaLoggingReport(iova: 0, length: UInt64.max, pageSize: 1) }
            #expect(throws: VFIOError.self) { _ = try device.dmaLoggingReport(iova: .max, length: 4096, pageSize: 4096) }
            try device.close()
        }
    }
}

/// Device-side dirty tracking (`VFIO_DEVICE_FEATURE_DMA_LOGGING_*`): the
/// ranges reach the kernel, and the bitmap it writes comes back whole.
@Suite struct DeviceDMALoggingTests {
    @Test func rangesReachTheKernelAndTheBitmapComesBackWordForWord() throws {
        let kernel = FakeKernel()
        kernel.files["/dev/vfio/devices/vfio0"] = .node
        let seen = Mutex<[UInt64]>([])
        kernel.onIoctl(VFIO_DEVICE_FEATURE) { _, a in
            let data = a! + MemoryLayout<vfio_device_feature>.size
            switch a!.load(fromByteOffset: 4, as: UInt32.self) & VFIO_DEVICE_FEATURE_MASK {
            case VFIO_DEVICE_FEATURE_DMA_LOGGING_START:
                seen.withLock { $0 = loggingControlWords(data) }
                return 0
            case VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT:
                let rep = data.loadUnaligned(as: vfio_device_feature_dma_logging_report.self)
                let pages = Int(rep.length / rep.page_size)
                let words = UnsafeMutablePointer<UInt64>(bitPattern: UInt(rep.bitmap))!
                for page in [0, 63, 64, 127, pages - 1] { words[page / 64] |= 1 << UInt64(page % 64) }
                return 0
            default:
                return -ENOTTY
            }
        }
        try Syscalls.withProvider(kernel) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let ranges = (0..<40).map { (iova: IOVA(UInt64($0) << 20), length: UInt64(0x1000 * ($0 + 1))) }
            try device.startDMALogging(pageSize: 4096, ranges: ranges)
            #expect(seen.withLock { $0 } == [4096, 40] + ranges.flatMap { [$0.iova.rawValue, $0.length] })
            // 130 pages: three words, bits in the first, the second and the last.
            let bitmap = try device.dmaLoggingReport(iova: 0x100000, length: 130 * 4096, pageSize: 4096)
            #expect(bitmap == [1 | 1 << 63, 1 | 1 << 63, 1 << 1] as [UInt64])
            // 2^40 pages would need a 128 GiB bitmap: refused before anything is allocated.
            #expect(throws: VFIOError.self) { _ = try device.dmaLoggingReport(iova: 0, length: 1 << 52, pageSize: 4096) }
            try device.close()
        }
    }
}
