import VFIOKit

/// Parsers for the values `vfioctl attach`, `config` and `bar` take. Pure
/// functions, tested on the host.
enum ArgumentValues {
    /// A number: decimal, or hex with `0x`. `_` separators are allowed.
    static func number(_ text: String) -> UInt64? {
        let t = text.replacingOccurrences(of: "_", with: "").lowercased()
        if t.hasPrefix("0x") { return t.count > 2 ? UInt64(t.dropFirst(2), radix: 16) : nil }
        return UInt64(t)
    }

    /// A size: a number with an optional binary suffix K, M, G (or KiB, MiB,
    /// GiB; case-insensitive): `4096`, `0x1000`, `64K`, `2M`, `1G`.
    static func size(_ text: String) -> UInt64? {
        var t = Substring(text.lowercased())
        for suffix in ["ib", "b"] where t.hasSuffix(suffix) && t.count > suffix.count {
            let rest = t.dropLast(suffix.count)
            if let last = rest.last, "kmg".contains(last) { t = rest; break }
        }
        let shift: UInt64
        switch t.last {
        case "k"?: shift = 10
        case "m"?: shift = 20
        case "g"?: shift = 30
        default: shift = 0
        }
        if shift != 0 { t = t.dropLast() }
        guard !t.isEmpty, let n = number(String(t)) else { return nil }
        let (v, overflow) = n.multipliedReportingOverflow(by: 1 << shift)
        return overflow ? nil : v
    }
}

/// One `--map SIZE[@IOVA][,BACKING]` request.
struct MapRequest: Equatable, Sendable, CustomStringConvertible {
    enum Backing: String, Equatable, Sendable, CaseIterable {
        case anonymous, memfd, huge
        var dmaBacking: DMABuffer.Backing {
            switch self {
            case .anonymous: .anonymous
            case .memfd: .memfd
            case .huge: .hugePages
            }
        }
    }
    var size: UInt64
    /// nil: the kernel chooses (iommufd) or VFIOKit's allocator does (container).
    var iova: IOVA?
    var backing: Backing

    static let page: UInt64 = 4096
    static let form = "SIZE[@IOVA][,anonymous|memfd|huge], e.g. 2M, 64K@0x100000, 2M@0x200000,memfd"

    init(size: UInt64, iova: IOVA? = nil, backing: Backing = .anonymous) {
        self.size = size
        self.iova = iova
        self.backing = backing
    }

    init(parsing text: String) throws(VFIOError) {
        func bad(_ why: String) -> VFIOError {
            .invalid(.step("parse --map"), "'\(text)': \(why)", remedies: [.advice("write it as " + MapRequest.form)])
        }
        var body = Substring(text)
        var backing = Backing.anonymous
        if let comma = body.firstIndex(of: ",") {
            let name = body[body.index(after: comma)...]
            guard let b = Backing(rawValue: String(name).lowercased()) else { throw bad("unknown backing '\(name)'") }
            backing = b
            body = body[..<comma]
        }
        var iova: IOVA?
        if let at = body.firstIndex(of: "@") {
            let t = String(body[body.index(after: at)...])
            guard let v = ArgumentValues.size(t) else { throw bad("IOVA '\(t)' is not a number") }
            iova = IOVA(v)
            body = body[..<at]
        }
        guard let size = ArgumentValues.size(String(body)) else { throw bad("size '\(body)' is not a size") }
        guard size > 0 else { throw bad("the size must not be 0") }
        let unit = backing == .huge ? UInt64(DMABuffer.hugePageSize) : MapRequest.page
        guard size % unit == 0 else {
            throw bad("the size must be a multiple of \(unit == MapRequest.page ? "4 KiB" : "2 MiB") (the page size of the backing)")
        }
        if let iova {
            guard iova.isAligned(to: MapRequest.page) else { throw bad("the IOVA must be a multiple of 4 KiB") }
            guard iova.adding(size - 1) != nil else { throw bad("the range runs past the end of the 64-bit IOVA space") }
        }
        self.init(size: size, iova: iova, backing: backing)
    }

    var description: String {
        formatBytes(size) + (iova.map { "@\($0)" } ?? "") + (backing == .anonymous ? "" : "," + backing.rawValue)
    }
}

/// One `--map-bar BDF/BAR[+OFFSET],SIZE[@IOVA]` request: a range of another
/// device's BAR, exported as a dma-buf and mapped into the IOAS (peer-to-peer DMA).
struct BARMapRequest: Equatable, Sendable, CustomStringConvertible {
    var device: PCIAddress
    var bar: Int
    var offset: UInt64
    var size: UInt64
    /// nil: the kernel chooses.
    var iova: IOVA?

    static let form = "BDF/BAR[+OFFSET],SIZE[@IOVA], e.g. 0000:01:01.0/0,4K@0x200000 or 01:01.0/0+0x1000,4K"

    init(device: PCIAddress, bar: Int, offset: UInt64 = 0, size: UInt64, iova: IOVA? = nil) {
        self.device = device
        self.bar = bar
        self.offset = offset
        self.size = size
        self.iova = iova
    }

