import VFIOKit

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Memory the controller reads from and writes into: one DMA mapping,
/// 4 KiB-aligned, zeroed at allocation. Made by ``NVMeController/makeBuffer(bytes:)``.
public final class IOBuffer: @unchecked Sendable {
    // @unchecked: the bytes are shared with the device; the caller orders
    // access (do not touch a range while a command on it is outstanding).
    let memory: DMAMemory

    init(memory: DMAMemory) { self.memory = memory }

    /// Length in bytes (a multiple of 4 KiB).
    public var count: Int { memory.length }
    /// The bytes, for the CPU. Valid while this buffer lives.
    // Safety: base and length describe the mapping this object keeps alive;
    // read(at:)/write(_:at:) check their ranges first.
    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: memory.base, count: memory.length) }
    /// Where the device sees the first byte.
    public var iova: IOVA { memory.iova }

    /// Copies `count` bytes out, from `offset`.
    public func read(at offset: Int = 0, count: Int) -> [UInt8] {
        precondition(offset >= 0 && count >= 0 && offset + count <= self.count, "read past the end of the buffer")
        return Array(UnsafeRawBufferPointer(start: memory.base + offset, count: count))
    }

    /// Copies `data` in at `offset`.
    public func write(_ data: some Collection<UInt8>, at offset: Int = 0) {
        precondition(offset >= 0 && offset + data.count <= count, "write past the end of the buffer")
        UnsafeMutableRawBufferPointer(start: memory.base + offset, count: data.count).copyBytes(from: data)
    }

    /// Sets every byte to `value`.
    public func fill(_ value: UInt8) { memset(memory.base, Int32(value), memory.length) }

    /// Takes the device's access away (unmaps the IOVA range from the IOMMU)
    /// while the memory stays: a command that still points here then faults
    /// in the IOMMU instead of reaching memory. For tests of exactly that.
    public func revokeDeviceAccess() throws(NVMeError) { try memory.release() }
}

/// One I/O submission/completion queue pair.
///
/// Synchronous calls (``read(namespace:lba:blocks:into:at:timeout:)``,
/// ``write(namespace:lba:blocks:from:at:timeout:)``, ``flush(namespace:timeout:)``)
/// submit one command and wait for it: on the queue's MSI-X vector when the
/// controller uses interrupts, else by polling. The pipelined calls
/// (``submit(_:namespace:lba:blocks:buffer:at:tag:)``, ``ring()``, ``reap(_:)``,
/// ``waitForCompletions(timeout:_:)``) keep many commands in flight. Do not mix
/// the two styles on one queue while commands are outstanding.
///
/// A queue belongs to one thread at a time. Submitting and completing
/// allocates nothing (`vfiokit-bench` counts it).
public final class IOQueue: @unchecked Sendable {
    // @unchecked: confined to one thread at a time (see above).
    struct Geometry {
        var id: UInt32
        var blockShift: Int
        var blocks: UInt64
    }

    let pair: QueuePair
    unowned let controller: NVMeController
    let state: ControllerState
    let geometry: [Geometry]
    let timeoutNanoseconds: UInt64
    /// The largest transfer of one command.
    public let maxTransferBytes: Int

    init(pair: QueuePair, controller: NVMeController, state: ControllerState, geometry: [Geometry], timeout: Duration,
         maxTransferBytes: Int)
    {
        self.pair = pair
        self.controller = controller
        self.state = state
        self.geometry = geometry
        timeoutNanoseconds = timeout.nanoseconds
        self.maxTransferBytes = maxTransferBytes
    }

    /// The NVMe queue identifier (1...).
    public var id: Int { Int(pair.id) }
    /// Most commands in flight at once.
    public var depth: Int { pair.slotCount }
    /// Commands submitted and not yet completed.
    public var outstanding: Int { pair.outstanding }
    /// The MSI-X vector this queue's completions signal, nil when polling.
    public var interruptVector: Int? { pair.interrupt.map { Int($0.vector) } }
    /// Waits an interrupt ended (0 when polling).
    public var interruptWakeups: UInt64 { pair.interruptWakeups }
    /// Completions of commands the driver had given up on (timeouts).
    public var lateCompletions: Int { pair.lateCompletions }

