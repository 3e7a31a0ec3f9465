// The front door for a driver: from a PCI address to a device that is open,
// bound and attached to an IOMMU address space, with its BARs, DMA memory and
// interrupts one call away. It lives here because it needs both sides: the
// host (sysfs: which node, which group, who holds it) and the kernel objects.

import FoundationEssentials
import Synchronization

/// A PCI function (or an mdev) opened for a userspace driver: its VFIO device open,
/// bound and attached to a ``DMASpace``, so the device can do DMA to exactly
/// the memory mapped there (and nowhere else).
///
///     let nvme = try AttachedDevice.open(try PCIAddress(parsing: "0000:00:05.0"))
///     let bar0 = try nvme.bar(0)                          // registers and doorbells
///     try nvme.setBusMaster(true)                         // the device may now DMA
///     let ring = try nvme.allocateDMA(bytes: 16384)       // memory + its IOVA
///     bar0.store64(ring.iova.rawValue, at: 0x28)          // the device's address of it
///     let vectors = try nvme.interrupts(.msix, count: 2)  // off again when released
///     _ = try vectors[1].wait(timeout: .seconds(1))
///
/// The device must be on vfio-pci (`PCIDevice.isBoundToVFIO`); errors say
/// when it is not, who holds its IOMMU group, or what permission is missing.
/// An mdev opens the same way by its UUID (``VFIODeviceName/mdev(_:)``), and
/// an SR-IOV VF of a PF on vfio-pci with the PF's VF token (`vfToken:`).
///
/// Lifetimes follow the kernel's order without the caller's help: the device
/// keeps its space (iommufd and IOAS, or group and container) alive; a BAR
/// (``MMIORegion``), a DMA mapping and an interrupt handle each keep what
/// they need. ``close()`` unmaps the BARs and closes the device fd (the
/// kernel turns off its interrupts and bus mastering as it takes the device
/// back), so vfio-pci can give the device to a kernel driver even while
/// copies of this object or of a BAR remain; the space goes with its last
/// mapping and device.
///
/// Lower doors, for what this one does not cover: ``device`` is the
/// ``VFIODevice`` (regions, features, resets, PASIDs); ``space`` the
/// ``DMASpace`` (its IOAS or container); and `VFIODevice.open(cdev:)`,
/// `VFIOGroup(number:)`, ``IOMMUFD`` and ``IOAS`` open the kernel's objects
/// one by one.
public final class AttachedDevice: Sendable {
    /// The BARs ``bar(_:)`` mapped that are still alive, for ``close()`` to unmap.
    private let bars = Mutex<[MappedBAR]>([])
    private struct MappedBAR { weak var region: MMIORegion? }

    /// The device: a PCI function or an mdev.
    public let name: VFIODeviceName
    /// The PCI function; nil for an mdev (``name`` has its UUID).
    public var address: PCIAddress? { name.pciAddress }
    /// The VFIO device (the lower-level API: regions, features, resets).
    public let device: VFIODevice
    /// The address space the device is attached to; devices opened ``open(_:in:host:)``
    /// in the same space see the same mappings.
    public let space: DMASpace

    init(name: VFIODeviceName, device: VFIODevice, space: DMASpace) {
        self.name = name
        self.device = device
        self.space = space
    }

    /// How the device reaches its address space (one of the five ``DMAMode``s).
    public var mode: DMAMode { space.mode }

    // MARK: opening

