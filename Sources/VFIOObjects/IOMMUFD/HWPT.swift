import CVFIO
import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Driver data for `IOMMU_HWPT_ALLOC`: what a nested (stage-1) domain is made
/// of, in the format of one IOMMU driver.
public enum HWPTData: Sendable, Equatable {
    /// No data: a paging domain the kernel builds itself.
    case none
    /// Intel VT-d stage-1 page table (`IOMMU_HWPT_DATA_VTD_S1`).
    case intelVTdStage1(IntelVTdStage1)
    /// ARM SMMUv3 stream table entry words 0 and 1 (`IOMMU_HWPT_DATA_ARM_SMMUV3`).
    case armSMMUv3(steWord0: UInt64, steWord1: UInt64)
    /// AMD guest device table entry (`IOMMU_HWPT_DATA_AMD_GUEST`).
    case amdGuest(dte: [UInt64])
    /// Another type (the selftest's `IOMMU_HWPT_DATA_SELFTEST`, newer drivers): the bytes as given.
    case raw(type: UInt32, bytes: [UInt8])

    /// A VT-d stage-1 page table (`struct iommu_hwpt_vtd_s1`, `IOMMU_HWPT_DATA_VTD_S1`).
    public struct IntelVTdStage1: Sendable, Equatable {
        /// The `IOMMU_VTD_S1_*` flags.
        public struct Flags: OptionSet, Sendable, Hashable {
            /// The `IOMMU_VTD_S1_*` bits.
            public let rawValue: UInt64
            /// Flags from their `IOMMU_VTD_S1_*` bits.
            public init(rawValue: UInt64) { self.rawValue = rawValue }
            /// Supervisor requests (SRE).
            public static let supervisorRequests = Flags(rawValue: UInt64(IOMMU_VTD_S1_SRE.rawValue))
            /// Extended access flag (EAFE).
            public static let extendedAccessFlag = Flags(rawValue: UInt64(IOMMU_VTD_S1_EAFE.rawValue))
            /// Write protect (WPE).
            public static let writeProtect = Flags(rawValue: UInt64(IOMMU_VTD_S1_WPE.rawValue))
        }
        /// The stage-1 table's flags.
        public var flags: Flags
        /// Guest physical address of the stage-1 page table root.
        public var pageTableAddress: UInt64
        /// Address width of the stage-1 table (48 or 57).
        public var addressWidth: UInt32
        /// A stage-1 table rooted at `pageTableAddress` (a guest physical address).
        public init(flags: Flags = [], pageTableAddress: UInt64, addressWidth: UInt32) {
            self.flags = flags
            self.pageTableAddress = pageTableAddress
            self.addressWidth = addressWidth
        }
    }

    /// The kernel's `data_type` and the bytes to pass.
    var encoded: (type: UInt32, bytes: [UInt8]) {
        switch self {
        case .none:
            return (UInt32(IOMMU_HWPT_DATA_NONE.rawValue), [])
        case .intelVTdStage1(let s):
            var d = iommu_hwpt_vtd_s1()
            d.flags = s.flags.rawValue
            d.pgtbl_addr = s.pageTableAddress
            d.addr_width = s.addressWidth
            return (UInt32(IOMMU_HWPT_DATA_VTD_S1.rawValue), withUnsafeBytes(of: d) { Array($0) })
        case .armSMMUv3(let w0, let w1):
            let words = [w0.littleEndian, w1.littleEndian]
            return (UInt32(IOMMU_HWPT_DATA_ARM_SMMUV3.rawValue), words.withUnsafeBytes { Array($0) })
        case .amdGuest(let dte):
            var words = [UInt64](repeating: 0, count: 4)
            for (i, w) in dte.prefix(4).enumerated() { words[i] = w }
            return (UInt32(IOMMU_HWPT_DATA_AMD_GUEST.rawValue), words.withUnsafeBytes { Array($0) })
        case .raw(let type, let bytes):
            return (type, bytes)
        }
    }
}

