import CVFIO
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// The rest of the syscalls, one function each (see ``Sys``): files and paths
// (sysfs, procfs, the binding state directory), threads and sleeps, the
// process's ids and limits, and child processes.
extension Sys {
    /// A kernel that is `kernel` or Linux, for the calls below.
    package typealias Kernel = (any SyscallProvider)?

    // MARK: fds and paths

    /// openat(2) relative to `directory`; close-on-exec is always added.
    package static func openat(_ kernel: Kernel, _ directory: Int32, _ path: String, _ flags: Int32, mode: UInt32 = 0,
                               object: @autoclosure () -> String? = nil) throws(VFIOError) -> Int32 {
        try retrying(.open, object: object() ?? path) {
            path.withCString { p in call(kernel) { $0.openat(directory, p, flags | O_CLOEXEC, mode) } }
        }
    }

    package static func fsync(_ kernel: Kernel, _ fd: Int32, object: @autoclosure () -> String? = nil)
        throws(VFIOError)
    {
        _ = try retrying(.fsync, object: object()) { call(kernel) { $0.fsync(fd) } }
    }

    /// flock(2), retried while a blocking lock wait is interrupted.
    package static func flock(_ kernel: Kernel, _ fd: Int32, _ operation: Int32, object: @autoclosure () -> String? = nil)
        throws(VFIOError)
    {
        _ = try retrying(.flock, object: object()) { call(kernel) { $0.flock(fd, operation) } }
    }

    /// fcntl(2) with an integer argument.
    package static func fcntl(_ kernel: Kernel, _ fd: Int32, _ command: Int32, _ argument: Int32 = 0,
                              object: @autoclosure () -> String? = nil)
        throws(VFIOError) -> Int32
    {
        try retrying(.fcntl, object: object() ?? "fd \(fd)") { call(kernel) { $0.fcntl(fd, command, argument) } }
    }

    package static func fstat(_ kernel: Kernel, _ fd: Int32, object: @autoclosure () -> String? = nil)
        throws(VFIOError) -> FileStatus
    {
        var st = FileStatus()
        let r = call(kernel) { $0.fstat(fd, &st) }
        if r < 0 { throw fail(.syscall(.fstat), r, object: object()) }
        return st
    }

    /// stat(2), following symlinks.
    package static func stat(_ kernel: Kernel, _ path: String, object: @autoclosure () -> String? = nil)
        throws(VFIOError) -> FileStatus
    {
        try status(.stat, path, object: object()) { p, st in call(kernel) { $0.stat(p, &st) } }
    }

    /// lstat(2): the link itself.
    package static func lstat(_ kernel: Kernel, _ path: String, object: @autoclosure () -> String? = nil)
        throws(VFIOError) -> FileStatus
    {
        try status(.lstat, path, object: object()) { p, st in call(kernel) { $0.lstat(p, &st) } }
    }

    private static func status(_ operation: Syscall, _ path: String, object: String?,
                               _ body: (UnsafePointer<CChar>, inout FileStatus) -> Int32) throws(VFIOError) -> FileStatus
    {
        var st = FileStatus()
        let r = path.withCString { p in body(p, &st) }
        if r < 0 { throw fail(.syscall(operation), r, object: object ?? path) }
        return st
    }

    /// readlink(2): the link's target text.
    package static func readlink(_ kernel: Kernel, _ path: String, object: @autoclosure () -> String? = nil)
        throws(VFIOError) -> String
    {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { b in path.withCString { p in call(kernel) { $0.readlink(p, b) } } }
        if n < 0 { throw fail(.syscall(.readlink), n, object: object() ?? path) }
        return String(decoding: buffer[0..<min(n, buffer.count)], as: UTF8.self)
    }

    /// access(2) with `mode` (F_OK, R_OK | W_OK).
    package static func access(_ kernel: Kernel, _ path: String, _ mode: Int32, object: @autoclosure () -> String? = nil)
        throws(VFIOError)
    {
        let r = path.withCString { p in call(kernel) { $0.access(p, mode) } }
        if r < 0 { throw fail(.syscall(.access), r, object: object() ?? path) }
    }

