import CVFIO
import Synchronization
import VFIOKit
import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A kernel for unit tests: ioctls answered by handlers the test installs,
/// every call recorded with the bytes it carried, fds counted so a test can
/// assert that nothing leaked, and any syscall made to fail (``failCall(_:errno:)``).
///
/// Memory (mmap/munmap), eventfds and poll/read/write on them are real, so
/// buffers and interrupt waits behave as they do on Linux. Paths under a root
/// given to ``passThrough(_:)`` (a fixture tree of sysfs, procfs and /run) are
/// real files: their opens, reads, writes, directory listings, stats, links,
/// locks and renames go to Linux, and the fds are counted with the fake ones.
/// Threads, sleeps, limits, ids and child processes are Linux's too; only
/// their failures are made here.
///
///     let kernel = FakeKernel()
///     kernel.files["/dev/iommu"] = .node
///     kernel.onIoctl(IOMMU_IOAS_ALLOC) { _, arg in
///         arg!.assumingMemoryBound(to: iommu_ioas_alloc.self).pointee.out_ioas_id = 7; return 0 }
///     try Syscalls.withProvider(kernel) { ... }
package final class FakeKernel: SyscallProvider, @unchecked Sendable {
    // @unchecked: all mutable state is behind `state`'s mutex.

    /// What an ioctl handler returns: a non-negative result or `-errno`.
    package typealias IoctlHandler = @Sendable (_ fd: Int32, _ argument: UnsafeMutableRawPointer?) -> Int32
    package typealias FileIO = @Sendable (_ fd: Int32, _ offset: Int64, _ buffer: UnsafeMutableRawBufferPointer, _ isWrite: Bool) -> Int

    package enum File: Sendable {
        /// Opens and gives a fresh fake fd.
        case node
        /// Fails with this errno.
        case error(Int32)
        /// A small file with these bytes (a /proc file): read(2) returns them
        /// in order, then 0.
        case contents([UInt8])
    }

    /// One recorded ioctl: the request, the fd, and the argument bytes as the
    /// kernel saw them on entry (argsz/size bytes of the struct).
    package struct Call: Sendable {
        package var fd: Int32
        package var request: UInt
        package var bytes: [UInt8]
        /// Reads a `T` out of the recorded argument.
        package func argument<T>(as: T.Type = T.self) -> T {
            var out = [UInt8](repeating: 0, count: MemoryLayout<T>.size)
            for i in 0..<min(bytes.count, out.count) { out[i] = bytes[i] }
            return out.withUnsafeBytes { $0.loadUnaligned(as: T.self) }
        }
    }

    /// The syscalls of ``SyscallProvider`` by the kernel's name, for
    /// ``failCall(_:errno:)`` and the record of what was called and failed.
    package enum Kind: String, Sendable, CaseIterable, Comparable {
        case open, openat, close, ioctl, pread, pwrite, read, write, fsync, ftruncate, flock, fcntl, getdents64, fstat
        case stat, lstat, readlink, access, mkdir, unlink, unlinkat, renameat
        case mmap, munmap, memfd_create, eventfd, poll, pthread_create, nanosleep, sched_yield
        case getpid, getuid, geteuid, getgid, getrlimit, uname, sysconf
        case posix_spawnp, waitpid, kill, pthread_sigmask, sigtimedwait

        package static func < (a: Kind, b: Kind) -> Bool { a.rawValue < b.rawValue }

        /// Calls Linux never fails (getpid(2): "These functions are always
        /// successful"; sched_yield(2) always succeeds on Linux): they are
        /// counted as called but never made to fail.
        package static let infallible: Set<Kind> = [.getpid, .getuid, .geteuid, .getgid, .sched_yield]

        /// The errno an injected failure of this call gives, one the real call can give.
        package var typicalErrno: Int32 {
            switch self {
            case .open, .openat, .eventfd, .memfd_create: EMFILE
            case .close, .read, .write, .pread, .pwrite, .fsync, .ftruncate, .getdents64, .renameat: EIO
            case .ioctl, .mmap, .poll, .posix_spawnp: ENOMEM
            case .munmap, .getrlimit, .sysconf, .pthread_sigmask, .sigtimedwait, .uname: EINVAL
            case .flock: ENOLCK
            case .fcntl: EBADF
            case .fstat, .stat, .lstat, .readlink: EIO
            case .access, .mkdir, .unlink, .unlinkat: EACCES
            case .pthread_create: EAGAIN
            case .nanosleep: EINTR
            case .waitpid: ECHILD
            case .kill: ESRCH
            case .getpid, .getuid, .geteuid, .getgid, .sched_yield: 0
            }
        }
    }

    struct State {
        var nextFD: Int32 = 1000
        var fakeFDs: [Int32: String] = [:]
        /// How far read(2) got in each fake fd opened on a ``File/contents(_:)`` file.
        var readOffsets: [Int32: Int] = [:]
        var realFDs: Set<Int32> = []
        var files: [String: File] = [:]
        var roots: [String] = []
        var handlers: [UInt: IoctlHandler] = [:]
        var calls: [Call] = []
        var fileIO: FileIO?
        /// Numbers this kernel closed and has not handed out again.
        var closedFDs: Set<Int32> = []
        /// Syscalls that named an fd after this kernel closed it.
        var staleUses: [String] = []
        /// Addresses mmapped through this kernel and not yet unmapped.
        var mappings: Set<UInt> = []
        /// read(2) calls, by fd.
        var reads: [Int32: Int] = [:]
        /// When each fd was last closed.
        var closedAt: [Int32: ContinuousClock.Instant] = [:]
        /// Calls counted towards ``failCall(_:errno:)`` so far (the infallible ones are not counted).
        var syscalls = 0
        var failAt: Int?
        var failErrno: Int32?
        var failed: (kind: Kind, errno: Int32)?
        var kindsCalled: Set<Kind> = []
        /// The counted calls in order, with the path or fd they named.
        var log: [String] = []
    }

    private let state = Mutex(State())
    private let linux = LinuxSyscalls()

    package init() {}

    // MARK: test set-up and inspection

    /// Paths that `open` knows.
    package var files: [String: File] {
        get { state.withLock { $0.files } }
        set { state.withLock { $0.files = newValue } }
    }

    /// Serves the real files below `root` (a fixture tree) from Linux.
    package func passThrough(_ root: String) {
        state.withLock { $0.roots.append(root.hasSuffix("/") ? String(root.dropLast()) : root) }
    }

    /// A new fake fd named `label`, for a handler whose request returns one
    /// (a dma-buf from `VFIO_DEVICE_FEATURE`): closing it through this kernel works.
    package func makeFD(_ label: String) -> Int32 {
        state.withLock { s in newFakeFD(&s, label) }
    }

    /// Answers `request` with `handler`.
    package func onIoctl(_ request: UInt, _ handler: @escaping IoctlHandler) {
        state.withLock { $0.handlers[request] = handler }
    }

    /// Answers pread/pwrite on fake fds.
    package func onFileIO(_ handler: @escaping FileIO) { state.withLock { $0.fileIO = handler } }

    /// Makes the `n`th counted syscall from now (1 = the next one) fail with
    /// `errno` (by default the call's ``Kind/typicalErrno``), once. A failed
    /// close or munmap has still released its fd or memory, as Linux's close
    /// does after an error; a failed thread start never runs its body.
    package func failCall(_ n: Int, errno: Int32? = nil) {
        state.withLock { s in
            s.failAt = s.syscalls + n
            s.failErrno = errno
            s.failed = nil
        }
    }

    /// The call ``failCall(_:errno:)`` made fail, once it has.
    package var injectedFailure: (kind: Kind, errno: Int32)? { state.withLock { $0.failed } }

    /// How many counted syscalls were made so far.
    package var syscallCount: Int { state.withLock { $0.syscalls } }

    /// The counted calls so far, in order (`3 readlink`), for finding which call a number is.
    package var callLog: [String] { state.withLock { $0.log } }

    /// Every kind of syscall made through this kernel so far.
    package var kindsCalled: Set<Kind> { state.withLock { $0.kindsCalled } }

    /// Every ioctl so far, in order.
    package var calls: [Call] { state.withLock { $0.calls } }

    /// The recorded calls of one request.
    package func calls(_ request: UInt) -> [Call] { calls.filter { $0.request == request } }

    /// Fds open now (fake and real ones this kernel handed out).
    package var openFDCount: Int { state.withLock { $0.fakeFDs.count + $0.realFDs.count } }

    /// Every syscall that named an fd number after this kernel had closed it
    /// ("read 1003", "ioctl 0x3b6e 1001", "poll 12"): a closed owner's number
    /// reaching the kernel. Empty when the library is correct.
    package var staleFDUses: [String] { state.withLock { $0.staleUses } }

    /// Whether `fd` is open in this kernel now.
    package func isOpen(_ fd: Int32) -> Bool { state.withLock { $0.fakeFDs[fd] != nil || $0.realFDs.contains(fd) } }

    /// The fd this kernel closed last and when, read on the closing thread
    /// (so a test can time a close made by a thread it does not run).
    package var lastClosed: (fd: Int32, at: ContinuousClock.Instant)? {
        state.withLock { s in s.closedAt.max { $0.value < $1.value }.map { ($0.key, $0.value) } }
    }

    /// How many read(2) calls named `fd` (a waiter that polls by reading shows here).
    package func readCount(_ fd: Int32) -> Int { state.withLock { $0.reads[fd] ?? 0 } }

    /// Memory mapped through this kernel and not yet unmapped through it.
    package var liveMappingCount: Int { state.withLock { $0.mappings.count } }

    /// What each open fake fd was opened as.
    package var openPaths: [String] { state.withLock { Array($0.fakeFDs.values).sorted() } }

    // MARK: bookkeeping

    /// Counts a call of `kind`; returns the errno to fail it with when it is the one chosen.
    private func enter(_ kind: Kind) -> Int32? {
        state.withLock { s in
            s.kindsCalled.insert(kind)
            if Kind.infallible.contains(kind) { return nil }
            s.syscalls += 1
            s.log.append("\(s.syscalls) \(kind.rawValue)")
            guard s.failAt == s.syscalls else { return nil }
            let e = s.failErrno ?? kind.typicalErrno
            s.failed = (kind, e)
            s.failAt = nil
            return e
        }
    }

    /// Records a use of `fd` by `call` when the number was closed here.
    private func noteUse(_ fd: Int32, _ call: @autoclosure () -> String) {
        state.withLock { s in
            if s.closedFDs.contains(fd) && s.fakeFDs[fd] == nil && !s.realFDs.contains(fd) {
                s.staleUses.append("\(call()) \(fd)")
            }
        }
    }

    /// Makes `fd` (a number just handed out) open again.
    private static func reopened(_ s: inout State, _ fd: Int32) { s.closedFDs.remove(fd) }

    private func isReal(_ fd: Int32) -> Bool { state.withLock { $0.realFDs.contains(fd) } }

    private func adoptReal(_ fd: Int32) -> Int32 {
        if fd >= 0 { state.withLock { _ = $0.realFDs.insert(fd); FakeKernel.reopened(&$0, fd) } }
        return fd
    }

    /// Whether `path` lies below a pass-through root.
    private func isPassThrough(_ path: UnsafePointer<CChar>) -> Bool {
        let p = String(cString: path)
        return state.withLock { s in s.roots.contains { p == $0 || p.hasPrefix($0 + "/") } }
    }

    private func newFakeFD(_ s: inout State, _ path: String) -> Int32 {
        let fd = s.nextFD
        s.nextFD += 1
        s.fakeFDs[fd] = path
        FakeKernel.reopened(&s, fd)
        return fd
    }

    // MARK: SyscallProvider: fds

    package func open(_ path: UnsafePointer<CChar>, _ flags: Int32, _ mode: UInt32) -> Int32 {
        if let e = enter(.open) { return -e }
        if isPassThrough(path) { return adoptReal(linux.open(path, flags, mode)) }
        let p = String(cString: path)
        return state.withLock { s in
            switch s.files[p] {
            case nil: return -ENOENT
            case .error(let e)?: return -e
            case .node?, .contents?: return newFakeFD(&s, p)
            }
        }
    }

    package func openat(_ directory: Int32, _ path: UnsafePointer<CChar>, _ flags: Int32, _ mode: UInt32) -> Int32 {
        if let e = enter(.openat) { return -e }
        noteUse(directory, "openat")
        guard isReal(directory) else { return -EBADF }
        return adoptReal(linux.openat(directory, path, flags, mode))
    }

    package func close(_ fd: Int32) -> Int32 {
        let injected = enter(.close)
        noteUse(fd, "close")
        let real = state.withLock { s -> Bool? in
            if s.fakeFDs.removeValue(forKey: fd) != nil {
                s.readOffsets[fd] = nil
                s.closedFDs.insert(fd)
                s.closedAt[fd] = .now
                return false
            }
            if s.realFDs.remove(fd) != nil {
                s.closedFDs.insert(fd)
                s.closedAt[fd] = .now
                return true
            }
            return nil
        }
        let r: Int32
        switch real {
        case nil: r = -EBADF
        case false?: r = 0
        case true?: r = linux.close(fd)
        }
        // Like Linux: the fd is gone even when close reports an error.
        if let injected, real != nil { return -injected }
        return r
    }

    package func ioctl(_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) -> Int32 {
        noteUse(fd, "ioctl 0x\(String(request, radix: 16))")
        var bytes: [UInt8] = []
        // Struct arguments start with argsz/size; small values are integers passed as the argument.
        if let a = argument, request == VFIO_GROUP_GET_DEVICE_FD || request == VFIO_GROUP_SET_CONTAINER {
            // A C string (the device name), or a pointer to one int (the container fd).
            let n = request == VFIO_GROUP_SET_CONTAINER ? 4 : strlen(a.assumingMemoryBound(to: CChar.self)) + 1
            bytes = Array(UnsafeRawBufferPointer(start: a, count: n))
        } else if let a = argument, UInt(bitPattern: a) > 0x10000 {
            let n = min(Int(a.loadUnaligned(as: UInt32.self)), 1 << 16)
            bytes = Array(UnsafeRawBufferPointer(start: a, count: max(n, 4)))
        }
        let handler = state.withLock { s -> IoctlHandler? in
            s.calls.append(Call(fd: fd, request: request, bytes: bytes))
            return s.fakeFDs[fd] == nil && !s.realFDs.contains(fd) ? nil : s.handlers[request]
        }
        if let e = enter(.ioctl) { return -e }
        guard state.withLock({ $0.fakeFDs[fd] != nil || $0.realFDs.contains(fd) }) else { return -EBADF }
        guard let handler else { return isReal(fd) ? linux.ioctl(fd, request, argument) : -ENOTTY }
        return handler(fd, argument)
    }

    package func pread(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, _ offset: Int64) -> Int {
        if let e = enter(.pread) { return -Int(e) }
        noteUse(fd, "pread")
        if isReal(fd) { return linux.pread(fd, buffer, offset) }
        guard let io = state.withLock({ $0.fileIO }) else { return -Int(EINVAL) }
        return io(fd, offset, buffer, false)
    }

    package func pwrite(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, _ offset: Int64) -> Int {
        if let e = enter(.pwrite) { return -Int(e) }
        noteUse(fd, "pwrite")
        if isReal(fd) { return linux.pwrite(fd, buffer, offset) }
        guard let io = state.withLock({ $0.fileIO }) else { return -Int(EINVAL) }
        return io(fd, offset, UnsafeMutableRawBufferPointer(mutating: buffer), true)
    }

    package func read(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer) -> Int {
        if let e = enter(.read) { return -Int(e) }
        noteUse(fd, "read")
        if isReal(fd) {
            state.withLock { $0.reads[fd, default: 0] += 1 }
            return linux.read(fd, buffer)
        }
        return state.withLock { s in
            s.reads[fd, default: 0] += 1
            guard let path = s.fakeFDs[fd], case .contents(let bytes)? = s.files[path] else { return -Int(EINVAL) }
            let at = s.readOffsets[fd] ?? 0
            let n = min(buffer.count, bytes.count - at)
            for i in 0..<n { buffer[i] = bytes[at + i] }
            s.readOffsets[fd] = at + n
            return n
        }
    }

    package func write(_ fd: Int32, _ buffer: UnsafeRawBufferPointer) -> Int {
        if let e = enter(.write) { return -Int(e) }
        noteUse(fd, "write")
        return isReal(fd) ? linux.write(fd, buffer) : -Int(EINVAL)
    }

    package func fsync(_ fd: Int32) -> Int32 {
        if let e = enter(.fsync) { return -e }
        noteUse(fd, "fsync")
        return isReal(fd) ? linux.fsync(fd) : 0
    }

    package func ftruncate(_ fd: Int32, _ length: Int64) -> Int32 {
        if let e = enter(.ftruncate) { return -e }
        noteUse(fd, "ftruncate")
        return isReal(fd) ? linux.ftruncate(fd, length) : 0
    }

    package func flock(_ fd: Int32, _ operation: Int32) -> Int32 {
        if let e = enter(.flock) { return -e }
        noteUse(fd, "flock")
        return isReal(fd) ? linux.flock(fd, operation) : 0
    }

    package func fcntl(_ fd: Int32, _ command: Int32, _ argument: Int32) -> Int32 {
        if let e = enter(.fcntl) { return -e }
        noteUse(fd, "fcntl")
        if isReal(fd) {
            let r = linux.fcntl(fd, command, argument)
            return command == F_DUPFD_CLOEXEC || command == F_DUPFD ? adoptReal(r) : r
        }
        return state.withLock { s in
            guard let path = s.fakeFDs[fd] else { return -EBADF }
            if command == F_DUPFD_CLOEXEC || command == F_DUPFD { return newFakeFD(&s, path) }
            return 0
        }
    }

    package func getdents(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer) -> Int {
        if let e = enter(.getdents64) { return -Int(e) }
        noteUse(fd, "getdents64")
        return isReal(fd) ? linux.getdents(fd, buffer) : -Int(ENOTDIR)
    }

    package func fstat(_ fd: Int32, _ status: inout FileStatus) -> Int32 {
        if let e = enter(.fstat) { return -e }
        noteUse(fd, "fstat")
        if isReal(fd) { return linux.fstat(fd, &status) }
        guard state.withLock({ $0.fakeFDs[fd] != nil }) else { return -EBADF }
        status = FileStatus(mode: 0o020600)  // a character device, rw for its owner
        return 0
    }

    // MARK: SyscallProvider: paths

    /// A stat of a fake node: a character device for `.node`, the errno for `.error`.
    private func fakeStat(_ path: UnsafePointer<CChar>, _ status: inout FileStatus) -> Int32 {
        let p = String(cString: path)
        switch state.withLock({ $0.files[p] }) {
        case nil: return -ENOENT
        case .error(let e)?: return -e
        case .node?:
            status = FileStatus(mode: 0o020600)
            return 0
        case .contents?:
            status = FileStatus(mode: 0o100444)  // a regular file, read-only
            return 0
        }
    }

    package func stat(_ path: UnsafePointer<CChar>, _ status: inout FileStatus) -> Int32 {
        if let e = enter(.stat) { return -e }
        return isPassThrough(path) ? linux.stat(path, &status) : fakeStat(path, &status)
    }

    package func lstat(_ path: UnsafePointer<CChar>, _ status: inout FileStatus) -> Int32 {
        if let e = enter(.lstat) { return -e }
        return isPassThrough(path) ? linux.lstat(path, &status) : fakeStat(path, &status)
    }

    package func readlink(_ path: UnsafePointer<CChar>, _ buffer: UnsafeMutableRawBufferPointer) -> Int {
        if let e = enter(.readlink) { return -Int(e) }
        return isPassThrough(path) ? linux.readlink(path, buffer) : -Int(ENOENT)
    }

    package func access(_ path: UnsafePointer<CChar>, _ mode: Int32) -> Int32 {
        if let e = enter(.access) { return -e }
        if isPassThrough(path) { return linux.access(path, mode) }
        var st = FileStatus()
        return fakeStat(path, &st)
    }

    package func mkdir(_ path: UnsafePointer<CChar>, _ mode: UInt32) -> Int32 {
        if let e = enter(.mkdir) { return -e }
        return isPassThrough(path) ? linux.mkdir(path, mode) : -EACCES
    }

    package func unlink(_ path: UnsafePointer<CChar>) -> Int32 {
        if let e = enter(.unlink) { return -e }
        return isPassThrough(path) ? linux.unlink(path) : -ENOENT
    }

    package func unlinkat(_ directory: Int32, _ path: UnsafePointer<CChar>, _ flags: Int32) -> Int32 {
        if let e = enter(.unlinkat) { return -e }
        noteUse(directory, "unlinkat")
        return isReal(directory) ? linux.unlinkat(directory, path, flags) : -EBADF
    }

    package func renameat(_ fromDirectory: Int32, _ from: UnsafePointer<CChar>, _ toDirectory: Int32,
                          _ to: UnsafePointer<CChar>) -> Int32 {
        if let e = enter(.renameat) { return -e }
        noteUse(fromDirectory, "renameat")
        guard isReal(fromDirectory), isReal(toDirectory) else { return -EBADF }
        return linux.renameat(fromDirectory, from, toDirectory, to)
    }

    // MARK: SyscallProvider: memory

    package func mmap(_ length: Int, _ protection: Int32, _ flags: Int32, _ fd: Int32, _ offset: Int64)
        -> (UnsafeMutableRawPointer?, Int32)
    {
        if let e = enter(.mmap) { return (nil, -e) }
        // Fake fds (regions, memfds) are backed by anonymous memory.
        if fd >= 0 { noteUse(fd, "mmap") }
        let (p, e) = isReal(fd)
            ? linux.mmap(length, protection, flags, fd, offset)
            : linux.mmap(length, protection, (flags & ~MAP_HUGETLB) | MAP_ANONYMOUS, -1, 0)
        guard let p else { return (nil, e) }
        state.withLock { _ = $0.mappings.insert(UInt(bitPattern: p)) }
        return (p, 0)
    }

    package func mmapFixed(_ address: UnsafeMutableRawPointer, _ length: Int, _ protection: Int32, _ flags: Int32,
                           _ fd: Int32, _ offset: Int64) -> Int32
    {
        if let e = enter(.mmap) { return -e }
        if fd >= 0 { noteUse(fd, "mmap") }
        // The address stays one of this kernel's mappings (munmap ends it).
        return isReal(fd)
            ? linux.mmapFixed(address, length, protection, flags, fd, offset)
            : linux.mmapFixed(address, length, protection, (flags & ~MAP_HUGETLB) | MAP_ANONYMOUS, -1, 0)
    }

    package func munmap(_ address: UnsafeMutableRawPointer, _ length: Int) -> Int32 {
        let injected = enter(.munmap)
        state.withLock { _ = $0.mappings.remove(UInt(bitPattern: address)) }
        let r = linux.munmap(address, length)
        // Reported after the memory went (an unmap of a whole mapping cannot really fail).
        if let injected { return -injected }
        return r
    }

    package func memfdCreate(_ name: UnsafePointer<CChar>, _ flags: UInt32) -> Int32 {
        if let e = enter(.memfd_create) { return -e }
        return adoptReal(linux.memfdCreate(name, flags))
    }

    // MARK: SyscallProvider: events, threads, time

    package func eventfd(_ initial: UInt32, _ flags: Int32) -> Int32 {
        if let e = enter(.eventfd) { return -e }
        return adoptReal(linux.eventfd(initial, flags))
    }

    package func poll(_ fds: UnsafeMutablePointer<pollfd>, _ count: Int, _ timeoutNanoseconds: Int64) -> Int32 {
        if let e = enter(.poll) { return -e }
        for i in 0..<count { noteUse(fds[i].fd, "poll") }
        return linux.poll(fds, count, timeoutNanoseconds)
    }

    package func startThread(_ body: @escaping @Sendable () -> Void) -> Int32 {
        if let e = enter(.pthread_create) { return -e }
        return linux.startThread(body)
    }

    package func nanosleep(_ nanoseconds: Int64) -> Int32 {
        if let e = enter(.nanosleep) { return -e }
        return linux.nanosleep(nanoseconds)
    }

    package func schedYield() -> Int32 {
        _ = enter(.sched_yield)
        return linux.schedYield()
    }

    // MARK: SyscallProvider: process and machine

    package func getpid() -> Int32 { _ = enter(.getpid); return linux.getpid() }
    package func getuid() -> UInt32 { _ = enter(.getuid); return linux.getuid() }
    package func geteuid() -> UInt32 { _ = enter(.geteuid); return linux.geteuid() }
    package func getgid() -> UInt32 { _ = enter(.getgid); return linux.getgid() }

    package func getrlimit(_ resource: Int32, _ soft: inout UInt64, _ hard: inout UInt64) -> Int32 {
        if let e = enter(.getrlimit) { return -e }
        return linux.getrlimit(resource, &soft, &hard)
    }

    package func uname(release: UnsafeMutableRawBufferPointer) -> Int {
        if let e = enter(.uname) { return -Int(e) }
        return linux.uname(release: release)
    }

    package func sysconf(_ name: Int32) -> Int {
        if let e = enter(.sysconf) { return -Int(e) }
        return linux.sysconf(name)
    }

    // MARK: SyscallProvider: child processes

    package func spawn(_ program: UnsafePointer<CChar>, _ arguments: UnsafePointer<UnsafeMutablePointer<CChar>?>,
                       _ environment: UnsafePointer<UnsafeMutablePointer<CChar>?>, _ plan: SpawnPlan) -> (Int32?, Int32)
    {
        if let e = enter(.posix_spawnp) { return (nil, -e) }
        return linux.spawn(program, arguments, environment, plan)
    }

    package func waitpid(_ pid: Int32, _ status: inout Int32, _ options: Int32) -> Int32 {
        if let e = enter(.waitpid) { return -e }
        return linux.waitpid(pid, &status, options)
    }

    package func kill(_ pid: Int32, _ signal: Int32) -> Int32 {
        if let e = enter(.kill) { return -e }
        return linux.kill(pid, signal)
    }

    package func sigmask(_ how: Int32, _ set: UnsafePointer<sigset_t>?, _ old: UnsafeMutablePointer<sigset_t>?) -> Int32 {
        if let e = enter(.pthread_sigmask) { return -e }
        return linux.sigmask(how, set, old)
    }

    package func sigtimedwait(_ set: UnsafePointer<sigset_t>, _ timeoutNanoseconds: Int64) -> Int32 {
        if let e = enter(.sigtimedwait) { return -e }
        return linux.sigtimedwait(set, timeoutNanoseconds)
    }
}