    init(parsing text: String) throws(VFIOError) {
        func bad(_ why: String) -> VFIOError {
            .invalid(.step("parse --map-bar"), "'\(text)': \(why)", remedies: [.advice("write it as " + BARMapRequest.form)])
        }
        guard let slash = text.firstIndex(of: "/") else { throw bad("no /BAR after the device") }
        guard let comma = text[slash...].firstIndex(of: ",") else { throw bad("no ,SIZE after the BAR") }
        let device: PCIAddress
        do throws(VFIOError) { device = try PCIAddress(parsing: String(text[..<slash])) } catch { throw bad("'\(text[..<slash])' is not a PCI address") }
        var barText = text[text.index(after: slash)..<comma]
        var offset: UInt64 = 0
        if let plus = barText.firstIndex(of: "+") {
            let t = String(barText[barText.index(after: plus)...])
            guard let v = ArgumentValues.size(t) else { throw bad("offset '\(t)' is not a number") }
            offset = v
            barText = barText[..<plus]
        }
        guard let bar = Int(barText), (0...5).contains(bar) else { throw bad("BAR '\(barText)' is not 0 to 5") }
        var rest = text[text.index(after: comma)...]
        var iova: IOVA?
        if let at = rest.firstIndex(of: "@") {
            let t = String(rest[rest.index(after: at)...])
            guard let v = ArgumentValues.size(t) else { throw bad("IOVA '\(t)' is not a number") }
            iova = IOVA(v)
            rest = rest[..<at]
        }
        guard let size = ArgumentValues.size(String(rest)) else { throw bad("size '\(rest)' is not a size") }
        guard size > 0, size % MapRequest.page == 0, offset % MapRequest.page == 0 else {
            throw bad("the size (non-zero) and the offset must be multiples of 4 KiB (a dma-buf is whole pages)")
        }
        if let iova {
            guard iova.isAligned(to: MapRequest.page) else { throw bad("the IOVA must be a multiple of 4 KiB") }
            guard iova.adding(size - 1) != nil else { throw bad("the range runs past the end of the 64-bit IOVA space") }
        }
        self.init(device: device, bar: bar, offset: offset, size: size, iova: iova)
    }

    /// The request as `--map-bar` takes it (a command line can use it as it is).
    var description: String {
        let sizeText = size % (1 << 20) == 0 ? "\(size >> 20)M" : size % 1024 == 0 ? "\(size >> 10)K" : "\(size)"
        return "\(device)/\(bar)" + (offset == 0 ? "" : "+0x\(String(offset, radix: 16))") + "," + sizeText
            + (iova.map { "@0x\(String($0.rawValue, radix: 16))" } ?? "")
    }
}

/// `--ioas new|ID`.
enum IOASChoice: Equatable, Sendable {
    case new
    case existing(UInt32)

    init(parsing text: String) throws(VFIOError) {
        if text.lowercased() == "new" { self = .new; return }
        guard let n = ArgumentValues.number(text), n > 0, n <= UInt64(UInt32.max) else {
            throw VFIOError.invalid(.step("parse --ioas"), "'\(text)' is neither `new` nor an IOAS id (a positive 32-bit number)",
                                    remedies: [.advice("--ioas new allocates one; --ioas ID uses one that exists in a shared iommufd (--iommufd FD)")])
        }
        self = .existing(UInt32(n))
    }
}

/// `--hwpt paging|FLAG[,FLAG]`.
struct HWPTRequest: Equatable, Sendable {
    var flags: HWPT.Flags

    static let names: [(String, HWPT.Flags)] = [("nest-parent", .nestParent), ("dirty-tracking", .dirtyTracking)]

    init(parsing text: String) throws(VFIOError) {
        var flags: HWPT.Flags = []
        for part in text.lowercased().split(separator: ",", omittingEmptySubsequences: false) {
            if part == "paging" || part == "none" { continue }
            guard let f = HWPTRequest.names.first(where: { $0.0 == part })?.1 else {
                throw VFIOError.invalid(.step("parse --hwpt"), "unknown HWPT flag '\(part)'",
                                        remedies: [.advice("use `paging` (no flags) or a comma list of: nest-parent, dirty-tracking")])
            }
            flags.insert(f)
        }
        self.flags = flags
    }

    static func flagNames(_ flags: HWPT.Flags) -> [String] {
        names.filter { flags.contains($0.1) }.map(\.0)
    }
}

/// `--width` of `config` and `bar`.
enum AccessWidth {
    /// Checks the width, the offset's alignment and that a value fits.
    static func check(width: Int, allowed: [Int], offset: UInt64, value: UInt64?) throws(VFIOError) {
        guard allowed.contains(width) else {
            throw VFIOError.invalid(.step("parse --width"), "width \(width) is not one of " + allowed.map(String.init).joined(separator: ", "),
                                    remedies: [.advice("the width is in bytes")])
        }
        guard offset % UInt64(width) == 0 else {
            throw VFIOError.invalid(.step("parse OFFSET"), "offset 0x\(String(offset, radix: 16)) is not aligned to the width (\(width) bytes)",
                                    remedies: [.advice("use an offset that is a multiple of \(width), or a smaller --width")])
        }
        if let value, width < 8, value >> (UInt64(width) * 8) != 0 {
            throw VFIOError.invalid(.step("parse VALUE"), "0x\(String(value, radix: 16)) does not fit in \(width) byte\(width == 1 ? "" : "s")")
        }
    }

    /// `0x` and the value in hex, zero-padded to the width.
    static func hex(_ value: UInt64, width: Int) -> String {
        let s = String(value, radix: 16)
        return "0x" + String(repeating: "0", count: max(0, width * 2 - s.count)) + s
    }
}

/// `0x` + hex.
func hexString(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
