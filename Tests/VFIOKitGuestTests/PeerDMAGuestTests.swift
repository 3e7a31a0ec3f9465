import Foundation
import CVFIO
import Testing
import VFIOKit
import VFIOKitTestSupport

/// Peer-to-peer DMA: edu A (the lone edu) reaches edu B (the first of the
/// pair) through the IOMMU. Native iommufd maps a range of B's BAR 0 through a
/// dma-buf (`VFIO_DEVICE_FEATURE_DMA_BUF` + `IOMMU_IOAS_MAP_FILE`); the legacy
/// type1 container maps B's BAR mmap by address, which iommufd (native and
/// compat) refuses.
///
/// edu's 4 KiB buffer at 0x40000 is not reachable through its BAR (QEMU's edu
/// answers MMIO at its registers only: a read at 0x40000 gives all ones, as
/// `bufferIsNotBehindTheBAR` shows), so the data goes to and comes from B's
/// registers: the DMA source register (0x80, 64 bits, read back as written),
/// the liveness register (0x04, reads back the inverse) and the id (0x00),
/// checked through B's own MMIO.
@Suite(.serialized, .exclusiveGuestDevices, .guestOnly("PeerDMAGuestTests"))
struct PeerDMAGuestTests {
    static let ramIOVA: IOVA = 0x10_0000
    static let peerIOVA: IOVA = 0x20_0000
    static let idRegister = 0x00, livenessRegister = 0x04, sourceRegister = 0x80, destinationRegister = 0x88

    /// A's DMA engine as a copier between RAM (8 KiB at `ramIOVA`) and any IOVA.
    struct Copier {
        let edu: EduDevice
        let ram: DMABuffer

        /// Puts the low `bytes` (4 or 8) of `value` at IOVA `to`, through A's buffer.
        func store(_ value: UInt64, bytes: Int, at to: IOVA) throws {
            ram.store64(value, at: 0)
            try edu.dmaToDevice(from: PeerDMAGuestTests.ramIOVA, count: bytes)
            try edu.dmaFromDevice(to: to, count: bytes)
        }

        /// Reads `bytes` (4 or 8) at IOVA `from` through A's buffer, which holds
        /// `poison` first: a read that the IOMMU stops leaves the poison.
        func load(bytes: Int, at from: IOVA, poison: UInt64 = 0x5a5a_5a5a_5a5a_5a5a) throws -> UInt64 {
            ram.store64(poison, at: 0)
            try edu.dmaToDevice(from: PeerDMAGuestTests.ramIOVA, count: 8)
            try edu.dmaToDevice(from: from, count: bytes)
            try edu.dmaFromDevice(to: PeerDMAGuestTests.ramIOVA + 4096, count: 8)
            let v = ram.load64(at: 4096)
            return bytes == 8 ? v : v & 0xffff_ffff
        }
    }

    /// A and B bound to vfio-pci for `body`; every fd closed afterwards.
    func withTwoEdus(_ body: (_ a: PCIAddress, _ b: PCIAddress) throws -> Void) throws {
        let a = try Guest.requireEdu(), b = try Guest.require("VFIOKIT_EDU_PAIR_A")
        try Guest.bindToVFIO(a)
        try Guest.bindToVFIO(b)
        defer {
            #expect(throws: Never.self, "put the device back") { try Guest.unbind(a) }
            #expect(throws: Never.self, "put the device back") { try Guest.unbind(b) }
        }
        let fdsBefore = Guest.openFDCount()
        try body(try PCIAddress(parsing: a), try PCIAddress(parsing: b))
        #expect(MockIOMMU.fdCountSettles(at: fdsBefore), "fds leaked or closed twice")
    }

    /// A attached to an IOAS with 8 KiB of RAM mapped, B bound (not attached) in the same iommufd context.
    final class NativeRig {
        let ioas: IOAS
        let devA: VFIODevice, devB: VFIODevice
        let ram: DMAMapping
        let copier: Copier

        init(a: PCIAddress, b: PCIAddress) throws {
            let ctx = try IOMMUFD()
            ioas = try IOAS(ctx)
            devA = try VFIODevice.open(a)
            devB = try VFIODevice.open(b)
            try devA.bind(to: ctx)
            try devA.attach(to: ioas)
            try devB.bind(to: ctx)  // a cdev answers nothing before it is bound; B itself does no DMA
            let eduA = try EduDevice(devA)
            try eduA.enableBusMaster()
            let buffer = try DMABuffer(length: 8192)
            ram = try ioas.map(buffer, at: PeerDMAGuestTests.ramIOVA)
            copier = Copier(edu: eduA, ram: buffer)
        }
    }

