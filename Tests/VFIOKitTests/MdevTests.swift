import CVFIO
import Foundation
import Synchronization
import Testing
import VFIOCommands
import VFIOKit
import VFIOKitTestSupport

/// An mdev parent in a fixture tree, shaped as drivers/vfio/mdev/ makes it for
/// the mtty sample: /sys/class/mdev_bus/mtty -> the parent's device directory
/// with `mdev_supported_types/mtty-{1,2}`; instances under the parent's
/// directory, linked from /sys/bus/mdev/devices, each with `mdev_type`,
/// `driver`, `iommu_group` and `vfio-dev/vfioN` once its driver took it.
final class MdevFixture: SysfsWriteHandler, @unchecked Sendable {
    let pci: PCIFixture
    let parentDir = "/sys/devices/virtual/mtty/mtty"
    /// What the fake kernel does wrong: no driver binds new instances; writes to `remove` fail.
    let faults = Mutex<(noDriver: Bool, removeFails: Bool, nextGroup: Int, nextCdev: Int, writes: [String])>(
        (false, false, 20, 3, []))

    init() throws {
        pci = try PCIFixture()
        try pci.link("/sys/class/mdev_bus/mtty", to: "../../devices/virtual/mtty/mtty")
        for (id, name, avail) in [("mtty-1", "Single port serial", 24), ("mtty-2", "Dual port serial", 12)] {
            let t = parentDir + "/mdev_supported_types/" + id
            try pci.write(t + "/name", name + "\n")
            try pci.write(t + "/device_api", "vfio-pci\n")
            try pci.write(t + "/available_instances", "\(avail)\n")
            try pci.write(t + "/create", "")
            try FileManager.default.createDirectory(atPath: pci.root + t + "/devices", withIntermediateDirectories: true)
        }
        try FileManager.default.createDirectory(atPath: pci.root + PCIHost.mdevDevicesDirectory, withIntermediateDirectories: true)
    }

    var host: PCIHost { PCIHost(root: pci.root, sysfsWriter: self) }
    var writes: [String] { faults.withLock { $0.writes } }

    func write(_ value: String, to path: String, host: PCIHost) throws(VFIOError) {
        let v = value.trimmingCharacters(in: .whitespacesAndNewlines)
        let f = faults.withLock { f in
            f.writes.append("\(path)=\(v)")
            return f
        }
        if path.hasSuffix("/create") {
            let type = path.split(separator: "/").dropLast().last.map(String.init)!
            let dir = parentDir + "/" + v
            guard !pci.exists(dir) else { throw VFIOError(operation: .syscall(.write), errno: .fileExists, object: path) }
            try? pci.write(dir + "/remove", "")
            try? pci.link(dir + "/mdev_type", to: "../mdev_supported_types/" + type)
            try? pci.link(PCIHost.mdevDevicesDirectory + "/" + v, to: "../../../devices/virtual/mtty/mtty/" + v)
            try? pci.link(parentDir + "/mdev_supported_types/\(type)/devices/\(v)", to: "../../../" + v)
            if !f.noDriver {
                let (g, c) = faults.withLock { f in
                    f.nextGroup += 1
                    f.nextCdev += 1
                    return (f.nextGroup - 1, f.nextCdev - 1)
                }
                try? pci.link(dir + "/driver", to: "../../../../../bus/mdev/drivers/mtty")
                try? pci.link(dir + "/iommu_group", to: "../../../../../kernel/iommu_groups/\(g)")
                try? FileManager.default.createDirectory(atPath: pci.root + dir + "/vfio-dev/vfio\(c)",
                                                         withIntermediateDirectories: true)
                try? pci.link("/sys/kernel/iommu_groups/\(g)/devices/\(v)", to: "../../../../devices/virtual/mtty/mtty/" + v)
            }
        } else if path.hasSuffix("/remove") {
            if f.removeFails { throw VFIOError(operation: .syscall(.write), errno: .resourceBusy, object: path) }
            let uuid = path.split(separator: "/").dropLast().last.map(String.init)!
            let fm = FileManager.default
            for t in ["mtty-1", "mtty-2"] { try? fm.removeItem(atPath: pci.root + parentDir + "/mdev_supported_types/\(t)/devices/\(uuid)") }
            try? fm.removeItem(atPath: pci.root + parentDir + "/" + uuid)
            try? fm.removeItem(atPath: pci.root + PCIHost.mdevDevicesDirectory + "/" + uuid)
        } else {
            try pci.kernel.write(value, to: path, host: host)
        }
    }
}

