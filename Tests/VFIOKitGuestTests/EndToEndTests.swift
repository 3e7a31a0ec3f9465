import Testing
import VFIOKit
import VFIOKitTestSupport

/// The project's first end-to-end test: the lone edu through native iommufd.
@Suite(.serialized, .exclusiveGuestDevices, .guestOnly("EndToEndTests"))
struct EndToEndTests {
    @Test func eduDMARoundTripThroughIOMMUFD() throws {
        let bdf = try Guest.requireEdu()
        try Guest.withDeviceOnIOMMUFD(bdf) { ctx, device, _ in
            let ioas = try IOAS(ctx)
            try device.attach(to: ioas)
            let edu = try EduDevice(device)
            try edu.enableBusMaster()

            let buffer = try DMABuffer(length: 8192)
            var mapping: DMAMapping? = try ioas.map(buffer, at: 0x100000)
            #expect(mapping?.iova == 0x100000)
            let pattern = (0..<4000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
            buffer.write(pattern, at: 0)
            // Poison the destination: all 0x77 afterwards means the device's write never landed,
            // zeros mean it read zeros (its read of RAM went elsewhere).
            buffer.write([UInt8](repeating: 0x77, count: 4096), at: 4096)
            // RAM -> device, then device -> RAM at the second page.
            try edu.dmaToDevice(from: 0x100000, count: pattern.count)
            try edu.dmaFromDevice(to: 0x101000, count: pattern.count)
            #expect(firstDifference(buffer.read(at: 4096, count: pattern.count), pattern) == nil)

            try mapping.take()!.unmap()
            // After the unmap the same DMA must not reach memory.
            buffer.fill(0xAA)
            try edu.dmaFromDevice(to: 0x101000, count: pattern.count)
            #expect(firstDifference(buffer.read(at: 4096, count: pattern.count), [UInt8](repeating: 0xAA, count: pattern.count)) == nil)
        }
    }
}
