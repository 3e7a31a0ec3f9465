import Foundation
import Synchronization
import Testing
import VFIOCommands
import VFIOKit
import VFIOKitTestSupport
import VFIOSystem

#if canImport(Glibc)
import Glibc
#endif

/// Driver binding when any step can fail, the way the guest's fail-nth sweep
/// (`FailNthTests/bindAndRestoreDriver`) fails them, on a fixture tree: edu on
/// pci-stub, which binds only through `driver_override` (no id table), so a
/// restore that loses the override cannot bind it. A failed syscall of the
/// library comes from the fake kernel (``FakeKernel/failCall(_:errno:)``), a
/// failed sysfs store from the fixture's PCI core
/// (``FixtureKernel/failWrite(number:errno:)``: ENOMEM before any effect).
///
/// What every run must end with: a thrown error or success; after a failed
/// bind the binding as it was (or, when its rollback did not take, the error
/// saying so and the record kept); after a failed restore the record kept;
/// after a success the binding as it should be; and wherever the binding is
/// left changed, the error printing `vfioctl unbind BDF --restore`, and that
/// command, run as printed, finishing the job.
@Suite(.serialized) struct BindingUnderFailureTests {
    static let bdf = "0000:00:02.0"

    /// A device's binding: driver, driver_override, and whether a record is on file.
    struct Binding: Equatable, CustomStringConvertible {
        var driver: String?
        var override: String?
        var recorded: Bool
        var description: String { "driver \(driver ?? "none"), override \(override ?? "none"), record \(recorded ? "kept" : "none")" }
    }
    static let original = Binding(driver: "pci-stub", override: "pci-stub", recorded: false)
    static let bound = Binding(driver: "vfio-pci", override: "vfio-pci", recorded: true)

    static func binding(_ f: PCIFixture) -> Binding {
        Binding(driver: f.driver(bdf), override: f.override(bdf),
                recorded: f.exists("/run/vfiokit/bindings/\(bdf).json"))
    }

    /// Puts the fixture back at the start: edu on pci-stub through its override, no record.
    static func reset(_ f: PCIFixture) throws {
        try? f.fm.removeItem(atPath: f.root + "/run/vfiokit")
        try? f.fm.removeItem(atPath: f.root + f.dev(bdf) + "/vfio-dev")
        try f.bindLink(bdf, "pci-stub")
        try f.write(f.dev(bdf) + "/driver_override", "pci-stub\n")
        f.kernel.clearFailures()
        f.kernel.afterEachWrite { _ in }
    }

    /// Runs `body` with a host on `k` (a fake kernel serving the fixture); returns what it threw.
    static func run(_ f: PCIFixture, _ k: FakeKernel, _ body: (PCIHost) throws(VFIOError) -> Void) -> VFIOError? {
        Syscalls.withProvider(k) {
            do throws(VFIOError) { try body(f.host); return nil } catch { return error }
        }
    }

    /// Once the fixture's PCI core has taken the first write whose path ends
    /// with `suffix`, the `n`th syscall of `k` from then on fails with ENOMEM.
    static func failCall(_ n: Int, after suffix: String, _ f: PCIFixture, _ k: FakeKernel) {
        let armed = Once()
        f.kernel.afterEachWrite { path in
            if path.hasSuffix(suffix) && armed.first() { k.failCall(n, errno: ENOMEM) }
        }
    }

    final class Once: Sendable {
        private let done = Atomic(false)
        /// True the first time only.
        func first() -> Bool { !done.exchange(true, ordering: .relaxed) }
    }

    static func kernel(_ f: PCIFixture) -> FakeKernel {
        let k = FakeKernel()
        k.passThrough(f.root)
        return k
    }

    /// The fix an error prints, as vfioctl prints it: its remedies in vfioctl's
    /// words (the `hint:` line of `CLIWording.message`).
    static func hintAsPrinted(_ e: VFIOError) -> String { CLIWording.text(e.remedies) ?? "" }

    /// The fix every error that leaves the binding changed must print.
    static let printedFix = "vfioctl unbind \(bdf) --restore"

    /// Where the binding was left changed with its record kept: the fix the
    /// error prints (`vfioctl unbind BDF --restore`), followed as printed with
    /// nothing failing, must give back the original, record removed.
    static func printedFixConverges(_ f: PCIFixture, _ e: VFIOError, _ what: String) -> [String] {
        let now = binding(f)
        guard now != original else { return [] }
        guard now.recorded else { return ["\(what): binding \(original) -> \(now), and no record to restore from"] }
        let commands = printedCommands(Self.hintAsPrinted(e))
        guard commands.contains(printedFix) else {
            return ["\(what): binding \(original) -> \(now), and the error prints no `\(printedFix)` to put it back: \(CLIWording.message(e))"]
        }
        for c in commands {
            let r = follow(c, in: f)
            if r.status != 0 { return ["\(what): binding \(original) -> \(now); the printed `\(c)` failed: \(r.err)"] }
        }
        let after = binding(f)
        return after == original ? [] : ["\(what): binding \(original) -> \(now); after the printed fix \(after)"]
    }

