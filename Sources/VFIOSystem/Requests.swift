#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CVFIO

/// A Linux release, `major.minor` (`6.2`), comparable: the release that added
/// a request, or the one running.
public struct KernelVersion: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    /// The major number (6 of 6.2).
    public var major: Int
    /// The minor number (2 of 6.2).
    public var minor: Int

    /// Release `major.minor`.
    public init(_ major: Int, _ minor: Int) {
        self.major = major
        self.minor = minor
    }

    /// The version at the start of a release string: `6.18.44-fc` and `6.2` give 6.18 and 6.2.
    public init?(release: String) {
        let numbers = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        guard numbers.count == 2, release.first?.isNumber == true else { return nil }
        self.init(numbers[0], numbers[1])
    }

    /// The running kernel's version (uname(2)); nil when it cannot be read.
    public static var running: KernelVersion? {
        (try? Sys.kernelRelease(Sys.current)).flatMap { KernelVersion(release: $0) }
    }

    public static func < (a: KernelVersion, b: KernelVersion) -> Bool { (a.major, a.minor) < (b.major, b.minor) }

    public var description: String { "\(major).\(minor)" }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let v = KernelVersion(release: text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a kernel version: \(text)"))
        }
        self = v
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// One ioctl request of the kernel's VFIO and iommufd uapi (Linux 7.2, all 55).
///
/// This is the one table of requests: every ioctl VFIOKit issues names its
/// request (so errors name the request the call site meant, never one looked
/// up from a number), ``VFIOError/Operation`` carries it, messages about a
/// missing request read ``introduced``, and the probes of what the running
/// kernel has (`OwnedFD.probe(_:)`: `IOMMUFD.features()` and the doctor)
/// walk ``iommufd``.
///
/// Numbers are not unique: VFIO numbers its requests per kind of fd, so ten
/// numbers name two or three requests each (`0x3b71` is `VFIO_IOMMU_MAP_DMA`
/// on a container and `VFIO_DEVICE_PCI_HOT_RESET` on a device). A number alone
/// never names a request; ``target`` says on which fd it means what.
///
/// ``introduced`` was checked against the kernel's history (merge-window pull
/// requests and merge commits, and per-release header snapshots bracketing
/// each name), not memory. 51 rows are exact. The four sPAPR v2 rows
/// (``vfioIOMMUSPAPRRegisterMemory``, ``vfioIOMMUSPAPRUnregisterMemory``,
/// ``vfioIOMMUSPAPRTCECreate``, ``vfioIOMMUSPAPRTCERemove``) are bounded: added
/// after 4.1-rc3 and at or before 4.4; their commits went to the powerpc tree
/// for the 4.2 merge window, so the table says 4.2, marked
/// `introductionIsBounded`.
public enum Request: Sendable, Hashable, CaseIterable, CustomStringConvertible {
    // VFIO: the container (/dev/vfio/vfio), groups and devices (3.6 unless noted).
    /// `VFIO_GET_API_VERSION`: the container's VFIO API version.
    case vfioGetAPIVersion
    /// `VFIO_CHECK_EXTENSION`: whether a container offers an IOMMU type or feature.
    case vfioCheckExtension
    /// `VFIO_SET_IOMMU`: sets a container's IOMMU model.
    case vfioSetIOMMU
    /// `VFIO_GROUP_GET_STATUS`: whether a group is viable and in a container.
    case vfioGroupGetStatus
    /// `VFIO_GROUP_SET_CONTAINER`: puts a group in a container.
    case vfioGroupSetContainer
    /// `VFIO_GROUP_UNSET_CONTAINER`: takes a group out of its container.
    case vfioGroupUnsetContainer
    /// `VFIO_GROUP_GET_DEVICE_FD`: opens a device of a group.
    case vfioGroupGetDeviceFD
    /// `VFIO_DEVICE_GET_INFO`: a device's flags, region and IRQ counts.
    case vfioDeviceGetInfo
    /// `VFIO_DEVICE_GET_REGION_INFO`: one region's size, offset, flags and capabilities.
    case vfioDeviceGetRegionInfo
    /// `VFIO_DEVICE_GET_IRQ_INFO`: one interrupt index's vectors and flags.
    case vfioDeviceGetIRQInfo
    /// `VFIO_DEVICE_SET_IRQS`: routes, masks, unmasks or triggers interrupts.
    case vfioDeviceSetIRQs
    /// `VFIO_DEVICE_RESET`: resets a device.
    case vfioDeviceReset
    /// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`: the devices a bus or slot reset would affect.
    case vfioDeviceGetPCIHotResetInfo
    /// `VFIO_DEVICE_PCI_HOT_RESET`: a bus or slot reset.
    case vfioDevicePCIHotReset
    /// `VFIO_DEVICE_QUERY_GFX_PLANE`: a mediated GPU's display plane.
    case vfioDeviceQueryGFXPlane
    /// `VFIO_DEVICE_GET_GFX_DMABUF`: a dma-buf of a mediated GPU's plane.
    case vfioDeviceGetGFXDMABuf
    /// `VFIO_DEVICE_IOEVENTFD`: an eventfd that writes a device register.
    case vfioDeviceIOEventFD
    /// `VFIO_DEVICE_FEATURE`: gets, sets or probes a device feature (migration, low power, DMA logging, ...).
    case vfioDeviceFeature
    /// `VFIO_DEVICE_BIND_IOMMUFD`: binds a device cdev to an iommufd.
    case vfioDeviceBindIOMMUFD
    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: attaches a bound device (or a PASID) to an IOAS or HWPT.
    case vfioDeviceAttachIOMMUFDPT
    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT`: detaches a device (or a PASID).
    case vfioDeviceDetachIOMMUFDPT
    /// `VFIO_MIG_GET_PRECOPY_INFO`: how much migration data is left in pre-copy.
    case vfioMigGetPrecopyInfo
    // VFIO IOMMU backends, issued on a container: type1, then sPAPR.
    /// `VFIO_IOMMU_GET_INFO`: a container's page sizes, IOVA ranges and capabilities.
    case vfioIOMMUGetInfo
    /// `VFIO_IOMMU_MAP_DMA`: maps process memory at an IOVA in a container.
    case vfioIOMMUMapDMA
    /// `VFIO_IOMMU_UNMAP_DMA`: unmaps an IOVA range (or everything) in a container.
    case vfioIOMMUUnmapDMA
    /// `VFIO_IOMMU_ENABLE`: enables an sPAPR container.
    case vfioIOMMUEnable
    /// `VFIO_IOMMU_DISABLE`: disables an sPAPR container.
    case vfioIOMMUDisable
    /// `VFIO_IOMMU_DIRTY_PAGES`: type1v2 dirty page tracking.
    case vfioIOMMUDirtyPages
    /// `VFIO_IOMMU_SPAPR_TCE_GET_INFO`: an sPAPR container's DMA window.
    case vfioIOMMUSPAPRTCEGetInfo
    /// `VFIO_EEH_PE_OP`: an sPAPR EEH operation.
    case vfioEEHPEOp
    /// `VFIO_IOMMU_SPAPR_REGISTER_MEMORY`: pre-registers memory with an sPAPR v2 container.
    case vfioIOMMUSPAPRRegisterMemory
    /// `VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY`: unregisters sPAPR v2 memory.
    case vfioIOMMUSPAPRUnregisterMemory
    /// `VFIO_IOMMU_SPAPR_TCE_CREATE`: creates an sPAPR DMA window.
    case vfioIOMMUSPAPRTCECreate
    /// `VFIO_IOMMU_SPAPR_TCE_REMOVE`: removes an sPAPR DMA window.
    case vfioIOMMUSPAPRTCERemove
    // iommufd (/dev/iommu), in command order.
    /// `IOMMU_DESTROY`: destroys an iommufd object by id.
    case iommuDestroy
    /// `IOMMU_IOAS_ALLOC`: allocates an I/O address space.
    case iommuIOASAlloc
    /// `IOMMU_IOAS_ALLOW_IOVAS`: restricts where the kernel may choose IOVAs.
    case iommuIOASAllowIOVAs
    /// `IOMMU_IOAS_COPY`: maps pages of one IOAS into another.
    case iommuIOASCopy
    /// `IOMMU_IOAS_IOVA_RANGES`: an IOAS's usable IOVA ranges and alignment.
    case iommuIOASIOVARanges
    /// `IOMMU_IOAS_MAP`: maps process memory into an IOAS.
    case iommuIOASMap
    /// `IOMMU_IOAS_UNMAP`: unmaps an IOVA range (or everything) of an IOAS.
    case iommuIOASUnmap
    /// `IOMMU_OPTION`: gets or sets a context or IOAS option (rlimit mode, huge pages).
    case iommuOption
    /// `IOMMU_VFIO_IOAS`: gets, sets or clears the IOAS of the VFIO compatibility container.
    case iommuVFIOIOAS
    /// `IOMMU_HWPT_ALLOC`: allocates a hardware page table.
    case iommuHWPTAlloc
    /// `IOMMU_GET_HW_INFO`: the IOMMU's hardware information for a device.
    case iommuGetHWInfo
    /// `IOMMU_HWPT_SET_DIRTY_TRACKING`: starts or stops a HWPT's dirty tracking.
    case iommuHWPTSetDirtyTracking
    /// `IOMMU_HWPT_GET_DIRTY_BITMAP`: reads (and clears) a HWPT's dirty bits.
    case iommuHWPTGetDirtyBitmap
    /// `IOMMU_HWPT_INVALIDATE`: invalidates a nested HWPT's or vIOMMU's caches.
    case iommuHWPTInvalidate
    /// `IOMMU_FAULT_QUEUE_ALLOC`: allocates a queue for I/O page faults.
    case iommuFaultQueueAlloc
    /// `IOMMU_IOAS_MAP_FILE`: maps a file (a memfd) into an IOAS.
    case iommuIOASMapFile
    /// `IOMMU_VIOMMU_ALLOC`: allocates a virtual IOMMU.
    case iommuVIOMMUAlloc
    /// `IOMMU_VDEVICE_ALLOC`: allocates a virtual device of a vIOMMU.
    case iommuVDeviceAlloc
    /// `IOMMU_IOAS_CHANGE_PROCESS`: moves pinned-page accounting to the calling process.
    case iommuIOASChangeProcess
    /// `IOMMU_VEVENTQ_ALLOC`: allocates a vIOMMU event queue.
    case iommuVEventQAlloc
    /// `IOMMU_HW_QUEUE_ALLOC`: allocates a hardware queue of a vIOMMU.
    case iommuHWQueueAlloc

    /// The uapi a request belongs to: `linux/vfio.h` or `linux/iommufd.h`.
    public enum Family: String, Sendable, Codable {
        /// `linux/vfio.h`.
        case vfio
        /// `linux/iommufd.h`.
        case iommufd
    }

    /// The kind of fd a request is issued on, which decides what its number means.
    public enum Target: String, Sendable, Codable {
        /// `/dev/vfio/vfio` (or iommufd's compat container), before and after an IOMMU type is set.
        case container
        /// `/dev/vfio/N`.
        case group
        /// A device fd (a cdev `/dev/vfio/devices/vfioN`, or one from a group).
        case device
        /// `/dev/iommu`.
        case iommufd
    }

    /// One row of the table.
    public struct Entry: Sendable, Hashable {
        /// The kernel's name (`IOMMU_IOAS_MAP`).
        public let name: String
        /// The request number the ioctl takes (`_IO(';', ...)`).
        public let number: UInt
        /// Its uapi.
        public let family: Family
        /// The kind of fd it is issued on.
        public let target: Target
        /// The Linux release that added it.
        public let introduced: KernelVersion
        /// True when only an interval is known (see ``Request``); ``introduced`` is then the inferred release.
        public let introductionIsBounded: Bool

        init(_ name: String, _ number: UInt, _ family: Family, _ target: Target, _ major: Int, _ minor: Int,
             bounded: Bool = false)
        {
            self.name = name
            self.number = number
            self.family = family
            self.target = target
            introduced = KernelVersion(major, minor)
            introductionIsBounded = bounded
        }
    }

    /// The table: numbers from CVFIO (the 7.2 uapi, checked by Scripts/abi-check.sh);
    /// releases from the kernel's history (merge commit or pull request, and a
    /// pair of header snapshots from consecutive releases, per row).
    @inline(__always)
    public var entry: Entry {
        switch self {
        // The 3.6 merge that created include/linux/vfio.h (core, type1, PCI).
        case .vfioGetAPIVersion: Entry("VFIO_GET_API_VERSION", VFIO_GET_API_VERSION, .vfio, .container, 3, 6)
        case .vfioCheckExtension: Entry("VFIO_CHECK_EXTENSION", VFIO_CHECK_EXTENSION, .vfio, .container, 3, 6)
        case .vfioSetIOMMU: Entry("VFIO_SET_IOMMU", VFIO_SET_IOMMU, .vfio, .container, 3, 6)
        case .vfioGroupGetStatus: Entry("VFIO_GROUP_GET_STATUS", VFIO_GROUP_GET_STATUS, .vfio, .group, 3, 6)
        case .vfioGroupSetContainer: Entry("VFIO_GROUP_SET_CONTAINER", VFIO_GROUP_SET_CONTAINER, .vfio, .group, 3, 6)
        case .vfioGroupUnsetContainer:
            Entry("VFIO_GROUP_UNSET_CONTAINER", VFIO_GROUP_UNSET_CONTAINER, .vfio, .group, 3, 6)
        case .vfioGroupGetDeviceFD: Entry("VFIO_GROUP_GET_DEVICE_FD", VFIO_GROUP_GET_DEVICE_FD, .vfio, .group, 3, 6)
        case .vfioDeviceGetInfo: Entry("VFIO_DEVICE_GET_INFO", VFIO_DEVICE_GET_INFO, .vfio, .device, 3, 6)
        case .vfioDeviceGetRegionInfo:
            Entry("VFIO_DEVICE_GET_REGION_INFO", VFIO_DEVICE_GET_REGION_INFO, .vfio, .device, 3, 6)
        case .vfioDeviceGetIRQInfo: Entry("VFIO_DEVICE_GET_IRQ_INFO", VFIO_DEVICE_GET_IRQ_INFO, .vfio, .device, 3, 6)
        case .vfioDeviceSetIRQs: Entry("VFIO_DEVICE_SET_IRQS", VFIO_DEVICE_SET_IRQS, .vfio, .device, 3, 6)
        case .vfioDeviceReset: Entry("VFIO_DEVICE_RESET", VFIO_DEVICE_RESET, .vfio, .device, 3, 6)
        // 'vfio-v3.12-rc0': the PCI hot reset interface.
        case .vfioDeviceGetPCIHotResetInfo:
            Entry("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO", VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, .vfio, .device, 3, 12)
        case .vfioDevicePCIHotReset: Entry("VFIO_DEVICE_PCI_HOT_RESET", VFIO_DEVICE_PCI_HOT_RESET, .vfio, .device, 3, 12)
        // 'drm-for-v4.16': the mdev display dma-buf ABI.
        case .vfioDeviceQueryGFXPlane:
            Entry("VFIO_DEVICE_QUERY_GFX_PLANE", VFIO_DEVICE_QUERY_GFX_PLANE, .vfio, .device, 4, 16)
        case .vfioDeviceGetGFXDMABuf: Entry("VFIO_DEVICE_GET_GFX_DMABUF", VFIO_DEVICE_GET_GFX_DMABUF, .vfio, .device, 4, 16)
        // 'vfio-v4.17-rc1': ioeventfd.
        case .vfioDeviceIOEventFD: Entry("VFIO_DEVICE_IOEVENTFD", VFIO_DEVICE_IOEVENTFD, .vfio, .device, 4, 17)
        // VFIO updates for v5.7-rc1.
        case .vfioDeviceFeature: Entry("VFIO_DEVICE_FEATURE", VFIO_DEVICE_FEATURE, .vfio, .device, 5, 7)
        // iommufd for 6.6 (with the VFIO cdev branch).
        case .vfioDeviceBindIOMMUFD: Entry("VFIO_DEVICE_BIND_IOMMUFD", VFIO_DEVICE_BIND_IOMMUFD, .vfio, .device, 6, 6)
        case .vfioDeviceAttachIOMMUFDPT:
            Entry("VFIO_DEVICE_ATTACH_IOMMUFD_PT", VFIO_DEVICE_ATTACH_IOMMUFD_PT, .vfio, .device, 6, 6)
        case .vfioDeviceDetachIOMMUFDPT:
            Entry("VFIO_DEVICE_DETACH_IOMMUFD_PT", VFIO_DEVICE_DETACH_IOMMUFD_PT, .vfio, .device, 6, 6)
        // VFIO updates for v6.2-rc1 (PRE_COPY).
        case .vfioMigGetPrecopyInfo: Entry("VFIO_MIG_GET_PRECOPY_INFO", VFIO_MIG_GET_PRECOPY_INFO, .vfio, .device, 6, 2)
        // Type1: the 3.6 merge.
        case .vfioIOMMUGetInfo: Entry("VFIO_IOMMU_GET_INFO", VFIO_IOMMU_GET_INFO, .vfio, .container, 3, 6)
        case .vfioIOMMUMapDMA: Entry("VFIO_IOMMU_MAP_DMA", VFIO_IOMMU_MAP_DMA, .vfio, .container, 3, 6)
        case .vfioIOMMUUnmapDMA: Entry("VFIO_IOMMU_UNMAP_DMA", VFIO_IOMMU_UNMAP_DMA, .vfio, .container, 3, 6)
        // sPAPR: the powerpc 3.11 merge window (committed after 3.10-rc6, absent from 3.10).
        case .vfioIOMMUEnable: Entry("VFIO_IOMMU_ENABLE", VFIO_IOMMU_ENABLE, .vfio, .container, 3, 11)
        case .vfioIOMMUDisable: Entry("VFIO_IOMMU_DISABLE", VFIO_IOMMU_DISABLE, .vfio, .container, 3, 11)
        // VFIO updates for v5.8-rc1: dirty page tracking.
        case .vfioIOMMUDirtyPages: Entry("VFIO_IOMMU_DIRTY_PAGES", VFIO_IOMMU_DIRTY_PAGES, .vfio, .container, 5, 8)
        case .vfioIOMMUSPAPRTCEGetInfo:
            Entry("VFIO_IOMMU_SPAPR_TCE_GET_INFO", VFIO_IOMMU_SPAPR_TCE_GET_INFO, .vfio, .container, 3, 11)
        // powerpc 3.17: EEH support for VFIO PCI devices.
        case .vfioEEHPEOp: Entry("VFIO_EEH_PE_OP", VFIO_EEH_PE_OP, .vfio, .container, 3, 17)
        // sPAPR v2 (bounded: after 4.1-rc3, at or before 4.4; committed to powerpc next for 4.2).
        case .vfioIOMMUSPAPRRegisterMemory:
            Entry("VFIO_IOMMU_SPAPR_REGISTER_MEMORY", VFIO_IOMMU_SPAPR_REGISTER_MEMORY, .vfio, .container, 4, 2, bounded: true)
        case .vfioIOMMUSPAPRUnregisterMemory:
            Entry("VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY", VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY, .vfio, .container, 4, 2,
                  bounded: true)
        case .vfioIOMMUSPAPRTCECreate:
            Entry("VFIO_IOMMU_SPAPR_TCE_CREATE", VFIO_IOMMU_SPAPR_TCE_CREATE, .vfio, .container, 4, 2, bounded: true)
        case .vfioIOMMUSPAPRTCERemove:
            Entry("VFIO_IOMMU_SPAPR_TCE_REMOVE", VFIO_IOMMU_SPAPR_TCE_REMOVE, .vfio, .container, 4, 2, bounded: true)
        // iommufd for 6.2: the io_pagetable ioctls and the VFIO compatibility ioctl.
        case .iommuDestroy: Entry("IOMMU_DESTROY", IOMMU_DESTROY, .iommufd, .iommufd, 6, 2)
        case .iommuIOASAlloc: Entry("IOMMU_IOAS_ALLOC", IOMMU_IOAS_ALLOC, .iommufd, .iommufd, 6, 2)
        case .iommuIOASAllowIOVAs: Entry("IOMMU_IOAS_ALLOW_IOVAS", IOMMU_IOAS_ALLOW_IOVAS, .iommufd, .iommufd, 6, 2)
        case .iommuIOASCopy: Entry("IOMMU_IOAS_COPY", IOMMU_IOAS_COPY, .iommufd, .iommufd, 6, 2)
        case .iommuIOASIOVARanges: Entry("IOMMU_IOAS_IOVA_RANGES", IOMMU_IOAS_IOVA_RANGES, .iommufd, .iommufd, 6, 2)
        case .iommuIOASMap: Entry("IOMMU_IOAS_MAP", IOMMU_IOAS_MAP, .iommufd, .iommufd, 6, 2)
        case .iommuIOASUnmap: Entry("IOMMU_IOAS_UNMAP", IOMMU_IOAS_UNMAP, .iommufd, .iommufd, 6, 2)
        case .iommuOption: Entry("IOMMU_OPTION", IOMMU_OPTION, .iommufd, .iommufd, 6, 2)
        case .iommuVFIOIOAS: Entry("IOMMU_VFIO_IOAS", IOMMU_VFIO_IOAS, .iommufd, .iommufd, 6, 2)
        // iommufd for 6.6: HWPT allocation and hardware info (not 6.5).
        case .iommuHWPTAlloc: Entry("IOMMU_HWPT_ALLOC", IOMMU_HWPT_ALLOC, .iommufd, .iommufd, 6, 6)
        case .iommuGetHWInfo: Entry("IOMMU_GET_HW_INFO", IOMMU_GET_HW_INFO, .iommufd, .iommufd, 6, 6)
        // iommufd for 6.7: dirty tracking.
        case .iommuHWPTSetDirtyTracking:
            Entry("IOMMU_HWPT_SET_DIRTY_TRACKING", IOMMU_HWPT_SET_DIRTY_TRACKING, .iommufd, .iommufd, 6, 7)
        case .iommuHWPTGetDirtyBitmap:
            Entry("IOMMU_HWPT_GET_DIRTY_BITMAP", IOMMU_HWPT_GET_DIRTY_BITMAP, .iommufd, .iommufd, 6, 7)
        // iommufd for 6.8, 6.11.
        case .iommuHWPTInvalidate: Entry("IOMMU_HWPT_INVALIDATE", IOMMU_HWPT_INVALIDATE, .iommufd, .iommufd, 6, 8)
        case .iommuFaultQueueAlloc: Entry("IOMMU_FAULT_QUEUE_ALLOC", IOMMU_FAULT_QUEUE_ALLOC, .iommufd, .iommufd, 6, 11)
        // iommufd for 6.13: file mappings, change process, vIOMMU and vDEVICE.
        case .iommuIOASMapFile: Entry("IOMMU_IOAS_MAP_FILE", IOMMU_IOAS_MAP_FILE, .iommufd, .iommufd, 6, 13)
        case .iommuVIOMMUAlloc: Entry("IOMMU_VIOMMU_ALLOC", IOMMU_VIOMMU_ALLOC, .iommufd, .iommufd, 6, 13)
        case .iommuVDeviceAlloc: Entry("IOMMU_VDEVICE_ALLOC", IOMMU_VDEVICE_ALLOC, .iommufd, .iommufd, 6, 13)
        case .iommuIOASChangeProcess:
            Entry("IOMMU_IOAS_CHANGE_PROCESS", IOMMU_IOAS_CHANGE_PROCESS, .iommufd, .iommufd, 6, 13)
        // iommufd for 6.15 (vEVENTQ) and 6.17 (HW queue).
        case .iommuVEventQAlloc: Entry("IOMMU_VEVENTQ_ALLOC", IOMMU_VEVENTQ_ALLOC, .iommufd, .iommufd, 6, 15)
        case .iommuHWQueueAlloc: Entry("IOMMU_HW_QUEUE_ALLOC", IOMMU_HW_QUEUE_ALLOC, .iommufd, .iommufd, 6, 17)
        }
    }

    /// The kernel's name (`IOMMU_IOAS_MAP`).
    public var name: String { entry.name }
    /// The request number the ioctl takes. Not unique across ``target``s.
    /// A switch of its own (the same numbers as ``entry``'s): the ioctl path
    /// reads only this, never building the table row and its name string.
    @inline(__always)
    public var number: UInt {
        switch self {
        case .vfioGetAPIVersion: VFIO_GET_API_VERSION
        case .vfioCheckExtension: VFIO_CHECK_EXTENSION
        case .vfioSetIOMMU: VFIO_SET_IOMMU
        case .vfioGroupGetStatus: VFIO_GROUP_GET_STATUS
        case .vfioGroupSetContainer: VFIO_GROUP_SET_CONTAINER
        case .vfioGroupUnsetContainer: VFIO_GROUP_UNSET_CONTAINER
        case .vfioGroupGetDeviceFD: VFIO_GROUP_GET_DEVICE_FD
        case .vfioDeviceGetInfo: VFIO_DEVICE_GET_INFO
        case .vfioDeviceGetRegionInfo: VFIO_DEVICE_GET_REGION_INFO
        case .vfioDeviceGetIRQInfo: VFIO_DEVICE_GET_IRQ_INFO
        case .vfioDeviceSetIRQs: VFIO_DEVICE_SET_IRQS
        case .vfioDeviceReset: VFIO_DEVICE_RESET
        case .vfioDeviceGetPCIHotResetInfo: VFIO_DEVICE_GET_PCI_HOT_RESET_INFO
        case .vfioDevicePCIHotReset: VFIO_DEVICE_PCI_HOT_RESET
        case .vfioDeviceQueryGFXPlane: VFIO_DEVICE_QUERY_GFX_PLANE
        case .vfioDeviceGetGFXDMABuf: VFIO_DEVICE_GET_GFX_DMABUF
        case .vfioDeviceIOEventFD: VFIO_DEVICE_IOEVENTFD
        case .vfioDeviceFeature: VFIO_DEVICE_FEATURE
        case .vfioDeviceBindIOMMUFD: VFIO_DEVICE_BIND_IOMMUFD
        case .vfioDeviceAttachIOMMUFDPT: VFIO_DEVICE_ATTACH_IOMMUFD_PT
        case .vfioDeviceDetachIOMMUFDPT: VFIO_DEVICE_DETACH_IOMMUFD_PT
        case .vfioMigGetPrecopyInfo: VFIO_MIG_GET_PRECOPY_INFO
        case .vfioIOMMUGetInfo: VFIO_IOMMU_GET_INFO
        case .vfioIOMMUMapDMA: VFIO_IOMMU_MAP_DMA
        case .vfioIOMMUUnmapDMA: VFIO_IOMMU_UNMAP_DMA
        case .vfioIOMMUEnable: VFIO_IOMMU_ENABLE
        case .vfioIOMMUDisable: VFIO_IOMMU_DISABLE
        case .vfioIOMMUDirtyPages: VFIO_IOMMU_DIRTY_PAGES
        case .vfioIOMMUSPAPRTCEGetInfo: VFIO_IOMMU_SPAPR_TCE_GET_INFO
        case .vfioEEHPEOp: VFIO_EEH_PE_OP
        case .vfioIOMMUSPAPRRegisterMemory: VFIO_IOMMU_SPAPR_REGISTER_MEMORY
        case .vfioIOMMUSPAPRUnregisterMemory: VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY
        case .vfioIOMMUSPAPRTCECreate: VFIO_IOMMU_SPAPR_TCE_CREATE
        case .vfioIOMMUSPAPRTCERemove: VFIO_IOMMU_SPAPR_TCE_REMOVE
        case .iommuDestroy: IOMMU_DESTROY
        case .iommuIOASAlloc: IOMMU_IOAS_ALLOC
        case .iommuIOASAllowIOVAs: IOMMU_IOAS_ALLOW_IOVAS
        case .iommuIOASCopy: IOMMU_IOAS_COPY
        case .iommuIOASIOVARanges: IOMMU_IOAS_IOVA_RANGES
        case .iommuIOASMap: IOMMU_IOAS_MAP
        case .iommuIOASUnmap: IOMMU_IOAS_UNMAP
        case .iommuOption: IOMMU_OPTION
        case .iommuVFIOIOAS: IOMMU_VFIO_IOAS
        case .iommuHWPTAlloc: IOMMU_HWPT_ALLOC
        case .iommuGetHWInfo: IOMMU_GET_HW_INFO
        case .iommuHWPTSetDirtyTracking: IOMMU_HWPT_SET_DIRTY_TRACKING
        case .iommuHWPTGetDirtyBitmap: IOMMU_HWPT_GET_DIRTY_BITMAP
        case .iommuHWPTInvalidate: IOMMU_HWPT_INVALIDATE
        case .iommuFaultQueueAlloc: IOMMU_FAULT_QUEUE_ALLOC
        case .iommuIOASMapFile: IOMMU_IOAS_MAP_FILE
        case .iommuVIOMMUAlloc: IOMMU_VIOMMU_ALLOC
        case .iommuVDeviceAlloc: IOMMU_VDEVICE_ALLOC
        case .iommuIOASChangeProcess: IOMMU_IOAS_CHANGE_PROCESS
        case .iommuVEventQAlloc: IOMMU_VEVENTQ_ALLOC
        case .iommuHWQueueAlloc: IOMMU_HW_QUEUE_ALLOC
        }
    }
    /// Its uapi: VFIO or iommufd.
    public var family: Family { entry.family }
    /// The kind of fd it is issued on.
    public var target: Target { entry.target }
    /// The Linux release that added the request.
    public var introduced: KernelVersion { entry.introduced }

    public var description: String { name }

    /// Every VFIO and iommufd request of Linux 7.2 (VFIO first; iommufd in command order).
    public static var all: [Request] { allCases }

    /// The iommufd requests, in command order.
    public static var iommufd: [Request] { allCases.filter { $0.family == .iommufd } }

    /// The request named `name` (the kernel's spelling), if it is in the table.
    public static func named(_ name: String) -> Request? { allCases.first { $0.name == name } }
}

extension Request: Codable {
    /// Requests are coded as the kernel's name.
    public init(from decoder: any Decoder) throws {
        let name = try decoder.singleValueContainer().decode(String.self)
        guard let r = Request.named(name) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "no request \(name)"))
        }
        self = r
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(name)
    }
}

extension OwnedFD {
    /// Which of `requests` the kernel behind this fd knows, without doing
    /// anything: each is issued with a zeroed argument whose `size` is 0, which
    /// a kernel that knows the request rejects (EINVAL: too short) before
    /// looking further, and one that does not answers ENOTTY. Throws only when
    /// the fd is closed. The one probe of the library: `IOMMUFD.features()`
    /// and the doctor's check of /dev/iommu use it.
    package func probe(_ requests: [Request]) throws(VFIOError) -> [(request: Request, present: Bool)] {
        var out: [(request: Request, present: Bool)] = []
        out.reserveCapacity(requests.count)
        for request in requests {
            // Large enough for any iommufd argument; size 0 is always "too short".
            var zero = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
            let r = try withUnsafeMutableBytes(of: &zero) { (p) throws(VFIOError) in
                try probeIoctl(request, p.baseAddress)
            }
            out.append((request, r != -ENOTTY))
        }
        return out
    }
}
