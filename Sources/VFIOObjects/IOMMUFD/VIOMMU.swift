import CVFIO
import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A virtual IOMMU instance: the slice of a physical IOMMU that a VMM gives
/// one guest (its VMID, its virtual stream ids, its queues), built on a
/// nesting-parent ``HWPT`` (the stage-2 table). Nested HWPTs, vDEVICEs,
/// vEVENTQs and HW queues hang off it and keep it alive.
public final class VIOMMU: HWPTParent, IOMMUObjectOwner {
    /// The kernel's id of the vIOMMU (`out_viommu_id` of `IOMMU_VIOMMU_ALLOC`).
    public let objectID: UInt32
    /// The context it lives in.
    public let iommufd: IOMMUFD
    /// The stage-2 (nesting-parent) HWPT.
    public let parent: HWPT
    /// The type number (`enum iommu_viommu_type`, or a driver's own).
    public let type: UInt32
    /// The data the kernel wrote back into the driver data (mmap offsets and the like).
    public let outputData: [UInt8]
    let state: IOMMUObjectState

    /// `enum iommu_viommu_type`.
    public static let typeDefault = UInt32(IOMMU_VIOMMU_TYPE_DEFAULT.rawValue)
    /// `IOMMU_VIOMMU_TYPE_ARM_SMMUV3`: a virtual SMMUv3.
    public static let typeARMSMMUv3 = UInt32(IOMMU_VIOMMU_TYPE_ARM_SMMUV3.rawValue)
    /// `IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV`: an SMMUv3 with NVIDIA Tegra241 command queues.
    public static let typeTegra241CMDQV = UInt32(IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV.rawValue)

    /// Allocates a vIOMMU of `type` for device `deviceID` on `parent`, passing
    /// driver `data` (in and out).
    /// The corresponding ioctl is `IOMMU_VIOMMU_ALLOC`.
    public init(device deviceID: UInt32, parent: HWPT, type: UInt32, data: [UInt8] = []) throws(VFIOError) {
        var bytes = data
        var arg = iommu_viommu_alloc.make()
        arg.type = type
        arg.dev_id = deviceID
        let ctx = parent.iommufd
        let r: Result<Void, VFIOError> = bytes.withUnsafeMutableBytes { raw in
            arg.data_len = UInt32(raw.count)
            arg.data_uptr = raw.count == 0 ? 0 : UInt64(UInt(bitPattern: raw.baseAddress))
            do throws(VFIOError) {
                try parent.state.withID(.ioctl(.iommuVIOMMUAlloc)) { (id) throws(VFIOError) in
                    arg.hwpt_id = id
                    try ctx.ioctl(.iommuVIOMMUAlloc, &arg, object: "\(parent.label) for device \(deviceID)")
                }
                return .success(())
            } catch { return .failure(error) }
        }
        if case .failure(var e) = r {
            if e.errno == .notSupported {
                e.detail = "vIOMMU type 0x\(String(type, radix: 16)) is not supported by this device's IOMMU driver"
                e.remedies = [.advice("vIOMMUs exist for ARM SMMUv3 (and Tegra241 CMDQV); check hardwareInfo(device:).vendor")]
            } else if e.errno == .invalidArgument {
                e.detail = "\(parent.label) must be a paging HWPT allocated with .nestParent"
            }
            throw e
        }
        objectID = arg.out_viommu_id
        iommufd = ctx
        self.parent = parent
        self.type = type
        outputData = bytes
        state = IOMMUObjectState(id: arg.out_viommu_id, kind: "vIOMMU", uses: [parent.state])
        ctx.track(state)
    }

    /// "vIOMMU 4", for errors.
    public var label: String { "vIOMMU \(objectID)" }

    /// Whether the vIOMMU was destroyed (by ``destroy()`` or ``IOMMUFD/close()``).
    public var isDestroyed: Bool { state.isDestroyed }

    /// Destroys the vIOMMU (EBUSY while vDEVICEs, vEVENTQs, HW queues or
    /// nested HWPTs are built on it); afterwards every operation throws a
    /// "destroyed" error. The corresponding ioctl is `IOMMU_DESTROY`.
    public func destroy() throws(VFIOError) { try state.destroy(iommufd) }
    deinit { state.destroyQuietly(iommufd) }