    /// What a failed bind may leave: the binding as it was, or (its rollback
    /// did not take) the record kept and the error saying so.
    static func checkFailedBind(_ f: PCIFixture, _ e: VFIOError, _ what: String) -> [String] {
        let now = binding(f)
        if now == original { return [] }
        let admitted = e.description.contains("could not be put back") || e.description.contains("record could not be restored")
        if now.recorded && admitted { return printedFixConverges(f, e, what) }
        return ["\(what): bind threw (\(e)), yet binding \(original) -> \(now)"] + printedFixConverges(f, e, what)
    }

    /// What a failed restore must leave: its record, so a retry can finish.
    static func checkFailedRestore(_ f: PCIFixture, _ e: VFIOError, _ what: String) -> [String] {
        let now = binding(f)
        var problems: [String] = []
        if !now.recorded {
            problems.append("\(what): unbind --restore threw (\(e)), yet its record is gone (binding \(now)): a retry has nothing to restore from")
        }
        return problems + printedFixConverges(f, e, what)
    }

    /// Runs `operation` on a fresh guest-like fixture (after `prepare`) once for
    /// each call after the one whose path ends in `suffix`, failing that call
    /// (the n-th after it, n = 1, 2, ... until no call is left to fail), and
    /// records as an issue each run where the failure was not handled: the
    /// operation threw and `check` finds problems, or it succeeded and left the
    /// binding other than `leaves`. Returns how many runs failed a call.
    static func failEachCall(
        after suffix: String, named name: String, succeeding what: String, leaves expected: Binding,
        check: (PCIFixture, VFIOError, String) -> [String], prepare: (PCIFixture) throws -> Void = { _ in },
        _ operation: (PCIHost) throws(VFIOError) -> Void
    ) throws -> Int {
        let f = try guestLikeFixture()
        var problems: [String] = []
        var runs = 0
        for n in 1...200 {
            try reset(f)
            try prepare(f)
            let k = kernel(f)
            failCall(n, after: suffix, f, k)
            let e = run(f, k, operation)
            guard let injected = k.injectedFailure else { break }
            runs += 1
            let call = "call \(n) after \(name) (\(injected.kind.rawValue))"
            if let e {
                problems += check(f, e, call)
            } else if binding(f) != expected {
                problems.append("\(call): \(what) succeeded, yet binding \(binding(f))")
            }
        }
        for p in problems { Issue.record("\(p)") }
        return runs
    }

    // MARK: defects, one test each

    /// A bind that took (the device verified on vfio-pci) is not reported as
    /// failed because reading the device again for the report failed: the
    /// caller would take the device for untouched while it is on vfio-pci.
    /// Each call after the probe is failed in turn (fake kernel, ENOMEM).
    @Test func aBindThatTookIsNotReportedAsFailed() throws {
        let a = try PCIAddress(parsing: Self.bdf)
        let runs = try Self.failEachCall(after: "/sys/bus/pci/drivers_probe", named: "drivers_probe", succeeding: "bind",
                                         leaves: Self.bound, check: Self.checkFailedBind) { (h) throws(VFIOError) in
            _ = try h.bind(a)
        }
        #expect(runs >= 5, "only \(runs) calls after the probe were failed")
    }

    /// A restore that threw keeps its record: here the restore has put pci-stub
    /// back and a read after that fails. Deleting the record and then throwing
    /// leaves a caller who retries (`vfioctl unbind BDF --restore`, as the
    /// error invites) with no record, and that retry unbinds pci-stub.
    @Test func aRestoreThatThrowsKeepsItsRecord() throws {
        let a = try PCIAddress(parsing: Self.bdf)
        let runs = try Self.failEachCall(after: "/pci-stub/bind", named: "the write to pci-stub/bind",
                                         succeeding: "unbind --restore", leaves: Self.original, check: Self.checkFailedRestore,
                                         prepare: { f in _ = try f.host.bind(a) }) { (h) throws(VFIOError) in
            _ = try h.unbind(a, restore: true)
        }
        #expect(runs >= 5, "only \(runs) calls after the bind were failed")
    }