    @Test func bufferIsNotBehindTheBAR() throws {
        // Why the tests aim at B's registers: B's BAR 0 at 0x40000 is not its DMA buffer.
        try withTwoEdus { _, b in
            let ctx = try IOMMUFD()
            let devB = try VFIODevice.open(b)
            try devB.bind(to: ctx)
            let eduB = try EduDevice(devB)
            #expect(eduB.bar0.load32(at: Int(EduDevice.bufferAddress)) == 0xffff_ffff)
            #expect(eduB.id == EduDevice.identification)
        }
    }

    @Test func eduDMAsIntoAnotherEdusBARThroughADMABufAndNotAfterUnmap() throws {
        try withTwoEdus { a, b in
            let rig = try NativeRig(a: a, b: b)
            let eduB = try EduDevice(rig.devB)
            #expect(try rig.devB.probeFeature(VFIO_DEVICE_FEATURE_DMA_BUF).get, "CONFIG_VFIO_PCI_DMABUF: vfio-pci exports BARs")
            let buf = try rig.devB.exportDMABuf(bar: 0, offset: 0, length: 4096)
            let peer = try rig.ioas.map(buf, at: Self.peerIOVA)
            try buf.close()  // the mapping holds the kernel's own reference
            #expect(peer.iova == Self.peerIOVA && peer.length == 4096 && peer.revocation == nil)

            // A writes B's DMA source register and its liveness register; B's MMIO shows both.
            try rig.copier.store(0x1122_3344_5566_7788, bytes: 8, at: Self.peerIOVA + UInt64(Self.sourceRegister))
            #expect(eduB.bar0.load64(at: Self.sourceRegister) == 0x1122_3344_5566_7788)
            try rig.copier.store(0x0bad_cafe, bytes: 4, at: Self.peerIOVA + UInt64(Self.livenessRegister))
            #expect(eduB.bar0.load32(at: Self.livenessRegister) == ~UInt32(0x0bad_cafe))
            // And back: B's MMIO sets its destination register; A reads it (and B's id) by DMA.
            eduB.bar0.store64(0x0102_0304_0506_0708, at: Self.destinationRegister)
            #expect(try rig.copier.load(bytes: 8, at: Self.peerIOVA + UInt64(Self.destinationRegister)) == 0x0102_0304_0506_0708)
            #expect(try rig.copier.load(bytes: 4, at: Self.peerIOVA + UInt64(Self.idRegister)) == UInt64(EduDevice.identification))
            try peer.checkLive()

            // Unmapped, A's DMA no longer reaches B, either way.
            try peer.unmap()
            try rig.copier.store(0xdead_beef_dead_beef, bytes: 8, at: Self.peerIOVA + UInt64(Self.sourceRegister))
            #expect(eduB.bar0.load64(at: Self.sourceRegister) == 0x1122_3344_5566_7788, "DMA after unmap reached B")
            #expect(try rig.copier.load(bytes: 4, at: Self.peerIOVA + UInt64(Self.idRegister)) != UInt64(EduDevice.identification),
                    "A read B's id after unmap")
        }
    }

    /// B's BAR 0 mapped into A's IOAS through a dma-buf; `revoke` makes the
    /// kernel revoke it and lets B decode memory again. Before, A's DMA reaches
    /// B; after, it does not (vfio-pci lifts its revocation, but iommufd never
    /// maps the range again), and `checkLive()` throws naming `reason`; the hint
    /// followed (unmap, map the same dma-buf again) reaches B again.
    func expectRevokedForGood(reason: String, by revoke: (NativeRig, EduDevice) throws -> Void,
                              sourceLocation: SourceLocation = #_sourceLocation) throws {
        try withTwoEdus { a, b in
            let rig = try NativeRig(a: a, b: b)
            let eduB = try EduDevice(rig.devB)
            let buf = try rig.devB.exportDMABuf(bar: 0, length: 4096)
            let peer = try rig.ioas.map(buf, at: Self.peerIOVA)
            let target = Self.peerIOVA + UInt64(Self.sourceRegister)
            try rig.copier.store(1, bytes: 8, at: target)
            #expect(eduB.bar0.load64(at: Self.sourceRegister) == 1, sourceLocation: sourceLocation)

            try revoke(rig, eduB)
            #expect(peer.revocation?.contains(reason) == true, "\(String(describing: peer.revocation))", sourceLocation: sourceLocation)
            try rig.copier.store(2, bytes: 8, at: target)
            #expect(eduB.bar0.load64(at: Self.sourceRegister) == 1, "a revoked mapping still reached B", sourceLocation: sourceLocation)
            let e = #expect(throws: VFIOError.self, sourceLocation: sourceLocation) { try peer.checkLive() }
            #expect(e?.detail?.contains("the kernel revoked the dma-buf") == true && e?.detail?.contains(reason) == true,
                    "\(String(describing: e))", sourceLocation: sourceLocation)

            try peer.unmap()
            let fresh = try rig.ioas.map(buf, at: Self.peerIOVA)
            try fresh.checkLive()
            try rig.copier.store(3, bytes: 8, at: target)
            #expect(eduB.bar0.load64(at: Self.sourceRegister) == 3, "the fresh mapping reaches B", sourceLocation: sourceLocation)
            try fresh.unmap()
            try buf.close()
        }
    }

    @Test func memoryDecodingOffRevokesTheMappingForGoodAndAFreshMapReachesBAgain() throws {
        try expectRevokedForGood(reason: "memory decoding") { _, eduB in
            let command = try eduB.config.command()
            try eduB.config.setCommand(command.subtracting(.memorySpace))
            try eduB.config.setCommand(command)
        }
    }

    /// Runtime low power (`VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY`) revokes B's dma-bufs.
    @Test func lowPowerEntryRevokesTheMappingForGood() throws {
        try expectRevokedForGood(reason: "entered low power") { rig, _ in
            try rig.devB.enterLowPower()
            try rig.devB.exitLowPower()
        }
    }

    @Test func closingTheExporterRevokesTheMappingForGood() throws {
        try withTwoEdus { a, b in
            let rig = try NativeRig(a: a, b: b)
            let buf = try rig.devB.exportDMABuf(bar: 0, length: 4096)
            let peer = try rig.ioas.map(buf, at: Self.peerIOVA)
            // B is not mmapped here, so closing its fd releases it.
            #expect(try rig.copier.load(bytes: 4, at: Self.peerIOVA) == UInt64(EduDevice.identification))
            try rig.devB.close()
            #expect(peer.revocation?.contains("was closed") == true, "\(String(describing: peer.revocation))")
            #expect(try rig.copier.load(bytes: 4, at: Self.peerIOVA) != UInt64(EduDevice.identification),
                    "A still read B's id through the mapping of a released device")
            let e = #expect(throws: VFIOError.self) { try peer.checkLive() }
            #expect(e?.hint?.contains("open the device again") == true, "\(String(describing: e))")
            // The dma-buf itself is dead: it does not map again, and the error says why.
            let again = #expect(throws: VFIOError.self) { _ = try rig.ioas.map(buf, at: 0x30_0000) }
            #expect(again?.errno == .noSuchDevice && again?.detail?.contains("is revoked") == true
                        && again?.hint?.contains("open the device again") == true, "\(String(describing: again))")
            try peer.unmap()
            try buf.close()
        }
    }

    /// A hot reset of B's bus (`VFIO_DEVICE_PCI_HOT_RESET`, cdev path: every
    /// device it reaches is ours) revokes B's dma-bufs; iommufd never maps the
    /// range again. Needs B behind a bridge (intel and amd): under virtio-iommu
    /// the pair sits on the root bus, where there is no bus reset (the manifest
    /// leaves the test out, Tests/GuestManifest/virtio.txt).
    @Test func hotResetOfTheExportersBusRevokesTheMappingForGood() throws {
        try #require(try Guest.requireBridgeAsExpected() != nil, "the pair is not behind a bridge under \(Guest.iommu ?? "?")")
        // B's bus also holds its pair mate: bound to vfio-pci and opened by nobody, it counts as ours.
        let mate = try Guest.require("VFIOKIT_EDU_PAIR_B")
        try Guest.withBoundToVFIO(mate) {
            try withTwoEdus { a, b in
                let rig = try NativeRig(a: a, b: b)
                let eduB = try EduDevice(rig.devB)
                let buf = try rig.devB.exportDMABuf(bar: 0, length: 4096)
                let peer = try rig.ioas.map(buf, at: Self.peerIOVA)
                #expect(try rig.copier.load(bytes: 4, at: Self.peerIOVA + UInt64(Self.idRegister)) == UInt64(EduDevice.identification))

                #expect(try rig.devB.hotResetInfo().allOwned)
                try rig.devB.hotReset()
                #expect(peer.revocation?.contains("hot reset") == true, "\(String(describing: peer.revocation))")
                #expect(try rig.copier.load(bytes: 4, at: Self.peerIOVA + UInt64(Self.idRegister)) != UInt64(EduDevice.identification),
                        "A still read B's id through a mapping the reset revoked")
                let e = #expect(throws: VFIOError.self) { try peer.checkLive() }
                #expect(e?.detail?.contains("hot reset") == true, "\(String(describing: e))")

                try peer.unmap()
                let fresh = try rig.ioas.map(buf, at: Self.peerIOVA)
                try fresh.checkLive()
                #expect(try rig.copier.load(bytes: 4, at: Self.peerIOVA + UInt64(Self.idRegister)) == UInt64(EduDevice.identification),
                        "the fresh mapping reaches B after its reset")
                #expect(eduB.id == EduDevice.identification)
                try fresh.unmap()
                try buf.close()
            }
        }
    }

    /// Mapping B's BAR mmap by address: the legacy type1 container maps it (and
    /// A's DMA reaches B through it); iommufd, native and compat, refuses with
    /// EFAULT and an error that points to the dma-buf.
    @Test(arguments: DMAMode.allCases)
    func aBARsMmapMapsByAddressOnlyOnTheLegacyContainer(_ mode: DMAMode) throws {
        try withTwoEdus { a, b in
            let space = try DMASpace(mode: mode, dmaMask: EduDevice.dmaMask)
            let devA = try space.openDevice(a)
            // B's group also holds its pair mate (no driver) and, on intel and amd, the bridge.
            let devB = try space.openDevice(b, requireAllGroupMembersBound: false)
            let eduA = try EduDevice(devA), eduB = try EduDevice(devB)
            try eduA.enableBusMaster()
            let ram = try DMABuffer(length: 8192)
            let ramMapping = try space.map(ram, at: Self.ramIOVA)
            let copier = Copier(edu: eduA, ram: ram)
            let address = UnsafeRawPointer(eduB.bar0.base)
            switch mode {
            case .type1, .type1v2:
                let container = try #require(space.container)
                try container.unsafeMapDMA(address: address, length: 4096, at: Self.peerIOVA)
                try copier.store(0x77, bytes: 8, at: Self.peerIOVA + UInt64(Self.sourceRegister))
                #expect(eduB.bar0.load64(at: Self.sourceRegister) == 0x77, "\(mode): A's DMA reaches B's BAR")
                #expect(try copier.load(bytes: 4, at: Self.peerIOVA) == UInt64(EduDevice.identification))
                #expect(try container.unmapDMA(iova: Self.peerIOVA, length: 4096) == 4096)
            case .compatType1, .compatType1v2:
                let container = try #require(space.container)
                let e = #expect(throws: VFIOError.self) {
                    try container.unsafeMapDMA(address: address, length: 4096, at: Self.peerIOVA)
                }
                #expect(e?.errno == .badAddress && e?.detail?.contains("never maps a BAR by address") == true
                            && e?.hint?.contains("exportDMABuf(bar:offset:length:)") == true, "\(String(describing: e))")
            case .iommufd:
                let ioas = try #require(space.ioas)
                let e = #expect(throws: VFIOError.self) {
                    _ = try ioas.unsafeMap(address: address, length: 4096, at: Self.peerIOVA)
                }
                #expect(e?.errno == .badAddress && e?.detail?.contains("a BAR's mmap") == true
                            && e?.hint?.contains("exportDMABuf(bar:offset:length:)") == true, "\(String(describing: e))")
            }
            try ramMapping.unmap()
        }
    }

    /// `vfioctl attach --map-bar`: refused with --container, with a printed
    /// command that, run literally, maps B's BAR range; then the edu helper,
    /// handed A with B's BAR 0 mapped at 0x200000, reads B's id there by DMA
    /// (and not without the --map-bar).
    @Test func vfioctlAttachMapBarFollowsTheHintAndTheEduHelperReachesThePeer() throws {
        try withTwoEdus { a, b in
            let request = "\(b)/0,4K@0x200000"
            let refused = try VFIOCtlBinary.run(["attach", "\(a)", "--container", "--map-bar", request])
            #expect(refused.status == 64 && refused.err.contains("needs iommufd"), "\(refused.err)")
            let printed = refused.err.split(separator: "`", omittingEmptySubsequences: false).enumerated()
                .filter { $0.offset % 2 == 1 }.map { String($0.element) }
            #expect(printed == ["vfioctl attach \(a) --map-bar \(request)"], "\(refused.err)")
            let command = try #require(printed.first)
            let followed = try VFIOCtlBinary.run(command.split(separator: " ").dropFirst().map(String.init))
            #expect(followed.status == 0, "\(followed.err)")
            #expect(followed.out.contains("0x200000") && followed.out.contains("0x200fff") && followed.out.contains("bar \(b)/0"),
                    "\(followed.out)")

            let helper = URL(fileURLWithPath: VFIOCtlBinary.path).deletingLastPathComponent().appendingPathComponent("vfiokit-edu-dma").path
            let peer = try VFIOCtlBinary.run(["attach", "\(a)", "--map-bar", request, "--prebound", "--exec", "--", helper,
                                              "--peer-iova", "0x200000"])
            #expect(peer.status == 0 && peer.out.contains("peer DMA OK: read the id 0x10000ed"), "\(peer.out) \(peer.err)")
            let without = try VFIOCtlBinary.run(["attach", "\(a)", "--prebound", "--exec", "--", helper, "--peer-iova", "0x200000"])
            #expect(without.status == 1 && without.err.contains("not an edu's id"), "\(without.out) \(without.err)")
        }
    }
}
