import CVFIO
import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An I/O address space: the table of IOVA → memory that devices (through a
/// paging domain) or HWPTs built on it see.
///
/// Safe mappings go through `map(_:at:readable:writable:)` and
/// `mapFile(_:at:readable:writable:)` (VFIODMA): they take a `DMABuffer` and
/// return a `DMAMapping` that keeps both the buffer and this IOAS alive and
/// unmaps when it goes away. ``unsafeMap(address:length:at:readable:writable:)`` maps
/// memory VFIOKit does not own and leaves its lifetime to the caller.
///
/// The IOAS is destroyed (`IOMMU_DESTROY`) by ``destroy()`` or when the last
/// reference goes; devices and HWPTs attached to it keep it alive.
///
/// The safe mappings of an IOAS are tracked, so that none of them can ever
/// unmap a range it no longer owns (iommufd reuses IOVAs and ids at once):
/// - ``destroy()`` is refused while ``DMAMapping``s of the IOAS are live;
/// - ``unmapAll()`` makes the live ones inert (their `unmap()` and deinit then
///   do nothing), and ``unmap(iova:length:)`` refuses a range one of them owns;
/// - every operation after the IOAS was destroyed throws a "destroyed" error
///   and issues no ioctl.
/// Many threads may map and unmap at once; unmap-all and destroy wait for the
/// operations in flight. The bookkeeping allocates nothing per map + unmap.
public final class IOAS: IOMMUAttachTarget, IOMMUObjectOwner {
    /// The kernel's id of this IOAS (never 0). After ``destroy()`` the number
    /// may name another object: the owner no longer uses it.
    public let objectID: UInt32
    /// The context it lives in.
    public let iommufd: IOMMUFD
    /// Whether this owner allocated the IOAS (and destroys it when it goes);
    /// false for ``init(existing:in:)``.
    public let isOwned: Bool
    let state: IOMMUObjectState
    /// The safe mappings (``DMAMapping``) made through this owner.
    let mappings: MappingTable

    /// Allocates an empty IOAS.
    /// The corresponding ioctl is `IOMMU_IOAS_ALLOC`.
    public init(_ ctx: IOMMUFD) throws(VFIOError) {
        var arg = iommu_ioas_alloc.make()
        try ctx.ioctl(.iommuIOASAlloc, &arg, object: ctx.fd.label)
        objectID = arg.out_ioas_id
        iommufd = ctx
        isOwned = true
        mappings = MappingTable()
        state = IOMMUObjectState(id: arg.out_ioas_id, kind: "IOAS", mappings: mappings)
        ctx.track(state)
    }

    /// Uses IOAS `id` that already exists in `ctx` (allocated by another
    /// process sharing the iommufd, e.g. the one that passed the fd). The IOAS
    /// is checked with `IOMMU_IOAS_IOVA_RANGES` (ENOENT: no IOAS has that id in
    /// this context). It is not destroyed when this owner goes (nor by
    /// ``IOMMUFD/close()``); ``destroy()`` still destroys it on request.
    public init(existing id: UInt32, in ctx: IOMMUFD) throws(VFIOError) {
        objectID = id
        iommufd = ctx
        isOwned = false
        // An IOAS this process allocated here: share its owner's state, so a destroy through either is seen by both.
        if let known = ctx.trackedState(id), known.kind == "IOAS", let table = known.mappings {
            state = known
            mappings = table
        } else {
            mappings = MappingTable()
            state = IOMMUObjectState(id: id, kind: "IOAS", isOwned: false, mappings: mappings)
        }
        do throws(VFIOError) {
            _ = try iovaRanges()
        } catch {
            var e = error
            if e.errno == .noSuchFileOrDirectory {
                e.detail = "iommufd context \(ctx.fd.label) has no IOAS with id \(id)"
                e.remedies = [.advice("a newly opened /dev/iommu has no objects: an existing IOAS id only works with an iommufd "
                    + "shared with the process that allocated it")]
            }
            throw e
        }
    }

    /// "IOAS 3", for errors.
    public var label: String { "IOAS \(objectID)" }

    /// Whether the IOAS was destroyed (by ``destroy()`` or ``IOMMUFD/close()``).
    public var isDestroyed: Bool { state.isDestroyed }

    /// Destroys the IOAS now. Refused (by VFIOKit, before the kernel is asked)
    /// while ``DMAMapping``s of it are live: destroying would unmap their
    /// ranges under their owners. Fails with EBUSY while a device, HWPT,
    /// vIOMMU or access uses it (the IOAS then stays). Afterwards every
    /// operation throws a "destroyed" error. A second call does nothing.
    /// The corresponding ioctl is `IOMMU_DESTROY`.
    public func destroy() throws(VFIOError) {
        try state.destroy(iommufd) { () throws(VFIOError) in
            let live = mappings.liveCount
            guard live == 0 else {
                throw VFIOError.invalid(
                    .ioctl(.iommuDestroy),
                    "\(label) still has \(live) live DMAMapping\(live == 1 ? "" : "s"): destroying it would unmap them under "
                        + "their owners, who still count on them (the kernel was not asked)", object: label,
                    remedies: [.advice("unmap or drop those mappings first (DMAMapping.unmap()), or call unmapAll(), which unmaps "
                        + "everything and leaves the mappings inert")])
            }
        }
    }

    deinit { if isOwned { state.destroyQuietly(iommufd) } }

    // MARK: mapping

    @inline(__always)
    static func mapFlags(fixed: Bool, readable: Bool, writable: Bool) -> UInt32 {
        var f: UInt32 = 0
        if fixed { f |= UInt32(IOMMU_IOAS_MAP_FIXED_IOVA.rawValue) }
        if readable { f |= UInt32(IOMMU_IOAS_MAP_READABLE.rawValue) }
        if writable { f |= UInt32(IOMMU_IOAS_MAP_WRITEABLE.rawValue) }
        return f
    }

    /// Maps and records the mapping as owned by a safe mapping (VFIODMA's
    /// `DMAMapping`); returns the IOVA and its slot in ``mappings``.
    @inline(__always)
    package func mapOwned(_ address: UnsafeRawPointer, length: UInt64, at iova: IOVA?, readable: Bool, writable: Bool)
        throws(VFIOError) -> (iova: IOVA, slot: Int32)
    {
        try state.withID(.ioctl(.iommuIOASMap)) { (id) throws(VFIOError) -> (iova: IOVA, slot: Int32) in
            let mapped = try mapUser(id, UInt64(UInt(bitPattern: address)), length: length, at: iova?.rawValue,
                                     readable: readable, writable: writable)
            return (IOVA(mapped), mappings.register(iova: mapped, length: length))
        }
    }

    /// Maps `length` bytes at `address`, memory VFIOKit does not own, and
    /// returns the IOVA.
    ///
    /// Unsafe: the kernel pins the pages, but nothing keeps `address` mapped in
    /// this process. If the caller unmaps or reuses the memory while the IOVA is
    /// mapped, the device reads and writes pages the process no longer sees.
    /// Unmap with ``unmap(iova:length:)`` before releasing the memory.
    /// The corresponding ioctl is `IOMMU_IOAS_MAP`.
    public func unsafeMap(address: UnsafeRawPointer, length: Int, at iova: IOVA?,
                          readable: Bool = true, writable: Bool = true) throws(VFIOError) -> IOVA
    {
        try state.withID(.ioctl(.iommuIOASMap)) { (id) throws(VFIOError) -> IOVA in
            IOVA(try mapUser(id, UInt64(UInt(bitPattern: address)), length: UInt64(length), at: iova?.rawValue,
                             readable: readable, writable: writable))
        }
    }

    @inline(__always)
    func mapUser(_ id: UInt32, _ va: UInt64, length: UInt64, at iova: UInt64?, readable: Bool, writable: Bool)
        throws(VFIOError) -> UInt64
    {
        var arg = iommu_ioas_map.make()
        arg.flags = IOAS.mapFlags(fixed: iova != nil, readable: readable, writable: writable)
        arg.ioas_id = id
        arg.user_va = va
        arg.length = length
        arg.iova = iova ?? 0
        do throws(VFIOError) {
            try iommufd.ioctl(.iommuIOASMap, &arg, object: self.label)
        } catch {
            throw explainMapFailure(error, length: length, iova: iova)
        }
        return arg.iova
    }

    /// Maps `length` bytes of the file `file` (a memfd) from offset 0 and
    /// records the mapping as owned by a safe mapping; returns the IOVA and its
    /// slot. The file stays open (its number names it) while the kernel takes
    /// its own reference.
    package func mapFileOwned(_ file: OwnedFD, length: UInt64, at iova: IOVA?, readable: Bool, writable: Bool)
        throws(VFIOError) -> (iova: IOVA, slot: Int32)
    {
        try state.withID(.ioctl(.iommuIOASMapFile)) { (id) throws(VFIOError) -> (iova: IOVA, slot: Int32) in
            let mapped = try file.withDescriptor(.ioctl(.iommuIOASMapFile)) { (memfd) throws(VFIOError) in
                try mapFile(id, fd: memfd, offset: 0, length: length, at: iova?.rawValue, readable: readable,
                            writable: writable)
            }
            return (IOVA(mapped), mappings.register(iova: mapped, length: length))
        }
    }

    /// Maps `length` bytes of file `fd` (a memfd or a supported dma-buf) from
    /// `offset`, and returns the IOVA. The kernel holds its own reference to
    /// the file; the caller keeps track of unmapping.
    /// The corresponding ioctl is `IOMMU_IOAS_MAP_FILE`.
    public func unsafeMapFile(fd: Int32, offset: UInt64, length: UInt64, at iova: IOVA?,
                              readable: Bool = true, writable: Bool = true) throws(VFIOError) -> IOVA
    {
        try state.withID(.ioctl(.iommuIOASMapFile)) { (id) throws(VFIOError) -> IOVA in
            IOVA(try mapFile(id, fd: fd, offset: offset, length: length, at: iova?.rawValue, readable: readable,
                             writable: writable))
        }
    }

    func mapFile(_ id: UInt32, fd: Int32, offset: UInt64, length: UInt64, at iova: UInt64?,
                 readable: Bool, writable: Bool) throws(VFIOError) -> UInt64
    {
        var arg = iommu_ioas_map_file.make()
        arg.flags = IOAS.mapFlags(fixed: iova != nil, readable: readable, writable: writable)
        arg.ioas_id = id
        arg.fd = fd
        arg.start = offset
        arg.length = length
        arg.iova = iova ?? 0
        do throws(VFIOError) {
            try iommufd.ioctl(.iommuIOASMapFile, &arg, object: self.label)
        } catch {
            throw explainMapFailure(error, length: length, iova: iova)
        }
        return arg.iova
    }

    /// Adds the facts behind a failed map: the memlock limit and the size asked
    /// (ENOMEM), the alignment (EINVAL), the overlap (EEXIST).
    func explainMapFailure(_ error: VFIOError, length: UInt64, iova: UInt64?) -> VFIOError {
        var e = error
        let at = iova.map { "at IOVA 0x" + String($0, radix: 16) } ?? "at a kernel-chosen IOVA"
        switch e.errno {
        case .noMemory?:
            e = MemlockLimit.explainPinFailure(e, length: length, at: at)
        case .invalidArgument?:
            e.detail = "mapping \(length) bytes \(at): IOVA and length must be non-zero multiples of the IOAS's "
                + "IOVA alignment (see iovaRanges().alignment), inside its allowed IOVA ranges, and at least "
                + "one of readable/writable"
        case .fileExists?:
            e.detail = "\(length) bytes \(at) overlap an existing mapping"
        case .overflow?:
            e.detail = "\(length) bytes \(at) run past the end of the 64-bit IOVA space"
        case .noSpace?:
            e.detail = "no free IOVA range of \(length) bytes in the allowed ranges"
        case .badAddress?:
            e.detail = "\(length) bytes \(at): the memory is not mapped in this process, not readable/writable as "
                + "asked, or device memory (a BAR's mmap: iommufd pins ordinary pages only), so its pages cannot be pinned"
            e.remedies = [.advice("for a BAR, map a dma-buf of it instead: VFIODevice.exportDMABuf(bar:offset:length:), "
                + "then IOAS.map(_:at:) with it (IOMMU_IOAS_MAP_FILE)")]
        default: break
        }
        return e
    }

    // MARK: unmapping

    /// Unmaps exactly `[iova, iova + length)` and returns the bytes unmapped.
    /// The range must cover whole mappings: one that splits a mapping fails
    /// with ENOENT, as does a range with nothing mapped. A range that covers
    /// holes unmaps what is there and then throws (a short unmap is an error:
    /// the caller's view of the IOAS was wrong); the error's detail says how
    /// much was unmapped. A range that holds a mapping a ``DMAMapping`` owns is
    /// refused before the kernel is asked: unmap that through the mapping.
    /// The corresponding ioctl is `IOMMU_IOAS_UNMAP`.
    public func unmap(iova at: IOVA, length: UInt64) throws(VFIOError) -> UInt64 {
        let iova = at.rawValue
        let done = try state.withID(.ioctl(.iommuIOASUnmap)) { (id) throws(VFIOError) -> UInt64 in
            try mappings.refuseRawUnmapOfOwned(iova: iova, length: length, .ioctl(.iommuIOASUnmap), object: label)
            return try unmapRange(id, iova: iova, length: length)
        }
        if done != length {
            throw MappingTable.shortUnmap(.ioctl(.iommuIOASUnmap), label, iova: iova, length: length, done: done,
                                          meaning: "the range holds holes; what was mapped in it is now unmapped",
                                          fix: "unmap exactly the ranges that were mapped")
        }
        return done
    }

    /// Unmaps everything; returns the bytes unmapped (0 for an empty IOAS).
    /// Every live ``DMAMapping`` of the IOAS becomes inert: its `unmap()` and
    /// deinit do nothing, so it can never unmap a newer mapping at its IOVA.
    /// Waits for maps and unmaps in flight on other threads.
    ///
    /// When the kernel stops part way (EBUSY: a range pinned by an access or a
    /// HW queue) it does not say how far it got; VFIOKit then unmaps the live
    /// `DMAMapping` ranges one by one, and the error says how many are gone
    /// (those are inert) and how many are still mapped (those stay with their
    /// mapping, to unmap once the pin is gone).
    /// The corresponding ioctl is `IOMMU_IOAS_UNMAP` (iova 0, length UINT64_MAX).
    @discardableResult
    public func unmapAll() throws(VFIOError) -> UInt64 {
        guard state.gate.enterExclusive() else { throw state.destroyedError(.ioctl(.iommuIOASUnmap)) }
        defer { state.gate.leaveExclusive(dead: false) }
        let id = state.id
        do throws(VFIOError) {
            let n = try unmapRange(id, iova: 0, length: UInt64.max)
            mappings.invalidateAll()
            return n
        } catch {
            throw mappings.resolveFailedUnmapAll(error) { (iova, length) throws(VFIOError) -> UInt64 in
                try unmapRange(id, iova: iova, length: length)
            }
        }
    }

    /// The unmap of a safe mapping (slot `slot`): nothing when unmap-all or
    /// the IOAS's destruction already unmapped it; otherwise exactly its range.
    /// Returns false when the mapping's memory must be kept for good (the IOAS
    /// went while the mapping was being unmapped: whether the pages are still
    /// mapped is not known). Throws when the kernel refused the unmap or
    /// unmapped less (a short unmap): the range may still be mapped, and the
    /// caller keeps the memory alive for good.
    @inline(__always)
    package func unmapOwned(iova: UInt64, length: UInt64, slot: Int32) throws(VFIOError) -> Bool {
        let unmapped = try state.ifLive { (id) throws(VFIOError) -> Bool in
            _ = try mappings.unmapOnce(slot, iova: iova, length: length, .ioctl(.iommuIOASUnmap), object: label) {
                () throws(VFIOError) in
                do throws(VFIOError) {
                    return try unmapRange(id, iova: iova, length: length)
                } catch where error.errno == .noSuchFileOrDirectory {
                    // This live mapping's exact range: the kernel's only other
                    // ENOENT is its IOAS lookup failing before anything was
                    // unmapped (iommufd_get_object; iommufd's own fault injection,
                    // CONFIG_IOMMUFD_TEST, fails it on purpose), since a raw unmap
                    // of an owned range is refused and unmap-all or the IOAS's
                    // destruction make the mapping inert first. Asked once more; a
                    // second ENOENT stands (then the buffer is kept, as for any
                    // failed unmap).
                    return try unmapRange(id, iova: iova, length: length)
                } catch {
                    throw error
                }
            }
            return true
        }
        // nil: destroyed (IOMMUFD.close()): the kernel unmapped everything with the IOAS.
        return unmapped ?? mappings.release(slot)
    }

    @inline(__always)
    func unmapRange(_ id: UInt32, iova: UInt64, length: UInt64) throws(VFIOError) -> UInt64 {
        var arg = iommu_ioas_unmap.make()
        arg.ioas_id = id
        arg.iova = iova
        arg.length = length
        do throws(VFIOError) {
            try iommufd.ioctl(.iommuIOASUnmap, &arg, object: self.label)
        } catch {
            var e = error
            if e.errno == .noSuchFileOrDirectory {
                e.detail = "nothing is mapped at IOVA 0x\(String(iova, radix: 16)) length \(length), or the range "
                    + "splits a mapping (only whole mappings can be unmapped)"
            } else if e.errno == .resourceBusy {
                e.detail = "the range is pinned by an access or a HW queue (e.g. a vIOMMU command queue)"
            } else if e.errno == .overflow {
                e.detail = "IOVA 0x\(String(iova, radix: 16)) length \(length) runs past the end of the 64-bit IOVA space"
            } else if e.errno == .invalidArgument {
                e.detail = "IOVA 0x\(String(iova, radix: 16)) length \(length): an unmap needs a non-zero length"
            }
            throw e
        }
        return arg.length
    }

    // MARK: copy

    /// Maps the pages that `source` maps at `[sourceIOVA, sourceIOVA + length)`
    /// into this IOAS at `iova` (or where the kernel chooses), without pinning
    /// them again. Returns the IOVA in this IOAS.
    /// The corresponding ioctl is `IOMMU_IOAS_COPY`.
    public func copy(from source: IOAS, sourceIOVA: IOVA, length: UInt64, to iova: IOVA?,
                     readable: Bool = true, writable: Bool = true) throws(VFIOError) -> IOVA
    {
        try IOAS.withIDs(self, source, .ioctl(.iommuIOASCopy)) { (dst, src) throws(VFIOError) -> IOVA in
            IOVA(try copyRange(dst, src, source: source, sourceIOVA: sourceIOVA.rawValue, length: length,
                               to: iova?.rawValue, readable: readable, writable: writable))
        }
    }

    func copyRange(_ dst: UInt32, _ src: UInt32, source: IOAS, sourceIOVA: UInt64, length: UInt64, to iova: UInt64?,
                   readable: Bool, writable: Bool) throws(VFIOError) -> UInt64
    {
        var arg = iommu_ioas_copy.make()
        arg.flags = IOAS.mapFlags(fixed: iova != nil, readable: readable, writable: writable)
        arg.dst_ioas_id = dst
        arg.src_ioas_id = src
        arg.length = length
        arg.dst_iova = iova ?? 0
        arg.src_iova = sourceIOVA
        do throws(VFIOError) {
            try iommufd.ioctl(.iommuIOASCopy, &arg, object: "\(source.label) → \(self.label)")
        } catch {
            var e = explainMapFailure(error, length: length, iova: iova)
            if e.errno == .noSuchFileOrDirectory {
                e.detail = "the source range \(length) bytes at IOVA 0x\(String(sourceIOVA, radix: 16)) of "
                    + "\(source.label) is not exactly covered by mappings"
            }
            throw e
        }
        return arg.dst_iova
    }

    /// Runs `body` with the live ids of two IOASes (the same one twice is
    /// entered once), entered in a fixed order so that two copies in opposite
    /// directions cannot wait on each other behind a destroy.
    static func withIDs<R>(_ a: IOAS, _ b: IOAS, _ operation: VFIOError.Operation,
                           _ body: (UInt32, UInt32) throws(VFIOError) -> R) throws(VFIOError) -> R
    {
        if a === b { return try a.state.withID(operation) { (id) throws(VFIOError) -> R in try body(id, id) } }
        let aFirst = ObjectIdentifier(a) < ObjectIdentifier(b)
        let (first, second) = aFirst ? (a, b) : (b, a)
        return try first.state.withID(operation) { (x) throws(VFIOError) -> R in
            try second.state.withID(operation) { (y) throws(VFIOError) -> R in
                try aFirst ? body(x, y) : body(y, x)
            }
        }
    }

    /// Copies the safe mapping `[sourceIOVA, +length)` of `source` into this
    /// IOAS at `iova` (or where the kernel chooses) and records it as owned by
    /// a safe mapping; returns the IOVA and its slot.
    package func copyOwned(from source: IOAS, sourceIOVA: IOVA, length: UInt64, to iova: IOVA?,
                           readable: Bool, writable: Bool) throws(VFIOError) -> (iova: IOVA, slot: Int32)
    {
        try IOAS.withIDs(self, source, .ioctl(.iommuIOASCopy)) { (d, s) throws(VFIOError) -> (iova: IOVA, slot: Int32) in
            let dst = try copyRange(d, s, source: source, sourceIOVA: sourceIOVA.rawValue, length: length,
                                    to: iova?.rawValue, readable: readable, writable: writable)
            return (IOVA(dst), mappings.register(iova: dst, length: length))
        }
    }

    // MARK: IOVA ranges

    /// The IOVA ranges a mapping may use and the alignment IOVAs and lengths need.
    public struct IOVARanges: Sendable, Equatable {
        /// Inclusive ranges (`last` is the last usable byte).
        public var ranges: [ClosedRange<IOVA>]
        /// IOVAs and lengths must be multiples of this.
        public var alignment: UInt64

        /// Ranges and alignment as given (for callers that have them from elsewhere).
        public init(ranges: [ClosedRange<IOVA>], alignment: UInt64) {
            self.ranges = ranges
            self.alignment = alignment
        }

        /// Whether `[iova, iova + length)` lies in one allowed range.
        public func contains(iova: IOVA, length: UInt64) -> Bool {
            guard length > 0, let last = iova.adding(length - 1) else { return false }
            return ranges.contains { $0.contains(iova) && $0.contains(last) }
        }
    }

    /// The usable IOVA ranges: the allowed ranges minus what the attached
    /// domains and devices reserve (MSI windows, apertures).
    /// The corresponding ioctl is `IOMMU_IOAS_IOVA_RANGES` (retried while the
    /// kernel answers EMSGSIZE with a larger count).
    public func iovaRanges() throws(VFIOError) -> IOVARanges {
        var capacity: UInt32 = 4
        while true {
            var buffer = [iommu_iova_range](repeating: iommu_iova_range(), count: Int(capacity))
            var arg = iommu_ioas_iova_ranges.make()
            arg.num_iovas = capacity
            let result: Result<Void, VFIOError> = buffer.withUnsafeMutableBufferPointer { p in
                arg.allowed_iovas = UInt64(UInt(bitPattern: p.baseAddress))
                do throws(VFIOError) {
                    try state.withID(.ioctl(.iommuIOASIOVARanges)) { (id) throws(VFIOError) in
                        arg.ioas_id = id
                        try iommufd.ioctl(.iommuIOASIOVARanges, &arg, object: self.label)
                    }
                    return .success(())
                } catch {
                    return .failure(error)
                }
            }
            if case .failure(let e) = result {
                if e.errno == .messageTooLong && arg.num_iovas > capacity {
                    capacity = arg.num_iovas
                    continue
                }
                throw e
            }
            let n = Int(min(arg.num_iovas, capacity))
            return IOVARanges(ranges: buffer[..<n].map { IOVA($0.start)...IOVA($0.last) }, alignment: arg.out_iova_alignment)
        }
    }

    /// Guarantees that `ranges` (inclusive) stay usable: kernel-chosen IOVAs
    /// are allocated only inside them, and attaching a device whose IOMMU
    /// cannot translate them fails instead of narrowing the IOAS. An empty list
    /// removes the guarantee. Ranges must not overlap, and must lie within
    /// what ``iovaRanges()`` reports now.
    /// The corresponding ioctl is `IOMMU_IOAS_ALLOW_IOVAS`.
    public func allowIOVAs(_ ranges: [ClosedRange<IOVA>]) throws(VFIOError) {
        var raw = ranges.map { iommu_iova_range(start: $0.lowerBound.rawValue, last: $0.upperBound.rawValue) }
        var arg = iommu_ioas_allow_iovas.make()
        arg.num_iovas = UInt32(raw.count)
        let r: Result<Void, VFIOError> = raw.withUnsafeMutableBufferPointer { p in
            arg.allowed_iovas = UInt64(UInt(bitPattern: p.baseAddress))
            do throws(VFIOError) {
                try state.withID(.ioctl(.iommuIOASAllowIOVAs)) { (id) throws(VFIOError) in
                    arg.ioas_id = id
                    try iommufd.ioctl(.iommuIOASAllowIOVAs, &arg, object: self.label)
                }
                return .success(())
            } catch { return .failure(error) }
        }
        if case .failure(let e) = r {
            throw e.explained {
                $0.errno != .invalidArgument ? nil : "each range needs start < last, no two may overlap, and none may exclude an IOVA "
                    + "that is already mapped or reserved"
            }
        }
    }

    // MARK: options

    /// Whether the IOAS may use huge IOMMU pages (on by default).
    /// The corresponding ioctl is `IOMMU_OPTION` (`IOMMU_OPTION_HUGE_PAGES`).
    public func hugePages() throws(VFIOError) -> Bool {
        try state.withID(.ioctl(.iommuOption)) { (id) throws(VFIOError) -> Bool in
            try iommufd.option(UInt32(IOMMU_OPTION_HUGE_PAGES.rawValue), object: id,
                               op: UInt16(IOMMU_OPTION_OP_GET.rawValue), value: 0) != 0
        }
    }

    /// Allows or forbids huge IOMMU pages. Forbidding is only possible while
    /// nothing is mapped and no domain is attached (EBUSY / EINVAL otherwise).
    /// The corresponding ioctl is `IOMMU_OPTION` (`IOMMU_OPTION_HUGE_PAGES`).
    public func setHugePages(_ enabled: Bool) throws(VFIOError) {
        try state.withID(.ioctl(.iommuOption)) { (id) throws(VFIOError) in
            _ = try iommufd.option(UInt32(IOMMU_OPTION_HUGE_PAGES.rawValue), object: id,
                                   op: UInt16(IOMMU_OPTION_OP_SET.rawValue), value: enabled ? 1 : 0)
        }
    }
}
