import VFIOKit

/// What happened to one command slot.
@usableFromInline
enum SlotState: UInt8 {
    case free = 0
    /// Submitted; a synchronous caller waits for it (reap marks it `.done`).
    case awaited
    /// Submitted; reap hands the completion to its handler and frees the slot.
    case handled
    /// Completed; the synchronous caller has not picked it up yet.
    case done
    /// Timed out and given up: the slot is freed when the completion arrives
    /// (its PRP list and buffer stay untouched by us until then).
    case abandoned
}

/// Bookkeeping of one command identifier, kept in unmanaged memory so
/// submitting and completing allocates nothing.
@usableFromInline
struct Slot {
    var state: SlotState = .free
    var status: UInt16 = 0
    var result: UInt32 = 0
    var submitted: UInt64 = 0
    var tag: UInt64 = 0
}

/// One completed command as ``IOQueue/reap(_:)`` reports it.
public struct IOCompletion: Sendable {
    public var commandID: UInt16
    public var status: NVMeStatus
    /// DW0 of the completion entry.
    public var result: UInt32
    /// From submission to the moment reap saw the completion.
    public var latencyNanoseconds: UInt64
    /// The caller's tag given at submission.
    public var tag: UInt64
    /// When reap saw the completion (CLOCK_MONOTONIC ns): a command submitted
    /// from the handler may use it as its own submission time.
    public var reapedAt: UInt64
}

/// A submission queue and the completion queue it posts to, in one DMA
/// mapping: [SQ entries x 64 B | CQ entries x 16 B | one PRP list per slot].
///
/// Not thread-safe: one thread (or one lock holder) at a time. Submitting
/// and reaping allocate nothing and make no syscalls; the only device access
/// is the doorbell store.
///
/// Safety (every raw pointer use below): `sq`, `cq` and `prpLists` point into
/// `memory`, which this object keeps mapped for its lifetime and whose length
/// `layout` checked in init; SQ/CQ indices stay below `entries` (they wrap),
/// command identifiers below `slotCount` (checked where they come from the
/// device), so every offset is inside the mapping. `slots` and `freeList`
/// are this object's own allocations of `slotCount` elements.
final class QueuePair: @unchecked Sendable {
    // @unchecked: confined to one thread at a time by the owner (IOQueue's
    // documented rule, the controller's admin lock).
    let id: UInt16
    /// Entries in each ring; at most `entries - 1` commands are outstanding.
    let entries: Int
    /// The DMA mapping behind the rings (nil in host tests, which pass plain memory).
    let memory: DMAMemory?
    let sq: UnsafeMutableRawPointer
    let cq: UnsafeMutableRawPointer
    let sqIOVA: IOVA
    let cqIOVA: IOVA
    let prpLists: UnsafeMutableRawPointer
    let prpListsIOVA: IOVA
    let prpListBytes: Int
    let pageSize: Int
    /// BAR0; nil after the controller closed.
    var registers: Registers?
    let sqDoorbell: Int
    let cqDoorbell: Int
    let interrupt: Interrupt?

    var sqTail: UInt32 = 0
    var cqHead: UInt32 = 0
    /// The phase tag that marks a new completion entry (starts at 1, flips on each wrap).
    var phase: UInt32 = 1
    /// SQHD from the newest completion.
    var sqHead: UInt16 = 0
    /// Entries stored since the last doorbell.
    var unrung = 0

    let slots: UnsafeMutablePointer<Slot>
    let slotCount: Int
    private let freeList: UnsafeMutablePointer<UInt16>
    private(set) var freeCount: Int

    /// Completions for commands already given up on, or with an unknown identifier.
    var lateCompletions = 0
    var unknownCompletions = 0
    /// Waits that an interrupt ended.
    var interruptWakeups: UInt64 = 0

    static func layout(entries: Int, prpListBytes: Int) -> (cqOffset: Int, prpOffset: Int, total: Int) {
        let page = 4096
        let sqBytes = (entries * 64 + page - 1) / page * page
        let cqBytes = (entries * 16 + page - 1) / page * page
        let prpBytes = ((entries - 1) * prpListBytes + page - 1) / page * page
        return (sqBytes, sqBytes + cqBytes, sqBytes + cqBytes + prpBytes)
    }

