import VFIOObjects
import VFIOSystem

// The safe mapping APIs of the kernel objects: they take a DMABuffer and
// return a DMAMapping, so they live here with the buffers and mappings, and
// the objects layer knows neither (it tracks slots; see IOAS.mapOwned).

extension IOAS {
    /// Maps `buffer` at `iova` (or where the kernel chooses, when nil) and
    /// returns the mapping, which keeps the buffer and this IOAS alive and
    /// unmaps on deinit. Allocates nothing on success.
    /// The corresponding ioctl is `IOMMU_IOAS_MAP`.
    public func map(_ buffer: DMABuffer, at iova: UInt64?, readable: Bool = true, writable: Bool = true)
        throws(VFIOError) -> DMAMapping
    {
        let length = UInt64(buffer.length)
        let (mapped, slot) = try mapOwned(UInt64(buffer.address), length: length, at: iova,
                                          readable: readable, writable: writable)
        return DMAMapping(iova: mapped, length: length, buffer: buffer, owner: .ioas(self), slot: slot)
    }

    /// Maps the memfd behind `buffer` (a ``DMABuffer/Backing/memfd`` buffer)
    /// by file and offset rather than by address, so the mapping survives the
    /// process (``IOMMUFD/changeProcess()``) and does not depend on this
    /// process's page tables.
    /// The corresponding ioctl is `IOMMU_IOAS_MAP_FILE`.
    public func mapFile(_ buffer: DMABuffer, at iova: UInt64?, readable: Bool = true, writable: Bool = true)
        throws(VFIOError) -> DMAMapping
    {
        guard let file = buffer.file else {
            throw VFIOError.invalid(.ioctl(.iommuIOASMapFile), "the buffer is not backed by a memfd", object: label,
                                    remedies: [.advice("allocate it with DMABuffer(length:backing: .memfd)")])
        }
        let length = UInt64(buffer.length)
        let (mapped, slot) = try mapFileOwned(file, length: length, at: iova, readable: readable, writable: writable)
        return DMAMapping(iova: mapped, length: length, buffer: buffer, owner: .ioas(self), slot: slot)
    }

    /// Maps the same buffer as `mapping` (which may belong to another IOAS)
    /// into this IOAS as well, and returns a mapping that keeps the buffer alive.
    /// The corresponding ioctl is `IOMMU_IOAS_COPY`.
    public func copy(_ mapping: borrowing DMAMapping, to iova: UInt64?, readable: Bool = true, writable: Bool = true)
        throws(VFIOError) -> DMAMapping
    {
        guard case .ioas(let source) = mapping.owner else {
            throw VFIOError.invalid(.ioctl(.iommuIOASCopy), "the mapping is not in an IOAS (it belongs to a VFIO container)", object: label)
        }
        let length = mapping.length
        let (dst, slot) = try copyOwned(from: source, sourceIOVA: mapping.iova, length: length, to: iova,
                                        readable: readable, writable: writable)
        return DMAMapping(iova: dst, length: length, buffer: mapping.buffer, owner: .ioas(self), slot: slot)
    }
}

extension VFIOContainer {
    /// Maps `buffer` at `iova` (type1 needs an explicit IOVA). The mapping keeps
    /// the buffer and container alive, and unmaps exactly its range when it
    /// ends (nothing after ``unmapAll()``). The corresponding ioctl is `VFIO_IOMMU_MAP_DMA`.
    public func mapDMA(_ buffer: DMABuffer, at iova: UInt64, readable: Bool = true, writable: Bool = true)
        throws(VFIOError) -> DMAMapping
    {
        let slot = try mapOwned(address: UnsafeRawPointer(buffer.base), length: buffer.length, at: iova,
                                readable: readable, writable: writable)
        return DMAMapping(iova: iova, length: UInt64(buffer.length), buffer: buffer, owner: .container(self), slot: slot)
    }
}
