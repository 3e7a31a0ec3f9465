import VFIOObjects
import VFIOSystem

/// One IOVA range mapped to a ``DMABuffer`` that VFIOKit allocated.
///
/// The mapping holds the buffer and the address space it lives in strongly,
/// so neither can go away while a device may still DMA through it. Dropping
/// the mapping unmaps it (errors are lost, as in any deinit); call
/// ``unmap()`` to see them.
///
/// A mapping only ever unmaps its own range: after the address space's
/// unmap-all (``IOAS/unmapAll()``, ``VFIOContainer/unmapAll()``) or the
/// destruction of its IOAS by ``IOMMUFD/close()`` it is *inert*, and ending
/// it issues nothing (the kernel may have given its IOVA to a newer mapping).
///
/// When the kernel refuses the unmap, or unmaps less than the mapping
/// (a short unmap), the range may still be mapped: a device could still reach
/// the pages. The mapping then keeps its buffer alive for good (the memory is
/// leaked, never freed under a device) and, in a ``DMASpace``, its IOVA stays
/// reserved; the error says so.
public struct DMAMapping: ~Copyable, Sendable {
    /// Where the device sees the buffer.
    public let iova: UInt64
    /// Bytes mapped (the whole buffer).
    public let length: UInt64
    /// The memory behind the mapping.
    public let buffer: DMABuffer
    let owner: DMAMappingOwner
    /// The mapping's entry in its address space's ``MappingTable``.
    let slot: Int32
    private var live = true

    package init(iova: UInt64, length: UInt64, buffer: DMABuffer, owner: DMAMappingOwner, slot: Int32) {
        self.iova = iova
        self.length = length
        self.buffer = buffer
        self.owner = owner
        self.slot = slot
    }

    /// The IOAS the buffer is mapped into, when it is an iommufd mapping.
    public var ioas: IOAS? {
        if case .ioas(let ioas) = owner { return ioas }
        return nil
    }

    /// The last IOVA of the mapping, `iova + length - 1` (it may be 2^64 - 1).
    public var lastIOVA: UInt64 { iova &+ (length &- 1) }

    /// The IOVA range, `iova ..< iova + length`. Throws for a mapping that
    /// ends at 2^64, which a `Range<UInt64>` cannot express (use ``lastIOVA``).
    public var range: Range<UInt64> {
        get throws(VFIOError) {
            let (end, overflow) = iova.addingReportingOverflow(length)
            if overflow {
                throw VFIOError.invalid(.step(.mappingRange),
                                        "the mapping at IOVA 0x\(String(iova, radix: 16)) (\(length) bytes) ends at 2^64, "
                                            + "which a Range<UInt64> cannot hold",
                                        remedies: [.advice("use lastIOVA (the last byte's IOVA) for mappings at the top of the IOVA space")])
            }
            return iova..<end
        }
    }

    /// The IOVA of byte `offset` of the buffer.
    @inline(__always)
    public func iova(at offset: Int) throws(VFIOError) -> UInt64 {
        guard offset >= 0, UInt64(offset) < length else {
            throw VFIOError.invalid(.step(.mappingIOVA),
                                    "offset \(offset) is outside the mapping (\(length) bytes at IOVA 0x\(String(iova, radix: 16)))")
        }
        return iova &+ UInt64(offset)
    }

    /// Unmaps now and reports the kernel's answer. The corresponding ioctl is
    /// `IOMMU_IOAS_UNMAP` or `VFIO_IOMMU_UNMAP_DMA`, by address space. An inert
    /// mapping (see above) issues nothing and succeeds.
    public consuming func unmap() throws(VFIOError) {
        // Whatever the kernel says, deinit must not try again.
        live = false
        try owner.unmapOwned(iova: iova, length: length, slot: slot, buffer: buffer)
    }

    deinit {
        if live { try? owner.unmapOwned(iova: iova, length: length, slot: slot, buffer: buffer) }
    }

    /// Keeps `buffer` alive for the life of the process: its pages may still
    /// be mapped for a device, so they must never be unmapped or reused.
    static func keepForever(_ buffer: DMABuffer) {
        // Safety: a deliberate leak (one retain that is never balanced); nothing is freed or read here.
        _ = Unmanaged.passRetained(buffer)
    }

    /// The error of a failed or short unmap of a mapping, after keeping its buffer.
    static func unmapFailed(_ error: VFIOError, iova: UInt64, length: UInt64, buffer: DMABuffer) -> VFIOError {
        keepForever(buffer)
        var e = error
        e.detail = (e.detail.map { $0 + ". " } ?? "")
            + "The mapping (\(length) bytes at IOVA 0x\(String(iova, radix: 16))) may still be mapped, so its DMABuffer "
            + "is kept alive for good (leaked): freeing pages a device may still reach would be a use-after-free"
        return e
    }
}

/// The address spaces a ``DMAMapping`` can live in (a closed set: no
/// existential on the unmap path).
package enum DMAMappingOwner: Sendable {
    case ioas(IOAS)
    case container(VFIOContainer)
    case space(DMASpace)

    /// Unmaps the mapping through its address space. When the unmap fails or
    /// comes up short (or the IOAS went while it was being unmapped), the
    /// range may still be mapped: `buffer` is kept alive for good.
    @inline(__always)
    func unmapOwned(iova: UInt64, length: UInt64, slot: Int32, buffer: DMABuffer) throws(VFIOError) {
        switch self {
        case .ioas(let ioas):
            let settled: Bool
            do throws(VFIOError) {
                settled = try ioas.unmapOwned(iova: iova, length: length, slot: slot)
            } catch {
                throw DMAMapping.unmapFailed(error, iova: iova, length: length, buffer: buffer)
            }
            if !settled { DMAMapping.keepForever(buffer) }
        case .container(let c):
            do throws(VFIOError) {
                try c.unmapOwned(iova: iova, length: length, slot: slot)
            } catch {
                throw DMAMapping.unmapFailed(error, iova: iova, length: length, buffer: buffer)
            }
        case .space(let s): try s.unmapOwned(iova: iova, length: length, slot: slot, buffer: buffer)
        }
    }
}
