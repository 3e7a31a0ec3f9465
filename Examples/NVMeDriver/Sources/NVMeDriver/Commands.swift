import VFIOKit

/// Admin command opcodes (NVMe base specification 2.0, figure 28).
public enum AdminOpcode: UInt8, Sendable {
    case deleteIOSubmissionQueue = 0x00
    case createIOSubmissionQueue = 0x01
    case getLogPage = 0x02
    case deleteIOCompletionQueue = 0x04
    case createIOCompletionQueue = 0x05
    case identify = 0x06
    case abort = 0x08
    case setFeatures = 0x09
    case getFeatures = 0x0a
}

/// NVM command set I/O opcodes (NVM command set specification 1.0, figure 18).
public enum IOOpcode: UInt8, Sendable {
    case flush = 0x00
    case write = 0x01
    case read = 0x02
}

/// One 64-byte submission queue entry, built on the stack and stored into
/// the queue in place (no allocation).
///
/// Layout (figure 88): CDW0 (opcode 7:0, fused 9:8, PSDT 15:14, CID 31:16),
/// NSID, CDW2-3, MPTR, PRP1 (DPTR 63:0), PRP2 (DPTR 127:64), CDW10-15.
public struct SubmissionEntry: Sendable, Equatable {
    public var opcode: UInt8
    public var namespace: UInt32 = 0
    public var prp1: UInt64 = 0
    public var prp2: UInt64 = 0
    public var cdw10: UInt32 = 0
    public var cdw11: UInt32 = 0
    public var cdw12: UInt32 = 0
    public var cdw13: UInt32 = 0
    public var cdw14: UInt32 = 0
    public var cdw15: UInt32 = 0

    public init(opcode: UInt8, namespace: UInt32 = 0) {
        self.opcode = opcode
        self.namespace = namespace
    }

    /// Writes the entry with command identifier `cid` at `p` (64 bytes, in DMA memory).
    @inline(__always)
    func store(at p: UnsafeMutableRawPointer, cid: UInt16) {
        // Safety: p points at a 64-byte, 64-byte aligned slot of a submission
        // queue that this queue owns until the doorbell hands it over.
        p.storeBytes(of: UInt32(opcode) | UInt32(cid) << 16, toByteOffset: 0, as: UInt32.self)
        p.storeBytes(of: namespace, toByteOffset: 4, as: UInt32.self)
        p.storeBytes(of: 0, toByteOffset: 8, as: UInt64.self)  // CDW2-3
        p.storeBytes(of: 0, toByteOffset: 16, as: UInt64.self)  // MPTR
        p.storeBytes(of: prp1, toByteOffset: 24, as: UInt64.self)
        p.storeBytes(of: prp2, toByteOffset: 32, as: UInt64.self)
        p.storeBytes(of: cdw10, toByteOffset: 40, as: UInt32.self)
        p.storeBytes(of: cdw11, toByteOffset: 44, as: UInt32.self)
        p.storeBytes(of: cdw12, toByteOffset: 48, as: UInt32.self)
        p.storeBytes(of: cdw13, toByteOffset: 52, as: UInt32.self)
        p.storeBytes(of: cdw14, toByteOffset: 56, as: UInt32.self)
        p.storeBytes(of: cdw15, toByteOffset: 60, as: UInt32.self)
    }

    // MARK: admin commands

    /// Identify (CNS in CDW10 7:0): 0x00 namespace, 0x01 controller, 0x02 active namespace list.
    static func identify(cns: UInt8, namespace: UInt32 = 0) -> SubmissionEntry {
        var e = SubmissionEntry(opcode: AdminOpcode.identify.rawValue, namespace: namespace)
        e.cdw10 = UInt32(cns)
        return e
    }

    /// Set Features, Number of Queues (FID 07h): counts are 0's based.
    static func setNumberOfQueues(submission: Int, completion: Int) -> SubmissionEntry {
        var e = SubmissionEntry(opcode: AdminOpcode.setFeatures.rawValue)
        e.cdw10 = 0x07
        e.cdw11 = UInt32(submission - 1) | UInt32(completion - 1) << 16
        return e
    }