    convenience init(id: UInt16, entries: Int, memory: DMAMemory, prpListBytes: Int, pageSize: Int, registers: Registers,
                     doorbellStride: Int, interrupt: Interrupt?)
    {
        self.init(id: id, entries: entries, base: memory.base, iova: memory.iova, length: memory.length, owner: memory,
                  prpListBytes: prpListBytes, pageSize: pageSize, registers: registers, doorbellStride: doorbellStride,
                  interrupt: interrupt)
    }

    /// The rings live at `base` (device address `iova`), at least
    /// `layout(...).total` bytes, zeroed.
    init(id: UInt16, entries: Int, base: UnsafeMutableRawPointer, iova: IOVA, length: Int, owner: DMAMemory?,
         prpListBytes: Int, pageSize: Int, registers: Registers, doorbellStride: Int, interrupt: Interrupt?)
    {
        precondition(entries >= 2 && entries <= 65536)
        let l = QueuePair.layout(entries: entries, prpListBytes: prpListBytes)
        precondition(length >= l.total)
        self.id = id
        self.entries = entries
        memory = owner
        sq = base
        cq = base + l.cqOffset
        sqIOVA = iova
        cqIOVA = iova + UInt64(l.cqOffset)
        prpLists = base + l.prpOffset
        prpListsIOVA = iova + UInt64(l.prpOffset)
        self.prpListBytes = prpListBytes
        self.pageSize = pageSize
        self.registers = registers
        sqDoorbell = Register.doorbells + (2 * Int(id)) * doorbellStride
        cqDoorbell = Register.doorbells + (2 * Int(id) + 1) * doorbellStride
        self.interrupt = interrupt
        slotCount = entries - 1
        slots = .allocate(capacity: slotCount)
        slots.initialize(repeating: Slot(), count: slotCount)
        freeList = .allocate(capacity: slotCount)
        // Hand out low identifiers first (pop from the end).
        for i in 0..<slotCount { freeList[i] = UInt16(slotCount - 1 - i) }
        freeCount = slotCount
    }

    deinit {
        slots.deinitialize(count: slotCount)
        slots.deallocate()
        freeList.deallocate()
    }

    /// Back to the state of a freshly created queue (after a controller
    /// reset: the controller forgot every command). The completion ring is
    /// zeroed so old phase tags cannot look new.
    func resetState() {
        // Safety: `cq` holds `entries` 16-byte entries (see the type's note).
        sqTail = 0
        cqHead = 0
        phase = 1
        sqHead = 0
        unrung = 0
        memset(cq, 0, entries * 16)
        for i in 0..<slotCount { slots[i] = Slot() }
        for i in 0..<slotCount { freeList[i] = UInt16(slotCount - 1 - i) }
        freeCount = slotCount
    }

    var outstanding: Int { slotCount - freeCount }

    /// Stores `entry` at the tail with a free command identifier and the PRPs
    /// for `length` bytes at `dataIOVA`; does not ring the doorbell. Nil when
    /// no slot is free or the transfer needs more PRP entries than a list holds.
    @inline(__always)
    func submit(_ entry: inout SubmissionEntry, dataIOVA: IOVA, length: Int, state: SlotState, tag: UInt64,
                now: UInt64) -> UInt16?
    {
        guard freeCount > 0 else { return nil }
        let cid = freeList[freeCount &- 1]
        if length > 0 {
            let list = prpLists + Int(cid) &* prpListBytes
            guard let prp = buildPRPs(iova: dataIOVA, length: length, pageSize: pageSize, list: list,
                                      listIOVA: prpListsIOVA + UInt64(Int(cid) &* prpListBytes),
                                      listCapacity: prpListBytes / 8)
            else { return nil }
            entry.prp1 = prp.prp1
            entry.prp2 = prp.prp2
        }
        freeCount &-= 1
        // Safety: cid came from the free list (< slotCount); sqTail < entries.
        slots[Int(cid)] = Slot(state: state, status: 0, result: 0, submitted: now, tag: tag)
        entry.store(at: sq + Int(sqTail) &* 64, cid: cid)
        sqTail &+= 1
        if sqTail == UInt32(entries) { sqTail = 0 }
        unrung &+= 1
        return cid
    }

    /// Tells the controller about the entries stored since the last call:
    /// barrier (the entries reach memory first), then the SQ tail doorbell.
    @inline(__always)
    func ring() {
        guard unrung > 0, let registers else { return }
        unrung = 0
        writeBarrier()
        registers.store32(sqTail, sqDoorbell)
    }

