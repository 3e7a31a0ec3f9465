import Foundation
import Testing
import VFIOKit
import VFIOKitTestSupport

/// `VFIO_DEVICE_RESET` revokes the dma-bufs of the device's BARs, and iommufd
/// never maps the range again. The nvme is the guest's one device with a
/// function reset (edu has none), and the NVMe boots run single-threaded TCG,
/// which an FLR needs (Tests/GuestManifest/intel-nvme.txt): so the library's
/// peer-to-peer revocation by reset is proven here, with the edu as the DMA
/// engine reading the controller's CAP register through the IOMMU.
@Suite(.serialized, .exclusiveGuestDevices, .guestOnly("ResetRevocationGuestTests"))
struct ResetRevocationGuestTests {
    static let ramIOVA: IOVA = 0x10_0000
    static let peerIOVA: IOVA = 0x20_0000

    /// 8 bytes at `iova`, read by the edu's DMA engine into RAM (which holds a
    /// poison first: a read the IOMMU stops leaves it).
    static func dmaRead(_ edu: EduDevice, _ ram: DMABuffer, at iova: IOVA) throws -> UInt64 {
        ram.store64(0x5a5a_5a5a_5a5a_5a5a, at: 0)
        try edu.dmaToDevice(from: ramIOVA, count: 8)
        try edu.dmaToDevice(from: iova, count: 8)
        try edu.dmaFromDevice(to: ramIOVA + 4096, count: 8)
        return ram.load64(at: 4096)
    }

    @Test func aFunctionResetOfTheExporterRevokesTheMappingForGood() throws {
        let nvme = try NVMeGuest.bdf(), edu = try Guest.requireEdu()
        try Tool.bind(nvme)
        var restored = false
        defer { if !restored { try? Tool.restore(nvme) } }
        let fds = Guest.openFDCount()
        try Guest.withBoundToVFIO(edu) {
            let ctx = try IOMMUFD()
            let ioas = try IOAS(ctx)
            let devA = try VFIODevice.open(try PCIAddress(parsing: edu))
            try devA.bind(to: ctx)
            try devA.attach(to: ioas)
            let devB = try VFIODevice.open(try PCIAddress(parsing: nvme))
            try devB.bind(to: ctx)
            #expect(try devB.info().supportsReset, "QEMU's nvme has a function-level reset")
            let cap: UInt64 = try devB.read(region: try devB.regionInfo(PCIRegion.bar(0)), at: 0)
            #expect(cap != 0 && cap != ~0)

            let eduA = try EduDevice(devA)
            try eduA.enableBusMaster()
            let ram = try DMABuffer(length: 8192)
            let ramMapping = try ioas.map(ram, at: Self.ramIOVA)
            let buf = try devB.exportDMABuf(bar: 0, length: 4096)
            let peer = try ioas.map(buf, at: Self.peerIOVA)
            #expect(try Self.dmaRead(eduA, ram, at: Self.peerIOVA) == cap, "the edu reads the nvme's CAP by DMA")

            try devB.reset()
            #expect(peer.revocation?.contains("VFIO_DEVICE_RESET") == true, "\(String(describing: peer.revocation))")
            #expect(try Self.dmaRead(eduA, ram, at: Self.peerIOVA) != cap, "a mapping the reset revoked still reached the nvme")
            let e = #expect(throws: VFIOError.self) { try peer.checkLive() }
            #expect(e?.detail?.contains("the kernel revoked the dma-buf") == true && e?.detail?.contains("VFIO_DEVICE_RESET") == true,
                    "\(String(describing: e))")

            // The hint, followed: unmap, and map the dma-buf again (the reset left memory decoding on).
            try peer.unmap()
            let fresh = try ioas.map(buf, at: Self.peerIOVA)
            try fresh.checkLive()
            #expect(try Self.dmaRead(eduA, ram, at: Self.peerIOVA) == cap, "the fresh mapping reaches the nvme after its reset")
            try fresh.unmap()
            try buf.close()
            try ramMapping.unmap()
            withExtendedLifetime(eduA) {}
        }
        #expect(MockIOMMU.fdCountSettles(at: fds), "fds leaked or closed twice")
        // The kernel's nvme driver takes the controller back after its reset.
        try Tool.restore(nvme)
        restored = true
        try NVMeGuest.waitForKernelDriver(nvme)
    }
}