    /// Invalidates vIOMMU-wide caches (device caches, TLBs by VMID). Returns
    /// the number of entries handled; on failure the detail says how many were.
    /// The corresponding ioctl is `IOMMU_HWPT_INVALIDATE` (on the vIOMMU id).
    public func invalidate(dataType: UInt32, entryLength: Int, count: Int, entries: UnsafeRawBufferPointer)
        throws(VFIOError) -> Int
    {
        try state.withID(.ioctl(.iommuHWPTInvalidate)) { (id) throws(VFIOError) -> Int in
            try iommufd.invalidate(id: id, label: label, dataType: dataType, entryLength: entryLength,
                                   count: count, entries: entries)
        }
    }

    /// ARM SMMUv3 commands (`IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3`), two little-endian words each.
    public func invalidate(armSMMUv3Commands commands: [(UInt64, UInt64)]) throws(VFIOError) -> Int {
        var words: [UInt64] = []
        words.reserveCapacity(commands.count * 2)
        for c in commands { words.append(c.0.littleEndian); words.append(c.1.littleEndian) }
        let n = commands.count
        let r: Result<Int, VFIOError> = words.withUnsafeBytes { b in
            do throws(VFIOError) {
                return .success(try invalidate(dataType: UInt32(IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3.rawValue),
                                               entryLength: 16, count: n, entries: b))
            } catch { return .failure(error) }
        }
        return try r.get()
    }
}

/// A device's identity inside a vIOMMU (its virtual stream id / RID as the guest sees it).
public final class VDevice: Sendable, IOMMUObjectOwner {
    /// The kernel's id of the vDEVICE (`out_vdevice_id` of `IOMMU_VDEVICE_ALLOC`).
    public let objectID: UInt32
    /// The vIOMMU it belongs to.
    public let viommu: VIOMMU
    /// The iommufd device id of the physical device it stands for.
    public let deviceID: UInt32
    /// The guest's id for the device (vSID for SMMUv3, vRID for VT-d/AMD).
    public let virtualID: UInt64
    let state: IOMMUObjectState

    /// The corresponding ioctl is `IOMMU_VDEVICE_ALLOC`.
    public init(viommu: VIOMMU, device deviceID: UInt32, virtualID: UInt64) throws(VFIOError) {
        var arg = iommu_vdevice_alloc.make()
        arg.dev_id = deviceID
        arg.virt_id = virtualID
        try viommu.state.ioctl(.iommuVDeviceAlloc, on: viommu.iommufd, &arg, id: \.viommu_id,
                               object: "\(viommu.label) device \(deviceID)") { e in
            e.errno != .fileExists ? nil
                : "device \(deviceID) already has a vDEVICE, or virtual id 0x\(String(virtualID, radix: 16)) "
                    + "is taken in \(viommu.label)"
        }
        objectID = arg.out_vdevice_id
        self.viommu = viommu
        self.deviceID = deviceID
        self.virtualID = virtualID
        state = IOMMUObjectState(id: arg.out_vdevice_id, kind: "vDEVICE", uses: [viommu.state])
        viommu.iommufd.track(state)
    }

    /// "vDEVICE 6", for errors.
    public var label: String { "vDEVICE \(objectID)" }
    /// Whether the vDEVICE was destroyed (by ``destroy()`` or ``IOMMUFD/close()``).
    public var isDestroyed: Bool { state.isDestroyed }
    /// A second call does nothing. The corresponding ioctl is `IOMMU_DESTROY`.
    public func destroy() throws(VFIOError) { try state.destroy(viommu.iommufd) }
    deinit { state.destroyQuietly(viommu.iommufd) }
}

/// A queue of events a vIOMMU reports for its guest (translation faults the
/// guest must see). Each record is a header with a sequence number; when the
/// queue overflowed the kernel inserts a lost-events marker.
public final class VEventQueue: Sendable, IOMMUObjectOwner {
    /// The kernel's id of the event queue (`out_veventq_id` of `IOMMU_VEVENTQ_ALLOC`).
    public let objectID: UInt32
    /// The vIOMMU whose events it carries.
    public let viommu: VIOMMU
    /// The queue's descriptor, read for events.
    public let fd: OwnedFD
    /// Its `IOMMU_VEVENTQ_TYPE_*`.
    public let type: UInt32
    /// Payload bytes per event of this type.
    public let eventSize: Int
    let state: IOMMUObjectState
    private let lastSequence = Mutex<Int64>(-1)

    /// `enum iommu_veventq_type`.
    public static let typeARMSMMUv3 = UInt32(IOMMU_VEVENTQ_TYPE_ARM_SMMUV3.rawValue)
    /// `IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV`: Tegra241 CMDQV errors.
    public static let typeTegra241CMDQV = UInt32(IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV.rawValue)

