import Foundation
import Testing
import VFIOCommands
import VFIOKit

#if canImport(Glibc)
import Glibc
#endif

@Suite struct LauncherTests {
    /// Exactly the named fds reach the child; the others (close-on-exec, as
    /// every fd VFIOKit opens) do not; the child's exit status comes back.
    @Test func passesExactlyTheNamedFdsAndTheExitStatus() throws {
        let passed = open("/dev/null", O_RDONLY | O_CLOEXEC)
        let kept = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(passed); close(kept) }
        let launcher = Launcher(fds: [("iommufd", passed)], environment: ["VFIOKIT_IOMMUFD_FD": "\(passed)"])
        let script = """
            [ -e /proc/self/fd/$1 ] || exit 10
            [ -e /proc/self/fd/$2 ] && exit 11
            [ "$VFIOKIT_IOMMUFD_FD" = "$1" ] || exit 12
            exit 7
            """
        let status = try launcher.run("sh", ["-c", script, "sh", "{iommufd}", "\(kept)"])
        #expect(status == 7)
    }

    @Test func substitutesPlaceholdersAndRejectsUnknownOnes() throws {
        let launcher = Launcher(fds: [("iommufd", 3), ("device", 4), ("device:0000:00:03.0", 5)])
        #expect(try launcher.substitute(["-object", "iommufd,id=i0,fd={iommufd}", "vfio-pci,fd={device}", "{device:0000:00:03.0}"])
                == ["-object", "iommufd,id=i0,fd=3", "vfio-pci,fd=4", "5"])
        #expect(try launcher.substitute(["{\"json\": 1}", "{}"]) == ["{\"json\": 1}", "{}"])
        let error = #expect(throws: VFIOError.self) { _ = try launcher.substitute(["fd={group}"]) }
        #expect(error?.description.contains("{group}") == true)
        #expect(error?.hint?.contains("{iommufd}") == true)
    }

    @Test func missingProgramIsAClearError() {
        let error = #expect(throws: VFIOError.self) { _ = try Launcher(fds: []).run("no-such-program-vfiokit", []) }
        #expect(error?.operation == "posix_spawnp")
        #expect(error?.errno == .noSuchFileOrDirectory)
    }

    @Test func signalDeathMapsTo128PlusSignal() throws {
        #expect(try Launcher(fds: []).run("sh", ["-c", "kill -TERM $$"]) == 128 + SIGTERM)
    }
}
