import ArgumentParser
import VFIOKit

/// `vfioctl unbind BDF [--restore] [--force]`.
public struct UnbindCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "unbind",
        abstract: "Unbind a device from its driver, or give it back to its original driver.",
        discussion: """
            Without --restore: detaches the current driver and clears the driver_override \
            that bind set; the device is left without a driver (bind's record of the \
            original driver is kept). With --restore: puts the original driver_override \
            back, reprobes, and verifies that the driver the device had before \
            `vfioctl bind` is bound again (for example nvme, after which its block \
            devices come back); the record is then removed.

            Refuses while a process has the device's VFIO node open (vfio-pci's remove \
            would wait for it), or while a kernel driver's device is in use, unless --force.

            JSON (--json): OUTCOME with address, previous_driver, driver, driver_override, \
            vfio_cdev, changed, notes.

            Examples:
              vfioctl unbind 0000:00:03.0
              vfioctl unbind 0000:00:05.0 --restore
            """)

    @Argument(help: "The device: DDDD:BB:DD.F or BB:DD.F.")
    var address: String

    @Flag(name: .long, help: "Give the device back to the driver it had before `vfioctl bind`.")
    var restore = false

    @Flag(name: .long, help: "Unbind even when the device is open or in use.")
    var force = false

    @OptionGroup var output: OutputOptions
    @OptionGroup var hostOptions: HostOptions

    public init() {}

    public func validate() throws { try validateAddress(address) }

    public func run() throws {
        let host = hostOptions.host
        try reporting(json: output.json) { () throws(VFIOError) in
            let a = try PCIAddress(parsing: address)
            let o = try host.unbind(a, restore: restore, force: force)
            if output.json {
                CommandOutput.out(JSON.render(o))
                return
            }
            var line = "\(o.address): "
            line += o.changed || restore ? "\(o.previousDriver ?? "no driver") -> \(o.driver ?? "no driver")" : "had no driver"
            CommandOutput.out(line)
            for n in o.notes { CommandOutput.out("  " + n.worded(CLIWording.wording)) }
        }
    }
}
