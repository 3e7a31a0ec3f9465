import Foundation
import Testing
import VFIOCommands
import VFIOKit
import SystemPackage
import VFIOKitTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Runs vfioctl in this process and captures its output.
private func run(_ args: [String]) -> (status: Int32, out: String, err: String) {
    let (status, cap) = CommandOutput.capturing { VFIOCtl.execute(args) }
    return (status, cap.stdout, cap.stderr)
}

private func json(_ text: String) throws -> [String: Any] {
    try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
}

/// Where the built binaries are: next to the test bundle (.build/debug).
private var buildDirectory: String {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    let exe = n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ".build/debug/x"
    return (exe as NSString).deletingLastPathComponent
}

/// Binds the lone edu to vfio-pci with the library binder and gives it back afterwards.
private func withEduOnVFIO(_ body: (String) throws -> Void) throws {
    let bdf = try Guest.requireEdu()
    let a = try PCIAddress(parsing: bdf)
    _ = try PCIHost.system.bind(a)
    defer { #expect(throws: Never.self, "put the device back") { _ = try PCIHost.system.unbind(a, restore: true) } }
    try body(bdf)
}

/// The targets of /proc/PID/fd.
private func fdTargets(of pid: Int32) throws -> [String] {
    let dir = "/proc/\(pid)/fd"
    return try FileManager.default.contentsOfDirectory(atPath: dir).map {
        try FileManager.default.destinationOfSymbolicLink(atPath: dir + "/" + $0)
    }
}

/// A child process with its stdout on a pipe, started with posix_spawn and a
/// clean signal mask (Foundation's Process needs a run loop wakeup socket that
/// the guest cannot always create).
private final class Child {
    let pid: pid_t
    let stdoutFD: Int32
    var collected = ""

    init(_ argv: [String]) throws {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw VFIOError(operation: .step("pipe"), errno: Errno(rawValue: errno)) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_addclose(&actions, fds[0])
        let (rc, p) = spawnWithNoSignalsBlocked(argv[0], argv, &actions)
        close(fds[1])
        guard rc == 0 else { close(fds[0]); throw VFIOError(operation: .step("posix_spawn"), errno: Errno(rawValue: rc), object: argv[0]) }
        pid = p
        stdoutFD = fds[0]
    }

    /// Reads stdout until `text` shows up, EOF, or `seconds` pass.
    func read(until text: String, seconds: Int) -> String {
        var buf = [UInt8](repeating: 0, count: 4096)
        let deadline = time(nil) + seconds
        while !collected.contains(text), time(nil) < deadline {
            var pfd = pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 500) > 0 else { continue }
            let n = Glibc.read(stdoutFD, &buf, buf.count)
            if n <= 0 { break }
            collected += String(decoding: buf[0..<n], as: UTF8.self)
        }
        return collected
    }

    /// Waits for the exit status (128 + signal when killed), at most `seconds`.
    func wait(seconds: Int) -> Int32? {
        let deadline = time(nil) + seconds
        while time(nil) < deadline {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
            }
            usleep(100_000)
        }
        kill(pid, SIGKILL)
        return nil
    }

    deinit { close(stdoutFD) }
}

@Suite(.serialized, .exclusiveGuestDevices, .guestOnly("AttachGuestTests"))
struct AttachGuestTests {
    @Test func attachReportsIdsRangesAndHardwareInfoThenReleases() throws {
        try withEduOnVFIO { bdf in
            let before = Guest.openFDCount()
            let text = run(["attach", bdf, "--ioas", "new"])
            #expect(text.status == 0, "\(text.err)")
            #expect(text.out.contains("IOAS") && text.out.contains("IOVA ranges") && text.out.contains("IOVA alignment"))
            #expect(text.out.contains(bdf) && text.out.contains("/dev/vfio/devices/vfio"))
            #expect(text.out.contains("IOMMU behind \(bdf)"))
            #expect(text.out.contains("released"))

            let r = run(["attach", bdf, "--json"])
            #expect(r.status == 0, "\(r.err)")
            let j = try json(r.out)
            #expect(j["mode"] as? String == "iommufd")
            let ioas = try #require(j["ioas"] as? [String: Any])
            #expect((ioas["id"] as? Int ?? 0) > 0 && ioas["created"] as? Bool == true)
            let ranges = try #require(ioas["iova_ranges"] as? [[String: Any]])
            #expect(!ranges.isEmpty && ranges.allSatisfy { $0["start"] != nil && $0["last"] != nil })
            #expect((ioas["iova_alignment"] as? Int ?? 0) >= 4096)
            let devices = try #require(j["devices"] as? [[String: Any]])
            #expect(devices.count == 1)
            let d = devices[0]
            #expect(d["address"] as? String == bdf)
            #expect((d["device_id"] as? Int ?? 0) > 0 && (d["attached_id"] as? Int ?? 0) > 0)
            let hw = try #require(d["hw_info"] as? [String: Any])
            // VT-d always reports its registers; AMD-Vi only when it supports guest translation
            // (QEMU's amd-iommu does not, so Linux answers IOMMU_HW_INFO_TYPE_NONE there).
            let expectedType = ["intel": "intel-vtd", "amd": "none", "virtio": "none"][try Guest.requireIOMMU().rawValue]
            #expect(hw["type"] as? String == expectedType, "\(hw)")
            #expect(Guest.openFDCount() == before)
        }
    }

