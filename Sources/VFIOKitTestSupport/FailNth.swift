import Foundation
import VFIOKit

#if canImport(Glibc)
import Glibc
#endif

/// Fault injection by the kernel's fail-nth: make the n-th kernel allocation of
/// this thread fail, for n = 1, 2, ... until a run of the scenario no longer
/// reaches an injection point. Each run must either succeed or throw, and leave
/// nothing behind; ``sweep(limit:scenario:afterEach:)`` checks fds, pinned and
/// locked memory (and whatever `afterEach` checks) after every run and reports
/// each outcome.
///
/// Pinned memory is charged to different counters by the two kernel paths,
/// so both are compared (Linux 7.2):
/// - VFIO type1 (drivers/vfio/vfio_iommu_type1.c, `vfio_lock_acct`) charges
///   every pinned page to `mm->locked_vm` (VmLck) through `__account_locked_vm`,
///   with or without CAP_IPC_LOCK (the capability only skips the limit).
/// - iommufd (drivers/iommu/iommufd/pages.c, `iopt_pages_update_pinned`) adds
///   every pinned page to `mm->pinned_vm` (VmPin) in all three rlimit modes;
///   in the `mm` mode (IOMMU_OPTION_RLIMIT_MODE 0, and always for iommufd's
///   /dev/vfio/vfio compat container) it charges `mm->locked_vm` (VmLck) too;
///   in the `user` mode (the default without CAP_IPC_LOCK) also the user's
///   `locked_vm`, which /proc does not show (VmPin covers it).
///
/// Needs CONFIG_FAULT_INJECTION_DEBUG_FS, FAILSLAB and FAIL_PAGE_ALLOC, and
/// debugfs mounted at /sys/kernel/debug (the test guest has all of them).
/// Scenarios must be synchronous: fail-nth is per thread.
public enum FailNth {
    /// Requires fail-nth for this thread (CONFIG_FAULT_INJECTION_DEBUG_FS,
    /// FAILSLAB, FAIL_PAGE_ALLOC, debugfs mounted): throws what is missing.
    public static func requireAvailable() throws(VFIOError) {
        for (path, mode) in [("/proc/thread-self/fail-nth", R_OK | W_OK), ("/sys/kernel/debug/failslab/ignore-gfp-wait", W_OK),
                             ("/sys/kernel/debug/fail_page_alloc/ignore-gfp-wait", W_OK)]
        where access(path, mode) != 0 {
            throw VFIOError(operation: .syscall(.access), errno: .init(rawValue: errno), object: path,
                            detail: "fail-nth needs CONFIG_FAULT_INJECTION_DEBUG_FS, FAILSLAB and FAIL_PAGE_ALLOC, and debugfs at /sys/kernel/debug")
        }
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
        /// Open fds, and this process's pinned (VmPin) and locked (VmLck) KiB, before and after the run.
        public var fdsBefore: Int, fdsAfter: Int
        public var pinnedBefore: Int, pinnedAfter: Int
        public var lockedBefore: Int, lockedAfter: Int
        /// What `afterEach` found wrong after this run (a changed driver binding, ...).
        public var problems: [String] = []
        /// Nothing leaked, nothing changed.
        public var clean: Bool {
            fdsBefore == fdsAfter && pinnedBefore == pinnedAfter && lockedBefore == lockedAfter && problems.isEmpty
                && min(fdsBefore, pinnedBefore, lockedBefore) >= 0  // -1: could not be read
        }
        public var description: String {
            var s = "nth \(nth): \(error.map { "threw: \($0)" } ?? "succeeded")"
            if fdsBefore != fdsAfter { s += " LEAKED fds \(fdsBefore)->\(fdsAfter)" }
            if pinnedBefore != pinnedAfter { s += " LEAKED pinned (VmPin) \(pinnedBefore)->\(pinnedAfter) KiB" }
            if lockedBefore != lockedAfter { s += " LEAKED locked (VmLck) \(lockedBefore)->\(lockedAfter) KiB" }
            for p in problems { s += " CHANGED: \(p)" }
            return s
        }
    }

