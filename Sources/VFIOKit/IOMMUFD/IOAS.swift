import CVFIO
import Synchronization

// Minimal IOAS written by the devices engineer (see IOMMUFD.swift).

/// An I/O address space in an iommufd context: the IOVA -> memory mappings
/// that devices attached to it (directly or through a HWPT) see.
public final class IOAS: IOMMUAttachTarget {
    public let objectID: UInt32
    public let iommufd: IOMMUFD
    private let destroyed = Atomic<Bool>(false)

    /// Allocates an IOAS. The corresponding ioctl is `IOMMU_IOAS_ALLOC`.
    public init(_ ctx: IOMMUFD) throws(VFIOError) {
        var arg = iommu_ioas_alloc.make()
        _ = try Sys.ioctl(try ctx.fd.get("IOMMU_IOAS_ALLOC"), IOMMU_IOAS_ALLOC, &arg, object: ctx.fd.label)
        objectID = arg.out_ioas_id
        iommufd = ctx
    }

    var label: String { "IOAS \(objectID)" }

    /// Maps all of `buffer` at `iova` (or where the kernel chooses when nil).
    /// The mapping keeps the buffer and this IOAS alive and unmaps when dropped.
    /// The corresponding ioctl is `IOMMU_IOAS_MAP`.
    public func map(_ buffer: DMABuffer, at iova: UInt64?, readable: Bool = true, writable: Bool = true)
        throws(VFIOError) -> DMAMapping
    {
        let at = try unsafeMap(address: UnsafeRawPointer(buffer.base), length: buffer.length, at: iova,
                               readable: readable, writable: writable)
        return DMAMapping(iova: at, length: UInt64(buffer.length), buffer: buffer, owner: .ioas(self))
    }

    /// Maps memory the caller owns. The caller keeps it mapped and alive until
    /// ``unmap(iova:length:)``; VFIOKit does not track it. Returns the IOVA.
    /// The corresponding ioctl is `IOMMU_IOAS_MAP`.
    public func unsafeMap(address: UnsafeRawPointer, length: Int, at iova: UInt64?,
                          readable: Bool = true, writable: Bool = true) throws(VFIOError) -> UInt64
    {
        var arg = iommu_ioas_map.make()
        var flags: UInt32 = 0
        if readable { flags |= IOMMU_IOAS_MAP_READABLE.rawValue }
        if writable { flags |= IOMMU_IOAS_MAP_WRITEABLE.rawValue }
        if let iova {
            flags |= IOMMU_IOAS_MAP_FIXED_IOVA.rawValue
            arg.iova = iova
        }
        arg.flags = flags
        arg.ioas_id = objectID
        arg.user_va = UInt64(UInt(bitPattern: address))
        arg.length = UInt64(length)
        _ = try Sys.ioctl(try iommufd.fd.get("IOMMU_IOAS_MAP"), IOMMU_IOAS_MAP, &arg, object: label)
        return arg.iova
    }

    /// Unmaps `[iova, iova+length)`; returns the bytes unmapped. The
    /// corresponding ioctl is `IOMMU_IOAS_UNMAP`.
    @discardableResult
    public func unmap(iova: UInt64, length: UInt64) throws(VFIOError) -> UInt64 {
        var arg = iommu_ioas_unmap.make()
        arg.ioas_id = objectID
        arg.iova = iova
        arg.length = length
        _ = try Sys.ioctl(try iommufd.fd.get("IOMMU_IOAS_UNMAP"), IOMMU_IOAS_UNMAP, &arg, object: label)
        return arg.length
    }

    /// Destroys the IOAS; idempotent. The corresponding ioctl is `IOMMU_DESTROY`.
    public func destroy() throws(VFIOError) {
        guard !destroyed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        if iommufd.fd.isClosed { return }
        var arg = iommu_destroy.make()
        arg.id = objectID
        _ = try Sys.ioctl(iommufd.fd.raw, IOMMU_DESTROY, &arg, object: label)
    }

    deinit { try? destroy() }
}
