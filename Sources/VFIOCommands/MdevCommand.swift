import ArgumentParser
import FoundationEssentials
import VFIOKit

/// `vfioctl mdev list | create | remove`: mediated devices.
public struct MdevCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "mdev",
        abstract: "List mdev types, and create or remove mediated devices (mdevs).",
        discussion: """
            A mediated device is a virtual device a parent driver makes on request: a \
            slice of a GPU, or the kernel's mtty sample (a virtual PCI serial card). The \
            parent lists its types in sysfs; writing a UUID to a type's create file makes \
            an instance with an IOMMU group of its own and a VFIO cdev, which the library \
            opens like a PCI device (VFIODevice.open(mdev:), VFIOGroup(mdev:), \
            DMASpace.openDevice(mdev:)). `vfioctl list` and `vfioctl show UUID` show the \
            instances.

            Examples:
              vfioctl mdev list
              vfioctl mdev create mtty-2
              vfioctl mdev create mtty-1 --uuid 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001 --json
              vfioctl show 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001
              vfioctl mdev remove 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001
            """,
        subcommands: [MdevListCommand.self, MdevCreateCommand.self, MdevRemoveCommand.self])

    public init() {}
}

/// `vfioctl mdev list [--json]`.
public struct MdevListCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List the devices that offer mdev types, their types and instances.",
        discussion: """
            Columns: the parent device, the type's sysfs name (what `vfioctl mdev create` \
            takes), its name, the device API its instances offer (vfio-pci: a PCI device \
            through VFIO), how many more instances can be made, and the instances there are.

            JSON (--json): {"parents": [{"name", "types": [TYPE]}]} where TYPE has id, \
            parent, name, device_api, available_instances, description (null when the \
            driver has none), instances (UUIDs).

            Examples:
              vfioctl mdev list
              vfioctl mdev list --json | jq '.parents[].types[] | select(.available_instances > 0) | .id'
            """)

    @OptionGroup var output: OutputOptions
    @OptionGroup var hostOptions: HostOptions

    public init() {}

    public func run() throws {
        let host = hostOptions.host
        try reporting(json: output.json) { () throws(VFIOError) in
            let parents = host.mdevParents()
            if output.json {
                struct Out: Encodable { var parents: [MdevParent] }
                CommandOutput.out(JSON.render(Out(parents: parents)))
                return
            }
            if parents.isEmpty {
                CommandOutput.out("no mdev parents: no driver on this machine offers mediated devices "
                                  + "(\(PCIHost.mdevBusDirectory) is empty)")
                return
            }
            CommandOutput.out(table(["PARENT", "TYPE", "NAME", "API", "AVAILABLE", "INSTANCES"], parents.flatMap { p in
                p.types.map { t in
                    [p.name, t.id, t.name ?? "-", t.deviceAPI ?? "-", t.availableInstances.map(String.init) ?? "?",
                     t.instances.isEmpty ? "-" : t.instances.map(MdevDevice.name(of:)).joined(separator: " ")]
                }
            }))
        }
    }
}

/// Parses a UUID argument in `validate()`, with the expected form in the message.
func validateUUID(_ text: String, _ what: String) throws {
    if UUID(uuidString: text) == nil {
        throw ValidationError("\(what) \(text) is not a UUID; write it as 8-4-4-4-12 hex digits, "
                              + "e.g. 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001 (`vfioctl list` shows the mdevs there are)")
    }
}

