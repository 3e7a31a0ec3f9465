/// One IOVA range mapped to a ``DMABuffer`` that VFIOKit allocated.
///
/// The mapping holds the buffer and the address space it lives in strongly,
/// so neither can go away while a device may still DMA through it. Dropping
/// the mapping unmaps it (errors are lost, as in any deinit); call
/// ``unmap()`` to see them.
public struct DMAMapping: ~Copyable, Sendable {
    /// Where the device sees the buffer.
    public let iova: UInt64
    /// Bytes mapped (the whole buffer).
    public let length: UInt64
    /// The memory behind the mapping.
    public let buffer: DMABuffer
    let owner: DMAMappingOwner
    private var live = true

    init(iova: UInt64, length: UInt64, buffer: DMABuffer, owner: DMAMappingOwner) {
        self.iova = iova
        self.length = length
        self.buffer = buffer
        self.owner = owner
    }

    /// The IOVA of byte `offset` of the buffer.
    @inline(__always)
    public func iova(at offset: Int) -> UInt64 {
        precondition(offset >= 0 && UInt64(offset) < length, "offset \(offset) is outside the mapping")
        return iova &+ UInt64(offset)
    }

    /// Unmaps now and reports the kernel's answer. The corresponding ioctl is
    /// `IOMMU_IOAS_UNMAP` or `VFIO_IOMMU_UNMAP_DMA`, by address space.
    public consuming func unmap() throws(VFIOError) {
        // Whatever the kernel says, deinit must not try again.
        live = false
        try owner.unmapDMA(iova: iova, length: length)
    }

    deinit {
        if live { try? owner.unmapDMA(iova: iova, length: length) }
    }
}

/// The address spaces a ``DMAMapping`` can live in (a closed set: no
/// existential on the unmap path).
enum DMAMappingOwner: Sendable {
    case ioas(IOAS)
    case container(VFIOContainer)
    case space(DMASpace)

    @inline(__always)
    func unmapDMA(iova: UInt64, length: UInt64) throws(VFIOError) {
        switch self {
        case .ioas(let ioas): _ = try ioas.unmap(iova: iova, length: length)
        case .container(let c): _ = try c.unmapDMA(iova: iova, length: length)
        case .space(let s): try s.unmapDMA(iova: iova, length: length)
        }
    }
}
