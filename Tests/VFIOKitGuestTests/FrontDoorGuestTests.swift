import Foundation
import Testing
import VFIOKit
import VFIOKitTestSupport

/// The front door on a real device: edu opened by its PCI address in the best
/// mode (and a container mode), its BAR in one call, DMA memory with a typed
/// IOVA from the space's allocator, an MSI handle whose release turns MSI off
/// in the kernel, and the async wait with a deadline.
@Suite(.serialized, .exclusiveGuestDevices, .guestOnly("FrontDoorGuestTests"))
struct FrontDoorGuestTests {
    /// Whether the kernel has an interrupt handler for edu's MSI: vfio-pci
    /// requests `vfio-msi[0](BDF)` when MSI is enabled and frees it when disabled.
    static func msiRequested(_ bdf: String) -> Bool {
        let text = (try? String(contentsOfFile: "/proc/interrupts", encoding: .utf8)) ?? ""
        return text.contains("vfio-msi[0](\(bdf))")
    }

    /// No mode given: the best (native iommufd, as edu has a cdev).
    @Test func eduThroughTheFrontDoorInTheBestMode() async throws { try await eduThroughTheFrontDoor(nil) }

    /// A container mode: the same calls through a group and type1v2.
    @Test func eduThroughTheFrontDoorInAContainer() async throws { try await eduThroughTheFrontDoor(.type1v2) }

    func eduThroughTheFrontDoor(_ mode: DMAMode?) async throws {
        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(bdf) } }
        let fdsBefore = Guest.openFDCount()
        do {
            let edu = try AttachedDevice.open(try PCIAddress(parsing: bdf), mode: mode, dmaMask: EduDevice.dmaMask)
            // The best mode with a cdev is native iommufd.
            #expect(edu.mode == mode ?? .iommufd)
            let bar0 = try edu.bar(0)
            #expect(bar0.load32(at: 0x00) == EduDevice.identification)
            #expect(throws: VFIOError.self) { _ = try edu.bar(1) }  // edu has BAR 0 only
            try edu.setBusMaster(true)

            // DMA: memory and its IOVA from the space's allocator, below the mask.
            let mapping = try edu.allocateDMA(bytes: 8192)
            #expect(mapping.lastIOVA <= IOVA(EduDevice.dmaMask))
            let pattern = DMAModesTests.pattern
            mapping.buffer.write(pattern, at: 0)
            let driver = try EduDevice(edu.device)
            try driver.dmaToDevice(from: mapping.iova, count: pattern.count)
            try driver.dmaFromDevice(to: try mapping.iova(at: 4096), count: pattern.count)
            #expect(firstDifference(mapping.buffer.read(at: 4096, count: pattern.count), pattern) == nil)

            // MSI: a handle; the async wait times out, then sees the interrupt.
            #expect(try edu.interruptCount(.msi) == 1)
            var msi: Interrupt? = try edu.interrupt(.msi)
            #expect(Self.msiRequested(bdf), "MSI enabled: vfio-pci requested its handler")
            #expect(try await msi!.wait(timeout: .milliseconds(20)) == nil)
            driver.raise(0x1)
            #expect(try await msi!.wait(timeout: .seconds(20)) != nil, "the raised interrupt arrives")
            driver.acknowledge(0x1)
            // Dropping the last handle turns MSI off in the kernel.
            msi = nil
            #expect(!Self.msiRequested(bdf), "MSI still enabled after its handle went")

            try edu.setBusMaster(false)
            try mapping.unmap()
            try edu.close()
            #expect(edu.isClosed)
        }
        #expect(Guest.openFDCount() == fdsBefore, "nothing left open")
    }

    @Test func aDeviceNotOnVFIOIsRefusedWithTheBindHint() throws {
        let bdf = try Guest.requireEdu()
        try Guest.unbind(bdf)
        let address = try PCIAddress(parsing: bdf)
        let e = #expect(throws: VFIOError.self) { _ = try AttachedDevice.open(address) }
        #expect(e?.description.contains("not bound to vfio-pci") == true, "\(String(describing: e))")
        #expect(e?.remedies.contains(.bindToVFIO(address)) == true, "\(String(describing: e?.remedies))")
    }
}
