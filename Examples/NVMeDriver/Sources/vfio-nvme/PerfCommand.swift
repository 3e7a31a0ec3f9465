import ArgumentParser
import Foundation
import NVMeDriver

struct PerfCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "perf",
        abstract: "Random reads (or writes) at a queue depth: IOPS, MB/s and latency percentiles.",
        discussion: """
            Keeps --qd commands of --bs bytes in flight on one I/O queue for --time, at \
            random addresses (aligned to --bs) across namespace 1 or the blocks --lba \
            and --count name, and prints a live progress \
            line (on stderr) and the totals: IOPS, MB/s (10^6 bytes) and latency (min, \
            mean, p50, p90, p99, p99.9, max, in microseconds, from submission to the \
            driver seeing the completion). Completions by MSI-X interrupt unless --poll. \
            --write overwrites the blocks it touches.

            JSON keys: address, mode, interrupts, write, qd, bs, seconds, ios, iops, mbps, \
            latency_us {min, mean, p50, p90, p99, p99_9, max}, interrupt_wakeups.

            Examples:
              vfio-nvme perf 0000:00:05.0 --qd 1 --bs 4k --time 5s
              vfio-nvme perf 0000:00:05.0 --qd 32 --bs 512 --time 10s --poll
              vfio-nvme perf 0000:00:05.0 --qd 8 --bs 64k --time 5s --write --lba 2048 --count 65536 --json
            """)

    @OptionGroup var controller: ControllerOptions
    @Option(help: "Commands in flight (queue depth).") var qd: Int = 1
    @Option(help: "Bytes per command (512, 4k, 64k, ...).") var bs: String = "4k"
    @Option(help: "How long to run (5s, 1m).") var time: String = "5s"
    @Flag(help: "Random writes instead of random reads (destroys data).") var write = false
    @Option(help: "First logical block of the region to use (default: 0).") var lba: UInt64 = 0
    @Option(help: "Logical blocks in the region (default: to the end of the namespace).") var count: UInt64?

    func validate() throws {
        if qd < 1 || qd > 1023 { throw ValidationError("--qd must be 1...1023") }
        if parseSize(bs) == nil { throw ValidationError("--bs must be a size such as 512, 4k or 64k") }
        if parseDuration(time) == nil { throw ValidationError("--time must be a duration such as 5s or 1m") }
    }

    func run() throws {
        try reporting {
            let bytes = parseSize(bs) ?? 4096
            let duration = parseDuration(time) ?? .seconds(5)
            try controller.withController(queueDepth: max(qd, 32)) { c in
                let live = !controller.json
                let tty = isatty(2) == 1
                if live {
                    FileHandle.standardError.write(Data(("perf \(c.address): random \(write ? "write" : "read"), \(bytes) B, QD \(qd), "
                                                         + "\(duration), \(c.interruptVectors > 0 ? "MSI-X interrupts" : "polling"), \(c.mode)\n").utf8))
                }
                let ns = try c.namespace(1)
                guard lba < ns.size, (count ?? 1) > 0, (count ?? 0) <= ns.size - lba else {
                    throw NVMeError(.invalidArgument, "--lba \(lba) --count \(count.map(String.init) ?? "(rest)") is outside namespace 1 (\(ns.size) blocks)",
                                    device: c.address)
                }
                let region = lba..<(count.map { lba + $0 } ?? ns.size)
                let report = try runPerf(c, options: PerfOptions(queueDepth: qd, blockSize: bytes, duration: duration, write: write,
                                                                 region: region),
                                         stop: { Signals.requested }, progress: { p in
                    guard live else { return }
                    let s = String(format: "[%5.1fs] %@ IOPS  %8.1f MB/s  %@ I/Os", Double(p.elapsed.components.seconds)
                                    + Double(p.elapsed.components.attoseconds) / 1e18, grouped(p.intervalIOPS).leftPad(9),
                                   p.intervalMBps, grouped(Double(p.ios)))
                    FileHandle.standardError.write(Data((tty ? "\r" + s : s + "\n").utf8))
                })
                if live && tty { FileHandle.standardError.write(Data("\n".utf8)) }
                if Signals.requested && live { FileHandle.standardError.write(Data("interrupted: partial run\n".utf8)) }
                let l = report.latencyMicroseconds
                if controller.json {
                    printJSON([
                        "address": c.address, "mode": report.mode, "interrupts": report.interrupts, "write": report.write,
                        "qd": report.queueDepth, "bs": report.blockSize, "seconds": report.seconds, "ios": report.ios,
                        "iops": report.iops, "mbps": report.megabytesPerSecond, "interrupt_wakeups": report.interruptWakeups,
                        "latency_us": ["min": l.min, "mean": l.mean, "p50": l.p50, "p90": l.p90, "p99": l.p99, "p99_9": l.p999, "max": l.max],
                    ] as [String: Any])
                } else {
                    print("IOPS: \(grouped(report.iops))   MB/s: \(String(format: "%.1f", report.megabytesPerSecond))   "
                          + "I/Os: \(grouped(Double(report.ios))) in \(String(format: "%.2f", report.seconds)) s")
                    print(String(format: "latency (us): min %.1f  mean %.1f  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f",
                                 l.min, l.mean, l.p50, l.p90, l.p99, l.p999, l.max))
                }
            }
        }
    }
}