/// `vfioctl mdev create TYPE [--parent NAME] [--uuid UUID] [--json]`.
public struct MdevCreateCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Create a mediated device of a type (`vfioctl mdev list` lists them).",
        discussion: """
            Writes the UUID (a new random one unless --uuid names it) to the type's create \
            file and reports the instance: its UUID, type, parent, driver, IOMMU group and \
            VFIO cdev. --parent is needed only when more than one parent offers the type. \
            An instance whose driver did not take it is removed again.

            JSON (--json): {"mdev": MDEV} where MDEV has uuid, parent, type, driver, \
            iommu_group, vfio_cdev (null when there is none).

            Examples:
              vfioctl mdev create mtty-2
              vfioctl mdev create mtty-1 --parent mtty --uuid 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001
              uuid=$(vfioctl mdev create mtty-2 --json | jq -r .mdev.uuid)
            """)

    @Argument(help: "The type's sysfs name, e.g. mtty-2.")
    var type: String

    @Option(name: .long, help: ArgumentHelp("The parent device, when more than one offers the type.", valueName: "name"))
    var parent: String?

    @Option(name: .long, help: ArgumentHelp("The instance's UUID (default: a new random one).", valueName: "uuid"))
    var uuid: String?

    @OptionGroup var output: OutputOptions
    @OptionGroup var hostOptions: HostOptions

    public init() {}

    public func validate() throws {
        if let uuid { try validateUUID(uuid, "--uuid") }
    }

    public func run() throws {
        let host = hostOptions.host
        try reporting(json: output.json) { () throws(VFIOError) in
            let m = try host.createMdev(type: type, parent: parent, uuid: uuid.flatMap { UUID(uuidString: $0) } ?? UUID())
            if output.json {
                struct Out: Encodable { var mdev: MdevDevice }
                CommandOutput.out(JSON.render(Out(mdev: m)))
                return
            }
            CommandOutput.out(m.name)
            CommandOutput.out("  type \(m.type ?? "?") on \(m.parent ?? "?"), driver \(m.driver ?? "none"), IOMMU group "
                              + (m.iommuGroup.map(String.init) ?? "none") + ", VFIO cdev " + (m.vfioCdevPath ?? "none"))
            CommandOutput.out("  look at it: `vfioctl show \(m.name)`; remove it: `vfioctl mdev remove \(m.name)`")
        }
    }
}

/// `vfioctl mdev remove UUID [--json]`.
public struct MdevRemoveCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "remove",
        abstract: "Remove a mediated device.",
        discussion: """
            Writes 1 to its remove file. Refused, naming the process, while its VFIO cdev \
            or group is open anywhere: the kernel would wait until it is closed.

            JSON (--json): {"removed": UUID}.

            Examples:
              vfioctl mdev remove 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001
            """)

    @Argument(help: "The mdev's UUID.")
    var uuid: String

    @OptionGroup var output: OutputOptions
    @OptionGroup var hostOptions: HostOptions

    public init() {}

    public func validate() throws { try validateUUID(uuid, "mdev") }

    public func run() throws {
        let host = hostOptions.host
        try reporting(json: output.json) { () throws(VFIOError) in
            let u = UUID(uuidString: uuid) ?? UUID()
            try host.removeMdev(u)
            if output.json {
                struct Out: Encodable { var removed: String }
                CommandOutput.out(JSON.render(Out(removed: MdevDevice.name(of: u))))
                return
            }
            CommandOutput.out("removed \(MdevDevice.name(of: u))")
        }
    }
}

/// An mdev as `vfioctl list` and `vfioctl show` report it: the sysfs facts
/// plus readiness (`ready`; `held`: a process has its cdev or group open;
/// `no-vfio`: its driver did not register it with VFIO) and the holders.
/// JSON: the keys of `vfioctl mdev create`'s MDEV plus readiness and holders.
struct MdevRow: Encodable {
    var mdev: MdevDevice
    var readiness: String
    var holders: [String]

    init(_ m: MdevDevice, openers: [String: [(pid: Int32, command: String)]]) {
        mdev = m
        holders = [m.vfioCdevPath, m.vfioGroupPath].compactMap { $0 }.flatMap { node in
            (openers[node] ?? []).map { "pid \($0.pid) (\($0.command)) has \(node) open" }
        }
        readiness = m.vfioCdev == nil ? "no-vfio" : (holders.isEmpty ? "ready" : "held")
    }

    enum K: String, CodingKey { case readiness, holders }
    func encode(to encoder: any Encoder) throws {
        try mdev.encode(to: encoder)
        var c = encoder.container(keyedBy: K.self)
        try c.encode(readiness, forKey: .readiness)
        try c.encode(holders, forKey: .holders)
    }

    /// The rows of `vfioctl list`'s mdev table.
    static func tableText(_ rows: [MdevRow]) -> String {
        table(["MDEV", "TYPE", "PARENT", "DRIVER", "GROUP", "VFIO"], rows.map { r in
            let m = r.mdev
            return [m.name, m.type ?? "-", m.parent ?? "-", m.driver ?? "-", m.iommuGroup.map(String.init) ?? "-",
                    r.readiness + (m.vfioCdev.map { " (\($0))" } ?? "")]
        })
    }
}

/// What VFIO reports about an mdev, for `vfioctl show UUID`: regions (index,
/// size, flags), IRQ counts, and migration (flags and state) when the device
/// has it. JSON keys: `regions` (each `index`, `size`, `readable`, `writable`,
/// `mmap`), `irqs` (each `index`, `count`), `migration` (`flags`, `state`) or null.
struct MdevVFIODetails: Encodable {
    struct Region: Encodable {
        var index: UInt32
        var size: UInt64
        var readable: Bool
        var writable: Bool
        var mmap: Bool
    }
    struct IRQ: Encodable {
        var index: UInt32
        var count: UInt32
    }
    struct Migration: Encodable {
        var flags: String
        var state: String
    }
    var regions: [Region]
    var irqs: [IRQ]
    var migration: Migration?

