import Foundation
import Testing
import VFIOKitTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// A `vfioctl` child that runs until told to stop (`attach --hold`), stdout in a file.
private final class Holder {
    let pid: pid_t
    let outPath: String
    var exited = false

    init(_ args: [String]) throws {
        outPath = NSTemporaryDirectory() + "holder-\(UUID().uuidString).out"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, outPath + ".err", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        let (rc, p) = spawnWithNoSignalsBlocked(VFIOCtlBinary.path, [VFIOCtlBinary.path] + args, &actions)
        try #require(rc == 0, "posix_spawn: \(rc)")
        pid = p
    }

    var output: String { ((try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "") + ((try? String(contentsOfFile: outPath + ".err", encoding: .utf8)) ?? "") }

    /// Waits until the child prints `text` (or exits, or 60 s pass).
    func waitFor(_ text: String) -> Bool {
        _ = GuestDevices.waitFor(60) { output.contains(text) || hasExited() }
        return output.contains(text)
    }

    func hasExited() -> Bool {
        if exited { return true }
        var status: Int32 = 0
        if waitpid(pid, &status, WNOHANG) == pid { exited = true }
        return exited
    }

    func stop() {
        if !hasExited() {
            kill(pid, SIGTERM)
            _ = GuestDevices.waitFor(20) { hasExited() }
            if !exited { kill(pid, SIGKILL); var s: Int32 = 0; _ = waitpid(pid, &s, 0); exited = true }
        }
        unlink(outPath)
        unlink(outPath + ".err")
    }
}

/// The commands in a printed hint: every `...` span, in order.
private func printedCommands(_ text: String) -> [String] {
    text.split(separator: "`", omittingEmptySubsequences: false).enumerated().filter { $0.offset % 2 == 1 }.map { String($0.element) }
}

/// Runs a printed command as printed: `vfioctl ...` with the built binary, anything else with /bin/sh.
private func runPrinted(_ command: String) throws -> VFIOCtlBinary.Result {
    if command.hasPrefix("vfioctl ") { return try VFIOCtlBinary.run(command.split(separator: " ").dropFirst().map(String.init)) }
    return try VFIOCtlBinary.sh("/bin/sh", ["-c", command])
}

private func hint(of r: VFIOCtlBinary.Result) -> String {
    r.err.components(separatedBy: "hint: ").dropFirst().joined(separator: " ")
}

private func writeSysfs(_ path: String, _ value: String) -> Bool {
    let fd = open(path, O_WRONLY)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    return value.withCString { write(fd, $0, strlen($0)) } >= 0
}

@Suite(.serialized, .exclusiveGuestDevices, .guestOnly("HostTruthGuestTests"))
struct HostTruthGuestTests {
    /// The lone edu had no driver: restoring it probes nothing and does not wait for a driver to appear.
    /// A wait would be `PCIHost.probeTimeout` (2 s) longer than a vfioctl command that waits for
    /// nothing (`show`, timed just before, so a loaded machine slows both): the bound is 1.5 s more.
    @Test func restoringADriverlessDeviceProbesNothingAndReturnsAtOnce() throws {
        let edu = try GuestDevices.bdf("VFIOKIT_EDU")
        defer { _ = try? VFIOCtlBinary.run("unbind", edu, "--restore") }
        let b = try VFIOCtlBinary.run("bind", edu)
        try #require(b.status == 0, "\(b.err)")
        let baselineStart = Date()
        let shown = try VFIOCtlBinary.run("show", edu)
        let baseline = Date().timeIntervalSince(baselineStart)
        try #require(shown.status == 0, "\(shown.err)")
        let start = Date()
        let r = try VFIOCtlBinary.run("unbind", edu, "--restore")
        let took = Date().timeIntervalSince(start)
        #expect(r.status == 0, "\(r.err)")
        #expect(took < baseline + 1.5, "unbind --restore took \(took) s, vfioctl show \(baseline) s")
        #expect(GuestDevices.driver(edu) == nil && GuestDevices.override(edu) == nil)
        #expect(!FileManager.default.fileExists(atPath: "/run/vfiokit/bindings/\(edu).json"))
    }

