import Foundation
import Testing
import VFIOCommands
import VFIOKit

/// Runs vfioctl in-process against a fixture tree (read-only commands only: the
/// CLI's host has no fake kernel, so it must not write into the fixture).
func vfioctl(_ args: [String], root: String? = nil) -> (status: Int32, out: String, err: String) {
    let full = args + (root.map { ["--sysfs-root", $0] } ?? [])
    let (status, cap) = CommandOutput.capturing { VFIOCtl.execute(full) }
    return (status, cap.stdout, cap.stderr)
}

func jsonObject(_ text: String) throws -> [String: Any] {
    try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
}

@Suite struct CLIFixtureTests {
    @Test func listShowsDevicesInColumns() throws {
        let f = try guestLikeFixture()
        let r = vfioctl(["list"], root: f.root)
        #expect(r.status == 0)
        let lines = r.out.split(separator: "\n")
        #expect(lines.first?.hasPrefix("BDF") == true)
        #expect(lines.contains { $0.contains("0000:00:05.0") && $0.contains("nvme") && $0.contains("NVMe controller") && $0.contains("bindable") })
        #expect(lines.contains { $0.contains("0000:00:04.0") && $0.contains("bridge") })
        #expect(lines.contains { $0.contains("0000:00:06.0") && $0.contains("no-iommu-group") })
        // Aligned: the DRIVER column starts at the same offset on every line.
        let header = String(lines[0])
        let idsColumn = header.distance(from: header.startIndex, to: header.range(of: "IDS")!.lowerBound)
        for l in lines.dropFirst() {
            let chars = Array(l)
            #expect(chars[idsColumn - 1] == " " && chars[idsColumn] != " ")
        }
    }

