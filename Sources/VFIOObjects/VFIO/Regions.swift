import CVFIO
import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What `VFIO_DEVICE_GET_INFO` reports.
public struct VFIODeviceInfo: Sendable, Equatable {
    /// `VFIO_DEVICE_FLAGS_*` (PCI, reset, CAPS, ...).
    public var flags: UInt32
    /// Regions the device has (`num_regions`): for vfio-pci, the BARs, ROM, config, VGA and device-specific ones.
    public var regionCount: Int
    /// Interrupt indexes the device has (`num_irqs`).
    public var irqCount: Int
    /// The capability chain (zPCI, PCI atomic completer, ...): ids and versions.
    public var capabilities: [VFIOCapability]
    /// PCI atomic completer support, when reported (`VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP`).
    public var pciAtomicCompleterFlags: UInt32?

    /// A PCI device (`VFIO_DEVICE_FLAGS_PCI`).
    public var isPCI: Bool { flags & VFIO_DEVICE_FLAGS_PCI != 0 }
    /// The device supports `VFIO_DEVICE_RESET` (a function-level or other reset).
    public var supportsReset: Bool { flags & VFIO_DEVICE_FLAGS_RESET != 0 }
}

/// One region of a device: a BAR, the ROM, config space, VGA, or a
/// device-specific region described by a type capability.
public struct VFIORegionInfo: Sendable, Equatable {
    /// The region index (the BAR number for BARs; see ``PCIRegion``).
    public var index: UInt32
    /// `VFIO_REGION_INFO_FLAG_*` (read, write, mmap, caps).
    public var flags: UInt32
    /// Region size in bytes (0: the region does not exist, e.g. an unused BAR).
    public var size: UInt64
    /// Offset of the region within the device fd (for pread/pwrite/mmap).
    public var offset: UInt64
    /// Areas that may be mmapped, when only parts of the region may be
    /// (`VFIO_REGION_INFO_CAP_SPARSE_MMAP`); nil means the whole region if
    /// ``isMappable``.
    public var sparseAreas: [Area]?
    /// `VFIO_REGION_INFO_CAP_TYPE`: (type, subtype) of a device-specific region.
    public var type: (type: UInt32, subtype: UInt32)?
    /// The MSI-X table may be mmapped (`VFIO_REGION_INFO_CAP_MSIX_MAPPABLE`).
    public var msixMappable: Bool
    /// The raw capability chain of the region.
    public var capabilities: [VFIOCapability]

    /// One mappable area of a region with sparse mmap (`VFIO_REGION_INFO_CAP_SPARSE_MMAP`).
    public struct Area: Sendable, Equatable {
        /// Where the area starts in the region.
        public var offset: UInt64
        /// The area's length in bytes.
        public var size: UInt64
    }

    /// The region can be read (`VFIO_REGION_INFO_FLAG_READ`).
    public var isReadable: Bool { flags & VFIO_REGION_INFO_FLAG_READ != 0 }
    /// The region can be written (`VFIO_REGION_INFO_FLAG_WRITE`).
    public var isWritable: Bool { flags & VFIO_REGION_INFO_FLAG_WRITE != 0 }
    /// The region can be mapped with `mmap` (`VFIO_REGION_INFO_FLAG_MMAP`).
    public var isMappable: Bool { flags & VFIO_REGION_INFO_FLAG_MMAP != 0 }

    public static func == (a: Self, b: Self) -> Bool {
        a.index == b.index && a.flags == b.flags && a.size == b.size && a.offset == b.offset
            && a.sparseAreas == b.sparseAreas && a.type?.type == b.type?.type && a.type?.subtype == b.type?.subtype
            && a.msixMappable == b.msixMappable && a.capabilities == b.capabilities
    }
}

