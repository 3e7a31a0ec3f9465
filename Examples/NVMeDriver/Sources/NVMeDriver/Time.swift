#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// CLOCK_MONOTONIC in nanoseconds (vDSO: no syscall, no allocation).
@inline(__always)
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

extension Duration {
    /// Whole nanoseconds, saturating (negative durations are 0).
    @inline(__always)
    var nanoseconds: UInt64 {
        let c = components
        if c.seconds < 0 { return 0 }
        let (s, o) = UInt64(c.seconds).multipliedReportingOverflow(by: 1_000_000_000)
        if o { return .max }
        let (t, o2) = s.addingReportingOverflow(UInt64(c.attoseconds / 1_000_000_000))
        return o2 ? .max : t
    }

    /// A duration of `ns` nanoseconds.
    @inline(__always)
    static func ns(_ ns: UInt64) -> Duration { .nanoseconds(Int64(clamping: ns)) }

    /// "1.5 s", "250 ms", "40 µs".
    var humanReadable: String {
        let ns = nanoseconds
        if ns >= 1_000_000_000 { return trimmed(Double(ns) / 1e9) + " s" }
        if ns >= 1_000_000 { return trimmed(Double(ns) / 1e6) + " ms" }
        return trimmed(Double(ns) / 1e3) + " µs"
    }
}

func trimmed(_ v: Double) -> String {
    let r = (v * 100).rounded() / 100
    return r == r.rounded() ? String(Int(r)) : String(r)
}

/// Sleeps for `ns` nanoseconds (register polling during bring-up and teardown).
func sleepNanoseconds(_ ns: UInt64) {
    var ts = timespec(tv_sec: Int(ns / 1_000_000_000), tv_nsec: Int(ns % 1_000_000_000))
    var left = timespec()
    while nanosleep(&ts, &left) != 0 && errno == EINTR { ts = left }
}
