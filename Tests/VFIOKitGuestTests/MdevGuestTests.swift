import CVFIO
import Foundation
import SystemPackage
import Testing
import VFIOKit
import VFIOKitTestSupport

/// One 16550 port of an mtty (samples/vfio-mdev/mtty.c): its 8 registers are
/// an 8-byte BAR (BAR0 port 0, BAR1 port 1 of a dual-port type), reached with
/// pread/pwrite on the device fd. Bytes written to THR go into a loopback FIFO
/// and come back out of RBR; LSR bit 0 says the FIFO holds data. SCR, LCR and
/// IER are plain registers.
struct MttyPort {
    static let rbr: UInt64 = 0, ier: UInt64 = 1, fcr: UInt64 = 2, lcr: UInt64 = 3, lsr: UInt64 = 5, scr: UInt64 = 7
    let device: VFIODevice
    let bar: VFIORegionInfo

    init(_ device: VFIODevice, port: Int) throws {
        self.device = device
        bar = try device.regionInfo(PCIRegion.bar(port))
        #expect(bar.size == 8 && bar.isReadable && bar.isWritable && !bar.isMappable,
                "mtty's BAR\(port): 8 bytes, read and write, no mmap: \(bar)")
    }

    func set(_ reg: UInt64, _ v: UInt8) throws { try device.write(v, region: bar, at: reg) }
    func get(_ reg: UInt64) throws -> UInt8 { try device.read(UInt8.self, region: bar, at: reg) }
    func send(_ bytes: [UInt8]) throws { for b in bytes { try set(Self.rbr, b) } }
    var hasData: Bool { get throws { try get(Self.lsr) & 0x01 != 0 } }
    /// Drains the FIFO.
    func receive() throws -> [UInt8] {
        var out: [UInt8] = []
        while try hasData, out.count < 64 { out.append(try get(Self.rbr)) }
        return out
    }
}

