import CVFIO
import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One I/O page fault the kernel forwarded (`struct iommu_hwpt_pgfault`).
public struct PageFault: Sendable, Equatable {
    /// The access that faulted (`IOMMU_PGFAULT_PERM_*`).
    public struct Permissions: OptionSet, Sendable, Hashable {
        /// The `IOMMU_PGFAULT_PERM_*` bits.
        public let rawValue: UInt32
        /// Permissions from their bits.
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// A read (`IOMMU_PGFAULT_PERM_READ`).
        public static let read = Permissions(rawValue: UInt32(IOMMU_PGFAULT_PERM_READ.rawValue))
        /// A write (`IOMMU_PGFAULT_PERM_WRITE`).
        public static let write = Permissions(rawValue: UInt32(IOMMU_PGFAULT_PERM_WRITE.rawValue))
        /// An instruction fetch (`IOMMU_PGFAULT_PERM_EXEC`).
        public static let execute = Permissions(rawValue: UInt32(IOMMU_PGFAULT_PERM_EXEC.rawValue))
        /// A privileged-mode access (`IOMMU_PGFAULT_PERM_PRIV`).
        public static let privileged = Permissions(rawValue: UInt32(IOMMU_PGFAULT_PERM_PRIV.rawValue))
    }

    /// The bound device's id.
    public var deviceID: UInt32
    /// The PASID, when the fault carried one.
    public var pasid: UInt32?
    /// Page request group index.
    public var groupID: UInt32
    /// Whether this is the last fault of its group (the one to respond to).
    public var isLastInGroup: Bool
    /// The access that faulted.
    public var permissions: Permissions
    /// The faulting address (page aligned).
    public var address: UInt64
    /// Bytes, when the IOMMU reports a length.
    public var length: UInt32
    /// What to echo in the response.
    public var cookie: UInt32
    /// The raw flags.
    public var flags: UInt32

    /// A fault from the record the kernel wrote (`struct iommu_hwpt_pgfault`).
    public init(_ raw: iommu_hwpt_pgfault) {
        flags = raw.flags
        deviceID = raw.dev_id
        pasid = raw.flags & UInt32(IOMMU_PGFAULT_FLAGS_PASID_VALID.rawValue) != 0 ? raw.pasid : nil
        groupID = raw.grpid
        isLastInGroup = raw.flags & UInt32(IOMMU_PGFAULT_FLAGS_LAST_PAGE.rawValue) != 0
        permissions = Permissions(rawValue: raw.perm)
        address = raw.addr
        length = raw.length
        cookie = raw.cookie
    }
}

/// A queue the kernel delivers I/O page faults of HWPTs allocated with it to.
///
/// Read faults with ``read(maxCount:)`` (never blocks; empty when none),
/// ``wait(timeout:)`` from a thread of your own, or
/// ``next(maxCount:)`` from async code, and answer each fault group with
/// ``respond(cookie:success:)``. Responses the process never sends are
/// answered with failure by the kernel when the queue is destroyed.
/// ``destroy()`` ends waits in progress (they throw "closed").
public final class FaultQueue: Sendable, IOMMUObjectOwner {
    /// The kernel's id of the fault queue (`out_fault_id` of `IOMMU_FAULT_QUEUE_ALLOC`).
    public let objectID: UInt32
    /// The context it lives in.
    public let iommufd: IOMMUFD
    /// The queue's fd (read faults, write responses, poll for POLLIN).
    public let fd: OwnedFD
    let state: IOMMUObjectState

    /// Allocates a fault queue.
    /// The corresponding ioctl is `IOMMU_FAULT_QUEUE_ALLOC`.
    public init(_ ctx: IOMMUFD) throws(VFIOError) {
        var arg = iommu_fault_alloc.make()
        try ctx.ioctl(.iommuFaultQueueAlloc, &arg, object: ctx.fd.label)
        objectID = arg.out_fault_id
        iommufd = ctx
        fd = OwnedFD(Int32(bitPattern: arg.out_fault_fd), label: "fault queue \(arg.out_fault_id)", kernel: ctx.fd.kernel)
        state = IOMMUObjectState(id: arg.out_fault_id, kind: "fault queue", objectFD: fd)
        ctx.track(state)
    }