    /// A device held by another process (`vfioctl attach --hold`): opening it, its
    /// group mate, or its group names the holder, and the printed `kill` frees it.
    @Test func aHeldGroupNamesItsHolderAndThePrintedFixFreesIt() throws {
        let iommu = GuestDevices.env["VFIOKIT_IOMMU"] ?? "intel"
        let a = try GuestDevices.bdf("VFIOKIT_EDU_PAIR_A"), b = try GuestDevices.bdf("VFIOKIT_EDU_PAIR_B")
        defer {
            _ = try? VFIOCtlBinary.run("unbind", a, "--restore")
            _ = try? VFIOCtlBinary.run("unbind", b, "--restore")
        }
        let bound = try VFIOCtlBinary.run("bind", a, "--group")
        try #require(bound.status == 0, "\(bound.err)")
        let holder = try Holder(["attach", a, "--ioas", "new", "--hold"])
        defer { holder.stop() }
        try #require(holder.waitFor("holding: pid"), "the holder did not start: \(holder.output)")
        let who = "pid \(holder.pid) (vfioctl)"
        let groupLink = try FileManager.default.destinationOfSymbolicLink(atPath: "/sys/bus/pci/devices/\(a)/iommu_group")
        let group = try #require(groupLink.split(separator: "/").last.flatMap { Int($0) })

        // The same device: EINVAL from VFIO_DEVICE_BIND_IOMMUFD, with the holder named.
        let same = try VFIOCtlBinary.run("attach", a)
        #expect(same.status == 1 && same.err.contains("VFIO_DEVICE_BIND_IOMMUFD") && same.err.contains("EINVAL"), "\(same.err)")
        #expect(same.err.contains(who) && same.err.contains("one fd at a time"), "\(same.err)")

        // Its group mate: EPERM, the holder and the rule named, MSI isolation ruled out.
        let mate = try VFIOCtlBinary.run("attach", b)
        print("[\(iommu)] attach of the group mate while held:\n\(mate.err)")
        #expect(mate.status == 1 && mate.err.contains("EPERM"), "\(mate.err)")
        #expect(mate.err.contains(who) && mate.err.contains("IOMMU group \(group)") && mate.err.contains(a), "\(mate.err)")
        #expect(mate.err.contains("cannot be split between owners"), "\(mate.err)")
        #expect(!mate.err.contains("MSIs are not isolated") && mate.err.contains("MSI isolation is not the cause"), "\(mate.err)")

        // The group path: the group node cannot be opened (EBUSY), the holder named.
        let legacy = try VFIOCtlBinary.run("attach", b, "--container")
        #expect(legacy.status == 1 && legacy.err.contains("EBUSY") && legacy.err.contains(who), "\(legacy.err)")

        // list and show say so too.
        let list = try VFIOCtlBinary.run("list", "--json")
        let devices = try #require(try list.json()["devices"] as? [[String: Any]])
        #expect(devices.first { $0["address"] as? String == a }?["readiness"] as? String == "held")
        let show = try VFIOCtlBinary.run("show", b, "--json")
        let j = try show.json()
        let holders = try #require(j["holders"] as? [[String: Any]], "\(show.out)")
        #expect(holders.contains { $0["pid"] as? Int == Int(holder.pid) && $0["member"] as? String == a }, "\(holders)")
        #expect((j["vfio_error"] as? String)?.contains(who) == true, "\(j["vfio_error"] ?? "nil")")

        // Follow the printed fix: `kill PID`; then the group mate opens.
        let kill = try #require(printedCommands(hint(of: mate)).first { $0.hasPrefix("kill ") }, "\(mate.err)")
        #expect(kill == "kill \(holder.pid)")
        #expect(try runPrinted(kill).status == 0)
        #expect(GuestDevices.waitFor(20) { holder.hasExited() })
        let again = try VFIOCtlBinary.run("attach", b)
        #expect(again.status == 0, "\(again.err)")
    }

