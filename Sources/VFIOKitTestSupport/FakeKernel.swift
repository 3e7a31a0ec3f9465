import CVFIO
import Synchronization
import VFIOKit

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A kernel for unit tests: ioctls answered by handlers the test installs,
/// every call recorded with the bytes it carried, fds counted so a test can
/// assert that nothing leaked.
///
/// Memory (mmap/munmap), eventfds and poll/read/write on them are real, so
/// buffers and interrupt waits behave as they do on Linux.
///
///     let kernel = FakeKernel()
///     kernel.files["/dev/iommu"] = .node
///     kernel.onIoctl(IOMMU_IOAS_ALLOC) { _, arg in
///         arg!.assumingMemoryBound(to: iommu_ioas_alloc.self).pointee.out_ioas_id = 7; return 0 }
///     try Syscalls.withProvider(kernel) { ... }
public final class FakeKernel: SyscallProvider, @unchecked Sendable {
    // @unchecked: all mutable state is behind `state`'s mutex.

    /// What an ioctl handler returns: a non-negative result or `-errno`.
    public typealias IoctlHandler = @Sendable (_ fd: Int32, _ argument: UnsafeMutableRawPointer?) -> Int32
    public typealias FileIO = @Sendable (_ fd: Int32, _ offset: Int64, _ buffer: UnsafeMutableRawBufferPointer, _ isWrite: Bool) -> Int

    public enum File: Sendable {
        /// Opens and gives a fresh fake fd.
        case node
        /// Fails with this errno.
        case error(Int32)
    }

    /// One recorded ioctl: the request, the fd, and the argument bytes as the
    /// kernel saw them on entry (argsz/size bytes of the struct).
    public struct Call: Sendable {
        public var fd: Int32
        public var request: UInt
        public var bytes: [UInt8]
        /// Reads a `T` out of the recorded argument.
        public func argument<T>(as: T.Type = T.self) -> T {
            var out = [UInt8](repeating: 0, count: MemoryLayout<T>.size)
            for i in 0..<min(bytes.count, out.count) { out[i] = bytes[i] }
            return out.withUnsafeBytes { $0.loadUnaligned(as: T.self) }
        }
    }

    struct State {
        var nextFD: Int32 = 1000
        var fakeFDs: [Int32: String] = [:]
        var realFDs: Set<Int32> = []
        var files: [String: File] = [:]
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
    }

    private let state = Mutex(State())

    public init() {}

    // MARK: test set-up and inspection

    /// Paths that `open` knows.
    public var files: [String: File] {
        get { state.withLock { $0.files } }
        set { state.withLock { $0.files = newValue } }
    }

    /// Answers `request` with `handler`.
    public func onIoctl(_ request: UInt, _ handler: @escaping IoctlHandler) {
        state.withLock { $0.handlers[request] = handler }
    }

    /// Answers pread/pwrite on fake fds.
    public func onFileIO(_ handler: @escaping FileIO) { state.withLock { $0.fileIO = handler } }

    /// Every ioctl so far, in order.
    public var calls: [Call] { state.withLock { $0.calls } }

    /// The recorded calls of one request.
    public func calls(_ request: UInt) -> [Call] { calls.filter { $0.request == request } }

    /// Fds open now (fake and real ones this kernel handed out).
    public var openFDCount: Int { state.withLock { $0.fakeFDs.count + $0.realFDs.count } }

    /// Every syscall that named an fd number after this kernel had closed it
    /// ("read 1003", "ioctl 0x3b6e 1001", "poll 12"): a closed owner's number
    /// reaching the kernel. Empty when the library is correct.
    public var staleFDUses: [String] { state.withLock { $0.staleUses } }

    /// Whether `fd` is open in this kernel now.
    public func isOpen(_ fd: Int32) -> Bool { state.withLock { $0.fakeFDs[fd] != nil || $0.realFDs.contains(fd) } }

    /// The fd this kernel closed last and when, read on the closing thread
    /// (so a test can time a close made by a thread it does not run).
    public var lastClosed: (fd: Int32, at: ContinuousClock.Instant)? {
        state.withLock { s in s.closedAt.max { $0.value < $1.value }.map { ($0.key, $0.value) } }
    }

    /// How many read(2) calls named `fd` (a waiter that polls by reading shows here).
    public func readCount(_ fd: Int32) -> Int { state.withLock { $0.reads[fd] ?? 0 } }

    /// Memory mapped through this kernel and not yet unmapped through it.
    public var liveMappingCount: Int { state.withLock { $0.mappings.count } }

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

    /// What each open fake fd was opened as.
    public var openPaths: [String] { state.withLock { Array($0.fakeFDs.values).sorted() } }

    // MARK: SyscallProvider

