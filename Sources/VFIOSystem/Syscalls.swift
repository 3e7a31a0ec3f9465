import CVFIO
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The kernel as VFIOKit sees it: every syscall the library makes goes through
/// one of these functions, so tests can put a fake kernel underneath (and fail
/// any call: `FakeKernel.failCall(_:)`).
///
/// Results follow the kernel's own convention: a non-negative result, or
/// `-errno`. The real provider is used unless a test installs another with
/// ``Syscalls/withProvider(_:_:)``. An fd or a mapping belongs to the
/// provider that made it: every later call on it, and its close or munmap, go
/// to that provider, inside or outside `withProvider`. Owners (``OwnedFD``,
/// mapped memory, `PCIHost`) capture the provider in force when they are made.
///
/// The library calls these only through ``Sys``, one function per syscall,
/// which retries EINTR where the call allows it and turns `-errno` into a
/// ``VFIOError`` naming the call. Nothing outside VFIOSystem calls the C library.
package protocol SyscallProvider: Sendable {
    // MARK: fds
    func open(_ path: UnsafePointer<CChar>, _ flags: Int32, _ mode: UInt32) -> Int32
    func openat(_ directory: Int32, _ path: UnsafePointer<CChar>, _ flags: Int32, _ mode: UInt32) -> Int32
    func close(_ fd: Int32) -> Int32
    func ioctl(_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) -> Int32
    func pread(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, _ offset: Int64) -> Int
    func pwrite(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, _ offset: Int64) -> Int
    func read(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer) -> Int
    func write(_ fd: Int32, _ buffer: UnsafeRawBufferPointer) -> Int
    func fsync(_ fd: Int32) -> Int32
    func ftruncate(_ fd: Int32, _ length: Int64) -> Int32
    func flock(_ fd: Int32, _ operation: Int32) -> Int32
    /// `fcntl(fd, command, argument)` for the integer-argument commands (F_GETFD, F_DUPFD_CLOEXEC).
    func fcntl(_ fd: Int32, _ command: Int32, _ argument: Int32) -> Int32
    /// getdents64(2): `struct linux_dirent64` records of an open directory.
    func getdents(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer) -> Int
    func fstat(_ fd: Int32, _ status: inout FileStatus) -> Int32

    // MARK: paths
    func stat(_ path: UnsafePointer<CChar>, _ status: inout FileStatus) -> Int32
    func lstat(_ path: UnsafePointer<CChar>, _ status: inout FileStatus) -> Int32
    /// The link's target bytes (not NUL-terminated); the count read.
    func readlink(_ path: UnsafePointer<CChar>, _ buffer: UnsafeMutableRawBufferPointer) -> Int
    func access(_ path: UnsafePointer<CChar>, _ mode: Int32) -> Int32
    func mkdir(_ path: UnsafePointer<CChar>, _ mode: UInt32) -> Int32
    func unlink(_ path: UnsafePointer<CChar>) -> Int32
    func unlinkat(_ directory: Int32, _ path: UnsafePointer<CChar>, _ flags: Int32) -> Int32
    func renameat(_ fromDirectory: Int32, _ from: UnsafePointer<CChar>, _ toDirectory: Int32,
                  _ to: UnsafePointer<CChar>) -> Int32

    // MARK: memory
    /// Returns the address, or nil with `-errno` in the second element.
    func mmap(_ length: Int, _ protection: Int32, _ flags: Int32, _ fd: Int32, _ offset: Int64)
        -> (UnsafeMutableRawPointer?, Int32)
    func munmap(_ address: UnsafeMutableRawPointer, _ length: Int) -> Int32
    func memfdCreate(_ name: UnsafePointer<CChar>, _ flags: UInt32) -> Int32

    // MARK: events, threads, time
    func eventfd(_ initial: UInt32, _ flags: Int32) -> Int32
    func poll(_ fds: UnsafeMutablePointer<pollfd>, _ count: Int, _ timeoutMilliseconds: Int32) -> Int32
    /// pthread_create(3) of a detached thread running `body`: 0, or `-errno`
    /// (then `body` never runs).
    func startThread(_ body: @escaping @Sendable () -> Void) -> Int32
    /// nanosleep(2) for `nanoseconds`.
    func nanosleep(_ nanoseconds: Int64) -> Int32
    /// sched_yield(2).
    func schedYield() -> Int32

    // MARK: process and machine
    /// getpid(2), getuid(2), geteuid(2), getgid(2): they cannot fail.
    func getpid() -> Int32
    func getuid() -> UInt32
    func geteuid() -> UInt32
    func getgid() -> UInt32
    /// getrlimit(2); `RLIM_INFINITY` is `UInt64.max`.
    func getrlimit(_ resource: Int32, _ soft: inout UInt64, _ hard: inout UInt64) -> Int32
    /// uname(2), the release field (`uname -r`) copied into `release`; its length.
    func uname(release: UnsafeMutableRawBufferPointer) -> Int
    /// sysconf(3) (`_SC_PAGESIZE`); `-errno` when the value is not available.
    func sysconf(_ name: Int32) -> Int

    // MARK: child processes (a launcher that hands fds to a program)
    /// posix_spawnp(3) with the file actions and attributes of `plan`: the
    /// pid, or nil with `-errno` (ENOSYS: this C library cannot close every
    /// fd from `plan.closeFrom`; name them in `plan.close` instead).
    func spawn(_ program: UnsafePointer<CChar>, _ arguments: UnsafePointer<UnsafeMutablePointer<CChar>?>,
               _ environment: UnsafePointer<UnsafeMutablePointer<CChar>?>, _ plan: SpawnPlan) -> (Int32?, Int32)
    func waitpid(_ pid: Int32, _ status: inout Int32, _ options: Int32) -> Int32
    func kill(_ pid: Int32, _ signal: Int32) -> Int32
    /// pthread_sigmask(3) with `how` (SIG_BLOCK, SIG_SETMASK) for this thread.
    func sigmask(_ how: Int32, _ set: UnsafePointer<sigset_t>?, _ old: UnsafeMutablePointer<sigset_t>?) -> Int32
    /// sigtimedwait(2): the signal taken, or `-errno` (EAGAIN on timeout).
    func sigtimedwait(_ set: UnsafePointer<sigset_t>, _ timeoutNanoseconds: Int64) -> Int32
}

