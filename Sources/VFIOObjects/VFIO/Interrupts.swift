import CVFIO
import Synchronization
import VFIOSystem

/// Vectors of one interrupt index of a device, each routed to an eventfd of
/// its own, and owned: ``close()``, or the last reference going (the set, or
/// any ``Interrupt`` handle of it), turns the vectors off in the device and
/// closes the eventfds.
///
///     let vectors = try device.interrupts(.msix, count: 3)     // MSI-X on, 3 vectors
///     let admin = vectors[0]
///     if try admin.wait(timeout: .seconds(1)) != nil { ... }   // blocking, allocation-free
///     if try await vectors[2].wait(timeout: .milliseconds(5)) != nil { ... }   // from async code
///     try vectors.close()                                       // MSI-X off
///
/// Turning off: when no other vector of the index is routed (through another
/// set, or ``VFIODevice/setIRQTrigger(_:start:eventfds:)``), the whole index
/// is disabled (MSI/MSI-X off in the device); otherwise only this set's
/// vectors are unrouted. Nothing is sent to a device that was closed (the
/// kernel disabled its interrupts then).
/// The corresponding ioctl is `VFIO_DEVICE_SET_IRQS`.
public final class InterruptSet: Sendable {
    /// The device whose vectors these are (kept open while the set lives).
    public let device: VFIODevice
    /// The interrupt index (MSI-X, MSI, INTx, ...) the vectors belong to.
    public let index: IRQIndex
    /// The first vector number (vectors are `first ..< first + count`).
    public let first: UInt32
    let eventfds: [EventFD]
    private let released = Mutex(false)

    init(device: VFIODevice, index: IRQIndex, first: UInt32, eventfds: [EventFD]) {
        self.device = device
        self.index = index
        self.first = first
        self.eventfds = eventfds
    }

    /// How many vectors the set holds.
    public var count: Int { eventfds.count }
    /// The vector numbers.
    public var vectors: Range<UInt32> { first..<(first + UInt32(eventfds.count)) }

    /// The handle of the `position`-th vector of the set (vector `first + position`).
    public subscript(position: Int) -> Interrupt {
        precondition(position >= 0 && position < eventfds.count, "interrupt \(position) is not in a set of \(eventfds.count)")
        return Interrupt(set: self, vector: first + UInt32(position), eventfd: eventfds[position])
    }

    /// Every vector's handle, in order.
    public var all: [Interrupt] { (0..<count).map { self[$0] } }

    /// Whether ``close()`` ran.
    public var isClosed: Bool { released.withLock { $0 } }

    /// Turns the vectors off (see the type) and closes their eventfds: waits in
    /// progress end with "closed". Idempotent; reports the first error after
    /// doing every step.
    public func close() throws(VFIOError) {
        let already = released.withLock { r -> Bool in
            defer { r = true }
            return r
        }
        if already { return }
        var first: VFIOError?
        if !device.isClosed {
            do throws(VFIOError) {
                try device.releaseIRQVectors(index, start: self.first, count: eventfds.count)
            } catch {
                first = error
            }
        }
        for e in eventfds {
            do throws(VFIOError) { try e.close() } catch { first = first ?? error }
        }
        if let first { throw first }
    }

    deinit { try? close() }
}

/// One interrupt vector routed to an eventfd: its waits, each with a timeout.
/// The handle keeps its ``InterruptSet`` alive, so the vector stays on while a
/// handle exists; the last one gone turns it off.
public struct Interrupt: Sendable {
    /// The set the vector belongs to (``close()`` closes it).
    public let owner: InterruptSet
    /// The vector number within its index.
    public let vector: UInt32
    /// The eventfd the kernel signals (lower level; the waits below use it).
    public let eventFD: EventFD

    init(set: InterruptSet, vector: UInt32, eventfd: EventFD) {
        owner = set
        self.vector = vector
        eventFD = eventfd
    }

    /// The interrupt index (MSI-X, MSI, INTx, ...) of the vector.
    public var index: IRQIndex { owner.index }

    /// Blocks until the vector fires or `timeout` passes (nil: forever);
    /// returns how many times it fired since the last wait, or nil on
    /// timeout. `ppoll` + `read`: no allocation. For threads of your own,
    /// not Swift concurrency's pool (use the async twin there).
    @inline(__always)
    public func wait(timeout: Duration?) throws(VFIOError) -> UInt64? {
        try eventFD.wait(timeout: timeout)
    }

    /// Suspends until the vector fires or `timeout` passes (nil: forever);
    /// the count, or nil on timeout. Cancellation ends it with "cancelled".
    /// One async waiter per vector at a time (see `EventFD`'s async wait).
    public func wait(timeout: Duration?) async throws(VFIOError) -> UInt64? {
        try await eventFD.wait(timeout: timeout)
    }

    /// Fires the vector from software, as the device would (a loopback check
    /// of the path). `VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER`.
    public func trigger() throws(VFIOError) {
        try owner.device.triggerIRQ(owner.index, start: vector, count: 1)
    }

    /// Closes the whole set: for a handle from ``VFIODevice/interrupt(_:vector:)``
    /// that is this vector alone.
    public func close() throws(VFIOError) { try owner.close() }
}

extension VFIODevice {
    /// Routes vectors `start ..< start + count` of `index` to new eventfds and
    /// returns them as an owned set (MSI and MSI-X are enabled with that many
    /// vectors): releasing the set turns them off again. Check how many the
    /// device has with ``irqInfo(_:)``.
    /// The corresponding ioctl is `VFIO_DEVICE_SET_IRQS` with
    /// `VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER`.
    public func interrupts(_ index: IRQIndex, count: Int, start: UInt32 = 0) throws(VFIOError) -> InterruptSet {
        guard count > 0 else {
            throw VFIOError.invalid(.ioctl(.vfioDeviceSetIRQs), "asked for \(count) \(index) vectors; at least 1",
                                    object: label, remedies: [.advice("irqInfo(_:).count says how many the device has")])
        }
        var fds: [EventFD] = []
        fds.reserveCapacity(count)
        do throws(VFIOError) {
            for _ in 0..<count { fds.append(try EventFD()) }
            try setIRQTrigger(index, start: start, eventfds: fds)
        } catch {
            for e in fds { try? e.close() }
            throw error
        }
        return InterruptSet(device: self, index: index, first: start, eventfds: fds)
    }

    /// One vector of `index` routed to a new eventfd, as a handle that turns
    /// it off when released (the last copy gone, or ``Interrupt/close()``).
    public func interrupt(_ index: IRQIndex, vector: UInt32 = 0) throws(VFIOError) -> Interrupt {
        try interrupts(index, count: 1, start: vector)[0]
    }

    /// Unroutes vectors `start ..< start + count` of `index`; when no other
    /// vector of the index stays routed, disables the index instead (MSI and
    /// MSI-X off in the device).
    func releaseIRQVectors(_ index: IRQIndex, start: UInt32, count: Int) throws(VFIOError) {
        let end = Int(start) + count
        let othersRouted = binding.withLock { b -> Bool in
            guard let list = b.irqEventFDs[index.rawValue] else { return false }
            return list.indices.contains { i in list[i] != nil && (i < Int(start) || i >= end) }
        }
        if othersRouted {
            try setIRQTrigger(index, start: start, eventfds: [EventFD?](repeating: nil, count: count))
        } else {
            try disableIRQ(index)
        }
    }
}
