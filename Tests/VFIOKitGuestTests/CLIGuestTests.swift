import Foundation
import Testing
import VFIOKitTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Runs the built `vfioctl` (next to the test bundle: .build/debug/vfioctl).
struct VFIOCtlBinary {
    static var path: String {
        let here = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        // The xctest bundle is a file in .build/debug; vfioctl sits beside it.
        return here.appendingPathComponent("vfioctl").path
    }

    struct Result {
        var status: Int32
        var out: String
        var err: String
        func json() throws -> [String: Any] {
            try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        }
    }

    static func run(_ args: String...) throws -> Result { try run(args) }

    static func run(_ args: [String]) throws -> Result {
        try sh(path, args)
    }

    /// Runs `exe` with posix_spawn (Foundation's Process needs a socketpair the
    /// guest's CFRunLoop cannot make), stdout and stderr into files.
    static func sh(_ exe: String, _ args: [String]) throws -> Result {
        let tag = UUID().uuidString
        let outPath = NSTemporaryDirectory() + "vfioctl-\(tag).out", errPath = NSTemporaryDirectory() + "vfioctl-\(tag).err"
        defer { unlink(outPath); unlink(errPath) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        let argv: [UnsafeMutablePointer<CChar>?] = ([exe] + args).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, exe, &actions, nil, argv, environ)
        try #require(rc == 0, "posix_spawn \(exe): \(rc)")
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let code: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        let out = try String(contentsOfFile: outPath, encoding: .utf8)
        let err = try String(contentsOfFile: errPath, encoding: .utf8)
        return Result(status: code, out: out, err: err)
    }
}

enum GuestDevices {
    static var env: [String: String] { ProcessInfo.processInfo.environment }
    static func bdf(_ role: String) throws -> String { try #require(optional(role), "\(role) not set by the guest") }
    /// A role the guest may leave empty (VFIOKIT_BRIDGE with virtio-iommu).
    static func optional(_ role: String) -> String? { env[role].flatMap { $0.isEmpty ? nil : $0 } }

    static func driver(_ bdf: String) -> String? {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/sys/bus/pci/devices/\(bdf)/driver"))?
            .split(separator: "/").last.map(String.init)
    }
    static func override(_ bdf: String) -> String? {
        let s = (try? String(contentsOfFile: "/sys/bus/pci/devices/\(bdf)/driver_override", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines)
        return s == "(null)" ? nil : s
    }
    static func cdevs(_ bdf: String) -> [String] {
        (try? FileManager.default.contentsOfDirectory(atPath: "/sys/bus/pci/devices/\(bdf)/vfio-dev")) ?? []
    }
    static func waitFor(_ seconds: Double, _ cond: () -> Bool) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            if cond() { return true }
            usleep(50_000)
        }
        return cond()
    }
}

