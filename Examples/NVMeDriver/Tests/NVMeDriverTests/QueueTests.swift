import CVFIO
import Testing
import VFIOKit
import VFIOKitTestSupport

@testable import NVMeDriver

#if canImport(Glibc)
import Glibc
#endif

/// A BAR0 in plain memory: a VFIO device under the fake kernel whose region
/// 0 mmaps anonymous memory, so a test reads the doorbells the driver wrote.
func fakeRegisters(size: UInt64 = 0x4000) throws -> Registers {
    let kernel = FakeKernel()
    kernel.files["/dev/vfio/devices/vfio0"] = .node
    kernel.onIoctl(VFIO_DEVICE_GET_REGION_INFO) { _, arg in
        let h = arg!.assumingMemoryBound(to: vfio_region_info.self)
        h.pointee.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP
        h.pointee.size = size
        h.pointee.offset = 0
        h.pointee.cap_offset = 0
        return 0
    }
    return try Syscalls.withProvider(kernel) {
        let device = try VFIODevice.open(cdev: "/dev/vfio/devices/vfio0")
        return Registers(region: try device.map(region: try device.regionInfo(PCIRegion.bar(0))))
    }
}

/// Page-aligned zeroed memory standing in for a queue's DMA mapping.
final class RingMemory {
    let base: UnsafeMutableRawPointer
    let length: Int
    init(_ length: Int) {
        self.length = length
        var p: UnsafeMutableRawPointer?
        precondition(posix_memalign(&p, 4096, length) == 0)
        base = p!
        memset(base, 0, length)
    }
    deinit { free(base) }
}

/// A queue pair over plain memory at a made-up IOVA, and a stand-in for the
/// controller that posts completion entries the way the spec says.
struct Harness {
    static let iova: IOVA = 0x4000_0000
    let registers: Registers
    let memory: RingMemory
    let pair: QueuePair
    /// The controller's side: where it posts next and with which phase.
    var tail = 0
    var phase: UInt32 = 1

    init(id: UInt16 = 1, entries: Int = 4, prpListBytes: Int = 256, stride: Int = 4) throws {
        registers = try fakeRegisters()
        memory = RingMemory(QueuePair.layout(entries: entries, prpListBytes: prpListBytes).total)
        pair = QueuePair(id: id, entries: entries, base: memory.base, iova: Harness.iova, length: memory.length, owner: nil,
                         prpListBytes: prpListBytes, pageSize: 4096, registers: registers, doorbellStride: stride,
                         interrupt: nil)
    }

    /// Posts a completion for `cid` (DW3: CID, phase, status) and advances.
    mutating func complete(_ cid: UInt16, status: UInt16 = 0, result: UInt32 = 0) {
        let e = pair.cq + tail * 16
        e.storeBytes(of: result, as: UInt32.self)
        e.storeBytes(of: UInt32(pair.id) << 16 | 0, toByteOffset: 8, as: UInt32.self)
        e.storeBytes(of: UInt32(cid) | phase << 16 | UInt32(status) << 17, toByteOffset: 12, as: UInt32.self)
        tail += 1
        if tail == pair.entries {
            tail = 0
            phase ^= 1
        }
    }

    func sqEntry(_ i: Int) -> UnsafeMutableRawPointer { pair.sq + i * 64 }
}

