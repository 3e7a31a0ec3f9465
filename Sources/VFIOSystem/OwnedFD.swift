import Synchronization

/// A file descriptor with exactly one owner object.
///
/// Every VFIOKit owner (``IOMMUFD``, ``VFIODevice``, ``VFIOGroup``,
/// ``VFIOContainer``, ``EventFD``, fault and event queues) keeps one of these.
///
/// The number is reachable only inside a *use*: ``withDescriptor(_:_:)`` (and
/// the library's own syscalls) count the use in flight for the length of the
/// call. So:
/// - a closed owner never lets its number reach a syscall: a use after
///   ``close()`` throws a "closed" error before the kernel is asked;
/// - a close that races a call in flight does not pull the number from under
///   it: ``close()`` marks the owner closed at once (new uses fail) and the
///   close(2) itself happens when the last use in flight leaves, so the kernel
///   never sees a number that was closed, or reused for another file, while a
///   call was using it.
///
/// Blocking waits that hold a use (``EventFD/wait(timeout:)-6sc0d``,
/// ``EventFD/interrupts()``, the async waits of ``FaultQueue`` and
/// ``VEventQueue``) are woken by the close, so close never waits on them and
/// they end with the "closed" error (or the end of the sequence).
///
/// The fd is served by the kernel that was in force when it was made (the
/// real one, or the fake a test installed with `Syscalls.withProvider`) for
/// every call and for its close, wherever those happen.
///
/// `close()` reports errors and is idempotent; `deinit` closes what was not
/// closed and drops the error, since a deinit cannot throw. A close deferred
/// to the last use also drops its error. close is never retried (EINTR
/// leaves it closed).
public final class OwnedFD: Sendable {
    /// The descriptor number. Only valid inside a use (see ``withDescriptor(_:_:)``).
    package let number: Int32
    /// What the fd is, for errors: a path or a description.
    public let label: String
    /// The kernel this fd belongs to; nil is Linux itself. Fixed when the fd
    /// was made, so calls on it never read the task-local provider.
    package let kernel: (any SyscallProvider)?
    /// `kernel` is nil: hot calls go to `Sys.linux` directly, with no
    /// existential copied on the way.
    package let isLinux: Bool

    /// Bit 0: closed (no new uses). Bit 1: the number is gone (closed(2) or
    /// released). Bits 2...: uses in flight, counted in steps of `use`.
    private let state = Atomic<Int>(0)
    private static let closedBit = 1
    private static let goneBit = 2
    private static let use = 4
    /// Wakes threads blocked in poll on this fd when it closes.
    private let closeWakers = Mutex<CloseWakers>(CloseWakers())
    /// Set once close(2) has returned (or the fd was released).
    private let settled = Atomic<Bool>(false)

    struct CloseWakers {
        var next = 0
        var wakers: [Int: @Sendable () -> Void] = [:]
    }

    /// Owns `number`, which belongs to `kernel` (by default the kernel in
    /// force for this task now).
    package init(_ number: Int32, label: String, kernel: (any SyscallProvider)? = Sys.current) {
        self.number = number
        self.label = label
        self.kernel = kernel
        isLinux = kernel == nil
    }

    /// Opens `path` read-write and owns the result.
    package static func open(_ path: String, flags: Int32 = O_RDWR) throws(VFIOError) -> OwnedFD {
        let kernel = Sys.current
        return OwnedFD(try Sys.open(kernel, path, flags), label: path, kernel: kernel)
    }

    /// Whether ``close()`` has run.
    public var isClosed: Bool { state.load(ordering: .acquiring) & OwnedFD.closedBit != 0 }

    // MARK: uses

    /// Runs `body` with the descriptor number, which stays open (and is not
    /// reused) until `body` returns, even if another thread closes the owner
    /// meanwhile. Throws a "closed" error naming `operation`, without calling
    /// `body`, when the owner was closed.
    ///
    /// Use it to hand the fd to an API VFIOKit does not wrap (poll, epoll,
    /// SCM_RIGHTS). Do not keep the number after `body` returns.
    @inline(__always)
    public func withDescriptor<R>(
        _ operation: @autoclosure () -> VFIOError.Operation = .step(.useFD), _ body: (Int32) throws(VFIOError) -> R
    ) throws(VFIOError) -> R {
        guard enter() else { throw closedError(operation()) }
        defer { leave() }
        return try body(number)
    }

