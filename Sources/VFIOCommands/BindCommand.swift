import ArgumentParser
import FoundationEssentials
import VFIOKit

/// `vfioctl bind BDF [--group] [--force]`.
public struct BindCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "bind",
        abstract: "Bind a device (or its whole IOMMU group) to vfio-pci.",
        discussion: """
            Uses driver_override and drivers_probe, never new_id (which would make vfio-pci \
            grab every device with the same ids). Steps: check the device is not in use \
            (mounted block devices or 9p shares, swap, dm/md holders, network interfaces \
            that are up, the console, device nodes open in a process) and that no other member of its IOMMU group is on a kernel \
            driver; remember the original driver in /run/vfiokit/bindings/BDF.json; set \
            driver_override; unbind the current driver; probe; verify vfio-pci is bound. \
            If any step fails, the device is put back where it was. driver_override stays \
            set to vfio-pci afterwards so a rescan does not hand the device back; \
            `vfioctl unbind BDF --restore` clears it and brings the original driver back.

            --group binds every endpoint member of the group (bridges stay as they are); \
            if one fails, the members bound by this call are put back as they were, and \
            the error says which could not be. --force takes a device whose driver is in \
            use, or binds one member of a group that is not viable.

            --driver NAME binds another driver the same way, with the same record. Its \
            use: a PCI bridge whose driver does not declare managed DMA (shpchp, for \
            one) blocks its IOMMU group, and a bridge never goes to vfio-pci; \
            `vfioctl bind BRIDGE --driver pci-stub` moves it to pci-stub, which manages \
            DMA, and `vfioctl unbind BRIDGE --restore` gives its driver back.

            JSON (--json): {"bound": [OUTCOME]} where OUTCOME has address, previous_driver, \
            driver, driver_override, vfio_cdev, changed, notes.

            Examples:
              vfioctl bind 0000:00:03.0
              vfioctl bind 01:01.0 --group
              vfioctl bind 0000:00:05.0 --force
              vfioctl bind 0000:00:04.0 --driver pci-stub
              vfioctl bind 0000:02:00.0 --sriov 2 --vf-token 52ac9bff-3a88-4fbd-901a-0d767c3b6c97
              vfioctl bind 0000:02:00.0 --sriov 0

            --sriov N (an SR-IOV physical function) binds the PF to vfio-pci, sets its VF \
            token with --vf-token (the UUID every user of its VFs must present; vfio-pci \
            keeps it while the PF stays bound), then writes N to sriov_numvfs; 0 removes \
            the VFs (refused while one is open). The VFs come up on vfio-pci, each in its \
            own IOMMU group, and open only with the token. vfio-pci needs its enable_sriov \
            parameter for this. If a step fails after the bind, the PF goes back to its \
            driver. JSON: "sriov" (present with --sriov or --vf-token) has \
            total_vfs, num_vfs, vfs (BDFs).
            """)

    @Argument(help: "The device: DDDD:BB:DD.F or BB:DD.F.")
    var address: String

    @Flag(name: .long, help: "Bind every endpoint in the device's IOMMU group.")
    var group = false

    @Flag(name: .long, help: "Take the device even when its driver is in use or its group is not viable.")
    var force = false

    @Option(name: .long, help: ArgumentHelp("The driver to bind (pci-stub for a bridge that blocks its group).", valueName: "name"))
    var driver: String = "vfio-pci"

    @OptionGroup var sriov: SRIOVBindOptions
    @OptionGroup var output: OutputOptions
    @OptionGroup var hostOptions: HostOptions

    public init() {}

    public func validate() throws {
        try validateAddress(address)
        try sriov.validate(group: group, driver: driver)
    }

    public func run() throws {
        let host = hostOptions.host
        try reporting(json: output.json) { () throws(VFIOError) in
            let a = try PCIAddress(parsing: address)
            let outcomes = try host.bind(a, group: group, force: force, driver: driver)
            var sriovState: SRIOVState?
            if sriov.requested {
                do throws(VFIOError) {
                    sriovState = try sriov.apply(to: a, host: host)
                } catch {
                    // Nothing half-done: a PF this call moved goes back to its driver.
                    if outcomes.contains(where: { $0.address == a && $0.changed }) {
                        do throws(VFIOError) { _ = try host.unbind(a, restore: true) } catch let restore {
                            var e = error
                            e.detail = (e.detail.map { $0 + "; " } ?? "") + "and \(a) could not be given back to its driver: "
                                + restore.summary
                            e.remedies.append(.restoreDriver(a))
                            throw e
                        }
                    }
                    throw error
                }
            }
            if output.json {
                struct Out: Encodable {
                    var bound: [BindingOutcome]
                    var sriov: SRIOVState?
                    func encode(to encoder: any Encoder) throws {
                        var c = encoder.container(keyedBy: K.self)
                        try c.encode(bound, forKey: .bound)
                        if sriov != nil { try c.encode(sriov, forKey: .sriov) }
                    }
                    enum K: String, CodingKey { case bound, sriov }
                }
                CommandOutput.out(JSON.render(Out(bound: outcomes, sriov: sriovState)))
                return
            }
            defer {
                if let s = sriovState {
                    SRIOVBindOptions.textLines(a, s, host: host, token: sriov.token).forEach { CommandOutput.out($0) }
                }
            }
            for o in outcomes {
                var line = "\(o.address): "
                line += o.changed ? "\(o.previousDriver ?? "no driver") -> \(o.driver ?? "no driver")" : "already on \(o.driver ?? "no driver")"
                if let c = o.vfioCdev { line += " (/dev/vfio/devices/\(c))" }
                CommandOutput.out(line)
                for n in o.notes { CommandOutput.out("  " + n.worded(CLIWording.wording)) }
            }
        }
    }
}
