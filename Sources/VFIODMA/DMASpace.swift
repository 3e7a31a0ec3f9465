import CVFIO
import FoundationEssentials
import Synchronization
import VFIOObjects
import VFIOSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The five ways Linux lets userspace give a device an IOMMU address space.
public enum DMAMode: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Legacy container `/dev/vfio/vfio`, `VFIO_TYPE1_IOMMU`.
    case type1
    /// Legacy container `/dev/vfio/vfio`, `VFIO_TYPE1v2_IOMMU` (the usual legacy choice).
    case type1v2
    /// iommufd's compatibility container (`/dev/iommu` used as a container), type1.
    case compatType1
    /// iommufd's compatibility container, type1v2.
    case compatType1v2
    /// Native iommufd: device cdev bound to `/dev/iommu`, attached to an IOAS.
    case iommufd

    public var description: String {
        switch self {
        case .type1: "type1 (/dev/vfio/vfio)"
        case .type1v2: "type1v2 (/dev/vfio/vfio)"
        case .compatType1: "iommufd compat type1 (/dev/iommu container)"
        case .compatType1v2: "iommufd compat type1v2 (/dev/iommu container)"
        case .iommufd: "native iommufd (cdev + IOAS)"
        }
    }

    /// The container backend and IOMMU type, for the four container modes.
    public var container: (backend: VFIOContainer.Backend, type: VFIOContainer.IOMMUType)? {
        switch self {
        case .type1: (.legacy, .type1)
        case .type1v2: (.legacy, .type1v2)
        case .compatType1: (.iommufdCompat, .type1)
        case .compatType1v2: (.iommufdCompat, .type1v2)
        case .iommufd: nil
        }
    }

    /// The modes this kernel offers: nodes present and, for containers, the
    /// IOMMU type reported by `VFIO_CHECK_EXTENSION`. A node that cannot be
    /// checked or opened, or a check that fails, is a mode not offered.
    ///
    /// Native iommufd needs `/dev/iommu` and VFIO's device cdevs
    /// (`CONFIG_VFIO_DEVICE_CDEV`), which the kernel announces by registering
    /// the `vfio-dev` character devices (`/proc/devices`) when VFIO loads: it
    /// is offered before any device is bound (`/dev/vfio/devices` only
    /// appears with the first cdev).
    public static func available() -> [DMAMode] {
        let kernel = Sys.current
        func exists(_ path: String) -> Bool { (try? Sys.access(kernel, path, F_OK)) != nil }
        return allCases.filter { mode in
            guard let c = mode.container else {
                return exists("/dev/iommu") && (exists("/dev/vfio/devices") || hasDeviceCdevs(kernel))
            }
            guard exists(c.backend.rawValue), let container = try? VFIOContainer(backend: c.backend) else { return false }
            return (try? container.supports(c.type)) ?? false
        }
    }

    /// Whether VFIO registered its device cdevs: a `vfio-dev` line among the
    /// character devices of `/proc/devices` (drivers/vfio/device_cdev.c,
    /// `vfio_cdev_init`). An unreadable file says no.
    static func hasDeviceCdevs(_ kernel: (any SyscallProvider)?) -> Bool {
        guard let bytes = try? Sys.readFile(kernel, "/proc/devices", limit: 1 << 16) else { return false }
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
            if line.hasPrefix("Block devices") { return false }
            if line.split(separator: " ").last == "vfio-dev" { return true }
        }
        return false
    }

    /// The best mode available: native iommufd, then type1v2 (legacy, then
    /// compat), then type1. Nil when the kernel has none.
    public static func best() -> DMAMode? { best(among: available()) }

    /// The best of `modes` in that order (native iommufd, type1v2, compat
    /// type1v2, type1, compat type1); nil when `modes` is empty.
    public static func best(among modes: [DMAMode]) -> DMAMode? {
        [.iommufd, .type1v2, .compatType1v2, .type1, .compatType1].first(where: modes.contains)
    }
}

/// One IOMMU address space for one or more devices, over any of the five
/// ``DMAMode``s, with an IOVA allocator that honours the usable ranges, the
/// IOMMU page size and a DMA mask.
///
///     let space = try DMASpace(dmaMask: (1 << 28) - 1)       // the best mode available
///     let a = try AttachedDevice.open(edu0, in: space)         // VFIOKit: by PCI address
///     let b = try AttachedDevice.open(edu1, in: space)         // the same mappings
///     let mapping = try space.map(try DMABuffer(length: 8192))
///     // program mapping.iova into the devices
///
/// A driver with one device needs no space of its own: `AttachedDevice.open(_:mode:dmaMask:)`
/// makes one. Here are the lower-level pieces: ``attach(_:vfToken:)`` a cdev device
/// opened yourself, ``add(_:)`` a group.
///
/// Devices opened here keep what they need alive (group -> container, or
/// iommufd + IOAS); mappings keep the space and their buffer alive.
public final class DMASpace: Sendable {
    /// The mode this space uses, fixed at creation.
    public let mode: DMAMode
    enum Backend: Sendable {
        case ioas(IOAS)
        case container(VFIOContainer)
    }
    let backend: Backend
    private let groups = Mutex<[Int: VFIOGroup]>([:])
    private let allocator: Mutex<IOVAAllocator>