    /// Runs `body` with the numbers of several owners (-1 for nil), each held
    /// open for the call: for arguments that carry fds (eventfds of
    /// `VFIO_DEVICE_SET_IRQS`, group fds of a hot reset). Throws "closed" when
    /// any of them was closed.
    package static func withDescriptors<R>(
        _ owners: [OwnedFD?], _ operation: @autoclosure () -> VFIOError.Operation,
        _ body: ([Int32]) throws(VFIOError) -> R
    ) throws(VFIOError) -> R {
        var entered = 0
        defer { for i in 0..<entered { owners[i]?.leave() } }
        var numbers: [Int32] = []
        numbers.reserveCapacity(owners.count)
        for owner in owners {
            if let owner {
                guard owner.enter() else { throw owner.closedError(operation()) }
                numbers.append(owner.number)
            } else {
                numbers.append(-1)
            }
            entered += 1
        }
        return try body(numbers)
    }

    /// Starts a use; false when the owner is closed.
    @inline(__always)
    package func enter() -> Bool {
        let old = state.wrappingAdd(OwnedFD.use, ordering: .acquiring).oldValue
        if old & OwnedFD.closedBit == 0 { return true }
        leave()
        return false
    }

    /// Ends a use; the last use after a close closes the fd.
    @inline(__always)
    package func leave() {
        if state.wrappingSubtract(OwnedFD.use, ordering: .releasing).newValue == OwnedFD.closedBit {
            closeDeferred()
        }
    }

    /// Claims the one close(2): only from "closed, not gone, no uses".
    private func claimClose() -> Bool {
        state.compareExchange(expected: OwnedFD.closedBit, desired: OwnedFD.closedBit | OwnedFD.goneBit,
                              ordering: .acquiringAndReleasing).exchanged
    }

    @inline(never)
    private func closeDeferred() {
        if claimClose() {
            try? Sys.close(kernel, number, object: label)
            settled.store(true, ordering: .releasing)
        }
    }

    /// Runs the one close(2) and marks the fd settled, reporting its error.
    private func closeNow() throws(VFIOError) {
        defer { settled.store(true, ordering: .releasing) }
        try Sys.close(kernel, number, object: label)
    }

    package func closedError(_ operation: VFIOError.Operation) -> VFIOError {
        VFIOError.invalid(operation, "the fd was already closed", object: label,
                          remedies: [.advice("keep the owner open while it is used")])
    }

    // MARK: closing

    /// Closes the fd; a second call does nothing. When another thread is
    /// inside a call on this fd, the close takes effect when that call returns
    /// (new calls fail at once), and its error, if any, is dropped.
    public func close() throws(VFIOError) {
        let old = state.bitwiseOr(OwnedFD.closedBit, ordering: .acquiringAndReleasing).oldValue
        guard old & OwnedFD.closedBit == 0 else { return }
        wakeBlockedWaiters()
        if old == 0, claimClose() { try closeNow() }
    }

    /// Closes like ``close()``, then, when uses were in flight, waits until
    /// the last has left and close(2) has returned: for owners whose kernel
    /// object cannot be destroyed while its file is open (a fault queue or
    /// vEVENTQ file holds a reference to its object). Blocked waits on the fd
    /// are woken by the close, so this is short; a call still in flight after
    /// `timeout` (one made from inside a use on this thread, say) is an error.
    package func closeAndSettle(timeout: Duration = .seconds(5)) throws(VFIOError) {
        try close()
        if settled.load(ordering: .acquiring) { return }
        let deadline = ContinuousClock.now + timeout
        var pause = 10_000  // ns, doubling to 1 ms
        while !settled.load(ordering: .acquiring) {
            if ContinuousClock.now >= deadline {
                throw VFIOError.invalid(.syscall(.close), "a call on the fd was still in flight after \(timeout); the fd "
                                        + "closes when it returns", object: label,
                                        remedies: [.advice("do not destroy an object from inside a call on its fd")])
            }
            Sys.sleep(kernel, for: .nanoseconds(pause))
            pause = min(pause * 2, 1_000_000)
        }
    }

    /// Closes like ``close()``, and first calls `wake` with the number when
    /// other uses are in flight (an eventfd signals itself so its waiters
    /// return). The number is open while `wake` runs.
    package func close(wakingUsers wake: (Int32) -> Void) throws(VFIOError) {
        guard enter() else { return }
        let old = state.bitwiseOr(OwnedFD.closedBit, ordering: .acquiringAndReleasing).oldValue
        if old & OwnedFD.closedBit == 0 {
            wakeBlockedWaiters()
            if old >= 2 * OwnedFD.use { wake(number) }
        }
        if state.wrappingSubtract(OwnedFD.use, ordering: .releasing).newValue == OwnedFD.closedBit, claimClose() {
            try closeNow()
        }
    }