    package static func mkdir(_ kernel: Kernel, _ path: String, mode: UInt32, object: @autoclosure () -> String? = nil)
        throws(VFIOError)
    {
        let r = path.withCString { p in call(kernel) { $0.mkdir(p, mode) } }
        if r < 0 { throw fail(.syscall(.mkdir), r, object: object() ?? path) }
    }

    package static func unlink(_ kernel: Kernel, _ path: String, object: @autoclosure () -> String? = nil)
        throws(VFIOError)
    {
        let r = path.withCString { p in call(kernel) { $0.unlink(p) } }
        if r < 0 { throw fail(.syscall(.unlink), r, object: object() ?? path) }
    }

    package static func unlinkat(_ kernel: Kernel, _ directory: Int32, _ path: String, flags: Int32 = 0,
                                 object: @autoclosure () -> String? = nil) throws(VFIOError)
    {
        let r = path.withCString { p in call(kernel) { $0.unlinkat(directory, p, flags) } }
        if r < 0 { throw fail(.syscall(.unlink), r, object: object() ?? path) }
    }

    package static func renameat(_ kernel: Kernel, _ directory: Int32, _ from: String, to: String,
                                 object: @autoclosure () -> String? = nil) throws(VFIOError)
    {
        let r = from.withCString { f in to.withCString { t in call(kernel) { $0.renameat(directory, f, directory, t) } } }
        if r < 0 { throw fail(.syscall(.rename), r, object: object() ?? to) }
    }

    /// getdents64(2) into `buffer`: the bytes of `linux_dirent64` records, 0 at the end.
    package static func getdents(_ kernel: Kernel, _ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer,
                                 object: @autoclosure () -> String? = nil) throws(VFIOError) -> Int
    {
        try retrying(.getdents64, object: object()) { call(kernel) { $0.getdents(fd, buffer) } }
    }

    // MARK: threads and time

    /// Runs `body` on a new detached thread (not from Swift's cooperative
    /// pool), for blocking waits. Throws naming `pthread_create` when no thread
    /// could start (then `body` never runs).
    package static func startThread(_ kernel: Kernel, object: @autoclosure () -> String? = nil,
                                    _ body: @escaping @Sendable () -> Void) throws(VFIOError)
    {
        let r = call(kernel) { $0.startThread(body) }
        if r < 0 { throw fail(.syscall(.pthreadCreate), r, object: object()) }
    }

    /// Sleeps about `nanoseconds`. An interrupted or failed sleep returns
    /// early: every caller polls for a state again afterwards.
    package static func sleep(_ kernel: Kernel, nanoseconds: Int64) {
        _ = call(kernel) { $0.nanosleep(nanoseconds) }
    }

    /// Gives the CPU to another thread (sched_yield(2), which cannot fail).
    @inline(__always)
    package static func yield(_ kernel: Kernel) {
        _ = call(kernel) { $0.schedYield() }
    }

    // MARK: process and machine

    package static func getpid(_ kernel: Kernel) -> Int32 { call(kernel) { $0.getpid() } }
    package static func getuid(_ kernel: Kernel) -> UInt32 { call(kernel) { $0.getuid() } }
    package static func geteuid(_ kernel: Kernel) -> UInt32 { call(kernel) { $0.geteuid() } }
    package static func getgid(_ kernel: Kernel) -> UInt32 { call(kernel) { $0.getgid() } }

    /// getrlimit(2) of `resource` (`RLIMIT_MEMLOCK` is 8 on x86-64 and arm64);
    /// nil stands for unlimited.
    package static func getrlimit(_ kernel: Kernel, _ resource: Int32, name: String)
        throws(VFIOError) -> (soft: UInt64?, hard: UInt64?)
    {
        var soft: UInt64 = 0
        var hard: UInt64 = 0
        let r = call(kernel) { $0.getrlimit(resource, &soft, &hard) }
        if r < 0 { throw fail(.syscall(.getrlimit), r, object: name) }
        return (soft == .max ? nil : soft, hard == .max ? nil : hard)
    }

    /// The running kernel's release (`uname -r`), from uname(2).
    package static func kernelRelease(_ kernel: Kernel) throws(VFIOError) -> String {
        var buffer = [UInt8](repeating: 0, count: 65)
        let n = buffer.withUnsafeMutableBytes { b in call(kernel) { $0.uname(release: b) } }
        if n < 0 { throw fail(.syscall(.uname), n, object: nil) }
        return String(decoding: buffer[0..<n], as: UTF8.self)
    }