    @Test func mapShowsTheMappings() throws {
        try withEduOnVFIO { bdf in
            let before = Guest.openFDCount()
            let r = run(["attach", bdf, "--map", "2M", "--map", "64K@0x100000", "--map", "8K,memfd", "--json"])
            #expect(r.status == 0, "\(r.err)")
            let maps = try #require(try json(r.out)["mappings"] as? [[String: Any]])
            #expect(maps.count == 3)
            #expect(maps.contains { $0["iova"] as? Int == 0x100000 && $0["length"] as? Int == 65536 && $0["backing"] as? String == "anonymous" })
            #expect(maps.contains { $0["length"] as? Int == 2 << 20 })
            #expect(maps.contains { $0["length"] as? Int == 8192 && $0["backing"] as? String == "memfd" })
            let text = run(["attach", bdf, "--map", "2M@0x400000"])
            #expect(text.status == 0 && text.out.contains("0x400000") && text.out.contains("2 MiB"), "\(text.err)")
            #expect(Guest.openFDCount() == before)
        }
    }

    @Test func holdKeepsTheAttachmentUntilSIGTERM() throws {
        try withEduOnVFIO { bdf in
            let child = try Child([buildDirectory + "/vfioctl", "attach", bdf, "--hold"])
            let seen = child.read(until: "holding", seconds: 120)
            #expect(seen.contains("holding: pid \(child.pid)"), "\(seen)")
            let fds = try fdTargets(of: child.pid)
            #expect(fds.contains("/dev/iommu"), "\(fds)")
            #expect(fds.contains { $0.hasPrefix("/dev/vfio/devices/vfio") }, "\(fds)")
            // While it holds, the device is not free.
            let busy = run(["attach", bdf])
            #expect(busy.status == 1, "\(busy.err)")
            kill(child.pid, SIGTERM)
            let status = child.wait(seconds: 60)
            #expect(status == 0)
            let rest = child.read(until: "released after SIGTERM", seconds: 5)
            #expect(rest.contains("released after SIGTERM"), "\(rest)")
            // Free again: a second attach works and leaves nothing behind.
            let before = Guest.openFDCount()
            #expect(run(["attach", bdf]).status == 0)
            #expect(Guest.openFDCount() == before)
        }
    }

    @Test func execHandsPreboundFdsToTheEduHelper() throws {
        try withEduOnVFIO { bdf in
            let before = Guest.openFDCount()
            let r = run(["attach", bdf, "--prebound", "--exec", "--", buildDirectory + "/vfiokit-edu-dma"])
            #expect(r.status == 0, "\(r.err)")
            #expect(r.err.contains("devices bound and attached"))
            #expect(Guest.openFDCount() == before)
        }
    }

    @Test func execHandsUnboundFdsToTheEduHelperWhichBindsItself() throws {
        try withEduOnVFIO { bdf in
            let r = run(["attach", bdf, "--exec", "--", buildDirectory + "/vfiokit-edu-dma", "--iova", "0x200000"])
            #expect(r.status == 0, "\(r.err)")
            #expect(r.err.contains("unbound"))
        }
    }

    @Test func execPassesTheExitStatusAndExactlyTheNamedFds() throws {
        try withEduOnVFIO { bdf in
            let before = Guest.openFDCount()
            let script = """
                [ "$(readlink /proc/self/fd/$1)" = /dev/iommu ] || exit 10
                case "$(readlink /proc/self/fd/$2)" in /dev/vfio/devices/vfio*) ;; *) exit 11;; esac
                [ "$VFIOKIT_IOMMUFD_FD" = "$1" ] && [ "$VFIOKIT_DEVICE_FD" = "$2" ] || exit 12
                [ "$VFIOKIT_IOAS_ID" = "$3" ] && [ "$3" -gt 0 ] || exit 13
                n=0; for f in /proc/self/fd/*; do case "$(readlink $f)" in /dev/iommu|/dev/vfio/*) n=$((n+1));; esac; done
                [ "$n" = 2 ] || exit 14
                exit 3
                """
            let r = run(["attach", bdf, "--exec", "--", "sh", "-c", script, "sh", "{iommufd}", "{device:\(bdf)}", "{ioas}"])
            #expect(r.status == 3, "\(r.err)")
            #expect(Guest.openFDCount() == before)
        }
    }