    // MARK: synchronous

    /// Reads `blocks` logical blocks from `lba` into `buffer` at `offset`.
    public func read(namespace: UInt32 = 1, lba: UInt64, blocks: Int, into buffer: IOBuffer, at offset: Int = 0,
                     timeout: Duration? = nil) throws(NVMeError)
    {
        try execute(.read, namespace: namespace, lba: lba, blocks: blocks, buffer: buffer, offset: offset, timeout: timeout)
    }

    /// Writes `blocks` logical blocks at `lba` from `buffer` at `offset`.
    public func write(namespace: UInt32 = 1, lba: UInt64, blocks: Int, from buffer: IOBuffer, at offset: Int = 0,
                      timeout: Duration? = nil) throws(NVMeError)
    {
        try execute(.write, namespace: namespace, lba: lba, blocks: blocks, buffer: buffer, offset: offset, timeout: timeout)
    }

    /// Flush: what was written reaches non-volatile media.
    public func flush(namespace: UInt32 = 1, timeout: Duration? = nil) throws(NVMeError) {
        try checkRunning()
        var e = SubmissionEntry.flush(namespace: namespace)
        try run(&e, iova: .zero, length: 0, timeout: timeout, what: .flush)
    }

    @inline(__always)
    func execute(_ op: IOOpcode, namespace: UInt32, lba: UInt64, blocks: Int, buffer: IOBuffer, offset: Int,
                 timeout: Duration?) throws(NVMeError)
    {
        try checkRunning()
        let bytes = try validate(namespace: namespace, lba: lba, blocks: blocks, buffer: buffer, offset: offset)
        var e = SubmissionEntry.readWrite(op, namespace: namespace, lba: lba, blocks: blocks)
        try run(&e, iova: buffer.memory.iova + UInt64(offset), length: bytes, timeout: timeout, what: op)
    }

    @inline(__always)
    func run(_ e: inout SubmissionEntry, iova: IOVA, length: Int, timeout: Duration?, what: IOOpcode) throws(NVMeError) {
        guard let cid = pair.submit(&e, dataIOVA: iova, length: length, state: .awaited, tag: 0, now: monotonicNanoseconds()) else {
            throw NVMeError(.invalidArgument, "I/O queue \(pair.id) is full (\(pair.outstanding) commands outstanding)",
                            device: controller.address, hint: "reap completions first, or use a deeper queue")
        }
        pair.ring()
        let limit = timeout?.nanoseconds ?? timeoutNanoseconds
        guard try pair.wait(for: cid, deadline: monotonicNanoseconds() &+ limit, { _ in }) else {
            throw controller.recoverTimedOut(pair, cid: cid, waited: .ns(limit))
        }
        let (status, _) = pair.collect(cid)
        guard status.isSuccess else {
            throw NVMeError(.commandFailed(status), "\(what) on I/O queue \(pair.id) failed: \(status)", device: controller.address)
        }
    }

    @inline(__always)
    func checkRunning() throws(NVMeError) {
        if state.value.load(ordering: .relaxed) != 0 || pair.registers == nil { try controller.checkRunning() }
    }

    /// Checks a transfer against the namespace and the buffer; its length in bytes.
    @inline(__always)
    func validate(namespace: UInt32, lba: UInt64, blocks: Int, buffer: IOBuffer, offset: Int) throws(NVMeError) -> Int {
        var g: Geometry?
        for x in geometry where x.id == namespace { g = x }
        guard let g else {
            throw NVMeError(.invalidArgument, "no active namespace \(namespace)", device: controller.address)
        }
        guard blocks > 0, blocks <= 65536, lba < g.blocks, UInt64(blocks) <= g.blocks - lba else {
            throw NVMeError(.invalidArgument, "blocks \(lba)..<\(lba &+ UInt64(blocks)) are outside namespace \(namespace) "
                                + "(\(g.blocks) blocks)", device: controller.address)
        }
        let bytes = blocks << g.blockShift
        guard bytes <= maxTransferBytes else {
            throw NVMeError(.invalidArgument, "\(bytes) bytes in one command; this controller moves at most \(maxTransferBytes)",
                            device: controller.address, hint: "split the transfer")
        }
        guard offset >= 0, offset & 3 == 0, offset <= buffer.count, bytes <= buffer.count - offset else {
            throw NVMeError(.invalidArgument, "\(bytes) bytes at offset \(offset) do not fit a \(buffer.count)-byte buffer "
                                + "(offsets must be multiples of 4)", device: controller.address)
        }
        return bytes
    }

