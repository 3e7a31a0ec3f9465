import CVFIO
import Synchronization
import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A range of one PCI BAR of a vfio-pci device, exported as a dma-buf
/// (`VFIO_DEVICE_FEATURE_DMA_BUF`), for peer-to-peer DMA: mapped into an IOAS
/// with ``IOAS/map(_:at:readable:writable:)-(BARDMABuf,_,_,_)``
/// (`IOMMU_IOAS_MAP_FILE`), it lets the devices attached to that IOAS reach
/// this device's registers or memory at an IOVA.
///
/// Made by ``VFIODevice/exportDMABuf(bar:offset:length:)``. The owner of the
/// dma-buf's fd: it is `~Copyable`, so there is one owner; ``close()``
/// (consuming) closes the fd and reports errors, and dropping it closes the fd
/// quietly.
///
/// ## What keeps what alive
///
/// - The kernel's dma-buf holds the device's VFIO *registration*, not its
///   open file: it does not keep the device open.
/// - A mapping (``BARMapping``) holds the kernel's own reference to the
///   dma-buf: closing this owner after mapping does not unmap anything.
/// - This owner and every ``BARMapping`` keep their ``device`` object (so its
///   fd) alive: dropping references never closes the exporter under a mapping.
///
/// ## Revocation
///
/// vfio-pci revokes the device's dma-bufs whenever the device stops decoding
/// memory: a reset (`VFIO_DEVICE_RESET`, a bus or slot hot reset), memory
/// decoding turned off in the PCI command register, runtime low power (D3),
/// and for good when the device is released (its fd and every mmap of its
/// regions gone). iommufd then unmaps the range from the IOMMU and never maps
/// it again, even after vfio-pci lifts the revocation (the device decodes
/// memory again): DMA to those IOVAs faults from then on, while the IOVA
/// range stays taken until it is unmapped. The kernel tells userspace none of
/// this, so VFIOKit records these events when it performs them on the
/// exporting ``VFIODevice`` object (``VFIODevice/reset()``,
/// ``VFIODevice/hotReset()``, ``VFIODevice/enterLowPower()``, a config-space
/// write that clears memory decoding, ``VFIODevice/close()``), and a mapping
/// reports them: ``BARMapping/revocation`` and ``BARMapping/checkLive()``.
/// Events it does not perform are not seen: a hot reset issued through
/// another device of the same bus, another process sharing the fd, raw
/// ioctls or writes on the device fd.
public struct BARDMABuf: ~Copyable, Sendable {
    /// The exporting device (kept alive by this owner).
    public let device: VFIODevice
    /// The BAR (VFIO region index 0-5).
    public let bar: Int
    /// Where the range starts in the BAR, in bytes.
    public let offset: UInt64
    /// Bytes exported.
    public let length: UInt64
    /// The dma-buf's fd.
    let file: OwnedFD

    init(device: VFIODevice, bar: Int, offset: UInt64, length: UInt64, file: OwnedFD) {
        self.device = device
        self.bar = bar
        self.offset = offset
        self.length = length
        self.file = file
    }

    /// "/dev/vfio/devices/vfio1 BAR 0 [0x0, +4096)", for errors.
    public var label: String { BARDMABuf.label(device, bar, offset, length) }

    static func label(_ device: VFIODevice, _ bar: Int, _ offset: UInt64, _ length: UInt64) -> String {
        "\(device.label) BAR \(bar) [0x\(String(offset, radix: 16)), +\(length))"
    }

    /// Runs `body` with the dma-buf's fd number (open for the call), for
    /// importers VFIOKit does not wrap.
    public func withDescriptor<R>(_ body: (Int32) throws(VFIOError) -> R) throws(VFIOError) -> R {
        try file.withDescriptor(.ioctl(.iommuIOASMapFile), body)
    }

    /// Closes the dma-buf's fd and reports the kernel's answer. Mappings made
    /// from it keep their own reference and stay mapped.
    public consuming func close() throws(VFIOError) { try file.close() }
}

extension VFIOError.Step {
    /// Checking a ``BARMapping`` (``BARMapping/checkLive()``): its dma-buf was revoked.
    public static let barMapping: VFIOError.Step = "BAR mapping"
}

/// An event that revokes a device's dma-bufs. Recorded on every close and reset,
/// exported or not, so it is a value; its words are built only when read.
enum RevocationEvent {
    case reset, failedReset, hotReset, memoryDecodingOff, lowPower, closed, closedAndLastRegionUnmapped

    /// The event in words, naming the device by `label`.
    func describe(_ label: String) -> String {
        switch self {
        case .reset: "VFIO_DEVICE_RESET of \(label)"
        case .failedReset: "VFIO_DEVICE_RESET of \(label) (which failed)"
        case .hotReset: "a hot reset of the bus or slot of \(label)"
        case .memoryDecodingOff: "memory decoding of \(label) was turned off (PCI command register)"
        case .lowPower: "\(label) entered low power (D3)"
        case .closed: "\(label) was closed: the kernel released it"
        case .closedAndLastRegionUnmapped: "\(label) was closed and its last region mmap went: the kernel released it"
        }
    }
}

