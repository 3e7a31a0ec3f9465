import Testing
import VFIOSystem

/// The hot paths' cheap forms give exactly what the general forms give: the
/// request number's own switch against the table row, and the timeout's
/// 64-bit fast path against the Int128 arithmetic of `Duration.components`.
@Suite struct HotPathEquivalenceTests {
    @Test func requestNumberMatchesTheTableRow() {
        for request in Request.allCases {
            #expect(request.number == request.entry.number, "\(request.entry.name)")
        }
    }

    /// The rounding the fast path must reproduce: whole nanoseconds, rounded up,
    /// negative as 0, beyond Int64 as Int64.max.
    private func reference(_ d: Duration) -> Int64 {
        let c = d.components
        guard c.seconds >= 0 else { return 0 }
        let (whole, o1) = c.seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let (sum, o2) = whole.addingReportingOverflow((c.attoseconds + 999_999_999) / 1_000_000_000)
        return o1 || o2 ? .max : max(0, sum)
    }

    @Test func timeoutNanosecondsMatchComponents() {
        let limit = Int128(UInt64.max)
        let attos: [Int128] = [0, 1, 999_999_999, 1_000_000_000, 1_000_000_001, 1_000_000_000_000_000_000,
                               limit - 1, limit, limit + 1, -1, -1_000_000_000, -limit - 1,
                               Int128(Int64.max) * 1_000_000_000, Int128(Int64.max) * 1_000_000_000 + 1]
        var durations = attos.map { Duration(attoseconds: $0) }
        durations += [.seconds(1), .milliseconds(1), .microseconds(1), .nanoseconds(1), .seconds(18), .seconds(19),
                      .seconds(-1), .seconds(Int64.max), .seconds(Int64.min), .zero]
        for d in durations {
            #expect(d.kernelNanoseconds == reference(d), "\(d)")
        }
        #expect(Duration.seconds(1).kernelNanoseconds == 1_000_000_000)
        #expect(Duration(attoseconds: 1).kernelNanoseconds == 1)
        #expect(Duration.seconds(Int64.max).kernelNanoseconds == .max)
    }
}
