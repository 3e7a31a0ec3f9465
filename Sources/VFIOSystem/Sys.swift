import CVFIO
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

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
package enum Sys {
    package static let linux = LinuxSyscalls()

    /// The kernel in force for this task: the provider a test installed, or
    /// nil for Linux. Read when an owner is made.
    package static var current: (any SyscallProvider)? { Syscalls.provider }

    @inline(__always)
    package static func call<R>(_ kernel: (any SyscallProvider)?, _ body: (any SyscallProvider) -> R) -> R {
        if let kernel { return body(kernel) }
        return body(linux)
    }

    package static func fail(_ operation: VFIOError.Operation, _ result: some BinaryInteger, object: String?) -> VFIOError {
        VFIOError(operation: operation, errno: Errno(rawValue: CInt(-Int(result))), object: object)
    }

    /// Makes the one call of `body` again while it is interrupted (EINTR);
    /// any other `-errno` becomes a VFIOError naming `operation` and `object`.
    @inline(__always)
    package static func retrying<R: SignedInteger>(_ operation: Syscall, object: @autoclosure () -> String?,
                                                   _ body: () -> R) throws(VFIOError) -> R
    {
        while true {
            let r = body()
            if r >= 0 { return r }
            if r != -R(EINTR) { throw fail(.syscall(operation), r, object: object()) }
        }
    }

    package static func open(_ kernel: (any SyscallProvider)?, _ path: String, _ flags: Int32, mode: UInt32 = 0,
                             object: @autoclosure () -> String? = nil) throws(VFIOError) -> Int32
    {
        try retrying(.open, object: object() ?? path) {
            path.withCString { p in call(kernel) { $0.open(p, flags | O_CLOEXEC, mode) } }
        }
    }

    /// Closes `fd`. Never retried: after EINTR the fd is gone on Linux.
    package static func close(_ kernel: (any SyscallProvider)?, _ fd: Int32, object: @autoclosure () -> String? = nil)
        throws(VFIOError)
    {
        let r = call(kernel) { $0.close(fd) }
        if r < 0 && r != -EINTR { throw fail(.syscall(.close), r, object: object()) }
    }

    // The calls on hot paths (ioctl, read, write, poll) are generic over the
    // kernel: an owned fd calls them with `Sys.linux` (statically dispatched,
    // no existential on the path) or with its fake.

    /// Issues `request`; an error names it (never a name looked up from the
    /// number, which ten requests on different kinds of fd share).
    @inline(__always)
    package static func ioctl<K: SyscallProvider>(
        _ kernel: K, _ fd: Int32, _ request: Request, _ argument: UnsafeMutableRawPointer?,
        object: @autoclosure () -> String? = nil
    ) throws(VFIOError) -> Int32 {
        try ioctl(kernel, fd, number: request.number, as: .ioctl(request), argument, object: object())
    }

    /// Adds the argument's own size to an EINVAL or E2BIG when that size is the
    /// likely cause: an iommufd argument starts with `size` and a VFIO one with
    /// `argsz`, which ``IOMMUArgument/make()`` and ``VFIOArgument/make()`` fill;
    /// a size written by hand below the struct's is EINVAL (main.c
    /// iommufd_fops_ioctl(), each VFIO handler's minsz check), and an iommufd
    /// argument larger than the kernel's struct is E2BIG when the bytes past it
    /// are not zero (copy_struct_from_user()). Only on the error path.
    @inline(never)
    package static func explainArgumentSize(_ error: VFIOError, _ request: Request, _ raw: UnsafeRawBufferPointer,
                                            _ type: Any.Type) -> VFIOError
    {
        let sized = type is any IOMMUArgument.Type || type is any VFIOArgument.Type
        guard raw.count >= 4, error.detail == nil, sized || request.family == .iommufd else { return error }
        let field = type is any VFIOArgument.Type ? "argsz" : "size"
        let said = raw.loadUnaligned(as: UInt32.self)
        var e = error
        let fix = Remedy.advice("build the argument with make(), which zeroes it and sets \(field) to the struct's size; "
                                + "never set \(field) by hand")
        if e.errno == .invalidArgument, sized, Int(said) < raw.count {
            e.detail = "the argument's \(field) is \(said) bytes, less than the \(raw.count) bytes of struct \(type): "
                + "the kernel refuses an argument shorter than the fields it reads"
            e.remedies = [fix]
        } else if e.errno == .argListTooLong, request.family == .iommufd {
            e.detail = "the argument's size is \(said) bytes, more than this kernel's struct for \(request.name), and "
                + "its bytes past that struct are not zero (a larger, newer struct is accepted only when the fields "
                + "this kernel does not know are zero)"
            e.remedies = [fix]
        }
        return e
    }

    /// Issues request `number`, named `operation` in errors: for requests
    /// outside the uapi table (the kernel's selftest `IOMMU_TEST_CMD`).
    @inline(__always)
    package static func ioctl<K: SyscallProvider>(
        _ kernel: K, _ fd: Int32, number: UInt, as operation: @autoclosure () -> VFIOError.Operation,
        _ argument: UnsafeMutableRawPointer?, object: @autoclosure () -> String? = nil
    ) throws(VFIOError) -> Int32 {
        while true {
            let r = kernel.ioctl(fd, number, argument)
            if r >= 0 { return r }
            if r != -EINTR { throw fail(operation(), r, object: object()) }
        }
    }

    /// Reads; EAGAIN comes back as nil so non-blocking readers can poll.
    @inline(__always)
    package static func read<K: SyscallProvider>(_ kernel: K, _ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer,
                                         object: @autoclosure () -> String? = nil) throws(VFIOError) -> Int?
    {
        while true {
            let r = kernel.read(fd, buffer)
            if r >= 0 { return r }
            if r == -Int(EAGAIN) { return nil }
            if r != -Int(EINTR) { throw fail(.syscall(.read), r, object: object()) }
        }
    }

    package static func write<K: SyscallProvider>(_ kernel: K, _ fd: Int32, _ buffer: UnsafeRawBufferPointer,
                                          object: @autoclosure () -> String? = nil) throws(VFIOError) -> Int
    {
        while true {
            let r = kernel.write(fd, buffer)
            if r >= 0 { return r }
            if r != -Int(EINTR) { throw fail(.syscall(.write), r, object: object()) }
        }
    }

    /// Polls (ppoll(2): nanosecond resolution) up to `timeout` (nil: forever);
    /// returns the number of ready fds (0 on timeout). EINTR is retried with
    /// the full timeout again, which is conservative for waits.
    @inline(__always)
    package static func poll<K: SyscallProvider>(_ kernel: K, _ fds: UnsafeMutablePointer<pollfd>, count: Int,
                                         timeout: Duration?, object: @autoclosure () -> String? = nil)
        throws(VFIOError) -> Int32
    {
        let ns = timeout.map(\.kernelNanoseconds) ?? -1
        while true {
            let r = kernel.poll(fds, count, ns)
            if r >= 0 { return r }
            if r != -EINTR { throw fail(.syscall(.poll), r, object: object()) }
        }
    }

    /// pread on Linux itself, statically dispatched (an owned fd's hot path:
    /// config space reads), with no existential copied on the way.
    @inline(__always)
    package static func pread(_ kernel: LinuxSyscalls, _ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer,
                              at offset: Int64, object: @autoclosure () -> String? = nil) throws(VFIOError) -> Int
    {
        try retrying(.pread, object: object()) { kernel.pread(fd, buffer, offset) }
    }

    /// pwrite on Linux itself, statically dispatched (see ``pread(_:_:_:at:object:)``).
    @inline(__always)
    package static func pwrite(_ kernel: LinuxSyscalls, _ fd: Int32, _ buffer: UnsafeRawBufferPointer,
                               at offset: Int64, object: @autoclosure () -> String? = nil) throws(VFIOError) -> Int
    {
        try retrying(.pwrite, object: object()) { kernel.pwrite(fd, buffer, offset) }
    }

    package static func pread(_ kernel: (any SyscallProvider)?, _ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer,
                      at offset: Int64, object: @autoclosure () -> String? = nil) throws(VFIOError) -> Int
    {
        try retrying(.pread, object: object()) { call(kernel) { $0.pread(fd, buffer, offset) } }
    }

    package static func pwrite(_ kernel: (any SyscallProvider)?, _ fd: Int32, _ buffer: UnsafeRawBufferPointer,
                       at offset: Int64, object: @autoclosure () -> String? = nil) throws(VFIOError) -> Int
    {
        try retrying(.pwrite, object: object()) { call(kernel) { $0.pwrite(fd, buffer, offset) } }
    }

    package static func mmap(
        _ kernel: (any SyscallProvider)?, length: Int, protection: Int32, flags: Int32, fd: Int32 = -1,
        offset: Int64 = 0, object: @autoclosure () -> String? = nil
    ) throws(VFIOError) -> UnsafeMutableRawPointer {
        let (p, e) = call(kernel) { $0.mmap(length, protection, flags, fd, offset) }
        guard let p else { throw fail(.syscall(.mmap), e, object: object()) }
        return p
    }

    package static func munmap(_ kernel: (any SyscallProvider)?, _ address: UnsafeMutableRawPointer, length: Int)
        throws(VFIOError)
    {
        let r = call(kernel) { $0.munmap(address, length) }
        if r < 0 { throw fail(.syscall(.munmap), r, object: nil) }
    }

    /// `mmap(MAP_FIXED)` over `length` bytes at `address`, replacing the mapping there.
    package static func mmapFixed(
        _ kernel: (any SyscallProvider)?, at address: UnsafeMutableRawPointer, length: Int, protection: Int32,
        flags: Int32, fd: Int32 = -1, offset: Int64 = 0, object: @autoclosure () -> String? = nil
    ) throws(VFIOError) {
        let r = call(kernel) { $0.mmapFixed(address, length, protection, flags, fd, offset) }
        if r < 0 { throw fail(.syscall(.mmap), r, object: object()) }
    }

    package static func eventfd(_ kernel: (any SyscallProvider)?, initial: UInt32 = 0, flags: Int32) throws(VFIOError)
        -> Int32
    {
        let r = call(kernel) { $0.eventfd(initial, flags | CVFIO_EFD_CLOEXEC) }
        if r < 0 { throw fail(.syscall(.eventfd), r, object: nil) }
        return r
    }

    package static func memfdCreate(_ kernel: (any SyscallProvider)?, _ name: String, flags: UInt32) throws(VFIOError)
        -> Int32
    {
        let r = name.withCString { n in call(kernel) { $0.memfdCreate(n, flags | CVFIO_MFD_CLOEXEC) } }
        if r < 0 { throw fail(.syscall(.memfdCreate), r, object: name) }
        return r
    }

    package static func ftruncate(_ kernel: (any SyscallProvider)?, _ fd: Int32, length: Int64,
                          object: @autoclosure () -> String? = nil) throws(VFIOError)
    {
        _ = try retrying(.ftruncate, object: object()) { call(kernel) { $0.ftruncate(fd, length) } }
    }
}
