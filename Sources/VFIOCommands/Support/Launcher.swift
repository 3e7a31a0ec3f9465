import CVFIO
import Foundation
import VFIOKit

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
                        "exec", "unknown placeholder {\(name)} in argument '\(arg)'",
                        hint: "available: " + (fds.map(\.name) + values.map(\.name)).map { "{\($0)}" }.joined(separator: ", "))
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
    public func run(_ program: String, _ arguments: [String]) throws(VFIOError) -> Int32 {
        let argv = [program] + (try substitute(arguments))
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        let envp = env.map { "\($0.key)=\($0.value)" }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        try Launcher.handOver(Set(fds.map(\.fd)), to: &actions)

        // Block the stop signals while we spawn and wait; the child starts with
        // an empty mask and default handlers.
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        sigaddset(&stopSignals, SIGINT)
        sigaddset(&stopSignals, SIGTERM)
        var oldMask = sigset_t()
        pthread_sigmask(SIG_BLOCK, &stopSignals, &oldMask)
        defer { pthread_sigmask(SIG_SETMASK, &oldMask, nil) }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        var defaults = stopSignals
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        var pid: pid_t = 0
        let rc = withCStrings(argv) { a in withCStrings(envp) { e in posix_spawnp(&pid, program, &actions, &attr, a, e) } }
        guard rc == 0 else {
            throw VFIOError(operation: "posix_spawnp", errno: Errno(rawValue: rc), object: program,
                            hint: rc == ENOENT ? "no such program in PATH" : nil)
        }
        return Launcher.wait(for: pid, forwarding: stopSignals)
    }

    /// Waits for `pid`, forwarding `signals` (blocked in this thread) to it.
    static func wait(for pid: pid_t, forwarding signals: sigset_t) -> Int32 {
        var set = signals
        while true {
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid {
                if status & 0x7f == 0 { return (status >> 8) & 0xff }  // exited
                return 128 + (status & 0x7f)  // killed by a signal
            }
            if r < 0 && errno != EINTR { return 125 }
            var timeout = timespec(tv_sec: 0, tv_nsec: 50_000_000)
            let sig = sigtimedwait(&set, nil, &timeout)
            if sig > 0 { kill(pid, sig) }
        }
    }

    /// Takes a copy of `fd`, an fd this process inherited (`--iommufd FD`),
    /// for an owner to close when it is done.
    public static func adoptInherited(_ fd: Int32) throws(VFIOError) -> Int32 {
        guard fcntl(fd, F_GETFD) >= 0 else {
            throw VFIOError(operation: "fcntl", errno: Errno(rawValue: errno), object: "fd \(fd)",
                            detail: "--iommufd \(fd) is not an open fd of this process",
                            hint: "pass an fd this process inherited, e.g. {iommufd} from a parent `vfioctl attach --exec`")
        }
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else {
            let e = errno
            throw VFIOError(operation: "fcntl(F_DUPFD_CLOEXEC)", errno: Errno(rawValue: e), object: "fd \(fd)",
                            detail: "could not take a copy of --iommufd \(fd)",
                            hint: e == EMFILE ? "this process has no fd number left (RLIMIT_NOFILE, `ulimit -n`)" : nil)
        }
        return copy
    }

    /// File actions that leave the child exactly 0, 1, 2 and `named`: each
    /// named fd is dup2'ed onto itself (clearing close-on-exec), every other
    /// number is closed (those between explicitly, the rest with closefrom).
    static func handOver(_ named: Set<Int32>, to actions: inout posix_spawn_file_actions_t) throws(VFIOError) {
        func check(_ rc: Int32, _ what: String) throws(VFIOError) {
            if rc != 0 {
                throw VFIOError(operation: what, errno: Errno(rawValue: rc), object: "posix_spawn file actions",
                                detail: "could not prepare the fds for the program")
            }
        }
        for fd in named.sorted() {
            guard fd >= 0, fcntl(fd, F_GETFD) >= 0 else {
                throw VFIOError(operation: "exec", errno: .badFileDescriptor, object: "fd \(fd)",
                                detail: "fd \(fd) to pass is not open")
            }
            try check(posix_spawn_file_actions_adddup2(&actions, fd, fd), "posix_spawn_file_actions_adddup2")
        }
        let top = max(named.max() ?? 2, 2)
        for fd in stride(from: Int32(3), to: top, by: 1) where !named.contains(fd) {
            try check(posix_spawn_file_actions_addclose(&actions, fd), "posix_spawn_file_actions_addclose")
        }
        let rc = cvfio_spawn_file_actions_addclosefrom(&actions, top + 1)
        if rc == ENOSYS {
            // No closefrom in this C library: close what is open now, by number.
            let open = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd"))?.compactMap { Int32($0) } ?? []
            for fd in open where fd > top {
                try check(posix_spawn_file_actions_addclose(&actions, fd), "posix_spawn_file_actions_addclose")
            }
        } else {
            try check(rc, "posix_spawn_file_actions_addclosefrom_np")
        }
    }

    /// SIGINT and SIGTERM.
    static var stopSignals: sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        return set
    }

    /// Blocks SIGINT and SIGTERM in the calling thread, so that one arriving
    /// before ``waitForStopSignal()`` waits is kept pending rather than killing
    /// the process. Call it before announcing that you wait.
    public static func blockStopSignals() {
        var set = stopSignals
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Blocks until SIGINT or SIGTERM arrives; returns the signal.
    public static func waitForStopSignal() -> Int32 {
        var set = stopSignals
        pthread_sigmask(SIG_BLOCK, &set, nil)
        var sig: Int32 = 0
        while sigwait(&set, &sig) != 0 {}
        return sig
    }
}

/// Calls `body` with a NULL-terminated C array of `strings`.
private func withCStrings<R>(_ strings: [String], _ body: ([UnsafeMutablePointer<CChar>?]) -> R) -> R {
    let pointers = strings.map { strdup($0) }
    defer { pointers.forEach { free($0) } }
    return body(pointers + [nil])
}

import SystemPackage