    public func open(_ path: UnsafePointer<CChar>, _ flags: Int32, _ mode: UInt32) -> Int32 {
        let p = String(cString: path)
        return state.withLock { s in
            switch s.files[p] {
            case nil: return -ENOENT
            case .error(let e)?: return -e
            case .node?:
                let fd = s.nextFD
                s.nextFD += 1
                s.fakeFDs[fd] = p
                FakeKernel.reopened(&s, fd)
                return fd
            }
        }
    }

    public func close(_ fd: Int32) -> Int32 {
        noteUse(fd, "close")
        let real = state.withLock { s -> Bool? in
            if s.fakeFDs.removeValue(forKey: fd) != nil {
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
        switch real {
        case nil: return -EBADF
        case false?: return 0
        case true?: return Glibc.close(fd) == 0 ? 0 : -errno
        }
    }

    public func ioctl(_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) -> Int32 {
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
        guard state.withLock({ $0.fakeFDs[fd] != nil || $0.realFDs.contains(fd) }) else { return -EBADF }
        guard let handler else { return -ENOTTY }
        return handler(fd, argument)
    }

    public func pread(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, _ offset: Int64) -> Int {
        noteUse(fd, "pread")
        if let r = realIO(fd, { Glibc.pread(fd, buffer.baseAddress, buffer.count, off_t(offset)) }) { return r }
        guard let io = state.withLock({ $0.fileIO }) else { return -Int(EINVAL) }
        return io(fd, offset, buffer, false)
    }

    public func pwrite(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, _ offset: Int64) -> Int {
        noteUse(fd, "pwrite")
        if let r = realIO(fd, { Glibc.pwrite(fd, buffer.baseAddress, buffer.count, off_t(offset)) }) { return r }
        guard let io = state.withLock({ $0.fileIO }) else { return -Int(EINVAL) }
        return io(fd, offset, UnsafeMutableRawBufferPointer(mutating: buffer), true)
    }

    public func read(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer) -> Int {
        noteUse(fd, "read")
        state.withLock { $0.reads[fd, default: 0] += 1 }
        return realIO(fd, { Glibc.read(fd, buffer.baseAddress, buffer.count) }) ?? -Int(EINVAL)
    }

    public func write(_ fd: Int32, _ buffer: UnsafeRawBufferPointer) -> Int {
        noteUse(fd, "write")
        return realIO(fd, { Glibc.write(fd, buffer.baseAddress, buffer.count) }) ?? -Int(EINVAL)
    }

    public func mmap(_ length: Int, _ protection: Int32, _ flags: Int32, _ fd: Int32, _ offset: Int64)
        -> (UnsafeMutableRawPointer?, Int32)
    {
        // Fake fds (regions, memfds) are backed by anonymous memory.
        if fd >= 0 { noteUse(fd, "mmap") }
        let real = state.withLock { $0.realFDs.contains(fd) }
        let p = real
            ? Glibc.mmap(nil, length, protection, flags, fd, off_t(offset))
            : Glibc.mmap(nil, length, protection, (flags & ~MAP_HUGETLB) | MAP_ANONYMOUS, -1, 0)
        if p == MAP_FAILED || p == nil { return (nil, -errno) }
        state.withLock { _ = $0.mappings.insert(UInt(bitPattern: p)) }
        return (p, 0)
    }

    public func munmap(_ address: UnsafeMutableRawPointer, _ length: Int) -> Int32 {
        state.withLock { _ = $0.mappings.remove(UInt(bitPattern: address)) }
        return Glibc.munmap(address, length) == 0 ? 0 : -errno
    }

    public func eventfd(_ initial: UInt32, _ flags: Int32) -> Int32 {
        let fd = cvfio_sys_eventfd(initial, flags)
        if fd < 0 { return -errno }
        state.withLock { _ = $0.realFDs.insert(fd); FakeKernel.reopened(&$0, fd) }
        return fd
    }

    public func poll(_ fds: UnsafeMutablePointer<pollfd>, _ count: Int, _ timeoutMilliseconds: Int32) -> Int32 {
        for i in 0..<count { noteUse(fds[i].fd, "poll") }
        let r = Glibc.poll(fds, nfds_t(count), timeoutMilliseconds)
        return r < 0 ? -errno : r
    }

    public func memfdCreate(_ name: UnsafePointer<CChar>, _ flags: UInt32) -> Int32 {
        let fd = cvfio_sys_memfd_create(name, flags)
        if fd < 0 { return -errno }
        state.withLock { _ = $0.realFDs.insert(fd); FakeKernel.reopened(&$0, fd) }
        return fd
    }

    public func ftruncate(_ fd: Int32, _ length: Int64) -> Int32 {
        noteUse(fd, "ftruncate")
        return realIO(fd, { Int(Glibc.ftruncate(fd, off_t(length))) }).map(Int32.init) ?? 0
    }

    private func realIO(_ fd: Int32, _ body: () -> Int) -> Int? {
        guard state.withLock({ $0.realFDs.contains(fd) }) else { return nil }
        let r = body()
        return r < 0 ? -Int(errno) : r
    }
}