    /// A restore whose device is back but whose record cannot be removed
    /// (unlinkat fails) says so, and its printed retry removes the record.
    @Test func aRecordThatCouldNotBeRemovedIsRemovedAsPrinted() throws {
        let f = try guestLikeFixture()
        let a = try PCIAddress(parsing: Self.bdf)
        try Self.reset(f)
        _ = try f.host.bind(a)
        // Which call of a restore is the record's unlinkat: count them in a restore that fails nothing.
        let counting = Self.kernel(f)
        if let e = Self.run(f, counting, { (h) throws(VFIOError) in _ = try h.unbind(a, restore: true) }) { throw e }
        let n = try #require(counting.callLog.first { $0.hasSuffix(" unlinkat") }.flatMap { Int($0.split(separator: " ")[0]) })
        try Self.reset(f)
        _ = try f.host.bind(a)
        let k = Self.kernel(f)
        k.failCall(n)
        let e = try #require(Self.run(f, k) { (h) throws(VFIOError) in _ = try h.unbind(a, restore: true) })
        #expect(k.injectedFailure?.kind == .unlinkat)
        #expect(e.description.contains("is back on pci-stub (checked)") && e.description.contains("could not be removed"), "\(e)")
        #expect(Self.binding(f) == Binding(driver: "pci-stub", override: "pci-stub", recorded: true))
        followAll(Self.hintAsPrinted(e), in: f)
        #expect(Self.binding(f) == Self.original)
    }

