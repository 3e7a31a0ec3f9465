import CVFIO
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The kernel as VFIOKit sees it: every syscall the library makes goes through
/// one of these functions, so tests can put a fake kernel underneath.
///
/// Results follow the kernel's own convention: a non-negative result, or
/// `-errno`. The real provider is used unless a test installs another with
/// ``Syscalls/withProvider(_:_:)``. An fd or a mapping belongs to the
/// provider that made it: every later call on it, and its close or munmap, go
/// to that provider, inside or outside `withProvider`.
public protocol SyscallProvider: Sendable {
    func open(_ path: UnsafePointer<CChar>, _ flags: Int32, _ mode: UInt32) -> Int32
    func close(_ fd: Int32) -> Int32
    func ioctl(_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) -> Int32
    func pread(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, _ offset: Int64) -> Int
    func pwrite(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, _ offset: Int64) -> Int
    func read(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer) -> Int
    func write(_ fd: Int32, _ buffer: UnsafeRawBufferPointer) -> Int
    /// Returns the address, or nil with `-errno` in the second element.
    func mmap(_ length: Int, _ protection: Int32, _ flags: Int32, _ fd: Int32, _ offset: Int64)
        -> (UnsafeMutableRawPointer?, Int32)
    func munmap(_ address: UnsafeMutableRawPointer, _ length: Int) -> Int32
    func eventfd(_ initial: UInt32, _ flags: Int32) -> Int32
    func poll(_ fds: UnsafeMutablePointer<pollfd>, _ count: Int, _ timeoutMilliseconds: Int32) -> Int32
    func memfdCreate(_ name: UnsafePointer<CChar>, _ flags: UInt32) -> Int32
    func ftruncate(_ fd: Int32, _ length: Int64) -> Int32
}

/// Linux itself.
public struct LinuxSyscalls: SyscallProvider {
    public init() {}
    @inline(__always) private func r(_ v: Int32) -> Int32 { v < 0 ? -cvfio_errno() : v }
    @inline(__always) private func r(_ v: Int) -> Int { v < 0 ? -Int(cvfio_errno()) : v }

    public func open(_ path: UnsafePointer<CChar>, _ flags: Int32, _ mode: UInt32) -> Int32 {
        r(cvfio_sys_open(path, flags, mode))
    }
    public func close(_ fd: Int32) -> Int32 { r(Glibc.close(fd)) }
    @inline(__always)
    public func ioctl(_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) -> Int32 {
        r(cvfio_sys_ioctl(fd, request, argument))
    }
    public func pread(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, _ offset: Int64) -> Int {
        r(Glibc.pread(fd, buffer.baseAddress, buffer.count, off_t(offset)))
    }
    public func pwrite(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, _ offset: Int64) -> Int {
        r(Glibc.pwrite(fd, buffer.baseAddress, buffer.count, off_t(offset)))
    }
    public func read(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer) -> Int {
        r(Glibc.read(fd, buffer.baseAddress, buffer.count))
    }
    public func write(_ fd: Int32, _ buffer: UnsafeRawBufferPointer) -> Int {
        r(Glibc.write(fd, buffer.baseAddress, buffer.count))
    }
    public func mmap(_ length: Int, _ protection: Int32, _ flags: Int32, _ fd: Int32, _ offset: Int64)
        -> (UnsafeMutableRawPointer?, Int32)
    {
        let p = Glibc.mmap(nil, length, protection, flags, fd, off_t(offset))
        if p == MAP_FAILED || p == nil { return (nil, -cvfio_errno()) }
        return (p, 0)
    }
    public func munmap(_ address: UnsafeMutableRawPointer, _ length: Int) -> Int32 {
        r(Glibc.munmap(address, length))
    }
    public func eventfd(_ initial: UInt32, _ flags: Int32) -> Int32 { r(cvfio_sys_eventfd(initial, flags)) }
    public func poll(_ fds: UnsafeMutablePointer<pollfd>, _ count: Int, _ timeoutMilliseconds: Int32) -> Int32 {
        r(Glibc.poll(fds, nfds_t(count), timeoutMilliseconds))
    }
    public func memfdCreate(_ name: UnsafePointer<CChar>, _ flags: UInt32) -> Int32 {
        r(cvfio_sys_memfd_create(name, flags))
    }
    public func ftruncate(_ fd: Int32, _ length: Int64) -> Int32 { r(Glibc.ftruncate(fd, off_t(length))) }
}

