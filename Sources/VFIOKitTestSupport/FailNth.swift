import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Fault injection by the kernel's fail-nth: make the n-th kernel allocation of
/// this thread fail, for n = 1, 2, ... until a run of the scenario no longer
/// reaches an injection point. Each run must either succeed or throw, and leave
/// nothing behind; ``sweep(limit:scenario:)`` checks fds and pinned memory
/// after every run and reports each outcome.
///
/// Needs CONFIG_FAULT_INJECTION_DEBUG_FS, FAILSLAB and FAIL_PAGE_ALLOC, and
/// debugfs mounted at /sys/kernel/debug (the test guest has all of them).
/// Scenarios must be synchronous: fail-nth is per thread.
public enum FailNth {
    /// Whether this kernel offers fail-nth for this thread.
    public static var available: Bool {
        access("/proc/thread-self/fail-nth", R_OK | W_OK) == 0
            && access("/sys/kernel/debug/failslab/ignore-gfp-wait", W_OK) == 0
    }

    /// Lets every allocation be failed (not only atomic ones) and quiets the log,
    /// as the kernel's own iommufd_fail_nth selftest does.
    public static func configure() {
        let debugfs = "/sys/kernel/debug"
        write("N", to: "\(debugfs)/failslab/ignore-gfp-wait")
        write("N", to: "\(debugfs)/fail_page_alloc/ignore-gfp-wait")
        write("N", to: "\(debugfs)/fail_page_alloc/ignore-gfp-highmem")
        for d in (try? FileManager.default.contentsOfDirectory(atPath: debugfs)) ?? [] where d.hasPrefix("fail") {
            write("0", to: "\(debugfs)/\(d)/verbose")
        }
    }

    /// What one run under injection did.
    public struct Run: Sendable, CustomStringConvertible {
        /// Which allocation was failed (1-based); 0 is the clean run.
        public var nth: Int
        /// Whether the injection point was reached in this run.
        public var injected: Bool
        /// The error the scenario threw, nil when it succeeded.
        public var error: String?
        /// Open fds and pinned KiB before and after the run.
        public var fdsBefore: Int, fdsAfter: Int
        public var pinnedBefore: Int, pinnedAfter: Int
        /// Nothing leaked.
        public var clean: Bool { fdsBefore == fdsAfter && pinnedBefore == pinnedAfter }
        public var description: String {
            "nth \(nth): \(error.map { "threw: \($0)" } ?? "succeeded")"
                + (clean ? "" : " LEAKED fds \(fdsBefore)->\(fdsAfter) pinned \(pinnedBefore)->\(pinnedAfter) KiB")
        }
    }

    /// Sweeps `scenario` over every kernel allocation it makes. The scenario
    /// runs once cleanly first (it must succeed), then once per injection point.
    /// Returns every run; stops after `limit` injections.
    public static func sweep<E: Error>(limit: Int = 3000, scenario: () throws(E) -> Void) -> [Run] {
        configure()
        var runs: [Run] = []
        let control = open("/proc/thread-self/fail-nth", O_RDWR | O_CLOEXEC)
        guard control >= 0 else { return runs }
        defer { close(control) }
        var nth = 0
        while nth <= limit {
            let fdsBefore = Guest.openFDCount(), pinnedBefore = pinnedKiB()
            var thrown: String?
            if nth > 0 { arm(control, nth) }
            do throws(E) { try scenario() } catch { thrown = "\(error)" }
            let fired = nth > 0 && disarm(control)
            runs.append(Run(nth: nth, injected: fired, error: thrown, fdsBefore: fdsBefore, fdsAfter: Guest.openFDCount(),
                            pinnedBefore: pinnedBefore, pinnedAfter: pinnedKiB()))
            if nth > 0 && !fired { break }  // the scenario no longer reaches the n-th allocation: all swept
            nth += 1
        }
        return runs
    }

    private static func arm(_ control: Int32, _ nth: Int) {
        let s = "\(nth)"
        _ = s.withCString { pwrite(control, $0, strlen($0), 0) }
    }

    /// Disables injection; true when it fired during the run (the kernel
    /// counts down to 0 when it injects).
    private static func disarm(_ control: Int32) -> Bool {
        var buf = [UInt8](repeating: 0, count: 32)
        var n = pread(control, &buf, buf.count, 0)
        if n < 0 && errno == EFAULT { n = 0 ; buf[0] = UInt8(ascii: "1") }
        var w = "0".withCString { pwrite(control, $0, 1, 0) }
        if w < 0 && errno == EFAULT { w = "0".withCString { pwrite(control, $0, 1, 0) } }
        return n >= 2 && buf[0] == UInt8(ascii: "0") && buf[1] == UInt8(ascii: "\n")
    }

    /// Pages pinned by this process (VmPin of /proc/self/status), in KiB.
    public static func pinnedKiB() -> Int {
        guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return -1 }
        for line in s.split(separator: "\n") where line.hasPrefix("VmPin:") {
            return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
        }
        return -1
    }

    private static func write(_ value: String, to path: String) {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = value.withCString { Glibc.write(fd, $0, strlen($0)) }
        close(fd)
    }
}
