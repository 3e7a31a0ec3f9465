// Host-only rows (no guest, no device): the IOVA allocator's allocate + free.

import CBenchSupport
import Foundation
import VFIOKit

struct HostResult {
    var name: String
    var nsPerPair: Double
    var allocationsPerPair: Double
    var instructionsPerPair: Double?
    var pairsPerSecond: Double { 1e9 / nsPerPair }
}

/// A host case: `body(n)` runs n allocate + free pairs.
struct HostCase {
    var name: String
    var iterations: Int
    var countIterations: Int
    var body: (Int) -> Void
}

/// An allocator over the edu's 28-bit window with `live` 4 KiB allocations
/// already made (first fit walks past them).
func allocator(live: Int) throws -> IOVAAllocator {
    var a = try IOVAAllocator(ranges: [0...0xfff_ffff], alignment: 4096, dmaMask: 0xfff_ffff)
    for _ in 0..<live { _ = try a.allocate(length: 4096) }
    return a
}

func hostCases(scale: Int) throws -> [HostCase] {
    var cases: [HostCase] = []
    for live in [0, 8, 64] {
        let start = try allocator(live: live)
        cases.append(HostCase(name: "IOVA allocate+free 4 KiB, \(live) live", iterations: (live == 64 ? 200_000 : 2_000_000) * scale,
                              countIterations: 10_000) { n in
            var a = start
            for _ in 0..<n {
                guard let iova = try! a.allocate(length: 4096) else { fatalError("IOVA space exhausted") }
                a.free(iova)
            }
            blackHole(a)
        })
    }
    return cases
}

/// Counting mode for host cases (under callgrind, see ``writeCounts(_:to:)``): runs each
/// case between a zero and a dump of the counters and writes its instructions per
/// iteration to `countFile` (no C side on the host: its column is 0).
func countUnderCallgrind(_ cases: [HostCase], into countFile: String) throws {
    let prefix = try callgrindPrefix()
    for c in cases {
        c.body(2)
        let tag = strdup("swift:" + c.name)!
        defer { free(tag) }
        bench_cg_zero()
        c.body(c.countIterations)
        bench_cg_dump(tag)
    }
    let dumps = readCallgrindDumps(prefix: prefix)
    var lines = ""
    for c in cases {
        guard let s = dumps["swift:" + c.name] else { throw BenchError("no callgrind dump for \(c.name)") }
        lines += "\(c.name)\t0\t\(Double(s) / Double(c.countIterations))\t\(c.countIterations)\n"
    }
    try lines.write(toFile: countFile, atomically: false, encoding: .utf8)
}

/// Times `c` (a warm-up, then 7 rounds of `iterations`): the median ns and the
/// allocations per iteration.
func timeHostCase(_ c: HostCase) -> (ns: Double, allocations: Double) {
    c.body(c.iterations / 10 + 1)
    var times: [Double] = []
    var allocations: UInt64 = 0
    for _ in 0..<7 {
        let a = bench_allocations()
        let t = bench_now_ns()
        c.body(c.iterations)
        times.append(Double(bench_now_ns() - t) / Double(c.iterations))
        allocations += bench_allocations() - a
    }
    return (median(times), Double(allocations) / Double(c.iterations * 7))
}

func runHost(countFile: String?, countsFrom: String?, scale: Int) throws -> [HostResult] {
    let cases = try hostCases(scale: scale)
    if let countFile {
        try countUnderCallgrind(cases, into: countFile)
        return []
    }
    let counts = countsFrom.map(readCounts) ?? [:]
    return cases.map { c in
        let (ns, allocations) = timeHostCase(c)
        return HostResult(name: c.name, nsPerPair: ns, allocationsPerPair: allocations,
                          instructionsPerPair: counts[c.name]?.1)
    }
}

func printHost(_ rows: [HostResult]) {
    print("vfiokit-bench --host: IOVAAllocator (VFIODMA), median of 7 rounds, target >= 10 million pairs/s")
    print("operation".padding(toLength: 34, withPad: " ", startingAt: 0) + "   pairs/s    ns/pair  allocs/pair  instr/pair")
    for r in rows {
        print(r.name.padding(toLength: 34, withPad: " ", startingAt: 0)
              + String(format: " %9.2fM %10.1f %12.2f ", r.pairsPerSecond / 1e6, r.nsPerPair, r.allocationsPerPair)
              + rightAligned(r.instructionsPerPair.map { String(format: "%.0f", $0) } ?? "-", 11))
    }
}
