import ArgumentParser
import VFIOKit

/// `vfioctl reset BDF [--hot] [--json]`.
public struct ResetCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "reset",
        abstract: "Reset a device: its function reset, or a bus/slot hot reset with --hot.",
        discussion: """
            Without --hot: VFIO_DEVICE_RESET, the reset the kernel has for the function \
            (FLR, PM reset, a slot or bus reset when the device is alone there). A device \
            whose VFIO_DEVICE_FLAGS_RESET is clear has none: vfioctl says so instead of \
            issuing the ioctl.

            --hot: a PCI hot reset (VFIO_DEVICE_PCI_HOT_RESET) of the device's slot or \
            bus, which resets every device there. vfioctl lists them first \
            (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO), then proves ownership of each: every \
            affected device must be bound to vfio-pci and free, and vfioctl opens and \
            binds it into the same iommufd (or, with --container, opens its group). It \
            refuses, naming the device, when one is on another driver or open elsewhere. \
            Nothing is reset then.

            JSON (--json): {"address", "kind": "function"|"hot", "affected": [{"address", \
            "owned"}], "reset": true}.

            Examples:
              vfioctl reset 0000:00:03.0
              vfioctl reset 01:01.0 --hot
            """)

    @Argument(help: "The device: DDDD:BB:DD.F or BB:DD.F.")
    var address: String

    @Flag(name: .long, help: "Hot-reset the device's bus or slot (every device on it).")
    var hot = false

    @OptionGroup var path: PathOptions
    @OptionGroup var output: OutputOptions
    @OptionGroup var hostOptions: HostOptions

    public init() {}

    public func validate() throws { try validateAddress(address) }

    struct Affected: Encodable { var address: String; var owned: Bool }
    struct Out: Encodable { var address: String; var kind: String; var affected: [Affected]; var reset: Bool }

    public func run() throws {
        let host = hostOptions.host
        try reporting(json: output.json) { () throws(VFIOError) in
            let opened = try AttachedDevice.forCommand(address, host: host, mode: path.mode)
            let a = try PCIAddress(parsing: address)  // what forCommand opened
            if !hot {
                let info = try opened.device.info()
                guard info.supportsReset else {
                    throw VFIOError.invalid(.ioctl(.vfioDeviceReset), "\(a) has no function reset: VFIO_DEVICE_FLAGS_RESET is clear "
                                            + "(no FLR, no PM reset, and no slot or bus it has to itself)",
                                            object: a.description, remedies: [.hotReset(a)])
                }
                try opened.device.reset()
                try opened.close()
                if output.json {
                    CommandOutput.out(JSON.render(Out(address: a.description, kind: "function",
                                                      affected: [Affected(address: a.description, owned: true)], reset: true)))
                } else {
                    CommandOutput.out("\(a): function reset done (VFIO_DEVICE_RESET)")
                }
                return
            }
            let info = try opened.device.hotResetInfo()
            let affected = info.devices.map(\.address)
            if !output.json {
                CommandOutput.out("A hot reset of \(a) resets \(affected.count) device\(affected.count == 1 ? "" : "s"): "
                                  + affected.map(\.description).joined(separator: ", "))
            }
            // Own every other affected device: open it in the same address space (the same iommufd, or
            // its group in the same container).
            var others: [AttachedDevice] = []
            defer { for d in others { try? d.close() } }
            for other in affected where other != a {
                do throws(VFIOError) {
                    others.append(try AttachedDevice.open(other, in: opened.space, host: host))
                } catch {
                    throw VFIOError(operation: .ioctl(.vfioDevicePCIHotReset), errno: error.errno, object: a.description,
                                    detail: "refusing: the hot reset would also reset \(other), which is not ours: "
                                        + CLIWording.message(error).replacingOccurrences(of: "\n  hint: ", with: " (")
                                        + (error.remedies.isEmpty ? "" : ")"),
                                    remedies: [.advice("bind \(other) to vfio-pci too and close it wherever it is open; nothing was reset"),
                                               .bindToVFIO(other)])
                }
            }
            if opened.mode == .iommufd {
                let again = try opened.device.hotResetInfo()
                if let stranger = again.devices.first(where: { $0.owned == false }) {
                    throw VFIOError.invalid(.ioctl(.vfioDevicePCIHotReset), "refusing: \(stranger.address) is not owned by this process",
                                            object: a.description, remedies: [.advice("nothing was reset")])
                }
                try opened.device.hotReset()
            } else {
                try opened.device.hotReset(groups: opened.space.addedGroups)
            }
            for d in others { try d.close() }
            others = []
            try opened.close()
            if output.json {
                CommandOutput.out(JSON.render(Out(address: a.description, kind: "hot",
                                                  affected: affected.map { Affected(address: $0.description, owned: true) }, reset: true)))
            } else {
                CommandOutput.out("\(a): hot reset done (VFIO_DEVICE_PCI_HOT_RESET)")
            }
        }
    }
}