    @inline(__always)
    func release(_ cid: UInt16) {
        slots[Int(cid)].state = .free
        freeList[freeCount] = cid
        freeCount &+= 1
    }

    /// Consumes every new completion entry (phase tag == current phase),
    /// then writes the CQ head doorbell once. `.awaited` slots become
    /// `.done`; `.handled` slots go to `handler` and are freed first (so the
    /// handler may submit into the same slot). Returns the entries consumed.
    @inline(__always)
    func reap(now: UInt64, _ handler: (IOCompletion) -> Void) -> Int {
        var n = 0
        while true {
            // Safety: cqHead < entries; the entry lies inside the mapping.
            let entry = cq + Int(cqHead) &* 16
            let dw3 = entry.load(fromByteOffset: 12, as: UInt32.self)
            // dma_rmb: the phase tag before the rest of the entry; also a
            // compiler barrier, so a polling caller reloads the tag each time.
            readBarrier()
            guard (dw3 >> 16) & 1 == phase else { break }
            let dw0 = entry.load(as: UInt32.self)
            let dw2 = entry.load(fromByteOffset: 8, as: UInt32.self)
            sqHead = UInt16(truncatingIfNeeded: dw2)
            cqHead &+= 1
            if cqHead == UInt32(entries) {
                cqHead = 0
                phase ^= 1
            }
            n &+= 1
            let cid = Int(UInt16(truncatingIfNeeded: dw3))
            let status = UInt16(truncatingIfNeeded: dw3 >> 17)
            guard cid < slotCount else {  // the device's number: checked before it indexes `slots`
                unknownCompletions &+= 1
                continue
            }
            switch slots[cid].state {
            case .awaited:
                slots[cid].state = .done
                slots[cid].status = status
                slots[cid].result = dw0
            case .handled:
                let s = slots[cid]
                release(UInt16(cid))
                handler(IOCompletion(commandID: UInt16(cid), status: NVMeStatus(raw: status), result: dw0,
                                     latencyNanoseconds: now &- s.submitted, tag: s.tag, reapedAt: now))
            case .abandoned:
                release(UInt16(cid))
                lateCompletions &+= 1
            case .free, .done:
                unknownCompletions &+= 1
            }
        }
        if n > 0, let registers {
            // Our reads of the consumed entries happen before the controller
            // may reuse them.
            writeBarrier()
            registers.store32(cqHead, cqDoorbell)
        }
        return n
    }

    /// Whether a new completion entry is waiting (one load, no side effects).
    @inline(__always)
    var hasCompletion: Bool {
        let dw3 = (cq + Int(cqHead) &* 16).load(fromByteOffset: 12, as: UInt32.self)
        readBarrier()
        return (dw3 >> 16) & 1 == phase
    }

    /// Takes the result of a `.done` slot and frees it.
    @inline(__always)
    func collect(_ cid: UInt16) -> (status: NVMeStatus, result: UInt32) {
        let s = slots[Int(cid)]
        release(cid)
        return (NVMeStatus(raw: s.status), s.result)
    }

    /// Reaps until `cid` is done or `deadline` (monotonic ns) passes; with an
    /// interrupt, sleeps on it between reaps, else spins. True when done.
    @inline(__always)
    func wait(for cid: UInt16, deadline: UInt64, _ handler: (IOCompletion) -> Void) throws(NVMeError) -> Bool {
        while true {
            var now = monotonicNanoseconds()
            _ = reap(now: now, handler)
            if slots[Int(cid)].state == .done { return true }
            now = monotonicNanoseconds()
            if now >= deadline { return false }
            if let interrupt {
                if try interrupt.fired(within: .ns(deadline - now)) { interruptWakeups &+= 1 }
            }
        }
    }

    /// Reaps until at least one completion or `deadline`; returns how many.
    @inline(__always)
    func waitForAny(deadline: UInt64, _ handler: (IOCompletion) -> Void) throws(NVMeError) -> Int {
        while true {
            let now = monotonicNanoseconds()
            let n = reap(now: now, handler)
            if n > 0 { return n }
            if now >= deadline { return 0 }
            if let interrupt {
                if try interrupt.fired(within: .ns(deadline - now)) { interruptWakeups &+= 1 }
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
