import CVFIO
import Foundation
import Testing
@testable import VFIOKit
import VFIOKitTestSupport
import VFIOSystem

/// Which DMA modes the kernel offers, before any device is bound (the NVMe
/// driver's friction item 7: native iommufd looked unavailable until the
/// first cdev appeared under /dev/vfio/devices).
@Suite struct DMAModeAvailabilityTests {
    static let procDevices = "Character devices:\n  1 mem\n  4 tty\n 10 misc\n236 vfio-dev\n237 vfio\n\nBlock devices:\n259 blkext\n"

    @Test func nativeIOMMUFDIsOfferedBeforeAnyDeviceIsBound() {
        let k = FakeKernel()
        k.files["/dev/iommu"] = .node
        k.files["/proc/devices"] = .contents(Array(Self.procDevices.utf8))
        // No /dev/vfio/devices: devtmpfs makes it with the first cdev.
        let modes = Syscalls.withProvider(k) { DMAMode.available() }
        #expect(modes.contains(.iommufd), "modes: \(modes)")
        #expect(Syscalls.withProvider(k) { DMAMode.best() } == .iommufd)
    }

    @Test func nativeIOMMUFDNeedsTheKernelsCdevSupport() {
        let k = FakeKernel()
        k.files["/dev/iommu"] = .node
        // A kernel without CONFIG_VFIO_DEVICE_CDEV registers no "vfio-dev" character devices.
        k.files["/proc/devices"] = .contents(Array("Character devices:\n  1 mem\n237 vfio\n".utf8))
        #expect(!Syscalls.withProvider(k) { DMAMode.available() }.contains(.iommufd))
        let none = FakeKernel()
        none.files["/proc/devices"] = .contents(Array(Self.procDevices.utf8))
        #expect(!Syscalls.withProvider(none) { DMAMode.available() }.contains(.iommufd), "no /dev/iommu")
    }
}

/// Interrupt handles (the NVMe driver's friction item 8: enabling, disabling
/// and closing eventfds were three separate steps, and nothing turned a vector
/// off when its owner went away) and their waits (item 9: a Duration with
/// sub-millisecond resolution, and an async wait with a deadline).
@Suite struct InterruptHandleTests {
    static func kernel() -> FakeKernel {
        let k = FakeKernel()
        k.files["/dev/vfio/devices/vfio0"] = .node
        k.onIoctl(VFIO_DEVICE_SET_IRQS) { _, _ in 0 }
        return k
    }

