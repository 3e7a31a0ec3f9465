import ArgumentParser
import VFIOKit

/// Read or write: the operation of `config` and `bar`.
enum RegisterOperation: String, ExpressibleByArgument, CaseIterable, Sendable {
    case read, write
}

/// Parses OFFSET and VALUE and checks them against the width (shared by `config` and `bar`).
struct RegisterAccess: Equatable {
    var operation: RegisterOperation
    var offset: UInt64
    var value: UInt64?
    var width: Int

    init(operation: RegisterOperation, offset: String, value: String?, width: Int, allowed: [Int]) throws(VFIOError) {
        guard let o = ArgumentValues.number(offset) else {
            throw VFIOError.invalid(.step("parse OFFSET"), "'\(offset)' is not a number", remedies: [.advice("write it in decimal or as 0x hex")])
        }
        var v: UInt64?
        switch (operation, value) {
        case (.read, nil): break
        case (.read, let extra?):
            throw VFIOError.invalid(.step("parse VALUE"), "read takes no value (got '\(extra)')")
        case (.write, nil):
            throw VFIOError.invalid(.step("parse VALUE"), "write needs a VALUE", remedies: [.advice("e.g. `write 0x4 0x0006 --width 2`")])
        case (.write, let text?):
            guard let n = ArgumentValues.number(text) else {
                throw VFIOError.invalid(.step("parse VALUE"), "'\(text)' is not a number", remedies: [.advice("write it in decimal or as 0x hex")])
            }
            v = n
        }
        try AccessWidth.check(width: width, allowed: allowed, offset: o, value: v)
        self.operation = operation
        self.offset = o
        self.value = v
        self.width = width
    }

    /// Prints what the access did: the JSON result, the value read, or where
    /// `value` was written (`place`, e.g. "BAR 0 + 0x4").
    func report(_ value: UInt64, address: String, region: String, place: String, json: Bool) {
        let h = AccessWidth.hex(value, width: width)
        if json {
            CommandOutput.out(JSON.render(Result(address: address, region: region, operation: operation.rawValue,
                                                 offset: offset, width: width, value: value, hex: h)))
        } else if operation == .read {
            CommandOutput.out(h)
        } else {
            CommandOutput.out("wrote \(h) to \(place) of \(address)")
        }
    }

    struct Result: Encodable {
        var address: String
        var region: String
        var operation: String
        var offset: UInt64
        var width: Int
        var value: UInt64
        var hex: String
    }
}

/// `vfioctl config BDF read|write OFFSET [VALUE] [--width 1|2|4]`.
public struct ConfigCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Read or write a device's PCI configuration space through VFIO.",
        discussion: """
            Goes through the VFIO config region (vfio-pci virtualizes parts of config \
            space: the command register's bus-master bit, BARs, MSI/MSI-X capabilities; \
            the kernel filters writes). Values are little-endian, as PCI defines them. \
            OFFSET and VALUE are decimal or 0x hex; OFFSET must be aligned to --width \
            (bytes, default 4). The device must be bound to vfio-pci and not be open \
            elsewhere.

            JSON (--json): {"address", "region": "config", "operation", "offset", "width", \
            "value" (integer), "hex"}. For write, value is what was written.

            Examples:
              vfioctl config 0000:00:03.0 read 0 --width 4      # 0x11e81234: device and vendor id
              vfioctl config 00:03.0 read 0x4 --width 2         # command register
              vfioctl config 00:03.0 write 0x4 0x0006 --width 2 # memory space + bus master
            """)

    @Argument(help: "The device: DDDD:BB:DD.F or BB:DD.F.")
    var address: String
    @Argument(help: "read or write.")
    var operation: RegisterOperation
    @Argument(help: "Byte offset in config space.")
    var offset: String
    @Argument(help: "For write: the value.")
    var value: String?
    @Option(name: .long, help: "Access width in bytes: 1, 2 or 4.")
    var width: Int = 4

    @OptionGroup var path: PathOptions
    @OptionGroup var output: OutputOptions
    @OptionGroup var hostOptions: HostOptions

    public init() {}

    func access() throws(VFIOError) -> RegisterAccess {
        try RegisterAccess(operation: operation, offset: offset, value: value, width: width, allowed: [1, 2, 4])
    }

    public func validate() throws {
        try validateAddress(address)
        do { _ = try access() } catch { throw ValidationError(CLIWording.message(error)) }
    }

    public func run() throws {
        try reporting(json: output.json) { () throws(VFIOError) in
            let a = try access()
            let opened = try AttachedDevice.forCommand(address, host: hostOptions.host, mode: path.mode)
            let config = try opened.device.configSpace()
            var v: UInt64
            switch (a.operation, a.width) {
            case (.read, 1): v = UInt64(try config.read8(a.offset))
            case (.read, 2): v = UInt64(try config.read16(a.offset))
            case (.read, _): v = UInt64(try config.read32(a.offset))
            case (.write, 1): v = a.value!; try config.write8(UInt8(v), at: a.offset)
            case (.write, 2): v = a.value!; try config.write16(UInt16(v), at: a.offset)
            case (.write, _): v = a.value!; try config.write32(UInt32(v), at: a.offset)
            }
            try opened.close()
            a.report(v, address: opened.name.description, region: "config",
                     place: "config 0x\(String(a.offset, radix: 16))", json: output.json)
        }
    }
}