/// mdev instances of the kernel's mtty sample, built into the guest kernel
/// (CONFIG_SAMPLE_VFIO_MDEV_MTTY=y registers the parent `mtty` at boot):
/// their lifecycle in sysfs and opening them through the cdev and through the
/// group by UUID, in every DMA mode. mtty's IOMMU is emulated (it does no DMA
/// and its group is its own), so this runs the same on every IOMMU.
@Suite(.serialized, .exclusiveGuestDevices, .guestOnly("MdevGuestTests"))
struct MdevGuestTests {
    static func requireMtty() throws -> MdevParent {
        try #require(PCIHost.system.mdevParents().first { $0.name == "mtty" },
                     "no mtty parent in /sys/class/mdev_bus: the guest kernel needs CONFIG_SAMPLE_VFIO_MDEV_MTTY")
    }

    /// Creates an mdev of `type`, runs `body`, removes it.
    static func withMdev<R>(_ type: String = "mtty-2", _ body: (MdevDevice) throws -> R) throws -> R {
        _ = try requireMtty()
        let host = PCIHost.system
        let m = try host.createMdev(type: type)
        defer { #expect(throws: Never.self, "remove \(m.name)") { try host.removeMdev(m.uuid) } }
        return try body(m)
    }

    @Test func mttyTypesAndTheLifeOfAnInstance() throws {
        let host = PCIHost.system
        let parent = try Self.requireMtty()
        let types = Dictionary(uniqueKeysWithValues: parent.types.map { ($0.id, $0) })
        let single = try #require(types["mtty-1"]), dual = try #require(types["mtty-2"])
        #expect(single.name == "Single port serial" && dual.name == "Dual port serial")
        #expect(single.deviceAPI == "vfio-pci" && dual.deviceAPI == "vfio-pci")
        #expect(single.description == nil, "mtty has no description attribute")
        let freeSingle = try #require(single.availableInstances), freeDual = try #require(dual.availableInstances)
        #expect(freeSingle == 2 * freeDual, "mtty's instances share its ports: a dual-port instance takes two")

        let uuid = UUID()
        let m = try host.createMdev(type: "mtty-2", uuid: uuid)
        var removed = false
        defer { if !removed { try? host.removeMdev(uuid) } }
        #expect(m.uuid == uuid && m.type == "mtty-2" && m.parent == "mtty" && m.driver == "mtty", "\(m)")
        let group = try #require(m.iommuGroup)
        let cdev = try #require(m.vfioCdevPath)
        #expect(FileManager.default.fileExists(atPath: cdev) && FileManager.default.fileExists(atPath: "/dev/vfio/\(group)"))
        // Its group is its own: no PCI member, the mdev by name.
        let g = try host.group(group)
        #expect(g.members.isEmpty && g.otherMembers == [m.name], "\(g)")
        #expect(host.mdevs().map(\.uuid).contains(uuid))
        let after = try host.mdevType("mtty-2")
        #expect(after.availableInstances == freeDual - 1 && after.instances == [uuid])
        #expect(try host.mdevType("mtty-1").availableInstances == freeSingle - 2)

        // A UUID in use and an unknown type are refused, with what there is.
        let taken = #expect(throws: VFIOError.self) { try host.createMdev(type: "mtty-1", uuid: uuid) }
        #expect(taken?.detail?.contains("exists already") == true)
        let unknown = #expect(throws: VFIOError.self) { try host.createMdev(type: "mtty-9") }
        #expect(unknown?.detail?.contains("mtty-1 (on mtty), mtty-2 (on mtty)") == true, "\(String(describing: unknown))")

        // Removal is refused while the device is open (here, by this process), then works.
        let fds = Guest.openFDCount()
        do {
            let device = try VFIODevice.open(mdev: uuid)
            let busy = #expect(throws: VFIOError.self) { try host.removeMdev(uuid) }
            #expect(busy?.detail?.contains("this process has \(cdev) open") == true, "\(String(describing: busy))")
            try device.close()
        }
        #expect(Guest.openFDCount() == fds)
        try host.removeMdev(uuid)
        removed = true
        #expect(!host.mdevs().map(\.uuid).contains(uuid))
        #expect(try host.mdevType("mtty-2").availableInstances == freeDual)
        let gone = #expect(throws: VFIOError.self) { try host.removeMdev(uuid) }
        #expect(gone?.detail?.contains("there is no mdev \(m.name)") == true)
    }

    /// mtty's config space: vendor 0x4348, device 0x3253, class 0x070002 (16550 serial).
    static func checkIdentity(_ device: VFIODevice) throws {
        let info = try device.info()
        #expect(info.isPCI && info.regionCount == 9 && info.irqCount == 5, "\(info)")
        let config = try device.regionInfo(PCIRegion.config)
        #expect(try device.read(UInt32.self, region: config, at: 0) == 0x3253_4348)
        #expect(try device.read(UInt32.self, region: config, at: 8) >> 8 == 0x07_0002)
    }

    @Test func anMdevOpensThroughItsCdevAndThroughItsGroupByUUID() throws {
        try Self.withMdev { m in
            let fds = Guest.openFDCount()
            do {
                // cdev: bound to an iommufd (an emulated device gets an access object), attached to an IOAS.
                let ctx = try IOMMUFD()
                let device = try VFIODevice.open(mdev: m.uuid)
                #expect(device.label == m.vfioCdevPath)
                _ = try device.bind(to: ctx)
                let ioas = try IOAS(ctx)
                _ = try device.attach(to: ioas)
                try Self.checkIdentity(device)
                try device.detach()
                try device.close()
                try ioas.destroy()
                try ctx.close()
            }
            do {
                // Group: VFIO_GROUP_GET_DEVICE_FD with the UUID, in a type1 container.
                let container = try VFIOContainer()
                let group = try VFIOGroup(mdev: m.uuid)
                #expect(group.number == m.iommuGroup)
                try group.setContainer(container)
                try container.setIOMMU(.type1v2)
                let device = try group.device(mdev: m.uuid)
                #expect(device.path == .group(m.name))
                try Self.checkIdentity(device)
                // A UUID not in this group is not found.
                let other = #expect(throws: VFIOError.self) { _ = try group.device(mdev: UUID()) }
                #expect(other?.operation == .ioctl(.vfioGroupGetDeviceFD) && other?.errno == .noSuchDevice,
                        "\(String(describing: other))")
                try device.close()
                try group.close()
                try container.close()
            }
            #expect(Guest.openFDCount() == fds)
        }
    }

    @Test(arguments: DMAMode.allCases)
    func anMdevOpensInEveryDMAMode(_ mode: DMAMode) throws {
        try Self.withMdev("mtty-1") { m in
            let fds = Guest.openFDCount()
            do {
                let space = try DMASpace(mode: mode)
                let device = try space.openDevice(mdev: m.uuid)
                try Self.checkIdentity(device)
                let port = try MttyPort(device, port: 0)
                try port.send(Array("mode".utf8))
                #expect(try port.receive() == Array("mode".utf8))
                try device.close()
            }
            #expect(Guest.openFDCount() == fds)
        }
    }

    // MARK: migration

    static let magic: UInt64 = 0x7e9d_0989_8c3e_2c4e  // MTTY_MAGIC, the first 8 bytes of mtty's stream

    /// Two dual-port mttys: bytes and registers through the first's UARTs,
    /// its state saved (PRE_COPY streams the header, STOP_COPY the ports, in
    /// one session), resumed into the second, and read back there.
    @Test func migrationMovesTheSerialStateFromOneMttyToAnother() throws {
        try Self.withMdev { a in
            try Self.withMdev { b in
                try Self.withMdev("mtty-1") { c in
                    let fds = Guest.openFDCount()
                    do {
                        let ctx = try IOMMUFD()
                        let src = try VFIODevice.open(mdev: a.uuid), dst = try VFIODevice.open(mdev: b.uuid)
                        let single = try VFIODevice.open(mdev: c.uuid)
                        for d in [src, dst, single] { _ = try d.bind(to: ctx) }

                        let a0 = try MttyPort(src, port: 0), a1 = try MttyPort(src, port: 1)
                        try a0.set(MttyPort.fcr, 0x07)  // FIFO on, both cleared
                        try a0.set(MttyPort.lcr, 0x03)  // 8N1
                        try a0.set(MttyPort.scr, 0x5a)
                        try a0.send(Array("VFIOKit".utf8))
                        try a1.set(MttyPort.fcr, 0x01)
                        try a1.set(MttyPort.scr, 0xa5)
                        try a1.send(Array("mdev".utf8))
                        #expect(try a0.hasData && a1.hasData)

                        #expect(try src.migrationCapabilities() == [.stopCopy, .p2p, .preCopy])
                        #expect(try src.migrationState() == .running)
                        let size = try src.migrationDataSize()

                        // Save: PRE_COPY hands out the session's fd and streams the header.
                        let saving = try #require(try src.setMigrationState(.preCopy))
                        #expect(saving.direction == .saving)
                        let info = try saving.precopyInfo()
                        #expect(info.initialBytes > 0 && info.dirtyBytes == 0, "\(info)")
                        let early = try saving.readAvailable()
                        #expect(UInt64(early.count) == info.initialBytes)
                        #expect(try saving.precopyInfo().initialBytes == 0)
                        // PRE_COPY -> STOP_COPY (through PRE_COPY_P2P) keeps the session: no new fd.
                        let none = try src.setMigrationState(.stopCopy)
                        #expect(none == nil, "PRE_COPY -> STOP_COPY keeps the session's fd")
                        #expect(try src.migrationState() == .stopCopy)
                        let stream = early + (try saving.readAvailable())
                        #expect(UInt64(stream.count) == size, "MIG_DATA_SIZE said \(size) bytes, the stream had \(stream.count)")
                        #expect(stream.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) } == Self.magic)
                        let outside = #expect(throws: VFIOError.self) { _ = try saving.precopyInfo() }
                        #expect(outside?.operation == .ioctl(.vfioMigGetPrecopyInfo) && outside?.errno == .invalidArgument)
                        #expect(outside?.detail?.contains("not in PRE_COPY") == true)
                        try saving.close()

                        // Resume into the second mtty: RUNNING -> RESUMING is a combination (RUNNING_P2P, STOP).
                        let resuming = try #require(try dst.setMigrationState(.resuming))
                        #expect(resuming.direction == .resuming)
                        try resuming.write(stream)
                        let after = try dst.setMigrationState(.running)
                        #expect(after == nil)
                        try resuming.close()
                        let b0 = try MttyPort(dst, port: 0), b1 = try MttyPort(dst, port: 1)
                        #expect(try b0.get(MttyPort.scr) == 0x5a && b0.get(MttyPort.lcr) == 0x03)
                        #expect(try b1.get(MttyPort.scr) == 0xa5)
                        #expect(try b0.receive() == Array("VFIOKit".utf8))
                        #expect(try b1.receive() == Array("mdev".utf8))

                        // The source keeps its state (saving reads it, it does not take it).
                        let back = try src.setMigrationState(.running)
                        #expect(back == nil)
                        #expect(try a0.receive() == Array("VFIOKit".utf8))

                        // A failed step names where the device was, where it was asked to go, and where it is.
                        let empty = try #require(try dst.setMigrationState(.resuming))
                        let refused = #expect(throws: VFIOError.self) { try dst.setMigrationState(.running) }
                        #expect(refused?.detail?.hasPrefix("moving from RESUMING to RUNNING through STOP, RUNNING_P2P failed; "
                                                           + "the device is now in RESUMING") == true,
                                "mtty refuses to load an empty stream: \(String(describing: refused))")
                        try empty.close()
                        try dst.reset()
                        #expect(try dst.migrationState() == .running, "VFIO_DEVICE_RESET brings mtty back to RUNNING")

                        // A dual-port stream does not fit a single-port mtty: longer than its state
                        // (ENOMEM), and its header names two ports (EFAULT from mtty's check).
                        let wrongKind = try #require(try single.setMigrationState(.resuming))
                        let long = #expect(throws: VFIOError.self) { try wrongKind.write(stream) }
                        #expect(long?.operation == .syscall(.write) && long?.errno == .noMemory, "\(String(describing: long))")
                        let header = #expect(throws: VFIOError.self) { try wrongKind.write(early) }
                        #expect(header?.operation == .syscall(.write) && header?.errno == .badAddress, "\(String(describing: header))")
                        try wrongKind.close()
                        try single.reset()
                        #expect(try single.migrationState() == .running)

                        // Out of STOP_COPY there is no way back into pre-copy: refused before the kernel is asked.
                        try src.setMigrationState(.stopCopy)?.close()
                        let again = #expect(throws: VFIOError.self) { try src.setMigrationState(.preCopy) }
                        #expect(again?.operation == .step(.changeMigrationState))
                        #expect(again?.detail?.hasPrefix("cannot move the device from STOP_COPY to PRE_COPY") == true)
                        #expect(try src.migrationState() == .stopCopy)
                        try src.setMigrationState(.running)

                        for d in [src, dst, single] { try d.close() }
                        try ctx.close()
                    }
                    #expect(Guest.openFDCount() == fds)
                }
            }
        }
    }

    /// Every pair of states on mtty, asked of the kernel directly after the
    /// device was put in the first: the kernel allows exactly the moves
    /// MigrationFSM has a path for, hands out a data fd exactly when it says
    /// a session starts, and ends in the state asked for. (mtty steps through
    /// vfio_mig_get_next_state and WARNs at an arc it does not know.)
    @Test func theStateMachineAgreesWithTheKernelOnEveryPair() throws {
        try Self.withMdev("mtty-1") { m in
            let fds = Guest.openFDCount()
            do {
                let ctx = try IOMMUFD()
                let device = try VFIODevice.open(mdev: m.uuid)
                _ = try device.bind(to: ctx)
                let caps = try device.migrationCapabilities()
                #expect(caps.states.count == 7)
                // A valid stream of this device, for leaving RESUMING.
                let saving = try #require(try device.setMigrationState(.stopCopy))
                let saved = try saving.readAvailable()
                try saving.close()
                try device.setMigrationState(.running)

                let states = MigrationState.all.filter { $0 != .error }
                var pairs = 0
                for from in states {
                    for to in states {
                        try device.reset()
                        #expect(try device.migrationState() == .running)
                        let session = try device.setMigrationState(from)
                        if from == .resuming { try #require(session).write(saved) }
                        let planned = MigrationFSM.path(from: from, to: to, capabilities: caps)
                        let result = Result { () throws(VFIOError) -> OwnedFD? in try device.setMigrationStateUnchecked(to) }
                        switch result {
                        case .success(let fd):
                            #expect(planned != nil, "the kernel allowed \(from) -> \(to); MigrationFSM has no path")
                            #expect((fd != nil) == MigrationFSM.startsDataSession(from: from, to: to),
                                    "\(from) -> \(to): data fd \(fd != nil ? "returned" : "not returned")")
                            #expect(try device.migrationState() == to)
                            try fd?.close()
                        case .failure(let error):
                            #expect(planned == nil, "the kernel refused \(from) -> \(to): \(error)")
                            #expect(error.errno == .invalidArgument)
                            #expect(try device.migrationState() == from, "a refused move leaves the device where it was")
                        }
                        try session?.close()
                        pairs += 1
                    }
                }
                #expect(pairs == 49)
                try device.reset()
                try device.close()
                try ctx.close()
            }
            #expect(Guest.openFDCount() == fds)
        }
    }

    /// DMA logging through the kernel's checks (vfio_main.c,
    /// vfio_ioctl_device_feature_logging_start): at least one range, ranges
    /// aligned to the page size, not wrapping, not overlapping. mtty's log ops
    /// are no-ops (it does no DMA), so start, report and stop succeed and
    /// every report is clean (all zero): this proves the path through the
    /// kernel, not that dirty pages would be found.
    @Test func dmaLoggingGoesThroughTheKernelsChecksAndReportsClean() throws {
        try Self.withMdev("mtty-1") { m in
            let fds = Guest.openFDCount()
            do {
                let ctx = try IOMMUFD()
                let device = try VFIODevice.open(mdev: m.uuid)
                _ = try device.bind(to: ctx)
                let ioas = try IOAS(ctx)
                _ = try device.attach(to: ioas)
                #expect(try device.probeFeature(VFIO_DEVICE_FEATURE_DMA_LOGGING_START).set)

                func refused(_ ranges: [(iova: IOVA, length: UInt64)], _ errno: Errno) {
                    let e = #expect(throws: VFIOError.self) { try device.startDMALogging(pageSize: 4096, ranges: ranges) }
                    #expect(e?.errno == errno, "\(ranges): \(String(describing: e))")
                }
                refused([], .invalidArgument)
                refused([(0x10_0800, 0x1000)], .invalidArgument)  // not page aligned
                refused([(0x10_0000, 0x2000), (0x10_1000, 0x1000)], .invalidArgument)  // overlapping
                refused([(0xffff_ffff_ffff_f000, 0x2000)], .overflow)  // wraps past 2^64

                try device.startDMALogging(pageSize: 4096, ranges: [(0x10_0000, 0x10_0000), (0x40_0000, 0x1000)])
                let report = try device.dmaLoggingReport(iova: 0x10_0000, length: 0x10_0000, pageSize: 4096)
                #expect(report.count == 4 && report.allSatisfy { $0 == 0 }, "mtty's logging is a no-op: a clean bitmap")
                try device.stopDMALogging()

                try device.detach()
                try device.close()
                try ioas.destroy()
                try ctx.close()
            }
            #expect(Guest.openFDCount() == fds)
        }
    }
}