    /// Fds vfioctl holds without close-on-exec (its own inherited ones, such
    /// as the --iommufd it was given, or any opened so) stay out of the
    /// program: it gets stdio and the named fds only.
    @Test func execPassesNoFdVfioctlInheritedOrOpenedWithoutCloseOnExec() throws {
        try withEduOnVFIO { bdf in
            let inherited = open("/dev/iommu", O_RDWR)  // as a parent would pass it for --iommufd
            let stray = open("/dev/null", O_RDONLY)
            try #require(inherited >= 0 && stray >= 0)
            defer { close(inherited); close(stray) }
            let before = Guest.openFDCount()
            let script = """
                [ -e /proc/self/fd/\(stray) ] && exit 20
                [ -e /proc/self/fd/\(inherited) ] && exit 21
                [ "$(readlink /proc/self/fd/$1)" = /dev/iommu ] || exit 10
                n=0; for f in /proc/self/fd/*; do case "$(readlink $f)" in /dev/iommu|/dev/vfio/*) n=$((n+1));; esac; done
                [ "$n" = 2 ] || exit 14
                exit 3
                """
            let r = run(["attach", bdf, "--iommufd", "\(inherited)", "--exec", "--", "sh", "-c", script, "sh", "{iommufd}"])
            #expect(r.status == 3, "\(r.err)")
            #expect(Guest.openFDCount() == before)
        }
    }

    @Test func containerPassesContainerAndGroupFds() throws {
        try withEduOnVFIO { bdf in
            let group = try #require(Guest.iommuGroup(of: bdf))
            let script = """
                [ "$(readlink /proc/self/fd/$1)" = /dev/vfio/vfio ] || exit 10
                [ "$(readlink /proc/self/fd/$2)" = /dev/vfio/\(group) ] || exit 11
                [ "$VFIOKIT_GROUP_FD" = "$2" ] || exit 12
                exit 0
                """
            let r = run(["attach", bdf, "--container", "--map", "64K", "--exec", "--", "sh", "-c", script, "sh", "{container}", "{group}"])
            #expect(r.status == 0, "\(r.err)")
        }
    }

