import Foundation
import Testing
import VFIOKit
import VFIOKitTestSupport

/// The real edu device through iommufd: attached to an IOAS, to a HWPT built
/// on it, and replaced from one to the other, with an edu DMA round trip after
/// every step. Serialized and exclusive (process-wide): it binds the one lone edu.
@Suite(.serialized, .exclusiveGuestDevices, .guestOnly("IOMMUFDDeviceTests"))
struct IOMMUFDDeviceTests {
    static let iova: IOVA = 0x100000

    /// RAM → device from the first page, device → RAM into the second: the
    /// bytes come back only if the device's current translation maps the buffer.
    func roundTrip(_ edu: EduDevice, _ buffer: DMABuffer, seed: UInt8) throws -> Bool {
        let pattern = (0..<3000).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ Int(seed)) }
        buffer.fill(0)
        buffer.write(pattern, at: 0)
        try edu.dmaToDevice(from: Self.iova, count: pattern.count)
        try edu.dmaFromDevice(to: Self.iova + 4096, count: pattern.count)
        return buffer.read(at: 4096, count: pattern.count) == pattern
    }

    @Test func eduThroughIOASThenHWPTThenBack() throws {
        let bdf = try Guest.requireEdu()
        try eduThroughIOASThenHWPTThenBack(bdf)
    }

    func eduThroughIOASThenHWPTThenBack(_ bdf: String) throws {
        try Guest.withDeviceOnIOMMUFD(bdf, fdsMaySettle: true) { ctx, device, devid in
            #expect(devid != 0)
            let ioas = try IOAS(ctx)
            let autoDomain = try device.attach(to: ioas)
            let edu = try EduDevice(device)
            try edu.enableBusMaster()
            let buffer = try DMABuffer(length: 8192)
            let mapping = try ioas.map(buffer, at: Self.iova)

            // 1. Attached to the IOAS (the kernel's automatic domain).
            #expect(try roundTrip(edu, buffer, seed: 1))

            // 2. Replaced by a HWPT allocated on the same IOAS: same mappings, no detach in between.
            let hwpt = try HWPT(ioas: ioas, device: devid)
            #expect(hwpt.objectID != autoDomain)
            #expect(try device.attach(to: hwpt) == hwpt.objectID)
            #expect(try roundTrip(edu, buffer, seed: 2))
            // In use: neither the HWPT nor the IOAS can go.
            #expect(throws: VFIOError.self) { try hwpt.destroy() }
            #expect(throws: VFIOError.self) { try ioas.destroy() }

            // 3. Back to the IOAS.
            try device.attach(to: ioas)
            #expect(try roundTrip(edu, buffer, seed: 3))
            try hwpt.destroy()

            // 4. A second IOAS with the buffer elsewhere, then back: each step follows the translation.
            let other = try IOAS(ctx)
            let copy = try other.copy(mapping, to: Self.iova)
            try device.attach(to: other)
            #expect(try roundTrip(edu, buffer, seed: 4))
            try copy.unmap()
            try device.attach(to: ioas)
            #expect(try roundTrip(edu, buffer, seed: 5))

            // Unmapped: the DMA no longer reaches memory.
            try mapping.unmap()
            #expect(try !roundTrip(edu, buffer, seed: 6))
            try device.detach()
            try other.destroy()
            try ioas.destroy()
        }
    }

    @Test func hardwareInfoOfTheRealIOMMU() throws {
        let bdf = try Guest.requireEdu()
        try hardwareInfoOfTheRealIOMMU(bdf)
    }

    func hardwareInfoOfTheRealIOMMU(_ bdf: String) throws {
        try Guest.bindToVFIO(bdf)
        defer { #expect(throws: Never.self, "put the device back") { try Guest.unbind(bdf) } }
        let ctx = try IOMMUFD()
        let device = try VFIODevice.open(try PCIAddress(parsing: bdf))
        let devid = try device.bind(to: ctx)
        let info = try ctx.hardwareInfo(device: devid)
        switch try Guest.requireIOMMU() {
        case .intel:
            guard case .intelVTd(let vtd) = info.vendor else {
                Issue.record("expected VT-d data, got \(info.vendor)")
                return
            }
            #expect(vtd.maxGuestAddressWidth >= 39)
            #expect(vtd.queuedInvalidation)
            #expect(vtd.interruptRemapping)  // intremap=on
            #expect(vtd.pageSelectiveInvalidation)
        case .amd:
            // The guest kernel has no CONFIG_AMD_IOMMU_IOMMUFD (Scripts/guest-kernel.config), so
            // amd_iommu_ops.hw_info is NULL and iommufd answers IOMMU_HW_INFO_TYPE_NONE
            // (drivers/iommu/amd/iommufd.h, drivers/iommu/iommufd/device.c iommufd_get_hw_info).
            guard case .none = info.vendor else { Issue.record("expected no vendor data, got \(info.vendor)"); return }
        case .virtio:
            // virtio-iommu has no hw_info callback.
            guard case .none = info.vendor else { Issue.record("expected no vendor data, got \(info.vendor)"); return }
        }
        let flags = try ctx.supportedHWPTFlags(device: devid)
        #expect(flags.contains(.dirtyTracking) == info.capabilities.contains(.dirtyTracking))
        try device.close()
    }
}
