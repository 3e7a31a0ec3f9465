import CVFIO
import Testing
import VFIOKit
import VFIOKitTestSupport
import VFIOSystem

#if canImport(Glibc)
import Glibc
#endif

/// Inputs libFuzzer found (Scripts/fuzz.sh, Fuzz/README.md) that crashed VFIOKit, kept as
/// tests. Each runs in a child process (an exit test), so a trap fails the test instead
/// of ending the run. The inputs themselves are also in the seed corpus (Fuzz/Corpus).
@Suite struct FuzzRegressionTests {
    /// A device whose region `index` is what a (malformed or hostile) kernel answer says.
    static func deviceKernel(size: UInt64, offset: UInt64, flags: UInt32) -> FakeKernel {
        let kernel = FakeKernel()
        kernel.files["/dev/vfio/devices/vfio0"] = .node
        kernel.onIoctl(VFIO_DEVICE_GET_REGION_INFO) { _, arg in
            let h = arg!.assumingMemoryBound(to: vfio_region_info.self)
            h.pointee.flags = flags
            h.pointee.size = size
            h.pointee.offset = offset
            h.pointee.cap_offset = 0
            return 0
        }
        kernel.onFileIO { _, _, buffer, _ in buffer.count }
        return kernel
    }

    /// Exit status 0 when every access threw a VFIOError, 1 when one succeeded.
    static func accessesThrow(size: UInt64, offset: UInt64, at: UInt64, map: Bool) -> Int32 {
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP
        return (try? Syscalls.withProvider(deviceKernel(size: size, offset: offset, flags: rw)) { () throws(VFIOError) -> Int32 in
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let region = try device.regionInfo(PCIRegion.bar(0))
            if (try? device.read(UInt32.self, region: region, at: at)) != nil { return 1 }
            if (try? device.write(UInt32(1), region: region, at: at)) != nil { return 1 }
            if map, (try? device.map(region: region)) != nil { return 1 }
            return 0
        }) ?? 2
    }

    /// fuzz config-caps / device-info: a region whose fd offset is past Int64.max
    /// trapped in read/write ("Not enough bits to represent the passed value").
    @Test func aRegionOffsetPastInt64MaxThrows() async {
        await #expect(processExitsWith: .exitCode(0)) {
            exit(FuzzRegressionTests.accessesThrow(size: 0x1000, offset: 1 << 63, at: 0, map: true))
        }
    }

    /// fuzz config-caps: region offset + access offset wrapped past 2^64 and trapped.
    @Test func aRegionOffsetThatWrapsThrows() async {
        await #expect(processExitsWith: .exitCode(0)) {
            exit(FuzzRegressionTests.accessesThrow(size: 0x1000, offset: UInt64.max - 0x10, at: 0x100, map: true))
        }
    }

    /// A region larger than the address space (size past Int.max) cannot be mapped:
    /// an error, not a trap converting the length.
    @Test func mappingARegionLargerThanTheAddressSpaceThrows() async {
        await #expect(processExitsWith: .exitCode(0)) {
            exit(FuzzRegressionTests.accessesThrow(size: (1 << 63) + 0x1000, offset: 0, at: 1 << 63, map: true))
        }
    }
}