/// A hardware page table: an IOMMU domain the process allocated itself.
///
/// A *paging* HWPT is built on an ``IOAS`` (its mappings are the IOAS's); a
/// *nested* HWPT is a stage-1 table (in the guest's format, ``HWPTData``) on
/// top of a nesting-parent paging HWPT or a ``VIOMMU``. Devices attach to a
/// HWPT like to an IOAS. The HWPT keeps its parent and its fault queue alive.
public final class HWPT: IOMMUAttachTarget, IOMMUObjectOwner {
    /// The kernel's id of this HWPT (`out_hwpt_id` of `IOMMU_HWPT_ALLOC`; never 0).
    /// After ``destroy()`` the number may name another object: the owner no longer uses it.
    public let objectID: UInt32
    /// The context it lives in.
    public let iommufd: IOMMUFD
    /// What it is built on: an ``IOAS``, a nesting-parent ``HWPT`` or a ``VIOMMU``.
    public let parent: any HWPTParent
    /// The fault queue its I/O page faults go to, if any.
    public let faultQueue: FaultQueue?
    /// The flags it was allocated with.
    public let flags: Flags
    let state: IOMMUObjectState

    /// Allocation flags (`enum iommufd_hwpt_alloc_flags`).
    public struct Flags: OptionSet, Sendable, Hashable {
        /// The `IOMMU_HWPT_ALLOC_*` bits.
        public let rawValue: UInt32
        /// Flags from their `IOMMU_HWPT_ALLOC_*` bits.
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// May be the parent (stage 2) of nested HWPTs and vIOMMUs.
        public static let nestParent = Flags(rawValue: UInt32(IOMMU_HWPT_ALLOC_NEST_PARENT.rawValue))
        /// Tracks dirty pages (needs ``IOMMUHardwareInfo/Capabilities/dirtyTracking``).
        public static let dirtyTracking = Flags(rawValue: UInt32(IOMMU_HWPT_ALLOC_DIRTY_TRACKING.rawValue))
        /// May be attached to PASIDs as well as to the whole device.
        public static let pasid = Flags(rawValue: UInt32(IOMMU_HWPT_ALLOC_PASID.rawValue))
        /// Every flag VFIOKit knows.
        static let known: Flags = [.nestParent, .dirtyTracking, .pasid]
    }

    /// Allocates a paging HWPT on `ioas` for device `deviceID` (a bound device
    /// id, or a mock device's id).
    /// The corresponding ioctl is `IOMMU_HWPT_ALLOC`.
    public convenience init(ioas: IOAS, device deviceID: UInt32, flags: Flags = [], data: HWPTData = .none,
                            faultQueue: FaultQueue? = nil) throws(VFIOError)
    {
        try self.init(ctx: ioas.iommufd, parent: ioas, device: deviceID, flags: flags, data: data,
                      faultQueue: faultQueue)
    }

    /// Allocates a nested (stage-1) HWPT on a nesting-parent HWPT.
    /// The corresponding ioctl is `IOMMU_HWPT_ALLOC`.
    public convenience init(nestedOn parent: HWPT, device deviceID: UInt32, data: HWPTData, flags: Flags = [],
                            faultQueue: FaultQueue? = nil) throws(VFIOError)
    {
        try self.init(ctx: parent.iommufd, parent: parent, device: deviceID, flags: flags, data: data,
                      faultQueue: faultQueue)
    }

    /// Allocates a nested (stage-1) HWPT on a vIOMMU.
    /// The corresponding ioctl is `IOMMU_HWPT_ALLOC`.
    public convenience init(nestedOn viommu: VIOMMU, device deviceID: UInt32, data: HWPTData, flags: Flags = [],
                            faultQueue: FaultQueue? = nil) throws(VFIOError)
    {
        try self.init(ctx: viommu.iommufd, parent: viommu, device: deviceID, flags: flags, data: data,
                      faultQueue: faultQueue)
    }