    /// A restore whose driver is registered but refuses the device (its bind
    /// store returns, the device is not on it) points at the kernel log, not
    /// at loading a module that is loaded; its printed retry, the cause gone,
    /// gives the driver back.
    @Test func aRegisteredDriverThatRefusesTheDevicePointsAtTheKernelLog() throws {
        let f = try guestLikeFixture()
        let a = try PCIAddress(parsing: Self.bdf)
        try Self.reset(f)
        _ = try f.host.bind(a)
        let driverLink = f.root + f.dev(Self.bdf) + "/driver"
        f.kernel.afterEachWrite { path in
            if path.hasSuffix("/pci-stub/bind") { unlink(driverLink) }
        }
        let e = try #require(throws: VFIOError.self) { _ = try f.host.unbind(a, restore: true) }
        f.kernel.afterEachWrite { _ in }
        #expect(e.description.contains("did not go back to pci-stub"), "\(e)")
        #expect(!e.remedies.contains { $0.kind == .loadModule } && e.remedies.contains { $0.kind == .readKernelLog },
                "\(CLIWording.message(e))")
        #expect(printedCommands(Self.hintAsPrinted(e)) == [Self.printedFix], "\(CLIWording.message(e))")
        #expect(Self.binding(f).recorded)
        followAll(Self.hintAsPrinted(e), in: f)
        #expect(Self.binding(f) == Self.original)
    }

    /// A `bind --group` whose rollback of an earlier member did not take
    /// prints that member's retry in its fix, not only in its text: here
    /// 01:01.0 went to vfio-pci, 01:02.0's override store fails, and pci-stub
    /// then refuses 01:01.0 back. The cause fixed, the printed fix, followed
    /// as printed, puts both back on pci-stub with no record left.
    @Test func aGroupRollbackThatDidNotTakePrintsEveryRetry() throws {
        let f = try guestLikeFixture()
        let (first, second) = ("0000:01:01.0", "0000:01:02.0")
        for d in [first, second] {
            try f.bindLink(d, "pci-stub")
            try f.write(f.dev(d) + "/driver_override", "pci-stub\n")
        }
        let armed = Once()
        f.kernel.afterEachWrite { path in
            guard path == "/sys/bus/pci/drivers_probe", armed.first() else { return }
            f.kernel.failWrite("/sys/bus/pci/devices/\(second)/driver_override")
            f.kernel.failProbe("pci-stub")
        }
        let e = try #require(throws: VFIOError.self) { _ = try f.host.bind(try PCIAddress(parsing: first), group: true) }
        #expect(e.description.contains("NOT put back: \(first)"), "\(e)")
        f.kernel.clearFailures()
        f.kernel.afterEachWrite { _ in }
        let commands = printedCommands(Self.hintAsPrinted(e))
        #expect(commands.contains("vfioctl unbind \(first) --restore"), "\(e)")
        followAll(Self.hintAsPrinted(e), in: f)
        for d in [first, second] {
            #expect(f.driver(d) == "pci-stub" && f.override(d) == "pci-stub" && !f.exists("/run/vfiokit/bindings/\(d).json"),
                    "\(d): driver \(f.driver(d) ?? "none"), override \(f.override(d) ?? "none")")
        }
    }

    /// A driver link that cannot be read is not "no driver": the check after a
    /// probe or bind names the failed readlink and its errno, in bind and in restore.
    @Test func aDriverLinkThatCannotBeReadIsNotReportedAsNoDriver() throws {
        let f = try guestLikeFixture()
        let a = try PCIAddress(parsing: Self.bdf)
        try Self.reset(f)
        var k = Self.kernel(f)
        Self.failCall(1, after: "/sys/bus/pci/drivers_probe", f, k)
        let bindError = try #require(Self.run(f, k) { (h) throws(VFIOError) in _ = try h.bind(a) })
        #expect(k.injectedFailure?.kind == .readlink)
        #expect(bindError.description.contains("ENOMEM") && !bindError.description.contains("driver now: none"), "\(bindError)")
        #expect(Self.binding(f) == Self.original, "\(bindError)")

        try Self.reset(f)
        _ = try f.host.bind(a)
        k = Self.kernel(f)
        Self.failCall(1, after: "/pci-stub/bind", f, k)
        let restoreError = try #require(Self.run(f, k) { (h) throws(VFIOError) in _ = try h.unbind(a, restore: true) })
        #expect(k.injectedFailure?.kind == .readlink)
        #expect(restoreError.description.contains("ENOMEM") && !restoreError.description.contains("driver now: none"),
                "\(restoreError)")
        #expect(Self.binding(f).recorded)
        #expect(Self.printedFixConverges(f, restoreError, "after the unreadable link") == [])
    }

    /// A device directory or id file that cannot be read is not "no such
    /// device" or "is sysfs mounted?": the error names the syscall and errno.
    @Test func aDeviceThatCannotBeReadIsNotCalledMissing() throws {
        let f = try guestLikeFixture()
        let a = try PCIAddress(parsing: Self.bdf)
        let k = Self.kernel(f)
        k.failCall(1, errno: ENOMEM)  // the lstat of the device's directory
        let missing = try #require(Self.run(f, k) { (h) throws(VFIOError) in _ = try h.device(a) })
        #expect(k.injectedFailure?.kind == .lstat)
        #expect(missing.errno == .init(rawValue: ENOMEM) && !missing.description.contains("no PCI device"), "\(missing)")
        // vendor is a directory: reading it fails with EISDIR.
        try f.fm.removeItem(atPath: f.root + f.dev(Self.bdf) + "/vendor")
        try f.fm.createDirectory(atPath: f.root + f.dev(Self.bdf) + "/vendor", withIntermediateDirectories: true)
        let unreadable = try #require(Self.run(f, Self.kernel(f)) { (h) throws(VFIOError) in _ = try h.device(a) })
        #expect(unreadable.errno == .init(rawValue: EISDIR) && !unreadable.description.contains("sysfs mounted"), "\(unreadable)")
    }

    // MARK: every failure

    /// Bind and restore with every syscall of the library failing in turn
    /// (fake kernel), then with every sysfs store failing in turn (fixture's
    /// PCI core): each run ends as the suite's summary says.
    @Test func bindAndRestoreEndAsTheyMustUnderEveryFailure() throws {
        let f = try guestLikeFixture()
        let a = try PCIAddress(parsing: Self.bdf)
        var problems: [String] = []
        var step = ""
        let scenario = { (h: PCIHost) throws(VFIOError) in
            step = "bind"
            _ = try h.bind(a)
            step = "restore"
            _ = try h.unbind(a, restore: true)
        }
        func check(_ e: VFIOError?, _ what: String) {
            guard let e else {
                if Self.binding(f) != Self.original { problems.append("\(what): succeeded, yet binding \(Self.binding(f))") }
                return
            }
            problems += step == "bind" ? Self.checkFailedBind(f, e, what) : Self.checkFailedRestore(f, e, what)
        }
        // The clean run: how many syscalls and writes it makes.
        try Self.reset(f)
        let k0 = Self.kernel(f)
        let writes0 = f.kernel.writeCount
        if let e = Self.run(f, k0, scenario) { throw e }
        #expect(Self.binding(f) == Self.original)
        let calls = k0.syscallCount, writes = f.kernel.writeCount - writes0
        var (failedCalls, failedWrites) = (0, 0)
        for n in 1...calls {
            try Self.reset(f)
            let k = Self.kernel(f)
            k.failCall(n)
            let e = Self.run(f, k, scenario)
            guard let injected = k.injectedFailure else { continue }
            failedCalls += 1
            check(e, "call \(n) (\(injected.kind.rawValue), errno \(injected.errno))")
        }
        for n in 1...writes {
            try Self.reset(f)
            f.kernel.failWrite(number: n)
            let e = Self.run(f, Self.kernel(f), scenario)
            guard let path = f.kernel.injectedWriteFailure else { continue }
            failedWrites += 1
            #expect(e != nil, "write \(n) (\(path)) failed and nothing said so")
            check(e, "write \(n) (\(path))")
        }
        #expect(failedCalls > 50 && failedWrites >= 6, "\(failedCalls) calls and \(failedWrites) writes failed")
        for p in problems { Issue.record("\(p)") }
    }
}