/// What a spawned child inherits: exactly fds 0, 1, 2 and `inherit` (each
/// dup2'ed onto itself, which clears close-on-exec), with `close` and every fd
/// from `closeFrom` closed, an empty signal mask and `defaultSignals` reset to
/// their default actions.
package struct SpawnPlan: Sendable {
    package var inherit: [Int32]
    package var close: [Int32]
    package var closeFrom: Int32?
    package var defaultSignals: [Int32]

    package init(inherit: [Int32], close: [Int32], closeFrom: Int32?, defaultSignals: [Int32]) {
        self.inherit = inherit
        self.close = close
        self.closeFrom = closeFrom
        self.defaultSignals = defaultSignals
    }
}

/// Installing a different kernel underneath VFIOKit, for tests.
package enum Syscalls {
    /// The provider in force for the current task; nil means Linux itself.
    @TaskLocal package static var provider: (any SyscallProvider)? = nil

    /// Runs `body` with `provider` as the kernel, for this task and its
    /// children: fds, eventfds and memory made inside `body` belong to it for
    /// their whole life.
    package static func withProvider<R>(_ provider: any SyscallProvider, _ body: () throws -> R) rethrows -> R {
        try $provider.withValue(provider) { try body() }
    }

    /// Runs `body` with `provider` as the kernel, for this task and its children.
    package static func withProvider<R>(
        _ provider: any SyscallProvider, isolation: isolated (any Actor)? = #isolation,
        _ body: () async throws -> R
    ) async rethrows -> R {
        try await $provider.withValue(provider, operation: body)
    }
}

