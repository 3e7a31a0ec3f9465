/// The Identify Controller data structure (CNS 01h; NVMe base specification
/// 2.0, figure 275), the fields a driver and `nvme id-ctrl` care about.
public struct ControllerIdentity: Sendable, Equatable {
    /// VID, SSVID.
    public var vendorID: UInt16
    public var subsystemVendorID: UInt16
    /// SN, MN, FR: ASCII, trailing spaces removed.
    public var serialNumber: String
    public var modelNumber: String
    public var firmwareRevision: String
    /// IEEE OUI (3 bytes, least significant first in the structure).
    public var ieeeOUI: UInt32
    /// CMIC: multi-path and SR-IOV capabilities.
    public var multiPathCapabilities: UInt8
    /// MDTS: the largest transfer is 2^MDTS minimum pages (0: no limit).
    public var maxDataTransferShift: UInt8
    public var controllerID: UInt16
    /// VER (0 before NVMe 1.2).
    public var version: ControllerVersion
    /// RTD3E: microseconds a shutdown may take (0: not reported).
    public var rtd3EntryLatency: UInt32
    /// OACS: optional admin commands.
    public var optionalAdminCommands: UInt16
    /// ACL: Abort Command Limit (0's based).
    public var abortCommandLimit: UInt8
    /// SQES, CQES: required (3:0) and maximum (7:4) entry sizes, as powers of two.
    public var submissionEntrySizes: UInt8
    public var completionEntrySizes: UInt8
    /// MAXCMD: most outstanding commands (0: not reported).
    public var maxCommands: UInt16
    /// NN: the highest namespace identifier.
    public var namespaceCount: UInt32
    /// ONCS: optional NVM commands.
    public var optionalNVMCommands: UInt16
    /// VWC: a volatile write cache is present (bit 0).
    public var volatileWriteCache: UInt8
    /// SGLS: SGL support.
    public var sglSupport: UInt32
    /// SUBNQN.
    public var subsystemNQN: String

    /// Parses the 4096-byte structure.
    public init(_ b: [UInt8]) {
        precondition(b.count >= 4096, "Identify Controller data is 4096 bytes")
        vendorID = le16(b, 0)
        subsystemVendorID = le16(b, 2)
        serialNumber = ascii(b, 4, 20)
        modelNumber = ascii(b, 24, 40)
        firmwareRevision = ascii(b, 64, 8)
        ieeeOUI = UInt32(b[73]) | UInt32(b[74]) << 8 | UInt32(b[75]) << 16
        multiPathCapabilities = b[76]
        maxDataTransferShift = b[77]
        controllerID = le16(b, 78)
        version = ControllerVersion(raw: le32(b, 80))
        rtd3EntryLatency = le32(b, 88)
        optionalAdminCommands = le16(b, 256)
        abortCommandLimit = b[258]
        submissionEntrySizes = b[512]
        completionEntrySizes = b[513]
        maxCommands = le16(b, 514)
        namespaceCount = le32(b, 516)
        optionalNVMCommands = le16(b, 520)
        volatileWriteCache = b[525]
        sglSupport = le32(b, 536)
        subsystemNQN = ascii(b, 768, 256)
    }

    /// The largest transfer in bytes, for a controller whose minimum page is `minPageSize`; nil: no limit.
    public func maxTransferBytes(minPageSize: Int) -> Int? {
        maxDataTransferShift == 0 ? nil : minPageSize << Int(maxDataTransferShift)
    }
}

/// One LBA format of a namespace (figure 280 of the NVM command set spec).
public struct LBAFormat: Sendable, Equatable {
    /// MS: metadata bytes per block.
    public var metadataSize: Int
    /// LBADS: the block size is 2^LBADS bytes.
    public var dataShift: Int
    /// RP: relative performance (0 best, 3 degraded).
    public var relativePerformance: Int
    public var blockSize: Int { 1 << dataShift }
}

