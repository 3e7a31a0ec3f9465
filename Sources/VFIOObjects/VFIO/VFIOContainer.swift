import CVFIO
import Synchronization
import VFIOSystem

/// A legacy VFIO container: groups join it and share one IOMMU context, set
/// with ``setIOMMU(_:)`` and mapped with `mapDMA(_:at:readable:writable:)`
/// (VFIODMA) or ``unsafeMapDMA(address:length:at:readable:writable:)``.
///
/// Opened on `/dev/vfio/vfio` (the type1 driver) or on `/dev/iommu` (iommufd's
/// compatibility layer, which implements the same ioctls). Groups keep their
/// container alive; the container outlives every group and device in it.
public final class VFIOContainer: Sendable {
    /// Which node backs the container.
    public enum Backend: String, Sendable, Equatable {
        /// `/dev/vfio/vfio`: the vfio_iommu_type1 driver.
        case legacy = "/dev/vfio/vfio"
        /// `/dev/iommu`: iommufd's VFIO compatibility (one IOAS behind the fd).
        case iommufdCompat = "/dev/iommu"
    }

    /// The IOMMU models a container can be set to.
    public enum IOMMUType: UInt, Sendable, Equatable, CustomStringConvertible {
        /// `VFIO_TYPE1_IOMMU`: the first type1 model (unmaps may split mappings).
        case type1 = 1  // VFIO_TYPE1_IOMMU
        /// `VFIO_TYPE1v2_IOMMU`: unmaps cover whole mappings; dirty tracking.
        case type1v2 = 3  // VFIO_TYPE1v2_IOMMU
        /// `VFIO_NOIOMMU_IOMMU`: no IOMMU at all (unsafe; needs `CAP_SYS_RAWIO` and the no-IOMMU mode).
        case noIOMMU = 8  // VFIO_NOIOMMU_IOMMU
        public var description: String {
            switch self {
            case .type1: "VFIO_TYPE1_IOMMU"
            case .type1v2: "VFIO_TYPE1v2_IOMMU"
            case .noIOMMU: "VFIO_NOIOMMU_IOMMU"
            }
        }
    }

    /// The container's descriptor (`/dev/vfio/vfio`, or `/dev/iommu` for iommufd's compatibility container).
    public let fd: OwnedFD
    /// Which node the container was opened on.
    public let backend: Backend
    private let iommuType = Mutex<IOMMUType?>(nil)
    /// Safe mappings (``DMAMapping``) made through this container, and the
    /// gate that keeps their map + record atomic with respect to unmap-all.
    let mappings = MappingTable()
    let gate = ObjectGate()

    /// Opens a container and checks the API version (`VFIO_GET_API_VERSION`).
    public init(backend: Backend = .legacy) throws(VFIOError) {
        fd = try OwnedFD.open(backend.rawValue)
        self.backend = backend
        let version = try fd.ioctl(.vfioGetAPIVersion, value: 0, object: label)
        if version != VFIO_API_VERSION {
            throw VFIOError.invalid(.ioctl(.vfioGetAPIVersion), "the kernel speaks VFIO API \(version); VFIOKit knows \(VFIO_API_VERSION)",
                                    object: label)
        }
    }

    package var label: String { "container \(backend.rawValue)" }

    /// Whether the container supports an extension (an IOMMU type or a feature
    /// such as `VFIO_UNMAP_ALL`). The corresponding ioctl is `VFIO_CHECK_EXTENSION`.
    public func checkExtension(_ ext: UInt) throws(VFIOError) -> Bool {
        try fd.ioctl(.vfioCheckExtension, value: Int(ext), object: label) > 0
    }

    /// Whether the container offers the IOMMU model `type`.
    /// The corresponding ioctl is `VFIO_CHECK_EXTENSION`.
    public func supports(_ type: IOMMUType) throws(VFIOError) -> Bool { try checkExtension(type.rawValue) }

    /// The IOMMU type set so far.
    public var type: IOMMUType? { iommuType.withLock { $0 } }

