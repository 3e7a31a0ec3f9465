import ArgumentParser
import CVFIO
import VFIOKit

/// `vfioctl irqs BDF [--json]`.
public struct IRQsCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "irqs",
        abstract: "List a device's interrupts per VFIO index: type, vector count, flags.",
        discussion: """
            Asks VFIO_DEVICE_GET_IRQ_INFO for each vfio-pci index: INTx, MSI, MSI-X, ERR \
            (AER error reporting) and REQ (the kernel asking for the device back). A count \
            of 0 means the device does not have that interrupt. Flags: eventfd (can be \
            routed to an eventfd), maskable, automasked (level-triggered: the kernel masks \
            it on delivery and userspace unmasks), noresize (vectors cannot be added \
            without disabling first).

            JSON (--json): {"address", "irqs": [{"index", "name", "count", "flags"}]}.

            Examples:
              vfioctl irqs 0000:00:03.0
              vfioctl irqs 00:03.0 --json
            """)

    @Argument(help: "The device: DDDD:BB:DD.F or BB:DD.F.")
    var address: String

    @OptionGroup var path: PathOptions
    @OptionGroup var output: OutputOptions
    @OptionGroup var hostOptions: HostOptions

    public init() {}

    public func validate() throws { try validateAddress(address) }

    struct IRQ: Encodable {
        var index: UInt32
        var name: String
        var count: UInt32
        var flags: [String]
    }

    static func flagNames(_ i: IRQInfo) -> [String] {
        var f: [String] = []
        if i.supportsEventFD { f.append("eventfd") }
        if i.isMaskable { f.append("maskable") }
        if i.isAutomasked { f.append("automasked") }
        if i.isNoResize { f.append("noresize") }
        return f
    }

    public func run() throws {
        try reporting(json: output.json) { () throws(VFIOError) in
            let opened = try AttachedDevice.forCommand(address, host: hostOptions.host, mode: path.mode)
            let count = try opened.device.info().irqCount
            var irqs: [IRQ] = []
            for index in IRQIndex.allCases where Int(index.rawValue) < count {
                do throws(VFIOError) {
                    let i = try opened.device.irqInfo(index)
                    irqs.append(IRQ(index: index.rawValue, name: index.description, count: i.count, flags: IRQsCommand.flagNames(i)))
                } catch where error.errno == .invalidArgument && (index == .err || index == .req) {
                    // vfio-pci answers EINVAL for ERR on a device without PCIe (no AER): it has none.
                    irqs.append(IRQ(index: index.rawValue, name: index.description, count: 0, flags: []))
                }
            }
            try opened.close()
            if output.json {
                struct Out: Encodable { var address: String; var irqs: [IRQ] }
                CommandOutput.out(JSON.render(Out(address: opened.name.description, irqs: irqs)))
                return
            }
            CommandOutput.out(table(["INDEX", "TYPE", "COUNT", "FLAGS"], irqs.map {
                ["\($0.index)", $0.name, "\($0.count)", $0.flags.isEmpty ? "-" : $0.flags.joined(separator: ",")]
            }))
        }
    }
}
