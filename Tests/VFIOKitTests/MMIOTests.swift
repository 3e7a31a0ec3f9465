import Testing
import VFIOKit
@testable import VFIOObjects
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The bounds and alignment check of every MMIO access.
@Suite struct MMIOBoundsTests {
    @Test(arguments: [
        // (offset, size, length, valid)
        (0, 4, 4096, true), (4092, 4, 4096, true), (4088, 8, 4096, true), (4095, 1, 4096, true),
        (4096, 4, 4096, false), (4094, 4, 4096, false), (4093, 4, 4096, false), (2, 4, 4096, false),
        (-4, 4, 4096, false), (-8, 8, 4096, false), (Int.min, 8, 4096, false), (Int.max &- 7, 8, 4096, false),
        // A region shorter than the access: nothing fits.
        (0, 8, 4, false), (0, 8, 7, false), (0, 4, 2, false), (0, 2, 1, false), (0, 1, 0, false),
        (0, 4, 4, true), (0, 8, 8, true),
    ])
    func accessIsInsideAndAligned(offset: Int, size: Int, length: Int, valid: Bool) {
        #expect(MMIORegion.isValidAccess(offset: offset, size: size, length: length) == valid,
                "\(size)-byte access at \(offset) in \(length) bytes")
    }
}

/// The check is wired into the accessors: an access that does not fit stops
/// the process (a driver bug, like an array index out of range).
@Suite struct MMIOTrapTests {
    @Test func anAccessLongerThanTheRegionTraps() async {
        await #expect(processExitsWith: .failure) {
            let region = MMIOTrapTests.region(length: 4)
            #expect(region.load32(at: 0) == 0)  // fits: no trap
            _ = region.load64(at: 0)  // 8 bytes of a 4-byte region
        }
    }

    @Test func aNegativeOffsetTraps() async {
        await #expect(processExitsWith: .failure) {
            MMIOTrapTests.region(length: 4096).store32(1, at: -4)
        }
    }

    @Test func dmaBufferAccessesAreCheckedToo() async {
        await #expect(processExitsWith: .failure) {
            let buffer = try! DMABuffer(length: 4096)
            buffer.store64(1, at: 4088)  // fits
            _ = buffer.load64(at: 4092)
        }
    }

    /// A region over a page of anonymous memory (so an unchecked access of a
    /// few bytes past `length` reads memory instead of faulting, and the test
    /// sees the missing check rather than a crash).
    static func region(length: Int) -> MMIORegion {
        let kernel = FakeKernel()
        kernel.files["/dev/vfio/devices/vfio0"] = .node
        let device = try! Syscalls.withProvider(kernel) { try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0") }
        let page = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        return MMIORegion(device: device, base: page, length: length, regionIndex: 0, regionOffset: 0, kernel: nil)
    }
}