    /// The SET_IRQS calls as (flags, index, start, count).
    static func setIRQs(_ k: FakeKernel) -> [[UInt32]] {
        k.calls(VFIO_DEVICE_SET_IRQS).map { c in [4, 8, 12, 16].map { o in
            c.bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: o, as: UInt32.self) } } }
    }

    static let eventfds = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER
    static let none = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER

    @Test func theLastHandleGoneTurnsTheVectorsOffAndClosesTheirEventfds() throws {
        let k = Self.kernel()
        try Syscalls.withProvider(k) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let fdsBefore = k.openFDCount
            var set: InterruptSet? = try device.interrupts(.msix, count: 3)
            #expect(Self.setIRQs(k) == [[Self.eventfds, 2, 0, 3]])
            #expect(k.openFDCount == fdsBefore + 3, "one eventfd per vector")
            var admin: Interrupt? = set![0]
            #expect(admin?.vector == 0 && set![2].vector == 2)
            set = nil
            #expect(Self.setIRQs(k).count == 1, "a handle still holds the set: MSI-X stays on")
            admin = nil
            #expect(Self.setIRQs(k).last == [Self.none, 2, 0, 0], "the last handle gone disables MSI-X")
            #expect(k.openFDCount == fdsBefore, "and closes the eventfds")
            _ = admin
            try device.close()
        }
    }

    @Test func closingOneSetUnroutesOnlyItsVectorsWhileAnotherSetHoldsSome() throws {
        let k = Self.kernel()
        try Syscalls.withProvider(k) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let low = try device.interrupts(.msix, count: 2)
            let high = try device.interrupt(.msix, vector: 5)
            try high.close()
            #expect(Self.setIRQs(k).last == [Self.eventfds, 2, 5, 1], "vector 5 unrouted (fd -1), vectors 0-1 stay")
            try high.close()  // idempotent
            try low.close()
            #expect(Self.setIRQs(k).last == [Self.none, 2, 0, 0], "nothing routed: MSI-X off")
            #expect(Self.setIRQs(k).count == 4)
            try device.close()
        }
    }

    @Test func nothingIsSentToAClosedDevice() throws {
        let k = Self.kernel()
        try Syscalls.withProvider(k) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let msi = try device.interrupt(.msi)
            try device.close()
            try msi.close()
            #expect(Self.setIRQs(k).count == 1, "the kernel turned the vectors off with the device")
        }
    }

    @Test func waitsTakeADurationAndTheAsyncWaitHasADeadline() async throws {
        let k = Self.kernel()
        let device = try Syscalls.withProvider(k) { try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0") }
        let irq = try Syscalls.withProvider(k) { try device.interrupt(.msix, vector: 1) }
        func blocking(_ t: Duration) throws(VFIOError) -> UInt64? { try irq.wait(timeout: t) }
        // poll(2) would round 200 µs up to 1 ms; the fastest of ten tries shows the resolution.
        var fastest = Duration.seconds(1)
        for _ in 0..<10 {
            let start = ContinuousClock.now
            #expect(try blocking(.microseconds(200)) == nil)
            fastest = min(fastest, ContinuousClock.now - start)
        }
        #expect(fastest < .microseconds(900), "a 200 µs deadline took \(fastest)")
        try irq.eventFD.signal(2)
        #expect(try blocking(.seconds(1)) == 2)
        #expect(try await irq.wait(timeout: .milliseconds(5)) == nil, "the async wait times out")
        try irq.eventFD.signal()
        #expect(try await irq.wait(timeout: .seconds(5)) == 1)
        try irq.close()
        try device.close()
    }
}

/// The front door's own checks (the device and space come from the guest
/// tests: FrontDoorGuestTests).
@Suite struct FrontDoorBARTests {
    @Test func barsOutsideZeroToFiveAreRefusedBeforeAnyIoctl() throws {
        let k = type1Kernel()
        k.files["/dev/vfio/devices/vfio0"] = .node
        try Syscalls.withProvider(k) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let space = try DMASpace(mode: .type1v2)
            let door = AttachedDevice(name: .pci(try PCIAddress(parsing: "0000:00:03.0")), device: device, space: space)
            for n in [-1, 6] {
                let e = #expect(throws: VFIOError.self) { _ = try door.bar(n) }
                #expect(e?.description.contains("BAR \(n) does not exist") == true, "\(String(describing: e))")
            }
            #expect(k.calls(VFIO_DEVICE_GET_REGION_INFO).isEmpty)
            try door.close()
        }
    }
}

/// `MMIORegion.unmap()` (the NVMe driver's friction item 9: a BAR mapping,
/// and with it the device file, lived until the last reference to the region
/// went, so a driver's close() could not let vfio-pci give the device back).
@Suite struct MMIORegionUnmapTests {
    /// The permissions of the mapping that holds `address`, from /proc/self/maps
    /// (`rw-p`); nil when nothing is mapped there.
    static func permissions(at address: UnsafeMutableRawPointer) -> String? {
        let a = UInt(bitPattern: address)
        // procfs files report size 0: read to the end.
        guard let file = FileHandle(forReadingAtPath: "/proc/self/maps") else { return nil }
        defer { try? file.close() }
        let maps = String(decoding: file.readDataToEndOfFile(), as: UTF8.self)
        for line in maps.split(separator: "\n") {
            let fields = line.split(separator: " ")
            let bounds = fields.first?.split(separator: "-").compactMap { UInt($0, radix: 16) } ?? []
            guard fields.count >= 2, bounds.count == 2, bounds[0] <= a, a < bounds[1] else { continue }
            return String(fields[1])
        }
        return nil
    }