@Suite struct QueueTests {
    @Test func submitStoresTheEntryAndRingWritesTheTail() throws {
        let h = try Harness(entries: 4)
        var e = SubmissionEntry.readWrite(.read, namespace: 1, lba: 0x1_2345_6789, blocks: 8)
        let cid = try #require(h.pair.submit(&e, dataIOVA: 0x10_0000, length: 4096, state: .awaited, tag: 0, now: 0))
        let sqe = h.sqEntry(0)
        #expect(sqe.load(as: UInt32.self) == 0x02 | UInt32(cid) << 16)  // opcode Read, CID
        #expect(sqe.load(fromByteOffset: 4, as: UInt32.self) == 1)  // NSID
        #expect(sqe.load(fromByteOffset: 24, as: UInt64.self) == 0x10_0000)  // PRP1
        #expect(sqe.load(fromByteOffset: 32, as: UInt64.self) == 0)  // PRP2: one page
        #expect(sqe.load(fromByteOffset: 40, as: UInt32.self) == 0x2345_6789)  // SLBA low
        #expect(sqe.load(fromByteOffset: 44, as: UInt32.self) == 0x1)  // SLBA high
        #expect(sqe.load(fromByteOffset: 48, as: UInt32.self) == 7)  // NLB, 0's based
        // Nothing reaches the doorbell before ring().
        #expect(h.registers.load32(0x1000 + 2 * 1 * 4) == 0)
        h.pair.ring()
        #expect(h.registers.load32(0x1000 + 2 * 1 * 4) == 1)
        // A queue of 4 entries holds 3 commands; the 4th is refused.
        for _ in 0..<2 {
            var r = SubmissionEntry.flush(namespace: 1)
            #expect(h.pair.submit(&r, dataIOVA: 0, length: 0, state: .handled, tag: 0, now: 0) != nil)
        }
        var full = SubmissionEntry.flush(namespace: 1)
        #expect(h.pair.submit(&full, dataIOVA: 0, length: 0, state: .handled, tag: 0, now: 0) == nil)
        h.pair.ring()
        #expect(h.registers.load32(0x1000 + 8) == 3)
    }

    @Test func doorbellsFollowTheStrideFromCAP() throws {
        // DSTRD = 2: 16 bytes between doorbells; queue 3's SQ tail at 0x1000 + 6 * 16, CQ head at 0x1000 + 7 * 16.
        var h = try Harness(id: 3, entries: 8, stride: ControllerCapabilities(raw: 2 << 32).doorbellStride)
        var e = SubmissionEntry.flush(namespace: 1)
        let cid = try #require(h.pair.submit(&e, dataIOVA: 0, length: 0, state: .awaited, tag: 0, now: 0))
        h.pair.ring()
        #expect(h.registers.load32(0x1000 + 6 * 16) == 1)
        h.complete(cid)
        #expect(h.pair.reap(now: 0) { _ in } == 1)
        #expect(h.registers.load32(0x1000 + 7 * 16) == 1)
        #expect(h.registers.load32(0x1000 + 2 * 3 * 4) == 0, "nothing at the unstrided offset")
    }