    /// Create I/O Completion Queue: physically contiguous, interrupts on
    /// `vector` when given.
    static func createCompletionQueue(id: UInt16, entries: Int, iova: IOVA, vector: UInt16?) -> SubmissionEntry {
        var e = SubmissionEntry(opcode: AdminOpcode.createIOCompletionQueue.rawValue)
        e.prp1 = iova.rawValue
        e.cdw10 = UInt32(id) | UInt32(entries - 1) << 16
        e.cdw11 = 1 | (vector != nil ? 2 : 0) | UInt32(vector ?? 0) << 16
        return e
    }

    /// Create I/O Submission Queue bound to completion queue `cq`.
    static func createSubmissionQueue(id: UInt16, entries: Int, iova: IOVA, cq: UInt16) -> SubmissionEntry {
        var e = SubmissionEntry(opcode: AdminOpcode.createIOSubmissionQueue.rawValue)
        e.prp1 = iova.rawValue
        e.cdw10 = UInt32(id) | UInt32(entries - 1) << 16
        e.cdw11 = 1 | UInt32(cq) << 16
        return e
    }

    static func deleteSubmissionQueue(id: UInt16) -> SubmissionEntry {
        var e = SubmissionEntry(opcode: AdminOpcode.deleteIOSubmissionQueue.rawValue)
        e.cdw10 = UInt32(id)
        return e
    }

    static func deleteCompletionQueue(id: UInt16) -> SubmissionEntry {
        var e = SubmissionEntry(opcode: AdminOpcode.deleteIOCompletionQueue.rawValue)
        e.cdw10 = UInt32(id)
        return e
    }

    /// Abort the command `cid` on submission queue `sq`.
    static func abort(sq: UInt16, cid: UInt16) -> SubmissionEntry {
        var e = SubmissionEntry(opcode: AdminOpcode.abort.rawValue)
        e.cdw10 = UInt32(sq) | UInt32(cid) << 16
        return e
    }

    // MARK: I/O commands

    /// Read or Write of `blocks` logical blocks from `lba` (CDW10-11 SLBA, CDW12 NLB 0's based).
    @inline(__always)
    static func readWrite(_ op: IOOpcode, namespace: UInt32, lba: UInt64, blocks: Int) -> SubmissionEntry {
        var e = SubmissionEntry(opcode: op.rawValue, namespace: namespace)
        e.cdw10 = UInt32(truncatingIfNeeded: lba)
        e.cdw11 = UInt32(truncatingIfNeeded: lba >> 32)
        e.cdw12 = UInt32(truncatingIfNeeded: blocks - 1) & 0xffff
        return e
    }

    static func flush(namespace: UInt32) -> SubmissionEntry {
        SubmissionEntry(opcode: IOOpcode.flush.rawValue, namespace: namespace)
    }
}

/// One completion queue entry, decoded (figure 90).
public struct Completion: Sendable, Equatable {
    /// DW0: the command-specific result (e.g. the queue counts Set Features granted).
    public var result: UInt32
    /// SQHD: how far the controller has consumed the submission queue.
    public var submissionQueueHead: UInt16
    public var submissionQueueID: UInt16
    public var commandID: UInt16
    public var status: NVMeStatus
}

/// Builds the PRP entries (figure 87) for a transfer that is contiguous in
/// IOVA space, using `list` (an 8-byte aligned area in DMA memory at
/// `listIOVA`, `listCapacity` entries) when it spans more than two pages.
///
/// PRP1 may start anywhere dword-aligned; every further entry is a page
/// start. Two pages: PRP2 is the second page. More: PRP2 points at a list of
/// the remaining pages (within one page, so no chaining). Returns the two
/// entries as the command carries them. Allocation-free.
@inline(__always)
func buildPRPs(iova address: IOVA, length: Int, pageSize: Int, list: UnsafeMutableRawPointer, listIOVA: IOVA,
               listCapacity: Int) -> (prp1: UInt64, prp2: UInt64)?
{
    let iova = address.rawValue
    let page = UInt64(pageSize)
    let firstChunk = page - (iova & (page - 1))
    let len = UInt64(length)
    if len <= firstChunk { return (iova, 0) }
    let next = iova &+ firstChunk
    let rest = len - firstChunk
    if rest <= page { return (iova, next) }
    let entries = Int((rest + page - 1) / page)
    guard entries <= listCapacity else { return nil }
    for i in 0..<entries {
        // Safety: list has listCapacity >= entries 8-byte slots (checked above).
        list.storeBytes(of: next &+ UInt64(i) &* page, toByteOffset: i &* 8, as: UInt64.self)
    }
    return (iova, listIOVA.rawValue)
}
