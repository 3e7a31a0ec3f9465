import FoundationEssentials
import VFIOSystem

// Mediated devices (Documentation/driver-api/vfio-mediated-device.rst,
// drivers/vfio/mdev/): a parent driver registers types under its device
// (`mdev_supported_types/TYPE/` with `create`, `name`, `device_api`,
// `available_instances`, `description`, `devices/`; mdev_core.c names each
// type directory `DRIVER-SYSFSNAME`, so mtty's are `mtty-1` and `mtty-2`), and
// /sys/class/mdev_bus lists the parents. Writing a UUID to a type's `create`
// makes an instance, /sys/bus/mdev/devices/UUID, with its `mdev_type` link,
// its driver, an IOMMU group of its own (emulated: the parent driver translates
// DMA itself) and, once its driver registered it with VFIO, a VFIO cdev
// (`vfio-dev/vfioN`); writing 1 to its `remove` destroys it.

extension VFIOError.Step {
    /// Finding an mdev type (`/sys/class/mdev_bus/PARENT/mdev_supported_types/TYPE`).
    public static let findMdevType: Self = "find mdev type"
    /// Finding an mdev instance (`/sys/bus/mdev/devices/UUID`).
    public static let findMdev: Self = "find mdev"
    /// Creating an mdev instance (a write of its UUID to the type's `create`).
    public static let createMdev: Self = "create mdev"
    /// Removing an mdev instance (a write of 1 to its `remove`).
    public static let removeMdev: Self = "remove mdev"
}

/// One mdev type a parent offers.
///
/// JSON keys: `id` (the sysfs name, `mtty-2`), `parent`, `name`,
/// `device_api` (`vfio-pci`), `available_instances`, `description` (null
/// when the driver has none), `instances` (UUIDs, lower case).
public struct MdevType: Sendable, Equatable, Encodable {
    /// The type's directory name (`mtty-2`): the parent driver's name, a dash, the driver's name for the type.
    public var id: String
    /// The parent device's name (`mtty`, or a PCI address for a GPU).
    public var parent: String
    /// The type's `name` attribute (`Dual port serial`), nil when it has none.
    public var name: String?
    /// The API its instances offer (`vfio-pci`, `vfio-ccw`, ...), from `device_api`.
    public var deviceAPI: String?
    /// How many more instances the parent can make now, from `available_instances`.
    public var availableInstances: Int?
    /// The type's `description` attribute, nil when the driver has none.
    public var description: String?
    /// The instances of this type there are, by UUID.
    public var instances: [UUID]

    /// A type as sysfs describes it (``PCIHost/mdevParents()`` reads them).
    public init(id: String, parent: String, name: String? = nil, deviceAPI: String? = nil,
                availableInstances: Int? = nil, description: String? = nil, instances: [UUID] = []) {
        self.id = id
        self.parent = parent
        self.name = name
        self.deviceAPI = deviceAPI
        self.availableInstances = availableInstances
        self.description = description
        self.instances = instances
    }

    enum CodingKeys: String, CodingKey {
        case id, parent, name, description, instances
        case deviceAPI = "device_api", availableInstances = "available_instances"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(parent, forKey: .parent)
        try c.encode(name, forKey: .name)
        try c.encode(deviceAPI, forKey: .deviceAPI)
        try c.encode(availableInstances, forKey: .availableInstances)
        try c.encode(description, forKey: .description)
        try c.encode(instances.map(MdevDevice.name(of:)), forKey: .instances)
    }
}

/// A device that offers mdev types (`/sys/class/mdev_bus/NAME`). JSON keys: `name`, `types`.
public struct MdevParent: Sendable, Equatable, Encodable {
    /// The parent's device name: a PCI address for a GPU, `mtty` for the kernel's sample.
    public var name: String
    /// The types it offers, by id.
    public var types: [MdevType]

    /// A parent with these types.
    public init(name: String, types: [MdevType]) {
        self.name = name
        self.types = types
    }
}

/// One mdev instance (`/sys/bus/mdev/devices/UUID`).
///
/// JSON keys: `uuid` (lower case), `parent`, `type`, `driver`,
/// `iommu_group`, `vfio_cdev` (`vfio0`, or null before its driver registered it).
public struct MdevDevice: Sendable, Equatable, Encodable {
    /// The instance's UUID.
    public var uuid: UUID
    /// Its parent device's name (`mtty`).
    public var parent: String?
    /// Its type's id (`mtty-2`).
    public var type: String?
    /// The mdev driver bound to it (the parent's, e.g. `mtty`), nil when none.
    public var driver: String?
    /// Its IOMMU group: `N` of `/dev/vfio/N`.
    public var iommuGroup: Int?
    /// Its VFIO cdev's name (`vfio3`), once its driver registered it with VFIO.
    public var vfioCdev: String?

    /// An instance as sysfs describes it (``PCIHost/mdev(_:)`` reads it).
    public init(uuid: UUID, parent: String? = nil, type: String? = nil, driver: String? = nil,
                iommuGroup: Int? = nil, vfioCdev: String? = nil) {
        self.uuid = uuid
        self.parent = parent
        self.type = type
        self.driver = driver
        self.iommuGroup = iommuGroup
        self.vfioCdev = vfioCdev
    }