    /// The payload size of a known type (nil for types VFIOKit does not know).
    public static func eventSize(of type: UInt32) -> Int? {
        switch type {
        case typeARMSMMUv3: return MemoryLayout<iommu_vevent_arm_smmuv3>.size
        case typeTegra241CMDQV: return MemoryLayout<iommu_vevent_tegra241_cmdqv>.size
        default: return nil
        }
    }

    /// Allocates a vEVENTQ of `type` holding up to `depth` events. `eventSize`
    /// is needed for types VFIOKit does not know (the selftest's is 4 bytes).
    /// The corresponding ioctl is `IOMMU_VEVENTQ_ALLOC`.
    public init(viommu: VIOMMU, type: UInt32, depth: UInt32, eventSize: Int? = nil) throws(VFIOError) {
        guard let size = eventSize ?? VEventQueue.eventSize(of: type) else {
            throw VFIOError.invalid(.ioctl(.iommuVEventQAlloc), "unknown vEVENTQ type 0x\(String(type, radix: 16)): pass eventSize",
                                    object: viommu.label)
        }
        var arg = iommu_veventq_alloc.make()
        arg.type = type
        arg.veventq_depth = depth
        try viommu.state.ioctl(.iommuVEventQAlloc, on: viommu.iommufd, &arg, id: \.viommu_id, object: viommu.label) { e in
            switch e.errno {
            case .fileExists?: "\(viommu.label) already has a vEVENTQ of this type"
            case .invalidArgument?: "depth \(depth) must be 1 ... 2^19"
            default: nil
            }
        }
        objectID = arg.out_veventq_id
        fd = OwnedFD(Int32(bitPattern: arg.out_veventq_fd), label: "vEVENTQ \(arg.out_veventq_id)",
                     kernel: viommu.iommufd.fd.kernel)
        self.viommu = viommu
        self.type = type
        self.eventSize = size
        state = IOMMUObjectState(id: arg.out_veventq_id, kind: "vEVENTQ", objectFD: fd, uses: [viommu.state])
        viommu.iommufd.track(state)
    }

    /// "vEVENTQ 7", for errors.
    public var label: String { "vEVENTQ \(objectID)" }

    /// Whether the queue was destroyed (by ``destroy()`` or ``IOMMUFD/close()``).
    public var isDestroyed: Bool { state.isDestroyed }

    /// Closes the fd (waits in progress end with "closed"; the file holds the
    /// object, so the close completes first) and destroys the queue. A second
    /// call does nothing. The corresponding ioctl is `IOMMU_DESTROY`.
    public func destroy() throws(VFIOError) { try state.destroy(viommu.iommufd) }
    deinit {
        state.destroyQuietly(viommu.iommufd)
        try? fd.close()
    }

    /// One record read from the queue.
    public enum Record: Sendable, Equatable {
        /// An event with its sequence number and payload.
        case event(sequence: UInt32, data: [UInt8])
        /// Events were lost before this point: the queue overflowed (the
        /// kernel's `IOMMU_VEVENTQ_FLAG_LOST_EVENTS` header, which takes a
        /// sequence number of its own) or the sequence numbers jumped (then
        /// `sequence` is that of the first event after the gap). Sequence
        /// numbers count up to INT32_MAX and wrap to 0.
        case lostEvents(sequence: UInt32)
    }

    /// Reads up to `maxEvents` queued events, never blocking (empty when none).
    /// Sequence numbers are checked across calls: a jump yields a ``Record/lostEvents(sequence:)``.
    public func read(maxEvents: Int = 16) throws(VFIOError) -> [Record] {
        let header = MemoryLayout<iommufd_vevent_header>.size
        try state.requireLive(.syscall(.read))
        var buffer = [UInt8](repeating: 0, count: max(1, maxEvents) * (header + eventSize))
        let r: Result<Int, VFIOError> = buffer.withUnsafeMutableBytes { b in
            do throws(VFIOError) { return .success(try fd.read(b, object: self.label) ?? 0) } catch { return .failure(error) }
        }
        let n = try r.get()
        return lastSequence.withLock { last in
            buffer.withUnsafeBytes { VEventQueue.parse(UnsafeRawBufferPointer(rebasing: $0[..<n]), eventSize: eventSize, lastSequence: &last) }
        }
    }