@Suite(.serialized, .exclusiveGuestDevices, .guestOnly("CLIGuestTests"))
struct CLIGuestTests {
    @Test func listShowsTheTestDevicesWithGroupsAndDrivers() throws {
        let edu = try GuestDevices.bdf("VFIOKIT_EDU"), a = try GuestDevices.bdf("VFIOKIT_EDU_PAIR_A")
        let b = try GuestDevices.bdf("VFIOKIT_EDU_PAIR_B"), bridge = try Guest.requireBridgeAsExpected()
        let nvme = try GuestDevices.bdf("VFIOKIT_NVME")
        let r = try VFIOCtlBinary.run("list", "--json")
        #expect(r.status == 0)
        let devices = try #require(try r.json()["devices"] as? [[String: Any]])
        func d(_ bdf: String) throws -> [String: Any] { try #require(devices.first { $0["address"] as? String == bdf }) }
        for e in [edu, a, b] {
            #expect(try d(e)["vendor_id"] as? String == "0x1234" && d(e)["device_id"] as? String == "0x11e8")
        }
        let gA = try #require(try d(a)["iommu_group"] as? Int)
        #expect(try d(b)["iommu_group"] as? Int == gA)
        #expect(try d(edu)["iommu_group"] as? Int != gA)
        if let bridge {
            #expect(try d(bridge)["iommu_group"] as? Int == gA)
            #expect(try d(bridge)["is_bridge"] as? Bool == true && d(bridge)["readiness"] as? String == "bridge")
        }
        #expect(try d(nvme)["driver"] as? String == "nvme" && d(nvme)["class_name"] as? String == "NVMe controller")
        #expect(try d(edu)["driver"] is NSNull)
        // Text form and groups.
        let text = try VFIOCtlBinary.run("list")
        #expect(text.status == 0 && text.out.contains(nvme) && text.out.contains("NVMe controller"))
        let groups = try VFIOCtlBinary.run("list", "--groups", "--json")
        let g = try #require((try groups.json()["groups"] as? [[String: Any]])?.first { $0["id"] as? Int == gA })
        #expect(Set((g["members"] as? [[String: Any]] ?? []).compactMap { $0["address"] as? String }) == Set([a, b] + (bridge.map { [$0] } ?? [])))
    }

    @Test func bindLoneEduMakesTheCdevAndShowListsRegionsAndIRQs() throws {
        let edu = try GuestDevices.bdf("VFIOKIT_EDU")
        defer { _ = try? VFIOCtlBinary.run("unbind", edu, "--restore") }
        let r = try VFIOCtlBinary.run("bind", edu, "--json")
        #expect(r.status == 0, "\(r.err)")
        #expect(GuestDevices.driver(edu) == "vfio-pci")
        let cdev = try #require(GuestDevices.cdevs(edu).first)
        #expect(FileManager.default.fileExists(atPath: "/dev/vfio/devices/\(cdev)"))
        let bound = try #require((try r.json()["bound"] as? [[String: Any]])?.first)
        #expect(bound["driver"] as? String == "vfio-pci" && bound["vfio_cdev"] as? String == cdev)

        let show = try VFIOCtlBinary.run("show", edu, "--json")
        #expect(show.status == 0)
        let j = try show.json()
        #expect((j["device"] as? [String: Any])?["vfio_cdev"] as? String == cdev)
        let vfio = try #require(j["vfio"] as? [String: Any], "show has no VFIO details: \(j["vfio_error"] ?? "?")")
        let regions = try #require(vfio["regions"] as? [[String: Any]])
        let bar0 = try #require(regions.first { $0["index"] as? Int == 0 })
        #expect(bar0["size"] as? Int == 1 << 20 && bar0["mmap"] as? Bool == true)
        let irqs = try #require(vfio["irqs"] as? [[String: Any]])
        #expect(irqs.contains { $0["name"] as? String == "MSI" && $0["count"] as? Int == 1 })
        #expect(irqs.contains { $0["name"] as? String == "INTx" && $0["count"] as? Int == 1 })
        let text = try VFIOCtlBinary.run("show", edu)
        #expect(text.status == 0 && text.out.contains("VFIO cdev") && text.out.contains("/dev/vfio/devices/\(cdev)"))

        // A second bind changes nothing.
        let again = try VFIOCtlBinary.run("bind", edu)
        #expect(again.status == 0 && again.out.contains("already on vfio-pci"))

        let back = try VFIOCtlBinary.run("unbind", edu, "--restore")
        #expect(back.status == 0, "\(back.err)")
        #expect(GuestDevices.driver(edu) == nil && GuestDevices.override(edu) == nil)
        #expect(!FileManager.default.fileExists(atPath: "/run/vfiokit/bindings/\(edu).json"))
    }

    @Test func pairSharesAGroupAndGroupBindTakesBoth() throws {
        let a = try GuestDevices.bdf("VFIOKIT_EDU_PAIR_A"), b = try GuestDevices.bdf("VFIOKIT_EDU_PAIR_B")
        let bridge = try Guest.requireBridgeAsExpected()
        defer {
            _ = try? VFIOCtlBinary.run("unbind", a, "--restore")
            _ = try? VFIOCtlBinary.run("unbind", b, "--restore")
        }
        // One function alone: the other function and the bridge are named.
        let one = try VFIOCtlBinary.run("bind", a)
        #expect(one.status == 0, "\(one.err)")
        #expect(one.out.contains(b) && one.out.contains("the group is viable"))
        if let bridge { #expect(one.out.contains(bridge)) }
        #expect(GuestDevices.driver(a) == "vfio-pci" && GuestDevices.driver(b) == nil)
        let show = try VFIOCtlBinary.run("show", a, "--json")
        let members = try #require(((try show.json()["group"]) as? [String: Any])?["members"] as? [[String: Any]])
        #expect(members.first { $0["address"] as? String == b }?["status"] as? String == "unbound")
        _ = try VFIOCtlBinary.run("unbind", a, "--restore")

        // The whole group.
        let all = try VFIOCtlBinary.run("bind", a, "--group", "--json")
        #expect(all.status == 0, "\(all.err)")
        #expect(GuestDevices.driver(a) == "vfio-pci" && GuestDevices.driver(b) == "vfio-pci")
        if let bridge { #expect(GuestDevices.driver(bridge) == nil || GuestDevices.driver(bridge) == "pcieport") }
        let groups = try VFIOCtlBinary.run("list", "--groups", "--json")
        let g = try #require((try groups.json()["groups"] as? [[String: Any]])?.first {
            (($0["members"] as? [[String: Any]]) ?? []).contains { $0["address"] as? String == a }
        })
        #expect(g["viable"] as? Bool == true)
        let gid = try #require(g["id"] as? Int)
        #expect(FileManager.default.fileExists(atPath: "/dev/vfio/\(gid)"))
    }

    @Test func nvmeIsRefusedWhileMountedAndRestoredAfterwards() throws {
        let nvme = try GuestDevices.bdf("VFIOKIT_NVME")
        let block = try GuestDevices.bdf("VFIOKIT_NVME_BLOCK")
        let dir = "/tmp/vfiokit-cli-mnt"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer {
            _ = try? VFIOCtlBinary.sh("/bin/umount", [dir])
            _ = try? VFIOCtlBinary.run("unbind", nvme, "--restore")
        }
        let m = try VFIOCtlBinary.sh("/bin/mount", ["-t", "ext4", block, dir])
        try #require(m.status == 0, "mount failed: \(m.err)")

        let refused = try VFIOCtlBinary.run("bind", nvme)
        #expect(refused.status != 0)
        #expect(refused.err.contains("is mounted on \(dir)"), "\(refused.err)")
        #expect(refused.err.contains("hint:"))
        #expect(GuestDevices.driver(nvme) == "nvme" && GuestDevices.override(nvme) == nil)
        #expect(FileManager.default.fileExists(atPath: block))

        let u = try VFIOCtlBinary.sh("/bin/umount", [dir])
        try #require(u.status == 0)
        let ok = try VFIOCtlBinary.run("bind", nvme)
        #expect(ok.status == 0, "\(ok.err)")
        #expect(GuestDevices.driver(nvme) == "vfio-pci")
        #expect(!GuestDevices.cdevs(nvme).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: block))

        let back = try VFIOCtlBinary.run("unbind", nvme, "--restore")
        #expect(back.status == 0, "\(back.err)")
        #expect(GuestDevices.driver(nvme) == "nvme" && GuestDevices.override(nvme) == nil)
        #expect(GuestDevices.waitFor(15) { FileManager.default.fileExists(atPath: block) }, "\(block) did not come back")
    }

    @Test func doctorReportsInterruptRemappingPerIOMMU() throws {
        let iommu = try Guest.requireIOMMU()
        let r = try VFIOCtlBinary.run("doctor", "--json", "--memlock", "64M")
        let j = try r.json()
        let findings = try #require(j["findings"] as? [[String: Any]])
        let ir = try #require(findings.first { $0["id"] as? String == "interrupt-remapping" })
        if iommu == .virtio {
            #expect(ir["status"] as? String == "fail" || ir["status"] as? String == "warn")
            #expect((ir["detail"] as? String)?.contains("virtio-iommu") == true)
        } else {
            #expect(ir["status"] as? String == "ok", "\(ir)")
            #expect(r.status == 0, "\(r.out)")
        }
        #expect(findings.first { $0["id"] as? String == "dev.iommu" }?["status"] as? String == "ok")
        #expect(findings.first { $0["id"] as? String == "vfio.cdev" }?["status"] as? String == "ok")
        let text = try VFIOCtlBinary.run("doctor", try GuestDevices.bdf("VFIOKIT_EDU"))
        #expect(text.out.contains("Interrupt remapping") && text.out.contains("IOMMU group"))
    }

    @Test func badInputsGiveClearErrorsAndChangeNothing() throws {
        let before = try VFIOCtlBinary.run("list", "--json").out
        let bad = try VFIOCtlBinary.run("bind", "00:3")
        #expect(bad.status == 64 && bad.err.contains("DDDD:BB:DD.F"))
        let missing = try VFIOCtlBinary.run("bind", "0000:00:1e.7")
        #expect(missing.status == 1 && missing.err.contains("no PCI device 0000:00:1e.7"))
        let showMissing = try VFIOCtlBinary.run("show", "0000:00:1e.7", "--json")
        #expect(showMissing.status == 1)
        #expect(try showMissing.json()["error"] != nil)
        // A device without an IOMMU group: the IOMMU's own PCI function (AMD-Vi at 00:01.0,
        // virtio-iommu at 00:02.0). Under VT-d (no PCI function of its own) every device has a group.
        let devices = try #require(try VFIOCtlBinary.run("list", "--json").json()["devices"] as? [[String: Any]])
        let groupless = devices.filter { $0["iommu_group"] is NSNull }.compactMap { $0["address"] as? String }
        switch try Guest.requireIOMMU() {
        case .intel: #expect(groupless == [])
        case .amd: #expect(groupless == ["0000:00:01.0"])
        case .virtio: #expect(groupless == ["0000:00:02.0"])
        }
        for lone in groupless {
            let r = try VFIOCtlBinary.run("bind", lone)
            #expect(r.status == 1 && r.err.contains("no IOMMU group"), "\(r.err)")
        }
        // The bridge is never handed to vfio-pci.
        if let bridge = try Guest.requireBridgeAsExpected() {
            let br = try VFIOCtlBinary.run("bind", bridge)
            #expect(br.status == 1 && br.err.contains("bridge"), "\(br.err)")
        }
        #expect(try VFIOCtlBinary.run("list", "--json").out == before)
    }
}