/// What a device records for the dma-bufs of its BARs (see ``BARDMABuf``).
struct ExportRecord {
    /// Bumped by every event that revokes the device's dma-bufs.
    var generation: UInt64 = 0
    /// The last such event.
    var lastRevocation: RevocationEvent?
    /// The device was released: its dma-bufs are revoked for good.
    var released = false
    /// Mapped MMIORegions: each holds the kernel's file, so a close releases
    /// the device only when they are gone too.
    var mappedRegions = 0
    /// close() ran while regions were mapped: the release comes with the last unmap.
    var releasePending = false
}

extension VFIODevice {
    /// Exports `length` bytes of BAR `bar` from `offset` as a dma-buf, for
    /// peer-to-peer DMA by the devices of an IOAS
    /// (``IOAS/map(_:at:readable:writable:)-(BARDMABuf,_,_,_)``). Offset and
    /// length must be non-zero multiples of the page size (offset may be 0)
    /// and lie inside the BAR, which must be a memory BAR. A cdev device must
    /// be bound to an iommufd first. See ``BARDMABuf`` for what it keeps alive
    /// and when the kernel revokes it.
    /// The corresponding ioctl is `VFIO_DEVICE_FEATURE` with `VFIO_DEVICE_FEATURE_DMA_BUF`.
    public func exportDMABuf(bar: Int, offset: UInt64 = 0, length: UInt64) throws(VFIOError) -> BARDMABuf {
        let what = BARDMABuf.label(self, bar, offset, length)
        guard (0...5).contains(bar) else {
            throw VFIOError.invalid(.ioctl(.vfioDeviceFeature), "DMA_BUF: BAR \(bar) does not exist (BARs are regions 0 to 5)",
                                    object: label)
        }
        let page = UInt64(try Sys.pageSize(fd.kernel))
        guard length > 0, offset % page == 0, length % page == 0 else {
            throw VFIOError.invalid(.ioctl(.vfioDeviceFeature),
                                    "DMA_BUF: \(what): offset and length must be multiples of the page size (\(page) bytes), "
                                        + "and the length non-zero", object: label,
                                    remedies: [.advice("round the range out to whole pages")])
        }
        let file: OwnedFD
        do throws(VFIOError) {
            file = try exportDMABuf(region: UInt32(bar), ranges: [(offset, length)])
        } catch {
            var e = error
            switch e.errno {
            case .inappropriateIOCTLForDevice?, .notSupported?:
                e.detail = "not supported by this device or kernel: vfio-pci exports BARs as dma-bufs when the kernel has "
                    + "CONFIG_VFIO_PCI_DMABUF (with CONFIG_PCI_P2PDMA); variant drivers may not"
                e.remedies = [.advice("probeFeature(VFIO_DEVICE_FEATURE_DMA_BUF) tells; without it only the legacy type1 "
                    + "container maps a BAR, by the address of its mmap")]
            case .noSuchDevice?:
                e.detail = "\(what): BAR \(bar) is not a memory BAR whose resources vfio-pci claimed (an I/O port BAR, an "
                    + "unimplemented BAR, or the ROM), or the device is going away"
            case .invalidArgument?:
                e.detail = "\(what): the range must lie inside the BAR (see regionInfo(_:).size), in whole pages"
            default: break
            }
            throw e
        }
        return BARDMABuf(device: self, bar: bar, offset: offset, length: length, file: file)
    }

    /// This device's revocation generation now (see ``BARMapping``).
    var exportGeneration: UInt64 { exports.withLock { $0.generation } }

    /// Records that the kernel revoked this device's dma-bufs.
    func noteRevocation(_ event: RevocationEvent) {
        exports.withLock { r in
            r.generation &+= 1
            r.lastRevocation = event
            if event == .closed || event == .closedAndLastRegionUnmapped { r.released = true }
        }
    }

    /// A region of the device was mmapped (an ``MMIORegion``).
    func regionMapped() { exports.withLock { $0.mappedRegions += 1 } }

    /// A region's mmap went: when it was the last after ``close()``, the kernel released the device now.
    func regionUnmapped() {
        let released = exports.withLock { r -> Bool in
            r.mappedRegions -= 1
            guard r.mappedRegions == 0, r.releasePending else { return false }
            r.releasePending = false
            return true
        }
        if released { noteRevocation(.closedAndLastRegionUnmapped) }
    }

    /// ``close()`` ran: the kernel releases the device now, or with the last region unmap.
    func noteClosed() {
        let now = exports.withLock { r -> Bool in
            if r.mappedRegions > 0 { r.releasePending = true; return false }
            return true
        }
        if now { noteRevocation(.closed) }
    }

    /// A config-space write of `bytes` at `offset`: records a revocation when
    /// it clears memory decoding in the command register (vfio-pci revokes then).
    func noteConfigWrite(at offset: UInt64, _ bytes: UnsafeRawBufferPointer) {
        guard offset <= 4, offset + UInt64(bytes.count) > 4 else { return }
        if bytes[Int(4 - offset)] & 0x2 == 0 {
            noteRevocation(.memoryDecodingOff)
        }
    }
}
