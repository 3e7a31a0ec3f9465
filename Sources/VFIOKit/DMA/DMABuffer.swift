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

    public static let hugePageSize = 2 << 20

    /// Allocates `length` bytes (rounded up to the page size of `backing`), zeroed.
    public init(length: Int, backing: Backing = .anonymous) throws(VFIOError) {
        guard length > 0 else {
            throw VFIOError.invalid("allocate DMA buffer", "length must be positive, got \(length)")
        }
        let page = backing == .hugePages ? DMABuffer.hugePageSize : Int(sysconf(Int32(_SC_PAGESIZE)))
        let (padded, overflow) = length.addingReportingOverflow(page - 1)
        guard !overflow else {
            throw VFIOError.invalid("allocate DMA buffer", "length \(length) rounded up to whole \(page)-byte pages "
                                        + "does not fit in an Int", hint: "ask for a length the machine can hold")
        }
        let rounded = padded / page * page
        let prot = PROT_READ | PROT_WRITE
        switch backing {
        case .anonymous:
            base = try Sys.mmap(length: rounded, protection: prot, flags: MAP_SHARED | MAP_ANONYMOUS,
                                object: "\(rounded) bytes anonymous")
            file = nil
        case .hugePages:
            do {
                base = try Sys.mmap(length: rounded, protection: prot, flags: MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB,
                                    object: "\(rounded) bytes in 2 MiB pages")
            } catch {
                var e = error
                let pages = (rounded + (2 << 20) - 1) / (2 << 20)
                e.hint = "reserve \(pages) more 2 MiB pages (as root): "
                    + "`echo $(( $(cat /proc/sys/vm/nr_hugepages) + \(pages) )) > /proc/sys/vm/nr_hugepages` "
                    + "(/proc/meminfo HugePages_Free shows what is free)"
                throw e
            }
            file = nil
        case .memfd:
            let fd = OwnedFD(try Sys.memfdCreate("vfiokit-dma", flags: 0), label: "memfd vfiokit-dma")
            try Sys.ftruncate(fd.raw, length: Int64(rounded))
            base = try Sys.mmap(length: rounded, protection: prot, flags: MAP_SHARED, fd: fd.raw,
                                object: "memfd \(rounded) bytes")
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
    public func fill(_ value: UInt8) { memset(base, Int32(value), length) }

    deinit {
        try? Sys.munmap(base, length: length)
    }
}