    @Test func qemuRealizesTheDeviceFromOurFds() throws {
        // The QEMU inside the guest is the host's (the guest's root is the host's /): the one
        // Scripts/setup.sh installs from bookworm-backports, whatever QEMU runs the guest itself.
        try #require(access("/usr/bin/qemu-system-x86_64", X_OK) == 0,
                     "no /usr/bin/qemu-system-x86_64 in the guest: Scripts/setup.sh installs QEMU 10.0 on the host")
        try withEduOnVFIO { bdf in
            // vfioctl (in this process) starts a shell with the fds inherited; the shell feeds the
            // monitor `info pci`, then `quit` (the verified recipe of test-machine.md, with vfioctl in
            // place of `exec 3<>/dev/iommu 4<>/dev/vfio/devices/vfioN`). Placeholders are substituted
            // inside the shell command too.
            let log = (ProcessInfo.processInfo.environment["VFIOKIT_SCRATCH"] ?? "/tmp") + "/attach-qemu.log"
            let command = "(printf 'info pci\\n'; sleep 2; printf 'quit\\n') | timeout -s KILL 180 qemu-system-x86_64 "
                + "-M q35 -accel tcg -m 64M -nodefaults -display none -S -monitor stdio "
                + "-object iommufd,id=iommufd0,fd={iommufd} -device vfio-pci,fd={device},iommufd=iommufd0 > \(log) 2>&1"
            let r = run(["attach", bdf, "--ioas", "new", "--exec", "--", "sh", "-c", command])
            let text = try String(contentsOfFile: log, encoding: .utf8)
            #expect(r.status == 0, "\(r.err)\n\(text)")
            #expect(text.contains("1234:11e8"), "\(text)")
            #expect(r.err.contains("unbound"), "\(r.err)")
            // QEMU closed everything: the device is free again.
            #expect(run(["attach", bdf]).status == 0)
        }
    }

    @Test func deviceCommandsGiveTheEduAnswers() throws {
        try withEduOnVFIO { bdf in
            let before = Guest.openFDCount()
            let config = run(["config", bdf, "read", "0", "--width", "4"])
            #expect(config.status == 0 && config.out.trimmingCharacters(in: .whitespacesAndNewlines) == "0x11e81234", "\(config)")
            let bar = run(["bar", bdf, "0", "read", "0"])
            #expect(bar.status == 0 && bar.out.trimmingCharacters(in: .whitespacesAndNewlines) == "0x010000ed", "\(bar)")
            // Liveness register: reads back the inverse of what was written.
            #expect(run(["bar", bdf, "0", "write", "0x4", "0x12345678"]).status == 0)
            #expect(run(["bar", bdf, "0", "read", "0x4"]).out.contains("0xedcba987"))
            let cmd = run(["config", bdf, "read", "0x4", "--width", "2", "--json"])
            #expect(try json(cmd.out)["width"] as? Int == 2)

            let irqs = run(["irqs", bdf, "--json"])
            #expect(irqs.status == 0, "\(irqs.err)")
            let list = try #require(try json(irqs.out)["irqs"] as? [[String: Any]])
            #expect(list.first { $0["name"] as? String == "INTx" }?["count"] as? Int == 1)
            #expect(list.first { $0["name"] as? String == "MSI" }?["count"] as? Int == 1)
            #expect(list.first { $0["name"] as? String == "MSI-X" }?["count"] as? Int == 0)

            // edu has no reset method: the answer is a clear refusal, and --hot has no bus to reset on the root bus.
            let reset = run(["reset", bdf])
            #expect(reset.status == 1 && reset.err.contains("VFIO_DEVICE_FLAGS_RESET is clear"), "\(reset.err)")
            let hot = run(["reset", bdf, "--hot"])
            #expect(hot.status == 1 && hot.err.contains("ENODEV"), "\(hot.err)")

            let hw = run(["hw-info", bdf, "--json"])
            #expect(hw.status == 0, "\(hw.err)")
            #expect((try json(hw.out)["hw_info"] as? [String: Any])?["type"] != nil)
            #expect(run(["irqs", bdf, "--container"]).status == 0)
            #expect(Guest.openFDCount() == before)
        }
    }

    @Test func hotResetOwnsTheOtherDeviceOnTheBusOrRefuses() throws {
        let a = try Guest.require("VFIOKIT_EDU_PAIR_A"), b = try Guest.require("VFIOKIT_EDU_PAIR_B")
        let pa = try PCIAddress(parsing: a), pb = try PCIAddress(parsing: b)
        _ = try PCIHost.system.bind(pa, force: true)
        defer { #expect(throws: Never.self, "put the device back") { _ = try PCIHost.system.unbind(pa, restore: true) } }
        let refused = run(["reset", a, "--hot"])
        if try !Guest.requireIOMMU().pairIsBehindABridge {
            // Under virtio-iommu the pair is one multifunction slot on the root bus: no bus to reset.
            #expect(refused.status == 1 && refused.err.contains("neither a slot nor a bus reset"), "\(refused.err)")
            return
        }
        #expect(refused.status == 1 && refused.err.contains(b) && refused.err.contains("nothing was reset"), "\(refused.err)")
        _ = try PCIHost.system.bind(pb, force: true)
        defer { #expect(throws: Never.self, "put the device back") { _ = try PCIHost.system.unbind(pb, restore: true) } }
        let done = run(["reset", a, "--hot"])
        #expect(done.status == 0, "\(done.err)")
        #expect(done.out.contains(a) && done.out.contains(b) && done.out.contains("hot reset done"))
    }

    @Test func failuresAreClearAndChangeNothing() throws {
        let before = Guest.openFDCount()
        // Not bound to vfio-pci (the nvme is on nvme).
        let nvme = try Guest.require("VFIOKIT_NVME")
        let r = run(["attach", nvme])
        #expect(r.status == 1 && r.err.contains("not bound to vfio-pci") && r.err.contains("nvme"), "\(r.err)")
        #expect(Guest.driver(of: nvme) == "nvme")
        // A BDF that does not exist.
        let none = run(["attach", "0000:00:1f.7"])
        #expect(none.status == 1 && none.err.contains("no PCI device 0000:00:1f.7"), "\(none.err)")
        #expect(Guest.openFDCount() == before)
        try withEduOnVFIO { bdf in
            // An IOAS id that does not exist in the new context.
            let r = run(["attach", bdf, "--ioas", "7"])
            #expect(r.status == 1 && r.err.contains("no IOAS with id 7"), "\(r.err)")
            #expect(Guest.driver(of: bdf) == "vfio-pci")
            #expect(Guest.openFDCount() == before)
            // ... and the device is still free.
            #expect(run(["attach", bdf]).status == 0)
        }
        // edu is back where it started (no driver in the guest).
        #expect(Guest.driver(of: try Guest.requireEdu()) == nil)
    }
}
