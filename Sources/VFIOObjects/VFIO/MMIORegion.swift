import CVFIO
import Synchronization
import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A mapped device region (a BAR): volatile 8/16/32/64-bit loads and stores at
/// byte offsets, bounds- and alignment-checked.
///
/// Loads and stores allocate nothing and compile to one check and one `mov`:
/// the accessors are `@inlinable @inline(__always)` over C volatile accessors.
/// A bad offset traps (it is a driver bug, like an array index out of range).
/// The region keeps its ``VFIODevice`` open; the mapping goes away with the
/// last reference, or earlier with ``unmap()``. MMIO is little-endian on PCI; values are returned as the
/// device presents them on this (little-endian) host.
///
/// ## Ordering against DMA memory
///
/// The plain accessors are ordered the way Linux's `writel` and `readl` are:
/// - ``store32(_:at:)`` (and the other stores) first makes every earlier store
///   to normal memory (a ``DMABuffer``) visible to the device: a write barrier
///   (`dma_wmb`), then the store. So a doorbell written after descriptors
///   never overtakes them.
/// - ``load32(at:)`` (and the other loads) is followed by a read barrier
///   (`dma_rmb`): loads from DMA memory after it (the data a status register
///   says is ready) are not satisfied before it.
/// The `Relaxed` variants (``store32Relaxed(_:at:)``, ``load32Relaxed(at:)``,
/// like `writel_relaxed`/`readl_relaxed`) are the access alone: ordered with
/// other accesses to the same device, not with normal memory. Use them for
/// register sequences that do not hand memory to the device.
///
/// On x86-64 the barriers are compiler barriers only (x86 does not reorder
/// stores with stores or loads with loads, and BARs are mapped uncached), so
/// a store is still one `mov`; on arm64 they are `dmb oshst` / `dmb oshld`.
///
/// The doorbell pattern (an NVMe-style submission and completion queue):
///
///     // Submit: fill the descriptor in DMA memory, then ring the doorbell.
///     sq.withUnsafeMutableBytes { $0.storeBytes(of: command, toByteOffset: tail * 64, as: Command.self) }
///     bar.store32(UInt32(newTail), at: sqDoorbell)   // write barrier, then the store
///
///     // Complete: the phase bit says an entry is new; read the rest only after it.
///     while cq.load16(at: head * 16 + 14) & 1 != phase { }   // volatile load from DMA memory
///     DMABuffer.readBarrier()                                  // dma_rmb
///     let entry = cq.withUnsafeMutableBytes { $0.load(fromByteOffset: head * 16, as: Completion.self) }
///     bar.store32(UInt32(newHead), at: cqDoorbell)
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
    /// False once ``unmap()`` replaced the BAR's mapping.
    private let mapped = Mutex(true)

    init(device: VFIODevice, base: UnsafeMutableRawPointer, length: Int, regionIndex: UInt32, regionOffset: UInt64,
         kernel: (any SyscallProvider)?) {
        self.device = device
        self.kernel = kernel
        self.base = base
        self.length = length
        self.regionIndex = regionIndex
        self.regionOffset = regionOffset
        device.regionMapped()
    }

    // @inlinable so client code compiles each access to a compare and one
    // mov: @inline(__always) alone does not cross the module boundary, and a
    // call per register access was 14% slower than C in the benchmark.
    @inlinable @inline(__always)
    func check(_ offset: Int, _ size: Int) {
        precondition(MMIORegion.isValidAccess(offset: offset, size: size, length: length),
                     "MMIO access out of bounds or misaligned")
    }

    /// Whether a `size`-byte access (1, 2, 4 or 8) at `offset` lies inside
    /// `length` bytes and is naturally aligned.
    @inlinable @inline(__always)
    package static func isValidAccess(offset: Int, size: Int, length: Int) -> Bool {
        // One compare: the last byte, offset + size - 1 (unsigned), is below
        // length. A negative offset is huge as unsigned; the only ones whose
        // sum wraps to a small value, -(size - 1) ... -1, are misaligned (and
        // -size sums to UInt.max). A region shorter than the access passes
        // no offset (the old length - size wrapped and passed every one).
        UInt(bitPattern: offset) &+ UInt(bitPattern: size &- 1) < UInt(bitPattern: length)
            && offset & (size &- 1) == 0
    }

    /// Loads (`readl`): the load, then a read barrier. See "Ordering against DMA memory".
    @inlinable @inline(__always) public func load8(at offset: Int) -> UInt8 {
        check(offset, 1); return cvfio_mmio_read8(base + offset)
    }
    /// A 16-bit load (`readw`): the load, then a read barrier.
    @inlinable @inline(__always) public func load16(at offset: Int) -> UInt16 {
        check(offset, 2); return cvfio_mmio_read16(base + offset)
    }
    /// A 32-bit load (`readl`): the load, then a read barrier.
    @inlinable @inline(__always) public func load32(at offset: Int) -> UInt32 {
        check(offset, 4); return cvfio_mmio_read32(base + offset)
    }
    /// A 64-bit load (`readq`): the load, then a read barrier.
    @inlinable @inline(__always) public func load64(at offset: Int) -> UInt64 {
        check(offset, 8); return cvfio_mmio_read64(base + offset)
    }
    /// Stores (`writel`): a write barrier, then the store. See "Ordering against DMA memory".
    @inlinable @inline(__always) public func store8(_ value: UInt8, at offset: Int) {
        check(offset, 1); cvfio_mmio_write8(base + offset, value)
    }
    /// A 16-bit store (`writew`): a write barrier, then the store.
    @inlinable @inline(__always) public func store16(_ value: UInt16, at offset: Int) {
        check(offset, 2); cvfio_mmio_write16(base + offset, value)
    }
    /// A 32-bit store (`writel`): a write barrier, then the store, so earlier
    /// stores to DMA memory reach the device first.
    @inlinable @inline(__always) public func store32(_ value: UInt32, at offset: Int) {
        check(offset, 4); cvfio_mmio_write32(base + offset, value)
    }
    /// A 64-bit store (`writeq`): a write barrier, then the store.
    @inlinable @inline(__always) public func store64(_ value: UInt64, at offset: Int) {
        check(offset, 8); cvfio_mmio_write64(base + offset, value)
    }

    /// Loads without the read barrier (`readl_relaxed`).
    @inlinable @inline(__always) public func load8Relaxed(at offset: Int) -> UInt8 {
        check(offset, 1); return cvfio_mmio_read8_relaxed(base + offset)
    }
    /// A 16-bit load without the read barrier (`readw_relaxed`).
    @inlinable @inline(__always) public func load16Relaxed(at offset: Int) -> UInt16 {
        check(offset, 2); return cvfio_mmio_read16_relaxed(base + offset)
    }
    /// A 32-bit load without the read barrier (`readl_relaxed`).
    @inlinable @inline(__always) public func load32Relaxed(at offset: Int) -> UInt32 {
        check(offset, 4); return cvfio_mmio_read32_relaxed(base + offset)
    }
    /// A 64-bit load without the read barrier (`readq_relaxed`).
    @inlinable @inline(__always) public func load64Relaxed(at offset: Int) -> UInt64 {
        check(offset, 8); return cvfio_mmio_read64_relaxed(base + offset)
    }
    /// Stores without the write barrier (`writel_relaxed`).
    @inlinable @inline(__always) public func store8Relaxed(_ value: UInt8, at offset: Int) {
        check(offset, 1); cvfio_mmio_write8_relaxed(base + offset, value)
    }
    /// A 16-bit store without the write barrier (`writew_relaxed`).
    @inlinable @inline(__always) public func store16Relaxed(_ value: UInt16, at offset: Int) {
        check(offset, 2); cvfio_mmio_write16_relaxed(base + offset, value)
    }
    /// A 32-bit store without the write barrier (`writel_relaxed`).
    @inlinable @inline(__always) public func store32Relaxed(_ value: UInt32, at offset: Int) {
        check(offset, 4); cvfio_mmio_write32_relaxed(base + offset, value)
    }
    /// A 64-bit store without the write barrier (`writeq_relaxed`).
    @inlinable @inline(__always) public func store64Relaxed(_ value: UInt64, at offset: Int) {
        check(offset, 8); cvfio_mmio_write64_relaxed(base + offset, value)
    }

    /// Whether ``unmap()`` ran.
    public var isUnmapped: Bool { !mapped.withLock { $0 } }

    /// Ends the mapping of the device now instead of with the last reference
    /// to the region: the BAR's pages go, and with them the mapping's hold on
    /// the device file, so once the device fd is closed too vfio-pci can give
    /// the device back to a kernel driver (its unbind waits for every user of
    /// the file). A driver's `close()` calls it, whoever may still hold a copy.
    ///
    /// The address range stays reserved as inaccessible memory until the last
    /// reference goes: an access through the region afterwards stops the
    /// process (SIGSEGV) instead of reaching the device or memory mapped there
    /// since. Stop every user of the region first. Idempotent; when it throws
    /// the region is still mapped and usable.
    /// The corresponding call is `mmap(MAP_FIXED, PROT_NONE)` over the range.
    public func unmap() throws(VFIOError) {
        try mapped.withLock { (m) throws(VFIOError) in
            guard m else { return }
            try Sys.mmapFixed(kernel, at: base, length: length, protection: PROT_NONE,
                              flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                              object: "\(device.label) region \(regionIndex)")
            m = false
            device.regionUnmapped()
        }
    }

    deinit {
        // The BAR's mapping, or the inaccessible range that replaced it.
        try? Sys.munmap(kernel, base, length: length)
        if mapped.withLock({ $0 }) { device.regionUnmapped() }
    }
}
