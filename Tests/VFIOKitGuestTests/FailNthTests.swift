import Foundation
import Testing
import VFIOKit
import VFIOKitTestSupport

/// Reliability under kernel allocation failure: each scenario runs once
/// cleanly, then again with the 1st, 2nd, 3rd ... kernel allocation of the
/// thread failing (the kernel's fail-nth), until it no longer reaches the
/// injection point. Every run must either succeed or throw a VFIOError, and
/// leave no fd, no pinned page and no driver binding behind.
@Suite(.serialized, .exclusiveGuestDevices, .enabled(if: Guest.available && FailNth.available,
                             "runs in the QEMU test guest (fail-nth): Scripts/vm.sh -- .build/debug/VFIOKitPackageTests.xctest --testing-library swift-testing --filter FailNth"))
struct FailNthTests {
    /// Checks the sweep's outcome and records what it did.
    func check(_ runs: [FailNth.Run], minimumInjections: Int, sourceLocation: SourceLocation = #_sourceLocation) {
        let injected = runs.filter(\.injected)
        #expect(runs.first?.error == nil, "the clean run must succeed: \(runs.first?.description ?? "no run")",
                sourceLocation: sourceLocation)
        #expect(injected.count >= minimumInjections, "only \(injected.count) injection points reached",
                sourceLocation: sourceLocation)
        #expect(runs.last.map { !$0.injected } ?? false, "the sweep did not finish", sourceLocation: sourceLocation)
        let leaks = runs.filter { !$0.clean }
        for run in leaks {
            Issue.record("leak after a failure: \(run)", sourceLocation: sourceLocation)
        }
        let threw = injected.filter { $0.error != nil }.count
        print("fail-nth: \(injected.count) injections, \(threw) surfaced as errors, "
              + "\(injected.count - threw) absorbed by the kernel, \(leaks.count) leaks")
    }

    /// The iommufd path without a device: context, IOAS, map, ranges, unmap.
    @Test func iommufdMapUnmap() throws {
        let buffer = try DMABuffer(length: 64 * 1024)
        buffer.fill(1)
        let runs = FailNth.sweep { () throws(VFIOError) in
            let ctx = try IOMMUFD()
            let ioas = try IOAS(ctx)
            _ = try ioas.iovaRanges()
            let mapping = try ioas.map(buffer, at: 0x100000)
            _ = try ioas.unsafeMap(address: buffer.withUnsafeMutableBytes { UnsafeRawPointer($0.baseAddress!) },
                                   length: 4096, at: nil)
            try mapping.unmap()
            _ = try ioas.unmapAll()
            try ioas.destroy()
            try ctx.fd.close()
        }
        check(runs, minimumInjections: 5)
    }

    // vfio-pci's first open and last close (VFIO_DEVICE_BIND_IOMMUFD, and the
    // device fd's release) enable and disable the PCI device, which evaluates
    // the ACPI _PRT. Failing an allocation inside that evaluation corrupts
    // ACPICA's state in the 7.2 guest kernel: a general protection fault in
    // acpi_ut_update_object_reference at the next pci_disable_device. That is
    // a kernel bug outside VFIO, so these sweeps keep the device's first
    // open/last close outside the injected region and sweep everything after.

    /// The edu device through the cdev path: with the device bound, sweep IOAS
    /// allocation, attach, map, DMA, MSI on and off, detach, destroy.
    @Test func cdevDeviceDMA() throws {
        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { try? Guest.unbind(bdf) }
        let buffer = try DMABuffer(length: 8192)
        let pattern = (0..<512).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        buffer.write(pattern)
        let ctx = try IOMMUFD()
        let device = try VFIODevice.open(bdf: bdf)
        try device.bind(to: ctx)
        let edu = try EduDevice(device)
        try edu.enableBusMaster()
        let runs = FailNth.sweep { () throws(VFIOError) in
            let ioas = try IOAS(ctx)
            try device.attach(to: ioas)
            // The device outlives this run: whatever fails, it lets go of the
            // IOAS (which then unpins everything still mapped in it).
            defer { try? device.detach() }
            let mapping = try ioas.map(buffer, at: 0x200000)
            try edu.dmaToDevice(from: 0x200000, count: pattern.count)
            try edu.dmaFromDevice(to: 0x201000, count: pattern.count)
            let msi = try device.enableIRQ(.msi)
            try device.disableIRQ(.msi)
            try msi.close()
            try mapping.unmap()
        }
        check(runs, minimumInjections: 5)
        // The device still works after every failure: one more round trip.
        let ioas = try IOAS(ctx)
        try device.attach(to: ioas)
        buffer.fill(0)
        buffer.write(pattern)
        let mapping = try ioas.map(buffer, at: 0x200000)
        try edu.dmaToDevice(from: 0x200000, count: pattern.count)
        try edu.dmaFromDevice(to: 0x201000, count: pattern.count)
        #expect(buffer.read(at: 4096, count: pattern.count) == pattern)
        try mapping.unmap()
        try device.close()
        #expect(Guest.driver(of: bdf) == "vfio-pci")
    }

    /// The group path (type1v2 container): with the group set up and one
    /// device fd held, sweep opening another device fd, mapping and unmapping.
    @Test func groupPathType1v2() throws {
        let bdf = try Guest.requireEdu()
        try Guest.bindToVFIO(bdf)
        defer { try? Guest.unbind(bdf) }
        let buffer = try DMABuffer(length: 16384)
        let container = try VFIOContainer()
        let group = try VFIOGroup(bdf: bdf)
        try group.setContainer(container)
        try container.setIOMMU(.type1v2)
        let held = try group.device(bdf)
        let runs = FailNth.sweep { () throws(VFIOError) in
            let device = try group.device(bdf)
            _ = try container.info()
            let mapping = try container.mapDMA(buffer, at: 0x300000)
            try mapping.unmap()
            try device.close()
        }
        check(runs, minimumInjections: 3)
        try held.close()
        try group.unsetContainer()
        try group.close()
        try container.close()
        #expect(Guest.driver(of: bdf) == "vfio-pci")
    }
}
