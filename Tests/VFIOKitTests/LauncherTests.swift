import Dispatch
import Foundation
import Synchronization
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
        #expect(error?.operation == .syscall(.posixSpawnp))
        #expect(error?.errno == .noSuchFileOrDirectory)
    }

    @Test func signalDeathMapsTo128PlusSignal() throws {
        #expect(try Launcher(fds: []).run("sh", ["-c", "kill -TERM $$"]) == 128 + SIGTERM)
    }
}

/// `--exec` hands over exactly the fds it names: stdio and those, nothing
/// vfioctl itself inherited or opened without close-on-exec.
@Suite struct LauncherHandoffTests {
    @Test func childGetsOnlyStdioAndTheNamedFds() throws {
        let passed = open("/dev/null", O_RDONLY | O_CLOEXEC)
        // Inheritable, like an fd vfioctl's own parent left open for it.
        let leaky = open("/dev/null", O_RDONLY)
        defer { close(passed); close(leaky) }
        #expect(passed >= 3 && leaky >= 3)
        let pidFile = FileManager.default.temporaryDirectory.appendingPathComponent("vfiokit-pid-\(getpid())-\(passed)").path
        defer { unlink(pidFile) }
        let launcher = Launcher(fds: [("iommufd", passed)])
        // The program tells its pid, then becomes `sleep`, which opens nothing: its
        // fds, read from outside, are exactly what it was handed.
        let status = Mutex<Int32?>(nil)
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            let s = try? launcher.run("sh", ["-c", "echo $$ > \"$1\"; exec sleep 1", "sh", pidFile])
            status.withLock { $0 = s }
            done.signal()
        }
        var fds: Set<Int32> = []
        var comm = ""
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
               let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)),
               let name = try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8),
               name.hasPrefix("sleep") {
                comm = name
                let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
                fds = Set(entries.compactMap { Int32($0) })
                break
            }
            usleep(10_000)
        }
        done.wait()
        #expect(status.withLock { $0 } == 0)
        #expect(comm.hasPrefix("sleep"), "never saw the program")
        #expect(fds.subtracting([0, 1, 2]) == [passed], "the program had fds \(fds.sorted()); the leaky fd was \(leaky)")
    }

    @Test func anInheritedFDIsAdoptedAsACloseOnExecCopy() throws {
        let inherited = open("/dev/null", O_RDONLY)
        defer { close(inherited) }
        let copy = try Launcher.adoptInherited(inherited)
        defer { close(copy) }
        #expect(copy >= 0 && copy != inherited)
        #expect(fcntl(copy, F_GETFD) & FD_CLOEXEC != 0, "the adopted copy would leak into every program vfioctl starts")
        let closed = open("/dev/null", O_RDONLY)
        close(closed)
        let error = #expect(throws: VFIOError.self) { _ = try Launcher.adoptInherited(closed) }
        #expect(error?.errno == .badFileDescriptor)
    }

    /// With no fd number left (EMFILE), the copy fails with an error instead
    /// of handing -1 to the owner. The process's other threads open and close
    /// files meanwhile (libdispatch's worker monitor reads `/proc/<tid>/stat`),
    /// so "no number left" must not depend on which numbers are free at one
    /// moment (a host run once got a copy, exit code 4): here a file another
    /// thread held when the limit was set closes before the copy.
    @Test func aFailedCopyIsAnError() async {
        await #expect(processExitsWith: .exitCode(0)) {
            let othersFile = open("/dev/null", O_RDONLY)
            let inherited = open("/dev/null", O_RDONLY)
            // A limit of one with fd 0 open: no number is left below it, whatever closes.
            if fcntl(0, F_GETFD) < 0 { dup2(inherited, 0) }
            var limit = rlimit()
            getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
            limit.rlim_cur = 1
            guard setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { exit(3) }
            close(othersFile)
            do {
                let copy = try Launcher.adoptInherited(inherited)
                exit(copy < 0 ? 1 : 4)
            } catch let error as VFIOError {
                exit(error.errno == .tooManyOpenFiles ? 0 : 2)
            } catch {
                exit(5)
            }
        }
    }
}
