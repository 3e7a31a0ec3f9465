import ArgumentParser
import FoundationEssentials
import VFIOKit

/// `vfioctl show BDF [--json]`.
public struct ShowCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Show one device: ids, driver, IOMMU group and its members, users, and VFIO details.",
        discussion: """
            Shows what sysfs says about the device, its IOMMU group member by member \
            (which members are fine and which block, and why), who uses it through its \
            kernel driver, what `vfioctl bind` remembered about it, and — when it is \
            bound to vfio-pci — what VFIO reports: regions (size, flags, mmap), IRQs \
            (types and counts), reset support and capabilities.

            JSON (--json): {"device": DEVICE, "readiness", "fix": [COMMAND], "group": \
            VIABILITY or null, "uses": [USE], "holders": [HOLDER], "binding_record": RECORD \
            or null, "vfio": VFIO or null, "vfio_error": string or null}. fix: the commands \
            that make the device ready, in order, as they are to be run (see `vfioctl list`). DEVICE as in `vfioctl list`; VIABILITY has \
            group, viable, members (address, driver, status, reason), blocking, advice; \
            USE has kind, object, detail, fix; RECORD has address, original_driver, \
            original_driver_override, bound_to. VFIO (present when the device is on \
            vfio-pci and VFIO answered; otherwise vfio_error says why) has device_flags, \
            supports_reset, reset_methods, regions (each index, name, size, offset, flags, \
            mmap), irqs (each index, name, count, flags), capabilities, cache_coherency \
            ({"enforced": true/false/null, "query", "meaning"}: whether the IOMMU blocks \
            no-snoop DMA, so a VM would or would not need wbinvd; reported, never changed). \
            To read them vfioctl opens the cdev, binds it to a fresh iommufd and attaches \
            it to an empty IOAS (nothing mapped) for the coherency check; this needs the \
            device free (not open elsewhere) and interrupt isolation like any iommufd bind. \
            "holders": [HOLDER] lists every process that has a VFIO node of the device's \
            IOMMU group open (pid, command, node, member): the group's owner.

            An mdev's UUID shows the mdev (see `vfioctl mdev --help`): {"mdev": MDEV as in \
            `vfioctl list`, "vfio": {regions, irqs, migration} or null, "vfio_error"}.

            Examples:
              vfioctl show 0000:00:03.0
              vfioctl show 00:03.0 --json
              vfioctl show 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001
            """)

    @Argument(help: "The device: DDDD:BB:DD.F or BB:DD.F, or an mdev's UUID.")
    var address: String

    @OptionGroup var output: OutputOptions
    @OptionGroup var hostOptions: HostOptions

    public init() {}

    public func validate() throws { if UUID(uuidString: address) == nil { try validateAddress(address) } }

    struct Report: Encodable {
        var device: PCIDevice
        var readiness: VFIOReadiness
        var group: GroupViability?
        var uses: [DeviceUse]
        var bindingRecord: BindingRecord?
        var holders: [VFIOHolder] = []
        var fix: [String] = []
        var vfio: VFIODetails?
        var vfioError: String?
        enum CodingKeys: String, CodingKey {
            case device, readiness, group, uses, vfio, holders, fix
            case bindingRecord = "binding_record", vfioError = "vfio_error"
        }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(device, forKey: .device)
            try c.encode(readiness, forKey: .readiness)
            try c.encode(group, forKey: .group)
            try c.encode(uses, forKey: .uses)
            try c.encode(bindingRecord, forKey: .bindingRecord)
            try c.encode(holders, forKey: .holders)
            try c.encode(fix, forKey: .fix)
            try c.encode(vfio, forKey: .vfio)
            try c.encode(vfioError, forKey: .vfioError)
        }
    }

    public func run() throws {
        let host = hostOptions.host
        try reporting(json: output.json) { () throws(VFIOError) in
            if let uuid = UUID(uuidString: address) { return try MdevShow.run(uuid, host: host, json: output.json) }
            let d = try host.device(try PCIAddress(parsing: address))
            // One scan of /proc for everything below.
            let openers = host.deviceNodeOpeners()
            let open = openers.mapValues { $0.map { "pid \($0.pid) (\($0.command))" } }
            let readiness = host.readiness(of: d, openNodes: open)
            var report = Report(device: d, readiness: readiness,
                                group: d.iommuGroup.flatMap { try? host.viability(ofGroup: $0) },
                                uses: d.isBoundToVFIO
                                    ? host.vfioOpeners(of: d, openNodes: open).map {
                                        DeviceUse(kind: .openByProcess, object: d.vfioCdevPath ?? d.address.description,
                                                  detail: "its VFIO node is open in \($0)") }
                                    : host.uses(of: d.address, openNodes: open),
                                bindingRecord: host.bindingRecord(d.address))
            report.holders = d.iommuGroup.map { host.groupHolders(ofGroup: $0, openers: openers) } ?? []
            report.fix = CLIWording.commands(host.readinessRemedies(of: d, readiness))
            if d.isBoundToVFIO {
                do throws(VFIOError) {
                    report.vfio = try VFIODetails.read(device: d, host: host)
                } catch {
                    report.vfioError = CLIWording.message(error)
                }
            }
            if output.json {
                CommandOutput.out(JSON.render(report))
                return
            }
            printText(report)
        }
    }

    func printText(_ r: Report) {
        let d = r.device
        var rows: [[String]] = [
            ["Device", d.address.description],
            ["IDs", d.ids + (d.subsystemVendorID.map { " (subsystem \(hex4($0)):\(hex4(d.subsystemDeviceID ?? 0)))" } ?? "")],
            ["Class", "\(d.className) (0x\(hex6(d.classCode)))" + (d.isBridge ? ", bridge" : "")],
            ["Driver", d.driver ?? "none"],
            ["driver_override", d.driverOverride ?? "not set"],
            ["IOMMU group", d.iommuGroup.map(String.init) ?? "none"],
            ["NUMA node", d.numaNode.map(String.init) ?? "unknown"],
            ["VFIO cdev", d.vfioCdevPath ?? "none"],
            ["VFIO readiness", r.readiness.rawValue],
        ]
        if let rec = r.bindingRecord {
            rows.append(["Original driver", (rec.originalDriver ?? "none") + " (restore with `vfioctl unbind \(d.address) --restore`)"])
        }
        CommandOutput.out(table(["", ""], rows).split(separator: "\n").dropFirst().joined(separator: "\n"))
        if let g = r.group {
            CommandOutput.out("")
            CommandOutput.out(g.summary)
            CommandOutput.out(table(["  MEMBER", "DRIVER", "STATUS", "WHY"], g.members.map {
                ["  " + $0.address.description + ($0.address == d.address ? " *" : ""), $0.driver ?? "-", $0.status.rawValue, $0.reason]
            }))
            if !g.viable { CommandOutput.out("  what to do: " + (CLIWording.text(g.remedies) ?? g.advice)) }
        }
        if !r.uses.isEmpty {
            CommandOutput.out("")
            CommandOutput.out("In use:")
            for u in r.uses { CommandOutput.out("  " + u.detail) }
        }
        if !r.holders.isEmpty {
            CommandOutput.out("")
            CommandOutput.out("IOMMU group \(d.iommuGroup.map(String.init) ?? "?") is held (one owner per group):")
            for h in r.holders { CommandOutput.out("  " + h.description) }
        }
        if !r.fix.isEmpty {
            CommandOutput.out("")
            CommandOutput.out("to make it ready: " + r.fix.map { "`\($0)`" }.joined(separator: ", then "))
        }
        if let v = r.vfio {
            CommandOutput.out("")
            for line in v.textLines() { CommandOutput.out(line) }
        } else if let e = r.vfioError {
            CommandOutput.out("")
            CommandOutput.out("VFIO details unavailable: " + e)
        } else if !d.isBoundToVFIO {
            CommandOutput.out("")
            CommandOutput.out("VFIO details: bind it to vfio-pci first (`vfioctl bind \(d.address)`)")
        }
    }
}

func hex4(_ v: UInt16) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: max(0, 4 - s.count)) + s
}

func hex6(_ v: UInt32) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: max(0, 6 - s.count)) + s
}