    @Test func listJSONHasTheDocumentedKeys() throws {
        let f = try guestLikeFixture()
        let r = vfioctl(["list", "--json"], root: f.root)
        #expect(r.status == 0)
        let devices = try #require(try jsonObject(r.out)["devices"] as? [[String: Any]])
        #expect(devices.count == 6)
        let keys: Set<String> = ["address", "vendor_id", "device_id", "subsystem_vendor_id", "subsystem_device_id",
                                 "class_code", "class_name", "driver", "driver_override", "iommu_group", "numa_node",
                                 "vfio_cdev", "is_bridge", "header_type", "readiness", "fix"]
        for d in devices { #expect(Set(d.keys) == keys) }
        let nvme = try #require(devices.first { $0["address"] as? String == "0000:00:05.0" })
        #expect(nvme["driver"] as? String == "nvme" && nvme["iommu_group"] as? Int == 5 && nvme["class_code"] as? String == "0x010802")
        #expect(nvme["driver_override"] is NSNull)
    }

    @Test func listGroupsShowsViability() throws {
        let f = try guestLikeFixture()
        try f.bindLink("0000:01:02.0", "e1000e")
        let r = vfioctl(["list", "--groups", "--json"], root: f.root)
        let groups = try #require(try jsonObject(r.out)["groups"] as? [[String: Any]])
        let g4 = try #require(groups.first { $0["id"] as? Int == 4 })
        #expect(g4["viable"] as? Bool == false && g4["blocking"] as? [String] == ["0000:01:02.0"])
        #expect((g4["members"] as? [[String: Any]])?.count == 3)
        let text = vfioctl(["list", "--groups"], root: f.root)
        #expect(text.out.contains("NOT viable") && text.out.contains("e1000e"))
    }

    @Test func showExplainsGroupAndUsers() throws {
        let f = try guestLikeFixture()
        try f.mount("259:0", at: "/mnt")
        let r = vfioctl(["show", "00:05.0"], root: f.root)
        #expect(r.status == 0)
        #expect(r.out.contains("NVMe controller") && r.out.contains("nvme0n1 is mounted on /mnt"))
        let j = try jsonObject(vfioctl(["show", "0000:00:05.0", "--json"], root: f.root).out)
        #expect(Set(j.keys) == ["device", "readiness", "fix", "group", "uses", "holders", "binding_record", "vfio", "vfio_error"])
        #expect(j["readiness"] as? String == "in-use")
    }

    @Test func invalidAddressIsAUsageErrorWithTheExpectedForm() throws {
        let f = try guestLikeFixture()
        for cmd in ["show", "bind", "unbind", "doctor"] {
            let r = vfioctl([cmd, "0000:00:3"], root: f.root)
            #expect(r.status == 64, "\(cmd)")
            #expect(r.err.contains("DDDD:BB:DD.F"), "\(cmd)")
        }
    }

    @Test func missingDeviceIsOneSentenceAndAHint() throws {
        let f = try guestLikeFixture()
        let r = vfioctl(["show", "0000:00:1f.0"], root: f.root)
        #expect(r.status == 1)
        #expect(r.err.hasPrefix("error: find PCI device on 0000:00:1f.0 failed: no PCI device 0000:00:1f.0"))
        #expect(r.err.contains("hint: `vfioctl list`"))
        let j = vfioctl(["show", "0000:00:1f.0", "--json"], root: f.root)
        let e = try #require(try jsonObject(j.out)["error"] as? [String: Any])
        #expect(e["operation"] as? String == "find PCI device" && e["hint"] is String && e["errno"] is NSNull)
        #expect(e["operation_kind"] as? String == "step" && e["errno_name"] is NSNull)
        let remedies = try #require(e["remedies"] as? [[String: Any]])
        #expect(remedies.first?["kind"] as? String == "list-devices", "\(remedies)")
    }

    @Test func bindOfAGrouplessDeviceChangesNothing() throws {
        let f = try guestLikeFixture()
        let r = vfioctl(["bind", "0000:00:06.0"], root: f.root)
        #expect(r.status == 1 && r.err.contains("is in no IOMMU group"))
        #expect(f.read("/sys/bus/pci/devices/0000:00:06.0/driver_override") == "(null)\n")
        #expect(!f.exists("/run/vfiokit/bindings/0000:00:06.0.json"))
    }

    @Test func bindOfAMountedDeviceIsRefused() throws {
        let f = try guestLikeFixture()
        try f.mount("259:0", at: "/tmp/x")
        let r = vfioctl(["bind", "0000:00:05.0", "--json"], root: f.root)
        #expect(r.status == 1)
        let e = try #require(try jsonObject(r.out)["error"] as? [String: Any])
        #expect((e["detail"] as? String)?.contains("nvme0n1 is mounted on /tmp/x") == true)
        #expect(f.driver("0000:00:05.0") == "nvme")
    }

    @Test func doctorJSONAndExitStatus() throws {
        let f = try guestLikeFixture()
        let r = vfioctl(["doctor", "--json", "--memlock", "64M"], root: f.root)
        #expect(r.status == 1)  // no /dev/iommu in the fixture: a fail
        let j = try jsonObject(r.out)
        #expect(j["worst"] as? String == "fail")
        let findings = try #require(j["findings"] as? [[String: Any]])
        for x in findings { #expect(Set(x.keys) == ["id", "status", "title", "detail", "fix", "remedies"]) }
        #expect(findings.contains { $0["id"] as? String == "memlock" })
        let bad = vfioctl(["doctor", "--memlock", "lots"], root: f.root)
        #expect(bad.status == 64 && bad.err.contains("is not a size"))
    }

    @Test func everyCommandHasHelpWithExamples() {
        for cmd in VFIOCtl.subcommandTypes {
            let help = VFIOCtl.helpMessage(for: cmd)
            #expect(help.contains("Example"), "\(cmd)")
        }
    }

    @Test func manualAndCompletionAreGenerated() {
        let man = vfioctl(["manual"])
        #expect(man.status == 0 && man.out.hasPrefix(".TH VFIOCTL 1"))
        for name in ["list", "show", "bind", "unbind", "doctor"] { #expect(man.out.contains(".SS \(name)")) }
        let bash = vfioctl(["--generate-completion-script", "bash"])
        #expect(bash.status == 0 && bash.out.contains("vfioctl"))
    }
}