    /// Sets the IOMMU model; needs at least one group in the container first.
    /// The corresponding ioctl is `VFIO_SET_IOMMU`.
    public func setIOMMU(_ type: IOMMUType) throws(VFIOError) {
        _ = try fd.ioctl(.vfioSetIOMMU, value: Int(type.rawValue),
                         object: "\(label) (\(type))")
        iommuType.withLock { $0 = type }
    }

    /// What `VFIO_IOMMU_GET_INFO` reports.
    public struct Info: Sendable, Equatable {
        /// `VFIO_IOMMU_INFO_*` flags (`VFIO_IOMMU_INFO_PGSIZES`, `VFIO_IOMMU_INFO_CAPS`).
        public var flags: UInt32
        /// Supported IOMMU page sizes (a bitmap of sizes), when reported.
        public var pageSizes: UInt64?
        /// Usable IOVA ranges (inclusive ends), when reported.
        public var iovaRanges: [ClosedRange<IOVA>]?
        /// How many more mappings the type1 driver accepts (`dma_entry_limit`).
        public var dmaAvailable: UInt32?
        /// Dirty-page tracking support: (flags, page size bitmap, max bitmap size).
        public var migration: Migration?
        /// The raw capability chain (IOVA ranges, migration, DMA available).
        public var capabilities: [VFIOCapability]

        /// The type1 migration capability (`VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION`): what dirty-page tracking supports.
        public struct Migration: Sendable, Equatable {
            /// `VFIO_IOMMU_DIRTY_PAGES_*` flags of the capability.
            public var flags: UInt32
            /// The page sizes the dirty bitmap can track, a bitmap of sizes.
            public var pageSizes: UInt64
            /// The largest dirty bitmap one `VFIO_IOMMU_DIRTY_PAGES` call fills, in bytes.
            public var maxDirtyBitmapSize: UInt64
        }
    }

    /// Page sizes, IOVA ranges, mapping budget and migration caps. The
    /// corresponding ioctl is `VFIO_IOMMU_GET_INFO`.
    public func info() throws(VFIOError) -> Info {
        let bytes = try fd.growingIoctl(.vfioIOMMUGetInfo, vfio_iommu_type1_info.make(), object: label)
        return Info(parsing: bytes)
    }

    /// Maps and records the mapping as owned by a safe mapping (VFIODMA's
    /// `DMAMapping`); returns its slot.
    @inline(__always)
    package func mapOwned(address: UnsafeRawPointer, length: Int, at iova: IOVA, readable: Bool, writable: Bool)
        throws(VFIOError) -> Int32
    {
        guard gate.enterShared() else { preconditionFailure("a container's gate is never closed") }
        defer { gate.leaveShared() }
        try unsafeMapDMA(address: address, length: length, at: iova, readable: readable, writable: writable)
        return mappings.register(iova: iova.rawValue, length: UInt64(length))
    }

    /// Maps memory the caller owns and keeps alive until it unmaps it.
    /// The corresponding ioctl is `VFIO_IOMMU_MAP_DMA`.
    public func unsafeMapDMA(address: UnsafeRawPointer, length: Int, at iova: IOVA,
                             readable: Bool = true, writable: Bool = true) throws(VFIOError)
    {
        var arg = vfio_iommu_type1_dma_map.make()
        if readable { arg.flags |= VFIO_DMA_MAP_FLAG_READ }
        if writable { arg.flags |= VFIO_DMA_MAP_FLAG_WRITE }
        arg.vaddr = UInt64(UInt(bitPattern: address))
        arg.iova = iova.rawValue
        arg.size = UInt64(length)
        do throws(VFIOError) {
            _ = try fd.ioctl(.vfioIOMMUMapDMA, &arg, object: label)
        } catch where error.errno == .noMemory {
            // vfio_iommu_type1.c vfio_pin_pages_remote(): past RLIMIT_MEMLOCK without CAP_IPC_LOCK.
            throw MemlockLimit.explainPinFailure(error, length: UInt64(length),
                                                 at: "at IOVA 0x" + String(iova.rawValue, radix: 16))
        } catch {
            throw explainMapFailure(error, length: UInt64(length), iova: iova.rawValue)
        }
    }