    /// Opens the device in an address space of its own: in `mode`, or (nil)
    /// the best the kernel and the device offer (native iommufd when the
    /// device has a VFIO cdev, else the best container mode; ``DMAMode/best(among:)``).
    /// `dmaMask` bounds the IOVAs the space hands out (the device's DMA
    /// addressing limit, e.g. `(1 << 32) - 1`). Nothing stays open when it throws.
    /// The corresponding ioctls are `VFIO_DEVICE_BIND_IOMMUFD` and
    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` (iommufd), or `VFIO_GROUP_SET_CONTAINER`,
    /// `VFIO_SET_IOMMU` and `VFIO_GROUP_GET_DEVICE_FD` (containers).
    public static func open(_ address: PCIAddress, mode: DMAMode? = nil, dmaMask: UInt64 = .max,
                            host: PCIHost = .system) throws(VFIOError) -> AttachedDevice
    {
        try open(.pci(address), mode: mode, dmaMask: dmaMask, host: host)
    }

    /// Opens a PCI function or an mdev in an address space of its own, as
    /// ``open(_:mode:dmaMask:host:)`` does. An mdev's
    /// parent driver reaches the mapped memory itself (an emulated IOMMU:
    /// `iommufd_access`, or the type1 container's pinning), so every mode
    /// works for it. `vfToken`: the PF's VF token, for an SR-IOV VF of a PF on
    /// vfio-pci (``DMASpace/openDevice(_:vfToken:requireAllGroupMembersBound:host:)``).
    public static func open(_ name: VFIODeviceName, mode: DMAMode? = nil, dmaMask: UInt64 = .max, vfToken: UUID? = nil,
                            host: PCIHost = .system) throws(VFIOError) -> AttachedDevice
    {
        let hasCdev: Bool
        switch name {
        case .pci(let a): hasCdev = try host.vfioDevice(a).vfioCdev != nil
        case .mdev(let u): hasCdev = try host.mdev(u).vfioCdevPath != nil
        }
        let chosen: DMAMode
        if let mode {
            chosen = mode
        } else {
            let offered = DMAMode.available()
            // Native iommufd needs this device's cdev, not only the kernel's support.
            let usable = hasCdev ? offered : offered.filter { $0 != .iommufd }
            guard let best = DMAMode.best(among: usable) else {
                throw DMASpace.noModeError(object: name.description)
            }
            chosen = best
        }
        let space: DMASpace
        do throws(VFIOError) {
            space = try DMASpace(mode: chosen, dmaMask: dmaMask)
        } catch {
            throw host.explainAccess(error)
        }
        return try open(name, in: space, vfToken: vfToken, host: host)
    }

    /// Opens the device in `space`, which other devices may share (their
    /// mappings are one address space; iommufd: one context and IOAS,
    /// containers: one container, each device's group added once).
    /// Nothing of the device stays open when it throws (in a container space
    /// its group, once added, stays).
    public static func open(_ address: PCIAddress, in space: DMASpace, host: PCIHost = .system)
        throws(VFIOError) -> AttachedDevice
    {
        AttachedDevice(name: .pci(address), device: try space.openDevice(address, host: host), space: space)
    }

    /// Opens a PCI function or an mdev in `space`, as
    /// ``open(_:in:host:)`` does; `vfToken` as in
    /// ``open(_:mode:dmaMask:vfToken:host:)``.
    public static func open(_ name: VFIODeviceName, in space: DMASpace, vfToken: UUID? = nil, host: PCIHost = .system)
        throws(VFIOError) -> AttachedDevice
    {
        AttachedDevice(name: name, device: try space.openDevice(name, vfToken: vfToken, host: host), space: space)
    }

    // MARK: BARs and config space

    /// Maps BAR `n` (0...5) whole for volatile loads and stores. vfio-pci
    /// gives the device back to a kernel driver only once every mapping of it
    /// is gone: ``close()`` unmaps the BARs mapped here (``MMIORegion/unmap()``),
    /// whoever still holds them.
    /// The corresponding calls are `VFIO_DEVICE_GET_REGION_INFO` and `mmap`.
    public func bar(_ n: Int) throws(VFIOError) -> MMIORegion {
        guard (0...5).contains(n) else {
            throw VFIOError.invalid(.step("map BAR"), "BAR \(n) does not exist: PCI functions have BARs 0 to 5",
                                    object: name.description)
        }
        let region = try device.regionInfo(PCIRegion.bar(n))
        guard region.size > 0 else {
            throw VFIOError.invalid(.step("map BAR"), "\(name) has no BAR \(n) (its size is 0)", object: name.description)
        }
        let mapped = try device.map(region: region)
        bars.withLock { b in
            b.removeAll { $0.region == nil }  // dropped (and unmapped) already
            b.append(MappedBAR(region: mapped))
        }
        return mapped
    }

    /// The device's PCI configuration space (through the VFIO config region).
    public func configSpace() throws(VFIOError) -> PCIConfigSpace { try device.configSpace() }

    /// Turns bus mastering on (the device may start DMA, to what the space
    /// maps) or off, in the command register.
    public func setBusMaster(_ enabled: Bool) throws(VFIOError) {
        try device.configSpace().setBusMaster(enabled)
    }

    // MARK: DMA memory

    /// `bytes` (rounded up to whole pages) of zeroed memory, mapped for the
    /// device at an IOVA the space's allocator picks: aligned, in a usable
    /// range, below the DMA mask. The device uses ``DMAMapping/iova``; the
    /// CPU ``DMAMapping/buffer`` (``DMABuffer/baseAddress``, the volatile
    /// accessors). The mapping keeps the memory and the space alive and
    /// unmaps when it ends. The corresponding ioctl is `IOMMU_IOAS_MAP` or
    /// `VFIO_IOMMU_MAP_DMA`.
    public func allocateDMA(bytes: Int, backing: DMABuffer.Backing = .anonymous, readable: Bool = true,
                            writable: Bool = true) throws(VFIOError) -> DMAMapping
    {
        try space.map(try DMABuffer(length: bytes, backing: backing), readable: readable, writable: writable)
    }

    // MARK: interrupts

    /// How many vectors the device has for `index` (0: none).
    /// The corresponding ioctl is `VFIO_DEVICE_GET_IRQ_INFO`.
    public func interruptCount(_ index: IRQIndex) throws(VFIOError) -> Int { Int(try device.irqInfo(index).count) }

    /// Vectors `start ..< start + count` of `index`, each routed to an eventfd,
    /// as a set that turns them off when released. MSI-X with N vectors:
    /// `interrupts(.msix, count: N)`.
    public func interrupts(_ index: IRQIndex, count: Int, start: UInt32 = 0) throws(VFIOError) -> InterruptSet {
        try device.interrupts(index, count: count, start: start)
    }

    /// One vector as a handle that turns it off when released.
    public func interrupt(_ index: IRQIndex, vector: UInt32 = 0) throws(VFIOError) -> Interrupt {
        try device.interrupt(index, vector: vector)
    }

    // MARK: closing

    /// Whether ``close()`` ran.
    public var isClosed: Bool { device.isClosed }

    /// Unmaps the BARs ``bar(_:)`` mapped (an access through one afterwards
    /// stops the process: ``MMIORegion/unmap()``) and closes the device fd:
    /// the kernel detaches it, turns off its interrupts and bus mastering,
    /// and lets it go back to a kernel driver (BARs mapped through ``device``
    /// directly must be gone too). Stop the device first (a driver's own
    /// shutdown). The space stays while mappings or other devices use it.
    /// Idempotent; reports the first error after every step ran.
    public func close() throws(VFIOError) {
        var first: VFIOError?
        for bar in bars.withLock({ b in defer { b = [] }; return b.compactMap(\.region) }) {
            do throws(VFIOError) { try bar.unmap() } catch { first = first ?? error }
        }
        do throws(VFIOError) { try device.close() } catch { first = first ?? error }
        if let first { throw first }
    }
}