/// Installing a different kernel underneath VFIOKit, for tests.
public enum Syscalls {
    /// The provider in force for the current task; nil means Linux itself.
    @TaskLocal public static var provider: (any SyscallProvider)? = nil

    /// Runs `body` with `provider` as the kernel, for this task and its
    /// children: fds, eventfds and memory made inside `body` belong to it for
    /// their whole life.
    public static func withProvider<R>(_ provider: any SyscallProvider, _ body: () throws -> R) rethrows -> R {
        try $provider.withValue(provider) { try body() }
    }

    /// Runs `body` with `provider` as the kernel, for this task and its children.
    public static func withProvider<R>(
        _ provider: any SyscallProvider, isolation: isolated (any Actor)? = #isolation,
        _ body: () async throws -> R
    ) async rethrows -> R {
        try await $provider.withValue(provider, operation: body)
    }
}

/// One internal function per syscall: dispatch to the given kernel (nil:
/// Linux itself), retry EINTR (never for close), and turn `-errno` into a
/// ``VFIOError`` that names the call.
///
/// The kernel is an argument, not the task-local: an ``OwnedFD`` (and memory
/// mapped through one) carries the kernel it was made with, so its calls and
/// its close go to that kernel wherever they happen, and hot paths do not
/// read a task-local. Only calls that make something new (open, eventfd,
/// memfd_create, anonymous mmap) read ``current`` once, and the owner they
/// return keeps it.
enum Sys {
    static let linux = LinuxSyscalls()

    /// The kernel in force for this task: the provider a test installed, or
    /// nil for Linux. Read when an owner is made.
    static var current: (any SyscallProvider)? { Syscalls.provider }

    @inline(__always)
    static func call<R>(_ kernel: (any SyscallProvider)?, _ body: (any SyscallProvider) -> R) -> R {
        if let kernel { return body(kernel) }
        return body(linux)
    }

    static func fail(_ operation: String, _ result: some BinaryInteger, object: String?) -> VFIOError {
        VFIOError(operation: operation, errno: Errno(rawValue: CInt(-Int(result))), object: object)
    }

    static func open(_ kernel: (any SyscallProvider)?, _ path: String, _ flags: Int32, mode: UInt32 = 0)
        throws(VFIOError) -> Int32
    {
        while true {
            let fd = path.withCString { p in call(kernel) { $0.open(p, flags | O_CLOEXEC, mode) } }
            if fd >= 0 { return fd }
            if fd != -EINTR { throw fail("open", fd, object: path) }
        }
    }

    /// Closes `fd`. Never retried: after EINTR the fd is gone on Linux.
    static func close(_ kernel: (any SyscallProvider)?, _ fd: Int32, object: @autoclosure () -> String? = nil)
        throws(VFIOError)
    {
        let r = call(kernel) { $0.close(fd) }
        if r < 0 && r != -EINTR { throw fail("close", r, object: object()) }
    }

    // The calls on hot paths (ioctl, read, write, poll) are generic over the
    // kernel: an owned fd calls them with `Sys.linux` (statically dispatched,
    // no existential on the path) or with its fake.

    /// Issues an ioctl whose name is looked up from the request for errors.
    @inline(__always)
    static func ioctl<K: SyscallProvider>(
        _ kernel: K, _ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?,
        object: @autoclosure () -> String? = nil
    ) throws(VFIOError) -> Int32 {
        while true {
            let r = kernel.ioctl(fd, request, argument)
            if r >= 0 { return r }
            if r != -EINTR { throw fail(IoctlNames.name(of: request), r, object: object()) }
        }
    }

    /// Issues an ioctl on a fixed-size argument struct.
    @inline(__always)
    static func ioctl<K: SyscallProvider, A>(
        _ kernel: K, _ fd: Int32, _ request: UInt, _ argument: inout A, object: @autoclosure () -> String? = nil
    ) throws(VFIOError) -> Int32 {
        while true {
            let r = withUnsafeMutableBytes(of: &argument) { raw in kernel.ioctl(fd, request, raw.baseAddress) }
            if r >= 0 { return r }
            if r != -EINTR { throw fail(IoctlNames.name(of: request), r, object: object()) }
        }
    }

