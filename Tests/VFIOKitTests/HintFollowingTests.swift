import Foundation
import Testing
import VFIOCommands
import VFIOKit

#if canImport(Glibc)
import Glibc
#endif

/// The commands in a hint or fix: every `...` span, in order.
func printedCommands(_ text: String) -> [String] {
    text.split(separator: "`", omittingEmptySubsequences: false).enumerated().filter { $0.offset % 2 == 1 }.map { String($0.element) }
}

/// Runs one printed command as printed, on the fixture: `vfioctl ...` in this
/// process with the fixture as its root and the fixture kernel behind sysfs;
/// anything else with /bin/sh, host paths (/run, /sys) mapped into the fixture.
@discardableResult
func follow(_ command: String, in f: PCIFixture) -> (status: Int32, out: String, err: String) {
    if command.hasPrefix("vfioctl ") {
        let args = command.split(separator: " ").dropFirst().map(String.init)
        return HostOptions.$fixtureKernel.withValue(f.kernel) { vfioctl(args, root: f.root) }
    }
    var mapped = command
    for p in ["/run/", "/sys/"] { mapped = mapped.replacingOccurrences(of: " " + p, with: " " + f.root + p) }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/sh")
    p.arguments = ["-c", mapped]
    let err = Pipe()
    p.standardError = err
    do { try p.run() } catch { return (127, "", "\(error)") }
    p.waitUntilExit()
    return (p.terminationStatus, "", String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
}

/// Follows every command in `text`, in order; records an issue for each that fails.
func followAll(_ text: String?, in f: PCIFixture, sourceLocation: SourceLocation = #_sourceLocation) {
    let cmds = printedCommands(text ?? "")
    #expect(!cmds.isEmpty, "no command to follow in: \(text ?? "nil")", sourceLocation: sourceLocation)
    for c in cmds {
        let r = follow(c, in: f)
        #expect(r.status == 0, "`\(c)` failed: \(r.err)", sourceLocation: sourceLocation)
    }
}

/// The guest's topology with the bridge on shpchp, which binds PCI bridges
/// without declaring driver_managed_dma.
func shpchpFixture() throws -> PCIFixture {
    let f = try guestLikeFixture()
    try f.addDriver("shpchp")
    try f.bindLink("0000:00:04.0", "shpchp")
    f.kernel.setDefaultDriver("0000:00:04.0", "shpchp")
    return f
}

/// Every hint and fix vfioctl prints for the host side, followed as printed.
@Suite struct HintFollowingTests {
    func readiness(_ f: PCIFixture, _ bdf: String) throws -> String? {
        let r = vfioctl(["list", "--json"], root: f.root)
        let devices = try #require(try jsonObject(r.out)["devices"] as? [[String: Any]])
        return devices.first { $0["address"] as? String == bdf }?["readiness"] as? String
    }

    @Test(arguments: ["plain", "blocking-endpoint", "blocking-bridge"])
    func everyListFixMakesTheDeviceReady(_ variant: String) throws {
        func make() throws -> PCIFixture {
            switch variant {
            case "blocking-endpoint":
                let f = try guestLikeFixture()
                try f.bindLink("0000:01:02.0", "e1000e")
                f.kernel.setDefaultDriver("0000:01:02.0", "e1000e")
                return f
            case "blocking-bridge": return try shpchpFixture()
            default: return try guestLikeFixture()
            }
        }
        let first = try make()
        let listed = try #require(try jsonObject(vfioctl(["list", "--json"], root: first.root).out)["devices"] as? [[String: Any]])
        var followed = 0
        for d in listed {
            let bdf = try #require(d["address"] as? String)
            let fix = d["fix"] as? [String] ?? []
            let word = d["readiness"] as? String ?? ""
            // Every word that promises a fix has one.
            if ["bindable", "needs-group", "needs-bridge-stub", "group-not-viable"].contains(word) {
                #expect(!fix.isEmpty, "\(bdf) is \(word) but has no fix")
            }
            guard !fix.isEmpty else { continue }
            let f = try make()  // a fresh machine for each device
            for c in fix {
                let r = follow(c, in: f)
                #expect(r.status == 0, "\(variant) \(bdf) (\(word)): `\(c)` failed: \(r.err)")
            }
            let now = try readiness(f, bdf)
            #expect(now == "ready", "\(variant) \(bdf) was \(word); after \(fix) it is \(now ?? "?")")
            followed += 1
        }
        #expect(followed >= 2)
        if variant == "blocking-bridge" {
            #expect(listed.first { $0["address"] as? String == "0000:01:01.0" }?["readiness"] as? String == "needs-bridge-stub")
        }
        if variant == "blocking-endpoint" {
            #expect(listed.first { $0["address"] as? String == "0000:01:01.0" }?["readiness"] as? String == "needs-group")
        }
    }

    @Test func aBridgeOnShpchpIsNamedAndTheFixWorksAsPrinted() throws {
        let f = try shpchpFixture()
        let a = try PCIAddress(parsing: "0000:01:01.0")
        // A single bind: refused, naming the bridge and its driver.
        let one = HostOptions.$fixtureKernel.withValue(f.kernel) { vfioctl(["bind", a.description], root: f.root) }
        #expect(one.status == 1 && one.err.contains("0000:00:04.0") && one.err.contains("shpchp"), "\(one.err)")
        #expect(!printedCommands(one.err).contains { $0.contains("0000:00:04.0") && !$0.contains("pci-stub") }, "a bridge never goes to vfio-pci: \(one.err)")
        // The group bind: refused the same way.
        let group = HostOptions.$fixtureKernel.withValue(f.kernel) { vfioctl(["bind", a.description, "--group"], root: f.root) }
        #expect(group.status == 1 && group.err.contains("0000:00:04.0") && group.err.contains("shpchp"), "\(group.err)")
        #expect(f.driver("0000:00:04.0") == "shpchp" && f.driver("0000:01:01.0") == nil)
        // Follow the group bind's hint as printed.
        let hint = try #require(group.err.components(separatedBy: "hint: ").last)
        followAll(hint, in: f)
        #expect(f.driver("0000:00:04.0") == "pci-stub" && f.driver("0000:01:01.0") == "vfio-pci" && f.driver("0000:01:02.0") == "vfio-pci")
        #expect(try f.host.viability(ofGroup: 4).viable)
        // Bringing the bridge vfio-pci is refused with the same fix; restore gives shpchp back.
        let br = HostOptions.$fixtureKernel.withValue(f.kernel) { vfioctl(["bind", "0000:00:04.0"], root: f.root) }
        #expect(br.status == 1 && br.err.contains("vfioctl bind 0000:00:04.0 --driver pci-stub"), "\(br.err)")
        #expect(follow("vfioctl unbind 0000:00:04.0 --restore", in: f).status == 0)
        #expect(f.driver("0000:00:04.0") == "shpchp")
    }

    @Test func singleBindRefusalHintWorksAsPrinted() throws {
        let f = try guestLikeFixture()
        try f.bindLink("0000:01:02.0", "e1000e")
        f.kernel.setDefaultDriver("0000:01:02.0", "e1000e")
        do {
            _ = try f.host.bind(PCIAddress(parsing: "0000:01:01.0"))
            Issue.record("bind succeeded")
        } catch {
            followAll(CLIWording.text(error.remedies), in: f)
        }
        #expect(try f.host.viability(ofGroup: 4).viable && f.driver("0000:01:01.0") == "vfio-pci")
    }

    @Test func doctorFixesForAGroupWorkAsPrinted() throws {
        for f in [try shpchpFixture(), try { () throws -> PCIFixture in
            let f = try guestLikeFixture()
            try f.bindLink("0000:01:02.0", "e1000e")
            f.kernel.setDefaultDriver("0000:01:02.0", "e1000e")
            return f
        }()] {
            let fs = f.host.doctor(DoctorOptions(device: try PCIAddress(parsing: "0000:01:01.0"), probeKernel: false))
            let g = try #require(fs.first { $0.id == "device.0000:01:01.0.group" })
            #expect(g.status == .fail)
            followAll(DoctorWording.fix(g), in: f)
            let after = f.host.doctor(DoctorOptions(device: try PCIAddress(parsing: "0000:01:01.0"), probeKernel: false))
            #expect(after.first { $0.id == "device.0000:01:01.0.group" }?.status == .ok, "\(after)")
            // The driver finding's fix, when there is one to follow.
            if let d = after.first(where: { $0.id == "device.0000:01:01.0.driver" }), d.status != .ok {
                followAll(DoctorWording.fix(d), in: f)
            }
            #expect(f.driver("0000:01:01.0") == "vfio-pci")
        }
    }

    @Test func aRollbackThatDidNotTakeIsRetriedAsPrinted() throws {
        let f = try guestLikeFixture()
        f.kernel.failProbe("vfio-pci")
        f.kernel.failProbe("nvme")
        do {
            _ = try f.host.bind(PCIAddress(parsing: "0000:00:05.0"))
            Issue.record("bind succeeded")
        } catch {
            f.kernel.clearFailures()  // "once the cause is fixed"
            followAll(CLIWording.text(error.remedies), in: f)
        }
        let nvme = try PCIAddress(parsing: "0000:00:05.0")
        #expect(f.driver("0000:00:05.0") == "nvme" && f.host.bindingRecord(nvme) == nil)
    }

    @Test(arguments: ["owner", "mode"])
    func stateDirectoryFixesWorkAsPrinted(_ how: String) throws {
        let f = try guestLikeFixture()
        let dir = f.root + "/run/vfiokit/bindings"
        try f.fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
        #expect(how == "owner" ? chown(dir, 4321, 4321) == 0 : chmod(dir, 0o777) == 0)
        do {
            _ = try f.host.bind(PCIAddress(parsing: "0000:00:05.0"))
            Issue.record("bind succeeded")
        } catch {
            followAll(CLIWording.text(error.remedies), in: f)
        }
        _ = try f.host.bind(PCIAddress(parsing: "0000:00:05.0"))
        #expect(f.driver("0000:00:05.0") == "vfio-pci")
    }

    @Test func unbindWhileHeldSaysWhichProcessAndTheRetryWorks() throws {
        let f = try guestLikeFixture()
        let a = try f.bindHeldByQEMU("0000:00:02.0")
        let error = try #require(f.refusedUnbind(a))
        let cmds = printedCommands(CLIWording.text(error.remedies) ?? "")
        let retry = "vfioctl unbind \(a) --restore"
        #expect(cmds == ["kill 4242", retry, retry + " --force"], "\(CLIWording.message(error))")
        // kill 4242: the fixture process goes away; then the printed retry.
        try f.fm.removeItem(atPath: f.root + "/proc/4242")
        #expect(follow(try #require(cmds.dropLast().last), in: f).status == 0)
        #expect(f.driver("0000:00:02.0") == nil)
    }

    @Test func deviceNodeFixNamesThisUser() throws {
        let f = try guestLikeFixture()
        let fs = f.host.doctor(DoctorOptions(probeKernel: false))
        if let h = fs.first(where: { $0.id == "hugepages" }).flatMap(DoctorWording.fix) {
            #expect(!h.contains("*"), "a glob is not a command: \(h)")
        }
    }
}
