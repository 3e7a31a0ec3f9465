import CVFIO
import Synchronization

/// One ioctl request of the kernel's VFIO and iommufd uapi: its name, number,
/// family and, where VFIOKit says it in messages, the Linux release that added it.
///
/// ``all`` is the one table of requests: error messages name requests from it,
/// "this kernel lacks X (added in Linux N)" hints read it, and the probes of
/// what the running kernel has (``OwnedFD/probe(_:)``: `IOMMUFD.features()`
/// and `vfioctl doctor`) walk it.
public struct Request: Sendable, Hashable, CustomStringConvertible {
    public enum Family: String, Sendable { case vfio, iommufd }

    /// The kernel's name (`IOMMU_IOAS_MAP`).
    public let name: String
    /// The request number the ioctl takes.
    public let number: UInt
    public let family: Family
    /// The Linux release that added the request (`"6.2"`), nil for the VFIO
    /// requests older than any kernel VFIOKit supports.
    public let introduced: String?

    init(_ name: String, _ number: UInt, _ family: Family, introduced: String?) {
        self.name = name
        self.number = number
        self.family = family
        self.introduced = introduced
    }

    public var description: String { name }

    /// Every VFIO and iommufd request of Linux 7.2; the iommufd ones in command order.
    public static let all: [Request] = [
        Request("VFIO_GET_API_VERSION", VFIO_GET_API_VERSION, .vfio, introduced: nil),
        Request("VFIO_CHECK_EXTENSION", VFIO_CHECK_EXTENSION, .vfio, introduced: nil),
        Request("VFIO_SET_IOMMU", VFIO_SET_IOMMU, .vfio, introduced: nil),
        Request("VFIO_GROUP_GET_STATUS", VFIO_GROUP_GET_STATUS, .vfio, introduced: nil),
        Request("VFIO_GROUP_SET_CONTAINER", VFIO_GROUP_SET_CONTAINER, .vfio, introduced: nil),
        Request("VFIO_GROUP_UNSET_CONTAINER", VFIO_GROUP_UNSET_CONTAINER, .vfio, introduced: nil),
        Request("VFIO_GROUP_GET_DEVICE_FD", VFIO_GROUP_GET_DEVICE_FD, .vfio, introduced: nil),
        Request("VFIO_DEVICE_GET_INFO", VFIO_DEVICE_GET_INFO, .vfio, introduced: nil),
        Request("VFIO_DEVICE_GET_REGION_INFO", VFIO_DEVICE_GET_REGION_INFO, .vfio, introduced: nil),
        Request("VFIO_DEVICE_GET_IRQ_INFO", VFIO_DEVICE_GET_IRQ_INFO, .vfio, introduced: nil),
        Request("VFIO_DEVICE_SET_IRQS", VFIO_DEVICE_SET_IRQS, .vfio, introduced: nil),
        Request("VFIO_DEVICE_RESET", VFIO_DEVICE_RESET, .vfio, introduced: nil),
        Request("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO", VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, .vfio, introduced: nil),
        Request("VFIO_DEVICE_PCI_HOT_RESET", VFIO_DEVICE_PCI_HOT_RESET, .vfio, introduced: nil),
        Request("VFIO_DEVICE_QUERY_GFX_PLANE", VFIO_DEVICE_QUERY_GFX_PLANE, .vfio, introduced: nil),
        Request("VFIO_DEVICE_GET_GFX_DMABUF", VFIO_DEVICE_GET_GFX_DMABUF, .vfio, introduced: nil),
        Request("VFIO_DEVICE_IOEVENTFD", VFIO_DEVICE_IOEVENTFD, .vfio, introduced: "4.17"),
        Request("VFIO_DEVICE_FEATURE", VFIO_DEVICE_FEATURE, .vfio, introduced: "5.7"),
        Request("VFIO_DEVICE_BIND_IOMMUFD", VFIO_DEVICE_BIND_IOMMUFD, .vfio, introduced: "6.6"),
        Request("VFIO_DEVICE_ATTACH_IOMMUFD_PT", VFIO_DEVICE_ATTACH_IOMMUFD_PT, .vfio, introduced: "6.6"),
        Request("VFIO_DEVICE_DETACH_IOMMUFD_PT", VFIO_DEVICE_DETACH_IOMMUFD_PT, .vfio, introduced: "6.6"),
        Request("VFIO_MIG_GET_PRECOPY_INFO", VFIO_MIG_GET_PRECOPY_INFO, .vfio, introduced: "6.2"),
        Request("VFIO_IOMMU_GET_INFO", VFIO_IOMMU_GET_INFO, .vfio, introduced: nil),
        Request("VFIO_IOMMU_MAP_DMA", VFIO_IOMMU_MAP_DMA, .vfio, introduced: nil),
        Request("VFIO_IOMMU_UNMAP_DMA", VFIO_IOMMU_UNMAP_DMA, .vfio, introduced: nil),
        Request("VFIO_IOMMU_ENABLE", VFIO_IOMMU_ENABLE, .vfio, introduced: nil),
        Request("VFIO_IOMMU_DISABLE", VFIO_IOMMU_DISABLE, .vfio, introduced: nil),
        Request("VFIO_IOMMU_DIRTY_PAGES", VFIO_IOMMU_DIRTY_PAGES, .vfio, introduced: nil),
        Request("VFIO_IOMMU_SPAPR_TCE_GET_INFO", VFIO_IOMMU_SPAPR_TCE_GET_INFO, .vfio, introduced: nil),
        Request("VFIO_EEH_PE_OP", VFIO_EEH_PE_OP, .vfio, introduced: nil),
        Request("VFIO_IOMMU_SPAPR_REGISTER_MEMORY", VFIO_IOMMU_SPAPR_REGISTER_MEMORY, .vfio, introduced: nil),
        Request("VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY", VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY, .vfio, introduced: nil),
        Request("VFIO_IOMMU_SPAPR_TCE_CREATE", VFIO_IOMMU_SPAPR_TCE_CREATE, .vfio, introduced: nil),
        Request("VFIO_IOMMU_SPAPR_TCE_REMOVE", VFIO_IOMMU_SPAPR_TCE_REMOVE, .vfio, introduced: nil),
        Request("IOMMU_DESTROY", IOMMU_DESTROY, .iommufd, introduced: "6.2"),
        Request("IOMMU_IOAS_ALLOC", IOMMU_IOAS_ALLOC, .iommufd, introduced: "6.2"),
        Request("IOMMU_IOAS_ALLOW_IOVAS", IOMMU_IOAS_ALLOW_IOVAS, .iommufd, introduced: "6.2"),
        Request("IOMMU_IOAS_COPY", IOMMU_IOAS_COPY, .iommufd, introduced: "6.2"),
        Request("IOMMU_IOAS_IOVA_RANGES", IOMMU_IOAS_IOVA_RANGES, .iommufd, introduced: "6.2"),
        Request("IOMMU_IOAS_MAP", IOMMU_IOAS_MAP, .iommufd, introduced: "6.2"),
        Request("IOMMU_IOAS_UNMAP", IOMMU_IOAS_UNMAP, .iommufd, introduced: "6.2"),
        Request("IOMMU_OPTION", IOMMU_OPTION, .iommufd, introduced: "6.2"),
        Request("IOMMU_VFIO_IOAS", IOMMU_VFIO_IOAS, .iommufd, introduced: "6.2"),
        Request("IOMMU_HWPT_ALLOC", IOMMU_HWPT_ALLOC, .iommufd, introduced: "6.6"),
        Request("IOMMU_GET_HW_INFO", IOMMU_GET_HW_INFO, .iommufd, introduced: "6.6"),
        Request("IOMMU_HWPT_SET_DIRTY_TRACKING", IOMMU_HWPT_SET_DIRTY_TRACKING, .iommufd, introduced: "6.7"),
        Request("IOMMU_HWPT_GET_DIRTY_BITMAP", IOMMU_HWPT_GET_DIRTY_BITMAP, .iommufd, introduced: "6.7"),
        Request("IOMMU_HWPT_INVALIDATE", IOMMU_HWPT_INVALIDATE, .iommufd, introduced: "6.8"),
        Request("IOMMU_FAULT_QUEUE_ALLOC", IOMMU_FAULT_QUEUE_ALLOC, .iommufd, introduced: "6.11"),
        Request("IOMMU_IOAS_MAP_FILE", IOMMU_IOAS_MAP_FILE, .iommufd, introduced: "6.13"),
        Request("IOMMU_VIOMMU_ALLOC", IOMMU_VIOMMU_ALLOC, .iommufd, introduced: "6.13"),
        Request("IOMMU_VDEVICE_ALLOC", IOMMU_VDEVICE_ALLOC, .iommufd, introduced: "6.13"),
        Request("IOMMU_IOAS_CHANGE_PROCESS", IOMMU_IOAS_CHANGE_PROCESS, .iommufd, introduced: "6.13"),
        Request("IOMMU_VEVENTQ_ALLOC", IOMMU_VEVENTQ_ALLOC, .iommufd, introduced: "6.15"),
        Request("IOMMU_HW_QUEUE_ALLOC", IOMMU_HW_QUEUE_ALLOC, .iommufd, introduced: "6.17"),
    ]