    init(ctx: IOMMUFD, parent: any HWPTParent, device: UInt32, flags: Flags, data: HWPTData,
         faultQueue: FaultQueue?) throws(VFIOError)
    {
        var (type, bytes) = data.encoded
        var arg = iommu_hwpt_alloc.make()
        arg.flags = flags.rawValue
        arg.dev_id = device
        arg.data_type = type
        let parentID = parent.objectID
        if faultQueue != nil { arg.flags |= UInt32(IOMMU_HWPT_FAULT_ID_VALID.rawValue) }
        func allocate() throws(VFIOError) {
            let r: Result<Void, VFIOError> = bytes.withUnsafeMutableBytes { raw in
                arg.data_len = UInt32(raw.count)
                arg.data_uptr = raw.count == 0 ? 0 : UInt64(UInt(bitPattern: raw.baseAddress))
                do throws(VFIOError) {
                    try ctx.ioctl(.iommuHWPTAlloc, &arg, object: "object \(parentID) for device \(device)")
                    return .success(())
                } catch { return .failure(error) }
            }
            try r.get()
        }
        let r: Result<Void, VFIOError> = Result { () throws(VFIOError) in
            // The parent and the fault queue stay alive (not destroyed) for the whole request.
            try IOMMUObjects.withID(of: parent, fallback: parentID, .ioctl(.iommuHWPTAlloc)) { (pt) throws(VFIOError) in
                arg.pt_id = pt
                if let faultQueue {
                    try faultQueue.state.withID(.ioctl(.iommuHWPTAlloc)) { (fault) throws(VFIOError) in
                        arg.fault_id = fault
                        try allocate()
                    }
                } else {
                    try allocate()
                }
            }
        }
        if case .failure(var e) = r {
            switch e.errno {
            case .notSupported?:
                e.detail = "the IOMMU driver (or this kernel) does not support flags 0x\(String(arg.flags, radix: 16)) "
                    + "or data type \(type) for device \(device)"
                let unknown = flags.rawValue & ~Flags.known.rawValue
                if unknown != 0 {
                    e.detail! += "; bits unknown to VFIOKit: 0x\(String(unknown, radix: 16)) (no IOMMU_HWPT_ALLOC_* flag "
                        + "of the kernel headers it was built with; hw_pagetable.c refuses flags it does not know)"
                }
                e.remedies = [.advice("IOMMUFD.supportedHWPTFlags(device:) and hardwareInfo(device:).capabilities say what this "
                    + "device's IOMMU supports (dirty tracking needs the dirtyTracking capability)")]
            case .noSuchFileOrDirectory?:
                e.detail = "device \(device), parent object \(parentID) or the fault queue does not exist"
            case .invalidArgument?:
                e.detail = "object \(parentID) cannot be a parent here (nested HWPTs need a NEST_PARENT HWPT or a "
                    + "vIOMMU; paging HWPTs need an IOAS), or the data is malformed"
            default: break
            }
            throw e
        }
        objectID = arg.out_hwpt_id
        iommufd = ctx
        self.parent = parent
        self.faultQueue = faultQueue
        self.flags = flags
        let uses = [(parent as? any IOMMUObjectOwner)?.state, faultQueue?.state].compactMap { $0 }
        state = IOMMUObjectState(id: arg.out_hwpt_id, kind: "HWPT", uses: uses)
        ctx.track(state)
    }

    /// "HWPT 3", for errors.
    public var label: String { "HWPT \(objectID)" }

    /// Whether the HWPT was destroyed (by ``destroy()`` or ``IOMMUFD/close()``).
    public var isDestroyed: Bool { state.isDestroyed }

    /// Destroys the HWPT; EBUSY while a device is attached or a nested HWPT
    /// or vIOMMU is built on it. Afterwards every operation throws a
    /// "destroyed" error. A second call does nothing.
    /// The corresponding ioctl is `IOMMU_DESTROY`.
    public func destroy() throws(VFIOError) { try state.destroy(iommufd) }

    deinit { state.destroyQuietly(iommufd) }

    // MARK: dirty tracking

    /// Starts or stops dirty tracking (the HWPT must be allocated with ``Flags/dirtyTracking``).
    /// The corresponding ioctl is `IOMMU_HWPT_SET_DIRTY_TRACKING`.
    public func setDirtyTracking(_ enabled: Bool) throws(VFIOError) {
        var arg = iommu_hwpt_set_dirty_tracking.make()
        arg.flags = enabled ? UInt32(IOMMU_HWPT_DIRTY_TRACKING_ENABLE.rawValue) : 0
        try state.ioctl(.iommuHWPTSetDirtyTracking, on: iommufd, &arg, id: \.hwpt_id, object: self.label)
    }

