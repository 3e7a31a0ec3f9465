import CVFIO
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An eventfd: the kernel signals a device interrupt (or a request to release
/// the device) by adding to its counter.
///
/// Two ways to wait:
/// - ``wait(timeout:)`` blocks the calling thread in `poll(2)` and reads the
///   counter: no allocation, no locks, one syscall pair per interrupt. Use it
///   from your own threads (a driver's completion thread), not from Swift
///   concurrency's cooperative pool.
/// - ``interrupts()`` is an `AsyncSequence` for Swift concurrency: a dedicated
///   thread (one per sequence, not from the cooperative pool) blocks in
///   `poll(2)` and yields each count; cancelling the task or dropping the
///   iterator stops the thread through a second eventfd. Tasks awaiting it never
///   block a pool thread.
/// Do not use both on one eventfd at the same time: each read consumes the count.
public final class EventFD: Sendable {
    public let fd: OwnedFD

    /// A non-blocking eventfd (the reads here never block; waits use poll).
    /// With `semaphore`, each read takes 1 instead of the whole count.
    public init(semaphore: Bool = false) throws(VFIOError) {
        let flags = CVFIO_EFD_NONBLOCK | (semaphore ? CVFIO_EFD_SEMAPHORE : 0)
        let raw = try Sys.eventfd(flags: flags)
        fd = OwnedFD(raw, label: "eventfd \(raw)")
    }

    /// Reads and resets the counter; nil when it is zero.
    @inline(__always)
    public func consume() throws(VFIOError) -> UInt64? {
        var value: UInt64 = 0
        let n = try withUnsafeMutableBytes(of: &value) { (raw) throws(VFIOError) -> Int? in
            try Sys.read(fd.raw, raw, object: fd.label)
        }
        return n == 8 ? value : nil
    }

    /// Blocks until the counter is non-zero or `timeout` passes (nil: forever);
    /// returns the count read (the number of signals since the last read), or
    /// nil on timeout.
    public func wait(timeout: Duration? = nil) throws(VFIOError) -> UInt64? {
        let ms: Int32
        if let timeout {
            let c = timeout.components
            let total = c.seconds * 1000 + (c.attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
            ms = Int32(clamping: max(0, total))
        } else {
            ms = -1
        }
        // poll, then read: the same two syscalls a C driver makes per interrupt.
        while true {
            var pfd = pollfd(fd: fd.raw, events: Int16(POLLIN), revents: 0)
            let ready = try Sys.poll(&pfd, count: 1, timeoutMilliseconds: ms)
            if ready == 0 { return nil }
            if let v = try consume() { return v }
            // Another reader took the count first: wait again.
        }
    }

    /// Adds `value` to the counter (what the kernel does on an interrupt).
    public func signal(_ value: UInt64 = 1) throws(VFIOError) {
        var v = value
        _ = try withUnsafeBytes(of: &v) { (raw) throws(VFIOError) -> Int in try Sys.write(fd.raw, raw, object: fd.label) }
    }

    /// Each signal as a count, delivered to Swift concurrency by a dedicated thread.
    public func interrupts() -> Interrupts { Interrupts(eventfd: self) }

    public func close() throws(VFIOError) { try fd.close() }

    /// The signals of an ``EventFD`` as an async sequence of counts.
    public struct Interrupts: AsyncSequence, Sendable {
        public typealias Element = UInt64
        let eventfd: EventFD

        public func makeAsyncIterator() -> AsyncStream<UInt64>.Iterator {
            let (stream, continuation) = AsyncStream<UInt64>.makeStream(bufferingPolicy: .unbounded)
            guard let waiter = try? WaiterThread(eventfd: eventfd, continuation: continuation) else {
                continuation.finish()
                return stream.makeAsyncIterator()
            }
            continuation.onTermination = { _ in waiter.stop() }
            waiter.start()
            return stream.makeAsyncIterator()
        }
    }
}

/// The thread behind ``EventFD/Interrupts``: polls the eventfd and a stop
/// eventfd, yields counts, exits when stopped or when the eventfd fails.
final class WaiterThread: Sendable {
    let eventfd: EventFD
    let stopFD: Int32
    let continuation: AsyncStream<UInt64>.Continuation

    init(eventfd: EventFD, continuation: AsyncStream<UInt64>.Continuation) throws(VFIOError) {
        self.eventfd = eventfd
        self.continuation = continuation
        stopFD = cvfio_sys_eventfd(0, CVFIO_EFD_CLOEXEC | CVFIO_EFD_NONBLOCK)
        if stopFD < 0 { throw VFIOError(operation: "eventfd", errno: .init(rawValue: cvfio_errno())) }
    }

    func start() {
        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let r = pthread_create(&thread, nil, { arg in
            let me = Unmanaged<WaiterThread>.fromOpaque(arg!).takeRetainedValue()
            me.run()
            return nil
        }, context)
        if r != 0 {
            Unmanaged<WaiterThread>.fromOpaque(context).release()
            continuation.finish()
        } else {
            pthread_detach(thread)
        }
    }

    func stop() {
        var one: UInt64 = 1
        _ = Glibc.write(stopFD, &one, 8)
    }

    private func run() {
        defer {
            continuation.finish()
            Glibc.close(stopFD)
        }
        var fds = (pollfd(fd: eventfd.fd.raw, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0))
        while !eventfd.fd.isClosed {
            let r = withUnsafeMutableBytes(of: &fds) { raw in
                Glibc.poll(raw.baseAddress!.assumingMemoryBound(to: pollfd.self), 2, -1)
            }
            if r < 0 {
                if errno == EINTR { continue }
                return
            }
            if fds.1.revents != 0 { return }
            if fds.0.revents & Int16(POLLERR | POLLNVAL) != 0 { return }
            if fds.0.revents != 0 {
                var v: UInt64 = 0
                if Glibc.read(eventfd.fd.raw, &v, 8) == 8 {
                    if case .terminated = continuation.yield(v) { return }
                }
            }
        }
    }
}