    /// Whether the IOMMU blocks no-snoop DMA, reported by attach (both paths), show and doctor.
    @Test func cacheCoherencyIsReportedAndAgreesEverywhere() throws {
        let iommu = GuestDevices.env["VFIOKIT_IOMMU"] ?? "intel"
        let edu = try GuestDevices.bdf("VFIOKIT_EDU")
        defer { _ = try? VFIOCtlBinary.run("unbind", edu, "--restore") }
        try #require(try VFIOCtlBinary.run("bind", edu).status == 0)
        // What the kernel's drivers do: VT-d enforces with ECAP.SC (bit 7), AMD-Vi always, virtio-iommu never.
        let expected: Bool
        switch iommu {
        case "intel":
            let dmar = try #require((try? FileManager.default.contentsOfDirectory(atPath: "/sys/class/iommu"))?.first { $0.hasPrefix("dmar") })
            let ecap = try #require(UInt64(try String(contentsOfFile: "/sys/class/iommu/\(dmar)/intel-iommu/ecap", encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines), radix: 16))
            expected = ecap & (1 << 7) != 0
            print("[intel] ECAP \(String(ecap, radix: 16)): SC = \(expected ? 1 : 0)")
        case "amd": expected = true
        default: expected = false
        }
        func cc(_ r: VFIOCtlBinary.Result) throws -> [String: Any] {
            try #require(try r.json()["cache_coherency"] as? [String: Any], "\(r.out)\(r.err)")
        }
        let native = try VFIOCtlBinary.run("attach", edu, "--json")
        #expect(native.status == 0, "\(native.err)")
        let n = try cc(native)
        print("[\(iommu)] iommufd: \(n)")
        #expect(n["enforced"] as? Bool == expected, "\(n)")
        #expect((n["query"] as? String)?.contains("VFIO_CHECK_EXTENSION(VFIO_DMA_CC_IOMMU)") == true)
        let legacy = try VFIOCtlBinary.run("attach", edu, "--container", "--json")
        #expect(legacy.status == 0, "\(legacy.err)")
        let l = try cc(legacy)
        print("[\(iommu)] container: \(l)")
        #expect(l["enforced"] as? Bool == expected, "\(l)")
        #expect((l["query"] as? String)?.contains("/dev/vfio/vfio") == true)
        let text = try VFIOCtlBinary.run("attach", edu)
        #expect(text.out.contains("cache coherency") && text.out.contains(expected ? "enforced" : "NOT enforced"), "\(text.out)")
        #expect(text.out.contains("wbinvd"))

        let show = try VFIOCtlBinary.run("show", edu, "--json")
        let vfio = try #require(try show.json()["vfio"] as? [String: Any], "\(show.out)")
        #expect((vfio["cache_coherency"] as? [String: Any])?["enforced"] as? Bool == expected, "\(vfio)")
        #expect(try VFIOCtlBinary.run("show", edu).out.contains("cache coherency"))

        let doctor = try VFIOCtlBinary.run("doctor", edu, "--json")
        let findings = try #require(try doctor.json()["findings"] as? [[String: Any]])
        let measured = try #require(findings.first { $0["id"] as? String == "device.\(edu).cache-coherency" }, "\(findings)")
        let predicted = try #require(findings.first { $0["id"] as? String == "cache-coherency" }, "\(findings)")
        let word = expected ? "enforced" : "NOT enforced"
        #expect((measured["detail"] as? String)?.hasPrefix(word) == true, "\(measured)")
        #expect((predicted["detail"] as? String)?.contains(": " + word) == true, "\(predicted)")
    }