    /// The page size (sysconf(_SC_PAGESIZE)).
    package static func pageSize(_ kernel: Kernel) throws(VFIOError) -> Int {
        let r = call(kernel) { $0.sysconf(Int32(_SC_PAGESIZE)) }
        if r <= 0 { throw fail(.syscall(.sysconf), r < 0 ? r : -Int(EINVAL), object: "_SC_PAGESIZE") }
        return r
    }

    // MARK: child processes

    /// Starts `program` (searched in PATH) with `arguments` (argv[0] first) and
    /// `environment` (`NAME=value`) as `plan` says. Returns the pid.
    package static func spawn(_ kernel: Kernel, _ program: String, arguments: [String], environment: [String],
                              plan: SpawnPlan) throws(VFIOError) -> Int32
    {
        let (pid, e) = withCStrings(arguments) { argv in
            withCStrings(environment) { envp in
                program.withCString { p in call(kernel) { $0.spawn(p, argv, envp, plan) } }
            }
        }
        guard let pid else { throw fail(.syscall(.posixSpawnp), e, object: program) }
        return pid
    }

    /// waitpid(2); returns the pid (0 with WNOHANG while it runs) and the status.
    package static func waitpid(_ kernel: Kernel, _ pid: Int32, options: Int32) throws(VFIOError) -> (Int32, Int32) {
        var status: Int32 = 0
        let r = try retrying(.waitpid, object: "pid \(pid)") { call(kernel) { $0.waitpid(pid, &status, options) } }
        return (r, status)
    }

    package static func kill(_ kernel: Kernel, _ pid: Int32, _ signal: Int32) throws(VFIOError) {
        let r = call(kernel) { $0.kill(pid, signal) }
        if r < 0 { throw fail(.syscall(.kill), r, object: "pid \(pid)") }
    }

    /// A signal set holding `signals`.
    package static func signalSet(_ signals: [Int32]) -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for s in signals { sigaddset(&set, s) }
        return set
    }

    /// pthread_sigmask(3) for the calling thread: blocks (`SIG_BLOCK`) or sets
    /// (`SIG_SETMASK`) `set`; returns the mask before.
    @discardableResult
    package static func sigmask(_ kernel: Kernel, _ how: Int32, _ set: sigset_t) throws(VFIOError) -> sigset_t {
        var s = set
        var old = sigset_t()
        let r = call(kernel) { $0.sigmask(how, &s, &old) }
        if r < 0 { throw fail(.syscall(.pthreadSigmask), r, object: nil) }
        return old
    }

    /// sigtimedwait(2): a signal of `set` taken, or nil when none came within the timeout.
    package static func sigtimedwait(_ kernel: Kernel, _ set: sigset_t, timeoutNanoseconds: Int64)
        throws(VFIOError) -> Int32?
    {
        var s = set
        let r = call(kernel) { $0.sigtimedwait(&s, timeoutNanoseconds) }
        if r > 0 { return r }
        if r == -EAGAIN || r == -EINTR || r == 0 { return nil }
        throw fail(.syscall(.sigtimedwait), r, object: nil)
    }

    /// Whether this C library can close every fd from a number in a spawned
    /// child (posix_spawn_file_actions_addclosefrom_np, glibc 2.34 and later).
    package static let canCloseFrom: Bool = {
        var actions = posix_spawn_file_actions_t()
        guard posix_spawn_file_actions_init(&actions) == 0 else { return false }
        defer { posix_spawn_file_actions_destroy(&actions) }
        return cvfio_spawn_file_actions_addclosefrom(&actions, 3) != ENOSYS
    }()

    /// Flushes the C library's buffered standard output and error (Swift's
    /// `print` writes through them) before another program takes them over.
    package static func flushStandardStreams() {
        fflush(nil)
    }

    /// Calls `body` with a NULL-terminated C array of `strings`.
    private static func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
        // Safety: every strdup'ed copy is freed after `body`, which does not keep the pointers.
        let pointers = strings.map { strdup($0) } + [nil]
        defer { pointers.forEach { free($0) } }
        return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
    }
}
