import Foundation
import Testing
import VFIOKit
import VFIOKitTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// `vfioctl mdev list|create|remove` and mdevs in `vfioctl list`/`show` on the
/// guest's mtty, each printed command run exactly as printed.
@Suite(.serialized, .exclusiveGuestDevices, .guestOnly("MdevCLIGuestTests"))
struct MdevCLIGuestTests {
    /// The commands in a printed text: every `...` span, in order.
    static func printed(_ text: String) -> [String] {
        text.split(separator: "`", omittingEmptySubsequences: false).enumerated().filter { $0.offset % 2 == 1 }.map { String($0.element) }
    }

    /// Runs a printed command as printed: `vfioctl ...` with the built binary, anything else with /bin/sh.
    static func runPrinted(_ command: String) throws -> VFIOCtlBinary.Result {
        if command.hasPrefix("vfioctl ") { return try VFIOCtlBinary.run(command.split(separator: " ").dropFirst().map(String.init)) }
        return try VFIOCtlBinary.sh("/bin/sh", ["-c", command])
    }

    @Test func createListShowHoldAndRemoveFollowingThePrintedCommands() throws {
        _ = try MdevGuestTests.requireMtty()
        let types = try VFIOCtlBinary.run("mdev", "list", "--json")
        #expect(types.status == 0, "\(types.err)")
        let parents = try #require(try types.json()["parents"] as? [[String: Any]])
        let mtty = try #require(parents.first { $0["name"] as? String == "mtty" })
        #expect((mtty["types"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String } == ["mtty-1", "mtty-2"])

        let created = try VFIOCtlBinary.run("mdev", "create", "mtty-2")
        #expect(created.status == 0, "\(created.err)")
        let name = try #require(created.out.split(separator: "\n").first.map(String.init))
        let uuid = try #require(UUID(uuidString: name), "the first line is the UUID: \(created.out)")
        var removed = false
        defer { if !removed { try? PCIHost.system.removeMdev(uuid) } }
        let commands = Self.printed(created.out)
        #expect(commands == ["vfioctl show \(name)", "vfioctl mdev remove \(name)"], "\(created.out)")

        let list = try VFIOCtlBinary.run("list", "--json")
        let rows = try #require(try list.json()["mdevs"] as? [[String: Any]])
        let row = try #require(rows.first { $0["uuid"] as? String == name })
        #expect(row["readiness"] as? String == "ready" && row["type"] as? String == "mtty-2")
        let text = try VFIOCtlBinary.run("list")
        #expect(text.out.contains(name) && text.out.contains("mtty-2"), "\(text.out)")

        // `vfioctl show UUID`, as printed: VFIO's view, migration included.
        let show = try Self.runPrinted(commands[0])
        #expect(show.status == 0, "\(show.err)")
        #expect(show.out.contains("Migration: STOP_COPY|P2P|PRE_COPY, state RUNNING"), "\(show.out)")
        let showJSON = try VFIOCtlBinary.run("show", name, "--json")
        let vfio = try #require(try showJSON.json()["vfio"] as? [String: Any], "\(showJSON.out)")
        #expect((vfio["regions"] as? [[String: Any]])?.count == 3, "config space and two 8-byte BARs: \(vfio)")

        // Held by another process: remove names it, and the printed fix frees it.
        let cdev = try #require(PCIHost.system.mdev(uuid).vfioCdevPath)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for fd in Int32(0)...2 { posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", O_RDWR, 0) }
        let (rc, pid) = spawnWithNoSignalsBlocked("/bin/sh", ["/bin/sh", "-c", "exec 3<>\(cdev); exec sleep 600"], &actions)
        try #require(rc == 0, "posix_spawn: \(rc)")
        defer { kill(pid, SIGKILL); var s: Int32 = 0; _ = waitpid(pid, &s, WNOHANG) }
        #expect(GuestDevices.waitFor(20) { PCIHost.system.deviceNodeOpeners()[cdev]?.isEmpty == false })
        let held = try VFIOCtlBinary.run("mdev", "remove", name)
        #expect(held.status == 1 && held.err.contains("pid \(pid) (sleep) has \(cdev) open"), "\(held.err)")
        let heldList = try VFIOCtlBinary.run("list", "--json")
        #expect((try heldList.json()["mdevs"] as? [[String: Any]])?.first { $0["uuid"] as? String == name }?["readiness"]
                as? String == "held")
        let kill = try #require(Self.printed(held.err).first { $0.hasPrefix("kill ") }, "\(held.err)")
        #expect(kill == "kill \(pid)")
        #expect(try Self.runPrinted(kill).status == 0)
        var status: Int32 = 0
        #expect(GuestDevices.waitFor(20) { waitpid(pid, &status, WNOHANG) == pid })