    /// The iommufd requests, in command order.
    public static var iommufd: [Request] { all.filter { $0.family == .iommufd } }

    /// The request named `name`, if it is in the table.
    public static func named(_ name: String) -> Request? { byName[name] }

    private static let byName: [String: Request] = Dictionary(all.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
    private static let byNumber: [UInt: String] = Dictionary(all.map { ($0.number, $0.name) }, uniquingKeysWith: { a, _ in a })

    /// The kernel's name for request `number`, or its hex value for one not in
    /// the table (the selftest's IOMMU_TEST_CMD registers itself through
    /// ``register(_:_:)``). Consulted only on failure.
    public static func name(of number: UInt) -> String {
        if let n = byNumber[number] { return n }
        if let n = extra.withLock({ $0[number] }) { return n }
        return "ioctl 0x" + String(number, radix: 16)
    }

    private static let extra = Mutex<[UInt: String]>([:])

    /// Names a request that is not part of the uapi (test-only ABIs).
    package static func register(_ name: String, _ number: UInt) {
        extra.withLock { $0[number] = name }
    }
}

extension OwnedFD {
    /// Which of `requests` the kernel behind this fd knows, without doing
    /// anything: each is issued with a zeroed argument whose `size` is 0, which
    /// a kernel that knows the request rejects (EINVAL: too short) before
    /// looking further, and one that does not answers ENOTTY. Throws only when
    /// the fd is closed. The one probe of the library: `IOMMUFD.features()`
    /// and doctor's check of /dev/iommu use it.
    package func probe(_ requests: [Request]) throws(VFIOError) -> [(request: Request, present: Bool)] {
        var out: [(request: Request, present: Bool)] = []
        out.reserveCapacity(requests.count)
        for request in requests {
            // Large enough for any iommufd argument; size 0 is always "too short".
            var zero = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
            let r = try withUnsafeMutableBytes(of: &zero) { (p) throws(VFIOError) in
                try probeIoctl(request.number, p.baseAddress)
            }
            out.append((request, r != -ENOTTY))
        }
        return out
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