    /// Registers `wake`, called once when the owner closes; nil (and not
    /// registered) when it is closed already.
    package func onClose(_ wake: @escaping @Sendable () -> Void) -> Int? {
        closeWakers.withLock { w in
            if isClosed { return nil }
            w.next += 1
            w.wakers[w.next] = wake
            return w.next
        }
    }

    package func removeCloseWaker(_ id: Int) {
        _ = closeWakers.withLock { $0.wakers.removeValue(forKey: id) }
    }

    private func wakeBlockedWaiters() {
        let wakers = closeWakers.withLock { w in
            defer { w.wakers = [:] }
            return Array(w.wakers.values)
        }
        for wake in wakers { wake() }
    }

    /// Gives up ownership without closing (the fd now belongs to the caller).
    package func release() -> Int32 {
        state.bitwiseOr(OwnedFD.closedBit | OwnedFD.goneBit, ordering: .acquiringAndReleasing)
        settled.store(true, ordering: .releasing)
        return number
    }

    /// The number, for code in this package that hands it to another process
    /// (a launcher) or reports it, and keeps the owner open for
    /// as long as that matters. Not a use: prefer ``withDescriptor(_:_:)``.
    package var numberForHandoff: Int32 { number }

    deinit {
        // No use can be in flight: every use holds a reference.
        if state.load(ordering: .acquiring) & OwnedFD.closedBit == 0 { try? Sys.close(kernel, number, object: label) }
    }
}

// MARK: syscalls on an owned fd

extension OwnedFD {
    // The `...Held` calls are for a caller that holds a use (between enter()
    // and leave()): they only dispatch to the kernel.

    @inline(__always)
    package func ioctlHeld(_ request: Request, _ argument: UnsafeMutableRawPointer?, object: @autoclosure () -> String?)
        throws(VFIOError) -> Int32
    {
        if isLinux { return try Sys.ioctl(Sys.linux, number, request, argument, object: object() ?? label) }
        return try Sys.ioctl(kernel!, number, request, argument, object: object() ?? label)
    }

    @inline(__always)
    package func readHeld(_ buffer: UnsafeMutableRawBufferPointer, object: @autoclosure () -> String?) throws(VFIOError) -> Int? {
        if isLinux { return try Sys.read(Sys.linux, number, buffer, object: object() ?? label) }
        return try Sys.read(kernel!, number, buffer, object: object() ?? label)
    }

    package func writeHeld(_ buffer: UnsafeRawBufferPointer, object: @autoclosure () -> String?) throws(VFIOError) -> Int {
        if isLinux { return try Sys.write(Sys.linux, number, buffer, object: object() ?? label) }
        return try Sys.write(kernel!, number, buffer, object: object() ?? label)
    }

    /// poll(2) through this fd's kernel (the pollfds name this fd, and
    /// others the caller holds).
    @inline(__always)
    package func pollHeld(_ fds: UnsafeMutablePointer<pollfd>, count: Int, timeout: Duration?) throws(VFIOError)
        -> Int32
    {
        if isLinux { return try Sys.poll(Sys.linux, fds, count: count, timeout: timeout, object: label) }
        return try Sys.poll(kernel!, fds, count: count, timeout: timeout, object: label)
    }

    /// An ioctl on a fixed-size argument struct.
    ///
    /// Inlinable, so it is specialised in the caller's module for the caller's
    /// struct: only the struct's bytes cross into this module
    /// (``ioctl(_:bytes:of:object:)`` is not generic). Left generic across the
    /// module boundary it cost about 250 user instructions per call
    /// (unspecialised `withUnsafeMutableBytes`, closure contexts, witness calls;
    /// callgrind, vfiokit-bench).
    @inlinable @inline(__always)
    package func ioctl<A>(_ request: Request, _ argument: inout A, object: @autoclosure () -> String? = nil)
        throws(VFIOError) -> Int32
    {
        // Safety: `raw` is the argument's own storage, `MemoryLayout<A>.size` bytes, valid for this call
        // only; the kernel reads and writes within it (argsz/size inside says how much, and `make()` filled it).
        try withUnsafeMutableBytes(of: &argument) { (raw) throws(VFIOError) -> Int32 in
            try ioctl(request, bytes: raw, of: { A.self }, object: object())
        }
    }

    /// An ioctl on the bytes of a fixed-size argument struct of type `type()`
    /// (asked only for an error about the argument's size: a metatype passed
    /// as a value costs a metadata access per call).
    @usableFromInline
    package func ioctl(_ request: Request, bytes raw: UnsafeMutableRawBufferPointer, of type: () -> Any.Type,
                       object: @autoclosure () -> String?) throws(VFIOError) -> Int32
    {
        guard enter() else { throw closedError(.ioctl(request)) }
        defer { leave() }
        do throws(VFIOError) {
            return try ioctlHeld(request, raw.baseAddress, object: object())
        } catch {
            throw Sys.explainArgumentSize(error, request, UnsafeRawBufferPointer(raw), type())
        }
    }

