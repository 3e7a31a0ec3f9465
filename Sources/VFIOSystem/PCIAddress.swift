/// A PCI function address: domain, bus, device, function (`DDDD:BB:DD.F`).
///
/// Parses the full form `0000:00:03.0` and the short form `00:03.0` (domain 0).
/// Prints the full form, the way sysfs names devices.
public struct PCIAddress: Hashable, Comparable, Sendable, CustomStringConvertible, Codable {
    /// PCI segment (domain). Usually 0; VMD and some hosts use larger numbers.
    public var domain: UInt32
    /// Bus number, 0...255.
    public var bus: UInt8
    /// Device (slot) number, 0...31.
    public var device: UInt8
    /// Function number, 0...7.
    public var function: UInt8

    /// An address from its parts; traps unless `device < 32` and `function < 8`.
    public init(domain: UInt32 = 0, bus: UInt8, device: UInt8, function: UInt8) {
        precondition(device < 32 && function < 8, "PCI device must be < 32 and function < 8")
        self.domain = domain
        self.bus = bus
        self.device = device
        self.function = function
    }

    /// The form a user is told to type when a parse fails.
    public static let expectedForm = "DDDD:BB:DD.F or BB:DD.F in hex, for example 0000:00:03.0 or 00:03.0 (`lspci -D` prints them)"

    /// Parses `DDDD:BB:DD.F` or `BB:DD.F` (hex digits, case-insensitive).
    ///
    /// Throws `VFIOError.invalid` showing the expected form for anything else.
    public init(parsing text: String) throws(VFIOError) {
        func bad(_ why: String) -> VFIOError {
            .invalid(.step(.parsePCIAddress), "\"\(text)\" is not a PCI address: \(why)",
                     object: text, remedies: [.advice("write it as \(PCIAddress.expectedForm)")])
        }
        let s = text.trimmingWhitespace()
        let colon = s.split(separator: ":", omittingEmptySubsequences: false)
        guard colon.count == 2 || colon.count == 3 else { throw bad("expected one or two ':'") }
        let dotParts = colon.last!.split(separator: ".", omittingEmptySubsequences: false)
        guard dotParts.count == 2 else { throw bad("expected '.' before the function number") }
        func hex(_ part: Substring, _ name: String, maxDigits: Int, max: UInt32) throws(VFIOError) -> UInt32 {
            guard !part.isEmpty, part.count <= maxDigits, let v = UInt32(part, radix: 16) else {
                throw bad("\(name) \"\(part)\" must be 1 to \(maxDigits) hex digits")
            }
            guard v <= max else { throw bad("\(name) \(part) is out of range (at most \(String(max, radix: 16)))") }
            return v
        }
        let domain: UInt32 = colon.count == 3 ? try hex(colon[0], "domain", maxDigits: 8, max: .max) : 0
        let bus = try hex(colon[colon.count - 2], "bus", maxDigits: 2, max: 0xff)
        let dev = try hex(dotParts[0], "device", maxDigits: 2, max: 0x1f)
        let fn = try hex(dotParts[1], "function", maxDigits: 1, max: 7)
        self.init(domain: domain, bus: UInt8(bus), device: UInt8(dev), function: UInt8(fn))
    }

    /// `DDDD:BB:DD.F`, lower-case hex, as sysfs spells it.
    public var description: String {
        hex(domain, 4) + ":" + hex(UInt32(bus), 2) + ":" + hex(UInt32(device), 2) + "." + String(function)
    }

    public static func < (a: PCIAddress, b: PCIAddress) -> Bool {
        (a.domain, a.bus, a.device, a.function) < (b.domain, b.bus, b.device, b.function)
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        let s = try c.decode(String.self)
        do { try self.init(parsing: s) } catch {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: error.description)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

@inline(__always)
package func hex(_ v: UInt32, _ width: Int) -> String {
    let s = String(v, radix: 16)
    return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
}

extension StringProtocol {
    /// The string without leading and trailing spaces, tabs, newlines and NULs
    /// (some sysfs attributes, virtio-9p's `mount_tag` among them, end in a NUL).
    package func trimmingWhitespace() -> String {
        func blank(_ c: Character) -> Bool { c == " " || c == "\n" || c == "\t" || c == "\r" || c == "\0" }
        var sub = Substring(self)
        while let f = sub.first, blank(f) { sub.removeFirst() }
        while let l = sub.last, blank(l) { sub.removeLast() }
        return String(sub)
    }
}