    /// A bridge whose driver does not declare managed DMA (shpchp) blocks its
    /// group; the fix vfioctl prints, run as printed, makes the group work.
    /// Not on virtio-iommu (no bridge there: Tests/GuestManifest/virtio.txt).
    @Test func aBridgeOnShpchpIsNamedAndThePrintedFixMakesTheGroupWork() throws {
        let bridge = try GuestDevices.bdf("VFIOKIT_BRIDGE")
        let a = try GuestDevices.bdf("VFIOKIT_EDU_PAIR_A"), b = try GuestDevices.bdf("VFIOKIT_EDU_PAIR_B")
        let bootDriver = try GuestDevices.bdf("VFIOKIT_BRIDGE_BOOT_DRIVER")
        try #require(bootDriver == "shpchp")
        // The test's state: the bridge back on shpchp, as the kernel bound it at boot.
        try #require(writeSysfs("/sys/bus/pci/drivers/shpchp/bind", bridge), "cannot bind \(bridge) to shpchp")
        defer {
            _ = try? VFIOCtlBinary.run("unbind", a, "--restore")
            _ = try? VFIOCtlBinary.run("unbind", b, "--restore")
            _ = try? VFIOCtlBinary.run("unbind", bridge, "--restore")
            if GuestDevices.driver(bridge) == "shpchp" { _ = writeSysfs("/sys/bus/pci/drivers/shpchp/unbind", bridge) }
            #expect(GuestDevices.driver(bridge) == nil && GuestDevices.override(bridge) == nil, "the guest's bridge is not back to no driver")
        }
        #expect(GuestDevices.driver(bridge) == "shpchp")

        // Refused, naming the bridge and its driver.
        let single = try VFIOCtlBinary.run("bind", a)
        #expect(single.status == 1 && single.err.contains(bridge) && single.err.contains("shpchp"), "\(single.err)")
        let group = try VFIOCtlBinary.run("bind", a, "--group")
        #expect(group.status == 1 && group.err.contains(bridge) && group.err.contains("shpchp"), "\(group.err)")
        #expect(GuestDevices.driver(a) == nil && GuestDevices.driver(b) == nil && GuestDevices.driver(bridge) == "shpchp")

        // What list promises for the pair, run as printed.
        let list = try #require(try VFIOCtlBinary.run("list", "--json").json()["devices"] as? [[String: Any]])
        let row = try #require(list.first { $0["address"] as? String == a })
        let word = row["readiness"] as? String ?? "?"
        let fix: [String] = row["fix"] as? [String] ?? (word == "needs-group" ? ["vfioctl bind \(a) --group"] : ["vfioctl bind \(a)"])
        print("list: \(a) is \(word); fix: \(fix)")
        #expect(word == "needs-bridge-stub")
        for c in fix {
            let r = try runPrinted(c)
            #expect(r.status == 0, "`\(c)` failed: \(r.err)")
        }
        // The group works: both functions through the group path, attached and released.
        let bothBound = try VFIOCtlBinary.run("bind", a, "--group")
        #expect(bothBound.status == 0, "\(bothBound.err)")
        let use = try VFIOCtlBinary.run("attach", a, b, "--container")
        #expect(use.status == 0, "\(use.err)")
        #expect(GuestDevices.driver(bridge) == "pci-stub")

        // The other way in: the group bind's own hint, as printed, from the start.
        _ = try VFIOCtlBinary.run("unbind", a, "--restore")
        _ = try VFIOCtlBinary.run("unbind", b, "--restore")
        let back = try VFIOCtlBinary.run("unbind", bridge, "--restore")
        #expect(back.status == 0 && GuestDevices.driver(bridge) == "shpchp", "\(back.err)")
        let refused = try VFIOCtlBinary.run("bind", a, "--group")
        #expect(refused.status == 1)
        let cmds = printedCommands(hint(of: refused))
        #expect(!cmds.isEmpty, "\(refused.err)")
        for c in cmds {
            let r = try runPrinted(c)
            #expect(r.status == 0, "`\(c)` failed: \(r.err)")
        }
        #expect(GuestDevices.driver(a) == "vfio-pci" && GuestDevices.driver(b) == "vfio-pci" && GuestDevices.driver(bridge) == "pci-stub")
        #expect(try VFIOCtlBinary.run("attach", a, "--container").status == 0)
    }