@Suite struct MdevTests {
    @Test func parentsAndTypesAreReadFromSysfs() throws {
        let f = try MdevFixture()
        let parents = f.host.mdevParents()
        #expect(parents.map(\.name) == ["mtty"])
        let types = try #require(parents.first).types
        #expect(types.map(\.id) == ["mtty-1", "mtty-2"])
        #expect(types[1] == MdevType(id: "mtty-2", parent: "mtty", name: "Dual port serial", deviceAPI: "vfio-pci",
                                     availableInstances: 12, description: nil, instances: []))
        let json = String(decoding: try JSONEncoder().encode(types[0]), as: UTF8.self)
        #expect(json.contains("\"device_api\":\"vfio-pci\"") && json.contains("\"available_instances\":24"), "\(json)")
    }

    @Test func createFindsTheInstanceWithItsGroupAndCdevAndRemoveTakesItAway() throws {
        let f = try MdevFixture()
        let uuid = try #require(UUID(uuidString: "83B8F4F2-509F-382F-3C1E-E6BFE0FA1001"))
        let m = try f.host.createMdev(type: "mtty-2", uuid: uuid)
        #expect(f.writes.first == "/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2/create=83b8f4f2-509f-382f-3c1e-e6bfe0fa1001")
        #expect(m == MdevDevice(uuid: uuid, parent: "mtty", type: "mtty-2", driver: "mtty", iommuGroup: 20, vfioCdev: "vfio3"))
        #expect(m.vfioCdevPath == "/dev/vfio/devices/vfio3" && m.vfioGroupPath == "/dev/vfio/20")
        #expect(f.host.mdevs() == [m])
        #expect(try f.host.mdevType("mtty-2").instances == [uuid])
        let again = #expect(throws: VFIOError.self) { try f.host.createMdev(type: "mtty-1", uuid: uuid) }
        #expect(again?.operation == .step(.createMdev) && again?.detail?.contains("exists already") == true)

        try f.host.removeMdev(uuid)
        #expect(f.writes.last == "/sys/bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001/remove=1")
        #expect(f.host.mdevs().isEmpty)
        let gone = #expect(throws: VFIOError.self) { try f.host.removeMdev(uuid) }
        #expect(gone?.operation == .step(.findMdev) && gone?.detail?.contains("there is no mdev 83b8f4f2") == true)
    }

    @Test func anUnknownTypeIsRefusedNamingTheTypesThereAre() throws {
        let f = try MdevFixture()
        let e = #expect(throws: VFIOError.self) { try f.host.createMdev(type: "mtty-9") }
        #expect(e?.operation == .step(.findMdevType))
        #expect(e?.detail == "no mdev parent offers type mtty-9; the types there are: mtty-1 (on mtty), mtty-2 (on mtty)")
        #expect(f.writes.isEmpty)
        let none = try PCIFixture()
        let e2 = #expect(throws: VFIOError.self) { try none.host.createMdev(type: "mtty-1") }
        #expect(e2?.detail?.contains("this machine has no mdev parent") == true)
        #expect(e2?.remedies.contains(.kernelConfig(["CONFIG_VFIO_MDEV", "CONFIG_SAMPLE_VFIO_MDEV_MTTY"], since: nil)) == true)
    }

    @Test func noInstancesLeftIsRefusedBeforeTheWrite() throws {
        let f = try MdevFixture()
        try f.pci.write(f.parentDir + "/mdev_supported_types/mtty-2/available_instances", "0\n")
        let e = #expect(throws: VFIOError.self) { try f.host.createMdev(type: "mtty-2") }
        #expect(e?.detail?.contains("has no instances left") == true)
        #expect(f.writes.isEmpty)
    }

    /// The instance was made but its driver did not take it (no driver, no
    /// group): it is removed again, and the error says so.
    @Test func anInstanceNoDriverTookIsRemovedAgain() throws {
        let f = try MdevFixture()
        f.faults.withLock { $0.noDriver = true }
        let uuid = UUID()
        let e = #expect(throws: VFIOError.self) { try f.host.createMdev(type: "mtty-1", uuid: uuid) }
        #expect(e?.detail?.contains("no driver took it; it was removed again") == true, "\(String(describing: e))")
        #expect(f.writes.last == "/sys/bus/mdev/devices/\(MdevDevice.name(of: uuid))/remove=1")
        #expect(f.host.mdevs().isEmpty)
    }

    @Test func whenTheCleanupFailsTooTheErrorSaysWhatIsLeft() throws {
        let f = try MdevFixture()
        f.faults.withLock { $0.noDriver = true; $0.removeFails = true }
        let uuid = UUID()
        let e = #expect(throws: VFIOError.self) { try f.host.createMdev(type: "mtty-1", uuid: uuid) }
        #expect(e?.detail?.contains("removing the half-made instance failed too") == true, "\(String(describing: e))")
        #expect(e?.hint?.contains("/sys/bus/mdev/devices/\(MdevDevice.name(of: uuid))") == true)
    }

    @Test func removalIsRefusedWhileAProcessHoldsTheCdevNamingIt() throws {
        let f = try MdevFixture()
        let m = try f.host.createMdev(type: "mtty-1")
        try f.pci.link("/proc/4242/fd/7", to: try #require(m.vfioCdevPath))
        try f.pci.write("/proc/4242/comm", "qemu-system-x86\n")
        let e = #expect(throws: VFIOError.self) { try f.host.removeMdev(m.uuid) }
        #expect(e?.detail?.contains("pid 4242 (qemu-system-x86) has /dev/vfio/devices/vfio3 open") == true, "\(String(describing: e))")
        #expect(e?.remedies == [.stopProcesses([.init(pid: 4242, command: "qemu-system-x86")])])
        #expect(!f.writes.contains { $0.hasSuffix("/remove=1") })
    }

    /// The group path asks VFIO_GROUP_GET_DEVICE_FD for the UUID in lower case.
    @Test func theGroupPathAsksForTheDeviceByItsUUID() throws {
        let f = try MdevFixture()
        let m = try f.host.createMdev(type: "mtty-1")
        let kernel = FakeKernel()
        kernel.passThrough(f.pci.root)
        kernel.files["/dev/vfio/20"] = .node
        kernel.onIoctl(VFIO_GROUP_GET_STATUS) { _, arg in
            arg!.assumingMemoryBound(to: vfio_group_status.self).pointee.flags = VFIO_GROUP_FLAGS_VIABLE
            return 0
        }
        let asked = Mutex<[String]>([])
        kernel.onIoctl(VFIO_GROUP_GET_DEVICE_FD) { _, arg in
            asked.withLock { $0.append(String(cString: arg!.assumingMemoryBound(to: CChar.self))) }
            return -ENODEV
        }
        try Syscalls.withProvider(kernel) {
            let host = f.host
            let group = try VFIOGroup(mdev: m.uuid, host: host)
            #expect(group.number == 20)
            let e = #expect(throws: VFIOError.self) { _ = try group.device(mdev: m.uuid) }
            #expect(e?.operation == .ioctl(.vfioGroupGetDeviceFD) && e?.errno == .noSuchDevice)
            #expect(asked.withLock { $0 } == [m.name])
            #expect(m.name == m.uuid.uuidString.lowercased())
            try group.close()
            let path = try VFIODevice.cdevPath(ofMdev: m.uuid, host: host)
            #expect(path == "/dev/vfio/devices/vfio3")
        }
    }
}

