#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Memory for DMA that VFIOKit allocated and owns.
///
/// A buffer stays alive for as long as any mapping of it lives (mappings keep
/// a reference), so the device can never DMA into memory that was freed.
/// Its bytes are reachable with ``withUnsafeMutableBytes(_:)`` and the copying
/// helpers; the address is stable for the buffer's lifetime.
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

    public let backing: Backing
    /// Length in bytes, a multiple of the page size used.
    public let length: Int
    let base: UnsafeMutableRawPointer
    /// The memfd behind a `.memfd` buffer, else nil.
    public let file: OwnedFD?
    /// The kernel the memory was mapped through (nil: Linux); it unmaps it too.
    let kernel: (any SyscallProvider)?

    public static let hugePageSize = 2 << 20

    /// Allocates `length` bytes (rounded up to the page size of `backing`), zeroed.
    public init(length: Int, backing: Backing = .anonymous) throws(VFIOError) {
        guard length > 0 else {
            throw VFIOError.invalid("allocate DMA buffer", "length must be positive, got \(length)")
        }
        let page = backing == .hugePages ? DMABuffer.hugePageSize : Int(sysconf(Int32(_SC_PAGESIZE)))
        let rounded = (length + page - 1) / page * page
        let prot = PROT_READ | PROT_WRITE
        let kernel = Sys.current
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
                e.hint = "reserve huge pages first: echo N > /proc/sys/vm/nr_hugepages (see /proc/meminfo HugePages_Free)"
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

    /// The start address, for descriptors that a device reads from memory.
    public var address: UInt { UInt(bitPattern: base) }

    /// Runs `body` with the buffer's bytes.
    public func withUnsafeMutableBytes<R, E: Error>(_ body: (UnsafeMutableRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeMutableRawBufferPointer(start: base, count: length))
    }

    /// Copies `bytes` in at `offset`.
    public func write(_ bytes: some Collection<UInt8>, at offset: Int = 0) {
        precondition(offset >= 0 && offset + bytes.count <= length, "write past the end of the DMA buffer")
        let dst = UnsafeMutableRawBufferPointer(start: base + offset, count: bytes.count)
        dst.copyBytes(from: bytes)
    }

    /// Copies `count` bytes out from `offset`.
    public func read(at offset: Int = 0, count: Int) -> [UInt8] {
        precondition(offset >= 0 && count >= 0 && offset + count <= length, "read past the end of the DMA buffer")
        return Array(UnsafeRawBufferPointer(start: base + offset, count: count))
    }

    /// Sets every byte to `value`.
    public func fill(_ value: UInt8) { memset(base, Int32(value), length) }

    deinit {
        try? Sys.munmap(kernel, base, length: length)
    }
}