    // MARK: pipelined

    /// Queues a read or write without ringing the doorbell; `tag` comes back
    /// in its ``IOCompletion``. Throws when the queue is full or the transfer
    /// is invalid.
    @inline(__always)
    public func submit(_ op: IOOpcode, namespace: UInt32 = 1, lba: UInt64, blocks: Int, buffer: IOBuffer, at offset: Int = 0,
                       tag: UInt64 = 0) throws(NVMeError)
    {
        try checkRunning()
        let bytes = op == .flush ? 0 : try validate(namespace: namespace, lba: lba, blocks: blocks, buffer: buffer, offset: offset)
        var e = op == .flush ? .flush(namespace: namespace) : SubmissionEntry.readWrite(op, namespace: namespace, lba: lba, blocks: blocks)
        guard pair.submit(&e, dataIOVA: buffer.memory.iova + UInt64(offset), length: bytes, state: .handled, tag: tag,
                          now: monotonicNanoseconds()) != nil
        else {
            throw NVMeError(.invalidArgument, "I/O queue \(pair.id) is full (\(pair.outstanding) commands outstanding)",
                            device: controller.address, hint: "reap completions first, or use a deeper queue")
        }
    }

    /// Queues a read or write already known to be valid (the perf loop checks
    /// its parameters once): no checks, `now` as the submission time. False
    /// when the queue is full.
    @inline(__always)
    func submitChecked(_ op: IOOpcode, namespace: UInt32, lba: UInt64, blocks: Int, bytes: Int, iova: IOVA,
                       tag: UInt64, now: UInt64) -> Bool
    {
        var e = SubmissionEntry.readWrite(op, namespace: namespace, lba: lba, blocks: blocks)
        return pair.submit(&e, dataIOVA: iova, length: bytes, state: .handled, tag: tag, now: now) != nil
    }

    /// Rings the submission doorbell for everything submitted since the last ring.
    @inline(__always)
    public func ring() { pair.ring() }

    /// Hands every completion that has arrived to `handler` (without waiting);
    /// returns how many. The handler may submit; ring afterwards.
    @inline(__always)
    public func reap(_ handler: (IOCompletion) -> Void) -> Int {
        pair.reap(now: monotonicNanoseconds(), handler)
    }

    /// Reaps, waiting (interrupt or polling) until at least one completion
    /// arrives. When none arrives within `timeout` (default: the
    /// controller's) while commands are outstanding, the controller is
    /// disabled (so nothing in flight reaches memory any more) and this throws.
    @inline(__always)
    public func waitForCompletions(timeout: Duration? = nil, _ handler: (IOCompletion) -> Void) throws(NVMeError) -> Int {
        try checkRunning()
        if pair.outstanding == 0 { return reap(handler) }
        let limit = timeout?.nanoseconds ?? timeoutNanoseconds
        let n = try pair.waitForAny(deadline: monotonicNanoseconds() &+ limit, handler)
        if n == 0 && pair.outstanding > 0 {
            let e = controller.statusError() ?? NVMeError(
                .timeout, "no completion on I/O queue \(pair.id) within \(Duration.ns(limit).humanReadable) with \(pair.outstanding) "
                    + "commands outstanding: the controller was disabled", device: controller.address,
                hint: "NVMeController.reset() re-initializes it")
            for i in 0..<pair.slotCount where pair.slots[i].state == .handled { pair.slots[i].state = .abandoned }
            controller.fail(e.message)
            throw e
        }
        return n
    }
}

extension IOOpcode: CustomStringConvertible {
    public var description: String {
        switch self {
        case .flush: "Flush"
        case .read: "Read"
        case .write: "Write"
        }
    }
}
