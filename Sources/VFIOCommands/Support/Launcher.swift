import Foundation
import VFIOKit
import VFIOSystem

#if canImport(Glibc)
import Glibc
#endif

/// Starts a program with chosen fds inherited, the way libvirt hands iommufd
/// and VFIO cdev fds to QEMU. The child gets exactly stdin, stdout, stderr
/// and the fds named here, under the same numbers: the named ones are made
/// inheritable in the child (dup2 onto itself clears FD_CLOEXEC in
/// posix_spawn, glibc 2.29 and later) and every other fd is closed in the
/// child, also those this process inherited or opened without close-on-exec.
public struct Launcher: Sendable {
    /// The fds to pass, by placeholder name: `iommufd`, `device`,
    /// `device:0000:00:03.0`, `container`, `group`, ...
    public var fds: [(name: String, fd: Int32)]
    /// Placeholders that stand for text, not an inherited fd: object ids
    /// (`ioas`, `hwpt`, `devid`, `devid:BDF`), `bdf`, ... Not made inheritable.
    public var values: [(name: String, value: String)]
    /// Extra environment for the child, on top of this process's.
    public var environment: [String: String]

    public init(fds: [(name: String, fd: Int32)], values: [(name: String, value: String)] = [],
                environment: [String: String] = [:]) {
        self.fds = fds
        self.values = values
        self.environment = environment
    }

    /// What `{name}` stands for: an fd number or a value. `{device:00:03.0}`
    /// finds `device:0000:00:03.0` (a BDF after the colon is normalized).
    func lookup(_ name: String) -> String? {
        if let fd = fds.first(where: { $0.name == name })?.fd { return String(fd) }
        if let v = values.first(where: { $0.name == name })?.value { return v }
        if let colon = name.firstIndex(of: ":"),
           let a = try? PCIAddress(parsing: String(name[name.index(after: colon)...])) {
            let canonical = name[..<colon] + ":" + a.description
            if canonical != name { return lookup(String(canonical)) }
        }
        return nil
    }

    /// `{name}` in each argument replaced by the fd number or value; an unknown
    /// placeholder is an error rather than a literal the program would misread.
    public func substitute(_ arguments: [String]) throws(VFIOError) -> [String] {
        var out: [String] = []
        for arg in arguments {
            var result = ""
            var rest = Substring(arg)
            while let open = rest.firstIndex(of: "{") {
                result += rest[..<open]
                guard let close = rest[open...].firstIndex(of: "}") else { result += rest[open...]; rest = ""; break }
                let name = String(rest[rest.index(after: open)..<close])
                if let v = lookup(name) {
                    result += v
                } else if name.isEmpty || name.contains(where: { $0 == " " || $0 == "," || $0 == "=" }) {
                    result += rest[open...close]  // not ours (e.g. JSON in an argument)
                } else {
                    throw VFIOError.invalid(
                        .step("exec"), "unknown placeholder {\(name)} in argument '\(arg)'",
                        remedies: [.advice("available: "
                                           + (fds.map(\.name) + values.map(\.name)).map { "{\($0)}" }.joined(separator: ", "))])
                }
                rest = rest[rest.index(after: close)...]
            }
            out.append(result + rest)
        }
        return out
    }

    /// Runs `program` (searched in PATH) with `arguments` substituted, waits for
    /// it, and returns its exit status (128 + signal when it was killed).
    /// SIGINT and SIGTERM sent to us are passed on to the child, so Ctrl-C stops
    /// the program first and we release our objects after it has gone.
    /// Every process call goes through VFIOKit's syscall layer.
    public func run(_ program: String, _ arguments: [String]) throws(VFIOError) -> Int32 {
        let argv = [program] + (try substitute(arguments))
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        let envp = env.map { "\($0.key)=\($0.value)" }
        let kernel = Sys.current
        let plan = try Launcher.handOver(Set(fds.map(\.fd)), kernel: kernel)

        // Block the stop signals while we spawn and wait; the child starts with
        // an empty mask and default handlers.
        let stopSignals = Launcher.stopSignals
        let oldMask = try Sys.sigmask(kernel, SIG_BLOCK, stopSignals)
        let status: Int32
        do throws(VFIOError) {
            let pid = try Sys.spawn(kernel, program, arguments: argv, environment: envp, plan: plan)
            status = try Launcher.wait(for: pid, forwarding: stopSignals, kernel: kernel)
        } catch {
            _ = try? Sys.sigmask(kernel, SIG_SETMASK, oldMask)
            var e = error
            if e.operation == .syscall(.posixSpawnp) && e.errno == .noSuchFileOrDirectory {
                e.remedies = [.advice("no such program in PATH")]
            }
            throw e
        }
        try Sys.sigmask(kernel, SIG_SETMASK, oldMask)
        return status
    }

