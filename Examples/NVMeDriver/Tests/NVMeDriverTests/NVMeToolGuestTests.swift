import Foundation
import Testing
import VFIOKitTestSupport

/// `vfio-nvme` as a user runs it in the guest.
@Suite(.serialized, .exclusiveGuestDevices, .guestOnly("NVMeToolGuestTests"))
struct NVMeToolGuestTests {
    /// Not bound: the error names the driver that has the controller and the
    /// fix; the fix, run literally, works.
    @Test func notBoundHintWorksWhenFollowedLiterally() throws {
        let bdf = try NVMeGuest.bdf()
        defer { try? Tool.restore(bdf) }
        try #require(Guest.driver(of: bdf) == "nvme")
        let r = try Tool.nvme("identify", bdf)
        #expect(r.status == 1)
        #expect(r.err.contains("is bound to the kernel's nvme driver, not vfio-pci"), "\(r.err)")
        let hint = try #require(r.err.split(separator: "\n").first { $0.contains("hint:") }.map(String.init))
        let command = try #require(hint.split(separator: "`").dropFirst().first.map(String.init), "no command in \(hint)")
        #expect(command == "vfioctl bind \(bdf)")
        // Run it as a user would: by name, from a shell, with the built tools on PATH.
        let path = Tool.directory + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")
        let fix = try Tool.run("/bin/sh", ["-c", command], environment: ["PATH": path])
        #expect(fix.status == 0, "\(command): \(fix.err)")
        let ok = try Tool.nvme("identify", bdf)
        #expect(ok.status == 0, "\(ok.err)")
        #expect(ok.text.contains("sn        : vfiokit0"))
        #expect(ok.text.contains("LBA size: 512 bytes") && ok.text.contains("capacity: 64 MiB"))
        // The other half of the hint gives it back.
        let back = hint.split(separator: "`").dropFirst(3).first.map(String.init)
        #expect(back == "vfioctl unbind \(bdf) --restore")
    }

    @Test func wrongDevicesAreRefusedClearly() throws {
        let edu = try Guest.requireEdu()
        let r = try Tool.nvme("identify", edu)
        #expect(r.status == 1 && r.err.contains("is not an NVMe controller (class 0x010802)") && r.err.contains("hint:"))
        let j = try Tool.nvme("identify", edu, "--json")
        #expect(j.status == 1)
        #expect(try j.json()["kind"] as? String == "notNVMe")
        let bad = try Tool.nvme("identify", "05.0")
        #expect(bad.status == 1 && bad.err.contains("not a PCI address"))
        let usage = try Tool.nvme("perf", edu, "--qd", "0")
        #expect(usage.status == 64)
        let mode = try Tool.nvme("identify", edu, "--mode", "type3")
        #expect(mode.status == 64 && mode.err.contains("--mode must be"))
    }

