import ArgumentParser
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
            if one fails, the members bound by this call are put back. --force takes a \
            device whose driver is in use, or binds one member of a group that is not \
            viable.

            JSON (--json): {"bound": [OUTCOME]} where OUTCOME has address, previous_driver, \
            driver, driver_override, vfio_cdev, changed, notes.

            Examples:
              vfioctl bind 0000:00:03.0
              vfioctl bind 01:01.0 --group
              vfioctl bind 0000:00:05.0 --force
            """)

    @Argument(help: "The device: DDDD:BB:DD.F or BB:DD.F.")
    var address: String

    @Flag(name: .long, help: "Bind every endpoint in the device's IOMMU group.")
    var group = false

    @Flag(name: .long, help: "Take the device even when its driver is in use or its group is not viable.")
    var force = false

    @OptionGroup var output: OutputOptions
    @OptionGroup var hostOptions: HostOptions

    public init() {}

    public func validate() throws { try validateAddress(address) }

    public func run() throws {
        let host = hostOptions.host
        try reporting(json: output.json) { () throws(VFIOError) in
            let a = try PCIAddress(parsing: address)
            let outcomes = try host.bind(a, group: group, force: force)
            if output.json {
                struct Out: Encodable { var bound: [BindingOutcome] }
                CommandOutput.out(JSON.render(Out(bound: outcomes)))
                return
            }
            for o in outcomes {
                var line = "\(o.address): "
                line += o.changed ? "\(o.previousDriver ?? "no driver") -> \(o.driver ?? "no driver")" : "already on \(o.driver ?? "no driver")"
                if let c = o.vfioCdev { line += " (/dev/vfio/devices/\(c))" }
                CommandOutput.out(line)
                for n in o.notes { CommandOutput.out("  " + n) }
            }
        }
    }
}
