import CVFIO
import VFIOObjects
import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Memory for DMA that VFIOKit allocated and owns.
///
/// A buffer stays alive for as long as any mapping of it lives (mappings keep
/// a reference), so the device can never DMA into memory that was freed.
/// Its bytes are reachable with ``withUnsafeMutableBytes(_:)``, the copying
/// helpers, the volatile accessors and ``baseAddress`` (stable for the
/// buffer's lifetime). That is the process's address of the memory; the
/// device's is the IOVA of a mapping, a different type (`IOVA`).
///
/// ## Sharing memory with a device
///
/// Plain accesses (``withUnsafeMutableBytes(_:)``, ``write(_:at:)``) may be
/// reordered, merged or hoisted by the compiler and, on arm64, by the CPU.
/// For the fields a driver and a device hand back and forth:
/// - ``load16(at:)`` and the other volatile accessors happen exactly once,
///   where written: poll a completion's phase bit with them.
/// - ``readBarrier()`` (Linux's `dma_rmb`) after reading a phase bit or a
///   "done" flag, before reading the rest of the entry.
/// - ``writeBarrier()`` (`dma_wmb`) after writing descriptors, before the
///   store that hands them over when that store is to memory (a shadow
///   doorbell, a ring index the device polls). A doorbell in a BAR needs no
///   explicit barrier: ``MMIORegion/store32(_:at:)`` has one built in.
///
///     sq.withUnsafeMutableBytes { $0.storeBytes(of: command, toByteOffset: tail * 64, as: Command.self) }
///     bar.store32(UInt32(newTail), at: sqDoorbell)          // barrier, then the doorbell
///
///     while cq.load16(at: head * 16 + 14) & 1 != phase { }  // the phase bit, read each time
///     DMABuffer.readBarrier()                                 // then the rest of the entry
///     let entry = cq.withUnsafeMutableBytes { $0.load(fromByteOffset: head * 16, as: Completion.self) }
///
/// On x86-64 both barriers are compiler barriers only (free at run time); on
/// arm64 they are `dmb oshst` and `dmb oshld`.
public final class DMABuffer: @unchecked Sendable {
    // @unchecked: the address and length never change; the bytes are shared
    // with a device and synchronised by the driver's own protocol, as with any
    // DMA memory.

    /// How the memory is backed.
    public enum Backing: Sendable, Equatable {
        /// Anonymous memory, 4 KiB pages.
        case anonymous
        /// 2 MiB hugetlb pages (needs pages reserved in /proc/sys/vm/nr_hugepages).
        case hugePages
        /// A memfd, so it can be mapped with `IOMMU_IOAS_MAP_FILE` or shared.
        case memfd
    }

    /// How the memory is backed (anonymous, 2 MiB huge pages, or a memfd).
    public let backing: Backing
    /// Length in bytes, a multiple of the page size used.
    public let length: Int
    @usableFromInline let base: UnsafeMutableRawPointer
    /// The memfd behind a `.memfd` buffer, else nil.
    public let file: OwnedFD?
    /// The kernel the memory was mapped through (nil: Linux); it unmaps it too.
    package let kernel: (any SyscallProvider)?

    /// The size of one huge page of a ``Backing/hugePages`` buffer: 2 MiB.
    public static let hugePageSize = 2 << 20

    /// Allocates `length` bytes (rounded up to the page size of `backing`), zeroed.
    public init(length: Int, backing: Backing = .anonymous) throws(VFIOError) {
        guard length > 0 else {
            throw VFIOError.invalid(.step(.allocateDMABuffer), "length must be positive, got \(length)")
        }
        let kernel = Sys.current
        let page = backing == .hugePages ? DMABuffer.hugePageSize : try Sys.pageSize(kernel)
        let (padded, overflow) = length.addingReportingOverflow(page - 1)
        guard !overflow else {
            throw VFIOError.invalid(.step(.allocateDMABuffer), "length \(length) rounded up to whole \(page)-byte pages "
                                        + "does not fit in an Int", remedies: [.advice("ask for a length the machine can hold")])
        }
        let rounded = padded / page * page
        let prot = PROT_READ | PROT_WRITE
        self.kernel = kernel
        switch backing {
        case .anonymous:
            base = try Sys.mmap(kernel, length: rounded, protection: prot, flags: MAP_SHARED | MAP_ANONYMOUS,
                                object: "\(rounded) bytes anonymous")
            file = nil
        case .hugePages:
            do {
                base = try Sys.mmap(kernel, length: rounded, protection: prot,
                                    flags: MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB,
                                    object: "\(rounded) bytes in 2 MiB pages")
            } catch {
                var e = error
                let pages = (rounded + (2 << 20) - 1) / (2 << 20)
                e.remedies = [.addHugePages(count: pages)]
                throw e
            }
            file = nil
        case .memfd:
            let fd = OwnedFD(try Sys.memfdCreate(kernel, "vfiokit-dma", flags: 0), label: "memfd vfiokit-dma",
                             kernel: kernel)
            try fd.ftruncate(length: Int64(rounded))
            base = try fd.mmap(length: rounded, protection: prot, flags: MAP_SHARED, object: "memfd \(rounded) bytes")
            file = fd
        }
        self.length = rounded
        self.backing = backing
    }