    @Test func identifyReadWriteAndPerfWithJSON() throws {
        let bdf = try NVMeGuest.bdf()
        let lba = NVMeGuest.patternLBA + 12000
        let expected = try NVMeGuest.pattern(lba: lba, blocks: 16)
        try Tool.bind(bdf)
        var restored = false
        defer { if !restored { try? Tool.restore(bdf) } }

        let id = try Tool.nvme("identify", bdf, "--json")
        #expect(id.status == 0, "\(id.err)")
        let j = try id.json()
        #expect(j["sn"] as? String == "vfiokit0" && j["vid"] as? String == "0x1b36")
        let ns = try #require((j["namespaces"] as? [[String: Any]])?.first)
        #expect(ns["nsid"] as? Int == 1 && ns["lba_size"] as? Int == 512 && ns["nsze"] as? Int == 131072)
        #expect(ns["capacity_bytes"] as? Int == 64 << 20)

        // read: raw bytes on stdout, byte for byte the image.
        let r = try Tool.nvme("read", bdf, "--lba", "\(lba)", "--count", "16", "--mode", "type1v2", "--poll")
        #expect(r.status == 0, "\(r.err)")
        #expect(difference(Array(r.out), expected) == nil)
        let rj = try Tool.nvme("read", bdf, "--lba", "\(lba)", "--count", "2", "--json")
        let b64 = try #require(try rj.json()["data"] as? String)
        #expect(Data(base64Encoded: b64).map(Array.init) == Array(expected.prefix(1024)))

        // write: stdin to blocks; a length that is no whole number of blocks is refused with a fix.
        let data = Data((0..<4096).map { UInt8(truncatingIfNeeded: $0 * 13 + 1) })
        let w = try Tool.nvme("write", bdf, "--lba", "\(lba)", "--json", stdin: data)
        #expect(w.status == 0, "\(w.err)")
        #expect(try w.json()["count"] as? Int == 8)
        let odd = try Tool.nvme("write", bdf, "--lba", "\(lba)", stdin: Data(count: 100))
        #expect(odd.status == 1 && odd.err.contains("whole 512-byte blocks") && odd.err.contains("conv=sync"))
        let back = try Tool.nvme("read", bdf, "--lba", "\(lba)", "--count", "8")
        #expect(back.out == data)

        // perf: JSON totals and percentiles, interrupts and polling, reads and writes.
        // (Writes stay in the pattern's last 4 MiB, which no test reads.)
        let scratch = ["--lba", "\(NVMeGuest.scratchLBA)", "--count", "8192"]
        for extra in [[], ["--poll"], ["--write"] + scratch] {
            let p = try Tool.nvme(["perf", bdf, "--qd", "4", "--bs", "4k", "--time", "1s", "--json"] + extra)
            #expect(p.status == 0, "\(p.err)")
            let pj = try p.json()
            #expect((pj["ios"] as? Int ?? 0) > 10 && (pj["iops"] as? Double ?? 0) > 0 && (pj["mbps"] as? Double ?? 0) > 0)
            #expect(pj["interrupts"] as? Bool == !extra.contains("--poll") && pj["write"] as? Bool == extra.contains("--write"))
            let lat = try #require(pj["latency_us"] as? [String: Double])
            #expect(lat["min"]! > 0 && lat["min"]! <= lat["p50"]! && lat["p50"]! <= lat["p99"]! && lat["p99"]! <= lat["max"]!)
        }
        // Text: a progress line on stderr, the totals on stdout.
        let t = try Tool.nvme("perf", bdf, "--qd", "2", "--bs", "512", "--time", "2s")
        #expect(t.status == 0 && t.text.contains("IOPS:") && t.text.contains("latency (us): min"))
        #expect(t.err.contains("IOPS") && t.err.contains("MB/s"), "\(t.err)")

        // The kernel sees what `write` wrote.
        try Tool.restore(bdf)
        restored = true
        try NVMeGuest.waitForKernelDriver(bdf)
        #expect(try NVMeGuest.kernelRead(lba: lba, blocks: 8) == Array(data))
    }

    /// SIGINT during perf: the run stops, the controller is shut down and
    /// released, and the kernel's driver can take it back.
    @Test func interruptedPerfReleasesTheController() throws {
        let bdf = try NVMeGuest.bdf()
        try Tool.bind(bdf)
        var restored = false
        defer { if !restored { try? Tool.restore(bdf) } }
        let exe = Tool.directory + "/vfio-nvme"
        let args: [String] = [exe, "perf", bdf, "--qd", "8", "--time", "60s", "--json"]
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        let out = NSTemporaryDirectory() + "perf-sigint.out"
        defer { unlink(out) }
        posix_spawn_file_actions_addopen(&actions, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        // A child inherits the signal mask: start it with nothing blocked, as a shell would.
        let (rc, pid) = spawnWithNoSignalsBlocked(exe, args, &actions)
        try #require(rc == 0)
        // Once the controller is up (the perf loop runs), interrupt.
        usleep(3_000_000)
        kill(pid, SIGINT)
        var status: Int32 = 0
        let start = Date()
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        #expect(Date().timeIntervalSince(start) < 20, "perf stopped promptly")
        #expect(status & 0x7f == 0 && (status >> 8) & 0xff == 0, "clean exit after SIGINT, status \(status)")
        let j = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out))) as? [String: Any])
        #expect((j["seconds"] as? Double ?? 60) < 30 && (j["ios"] as? Int ?? 0) > 0)
        try Tool.restore(bdf)
        restored = true
        try NVMeGuest.waitForKernelDriver(bdf)
    }
}

extension Tool {
    static func nvme(_ args: [String], stdin: Data? = nil) throws -> Result { try run(directory + "/vfio-nvme", args, stdin: stdin) }
}
