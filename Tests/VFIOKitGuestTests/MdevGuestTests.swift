import CVFIO
import Foundation
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
}