    /// Sweeps `scenario` over every kernel allocation it makes. The scenario
    /// runs once cleanly first (it must succeed), then once per injection point.
    /// After each run, with injection off, `afterEach` checks what the
    /// scenario must have left as it found it and returns what it did not
    /// (recorded in ``Run/problems``). Returns every run; stops after `limit`
    /// injections.
    ///
    /// The kernel log gets `vfiokit: fault injection on (NAME)` before the sweep and
    /// `... off (NAME)` after it: Scripts/test-summary.py tells a kernel WARN that
    /// fault injection provoked in the kernel's own error paths (listed, with the
    /// reason, in Tests/GuestManifest/kernel-findings.txt) from one that fails the run.
    public static func sweep<E: Error>(limit: Int = 3000, name: String = #function, scenario: () throws(E) -> Void,
                                       afterEach: () -> [String] = { [] }) throws(VFIOError) -> [Run] {
        try sweep(limit: limit, name: name, setUp: { () throws(VFIOError) in () }, scenario: { (_: ()) throws(E) in try scenario() },
                  afterEach: { _ in afterEach() }, tearDown: { _ in })
    }

    /// ``sweep(limit:name:scenario:afterEach:)`` with a fixture made before
    /// and ended after each run, outside the injection window: `setUp` makes
    /// it with injection off, `scenario` runs on it with injection on,
    /// `afterEach` checks it and `tearDown` ends it, both with injection off.
    /// For objects whose creation or destruction must not be failed (a kernel
    /// path with a bug of its own), while every run starts afresh. The fd,
    /// VmPin and VmLck counts compare before `setUp` with after `tearDown`.
    /// A throwing `setUp` or `tearDown` (never injected) ends the sweep.
    public static func sweep<E: Error, Fixture>(limit: Int = 3000, name: String = #function,
                                                setUp: () throws(VFIOError) -> Fixture,
                                                scenario: (Fixture) throws(E) -> Void,
                                                afterEach: (Fixture) -> [String] = { _ in [] },
                                                tearDown: (Fixture) throws(VFIOError) -> Void) throws(VFIOError) -> [Run] {
        try requireAvailable()
        configure()
        kernelLog("vfiokit: fault injection on (\(name))")
        defer { kernelLog("vfiokit: fault injection off (\(name))") }
        var runs: [Run] = []
        let control = open("/proc/thread-self/fail-nth", O_RDWR | O_CLOEXEC)
        guard control >= 0 else {
            throw VFIOError(operation: .syscall(.open), errno: .init(rawValue: errno), object: "/proc/thread-self/fail-nth")
        }
        defer { close(control) }
        var nth = 0
        while nth <= limit {
            let fdsBefore = Guest.openFDCount()
            let (pinnedBefore, lockedBefore) = (pinnedKiB(), lockedKiB())
            var thrown: String?
            var fired = false
            var problems: [String] = []
            do {
                // The fixture is gone at the end of this scope, before the counts are taken.
                let fixture = try setUp()
                if nth > 0 { arm(control, nth) }
                do throws(E) { try scenario(fixture) } catch { thrown = "\(error)" }
                fired = nth > 0 && disarm(control)
                problems = afterEach(fixture)
                try tearDown(fixture)
            }
            var run = Run(nth: nth, injected: fired, error: thrown, fdsBefore: fdsBefore, fdsAfter: Guest.openFDCount(),
                          pinnedBefore: pinnedBefore, pinnedAfter: pinnedKiB(), lockedBefore: lockedBefore, lockedAfter: lockedKiB())
            run.problems = problems
            runs.append(run)
            if nth > 0 && !fired { break }  // the scenario no longer reaches the n-th allocation: all swept
            nth += 1
        }
        return runs
    }

    /// Writes one line to the kernel log (/dev/kmsg); the console log gets it with a timestamp.
    static func kernelLog(_ line: String) {
        let fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return }  // then every WARN counts against the run: fail-safe
        _ = line.withCString { Glibc.write(fd, $0, strlen($0)) }
        close(fd)
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

    /// Pages pinned by this process (VmPin of /proc/self/status, `mm->pinned_vm`), in KiB.
    public static func pinnedKiB() -> Int { statusKiB("VmPin:") }

    /// Pages locked by or charged to this process as locked (VmLck of
    /// /proc/self/status, `mm->locked_vm`: mlock, and VFIO type1's pins), in KiB.
    public static func lockedKiB() -> Int { statusKiB("VmLck:") }

    /// A `kB` field of /proc/self/status; -1 when it cannot be read (a run
    /// with -1 is never ``Run/clean``).
    static func statusKiB(_ field: String) -> Int {
        guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return -1 }
        for line in s.split(separator: "\n") where line.hasPrefix(field) {
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