    /// Adds what an EFAULT means: on iommufd's compat container, that a BAR's
    /// mmap (device memory) cannot be pinned, and the dma-buf way to map it.
    func explainMapFailure(_ error: VFIOError, length: UInt64, iova: UInt64) -> VFIOError {
        guard error.errno == .badAddress else { return error }
        var e = error
        let at = "\(length) bytes at IOVA 0x\(String(iova, radix: 16))"
        if backend == .iommufdCompat {
            e.detail = "\(at): the memory is not mapped in this process, or is device memory (a BAR's mmap): iommufd's "
                + "compat container pins ordinary pages only and never maps a BAR by address, as the legacy type1 container does"
            e.remedies = [.advice("for a BAR, use native iommufd: bind the device's cdev to an IOMMUFD, export the BAR as a "
                + "dma-buf (VFIODevice.exportDMABuf(bar:offset:length:)) and map it into an IOAS (IOAS.map(_:at:), "
                + "IOMMU_IOAS_MAP_FILE)")]
        } else {
            e.detail = "\(at): the memory is not mapped in this process, or not readable/writable as asked"
        }
        return e
    }

    /// Gives an existing mapping (invalidated with ``invalidateVirtualAddresses(iova:length:all:)``)
    /// a new process address, e.g. after live update. The corresponding ioctl is
    /// `VFIO_IOMMU_MAP_DMA` with `VFIO_DMA_MAP_FLAG_VADDR`.
    public func updateVirtualAddress(_ address: UnsafeRawPointer, iova: IOVA, length: Int) throws(VFIOError) {
        var arg = vfio_iommu_type1_dma_map.make()
        arg.flags = VFIO_DMA_MAP_FLAG_VADDR
        arg.vaddr = UInt64(UInt(bitPattern: address))
        arg.iova = iova.rawValue
        arg.size = UInt64(length)
        _ = try fd.ioctl(.vfioIOMMUMapDMA, &arg, object: label)
    }

    /// Unmaps `[iova, iova+length)`; returns the bytes unmapped. The range
    /// must hold exactly what is unmapped: type1 answers success with 0 bytes
    /// when nothing is mapped there, and (VFIO_TYPE1_IOMMU) unmaps a whole
    /// mapping when the range covers only its start; either is an error here (a
    /// short unmap: the caller's view of the container was wrong), and the
    /// detail says how much the kernel unmapped. A range that holds a mapping a
    /// ``DMAMapping`` owns is refused before the kernel is asked.
    /// The corresponding ioctl is `VFIO_IOMMU_UNMAP_DMA`.
    @discardableResult
    public func unmapDMA(iova at: IOVA, length: UInt64) throws(VFIOError) -> UInt64 {
        let iova = at.rawValue
        try mappings.refuseRawUnmapOfOwned(iova: iova, length: length, .ioctl(.vfioIOMMUUnmapDMA), object: label)
        let done = try unmapRange(iova: iova, length: length)
        if done != length {
            throw MappingTable.shortUnmap(.ioctl(.vfioIOMMUUnmapDMA), label, iova: iova, length: length, done: done,
                                          meaning: "0: nothing was mapped there; more or less: the range does not match the mappings",
                                          fix: "unmap exactly the ranges that were mapped")
        }
        return done
    }

    @inline(__always)
    func unmapRange(iova: UInt64, length: UInt64) throws(VFIOError) -> UInt64 {
        var arg = vfio_iommu_type1_dma_unmap.make()
        arg.iova = iova
        arg.size = length
        _ = try fd.ioctl(.vfioIOMMUUnmapDMA, &arg, object: label)
        return arg.size
    }

    /// The unmap of a safe mapping (slot `slot`): nothing after
    /// ``unmapAll()`` took it; otherwise exactly its range. Throws when the
    /// kernel refused or unmapped less: the caller then keeps the memory alive
    /// for good.
    @inline(__always)
    package func unmapOwned(iova: UInt64, length: UInt64, slot: Int32) throws(VFIOError) {
        guard gate.enterShared() else { preconditionFailure("a container's gate is never closed") }
        defer { gate.leaveShared() }
        _ = try mappings.unmapOnce(slot, iova: iova, length: length, .ioctl(.vfioIOMMUUnmapDMA), object: label) {
            () throws(VFIOError) in try unmapRange(iova: iova, length: length)
        }
    }

