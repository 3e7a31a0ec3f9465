/// Controller registers in BAR0 (NVMe base specification 2.0, section 3.1.4).
enum Register {
    static let cap = 0x00  // Controller Capabilities (64)
    static let vs = 0x08  // Version
    static let cc = 0x14  // Controller Configuration
    static let csts = 0x1c  // Controller Status
    static let aqa = 0x24  // Admin Queue Attributes
    static let asq = 0x28  // Admin Submission Queue Base Address (64)
    static let acq = 0x30  // Admin Completion Queue Base Address (64)
    /// Doorbells start here: SQ y tail at 0x1000 + (2y) * stride, CQ y head at 0x1000 + (2y + 1) * stride.
    static let doorbells = 0x1000
}

/// CAP, Controller Capabilities.
public struct ControllerCapabilities: Sendable, Equatable {
    public let raw: UInt64
    public init(raw: UInt64) { self.raw = raw }

    /// MQES + 1: the most entries an I/O queue may have.
    public var maxQueueEntries: Int { Int(raw & 0xffff) + 1 }
    /// CQR: queues must be physically contiguous (ours always are).
    public var contiguousQueuesRequired: Bool { raw >> 16 & 1 == 1 }
    /// TO: the worst-case time for CSTS.RDY to follow CC.EN (500 ms units).
    public var readyTimeout: Duration { .milliseconds(500 * Int((raw >> 24) & 0xff)) }
    /// DSTRD: bytes between consecutive doorbells, 2^(2 + DSTRD).
    public var doorbellStride: Int { 4 << Int((raw >> 32) & 0xf) }
    /// NSSRS: NVM subsystem reset supported.
    public var subsystemResetSupported: Bool { raw >> 36 & 1 == 1 }
    /// CSS bit 0: the NVM command set.
    public var supportsNVMCommandSet: Bool { raw >> 37 & 1 == 1 }
    /// MPSMIN, MPSMAX: memory page sizes the controller accepts.
    public var minPageSize: Int { 4096 << Int((raw >> 48) & 0xf) }
    public var maxPageSize: Int { 4096 << Int((raw >> 52) & 0xf) }
}

/// VS, the specification version the controller implements.
public struct ControllerVersion: Sendable, Equatable, Comparable, CustomStringConvertible {
    public let raw: UInt32
    public init(raw: UInt32) { self.raw = raw }
    public var major: Int { Int(raw >> 16) }
    public var minor: Int { Int((raw >> 8) & 0xff) }
    public var tertiary: Int { Int(raw & 0xff) }
    public var description: String { "\(major).\(minor).\(tertiary)" }
    public static func < (a: Self, b: Self) -> Bool { a.raw < b.raw }
}

/// CC, Controller Configuration.
struct ControllerConfiguration: Equatable {
    var raw: UInt32
    var enabled: Bool {
        get { raw & 1 == 1 }
        set { raw = newValue ? raw | 1 : raw & ~1 }
    }
    /// SHN: 00 none, 01 normal shutdown, 10 abrupt shutdown.
    var shutdownNotification: UInt32 {
        get { (raw >> 14) & 3 }
        set { raw = (raw & ~(3 << 14)) | ((newValue & 3) << 14) }
    }

    /// NVM command set, 2^(12 + mps) byte pages, round robin arbitration,
    /// 64-byte SQ and 16-byte CQ entries; not enabled.
    static func nvm(pageShift: Int) -> ControllerConfiguration {
        let mps = UInt32(pageShift - 12)
        return ControllerConfiguration(raw: (4 << 20) | (6 << 16) | (mps << 7))
    }
}

/// CSTS, Controller Status.
public struct ControllerStatus: Sendable, Equatable {
    public let raw: UInt32
    public init(raw: UInt32) { self.raw = raw }
    public var ready: Bool { raw & 1 == 1 }
    /// CFS: the controller hit a fatal error; only a reset helps.
    public var fatal: Bool { raw >> 1 & 1 == 1 }
    /// SHST: 00 normal operation, 01 shutdown processing, 10 shutdown complete.
    public var shutdownStatus: UInt32 { (raw >> 2) & 3 }
    /// A read of all ones: the device is gone (surprise removal, or a failed reset).
    public var isAllOnes: Bool { raw == 0xffff_ffff }
}
