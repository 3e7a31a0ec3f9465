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
            """)

    @Argument(help: "The device: DDDD:BB:DD.F or BB:DD.F.")
    var address: String

    @Flag(name: .long, help: "Bind every endpoint in the device's IOMMU group.")
    var group = false

    @Flag(name: .long, help: "Take the device even when its driver is in use or its group is not viable.")
    var force = false

    @Option(name: .long, help: ArgumentHelp("The driver to bind (pci-stub for a bridge that blocks its group).", valueName: "name"))
    var driver: String = "vfio-pci"

    @OptionGroup var output: OutputOptions
    @OptionGroup var hostOptions: HostOptions

    public init() {}

    public func validate() throws { try validateAddress(address) }

    public func run() throws {
        let host = hostOptions.host
        try reporting(json: output.json) { () throws(VFIOError) in
            let a = try PCIAddress(parsing: address)
            let outcomes = try host.bind(a, group: group, force: force, driver: driver)
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
                for n in o.notes { CommandOutput.out("  " + n.worded(CLIWording.wording)) }
            }
        }
    }
}