    /// "fault queue 5", for errors.
    public var label: String { "fault queue \(objectID)" }

    /// Whether the queue was destroyed (by ``destroy()`` or ``IOMMUFD/close()``).
    public var isDestroyed: Bool { state.isDestroyed }

    /// Destroys the queue: closes its fd (waits in progress end with
    /// "closed"; the file holds the object, so the close completes first) and
    /// destroys the object. Refused while a ``HWPT`` of this process delivers
    /// faults to it (destroy that first). A second call does nothing.
    /// The corresponding ioctl is `IOMMU_DESTROY`.
    public func destroy() throws(VFIOError) {
        try state.destroy(iommufd) { () throws(VFIOError) in
            let users = state.dependents.load(ordering: .relaxed)
            guard users == 0 else {
                throw VFIOError.invalid(.ioctl(.iommuDestroy), "\(users) HWPT(s) of this process deliver their faults to \(label) "
                                            + "(nothing was closed or destroyed)", object: label,
                                        remedies: [.advice("destroy the HWPTs allocated with this fault queue first")])
            }
        }
    }

    deinit {
        state.destroyQuietly(iommufd)
        try? fd.close()
    }

    /// Reads the faults queued now (at most `maxCount`), never blocking.
    /// Whole fault groups only: a group larger than `maxCount` fails with EINVAL.
    public func read(maxCount: Int = 32) throws(VFIOError) -> [PageFault] {
        precondition(maxCount > 0)
        try state.requireLive(.syscall(.read))
        var raw = [iommu_hwpt_pgfault](repeating: iommu_hwpt_pgfault(), count: maxCount)
        let r: Result<Int, VFIOError> = raw.withUnsafeMutableBytes { b in
            do throws(VFIOError) { return .success(try fd.read(b, object: self.label) ?? 0) } catch { return .failure(error) }
        }
        let n = try r.get() / MemoryLayout<iommu_hwpt_pgfault>.stride
        return raw[..<n].map(PageFault.init)
    }

    /// Suspends until faults arrive, then reads them. The wait is on the
    /// queue fd's readiness, in a dedicated thread (no pool thread blocks, no
    /// timer wakes): cancelling the task ends it at once with an error whose
    /// operation is .step(.waitForPageFaults) and detail "cancelled";
    /// ``destroy()`` ends it with "closed".
    public func next(maxCount: Int = 32) async throws(VFIOError) -> [PageFault] {
        while true {
            let faults = try read(maxCount: maxCount)
            if !faults.isEmpty { return faults }
            try await fd.readable(operation: .step(.waitForPageFaults), object: label)
        }
    }

    /// Blocks up to `timeout` (nil: forever) for a fault; true when
    /// one is queued. ``destroy()`` from another thread ends the wait at once
    /// (it throws "closed").
    public func wait(timeout: Duration?) throws(VFIOError) -> Bool {
        try state.requireLive(.step(.waitForPageFaults))
        return try fd.waitReadableOrClose(timeout: timeout, operation: .step(.waitForPageFaults))
    }

    /// Answers the fault group `cookie` (from ``PageFault/cookie``).
    public func respond(cookie: UInt32, success: Bool) throws(VFIOError) {
        var resp = iommu_hwpt_page_response()
        resp.cookie = cookie
        resp.code = success ? UInt32(IOMMUFD_PAGE_RESP_SUCCESS.rawValue) : UInt32(IOMMUFD_PAGE_RESP_INVALID.rawValue)
        try state.requireLive(.syscall(.write))
        let n = try withUnsafeBytes(of: &resp) { (b) throws(VFIOError) -> Int in try fd.write(b, object: self.label) }
        if n != MemoryLayout<iommu_hwpt_page_response>.size {
            throw VFIOError.invalid(.syscall(.write), "short write of a page response (\(n) bytes)", object: label)
        }
    }
}
