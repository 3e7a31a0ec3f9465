import ArgumentParser
import VFIOKit

/// `vfioctl bar BDF N read|write OFFSET [VALUE] [--width 1|2|4|8]`.
public struct BarCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "bar",
        abstract: "Read or write a device register in one of its BARs through VFIO.",
        discussion: """
            Maps the BAR when VFIO allows it (VFIO_REGION_INFO_FLAG_MMAP) and does one \
            volatile load or store of exactly --width bytes (default 4); otherwise goes \
            through the device fd (pread/pwrite on the region). OFFSET and VALUE are \
            decimal or 0x hex; OFFSET must be aligned to the width and inside the BAR. \
            Writing device registers can make the device do anything it can do, DMA \
            included (DMA is blocked: the device is not attached to an address space here).

            JSON (--json): {"address", "region": "barN", "operation", "offset", "width", \
            "value" (integer), "hex"}.

            Examples:
              vfioctl bar 0000:00:03.0 0 read 0            # edu: 0x010000ed
              vfioctl bar 00:03.0 0 write 0x4 0x12345678   # edu liveness register
              vfioctl bar 00:03.0 0 read 0x80 --width 8
            """)

    @Argument(help: "The device: DDDD:BB:DD.F or BB:DD.F.")
    var address: String
    @Argument(help: "BAR number, 0-5.")
    var bar: Int
    @Argument(help: "read or write.")
    var operation: RegisterOperation
    @Argument(help: "Byte offset in the BAR.")
    var offset: String
    @Argument(help: "For write: the value.")
    var value: String?
    @Option(name: .long, help: "Access width in bytes: 1, 2, 4 or 8.")
    var width: Int = 4

    @OptionGroup var path: PathOptions
    @OptionGroup var output: OutputOptions
    @OptionGroup var hostOptions: HostOptions

    public init() {}

    func access() throws(VFIOError) -> RegisterAccess {
        guard (0...5).contains(bar) else {
            throw VFIOError.invalid(.step("parse BAR"), "BAR \(bar) does not exist: PCI functions have BARs 0 to 5")
        }
        return try RegisterAccess(operation: operation, offset: offset, value: value, width: width, allowed: [1, 2, 4, 8])
    }

    public func validate() throws {
        try validateAddress(address)
        do { _ = try access() } catch { throw ValidationError(CLIWording.message(error)) }
    }

    public func run() throws {
        try reporting(json: output.json) { () throws(VFIOError) in
            let a = try access()
            let opened = try AttachedDevice.forCommand(address, host: hostOptions.host, mode: path.mode)
            let device = opened.device
            let region = try device.regionInfo(PCIRegion.bar(bar))
            guard region.size > 0 else {
                throw VFIOError.invalid(.step("access BAR \(bar)"), "\(opened.name) has no BAR \(bar) (size 0)",
                                        object: opened.name.description, remedies: opened.address.map { [.showDevice($0)] } ?? [])
            }
            guard a.offset < region.size, UInt64(a.width) <= region.size - a.offset else {
                throw VFIOError.invalid(.step("access BAR \(bar)"), "\(a.width) bytes at 0x\(String(a.offset, radix: 16)) run past the end of "
                                        + "BAR \(bar) (size 0x\(String(region.size, radix: 16)))", object: opened.name.description)
            }
            var v: UInt64 = a.value ?? 0
            let mappable = region.isMappable && (region.sparseAreas.map {
                $0.contains { $0.offset <= a.offset && a.offset + UInt64(a.width) <= $0.offset + $0.size }
            } ?? true)
            if mappable {
                let area = region.sparseAreas?.first { $0.offset <= a.offset && a.offset + UInt64(a.width) <= $0.offset + $0.size }
                let mmio: MMIORegion
                if let area { mmio = try device.map(region: region, area: area) } else { mmio = try device.map(region: region) }
                let o = Int(a.offset - mmio.regionOffset)
                switch (a.operation, a.width) {
                case (.read, 1): v = UInt64(mmio.load8(at: o))
                case (.read, 2): v = UInt64(mmio.load16(at: o))
                case (.read, 4): v = UInt64(mmio.load32(at: o))
                case (.read, _): v = mmio.load64(at: o)
                case (.write, 1): mmio.store8(UInt8(v), at: o)
                case (.write, 2): mmio.store16(UInt16(v), at: o)
                case (.write, 4): mmio.store32(UInt32(v), at: o)
                case (.write, _): mmio.store64(v, at: o)
                }
            } else {
                switch (a.operation, a.width) {
                case (.read, 1): v = UInt64(try device.read(UInt8.self, region: region, at: a.offset))
                case (.read, 2): v = UInt64(try device.read(UInt16.self, region: region, at: a.offset))
                case (.read, 4): v = UInt64(try device.read(UInt32.self, region: region, at: a.offset))
                case (.read, _): v = try device.read(UInt64.self, region: region, at: a.offset)
                case (.write, 1): try device.write(UInt8(v), region: region, at: a.offset)
                case (.write, 2): try device.write(UInt16(v), region: region, at: a.offset)
                case (.write, 4): try device.write(UInt32(v), region: region, at: a.offset)
                case (.write, _): try device.write(v, region: region, at: a.offset)
                }
            }
            try opened.close()
            a.report(v, address: opened.name.description, region: "bar\(bar)",
                     place: "BAR \(bar) + 0x\(String(a.offset, radix: 16))", json: output.json)
        }
    }
}