    @Test func reapFollowsThePhaseTagAcrossWraps() throws {
        var h = try Harness(entries: 4)
        var seen: [UInt64] = []
        // Three rounds of three commands: the completion ring (4 entries) wraps and the phase flips.
        var tag: UInt64 = 0
        for _ in 0..<3 {
            var cids: [UInt16] = []
            for _ in 0..<3 {
                var e = SubmissionEntry.flush(namespace: 1)
                cids.append(try #require(h.pair.submit(&e, dataIOVA: 0, length: 0, state: .handled, tag: tag, now: 100)))
                tag += 1
            }
            h.pair.ring()
            // Nothing posted yet: old entries (wrong phase) are not new.
            #expect(h.pair.reap(now: 150) { _ in Issue.record("no completion was posted") } == 0)
            for c in cids { h.complete(c, result: UInt32(c)) }
            let n = h.pair.reap(now: 160) { c in
                seen.append(c.tag)
                #expect(c.status.isSuccess && c.latencyNanoseconds == 60 && c.result == UInt32(c.commandID))
            }
            #expect(n == 3)
            #expect(h.pair.outstanding == 0)
            // The CQ head doorbell says how far the host consumed.
            #expect(h.registers.load32(0x1000 + 3 * 4) == UInt32(h.tail))
        }
        #expect(seen == Array(0..<9))
        #expect(h.pair.phase == h.phase, "host and controller agree on the phase after wrapping")
    }

    @Test func awaitedCommandsWaitForCollectAndErrorsCarryTheirStatus() throws {
        var h = try Harness(entries: 4)
        var e = SubmissionEntry.readWrite(.write, namespace: 1, lba: 0, blocks: 1)
        let cid = try #require(h.pair.submit(&e, dataIOVA: 0x2000, length: 512, state: .awaited, tag: 0, now: 0))
        h.complete(cid, status: 0x80 | 0 << 8, result: 0)  // LBA Out of Range
        #expect(try h.pair.wait(for: cid, deadline: monotonicNanoseconds() + 1_000_000_000) { _ in })
        let (status, _) = h.pair.collect(cid)
        #expect(status.name == "LBA Out of Range" && !status.isSuccess)
        #expect(h.pair.outstanding == 0)
    }

    @Test func waitTimesOutAndALateCompletionFreesAnAbandonedSlot() throws {
        var h = try Harness(entries: 4)
        var e = SubmissionEntry.flush(namespace: 1)
        let cid = try #require(h.pair.submit(&e, dataIOVA: 0, length: 0, state: .awaited, tag: 0, now: 0))
        let start = monotonicNanoseconds()
        #expect(try h.pair.wait(for: cid, deadline: start + 2_000_000) { _ in } == false)
        #expect(monotonicNanoseconds() - start >= 2_000_000)
        h.pair.slots[Int(cid)].state = .abandoned
        #expect(h.pair.outstanding == 1, "the slot stays taken until the controller is done with it")
        h.complete(cid)
        _ = h.pair.reap(now: 0) { _ in Issue.record("an abandoned command reaches no handler") }
        #expect(h.pair.outstanding == 0 && h.pair.lateCompletions == 1)
        // An identifier nobody submitted is counted, not trusted.
        h.complete(2)
        _ = h.pair.reap(now: 0) { _ in Issue.record("unknown identifiers reach no handler") }
        #expect(h.pair.unknownCompletions == 1)
    }

    @Test func transfersOverTwoPagesUseThePRPListOfTheirSlot() throws {
        let h = try Harness(entries: 4, prpListBytes: 256)
        // 5 pages' worth starting 0x200 into a page: PRP1 + 5 list entries.
        var e = SubmissionEntry.readWrite(.read, namespace: 1, lba: 0, blocks: 40)
        let data: IOVA = 0x20_0200
        let cid = try #require(h.pair.submit(&e, dataIOVA: data, length: 5 * 4096, state: .awaited, tag: 0, now: 0))
        let sqe = h.sqEntry(0)
        #expect(sqe.load(fromByteOffset: 24, as: UInt64.self) == data.rawValue)
        let listOffset = QueuePair.layout(entries: 4, prpListBytes: 256).prpOffset + Int(cid) * 256
        #expect(sqe.load(fromByteOffset: 32, as: UInt64.self) == (Harness.iova + UInt64(listOffset)).rawValue)
        let list = h.memory.base + listOffset
        #expect((0..<5).map { list.load(fromByteOffset: $0 * 8, as: UInt64.self) }
                == [0x20_1000, 0x20_2000, 0x20_3000, 0x20_4000, 0x20_5000])
        // Two pages: PRP2 is the second page itself.
        var two = SubmissionEntry.readWrite(.read, namespace: 1, lba: 0, blocks: 16)
        _ = try #require(h.pair.submit(&two, dataIOVA: 0x30_0000, length: 8192, state: .awaited, tag: 0, now: 0))
        #expect(h.sqEntry(1).load(fromByteOffset: 32, as: UInt64.self) == 0x30_1000)
        // More pages than a list holds (256 bytes: 32 entries) is refused, and the slot stays free.
        var big = SubmissionEntry.readWrite(.read, namespace: 1, lba: 0, blocks: 1)
        #expect(h.pair.submit(&big, dataIOVA: 0x40_0000, length: 34 * 4096, state: .awaited, tag: 0, now: 0) == nil)
        #expect(h.pair.outstanding == 2)
    }