    /// Waits for `pid`, forwarding `signals` (blocked in this thread) to it.
    /// A wait that fails (the child is not ours any more) ends with status 125.
    static func wait(for pid: Int32, forwarding signals: sigset_t, kernel: (any SyscallProvider)?) throws(VFIOError) -> Int32 {
        while true {
            let (r, status): (Int32, Int32)
            do throws(VFIOError) { (r, status) = try Sys.waitpid(kernel, pid, options: WNOHANG) } catch { return 125 }
            if r == pid {
                if status & 0x7f == 0 { return (status >> 8) & 0xff }  // exited
                return 128 + (status & 0x7f)  // killed by a signal
            }
            // A signal that cannot be passed on (the child is already gone) is dropped; the wait goes on.
            if let sig = try Sys.sigtimedwait(kernel, signals, timeoutNanoseconds: 50_000_000) {
                _ = try? Sys.kill(kernel, pid, sig)
            }
        }
    }

    /// Takes a copy of `fd`, an fd this process inherited (`--iommufd FD`),
    /// for an owner to close when it is done.
    public static func adoptInherited(_ fd: Int32) throws(VFIOError) -> Int32 {
        let kernel = Sys.current
        do throws(VFIOError) {
            _ = try Sys.fcntl(kernel, fd, F_GETFD)
        } catch {
            var e = error
            e.detail = "--iommufd \(fd) is not an open fd of this process"
            e.remedies = [.advice("pass an fd this process inherited, e.g. {iommufd} from a parent `vfioctl attach --exec`")]
            throw e
        }
        do throws(VFIOError) {
            return try Sys.fcntl(kernel, fd, F_DUPFD_CLOEXEC, 0, object: "fd \(fd) (F_DUPFD_CLOEXEC)")
        } catch {
            var e = error
            e.detail = "could not take a copy of --iommufd \(fd)"
            if error.errno == .tooManyOpenFiles {
                e.remedies = [.advice("this process has no fd number left (RLIMIT_NOFILE, `ulimit -n`)")]
            }
            throw e
        }
    }

    /// The child's fds: exactly 0, 1, 2 and `named` (each dup2'ed onto
    /// itself, clearing close-on-exec), every other number closed (those
    /// between explicitly, the rest from the highest up; where the C library
    /// cannot close a range, each fd open now, read from /proc/self/fd).
    static func handOver(_ named: Set<Int32>, kernel: (any SyscallProvider)?) throws(VFIOError) -> SpawnPlan {
        for fd in named.sorted() {
            guard fd >= 0, (try? Sys.fcntl(kernel, fd, F_GETFD)) != nil else {
                throw VFIOError(operation: .step("exec"), errno: .badFileDescriptor, object: "fd \(fd)",
                                detail: "fd \(fd) to pass is not open")
            }
        }
        let top = max(named.max() ?? 2, 2)
        let between = stride(from: Int32(3), to: top, by: 1).filter { !named.contains($0) }
        var plan = SpawnPlan(inherit: named.sorted(), close: between, closeFrom: top + 1,
                             defaultSignals: [SIGINT, SIGTERM])
        if !Sys.canCloseFrom {
            // No closefrom in this C library: close what is open now, by number.
            let open = try Sys.listDirectory(kernel, "/proc/self/fd").compactMap { Int32($0) }
            plan.closeFrom = nil
            plan.close += open.filter { $0 > top }.sorted()
        }
        return plan
    }

    /// SIGINT and SIGTERM.
    static var stopSignals: sigset_t { Sys.signalSet([SIGINT, SIGTERM]) }

    /// Blocks SIGINT and SIGTERM in the calling thread, so that one arriving
    /// before ``waitForStopSignal()`` waits is kept pending rather than killing
    /// the process. Call it before announcing that you wait.
    public static func blockStopSignals() throws(VFIOError) {
        try Sys.sigmask(Sys.current, SIG_BLOCK, stopSignals)
    }

    /// Blocks until SIGINT or SIGTERM arrives; returns the signal.
    public static func waitForStopSignal() throws(VFIOError) -> Int32 {
        let kernel = Sys.current
        try Sys.sigmask(kernel, SIG_BLOCK, stopSignals)
        while true {
            if let sig = try Sys.sigtimedwait(kernel, stopSignals, timeoutNanoseconds: 1_000_000_000) { return sig }
        }
    }
}