    /// The name sysfs and VFIO use for an mdev: its UUID in lower case (the
    /// name `VFIO_GROUP_GET_DEVICE_FD` matches).
    public static func name(of uuid: UUID) -> String { uuid.uuidString.lowercased() }

    /// The name sysfs and VFIO use for it: the UUID in lower case.
    public var name: String { MdevDevice.name(of: uuid) }
    /// `/sys/bus/mdev/devices/UUID`.
    public var sysfsPath: String { PCIHost.mdevDevicesDirectory + "/" + name }
    /// `/dev/vfio/devices/vfioN`, when its driver registered it with VFIO.
    public var vfioCdevPath: String? { vfioCdev.map { "/dev/vfio/devices/" + $0 } }
    /// `/dev/vfio/N`.
    public var vfioGroupPath: String? { iommuGroup.map { "/dev/vfio/\($0)" } }

    enum CodingKeys: String, CodingKey {
        case uuid, parent, type, driver
        case iommuGroup = "iommu_group", vfioCdev = "vfio_cdev"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .uuid)
        try c.encode(parent, forKey: .parent)
        try c.encode(type, forKey: .type)
        try c.encode(driver, forKey: .driver)
        try c.encode(iommuGroup, forKey: .iommuGroup)
        try c.encode(vfioCdev, forKey: .vfioCdev)
    }
}

extension PCIHost {
    /// `/sys/class/mdev_bus`: one entry per device that offers mdev types.
    public static let mdevBusDirectory = "/sys/class/mdev_bus"
    /// `/sys/bus/mdev/devices`: one entry per mdev instance.
    public static let mdevDevicesDirectory = "/sys/bus/mdev/devices"

    /// Every device that offers mdev types, with its types, by name.
    public func mdevParents() -> [MdevParent] {
        list(Self.mdevBusDirectory).map { name in
            let dir = Self.mdevBusDirectory + "/" + name + "/mdev_supported_types"
            return MdevParent(name: name, types: list(dir).map { mdevType(parent: name, id: $0) })
        }
    }

    /// Every mdev type of every parent.
    public func mdevTypes() -> [MdevType] { mdevParents().flatMap(\.types) }

    func mdevType(parent: String, id: String) -> MdevType {
        let dir = Self.mdevBusDirectory + "/\(parent)/mdev_supported_types/\(id)"
        return MdevType(id: id, parent: parent, name: readTrimmed(dir + "/name"), deviceAPI: readTrimmed(dir + "/device_api"),
                        availableInstances: readTrimmed(dir + "/available_instances").flatMap { Int($0) },
                        description: readTrimmed(dir + "/description"),
                        instances: list(dir + "/devices").compactMap { UUID(uuidString: $0) })
    }

    /// A type by its sysfs name (`mtty-2`), on `parent` or on the one parent
    /// that has it. The error names the types there are, or says that the
    /// machine has no mdev parent.
    public func mdevType(_ id: String, parent: String? = nil) throws(VFIOError) -> MdevType {
        let all = mdevTypes()
        let matches = all.filter { $0.id == id && (parent == nil || $0.parent == parent) }
        if matches.count == 1 { return matches[0] }
        if matches.count > 1 {
            throw VFIOError.invalid(.step(.findMdevType), "\(matches.count) parents offer mdev type \(id): "
                                    + matches.map(\.parent).joined(separator: ", "), object: id,
                                    remedies: [.advice("name the parent the instance is to be made on")])
        }
        let known = all.map { "\($0.id) (on \($0.parent))" }
        let what = known.isEmpty ? "this machine has no mdev parent (\(Self.mdevBusDirectory) is empty)"
                                 : "the types there are: " + known.joined(separator: ", ")
        throw VFIOError.invalid(.step(.findMdevType), "no mdev parent offers type \(id)"
                                + (parent.map { " on \($0)" } ?? "") + "; " + what, object: id,
                                remedies: known.isEmpty
                                    ? [.advice("load the driver of a device that offers mdev types"),
                                       .kernelConfig(["CONFIG_VFIO_MDEV", "CONFIG_SAMPLE_VFIO_MDEV_MTTY"], since: nil)]
                                    : [.advice("use one of the types there are")])
    }

    /// Every mdev instance, by UUID (instances that vanish while being read are left out).
    public func mdevs() -> [MdevDevice] {
        list(Self.mdevDevicesDirectory).compactMap { UUID(uuidString: $0) }.compactMap { try? mdev($0) }
            .sorted { $0.name < $1.name }
    }

