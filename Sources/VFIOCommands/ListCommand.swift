import ArgumentParser
import VFIOKit

/// `vfioctl list [--groups] [--json]`.
public struct ListCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List PCI devices (or IOMMU groups) and how ready each is for VFIO.",
        discussion: """
            Columns: BDF, vendor:device ids, class, bound driver, IOMMU group, and VFIO \
            readiness: ready (on vfio-pci, group viable, nobody holds it), held (on \
            vfio-pci, but a process has a VFIO node of its group open: `vfioctl show BDF` \
            names it), group-not-viable (on vfio-pci, another member of the group is on a \
            kernel driver), bindable (`vfioctl bind BDF` makes it ready), needs-group \
            (another endpoint of the group blocks: `vfioctl bind BDF --group`), \
            needs-bridge-stub (a bridge of the group is on a driver that does not manage \
            DMA, such as shpchp: `vfioctl bind BRIDGE --driver pci-stub`, then bind), in-use \
            (its kernel driver is in use: mounted, up; `vfioctl show BDF` says how to stop \
            it), no-iommu-group, bridge, group-unreadable (a member of its group cannot be \
            read from sysfs, so it is not called safe). The commands for each device are \
            in the JSON key fix and in `vfioctl show BDF`.

            JSON (--json): {"devices": [DEVICE]} where DEVICE has the keys address, \
            vendor_id, device_id, subsystem_vendor_id, subsystem_device_id, class_code, \
            class_name, driver, driver_override, iommu_group, numa_node, vfio_cdev, \
            is_bridge, header_type, readiness, fix (the commands that make it ready, in \
            order, to be run as printed; empty when the word promises none). Mediated \
            devices follow the PCI devices in a table of their own (when there are any) \
            and in the JSON key mdevs: [MDEV], where MDEV has uuid, parent, type, driver, \
            iommu_group, vfio_cdev, readiness (ready, held: a process has its cdev or \
            group open, no-vfio) and holders. With --groups: {"groups": [GROUP]} where \
            GROUP has id, type, viable, blocking (BDFs), members (each address, ids, \
            class_name, driver, status, reason), other_members. Absent values are null.

            Examples:
              vfioctl list
              vfioctl list --groups
              vfioctl list --json | jq '.devices[] | select(.driver == "vfio-pci")'
            """)

    @Flag(name: .long, help: "List IOMMU groups and their members instead of devices.")
    var groups = false

    @OptionGroup var output: OutputOptions
    @OptionGroup var hostOptions: HostOptions

    public init() {}

    struct DeviceRow: Encodable {
        var device: PCIDevice
        var readiness: VFIOReadiness
        var fix: [String]
        func encode(to encoder: any Encoder) throws {
            try device.encode(to: encoder)
            var c = encoder.container(keyedBy: K.self)
            try c.encode(readiness, forKey: .readiness)
            try c.encode(fix, forKey: .fix)
        }
        enum K: String, CodingKey { case readiness, fix }
    }

    struct GroupRow: Encodable {
        struct Member: Encodable {
            var address: PCIAddress
            var ids: String
            var className: String
            var driver: String?
            var status: GroupViability.MemberStatus
            var reason: String
            enum CodingKeys: String, CodingKey { case address, ids, className = "class_name", driver, status, reason }
            func encode(to encoder: any Encoder) throws {
                var c = encoder.container(keyedBy: CodingKeys.self)
                try c.encode(address, forKey: .address)
                try c.encode(ids, forKey: .ids)
                try c.encode(className, forKey: .className)
                try c.encode(driver, forKey: .driver)
                try c.encode(status, forKey: .status)
                try c.encode(reason, forKey: .reason)
            }
        }
        var id: Int
        var type: String?
        var viable: Bool
        var blocking: [PCIAddress]
        var members: [Member]
        var otherMembers: [String]
        enum CodingKeys: String, CodingKey { case id, type, viable, blocking, members, otherMembers = "other_members" }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(id, forKey: .id)
            try c.encode(type, forKey: .type)
            try c.encode(viable, forKey: .viable)
            try c.encode(blocking, forKey: .blocking)
            try c.encode(members, forKey: .members)
            try c.encode(otherMembers, forKey: .otherMembers)
        }
    }

    public func run() throws {
        let host = hostOptions.host
        try reporting(json: output.json) { () throws(VFIOError) in
            if groups {
                let rows: [GroupRow] = host.groups().map { g in
                    let v = try? host.viability(ofGroup: g.id)
                    let members = g.members.map { a -> GroupRow.Member in
                        let d = try? host.device(a)
                        let m = v?.members.first { $0.address == a }
                        return .init(address: a, ids: d?.ids ?? "?", className: d?.className ?? "?", driver: d?.driver,
                                     status: m?.status ?? .unbound, reason: m?.reason ?? "")
                    }
                    return GroupRow(id: g.id, type: g.type, viable: v?.viable ?? false, blocking: v?.blocking ?? [],
                                    members: members, otherMembers: g.otherMembers)
                }
                if output.json {
                    struct Out: Encodable { var groups: [GroupRow] }
                    CommandOutput.out(JSON.render(Out(groups: rows)))
                    return
                }
                if rows.isEmpty {
                    CommandOutput.out("no IOMMU groups: the kernel has no IOMMU enabled (`vfioctl doctor` says why)")
                    return
                }
                var lines: [[String]] = []
                for g in rows {
                    let head = ["\(g.id)", g.viable ? "viable" : "NOT viable", g.type ?? "-"]
                    for (i, m) in g.members.enumerated() {
                        lines.append((i == 0 ? head : ["", "", ""]) + [m.address.description, m.ids, m.className, m.driver ?? "-", m.reason])
                    }
                    if g.members.isEmpty { lines.append(head + ["", "", "", "", g.otherMembers.joined(separator: " ")]) }
                }
                CommandOutput.out(table(["GROUP", "STATE", "TYPE", "BDF", "IDS", "CLASS", "DRIVER", "WHY"], lines))
                return
            }
            let openers = host.deviceNodeOpeners()
            let open = openers.mapValues { $0.map { Remedy.RunningProcess(pid: $0.pid, command: $0.command).description } }
            let rows = host.devices().map { d in
                let r = host.readiness(of: d, openNodes: open)
                return DeviceRow(device: d, readiness: r, fix: CLIWording.commands(host.readinessRemedies(of: d, r)))
            }
            let mdevs = host.mdevs().map { MdevRow($0, openers: openers) }
            if output.json {
                struct Out: Encodable { var devices: [DeviceRow]; var mdevs: [MdevRow] }
                CommandOutput.out(JSON.render(Out(devices: rows, mdevs: mdevs)))
                return
            }
            defer {
                if !mdevs.isEmpty {
                    CommandOutput.out("")
                    CommandOutput.out(MdevRow.tableText(mdevs))
                }
            }
            if rows.isEmpty {
                CommandOutput.out("no PCI devices under \(host.path("/sys/bus/pci/devices"))")
                return
            }
            CommandOutput.out(table(
                ["BDF", "IDS", "CLASS", "DRIVER", "GROUP", "VFIO"],
                rows.map { r in
                    let d = r.device
                    return [d.address.description, d.ids, d.className, d.driver ?? "-",
                            d.iommuGroup.map(String.init) ?? "-",
                            r.readiness.rawValue + (d.vfioCdev.map { " (\($0))" } ?? "")]
                }))
        }
    }
}
