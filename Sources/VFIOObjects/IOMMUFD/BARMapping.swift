import CVFIO
import VFIOSystem

/// A device's BAR range (a ``BARDMABuf``) mapped into an IOAS: the devices
/// attached to the IOAS reach it by DMA at ``iova`` (peer-to-peer DMA through
/// the IOMMU).
///
/// Like `DMAMapping` for memory: it keeps its IOAS and the exporting device
/// alive, unmaps exactly its range when it ends (nothing after
/// ``IOAS/unmapAll()``, which leaves it inert), and blocks ``IOAS/destroy()``
/// and raw unmaps of its range while it lives. The kernel's mapping holds its
/// own reference to the dma-buf, so the ``BARDMABuf`` may be closed once it is
/// mapped.
///
/// When the kernel revokes the dma-buf (a reset, memory decoding off, low
/// power, the exporter's release; see ``BARDMABuf``), iommufd unmaps the range
/// from the IOMMU for good and DMA to it faults. VFIOKit records the
/// revocations it performs on the exporting device: ``revocation`` says why,
/// ``checkLive()`` throws an error that says so and what to do.
public struct BARMapping: ~Copyable, Sendable {
    /// Where the attached devices see the BAR range.
    public let iova: IOVA
    /// Bytes mapped (the whole dma-buf).
    public let length: UInt64
    /// The IOAS it is mapped into.
    public let ioas: IOAS
    /// The exporting device.
    public let device: VFIODevice
    /// The BAR (VFIO region index).
    public let bar: Int
    /// Where the mapped range starts in the BAR.
    public let barOffset: UInt64
    let slot: Int32
    /// The exporter's revocation generation before the map.
    let generation: UInt64
    private var live = true

    init(iova: IOVA, dmaBuf: borrowing BARDMABuf, ioas: IOAS, slot: Int32, generation: UInt64) {
        self.iova = iova
        length = dmaBuf.length
        self.ioas = ioas
        device = dmaBuf.device
        bar = dmaBuf.bar
        barOffset = dmaBuf.offset
        self.slot = slot
        self.generation = generation
    }

    /// The last IOVA of the mapping, `iova + length - 1`.
    public var lastIOVA: IOVA { IOVA(iova.rawValue &+ (length &- 1)) }

    /// "/dev/vfio/devices/vfio1 BAR 0 [0x0, +4096)", for errors.
    public var label: String { BARDMABuf.label(device, bar, barOffset, length) }

    /// Why the kernel stopped translating this mapping, when VFIOKit performed
    /// the event (a reset, memory decoding off, low power, the exporter's
    /// release); nil while it translates as far as VFIOKit knows.
    public var revocation: String? {
        device.exports.withLock { r in r.generation == generation ? nil : r.lastRevocation }?.describe(device.label)
    }

    /// Throws when the kernel revoked the mapping (see ``revocation``): the
    /// error says why, that DMA to the range now faults, and what to do.
    public func checkLive() throws(VFIOError) {
        let (reason, released) = device.exports.withLock { r in
            (r.generation == generation ? nil : r.lastRevocation, r.released)
        }
        guard let reason = reason?.describe(device.label) else { return }
        let range = "IOVA 0x\(String(iova.rawValue, radix: 16))-0x\(String(lastIOVA.rawValue, radix: 16))"
        throw VFIOError.invalid(
            .step(.barMapping),
            "the kernel revoked the dma-buf of \(label) mapped at \(range): \(reason). iommufd unmapped the range from the "
                + "IOMMU and never maps it again (DMA to it faults); the IOVA range stays taken until it is unmapped",
            object: ioas.label,
            remedies: [.advice(released
                ? "unmap it (BARMapping.unmap()), open the device again, export the BAR again "
                    + "(VFIODevice.exportDMABuf(bar:offset:length:)) and map the new dma-buf (IOAS.map(_:at:))"
                : "unmap it (BARMapping.unmap()) and, once the device decodes memory again, map its dma-buf again "
                    + "(IOAS.map(_:at:)), or export the BAR again (VFIODevice.exportDMABuf(bar:offset:length:))")])
    }

    /// Unmaps now and reports the kernel's answer (a revoked mapping unmaps
    /// like any other). An inert mapping (after ``IOAS/unmapAll()``) issues
    /// nothing. The corresponding ioctl is `IOMMU_IOAS_UNMAP`.
    public consuming func unmap() throws(VFIOError) {
        live = false
        _ = try ioas.unmapOwned(iova: iova.rawValue, length: length, slot: slot)
    }

    deinit {
        if live { _ = try? ioas.unmapOwned(iova: iova.rawValue, length: length, slot: slot) }
    }
}

extension IOAS {
    /// Maps a BAR range exported as a dma-buf
    /// (``VFIODevice/exportDMABuf(bar:offset:length:)``) at `iova` (or where
    /// the kernel chooses, when nil): the devices attached to this IOAS then
    /// reach the BAR by DMA there. The mapping keeps the exporting device and
    /// this IOAS alive; the dma-buf may be closed afterwards. See
    /// ``BARMapping`` for unmapping and revocation. Native iommufd only: a
    /// BAR's mmap cannot be mapped by address (EFAULT).
    /// The corresponding ioctl is `IOMMU_IOAS_MAP_FILE`.
    public func map(_ dmaBuf: borrowing BARDMABuf, at iova: IOVA?, readable: Bool = true, writable: Bool = true)
        throws(VFIOError) -> BARMapping
    {
        // Taken before the map: a revocation that races the map counts against the mapping.
        let generation = dmaBuf.device.exportGeneration
        let mapped: (iova: IOVA, slot: Int32)
        do throws(VFIOError) {
            mapped = try mapFileOwned(dmaBuf.file, length: dmaBuf.length, at: iova, readable: readable, writable: writable)
        } catch {
            var e = error
            let what = dmaBuf.label
            switch e.errno {
            case .noSuchDevice?:
                let released = dmaBuf.device.exports.withLock { $0.released }
                e.detail = "the dma-buf of \(what) is revoked: the device does not decode memory now (memory decoding off "
                    + "in its command register, low power, a reset in progress) or was released (closed)"
                e.remedies = [.advice(released
                    ? "open the device again and export the BAR again (VFIODevice.exportDMABuf(bar:offset:length:))"
                    : "turn memory decoding back on (PCIConfigSpace.setCommand with .memorySpace) or leave low power "
                        + "(VFIODevice.exitLowPower()), then map again")]
            case .notSupported?, .inappropriateIOCTLForDevice?:
                e.detail = "this kernel's iommufd cannot import the dma-buf of \(what) (it takes vfio-pci dma-bufs of one "
                    + "range, with CONFIG_VFIO_PCI_DMABUF and CONFIG_DMA_SHARED_BUFFER)"
            default:
                e.detail = (e.detail.map { $0 + "; " } ?? "") + "mapping the dma-buf of \(what)"
            }
            throw e
        }
        return BARMapping(iova: mapped.iova, dmaBuf: dmaBuf, ioas: self, slot: mapped.slot, generation: generation)
    }
}