    /// One mdev instance; throws when there is none by that UUID, or when its
    /// group or driver link cannot be read.
    public func mdev(_ uuid: UUID) throws(VFIOError) -> MdevDevice {
        let name = MdevDevice.name(of: uuid)
        let dir = Self.mdevDevicesDirectory + "/" + name
        guard exists(dir) else {
            throw VFIOError.invalid(.step(.findMdev), "there is no mdev \(name) (\(dir) does not exist)", object: name,
                                    remedies: [.listDevices])
        }
        // The link points at the device's own directory, inside its parent's: .../PARENT/UUID.
        let parent = readLink(dir).flatMap { t -> String? in
            let parts = t.split(separator: "/")
            return parts.count >= 2 ? String(parts[parts.count - 2]) : nil
        }
        return MdevDevice(uuid: uuid, parent: parent, type: linkName(dir + "/mdev_type"),
                          driver: try linkIfPresent(dir + "/driver"),
                          iommuGroup: try linkIfPresent(dir + "/iommu_group").flatMap { Int($0) },
                          vfioCdev: list(dir + "/vfio-dev").first { $0.hasPrefix("vfio") })
    }

    /// Creates an mdev of type `type` (on `parent`, or the one parent with that
    /// type) by writing `uuid` to the type's `create`, and returns it as sysfs
    /// then shows it: with its driver bound, its IOMMU group and its VFIO cdev.
    /// Errors say how many instances are left and which types exist. Nothing
    /// is left behind on failure: an instance made before a later step failed
    /// (its driver did not take it, it has no group) is removed again.
    @discardableResult
    public func createMdev(type: String, parent: String? = nil, uuid: UUID = UUID()) throws(VFIOError) -> MdevDevice {
        let t = try mdevType(type, parent: parent)
        let name = MdevDevice.name(of: uuid)
        if exists(Self.mdevDevicesDirectory + "/" + name) {
            throw VFIOError.invalid(.step(.createMdev), "an mdev \(name) exists already", object: name,
                                    remedies: [.advice("pick another UUID")])
        }
        if t.availableInstances == 0 {
            throw VFIOError.invalid(.step(.createMdev), "mdev type \(t.id) on \(t.parent) has no instances left "
                                    + "(available_instances is 0; \(t.instances.count) of this type exist)", object: t.id,
                                    remedies: [.advice("remove an instance the parent's resources went to"), .listDevices])
        }
        let create = Self.mdevBusDirectory + "/\(t.parent)/mdev_supported_types/\(t.id)/create"
        do throws(VFIOError) {
            try write(name, to: create)
        } catch {
            var e = error
            switch e.errno {
            case .fileExists?: e.remedies = [.advice("an mdev with UUID \(name) exists: pick another UUID")]
            case .noSpace?: e.remedies = [.advice("the parent has no resources left for type \(t.id)"), .listDevices]
            default: break
            }
            throw e
        }
        // mdev_device_create registers the device and probes its driver before
        // the write returns: the instance is complete now, or it is not usable.
        do throws(VFIOError) {
            let m = try mdev(uuid)
            guard m.driver != nil, m.iommuGroup != nil else {
                throw VFIOError.invalid(.step(.createMdev), "mdev \(name) was made but "
                                        + (m.driver == nil ? "no driver took it" : "it has no IOMMU group")
                                        + "; it was removed again", object: name,
                                        remedies: [.readKernelLog(matching: [t.parent, "mdev"])])
            }
            return m
        } catch {
            do throws(VFIOError) {
                try write("1", to: Self.mdevDevicesDirectory + "/" + name + "/remove")
            } catch let removal {
                var e = error
                e.detail = (e.detail.map { $0 + "; " } ?? "") + "removing the half-made instance failed too: \(removal.summary)"
                e.remedies.append(.advice("remove \(Self.mdevDevicesDirectory)/\(name) (write 1 to its remove)"))
                throw e
            }
            throw error
        }
    }

    /// Destroys an mdev (writes 1 to its `remove`). Refused while a process
    /// (this one included) has its VFIO cdev or group open: the kernel would
    /// block the write until it is closed, for as long as that takes.
    public func removeMdev(_ uuid: UUID) throws(VFIOError) {
        let m = try mdev(uuid)
        let nodes = [m.vfioCdevPath, m.vfioGroupPath].compactMap { $0 }
        let openers = deviceNodeOpeners()
        let mine = openNodesOfThisProcess()
        var holders: [String] = []
        var processes: [Remedy.RunningProcess] = []
        for n in nodes {
            for o in openers[n] ?? [] {
                holders.append("pid \(o.pid) (\(o.command)) has \(n) open")
                if !processes.contains(where: { $0.pid == o.pid }) { processes.append(.init(pid: o.pid, command: o.command)) }
            }
            if mine.contains(n) { holders.append("this process has \(n) open") }
        }
        if !holders.isEmpty {
            throw VFIOError.invalid(.step(.removeMdev), "mdev \(m.name) is in use: " + holders.joined(separator: "; ")
                                    + "; removing it would wait until it is closed", object: m.name,
                                    remedies: processes.isEmpty ? [.advice("close the device and its group first")]
                                                                : [.stopProcesses(processes)])
        }
        try write("1", to: m.sysfsPath + "/remove")
    }

    /// The /dev nodes this process has open (its own `/proc/self/fd`).
    public func openNodesOfThisProcess() -> Set<String> {
        Set(list("/proc/self/fd").compactMap { readLink("/proc/self/fd/" + $0) }.filter { $0.hasPrefix("/dev/") })
    }
}
