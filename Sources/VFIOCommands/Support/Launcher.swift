import Foundation
import VFIOKit

#if canImport(Glibc)
import Glibc
#endif

/// Starts a program with chosen fds inherited, the way libvirt hands iommufd
/// and VFIO cdev fds to QEMU: every fd VFIOKit opens is close-on-exec, and
/// exactly the fds named here are made inheritable in the child (dup2 onto
/// itself clears FD_CLOEXEC in posix_spawn, glibc 2.29 and later).
public struct Launcher: Sendable {
    /// The fds to pass, by placeholder name: `iommufd`, `device`,
    /// `device:0000:00:03.0`, `container`, `group`, ...
    public var fds: [(name: String, fd: Int32)]
    /// Extra environment for the child, on top of this process's.
    public var environment: [String: String]

    public init(fds: [(name: String, fd: Int32)], environment: [String: String] = [:]) {
        self.fds = fds
        self.environment = environment
    }

    /// `{name}` in each argument replaced by the fd number; an unknown
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
                if let fd = fds.first(where: { $0.name == name })?.fd {
                    result += String(fd)
                } else if name.isEmpty || name.contains(where: { $0 == " " || $0 == "," || $0 == "=" }) {
                    result += rest[open...close]  // not ours (e.g. JSON in an argument)
                } else {
                    throw VFIOError.invalid(
                        "exec", "unknown placeholder {\(name)} in argument '\(arg)'",
                        hint: "available: " + fds.map { "{\($0.name)}" }.joined(separator: ", "))
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
        for (_, fd) in fds { posix_spawn_file_actions_adddup2(&actions, fd, fd) }

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

    /// Blocks until SIGINT or SIGTERM arrives; returns the signal.
    public static func waitForStopSignal() -> Int32 {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
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