    /// Where the buffer starts in this process: for the CPU's accesses only
    /// (a ring's entries, a payload). A device reaches the buffer at the IOVA
    /// of its mapping (``DMAMapping/iova``, an `IOVA`), never at this address.
    /// Stable for the buffer's lifetime; valid while the buffer is alive.
    @inlinable public var baseAddress: UnsafeMutableRawPointer { base }

    /// Runs `body` with the buffer's bytes.
    public func withUnsafeMutableBytes<R, E: Error>(_ body: (UnsafeMutableRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeMutableRawBufferPointer(start: base, count: length))
    }

    /// Copies `bytes` in at `offset`.
    public func write(_ bytes: some Collection<UInt8>, at offset: Int = 0) {
        precondition(offset >= 0 && offset <= length && bytes.count <= length - offset, "write past the end of the DMA buffer")
        let dst = UnsafeMutableRawBufferPointer(start: base + offset, count: bytes.count)
        dst.copyBytes(from: bytes)
    }

    /// Copies `count` bytes out from `offset`.
    public func read(at offset: Int = 0, count: Int) -> [UInt8] {
        precondition(offset >= 0 && count >= 0 && offset <= length && count <= length - offset,
                     "read past the end of the DMA buffer")
        return Array(UnsafeRawBufferPointer(start: base + offset, count: count))
    }

    /// Sets every byte to `value`.
    public func fill(_ value: UInt8) { base.initializeMemory(as: UInt8.self, repeating: value, count: length) }

    // MARK: ordered access (see "Sharing memory with a device")

    /// Every earlier store to memory is visible to devices before any later
    /// store: Linux's `dma_wmb` (arm64 `dmb oshst`; a compiler barrier on x86-64).
    @inlinable @inline(__always) public static func writeBarrier() { cvfio_dma_wmb() }

    /// Every later load happens after every earlier one: Linux's `dma_rmb`
    /// (arm64 `dmb oshld`; a compiler barrier on x86-64). Use it between
    /// reading a completion's phase bit and reading the rest of the entry.
    @inlinable @inline(__always) public static func readBarrier() { cvfio_dma_rmb() }

    @inlinable @inline(__always)
    func check(_ offset: Int, _ size: Int) {
        precondition(MMIORegion.isValidAccess(offset: offset, size: size, length: length),
                     "DMA buffer access out of bounds or misaligned")
    }

    /// Volatile loads: performed exactly once, where written (never hoisted
    /// out of a polling loop or merged). Not ordered with plain accesses:
    /// follow the load that says an entry is ready with ``readBarrier()``.
    @inlinable @inline(__always) public func load8(at offset: Int) -> UInt8 {
        check(offset, 1); return cvfio_mmio_read8_relaxed(base + offset)
    }
    /// A volatile 16-bit load at `offset` (see ``load8(at:)``).
    @inlinable @inline(__always) public func load16(at offset: Int) -> UInt16 {
        check(offset, 2); return cvfio_mmio_read16_relaxed(base + offset)
    }
    /// A volatile 32-bit load at `offset` (see ``load8(at:)``).
    @inlinable @inline(__always) public func load32(at offset: Int) -> UInt32 {
        check(offset, 4); return cvfio_mmio_read32_relaxed(base + offset)
    }
    /// A volatile 64-bit load at `offset` (see ``load8(at:)``).
    @inlinable @inline(__always) public func load64(at offset: Int) -> UInt64 {
        check(offset, 8); return cvfio_mmio_read64_relaxed(base + offset)
    }
    /// Volatile stores: performed exactly once, where written. Not ordered
    /// with plain stores: precede a store that hands data to the device with
    /// ``writeBarrier()``.
    @inlinable @inline(__always) public func store8(_ value: UInt8, at offset: Int) {
        check(offset, 1); cvfio_mmio_write8_relaxed(base + offset, value)
    }
    /// A volatile 16-bit store at `offset` (see ``store8(_:at:)``).
    @inlinable @inline(__always) public func store16(_ value: UInt16, at offset: Int) {
        check(offset, 2); cvfio_mmio_write16_relaxed(base + offset, value)
    }
    /// A volatile 32-bit store at `offset` (see ``store8(_:at:)``).
    @inlinable @inline(__always) public func store32(_ value: UInt32, at offset: Int) {
        check(offset, 4); cvfio_mmio_write32_relaxed(base + offset, value)
    }
    /// A volatile 64-bit store at `offset` (see ``store8(_:at:)``).
    @inlinable @inline(__always) public func store64(_ value: UInt64, at offset: Int) {
        check(offset, 8); cvfio_mmio_write64_relaxed(base + offset, value)
    }

    deinit {
        try? Sys.munmap(kernel, base, length: length)
    }
}
