// Small value types and helpers every layer speaks.

/// The process's `RLIMIT_MEMLOCK`: what pinning memory for DMA counts against.
public struct MemlockLimit: Sendable, CustomStringConvertible {
    /// Soft and hard limit in bytes; nil means unlimited.
    public var soft: UInt64?
    /// The hard limit: the most an unprivileged process may raise the soft limit to.
    public var hard: UInt64?

    /// A limit from its soft and hard values (`getrlimit(RLIMIT_MEMLOCK)` reads them).
    public init(soft: UInt64?, hard: UInt64?) {
        self.soft = soft
        self.hard = hard
    }

    /// The limits now (getrlimit(2) of `RLIMIT_MEMLOCK`, 8 on x86-64 and arm64;
    /// the macro does not import into Swift).
    public static func current() throws(VFIOError) -> MemlockLimit {
        let (soft, hard) = try Sys.getrlimit(Sys.current, 8, name: "RLIMIT_MEMLOCK")
        return MemlockLimit(soft: soft, hard: hard)
    }

    public var description: String {
        func s(_ x: UInt64?) -> String { x.map { "\($0) bytes" } ?? "unlimited" }
        return "\(s(soft)) (hard limit \(s(hard)))"
    }

    /// A map's ENOMEM with the limit in force and the size asked: the detail names
    /// both, and the remedy raises the limit by the size asked (what was pinned
    /// before fit under the limit, so the limit plus this map's size is enough).
    package static func explainPinFailure(_ error: VFIOError, length: UInt64, at: String) -> VFIOError {
        var e = error
        let limit = try? MemlockLimit.current()
        e.detail = "asked to pin \(length) bytes \(at); RLIMIT_MEMLOCK is "
            + (limit?.description ?? "unknown (getrlimit failed)") + " for this process (pinned pages are charged "
            + "to it unless the thread has CAP_IPC_LOCK)"
        if let soft = limit?.soft {
            let (sum, overflow) = soft.addingReportingOverflow(length)
            e.remedies = [.raiseMemlock(atLeast: overflow ? nil : sum)]
        }
        return e
    }
}

/// `64 MiB`, `8 KiB`, `512 B`.
public func formatBytes(_ n: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = n
    var i = 0
    while i < units.count - 1, v >= 1024, v % 1024 == 0 { v /= 1024; i += 1 }
    return "\(v) \(units[i])"
}

/// Parses `64M`, `2GiB`, `4096`, `1g` into bytes.
public func parseByteSize(_ text: String) -> UInt64? {
    var s = text.trimmingWhitespace().lowercased()
    for suffix in ["ib", "b"] where s.hasSuffix(suffix) && s.count > suffix.count { s.removeLast(suffix.count); break }
    let shifts: [Character: UInt64] = ["k": 10, "m": 20, "g": 30, "t": 40]
    var shift: UInt64 = 0
    if let last = s.last, let sh = shifts[last] { shift = sh; s.removeLast() }
    guard let v = UInt64(s), v <= (UInt64.max >> shift) else { return nil }
    return v << shift
}

extension String {
    package func replacingPrefix(_ p: String, with r: String) -> String { hasPrefix(p) ? r + dropFirst(p.count) : self }
}


extension Duration {
    /// The duration in whole nanoseconds for a syscall's timeout: rounded up
    /// (a wait never ends before the time asked), negative durations as 0,
    /// and anything beyond what an Int64 holds (292 years) as Int64.max.
    @inlinable
    package var kernelNanoseconds: Int64 {
        // Fast path (timeouts from 0 to 18 s, the usual ones): the attoseconds
        // fit a UInt64, so the rounding up is one 64-bit division by a
        // constant (a multiply), not `components`' Int128 divisions.
        let atto = attoseconds
        if atto >= 0 && atto <= Int128(UInt64.max) {
            let a = UInt64(truncatingIfNeeded: atto)
            let (q, r) = a.quotientAndRemainder(dividingBy: 1_000_000_000)
            return Int64(q) + (r == 0 ? 0 : 1)
        }
        let c = components
        guard c.seconds >= 0 else { return 0 }
        let (whole, o1) = c.seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let fraction = (c.attoseconds + 999_999_999) / 1_000_000_000
        let (sum, o2) = whole.addingReportingOverflow(fraction)
        return o1 || o2 ? .max : max(0, sum)
    }
}