    @Test func unmapLeavesAnInaccessibleRangeUntilTheLastReference() throws {
        let kernel = FakeKernel()
        kernel.files["/dev/vfio/devices/vfio0"] = .node
        RegionInfoTests.install(kernel)
        try Syscalls.withProvider(kernel) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let region = try device.regionInfo(0)
            var bar: MMIORegion? = try device.map(region: region, area: region.sparseAreas![0])
            let base = bar!.base
            bar!.store32(0x1234_5678, at: 0)
            #expect(Self.permissions(at: base)?.hasPrefix("rw") == true)
            // A failed unmap leaves the region mapped and usable.
            kernel.failCall(1)
            let e = #expect(throws: VFIOError.self) { try bar!.unmap() }
            #expect(e?.description.contains("mmap") == true, "\(String(describing: e))")
            #expect(!bar!.isUnmapped && bar!.load32(at: 0) == 0x1234_5678)
            try bar!.unmap()
            #expect(bar!.isUnmapped)
            #expect(Self.permissions(at: base) == "---p", "the range is reserved and inaccessible")
            #expect(kernel.liveMappingCount == 1, "the placeholder is still the region's to release")
            let calls = kernel.syscallCount
            try bar!.unmap()
            #expect(kernel.syscallCount == calls, "idempotent")
            bar = nil
            #expect(kernel.liveMappingCount == 0)
            #expect(Self.permissions(at: base) == nil)
            try device.close()
        }
        #expect(kernel.openFDCount == 0)
    }

    @Test func closingTheFrontDoorUnmapsItsBARs() throws {
        let kernel = type1Kernel()
        kernel.files["/dev/vfio/devices/vfio0"] = .node
        // Every region a whole, mappable 4 KiB BAR.
        kernel.onIoctl(VFIO_DEVICE_GET_REGION_INFO) { _, arg in
            let h = arg!.assumingMemoryBound(to: vfio_region_info.self)
            h.pointee.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP
            h.pointee.size = 0x1000
            h.pointee.offset = UInt64(h.pointee.index) << 40
            h.pointee.cap_offset = 0
            return 0
        }
        try Syscalls.withProvider(kernel) {
            let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
            let door = AttachedDevice(name: .pci(try PCIAddress(parsing: "0000:00:03.0")), device: device,
                                      space: try DMASpace(mode: .type1v2))
            let bar1 = try door.bar(1)
            #expect(!bar1.isUnmapped)
            // A BAR the caller dropped is gone at once; the front door does not keep it.
            var bar2: MMIORegion? = try door.bar(2)
            #expect(kernel.liveMappingCount == 2 && bar2 != nil)
            bar2 = nil
            #expect(kernel.liveMappingCount == 1)
            try door.close()
            #expect(bar1.isUnmapped, "a copy the caller kept is unmapped too")
            #expect(Self.permissions(at: bar1.base) == "---p")
        }
    }
}

/// The front door's names: a PCI function by address, an mdev by UUID.
@Suite struct VFIODeviceNameTests {
    @Test func aUUIDIsAnMdevAndAnythingElseMustBeAPCIAddress() throws {
        let mdev = try VFIODeviceName(parsing: "83B8F4F2-509F-382F-3C1E-E6BFE0FA1001")
        #expect(mdev == .mdev(UUID(uuidString: "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001")!))
        #expect(mdev.description == "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001", "the kernel's name: lower case")
        #expect(mdev.pciAddress == nil && mdev.mdevUUID != nil)
        let pci = try VFIODeviceName(parsing: "00:03.0")
        #expect(pci == .pci(try PCIAddress(parsing: "0000:00:03.0")) && pci.description == "0000:00:03.0")
        #expect(pci.mdevUUID == nil)
        let e = #expect(throws: VFIOError.self) { _ = try VFIODeviceName(parsing: "0:0:0:0") }
        #expect(e?.detail?.contains("is not a PCI address") == true && e?.detail?.contains("nor is it an mdev's UUID") == true,
                "\(String(describing: e))")
    }

    /// A VF token given for an mdev is refused before anything opens.
    @Test func anMdevTakesNoVFToken() throws {
        let k = type1Kernel()
        try Syscalls.withProvider(k) {
            let space = try DMASpace(mode: .type1v2)
            let e = #expect(throws: VFIOError.self) { _ = try space.openDevice(.mdev(UUID()), vfToken: UUID()) }
            #expect(e?.detail?.contains("takes no VF token") == true, "\(String(describing: e))")
        }
    }
}