    /// Reads; EAGAIN comes back as nil so non-blocking readers can poll.
    @inline(__always)
    static func read<K: SyscallProvider>(_ kernel: K, _ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer,
                                         object: @autoclosure () -> String? = nil) throws(VFIOError) -> Int?
    {
        while true {
            let r = kernel.read(fd, buffer)
            if r >= 0 { return r }
            if r == -Int(EAGAIN) { return nil }
            if r != -Int(EINTR) { throw fail("read", r, object: object()) }
        }
    }

    static func write<K: SyscallProvider>(_ kernel: K, _ fd: Int32, _ buffer: UnsafeRawBufferPointer,
                                          object: @autoclosure () -> String? = nil) throws(VFIOError) -> Int
    {
        while true {
            let r = kernel.write(fd, buffer)
            if r >= 0 { return r }
            if r != -Int(EINTR) { throw fail("write", r, object: object()) }
        }
    }

    /// Polls; returns the number of ready fds (0 on timeout). EINTR is retried
    /// with the full timeout again, which is conservative for waits.
    @inline(__always)
    static func poll<K: SyscallProvider>(_ kernel: K, _ fds: UnsafeMutablePointer<pollfd>, count: Int,
                                         timeoutMilliseconds: Int32, object: @autoclosure () -> String? = nil)
        throws(VFIOError) -> Int32
    {
        while true {
            let r = kernel.poll(fds, count, timeoutMilliseconds)
            if r >= 0 { return r }
            if r != -EINTR { throw fail("poll", r, object: object()) }
        }
    }

    static func pread(_ kernel: (any SyscallProvider)?, _ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer,
                      at offset: Int64, object: @autoclosure () -> String? = nil) throws(VFIOError) -> Int
    {
        while true {
            let r = call(kernel) { $0.pread(fd, buffer, offset) }
            if r >= 0 { return r }
            if r != -Int(EINTR) { throw fail("pread", r, object: object()) }
        }
    }

    static func pwrite(_ kernel: (any SyscallProvider)?, _ fd: Int32, _ buffer: UnsafeRawBufferPointer,
                       at offset: Int64, object: @autoclosure () -> String? = nil) throws(VFIOError) -> Int
    {
        while true {
            let r = call(kernel) { $0.pwrite(fd, buffer, offset) }
            if r >= 0 { return r }
            if r != -Int(EINTR) { throw fail("pwrite", r, object: object()) }
        }
    }

    static func mmap(
        _ kernel: (any SyscallProvider)?, length: Int, protection: Int32, flags: Int32, fd: Int32 = -1,
        offset: Int64 = 0, object: @autoclosure () -> String? = nil
    ) throws(VFIOError) -> UnsafeMutableRawPointer {
        let (p, e) = call(kernel) { $0.mmap(length, protection, flags, fd, offset) }
        guard let p else { throw fail("mmap", e, object: object()) }
        return p
    }

    static func munmap(_ kernel: (any SyscallProvider)?, _ address: UnsafeMutableRawPointer, length: Int)
        throws(VFIOError)
    {
        let r = call(kernel) { $0.munmap(address, length) }
        if r < 0 { throw fail("munmap", r, object: nil) }
    }

    static func eventfd(_ kernel: (any SyscallProvider)?, initial: UInt32 = 0, flags: Int32) throws(VFIOError)
        -> Int32
    {
        let r = call(kernel) { $0.eventfd(initial, flags | CVFIO_EFD_CLOEXEC) }
        if r < 0 { throw fail("eventfd", r, object: nil) }
        return r
    }

    static func memfdCreate(_ kernel: (any SyscallProvider)?, _ name: String, flags: UInt32) throws(VFIOError)
        -> Int32
    {
        let r = name.withCString { n in call(kernel) { $0.memfdCreate(n, flags | CVFIO_MFD_CLOEXEC) } }
        if r < 0 { throw fail("memfd_create", r, object: name) }
        return r
    }

    static func ftruncate(_ kernel: (any SyscallProvider)?, _ fd: Int32, length: Int64,
                          object: @autoclosure () -> String? = nil) throws(VFIOError)
    {
        while true {
            let r = call(kernel) { $0.ftruncate(fd, length) }
            if r >= 0 { return }
            if r != -EINTR { throw fail("ftruncate", r, object: object()) }
        }
    }
}