    /// An ioctl on a raw argument (variable-size buffers, strings).
    @inline(__always)
    package func ioctl(_ request: Request, _ argument: UnsafeMutableRawPointer?, object: @autoclosure () -> String? = nil)
        throws(VFIOError) -> Int32
    {
        guard enter() else { throw closedError(.ioctl(request)) }
        defer { leave() }
        return try ioctlHeld(request, argument, object: object())
    }

    /// An ioctl that takes a plain integer (VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU).
    package func ioctl(_ request: Request, value: Int, object: @autoclosure () -> String? = nil) throws(VFIOError) -> Int32 {
        try ioctl(request, UnsafeMutableRawPointer(bitPattern: value), object: object())
    }

    /// An ioctl by number, outside the uapi table (the kernel's selftest
    /// `IOMMU_TEST_CMD`), named `operation` in errors.
    package func ioctl<A>(number: UInt, as operation: VFIOError.Operation, _ argument: inout A,
                          object: @autoclosure () -> String? = nil) throws(VFIOError) -> Int32
    {
        guard enter() else { throw closedError(operation) }
        defer { leave() }
        return try withUnsafeMutableBytes(of: &argument) { (raw) throws(VFIOError) in
            if isLinux { return try Sys.ioctl(Sys.linux, self.number, number: number, as: operation, raw.baseAddress,
                                              object: object() ?? label) }
            return try Sys.ioctl(kernel!, self.number, number: number, as: operation, raw.baseAddress,
                                 object: object() ?? label)
        }
    }

    /// An ioctl whose result is returned as is (`-errno` on failure): for
    /// probes that read the errno as an answer. Throws only "closed".
    package func probeIoctl(_ request: Request, _ argument: UnsafeMutableRawPointer?) throws(VFIOError) -> Int32 {
        guard enter() else { throw closedError(.ioctl(request)) }
        defer { leave() }
        return Sys.call(kernel) { $0.ioctl(number, request.number, argument) }
    }

    package func pread(_ buffer: UnsafeMutableRawBufferPointer, at offset: Int64, object: @autoclosure () -> String? = nil)
        throws(VFIOError) -> Int
    {
        guard enter() else { throw closedError(.syscall(.pread)) }
        defer { leave() }
        if isLinux { return try Sys.pread(Sys.linux, number, buffer, at: offset, object: object() ?? label) }
        return try Sys.pread(kernel, number, buffer, at: offset, object: object() ?? label)
    }

    package func pwrite(_ buffer: UnsafeRawBufferPointer, at offset: Int64, object: @autoclosure () -> String? = nil)
        throws(VFIOError) -> Int
    {
        guard enter() else { throw closedError(.syscall(.pwrite)) }
        defer { leave() }
        if isLinux { return try Sys.pwrite(Sys.linux, number, buffer, at: offset, object: object() ?? label) }
        return try Sys.pwrite(kernel, number, buffer, at: offset, object: object() ?? label)
    }

    /// Reads; EAGAIN comes back as nil.
    @inline(__always)
    package func read(_ buffer: UnsafeMutableRawBufferPointer, object: @autoclosure () -> String? = nil) throws(VFIOError)
        -> Int?
    {
        guard enter() else { throw closedError(.syscall(.read)) }
        defer { leave() }
        return try readHeld(buffer, object: object())
    }

    package func write(_ buffer: UnsafeRawBufferPointer, object: @autoclosure () -> String? = nil) throws(VFIOError) -> Int {
        guard enter() else { throw closedError(.syscall(.write)) }
        defer { leave() }
        return try writeHeld(buffer, object: object())
    }

    package func ftruncate(length: Int64) throws(VFIOError) {
        guard enter() else { throw closedError(.syscall(.ftruncate)) }
        defer { leave() }
        try Sys.ftruncate(kernel, number, length: length, object: label)
    }

    /// Maps the fd; unmap through ``kernel`` (the mapping belongs to it).
    package func mmap(length: Int, protection: Int32, flags: Int32, offset: Int64 = 0,
              object: @autoclosure () -> String? = nil) throws(VFIOError) -> UnsafeMutableRawPointer
    {
        guard enter() else { throw closedError(.syscall(.mmap)) }
        defer { leave() }
        return try Sys.mmap(kernel, length: length, protection: protection, flags: flags, fd: number, offset: offset,
                            object: object() ?? label)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