    /// Splits what a read of a vEVENTQ returned into records. `lastSequence`
    /// (-1: none yet) carries the sequence check across reads.
    public static func parse(_ bytes: UnsafeRawBufferPointer, eventSize: Int, lastSequence: inout Int64) -> [Record] {
        let header = MemoryLayout<iommufd_vevent_header>.size
        let lostFlag = UInt32(IOMMU_VEVENTQ_FLAG_LOST_EVENTS.rawValue)
        var out: [Record] = []
        var off = 0
        while off + header <= bytes.count {
            let flags = bytes.loadUnaligned(fromByteOffset: off, as: UInt32.self)
            let seq = bytes.loadUnaligned(fromByteOffset: off + 4, as: UInt32.self)
            off += header
            if flags & lostFlag != 0 {
                out.append(.lostEvents(sequence: seq))
                lastSequence = Int64(seq)  // the marker takes a sequence number too
                continue
            }
            guard off + eventSize <= bytes.count else { break }
            // Sequence numbers wrap at INT_MAX.
            if lastSequence >= 0 && UInt32((lastSequence + 1) & 0x7fff_ffff) != seq {
                out.append(.lostEvents(sequence: seq))
            }
            lastSequence = Int64(seq)
            out.append(.event(sequence: seq, data: Array(bytes[off..<(off + eventSize)])))
            off += eventSize
        }
        return out
    }

    /// Blocks up to `timeout` (nil: forever); true when an event is
    /// queued. ``destroy()`` from another thread ends the wait at once (it
    /// throws "closed").
    public func wait(timeout: Duration?) throws(VFIOError) -> Bool {
        try state.requireLive(.step(.waitForVEvents))
        return try fd.waitReadableOrClose(timeout: timeout, operation: .step(.waitForVEvents))
    }

    /// Suspends until events arrive, then reads them. The wait is on the fd's
    /// readiness, in a dedicated thread: cancelling the task ends it at once
    /// (operation .step(.waitForVEvents), detail "cancelled"); ``destroy()`` ends
    /// it with "closed".
    public func next(maxEvents: Int = 16) async throws(VFIOError) -> [Record] {
        while true {
            let records = try read(maxEvents: maxEvents)
            if !records.isEmpty { return records }
            try await fd.readable(operation: .step(.waitForVEvents), object: label)
        }
    }
}

/// A hardware-accelerated queue (a guest's command queue the IOMMU reads
/// directly) in guest memory at `nesting_parent_iova`, which must be mapped in
/// the parent's IOAS; the kernel pins that range while the queue lives.
public final class HWQueue: Sendable, IOMMUObjectOwner {
    /// The kernel's id of the HW queue (`out_hw_queue_id` of `IOMMU_HW_QUEUE_ALLOC`).
    public let objectID: UInt32
    /// The vIOMMU it belongs to.
    public let viommu: VIOMMU
    /// The queue's index in its vIOMMU.
    public let index: UInt32
    let state: IOMMUObjectState

    /// `enum iommu_hw_queue_type`.
    public static let typeTegra241CMDQV = UInt32(IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV.rawValue)

    /// The corresponding ioctl is `IOMMU_HW_QUEUE_ALLOC`.
    public init(viommu: VIOMMU, type: UInt32, index: UInt32, iova: IOVA, length: UInt64) throws(VFIOError) {
        var arg = iommu_hw_queue_alloc.make()
        arg.type = type
        arg.index = index
        arg.nesting_parent_iova = iova.rawValue
        arg.length = length
        try viommu.state.ioctl(.iommuHWQueueAlloc, on: viommu.iommufd, &arg, id: \.viommu_id,
                               object: "\(viommu.label) queue \(index)") { e in
            e.errno == .noSuchFileOrDirectory ? "IOVA \(iova) length \(length) is not mapped in the parent's IOAS" : nil
        }
        objectID = arg.out_hw_queue_id
        self.viommu = viommu
        self.index = index
        state = IOMMUObjectState(id: arg.out_hw_queue_id, kind: "HW queue", uses: [viommu.state])
        viommu.iommufd.track(state)
    }

    /// "HW queue 8", for errors.
    public var label: String { "HW queue \(objectID)" }
    /// Whether the queue was destroyed (by ``destroy()`` or ``IOMMUFD/close()``).
    public var isDestroyed: Bool { state.isDestroyed }
    /// Destroys the queue (queues that others depend on, e.g. lower indexes, give EBUSY).
    /// A second call does nothing. The corresponding ioctl is `IOMMU_DESTROY`.
    public func destroy() throws(VFIOError) { try state.destroy(viommu.iommufd) }
    deinit { state.destroyQuietly(viommu.iommufd) }
}

import Synchronization