    /// Reads which pages of `bitmap`'s range were written by devices, into
    /// `bitmap` (cleared first; no allocation). With `clear` the IOMMU's dirty
    /// bits are reset as they are read (`IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR` when false).
    /// The corresponding ioctl is `IOMMU_HWPT_GET_DIRTY_BITMAP`.
    public func readDirty(into bitmap: inout DirtyBitmap, clear: Bool = true) throws(VFIOError) {
        var arg = iommu_hwpt_get_dirty_bitmap.make()
        arg.flags = clear ? 0 : UInt32(IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR.rawValue)
        arg.iova = bitmap.iova.rawValue
        arg.length = bitmap.length
        arg.page_size = bitmap.pageSize
        let label = self.label
        let ctx = iommufd
        let state = self.state
        let r: Result<Void, VFIOError> = bitmap.words.withUnsafeMutableBufferPointer { words in
            for i in words.indices { words[i] = 0 }
            arg.data = UInt64(UInt(bitPattern: words.baseAddress))
            do throws(VFIOError) {
                try state.withID(.ioctl(.iommuHWPTGetDirtyBitmap)) { (id) throws(VFIOError) in
                    arg.hwpt_id = id
                    try ctx.ioctl(.iommuHWPTGetDirtyBitmap, &arg, object: label)
                }
                return .success(())
            } catch { return .failure(error) }
        }
        if case .failure(let e) = r {
            throw e.explained {
                $0.errno != .invalidArgument ? nil : "IOVA \(bitmap.iova) and length \(bitmap.length) must be multiples "
                    + "of the page size \(bitmap.pageSize) (a power of two), and dirty tracking must be enabled"
            }
        }
    }

    /// The dirty pages of `[iova, iova + length)` at `pageSize` granularity.
    /// The corresponding ioctl is `IOMMU_HWPT_GET_DIRTY_BITMAP`.
    public func dirtyBitmap(iova: IOVA, length: UInt64, pageSize: UInt64 = 4096, clear: Bool = true)
        throws(VFIOError) -> DirtyBitmap
    {
        var b = try DirtyBitmap(iova: iova, length: length, pageSize: pageSize)
        try readDirty(into: &b, clear: clear)
        return b
    }

    // MARK: invalidation

    /// Invalidates stage-1 caches of a nested HWPT after the guest changed its
    /// table. `entries` are `count` requests of `entryLength` bytes of type
    /// `dataType`. Returns how many the kernel handled; on failure the error's
    /// detail says how many were handled before it (the kernel stops at the
    /// first failing entry).
    /// The corresponding ioctl is `IOMMU_HWPT_INVALIDATE`.
    public func invalidate(dataType: UInt32, entryLength: Int, count: Int, entries: UnsafeRawBufferPointer)
        throws(VFIOError) -> Int
    {
        try state.withID(.ioctl(.iommuHWPTInvalidate)) { (id) throws(VFIOError) -> Int in
            try iommufd.invalidate(id: id, label: label, dataType: dataType, entryLength: entryLength,
                                   count: count, entries: entries)
        }
    }

    /// Invalidates VT-d stage-1 IOTLB ranges. Returns the number handled.
    /// The corresponding ioctl is `IOMMU_HWPT_INVALIDATE` (`IOMMU_HWPT_INVALIDATE_DATA_VTD_S1`).
    public func invalidate(_ requests: [IntelVTdInvalidation]) throws(VFIOError) -> Int {
        let raw = requests.map { r -> iommu_hwpt_vtd_s1_invalidate in
            var x = iommu_hwpt_vtd_s1_invalidate()
            x.addr = r.address
            x.npages = r.pageCount
            x.flags = r.leafOnly ? UInt32(IOMMU_VTD_INV_FLAGS_LEAF.rawValue) : 0
            return x
        }
        let n = raw.count
        let r: Result<Int, VFIOError> = raw.withUnsafeBytes { b in
            do throws(VFIOError) {
                return .success(try invalidate(dataType: UInt32(IOMMU_HWPT_INVALIDATE_DATA_VTD_S1.rawValue),
                                               entryLength: MemoryLayout<iommu_hwpt_vtd_s1_invalidate>.stride,
                                               count: n, entries: b))
            } catch { return .failure(error) }
        }
        return try r.get()
    }
}

/// One VT-d stage-1 invalidation request (`struct iommu_hwpt_vtd_s1_invalidate`).
public struct IntelVTdInvalidation: Sendable, Equatable {
    /// Start address (4 KiB aligned).
    public var address: UInt64
    /// Pages to invalidate; `UInt64.max` with address 0 means everything.
    public var pageCount: UInt64
    /// Only leaf entries changed (`IOMMU_VTD_INV_FLAGS_LEAF`).
    public var leafOnly: Bool
    /// An invalidation of `pageCount` pages from `address`.
    public init(address: UInt64, pageCount: UInt64, leafOnly: Bool = false) {
        self.address = address
        self.pageCount = pageCount
        self.leafOnly = leafOnly
    }
    /// Invalidate the whole stage-1 IOTLB.
    public static let all = IntelVTdInvalidation(address: 0, pageCount: .max)
}