/// `vfioctl mdev list|create|remove`, and mdevs in `vfioctl list` and
/// `show`, on the fixture (its fake kernel reacts to create and remove).
@Suite struct MdevCLITests {
    func run(_ f: MdevFixture, _ args: String...) -> (status: Int32, out: String, err: String) {
        HostOptions.$fixtureKernel.withValue(f) { vfioctl(args, root: f.pci.root) }
    }

    @Test func createListShowAndRemoveFollowingWhatIsPrinted() throws {
        let f = try MdevFixture()
        let types = run(f, "mdev", "list", "--json")
        #expect(types.status == 0, "\(types.err)")
        let parents = try #require(try jsonObject(types.out)["parents"] as? [[String: Any]])
        let ids = (parents.first?["types"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }
        #expect(ids == ["mtty-1", "mtty-2"])
        #expect(run(f, "mdev", "list").out.contains("mtty-2  Dual port serial"))

        let created = run(f, "mdev", "create", "mtty-2")
        #expect(created.status == 0, "\(created.err)")
        let uuid = try #require(created.out.split(separator: "\n").first.map(String.init))
        #expect(UUID(uuidString: uuid) != nil)
        // The printed commands, run as printed.
        let printed = RemedyWordingTests.vfioctlCommands(in: created.out)
        #expect(printed == ["vfioctl show \(uuid)", "vfioctl mdev remove \(uuid)"], "\(created.out)")

        let list = run(f, "list", "--json")
        let rows = try #require(try jsonObject(list.out)["mdevs"] as? [[String: Any]])
        #expect(rows.first?["uuid"] as? String == uuid && rows.first?["readiness"] as? String == "ready")
        #expect(run(f, "list").out.contains(uuid))

        let show = run(f, "show", uuid, "--json")
        #expect(show.status == 0, "\(show.err)")
        let mdev = try #require(try jsonObject(show.out)["mdev"] as? [String: Any])
        #expect(mdev["type"] as? String == "mtty-2" && mdev["iommu_group"] as? Int == 20)

        for command in printed {
            let r = HostOptions.$fixtureKernel.withValue(f) {
                vfioctl(command.split(separator: " ").dropFirst().map(String.init), root: f.pci.root)
            }
            #expect(r.status == 0, "\(command): \(r.err)")
        }
        #expect(f.host.mdevs().isEmpty)
    }

    @Test func errorsSayWhatThereIs() throws {
        let f = try MdevFixture()
        let unknown = run(f, "mdev", "create", "mtty-7")
        #expect(unknown.status == 1 && unknown.err.contains("mtty-1 (on mtty), mtty-2 (on mtty)"), "\(unknown.err)")
        let bad = run(f, "mdev", "create", "mtty-1", "--uuid", "not-a-uuid")
        #expect(bad.status == 64 && bad.err.contains("is not a UUID"), "\(bad.err)")
        let nothing = run(f, "mdev", "remove", UUID().uuidString)
        #expect(nothing.status == 1 && nothing.err.contains("there is no mdev"), "\(nothing.err)")
        #expect(nothing.err.contains("`vfioctl list`"), "\(nothing.err)")
        let json = run(f, "mdev", "remove", UUID().uuidString, "--json")
        let error = try #require(try jsonObject(json.out)["error"] as? [String: Any])
        #expect(error["operation"] as? String == "find mdev" && error["operation_kind"] as? String == "step")
    }
}