    /// A mounted nvme: bind is refused with the commands that end the use, and they work as printed.
    @Test func aMountedDeviceIsFreedByThePrintedCommands() throws {
        let nvme = try GuestDevices.bdf("VFIOKIT_NVME"), block = try GuestDevices.bdf("VFIOKIT_NVME_BLOCK")
        let dir = "/tmp/vfiokit-hint-mnt"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer {
            _ = try? VFIOCtlBinary.sh("/bin/umount", [dir])
            _ = try? VFIOCtlBinary.run("unbind", nvme, "--restore")
        }
        try #require(try VFIOCtlBinary.sh("/bin/mount", ["-t", "ext4", block, dir]).status == 0)
        let refused = try VFIOCtlBinary.run("bind", nvme)
        #expect(refused.status == 1)
        let cmds = printedCommands(hint(of: refused))
        #expect(cmds.first == "umount \(dir)" && cmds.dropFirst().first == "vfioctl bind \(nvme)", "\(refused.err)")
        for c in cmds.prefix(2) {
            let r = try runPrinted(c)
            #expect(r.status == 0, "`\(c)` failed: \(r.err)")
        }
        #expect(GuestDevices.driver(nvme) == "vfio-pci")
        let back = try VFIOCtlBinary.run("unbind", nvme, "--restore")
        #expect(back.status == 0 && GuestDevices.driver(nvme) == "nvme", "\(back.err)")
        #expect(GuestDevices.waitFor(15) { FileManager.default.fileExists(atPath: block) })
    }

    /// A device not on vfio-pci, and a group path with a member left unbound: the printed binds work.
    @Test func theBindsPrintedForDevicesNotOnVFIOWork() throws {
        let edu = try GuestDevices.bdf("VFIOKIT_EDU")
        let a = try GuestDevices.bdf("VFIOKIT_EDU_PAIR_A"), b = try GuestDevices.bdf("VFIOKIT_EDU_PAIR_B")
        defer {
            for d in [edu, a, b] { _ = try? VFIOCtlBinary.run("unbind", d, "--restore") }
        }
        let notBound = try VFIOCtlBinary.run("attach", edu)
        #expect(notBound.status == 1)
        let cmds = printedCommands(hint(of: notBound))
        #expect(cmds == ["vfioctl bind \(edu)"], "\(notBound.err)")
        for c in cmds { #expect(try runPrinted(c).status == 0) }
        #expect(try VFIOCtlBinary.run("attach", edu).status == 0)

        // The group path wants every endpoint on vfio-pci: with B unbound it is refused, naming B.
        #expect(try VFIOCtlBinary.run("bind", a).status == 0)
        let strict = try VFIOCtlBinary.run("attach", a, "--container")
        #expect(strict.status == 1 && strict.err.contains(b), "\(strict.err)")
        let fix = printedCommands(hint(of: strict))
        #expect(fix == ["vfioctl bind \(a) --group"], "\(strict.err)")
        for c in fix { #expect(try runPrinted(c).status == 0) }
        let ok = try VFIOCtlBinary.run("attach", a, "--container")
        #expect(ok.status == 0, "\(ok.err)")
    }

    /// doctor's huge-page fix is a command that works as printed.
    @Test func doctorsHugePageFixWorksAsPrinted() throws {
        let file = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
        let before = try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        defer { _ = writeSysfs(file, before) }
        let r = try VFIOCtlBinary.run("doctor", "--json")
        let findings = try #require(try r.json()["findings"] as? [[String: Any]])
        let fix = try #require(findings.first { $0["id"] as? String == "hugepages" }?["fix"] as? String)
        let cmds = printedCommands(fix)
        #expect(cmds == ["echo 64 > \(file)"], "\(fix)")
        for c in cmds { #expect(try runPrinted(c).status == 0) }
        #expect(try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) == "64")
    }
}