/// What a HWPT can be built on: an ``IOAS`` (paging), a nesting-parent ``HWPT`` or a ``VIOMMU`` (nested).
public protocol HWPTParent: AnyObject, Sendable {
    var objectID: UInt32 { get }
}
extension IOAS: HWPTParent {}
extension HWPT: HWPTParent {}

extension IOMMUFD {
    func invalidate(id: UInt32, label: String, dataType: UInt32, entryLength: Int, count: Int,
                    entries: UnsafeRawBufferPointer) throws(VFIOError) -> Int
    {
        let (bytes, overflow) = entryLength.multipliedReportingOverflow(by: count)
        guard entryLength >= 0, count >= 0, entryLength <= Int(UInt32.max), count <= Int(UInt32.max), !overflow,
              entries.count >= bytes
        else {
            throw VFIOError.invalid(.ioctl(.iommuHWPTInvalidate), "\(count) entries of \(entryLength) bytes do not fit the "
                                        + "\(entries.count) bytes given (or the kernel's 32-bit fields)", object: label)
        }
        var arg = iommu_hwpt_invalidate.make()
        arg.hwpt_id = id
        arg.data_uptr = UInt64(UInt(bitPattern: entries.baseAddress))
        arg.data_type = dataType
        arg.entry_len = UInt32(entryLength)
        arg.entry_num = UInt32(count)
        do throws(VFIOError) {
            try ioctl(.iommuHWPTInvalidate, &arg, object: label)
        } catch {
            var e = error
            let done = Int(arg.entry_num)
            e.detail = "the kernel handled \(done) of \(count) entries; entry \(done) failed"
                + (e.errno == .notSupported ? " (data type 0x\(String(dataType, radix: 16)) not supported)" : "")
            throw e
        }
        return Int(arg.entry_num)
    }
}

/// Which pages of an IOVA range devices wrote, one bit per page
/// (the buffer `IOMMU_HWPT_GET_DIRTY_BITMAP` fills).
public struct DirtyBitmap: Sendable, Equatable {
    /// First IOVA covered.
    public let iova: IOVA
    /// Bytes covered.
    public let length: UInt64
    /// Bytes per bit (a power of two).
    public let pageSize: UInt64
    /// The bits, little-endian within each word: bit `i % 64` of word `i / 64` is page `i`.
    public internal(set) var words: [UInt64]

    /// An empty bitmap for `[iova, iova + length)`.
    public init(iova: IOVA, length: UInt64, pageSize: UInt64) throws(VFIOError) {
        guard pageSize > 0, pageSize & (pageSize - 1) == 0, iova.isAligned(to: pageSize), length % pageSize == 0,
              length > 0
        else {
            throw VFIOError.invalid(.ioctl(.iommuHWPTGetDirtyBitmap),
                                    "page size \(pageSize) must be a power of two dividing IOVA \(iova) "
                                        + "and length \(length) > 0")
        }
        self.iova = iova
        self.length = length
        self.pageSize = pageSize
        let pages = length / pageSize
        words = [UInt64](repeating: 0, count: Int((pages + 63) / 64))
    }

    /// Number of pages covered.
    public var pageCount: Int { Int(length / pageSize) }

    /// Whether page `index` (counting from ``iova``) is dirty.
    public func isDirty(page index: Int) -> Bool {
        precondition(index >= 0 && index < pageCount)
        return words[index / 64] >> UInt64(index % 64) & 1 != 0
    }

    /// Whether the page containing `address` is dirty; false outside the range.
    public func isDirty(iova address: IOVA) -> Bool {
        guard address >= iova, address - iova < length else { return false }
        return isDirty(page: Int((address - iova) / pageSize))
    }

    /// Number of dirty pages.
    public var dirtyCount: Int { words.reduce(0) { $0 + $1.nonzeroBitCount } }

    /// The IOVAs of the dirty pages, in order.
    public var dirtyIOVAs: [IOVA] {
        var out: [IOVA] = []
        for (w, word) in words.enumerated() where word != 0 {
            var bits = word
            while bits != 0 {
                let b = bits.trailingZeroBitCount
                let page = w * 64 + b
                if page < pageCount { out.append(iova + UInt64(page) * pageSize) }
                bits &= bits - 1
            }
        }
        return out
    }
}