    /// Unmaps every mapping (needs the `VFIO_UNMAP_ALL` extension). Live
    /// ``DMAMapping``s become inert: ending them issues nothing, so they never
    /// unmap a newer mapping at their IOVA. Waits for their maps and unmaps in
    /// flight on other threads. If the kernel stops part way (EBUSY), the
    /// mappings are resolved one by one, as ``IOAS/unmapAll()`` does.
    /// The corresponding ioctl is `VFIO_IOMMU_UNMAP_DMA` with `VFIO_DMA_UNMAP_FLAG_ALL`.
    @discardableResult
    public func unmapAll() throws(VFIOError) -> UInt64 {
        guard gate.enterExclusive() else { preconditionFailure("a container's gate is never closed") }
        defer { gate.leaveExclusive(dead: false) }
        var arg = vfio_iommu_type1_dma_unmap.make()
        arg.flags = VFIO_DMA_UNMAP_FLAG_ALL
        do throws(VFIOError) {
            _ = try fd.ioctl(.vfioIOMMUUnmapDMA, &arg, object: label)
        } catch {
            throw mappings.resolveFailedUnmapAll(error) { (iova, length) throws(VFIOError) -> UInt64 in
                try unmapRange(iova: iova, length: length)
            }
        }
        mappings.invalidateAll()
        return arg.size
    }

    /// Invalidates the process addresses of mappings (they stay mapped for the
    /// device) until ``updateVirtualAddress(_:iova:length:)``. Needs
    /// `VFIO_UPDATE_VADDR`. The corresponding ioctl is `VFIO_IOMMU_UNMAP_DMA`
    /// with `VFIO_DMA_UNMAP_FLAG_VADDR`.
    public func invalidateVirtualAddresses(iova: IOVA, length: UInt64, all: Bool = false) throws(VFIOError) {
        var arg = vfio_iommu_type1_dma_unmap.make()
        arg.flags = VFIO_DMA_UNMAP_FLAG_VADDR | (all ? VFIO_DMA_UNMAP_FLAG_ALL : 0)
        arg.iova = all ? 0 : iova.rawValue
        arg.size = all ? 0 : length
        _ = try fd.ioctl(.vfioIOMMUUnmapDMA, &arg, object: label)
    }

    /// Closes the container; idempotent.
    public func close() throws(VFIOError) { try fd.close() }
}

extension VFIOContainer.Info {
    init(parsing bytes: KernelBytes<vfio_iommu_type1_info>) {
        let h = bytes.header
        let caps = h.flags & VFIO_IOMMU_INFO_CAPS != 0 ? bytes.capabilities(from: h.cap_offset) : []
        var ranges: [ClosedRange<IOVA>]?
        var avail: UInt32?
        var mig: Migration?
        for c in caps {
            switch c.id {
            case VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
                guard let cap = bytes.load(vfio_iommu_type1_info_cap_iova_range.self, at: c.offset) else { continue }
                let first = c.offset + MemoryLayout<vfio_iommu_type1_info_cap_iova_range>.size
                var out: [ClosedRange<IOVA>] = []
                for i in 0..<Int(cap.nr_iovas) {
                    guard let r = bytes.load(vfio_iova_range.self, at: first + i * MemoryLayout<vfio_iova_range>.stride),
                          r.start <= r.end else { break }
                    out.append(IOVA(r.start)...IOVA(r.end))
                }
                ranges = out
            case VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
                avail = bytes.load(vfio_iommu_type1_info_dma_avail.self, at: c.offset)?.avail
            case VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION:
                if let m = bytes.load(vfio_iommu_type1_info_cap_migration.self, at: c.offset) {
                    mig = Migration(flags: m.flags, pageSizes: m.pgsize_bitmap, maxDirtyBitmapSize: m.max_dirty_bitmap_size)
                }
            default: break
            }
        }
        self.init(flags: h.flags, pageSizes: h.flags & VFIO_IOMMU_INFO_PGSIZES != 0 ? h.iova_pgsizes : nil,
                  iovaRanges: ranges, dmaAvailable: avail, migration: mig, capabilities: caps)
    }
}