/// The Identify Namespace data structure (CNS 00h; NVM command set
/// specification 1.0, figure 97).
public struct NamespaceIdentity: Sendable, Equatable {
    public var id: UInt32
    /// NSZE, NCAP, NUSE, in logical blocks.
    public var size: UInt64
    public var capacity: UInt64
    public var utilization: UInt64
    /// NSFEAT.
    public var features: UInt8
    /// The LBA formats (NLBAF + 1 of them).
    public var formats: [LBAFormat]
    /// FLBAS: the index of the format in use.
    public var formatIndex: Int
    /// NMIC, DPC, DPS.
    public var multiPathCapabilities: UInt8
    public var protectionCapabilities: UInt8
    public var protectionSettings: UInt8
    /// NGUID and EUI64 as hex (all zeros when not reported).
    public var nguid: String
    public var eui64: String

    public init(id: UInt32, _ b: [UInt8]) {
        precondition(b.count >= 4096, "Identify Namespace data is 4096 bytes")
        self.id = id
        size = le64(b, 0)
        capacity = le64(b, 8)
        utilization = le64(b, 16)
        features = b[24]
        let count = Int(b[25]) + 1
        let flbas = b[26]
        formatIndex = Int(flbas & 0xf) | Int((flbas >> 5) & 0x3) << 4
        multiPathCapabilities = b[30]
        protectionCapabilities = b[28]
        protectionSettings = b[29]
        nguid = b[104..<120].map { hex2($0) }.joined()
        eui64 = b[120..<128].map { hex2($0) }.joined()
        formats = (0..<min(count, 64)).map { i in
            let v = le32(b, 128 + 4 * i)
            return LBAFormat(metadataSize: Int(v & 0xffff), dataShift: Int((v >> 16) & 0xff),
                             relativePerformance: Int((v >> 24) & 0x3))
        }
    }

    /// The format in use.
    public var format: LBAFormat {
        formatIndex < formats.count ? formats[formatIndex] : LBAFormat(metadataSize: 0, dataShift: 9, relativePerformance: 0)
    }
    public var blockSize: Int { format.blockSize }
    /// NSZE in bytes.
    public var sizeInBytes: UInt64 { size &* UInt64(blockSize) }
}

/// A namespace as the driver uses it.
public typealias Namespace = NamespaceIdentity

@inline(__always) func le16(_ b: [UInt8], _ o: Int) -> UInt16 { UInt16(b[o]) | UInt16(b[o + 1]) << 8 }
@inline(__always) func le32(_ b: [UInt8], _ o: Int) -> UInt32 { UInt32(le16(b, o)) | UInt32(le16(b, o + 2)) << 16 }
@inline(__always) func le64(_ b: [UInt8], _ o: Int) -> UInt64 { UInt64(le32(b, o)) | UInt64(le32(b, o + 4)) << 32 }

/// ASCII field of `n` bytes at `o`, trailing spaces and NULs removed.
func ascii(_ b: [UInt8], _ o: Int, _ n: Int) -> String {
    var bytes = Array(b[o..<(o + n)])
    while let last = bytes.last, last == 0x20 || last == 0 { bytes.removeLast() }
    return String(decoding: bytes.map { (0x20..<0x7f).contains($0) ? $0 : UInt8(ascii: "?") }, as: UTF8.self)
}

func hex2(_ v: UInt8) -> String {
    let s = String(v, radix: 16)
    return s.count == 1 ? "0" + s : s
}

/// "64 MiB", "1.5 GiB": sizes as `nvme list` prints them (binary units).
public func formatSize(_ n: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    var v = Double(n)
    var i = 0
    while v >= 1024 && i < units.count - 1 {
        v /= 1024
        i += 1
    }
    if i == 0 { return "\(n) B" }
    let r = (v * 10).rounded() / 10
    return r == r.rounded() ? "\(Int(r)) \(units[i])" : "\(r) \(units[i])"
}
