import CVFIO

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Linux itself: each requirement is the one C library call of that name,
/// with `-1` + `errno` turned into `-errno`.
package struct LinuxSyscalls: SyscallProvider {
    package init() {}
    @inline(__always) private func r(_ v: Int32) -> Int32 { v < 0 ? -cvfio_errno() : v }
    @inline(__always) private func r(_ v: Int) -> Int { v < 0 ? -Int(cvfio_errno()) : v }

    // MARK: fds

    package func open(_ path: UnsafePointer<CChar>, _ flags: Int32, _ mode: UInt32) -> Int32 {
        r(cvfio_sys_open(path, flags, mode))
    }
    package func openat(_ directory: Int32, _ path: UnsafePointer<CChar>, _ flags: Int32, _ mode: UInt32) -> Int32 {
        r(cvfio_sys_openat(directory, path, flags, mode))
    }
    package func close(_ fd: Int32) -> Int32 { r(Glibc.close(fd)) }
    @inline(__always)
    package func ioctl(_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) -> Int32 {
        r(cvfio_sys_ioctl(fd, request, argument))
    }
    package func pread(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, _ offset: Int64) -> Int {
        r(Glibc.pread(fd, buffer.baseAddress, buffer.count, off_t(offset)))
    }
    package func pwrite(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, _ offset: Int64) -> Int {
        r(Glibc.pwrite(fd, buffer.baseAddress, buffer.count, off_t(offset)))
    }
    @inline(__always)
    package func read(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer) -> Int {
        r(Glibc.read(fd, buffer.baseAddress, buffer.count))
    }
    package func write(_ fd: Int32, _ buffer: UnsafeRawBufferPointer) -> Int {
        r(Glibc.write(fd, buffer.baseAddress, buffer.count))
    }
    package func fsync(_ fd: Int32) -> Int32 { r(Glibc.fsync(fd)) }
    package func ftruncate(_ fd: Int32, _ length: Int64) -> Int32 { r(Glibc.ftruncate(fd, off_t(length))) }
    package func flock(_ fd: Int32, _ operation: Int32) -> Int32 { r(cvfio_sys_flock(fd, operation)) }
    package func fcntl(_ fd: Int32, _ command: Int32, _ argument: Int32) -> Int32 {
        r(cvfio_sys_fcntl(fd, command, argument))
    }
    package func getdents(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer) -> Int {
        r(cvfio_sys_getdents64(fd, buffer.baseAddress, UInt(buffer.count)))
    }
    package func fstat(_ fd: Int32, _ status: inout FileStatus) -> Int32 {
        var st = Glibc.stat()
        let v = r(Glibc.fstat(fd, &st))
        if v == 0 { status = FileStatus(st) }
        return v
    }

    // MARK: paths

    package func stat(_ path: UnsafePointer<CChar>, _ status: inout FileStatus) -> Int32 {
        var st = Glibc.stat()
        let v = r(cvfio_sys_stat(path, &st))
        if v == 0 { status = FileStatus(st) }
        return v
    }
    package func lstat(_ path: UnsafePointer<CChar>, _ status: inout FileStatus) -> Int32 {
        var st = Glibc.stat()
        let v = r(Glibc.lstat(path, &st))
        if v == 0 { status = FileStatus(st) }
        return v
    }
    package func readlink(_ path: UnsafePointer<CChar>, _ buffer: UnsafeMutableRawBufferPointer) -> Int {
        guard let base = buffer.baseAddress else { return -Int(EINVAL) }
        return r(Glibc.readlink(path, base.assumingMemoryBound(to: CChar.self), buffer.count))
    }
    package func access(_ path: UnsafePointer<CChar>, _ mode: Int32) -> Int32 { r(Glibc.access(path, mode)) }
    package func mkdir(_ path: UnsafePointer<CChar>, _ mode: UInt32) -> Int32 { r(Glibc.mkdir(path, mode_t(mode))) }
    package func unlink(_ path: UnsafePointer<CChar>) -> Int32 { r(Glibc.unlink(path)) }
    package func unlinkat(_ directory: Int32, _ path: UnsafePointer<CChar>, _ flags: Int32) -> Int32 {
        r(Glibc.unlinkat(directory, path, flags))
    }
    package func renameat(_ fromDirectory: Int32, _ from: UnsafePointer<CChar>, _ toDirectory: Int32,
                          _ to: UnsafePointer<CChar>) -> Int32 {
        r(Glibc.renameat(fromDirectory, from, toDirectory, to))
    }

    // MARK: memory

    package func mmap(_ length: Int, _ protection: Int32, _ flags: Int32, _ fd: Int32, _ offset: Int64)
        -> (UnsafeMutableRawPointer?, Int32)
    {
        let p = Glibc.mmap(nil, length, protection, flags, fd, off_t(offset))
        if p == MAP_FAILED || p == nil { return (nil, -cvfio_errno()) }
        return (p, 0)
    }
    package func munmap(_ address: UnsafeMutableRawPointer, _ length: Int) -> Int32 {
        r(Glibc.munmap(address, length))
    }
    package func mmapFixed(_ address: UnsafeMutableRawPointer, _ length: Int, _ protection: Int32, _ flags: Int32,
                           _ fd: Int32, _ offset: Int64) -> Int32
    {
        Glibc.mmap(address, length, protection, flags | MAP_FIXED, fd, off_t(offset)) == MAP_FAILED ? -cvfio_errno() : 0
    }
    package func memfdCreate(_ name: UnsafePointer<CChar>, _ flags: UInt32) -> Int32 {
        r(cvfio_sys_memfd_create(name, flags))
    }

    // MARK: events, threads, time

    package func eventfd(_ initial: UInt32, _ flags: Int32) -> Int32 { r(cvfio_sys_eventfd(initial, flags)) }
    @inline(__always)
    package func poll(_ fds: UnsafeMutablePointer<pollfd>, _ count: Int, _ timeoutNanoseconds: Int64) -> Int32 {
        r(cvfio_sys_ppoll(fds, UInt(count), timeoutNanoseconds))
    }

    private final class ThreadBody: Sendable {
        let run: @Sendable () -> Void
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }

    package func startThread(_ body: @escaping @Sendable () -> Void) -> Int32 {
        // Safety: the retained box is handed to the new thread, which takes it back exactly once;
        // when no thread starts it is released here instead.
        let context = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { arg in
            Unmanaged<ThreadBody>.fromOpaque(arg!).takeRetainedValue().run()
            return nil
        }, context)
        if rc != 0 {
            Unmanaged<ThreadBody>.fromOpaque(context).release()
            return -rc
        }
        pthread_detach(thread)
        return 0
    }

    package func nanosleep(_ nanoseconds: Int64) -> Int32 {
        var ts = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
        return r(Glibc.nanosleep(&ts, nil))
    }
    package func schedYield() -> Int32 { r(sched_yield()) }

    // MARK: process and machine

    package func getpid() -> Int32 { Glibc.getpid() }
    package func getuid() -> UInt32 { Glibc.getuid() }
    package func geteuid() -> UInt32 { Glibc.geteuid() }
    package func getgid() -> UInt32 { Glibc.getgid() }
    package func getrlimit(_ resource: Int32, _ soft: inout UInt64, _ hard: inout UInt64) -> Int32 {
        var rl = rlimit()
        let v = r(Glibc.getrlimit(__rlimit_resource_t(UInt32(resource)), &rl))
        if v == 0 {
            soft = UInt64(rl.rlim_cur)
            hard = UInt64(rl.rlim_max)
        }
        return v
    }
    package func uname(release: UnsafeMutableRawBufferPointer) -> Int {
        var u = utsname()
        guard Glibc.uname(&u) == 0 else { return -Int(cvfio_errno()) }
        return withUnsafeBytes(of: &u.release) { raw in
            let n = min(raw.firstIndex(of: 0) ?? raw.count, release.count)
            release.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[..<n]))
            return n
        }
    }
    package func sysconf(_ name: Int32) -> Int {
        let v = Glibc.sysconf(name)
        return v < 0 ? -Int(EINVAL) : v
    }

    // MARK: child processes

    package func spawn(_ program: UnsafePointer<CChar>, _ arguments: UnsafePointer<UnsafeMutablePointer<CChar>?>,
                       _ environment: UnsafePointer<UnsafeMutablePointer<CChar>?>, _ plan: SpawnPlan) -> (Int32?, Int32)
    {
        var actions = posix_spawn_file_actions_t()
        var rc = posix_spawn_file_actions_init(&actions)
        if rc != 0 { return (nil, -rc) }
        defer { posix_spawn_file_actions_destroy(&actions) }
        for fd in plan.inherit {
            rc = posix_spawn_file_actions_adddup2(&actions, fd, fd)
            if rc != 0 { return (nil, -rc) }
        }
        for fd in plan.close {
            rc = posix_spawn_file_actions_addclose(&actions, fd)
            if rc != 0 { return (nil, -rc) }
        }
        if let from = plan.closeFrom {
            rc = cvfio_spawn_file_actions_addclosefrom(&actions, from)
            if rc != 0 { return (nil, -rc) }
        }
        var attr = posix_spawnattr_t()
        rc = posix_spawnattr_init(&attr)
        if rc != 0 { return (nil, -rc) }
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in plan.defaultSignals { sigaddset(&defaults, s) }
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid: pid_t = 0
        rc = posix_spawnp(&pid, program, &actions, &attr, arguments, environment)
        return rc == 0 ? (pid, 0) : (nil, -rc)
    }
    package func waitpid(_ pid: Int32, _ status: inout Int32, _ options: Int32) -> Int32 {
        r(Glibc.waitpid(pid, &status, options))
    }
    package func kill(_ pid: Int32, _ signal: Int32) -> Int32 { r(Glibc.kill(pid, signal)) }
    package func sigmask(_ how: Int32, _ set: UnsafePointer<sigset_t>?, _ old: UnsafeMutablePointer<sigset_t>?) -> Int32 {
        let rc = pthread_sigmask(how, set, old)
        return rc == 0 ? 0 : -rc
    }
    package func sigtimedwait(_ set: UnsafePointer<sigset_t>, _ timeoutNanoseconds: Int64) -> Int32 {
        var ts = timespec(tv_sec: Int(timeoutNanoseconds / 1_000_000_000),
                          tv_nsec: Int(timeoutNanoseconds % 1_000_000_000))
        return r(Glibc.sigtimedwait(set, nil, &ts))
    }
}

extension FileStatus {
    init(_ st: Glibc.stat) {
        self.init(mode: UInt32(st.st_mode), uid: st.st_uid, gid: st.st_gid,
                  rdevMajor: UInt32(truncatingIfNeeded: ((st.st_rdev >> 8) & 0xfff) | ((st.st_rdev >> 32) & ~0xfff)),
                  rdevMinor: UInt32(truncatingIfNeeded: (st.st_rdev & 0xff) | ((st.st_rdev >> 12) & ~0xff)))
    }
}