    @Test func prpBuilderEdges() {
        let list = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { list.deallocate() }
        // Up to the end of the first page: PRP2 unused.
        #expect(buildPRPs(iova: 0x1800, length: 0x800, pageSize: 4096, list: list, listIOVA: 0x9000, listCapacity: 512)! == (0x1800, 0))
        // One byte over: the next page in PRP2.
        #expect(buildPRPs(iova: 0x1800, length: 0x801, pageSize: 4096, list: list, listIOVA: 0x9000, listCapacity: 512)! == (0x1800, 0x2000))
        // Exactly 2 MiB page-aligned: PRP1 + 511 entries.
        let big = buildPRPs(iova: 0x10_0000, length: 2 << 20, pageSize: 4096, list: list, listIOVA: 0x9000, listCapacity: 512)
        #expect(big! == (0x10_0000, 0x9000))
        #expect(list.load(fromByteOffset: 510 * 8, as: UInt64.self) == 0x10_0000 + 511 * 4096)
    }
}

@Suite struct DecodingTests {
    @Test func capabilitiesOfQEMUsController() {
        // QEMU 10.0's nvme: MQES 0x7ff, CQR, TO 0x0f, DSTRD 0, CSS NVM + all I/O sets, MPSMAX 4 (64 KiB).
        let cap = ControllerCapabilities(raw: 0x0040_0000_0f01_07ff | 1 << 37 | 0x41 << 37 | 4 << 52)
        #expect(cap.maxQueueEntries == 2048 && cap.contiguousQueuesRequired)
        #expect(cap.readyTimeout == .milliseconds(7500))
        #expect(cap.doorbellStride == 4 && cap.supportsNVMCommandSet)
        #expect(cap.minPageSize == 4096 && cap.maxPageSize == 65536)
        #expect(ControllerCapabilities(raw: 3 << 32).doorbellStride == 32)
    }

    @Test func statusRegisterAndConfiguration() {
        #expect(ControllerStatus(raw: 0b0001).ready && !ControllerStatus(raw: 0b0001).fatal)
        #expect(ControllerStatus(raw: 0b0011).fatal)
        #expect(ControllerStatus(raw: 0b1001).shutdownStatus == 2)
        #expect(ControllerStatus(raw: .max).isAllOnes)
        var cc = ControllerConfiguration.nvm(pageShift: 12)
        #expect(cc.raw == 0x0046_0000)  // IOCQES 4, IOSQES 6, MPS 0, CSS NVM
        cc.enabled = true
        cc.shutdownNotification = 1
        #expect(cc.raw == 0x0046_4001)
    }

    @Test func completionStatusNames() {
        #expect(NVMeStatus(raw: 0).isSuccess)
        let dte = NVMeStatus(raw: 0x04)
        #expect(dte.isDataTransferError && dte.description == "Data Transfer Error (SCT 0, SC 0x4)")
        let invalidQ = NVMeStatus(raw: 1 << 8 | 0x01 | 0x4000)
        #expect(invalidQ.type == 1 && invalidQ.doNotRetry && invalidQ.name == "Invalid Queue Identifier")
    }