    /// Picks the best mode when `mode` is nil.
    public convenience init(mode: DMAMode? = nil, dmaMask: UInt64 = .max) throws(VFIOError) {
        guard let m = mode ?? DMAMode.best() else { throw DMASpace.noModeError() }
        try self.init(mode: m, dmaMask: dmaMask)
    }

    /// An address space in `mode`, for devices that address IOVAs up to `dmaMask`.
    /// Opens `/dev/iommu` and allocates an IOAS (`IOMMU_IOAS_ALLOC`) for
    /// ``DMAMode/iommufd``, or opens the container's node (`VFIO_GET_API_VERSION`)
    /// for the four container modes; the IOMMU type is set when the first group
    /// is added. Fails when the kernel does not offer `mode`.
    public init(mode: DMAMode, dmaMask: UInt64) throws(VFIOError) {
        self.mode = mode
        if let c = mode.container {
            backend = .container(try VFIOContainer(backend: c.backend))
        } else {
            backend = .ioas(try IOAS(try IOMMUFD()))
        }
        allocator = Mutex(try IOVAAllocator(dmaMask: dmaMask))
    }

    /// The IOAS (native iommufd mode).
    public var ioas: IOAS? { if case .ioas(let i) = backend { i } else { nil } }
    /// The container (the four container modes).
    public var container: VFIOContainer? { if case .container(let c) = backend { c } else { nil } }

    var label: String { "DMA space (\(mode))" }

    /// Puts a device opened as a cdev into this address space (native iommufd
    /// mode): binds it to the space's iommufd, attaches it to the IOAS, and
    /// re-reads the usable IOVA ranges (the device's IOMMU may reserve some).
    /// The device stays the caller's; on failure it may be bound but not
    /// attached (close it). VFIOKit's `openDevice(_:)` opens and adds by address.
    /// `vfToken` is presented at the bind (an SR-IOV VF of a PF on vfio-pci needs its PF's).
    /// The corresponding ioctls are `VFIO_DEVICE_BIND_IOMMUFD` and `VFIO_DEVICE_ATTACH_IOMMUFD_PT`.
    public func attach(_ device: VFIODevice, vfToken: UUID? = nil) throws(VFIOError) {
        guard case .ioas(let ioas) = backend else {
            throw VFIOError.invalid(.step(.attachDevice), "\(label) uses groups and a container: add the device's group "
                                    + "(add(_:)) and open the device from it", object: device.label)
        }
        try device.bind(to: ioas.iommufd, token: vfToken)
        try device.attach(to: ioas)
        try refreshRanges()
    }

    /// Adds an opened group to this space's container (the four container
    /// modes): joins the container, sets the IOMMU type on first use, and
    /// re-reads the usable IOVA ranges. Returns the group the space keeps:
    /// `group`, or the one of that number added before (then `group` is not
    /// used). Open devices with ``VFIOGroup/device(_:vfToken:)`` on it.
    /// The corresponding ioctls are `VFIO_GROUP_SET_CONTAINER` and `VFIO_SET_IOMMU`.
    @discardableResult
    public func add(_ group: VFIOGroup) throws(VFIOError) -> VFIOGroup {
        guard case .container(let container) = backend else {
            throw VFIOError.invalid(.step(.addGroup), "\(label) uses cdevs, not groups: attach the device (attach(_:))",
                                    object: "/dev/vfio/\(group.number)")
        }
        if let known = groups.withLock({ $0[group.number] }) { return known }
        try group.setContainer(container)
        if container.type == nil, let t = mode.container?.type {
            try container.setIOMMU(t)
        }
        groups.withLock { $0[group.number] = group }
        try refreshRanges()
        return group
    }

    /// The group of number `number` this space holds, if it was added.
    public func group(number: Int) -> VFIOGroup? { groups.withLock { $0[number] } }

    /// The groups this space holds (container modes), by number.
    public var addedGroups: [VFIOGroup] {
        groups.withLock { g in g.keys.sorted().compactMap { g[$0] } }
    }

    /// The error for a kernel that offers no DMA mode.
    package static func noModeError(object: String? = nil) -> VFIOError {
        VFIOError.invalid(.step(.chooseDMAMode), "neither /dev/iommu nor /dev/vfio/vfio offers an IOMMU", object: object,
                          remedies: [.enableIOMMU, .loadModule("vfio-pci"), .loadModule("iommufd"), .diagnose(nil)])
    }

    /// Re-reads the usable IOVA ranges and the IOMMU page size (they change
    /// as devices attach). Called by ``attach(_:vfToken:)`` and ``add(_:)``.
    public func refreshRanges() throws(VFIOError) {
        let (ranges, alignment) = try usableRanges()
        try allocator.withLock { (a) throws(VFIOError) in
            a.updateRanges(ranges)
            try a.setAlignment(max(alignment, 4096))
        }
    }

