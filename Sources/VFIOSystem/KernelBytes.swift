import CVFIO

/// A variable-size ioctl argument: a fixed header struct followed by kernel
/// data (a capability chain, an array). 8-byte aligned, bounds-checked reads.
package struct KernelBytes<Header>: Sendable {
    private(set) var storage: [UInt64]
    /// How many bytes the buffer holds.
    package let count: Int

    /// A zeroed buffer of `count` bytes (at least the header) starting with `header`.
    package init(_ header: Header, count: Int) {
        let n = max(count, MemoryLayout<Header>.size)
        self.count = n
        storage = [UInt64](repeating: 0, count: (n + 7) / 8)
        storage.withUnsafeMutableBytes { $0.storeBytes(of: header, as: Header.self) }
    }

    /// The fixed struct at the start.
    package var header: Header {
        get { storage.withUnsafeBytes { $0.load(as: Header.self) } }
        set { storage.withUnsafeMutableBytes { $0.storeBytes(of: newValue, as: Header.self) } }
    }

    /// Reads a `T` at `offset`, or nil when it would run past the end.
    package func load<T>(_: T.Type = T.self, at offset: Int) -> T? {
        guard offset >= 0, offset + MemoryLayout<T>.size <= count else { return nil }
        return storage.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: T.self) }
    }

    /// Copies `length` bytes at `offset`, or nil when out of range.
    package func bytes(at offset: Int, length: Int) -> [UInt8]? {
        guard offset >= 0, length >= 0, offset + length <= count else { return nil }
        return storage.withUnsafeBytes { Array($0[offset..<(offset + length)]) }
    }

    package mutating func withUnsafeMutableRawPointer<R>(_ body: (UnsafeMutableRawPointer) throws(VFIOError) -> R) throws(VFIOError) -> R {
        var result: Result<R, VFIOError>?
        storage.withUnsafeMutableBytes { raw in
            result = Result { () throws(VFIOError) -> R in try body(raw.baseAddress!) }
        }
        return try result!.get()
    }

    /// The capability chain starting at `offset` (VFIO's `cap_offset`): each
    /// header's id, version and offset. Stops at a zero `next`, an out-of-range
    /// offset or a loop, so a malformed chain cannot hang or overrun.
    package func capabilities(from offset: UInt32) -> [VFIOCapability] {
        var caps: [VFIOCapability] = []
        var next = Int(offset)
        var seen = Set<Int>()
        while next != 0, let h = load(vfio_info_cap_header.self, at: next), seen.insert(next).inserted {
            caps.append(VFIOCapability(id: h.id, version: h.version, offset: next))
            next = Int(h.next)
        }
        return caps
    }
}

/// One entry of a VFIO capability chain (`struct vfio_info_cap_header`).
public struct VFIOCapability: Sendable, Equatable {
    /// The capability id (`VFIO_*_CAP_*`).
    public var id: UInt16
    /// The capability's version.
    public var version: UInt16
    /// Byte offset of the capability's header from the start of the info struct.
    public var offset: Int
}

extension OwnedFD {
    /// Calls a VFIO info ioctl whose answer may not fit: the kernel writes the
    /// size it needs into `argsz`, and a second call with that size gets the
    /// whole capability chain.
    package func growingIoctl<H: VFIOArgument>(
        _ request: Request, _ header: H, object: @autoclosure () -> String? = nil
    ) throws(VFIOError) -> KernelBytes<H> {
        var buffer = KernelBytes(header, count: MemoryLayout<H>.size)
        _ = try buffer.withUnsafeMutableRawPointer { (p) throws(VFIOError) in try ioctl(request, p, object: object()) }
        let needed = Int(buffer.header.argsz)
        guard needed > buffer.count else { return buffer }
        var h = header
        h.argsz = UInt32(needed)
        buffer = KernelBytes(h, count: needed)
        _ = try buffer.withUnsafeMutableRawPointer { (p) throws(VFIOError) in try ioctl(request, p, object: object()) }
        return buffer
    }
}

extension KernelBytes {
    /// Test hook: write into the raw bytes.
    package mutating func withUnsafeBytesForTest(_ body: (UnsafeMutableRawBufferPointer) -> Void) {
        storage.withUnsafeMutableBytes { body($0) }
    }
}