    @Test func identifyControllerAndNamespace() {
        var c = [UInt8](repeating: 0, count: 4096)
        c[0] = 0x36; c[1] = 0x1b; c[2] = 0xf4; c[3] = 0x1a
        for (i, b) in Array("vfiokit0".utf8).enumerated() { c[4 + i] = b }
        for i in 12..<24 { c[i] = 0x20 }
        for (i, b) in Array("QEMU NVMe Ctrl".utf8).enumerated() { c[24 + i] = b }
        for i in (24 + 14)..<64 { c[i] = 0x20 }
        for (i, b) in Array("10.0.2".utf8).enumerated() { c[64 + i] = b }
        c[77] = 7
        c[80] = 0x00; c[81] = 0x04; c[82] = 0x01  // 1.4.0
        c[512] = 0x66; c[513] = 0x44; c[516] = 0x00; c[517] = 0x01  // NN 256
        let id = ControllerIdentity(c)
        #expect(id.vendorID == 0x1b36 && id.subsystemVendorID == 0x1af4)
        #expect(id.serialNumber == "vfiokit0" && id.modelNumber == "QEMU NVMe Ctrl" && id.firmwareRevision == "10.0.2")
        #expect(id.maxTransferBytes(minPageSize: 4096) == 512 * 1024)
        #expect(id.version.description == "1.4.0" && id.namespaceCount == 256)

        var n = [UInt8](repeating: 0, count: 4096)
        n[0] = 0x00; n[1] = 0x00; n[2] = 0x02  // NSZE 0x20000 blocks
        n[8] = 0x00; n[9] = 0x00; n[10] = 0x02
        n[25] = 1  // two formats
        n[26] = 1  // FLBAS: format 1
        n[128 + 2] = 9  // format 0: 512 B
        n[132 + 2] = 12  // format 1: 4 KiB
        n[132] = 8  // 8 bytes metadata
        let ns = NamespaceIdentity(id: 1, n)
        #expect(ns.size == 0x20000 && ns.formats.count == 2 && ns.formatIndex == 1)
        #expect(ns.blockSize == 4096 && ns.format.metadataSize == 8 && ns.sizeInBytes == 0x20000 * 4096)
        #expect(formatSize(ns.sizeInBytes) == "512 MiB")
        #expect(formatSize(UInt64(1536) << 20) == "1.5 GiB")
    }

    @Test func submissionEntriesOfAdminCommands() {
        let cq = SubmissionEntry.createCompletionQueue(id: 2, entries: 129, iova: 0xabc000, vector: 2)
        #expect(cq.opcode == 0x05 && cq.cdw10 == 2 | 128 << 16 && cq.cdw11 == 0b11 | 2 << 16 && cq.prp1 == 0xabc000)
        let polled = SubmissionEntry.createCompletionQueue(id: 2, entries: 129, iova: 0, vector: nil)
        #expect(polled.cdw11 == 1, "no IEN without a vector")
        let sq = SubmissionEntry.createSubmissionQueue(id: 2, entries: 129, iova: 0xdef000, cq: 2)
        #expect(sq.opcode == 0x01 && sq.cdw10 == 2 | 128 << 16 && sq.cdw11 == 1 | 2 << 16)
        #expect(SubmissionEntry.setNumberOfQueues(submission: 4, completion: 4).cdw11 == 3 | 3 << 16)
        let abort = SubmissionEntry.abort(sq: 1, cid: 7)
        #expect(abort.opcode == 0x08 && abort.cdw10 == 1 | 7 << 16)
        #expect(SubmissionEntry.identify(cns: 2).cdw10 == 2)
    }
}

@Suite struct LatencyHistogramTests {
    @Test func bucketsAreContiguousAndPercentilesWithinThreePercent() {
        var last = -1
        for v: UInt64 in [0, 1, 63, 64, 65, 127, 128, 1000, 1 << 20, 123_456_789, .max / 2] {
            let b = LatencyHistogram.bucket(v)
            #expect(b >= last, "buckets grow with the value")
            last = b
            let r = LatencyHistogram.range(b)
            #expect(r.lower <= v && v - r.lower < r.width, "\(v) in bucket \(b) [\(r.lower), +\(r.width))")
        }
        let h = LatencyHistogram()
        for v in 1...10000 { h.record(UInt64(v) * 1000) }
        #expect(h.count == 10000 && h.min == 1000 && h.max == 10_000_000)
        for (q, exact) in [(0.5, 5_000_000.0), (0.9, 9_000_000.0), (0.99, 9_900_000.0)] {
            let p = Double(h.percentile(q))
            #expect(abs(p - exact) / exact < 0.03, "p\(q) = \(p), exact \(exact)")
        }
        #expect(abs(h.mean - 5_000_500) < 1)
    }
}
