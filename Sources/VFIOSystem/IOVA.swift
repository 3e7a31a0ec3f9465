/// An I/O virtual address: where a device sees memory through its IOMMU.
///
/// Its own type, so that a process address (a pointer into this process) or a
/// plain integer cannot end up where a device needs an IOVA (a descriptor, a
/// register, a map call) by accident: a ``DMAMapping``'s `iova`, the IOAS and
/// container map calls and the IOVA allocator all take and give `IOVA`s, and a
/// DMA buffer's process address is a pointer. ``rawValue`` is the number the
/// kernel and the device take; write it into a register or descriptor there.
///
///     let mapping = try device.allocateDMA(bytes: 4096)
///     bar.store64(mapping.iova.rawValue, at: 0x28)         // the device's view
///
/// An integer literal is an IOVA where one is expected (`ioas.map(buffer, at: 0x10_0000)`).
@frozen
public struct IOVA: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible,
    ExpressibleByIntegerLiteral
{
    /// The address as the kernel and the device take it.
    public var rawValue: UInt64

    @inlinable @inline(__always)
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// The IOVA `rawValue`.
    @inlinable @inline(__always)
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }

    @inlinable @inline(__always)
    public init(integerLiteral value: UInt64) { rawValue = value }

    /// IOVA 0.
    public static let zero = IOVA(0)
    /// The last IOVA of the 64-bit space, 2^64 - 1.
    public static let max = IOVA(.max)

    @inlinable @inline(__always)
    public static func < (a: IOVA, b: IOVA) -> Bool { a.rawValue < b.rawValue }

    /// `offset` bytes further on; traps when that runs past 2^64 - 1, as
    /// integer addition does (see ``adding(_:)`` for a checked form).
    @inlinable @inline(__always)
    public static func + (a: IOVA, offset: UInt64) -> IOVA { IOVA(a.rawValue + offset) }

    /// The distance in bytes from `b` up to `a` (`a` must not be below `b`).
    @inlinable @inline(__always)
    public static func - (a: IOVA, b: IOVA) -> UInt64 { a.rawValue - b.rawValue }

    /// `offset` bytes further on, or nil when that runs past the end of the
    /// 64-bit IOVA space.
    @inlinable @inline(__always)
    public func adding(_ offset: UInt64) -> IOVA? {
        let (sum, overflow) = rawValue.addingReportingOverflow(offset)
        return overflow ? nil : IOVA(sum)
    }

    /// Whether the IOVA is a multiple of `alignment` (a power of two).
    @inlinable @inline(__always)
    public func isAligned(to alignment: UInt64) -> Bool { rawValue & (alignment &- 1) == 0 }

    /// `0x100000`: lower-case hex, as the kernel's messages print IOVAs.
    public var description: String { "0x" + String(rawValue, radix: 16) }
}

/// IOVA ranges as the kernel reports them (inclusive ends).
extension ClosedRange where Bound == IOVA {
    /// `0x1000-0x1fff`.
    public var hexDescription: String { "\(lowerBound)-\(upperBound)" }
}