/// The fixed vfio-pci region indexes.
public enum PCIRegion {
    /// The index of BAR `n` (0...5): `VFIO_PCI_BAR0_REGION_INDEX` + n.
    public static func bar(_ n: Int) -> UInt32 { precondition((0...5).contains(n)); return UInt32(n) }
    /// The expansion ROM (`VFIO_PCI_ROM_REGION_INDEX`).
    public static let rom = UInt32(VFIO_PCI_ROM_REGION_INDEX)
    /// Config space (`VFIO_PCI_CONFIG_REGION_INDEX`): see ``VFIODevice/configSpace()``.
    public static let config = UInt32(VFIO_PCI_CONFIG_REGION_INDEX)
    /// Legacy VGA ranges (`VFIO_PCI_VGA_REGION_INDEX`).
    public static let vga = UInt32(VFIO_PCI_VGA_REGION_INDEX)
}

extension VFIODevice {
    /// Flags, region and IRQ counts and capabilities. The corresponding ioctl
    /// is `VFIO_DEVICE_GET_INFO`.
    public func info() throws(VFIOError) -> VFIODeviceInfo {
        let bytes: KernelBytes<vfio_device_info>
        do throws(VFIOError) {
            bytes = try fd.growingIoctl(.vfioDeviceGetInfo, vfio_device_info.make(), object: label)
        } catch {
            throw explainUnbound(error)
        }
        let h = bytes.header
        let caps = h.flags & VFIO_DEVICE_FLAGS_CAPS != 0 ? bytes.capabilities(from: h.cap_offset) : []
        var atomic: UInt32?
        if let c = caps.first(where: { $0.id == VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP }),
           let cap = bytes.load(vfio_device_info_cap_pci_atomic_comp.self, at: c.offset) {
            atomic = cap.flags
        }
        return VFIODeviceInfo(flags: h.flags, regionCount: Int(h.num_regions), irqCount: Int(h.num_irqs),
                              capabilities: caps, pciAtomicCompleterFlags: atomic)
    }

    /// One region's flags, size, fd offset and capabilities (sparse mmap areas,
    /// type). The corresponding ioctl is `VFIO_DEVICE_GET_REGION_INFO`.
    public func regionInfo(_ index: UInt32) throws(VFIOError) -> VFIORegionInfo {
        var header = vfio_region_info.make()
        header.index = index
        do throws(VFIOError) {
            return VFIORegionInfo(parsing: try fd.growingIoctl(.vfioDeviceGetRegionInfo, header,
                                                               object: "\(label) region \(index)"))
        } catch {
            throw explainUnbound(error)
        }
    }
}

extension VFIORegionInfo {
    /// Decodes a region info buffer with its capability chain.
    init(parsing bytes: KernelBytes<vfio_region_info>) {
        let h = bytes.header
        let caps = h.flags & VFIO_REGION_INFO_FLAG_CAPS != 0 ? bytes.capabilities(from: h.cap_offset) : []
        var sparse: [Area]?
        var type: (UInt32, UInt32)?
        var msix = false
        for c in caps {
            switch c.id {
            case VFIO_REGION_INFO_CAP_SPARSE_MMAP:
                guard let cap = bytes.load(vfio_region_info_cap_sparse_mmap.self, at: c.offset) else { continue }
                let first = c.offset + MemoryLayout<vfio_region_info_cap_sparse_mmap>.size
                var areas: [Area] = []
                for i in 0..<Int(cap.nr_areas) {
                    guard let a = bytes.load(vfio_region_sparse_mmap_area.self,
                                             at: first + i * MemoryLayout<vfio_region_sparse_mmap_area>.stride)
                    else { break }
                    areas.append(Area(offset: a.offset, size: a.size))
                }
                sparse = areas
            case VFIO_REGION_INFO_CAP_TYPE:
                if let cap = bytes.load(vfio_region_info_cap_type.self, at: c.offset) { type = (cap.type, cap.subtype) }
            case VFIO_REGION_INFO_CAP_MSIX_MAPPABLE:
                msix = true
            default:
                break
            }
        }
        self.init(index: h.index, flags: h.flags, size: h.size, offset: h.offset, sparseAreas: sparse,
                  type: type, msixMappable: msix, capabilities: caps)
    }
}

