/// A live mapping of a ``DMABuffer`` into an ``IOAS``.
///
/// Noncopyable: exactly one owner, and the IOVA is unmapped exactly once —
/// by ``unmap()`` (which reports errors) or, failing that, when the mapping is
/// destroyed (errors dropped). While it lives it holds the buffer and the IOAS
/// strongly, so neither the memory the device may write nor the address space
/// can go away under the device.
///
/// Holds its references as `Unmanaged` so that `unmap()` can `discard self`;
/// creating and destroying a mapping allocates nothing.
public struct DMAMapping: ~Copyable, @unchecked Sendable {
    // @unchecked: IOAS and DMABuffer are Sendable; Unmanaged is just their retained pointers.
    private let _ioas: Unmanaged<IOAS>
    private let _buffer: Unmanaged<DMABuffer>
    /// The IOVA the buffer starts at.
    public let iova: UInt64
    /// Bytes mapped (the buffer's length).
    public let length: UInt64

    init(ioas: IOAS, buffer: DMABuffer, iova: UInt64, length: UInt64) {
        _ioas = Unmanaged.passRetained(ioas)
        _buffer = Unmanaged.passRetained(buffer)
        self.iova = iova
        self.length = length
    }

    /// The address space the buffer is mapped into.
    public var ioas: IOAS { _ioas.takeUnretainedValue() }
    /// The mapped memory.
    public var buffer: DMABuffer { _buffer.takeUnretainedValue() }

    /// The IOVA range, `iova ..< iova + length`.
    public var range: Range<UInt64> { iova..<(iova + length) }

    /// The IOVA of byte `offset` of the buffer.
    public func iova(at offset: Int) -> UInt64 {
        precondition(offset >= 0 && UInt64(offset) < length, "offset outside the mapping")
        return iova + UInt64(offset)
    }

    /// Unmaps now and reports the kernel's answer.
    /// The corresponding ioctl is `IOMMU_IOAS_UNMAP`.
    public consuming func unmap() throws(VFIOError) {
        let ioas = _ioas
        let buffer = _buffer
        let iova = self.iova
        let length = self.length
        discard self
        defer {
            buffer.release()
            ioas.release()
        }
        _ = try ioas.takeUnretainedValue().unmap(iova: iova, length: length)
    }

    deinit {
        _ = try? _ioas.takeUnretainedValue().unmapRange(iova: iova, length: length)
        _buffer.release()
        _ioas.release()
    }
}