        // `vfioctl mdev remove UUID`, as printed at creation.
        let gone = try Self.runPrinted(commands[1])
        #expect(gone.status == 0, "\(gone.err)")
        removed = gone.status == 0
        #expect(!FileManager.default.fileExists(atPath: "/sys/bus/mdev/devices/\(name)"))
    }

    /// `vfioctl attach UUID`: an mdev through the same front door as a PCI
    /// function (AttachedDevice/openDevice by name), on the iommufd path (its
    /// cdev bound and attached: an emulated attach, mtty's parent driver
    /// reaches the IOAS through an access) and the group path (a type1v2
    /// container, VFIO_GROUP_GET_DEVICE_FD by UUID); the JSON as for a BDF.
    @Test func attachTakesAnMdevUUID() throws {
        try MdevGuestTests.withMdev("mtty-1") { m in
            let name = m.name
            let cdev = try #require(m.vfioCdevPath)
            let json = try VFIOCtlBinary.run("attach", name, "--map", "64K", "--json")
            #expect(json.status == 0, "\(json.err)")
            let report = try json.json()
            #expect(report["mode"] as? String == "iommufd")
            let devices = try #require(report["devices"] as? [[String: Any]], "\(json.out)")
            #expect(devices.count == 1)
            #expect(devices.first?["address"] as? String == name, "\(devices)")
            #expect(devices.first?["cdev"] as? String == cdev, "\(devices)")
            #expect(devices.first?["device_id"] as? Int != nil && devices.first?["attached_id"] as? Int != nil, "\(devices)")
            #expect((report["mappings"] as? [[String: Any]])?.count == 1)
            #expect((report["ioas"] as? [String: Any])?["id"] as? Int == devices.first?["attached_id"] as? Int,
                    "an mdev attaches to the IOAS itself (no HWPT): \(report)")

            let text = try VFIOCtlBinary.run("attach", name.uppercased())
            #expect(text.status == 0 && text.out.contains(name) && text.out.contains("released"), "\(text.out) \(text.err)")

            let container = try VFIOCtlBinary.run("attach", name, "--container", "--map", "8K", "--json")
            #expect(container.status == 0, "\(container.err)")
            let c = try container.json()
            #expect(c["mode"] as? String == "container")
            #expect((c["devices"] as? [[String: Any]])?.first?["address"] as? String == name, "\(container.out)")
            #expect((c["groups"] as? [[String: Any]])?.first?["number"] as? Int == m.iommuGroup, "\(container.out)")
            #expect(PCIHost.system.deviceNodeOpeners()[cdev]?.isEmpty != false, "released: nothing holds \(cdev)")
        }
    }

    /// An mdev that is not there, and a VF token given to an mdev: refused,
    /// saying what there is; the printed command works.
    @Test func attachAnMdevErrorsAndTheirHints() throws {
        _ = try MdevGuestTests.requireMtty()
        let missing = UUID().uuidString.lowercased()
        let nothing = try VFIOCtlBinary.run("attach", missing, "--json")
        #expect(nothing.status == 1, "\(nothing.out)")
        let error = try #require(try nothing.json()["error"] as? [String: Any], "\(nothing.out)")
        #expect(error["operation"] as? String == "find mdev" && (error["detail"] as? String)?.contains("there is no mdev") == true,
                "\(error)")
        let hints = Self.printed(error["hint"] as? String ?? "")
        #expect(!hints.isEmpty, "\(error)")
        for command in hints { #expect(try Self.runPrinted(command).status == 0, "\(command)") }

        try MdevGuestTests.withMdev("mtty-1") { m in
            let token = try VFIOCtlBinary.run("attach", m.name, "--vf-token", UUID().uuidString)
            #expect(token.status == 64 && token.err.contains("SR-IOV"), "\(token.err)")
        }
    }

    @Test func errorsSayWhatThereIsAndTheirHintsWork() throws {
        _ = try MdevGuestTests.requireMtty()
        let unknown = try VFIOCtlBinary.run("mdev", "create", "mtty-7")
        #expect(unknown.status == 1 && unknown.err.contains("mtty-1 (on mtty), mtty-2 (on mtty)"), "\(unknown.err)")
        let bad = try VFIOCtlBinary.run("mdev", "create", "mtty-1", "--uuid", "not-a-uuid")
        #expect(bad.status == 64 && bad.err.contains("is not a UUID"), "\(bad.err)")
        let nothing = try VFIOCtlBinary.run("mdev", "remove", UUID().uuidString, "--json")
        #expect(nothing.status == 1)
        let error = try #require(try nothing.json()["error"] as? [String: Any])
        #expect(error["operation"] as? String == "find mdev" && (error["detail"] as? String)?.contains("there is no mdev") == true)
        for command in Self.printed(error["hint"] as? String ?? "") {
            #expect(try Self.runPrinted(command).status == 0, "\(command)")
        }
    }
}