extension VFIODevice {
    /// Reads `buffer.count` bytes at `offset` within a region, through the
    /// device fd (works for every readable region, mappable or not).
    public func read(region: VFIORegionInfo, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(VFIOError) {
        try transfer(region, offset, buffer.count, write: false) { (position, object) throws(VFIOError) in
            try fd.pread(buffer, at: position, object: object())
        }
    }

    /// Writes `bytes` at `offset` within a region, through the device fd.
    public func write(region: VFIORegionInfo, at offset: UInt64, _ bytes: UnsafeRawBufferPointer) throws(VFIOError) {
        try transfer(region, offset, bytes.count, write: true) { (position, object) throws(VFIOError) in
            try fd.pwrite(bytes, at: position, object: object())
        }
        // Memory decoding turned off revokes the device's dma-bufs (BARDMABuf).
        if region.index == PCIRegion.config { noteConfigWrite(at: offset, bytes) }
    }

    /// Checks an access of `count` bytes at `offset` in `region`, has `io` (a
    /// pread or pwrite at the file position, given the object to name in errors) move them, and
    /// throws when it moved fewer.
    private func transfer(_ region: VFIORegionInfo, _ offset: UInt64, _ count: Int, write: Bool,
                          _ io: (_ position: Int64, _ object: () -> String) throws(VFIOError) -> Int) throws(VFIOError) {
        let op: VFIOError.Operation = write ? .syscall(.pwrite) : .syscall(.pread)
        try checkAccess(region, offset, count, write: write)
        let n = try io(try filePosition(region, offset, op)) { "\(label) region \(region.index) + 0x\(String(offset, radix: 16))" }
        if n != count {
            throw VFIOError.invalid(op, "short \(write ? "write" : "read"): \(n) of \(count) bytes", object: "\(label) region \(region.index)")
        }
    }

    /// Reads a little-endian integer from a region.
    public func read<T: FixedWidthInteger>(_: T.Type = T.self, region: VFIORegionInfo, at offset: UInt64) throws(VFIOError) -> T {
        var v: T = 0
        try withUnsafeMutableBytes(of: &v) { (raw) throws(VFIOError) in try read(region: region, at: offset, into: raw) }
        return T(littleEndian: v)
    }

    /// Writes a little-endian integer to a region.
    public func write<T: FixedWidthInteger>(_ value: T, region: VFIORegionInfo, at offset: UInt64) throws(VFIOError) {
        var v = value.littleEndian
        try withUnsafeBytes(of: &v) { (raw) throws(VFIOError) in try write(region: region, at: offset, raw) }
    }

    /// The device fd position of `offset` in `region`. The region's fd offset is the
    /// kernel's answer (VFIO_DEVICE_GET_REGION_INFO): one that does not fit a file
    /// position with `offset` added is an error, never a trap.
    @inline(__always)
    private func filePosition(_ region: VFIORegionInfo, _ offset: UInt64, _ op: VFIOError.Operation) throws(VFIOError) -> Int64 {
        let (position, wrapped) = region.offset.addingReportingOverflow(offset)
        guard !wrapped, position <= UInt64(Int64.max) else { throw positionError(region, offset, op) }
        return Int64(position)
    }

    // The checks of every config read and write are inline; their errors are built out of line
    // (called, the two checks cost about 60 of a config read's 270 user instructions).
    @inline(never)
    private func positionError(_ region: VFIORegionInfo, _ offset: UInt64, _ op: VFIOError.Operation) -> VFIOError {
        VFIOError.invalid(op, "region \(region.index) starts at device fd offset 0x\(String(region.offset, radix: 16)); "
                          + "0x\(String(offset, radix: 16)) past it is beyond the largest file offset "
                          + "(the driver's VFIO_DEVICE_GET_REGION_INFO answer is not usable)", object: label)
    }

    @inline(__always)
    private func checkAccess(_ region: VFIORegionInfo, _ offset: UInt64, _ count: Int, write: Bool) throws(VFIOError) {
        let allowed = write ? region.isWritable : region.isReadable
        if !allowed || offset > region.size || UInt64(count) > region.size - offset {
            throw accessError(region, offset, count, write: write)
        }
    }

    @inline(never)
    private func accessError(_ region: VFIORegionInfo, _ offset: UInt64, _ count: Int, write: Bool) -> VFIOError {
        let op: VFIOError.Operation = write ? .syscall(.pwrite) : .syscall(.pread)
        if write ? !region.isWritable : !region.isReadable {
            return VFIOError.invalid(op, "region \(region.index) is not \(write ? "writable" : "readable")", object: label)
        }
        return VFIOError.invalid(op, "\(count) bytes at 0x\(String(offset, radix: 16)) run past the end of region "
                                 + "\(region.index) (size 0x\(String(region.size, radix: 16)))", object: label)
    }

    /// Maps a whole mappable region (a BAR) into memory for direct loads and
    /// stores. The region keeps this device open while it is mapped.
    /// Regions with sparse areas: map an area with ``map(region:area:)``.
    public func map(region: VFIORegionInfo) throws(VFIOError) -> MMIORegion {
        guard region.isMappable else {
            throw VFIOError.invalid(.syscall(.mmap), "region \(region.index) cannot be mmapped (no VFIO_REGION_INFO_FLAG_MMAP)",
                                    object: label, remedies: [.advice("use read(region:at:)/write(_:region:at:) through the device fd")])
        }
        if let areas = region.sparseAreas, !(areas.count == 1 && areas[0].offset == 0 && areas[0].size == region.size) {
            throw VFIOError.invalid(.syscall(.mmap), "region \(region.index) may only be mmapped in parts: \(areas.map { "0x\(String($0.offset, radix: 16))+0x\(String($0.size, radix: 16))" }.joined(separator: ", "))",
                                    object: label, remedies: [.advice("map one area with map(region:area:)")])
        }
        return try mapRange(region, offset: 0, length: region.size)
    }

    /// Maps one sparse-mmap area of a region.
    public func map(region: VFIORegionInfo, area: VFIORegionInfo.Area) throws(VFIOError) -> MMIORegion {
        guard region.isMappable, region.sparseAreas?.contains(area) ?? (area.offset == 0 && area.size == region.size) else {
            throw VFIOError.invalid(.syscall(.mmap), "0x\(String(area.offset, radix: 16))+0x\(String(area.size, radix: 16)) is not a mappable area of region \(region.index)", object: label)
        }
        return try mapRange(region, offset: area.offset, length: area.size)
    }

    private func mapRange(_ region: VFIORegionInfo, offset: UInt64, length: UInt64) throws(VFIOError) -> MMIORegion {
        guard length > 0 else { throw VFIOError.invalid(.syscall(.mmap), "region \(region.index) is empty", object: label) }
        guard length <= UInt64(Int.max) else {
            throw VFIOError.invalid(.syscall(.mmap), "region \(region.index) is 0x\(String(length, radix: 16)) bytes, more than an address space holds",
                                    object: label)
        }
        let position = try filePosition(region, offset, .syscall(.mmap))
        var prot: Int32 = 0
        if region.isReadable { prot |= PROT_READ }
        if region.isWritable { prot |= PROT_WRITE }
        let p = try fd.mmap(length: Int(length), protection: prot, flags: MAP_SHARED,
                            offset: position, object: "\(label) region \(region.index)")
        return MMIORegion(device: self, base: p, length: Int(length), regionIndex: region.index, regionOffset: offset,
                          kernel: fd.kernel)
    }
}
