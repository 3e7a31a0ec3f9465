import CVFIO

/// A mapped device region (a BAR): volatile 8/16/32/64-bit loads and stores at
/// byte offsets, bounds- and alignment-checked.
///
/// Loads and stores allocate nothing and compile to one check and one `mov`:
/// the accessors are `@inline(__always)` over C volatile accessors. A bad
/// offset traps (it is a driver bug, like an array index out of range).
/// The region keeps its ``VFIODevice`` open; the mapping goes away with the
/// last reference. MMIO is little-endian on PCI; values are returned as the
/// device presents them on this (little-endian) host.
public final class MMIORegion: @unchecked Sendable {
    // @unchecked: base and length never change; device registers are shared
    // mutable state by nature, ordered by the driver.

    /// The device this region belongs to (kept open while mapped).
    public let device: VFIODevice
    /// Start of the mapping.
    public let base: UnsafeMutableRawPointer
    /// Length in bytes.
    public let length: Int
    /// The VFIO region index (the BAR number for BARs).
    public let regionIndex: UInt32
    /// Where the mapping starts within the region (non-zero for a sparse area).
    public let regionOffset: UInt64
    /// The kernel the region was mapped through (nil: Linux); it unmaps it too.
    let kernel: (any SyscallProvider)?

    init(device: VFIODevice, base: UnsafeMutableRawPointer, length: Int, regionIndex: UInt32, regionOffset: UInt64,
         kernel: (any SyscallProvider)?) {
        self.device = device
        self.kernel = kernel
        self.base = base
        self.length = length
        self.regionIndex = regionIndex
        self.regionOffset = regionOffset
    }

    // @inlinable so client code compiles each access to a compare and one
    // mov: @inline(__always) alone does not cross the module boundary, and a
    // call per register access was 14% slower than C in the benchmark.
    @inlinable @inline(__always)
    func check(_ offset: Int, _ size: Int) {
        // One compare covers negative offsets too (as unsigned they are huge).
        precondition(UInt(bitPattern: offset) <= UInt(bitPattern: length &- size) && offset & (size &- 1) == 0,
                     "MMIO access out of bounds or misaligned")
    }

    @inlinable @inline(__always) public func load8(at offset: Int) -> UInt8 {
        check(offset, 1); return cvfio_mmio_read8(base + offset)
    }
    @inlinable @inline(__always) public func load16(at offset: Int) -> UInt16 {
        check(offset, 2); return cvfio_mmio_read16(base + offset)
    }
    @inlinable @inline(__always) public func load32(at offset: Int) -> UInt32 {
        check(offset, 4); return cvfio_mmio_read32(base + offset)
    }
    @inlinable @inline(__always) public func load64(at offset: Int) -> UInt64 {
        check(offset, 8); return cvfio_mmio_read64(base + offset)
    }
    @inlinable @inline(__always) public func store8(_ value: UInt8, at offset: Int) {
        check(offset, 1); cvfio_mmio_write8(base + offset, value)
    }
    @inlinable @inline(__always) public func store16(_ value: UInt16, at offset: Int) {
        check(offset, 2); cvfio_mmio_write16(base + offset, value)
    }
    @inlinable @inline(__always) public func store32(_ value: UInt32, at offset: Int) {
        check(offset, 4); cvfio_mmio_write32(base + offset, value)
    }
    @inlinable @inline(__always) public func store64(_ value: UInt64, at offset: Int) {
        check(offset, 8); cvfio_mmio_write64(base + offset, value)
    }

    deinit {
        try? Sys.munmap(kernel, base, length: length)
    }
}