    /// The usable IOVA ranges and minimum alignment as the kernel reports them
    /// now. The corresponding ioctl is `IOMMU_IOAS_IOVA_RANGES` or `VFIO_IOMMU_GET_INFO`.
    public func usableRanges() throws(VFIOError) -> (ranges: [ClosedRange<IOVA>], alignment: UInt64) {
        switch backend {
        case .container(let c):
            guard c.type != nil else { return ([IOVA.zero...IOVA.max], 4096) }
            let info = try c.info()
            let pg = info.pageSizes.map { $0 & (~$0 &+ 1) } ?? 4096
            return (info.iovaRanges ?? [IOVA.zero...IOVA.max], max(pg, 4096))
        case .ioas(let ioas):
            let r = try ioas.iovaRanges()
            return (r.ranges, max(r.alignment, 1))
        }
    }

    /// Maps `buffer` at `iova`, or at an IOVA the allocator picks (aligned to
    /// the IOMMU page size, and a 2 MiB buffer of huge pages to 2 MiB so the
    /// IOMMU can map it with one large page; in a usable range; below the DMA
    /// mask). A given `iova` must be aligned and free. The mapping keeps this
    /// space and the buffer alive and unmaps (and frees its IOVA) when dropped.
    /// The corresponding ioctl is `IOMMU_IOAS_MAP` or `VFIO_IOMMU_MAP_DMA`.
    public func map(_ buffer: DMABuffer, at iova: IOVA? = nil, readable: Bool = true, writable: Bool = true)
        throws(VFIOError) -> DMAMapping
    {
        let length = UInt64(buffer.length)
        let at: IOVA
        if let iova {
            let alignment = allocator.withLock { $0.alignment }
            guard iova.isAligned(to: alignment) else {
                throw VFIOError.invalid(.step(.mapDMA), "IOVA \(iova) is not a multiple of the IOMMU page size "
                                        + "(\(formatBytes(alignment)))", object: label,
                                        remedies: [.advice("pick an aligned IOVA, or let the space choose one (at: nil)")])
            }
            guard allocator.withLock({ $0.reserve(iova, length: length) }) else {
                let (r, m) = allocator.withLock { ($0.ranges, $0.dmaMask) }
                throw VFIOError.invalid(.step(.mapDMA), "IOVA \(iova)+0x\(String(length, radix: 16)) "
                                        + "overlaps a mapping or lies outside the usable ranges "
                                        + "[\(r.map(\.hexDescription).joined(separator: ", "))] "
                                        + "below the DMA mask 0x\(String(m, radix: 16))", object: label)
            }
            at = iova
        } else {
            let align = buffer.backing == .hugePages ? UInt64(DMABuffer.hugePageSize) : 0
            guard let a = try allocator.withLock({ (a) throws(VFIOError) in try a.allocate(length: length, align: align) }) else {
                throw VFIOError.invalid(.step(.mapDMA), "no free IOVA range of 0x\(String(length, radix: 16)) bytes below the DMA mask",
                                        object: label, remedies: [.advice("unmap something, or map fewer/larger buffers")])
            }
            at = a
        }
        let slot: Int32
        do throws(VFIOError) {
            switch backend {
            case .ioas(let ioas):
                slot = try ioas.mapOwned(buffer.base, length: length, at: at, readable: readable,
                                         writable: writable).slot
            case .container(let c):
                slot = try c.mapOwned(address: UnsafeRawPointer(buffer.base), length: buffer.length, at: at,
                                      readable: readable, writable: writable)
            }
        } catch {
            allocator.withLock { _ = $0.free(at) }
            throw error
        }
        return DMAMapping(iova: at, length: length, buffer: buffer, owner: .space(self), slot: slot)
    }

    /// The unmap of a ``DMAMapping`` of this space: unmaps (unless unmap-all
    /// took it already) and releases the IOVA. When the unmap fails the range
    /// may still be mapped: the IOVA stays reserved for good, and the buffer alive.
    @inline(__always)
    func unmapOwned(iova: UInt64, length: UInt64, slot: Int32, buffer: DMABuffer) throws(VFIOError) {
        do throws(VFIOError) {
            switch backend {
            case .ioas(let ioas): try DMAMappingOwner.ioas(ioas).unmapOwned(iova: iova, length: length, slot: slot, buffer: buffer)
            case .container(let c): try DMAMappingOwner.container(c).unmapOwned(iova: iova, length: length, slot: slot, buffer: buffer)
            }
        } catch {
            var e = error
            e.detail = (e.detail.map { $0 + "; " } ?? "") + "its IOVA stays reserved in \(label), never handed out again"
            throw e
        }
        allocator.withLock { _ = $0.free(IOVA(iova)) }
    }

    /// The allocator's current state (ranges, alignment, mask).
    public var iovaAllocator: IOVAAllocator { allocator.withLock { $0 } }
}