    /// Opens the mdev's cdev, binds it to a fresh iommufd and asks VFIO; all closed again before returning.
    static func read(_ m: MdevDevice, host: PCIHost) throws(VFIOError) -> MdevVFIODetails {
        guard host.root == "/" else {
            throw .invalid(.step("read VFIO details"), "VFIO details need the real /dev (not a fixture root)", object: m.name)
        }
        let iommufd = try IOMMUFD()
        defer { try? iommufd.close() }
        let dev = try VFIODevice.open(mdev: m.uuid, host: host)
        defer { try? dev.close() }
        _ = try dev.bind(to: iommufd)
        let info = try dev.info()
        var regions: [Region] = []
        for i in 0..<UInt32(info.regionCount) {
            guard let r = try? dev.regionInfo(i), r.size > 0 else { continue }
            regions.append(Region(index: i, size: r.size, readable: r.isReadable, writable: r.isWritable, mmap: r.isMappable))
        }
        var irqs: [IRQ] = []
        for index in IRQIndex.allCases where index.rawValue < UInt32(info.irqCount) {
            guard let q = try? dev.irqInfo(index) else { continue }
            irqs.append(IRQ(index: index.rawValue, count: q.count))
        }
        var migration: Migration?
        if let caps = try? dev.migrationCapabilities() {
            migration = Migration(flags: caps.description, state: (try? dev.migrationState())?.description ?? "?")
        }
        return MdevVFIODetails(regions: regions, irqs: irqs, migration: migration)
    }
}

/// `vfioctl show UUID`: the mdev, its readiness and holders, and what VFIO reports.
/// JSON: {"mdev": MDEV (as in `vfioctl list`), "vfio": VFIO or null, "vfio_error": string or null}.
enum MdevShow {
    struct Report: Encodable {
        var mdev: MdevRow
        var vfio: MdevVFIODetails?
        var vfioError: String?
        enum CodingKeys: String, CodingKey { case mdev, vfio, vfioError = "vfio_error" }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(mdev, forKey: .mdev)
            try c.encode(vfio, forKey: .vfio)
            try c.encode(vfioError, forKey: .vfioError)
        }
    }

    static func run(_ uuid: UUID, host: PCIHost, json: Bool) throws(VFIOError) {
        let m = try host.mdev(uuid)
        let row = MdevRow(m, openers: host.deviceNodeOpeners())
        var report = Report(mdev: row)
        if row.readiness == "ready" {
            do throws(VFIOError) {
                report.vfio = try MdevVFIODetails.read(m, host: host)
            } catch {
                report.vfioError = CLIWording.message(error)
            }
        }
        if json {
            CommandOutput.out(JSON.render(report))
            return
        }
        let rows: [[String]] = [
            ["Mdev", m.name], ["Type", m.type ?? "?"], ["Parent", m.parent ?? "?"], ["Driver", m.driver ?? "none"],
            ["IOMMU group", m.iommuGroup.map(String.init) ?? "none"], ["VFIO cdev", m.vfioCdevPath ?? "none"],
            ["VFIO readiness", row.readiness],
        ]
        CommandOutput.out(table(["", ""], rows).split(separator: "\n").dropFirst().joined(separator: "\n"))
        if !row.holders.isEmpty {
            CommandOutput.out("")
            CommandOutput.out("Held:")
            for h in row.holders { CommandOutput.out("  " + h) }
        }
        if let v = report.vfio {
            CommandOutput.out("")
            CommandOutput.out(table(["REGION", "SIZE", "ACCESS"], v.regions.map {
                ["\($0.index)", "\($0.size)", ($0.readable ? "r" : "-") + ($0.writable ? "w" : "-") + ($0.mmap ? "m" : "-")]
            }))
            CommandOutput.out("IRQs: " + v.irqs.map { "index \($0.index): \($0.count)" }.joined(separator: ", "))
            CommandOutput.out("Migration: " + (v.migration.map { "\($0.flags), state \($0.state)" } ?? "not supported"))
        } else if let e = report.vfioError {
            CommandOutput.out("")
            CommandOutput.out("VFIO details unavailable: " + e)
        }
    }
}
