import CVFIO

/// Request number to the kernel's name, so every ioctl error names its ioctl
/// without each call site spelling it out. Consulted only on failure.
public enum IoctlNames {
    /// Every VFIO and iommufd request of Linux 7.2, by the kernel's name.
    public static let all: [(name: String, request: UInt)] = [
        ("VFIO_GET_API_VERSION", VFIO_GET_API_VERSION),
        ("VFIO_CHECK_EXTENSION", VFIO_CHECK_EXTENSION),
        ("VFIO_SET_IOMMU", VFIO_SET_IOMMU),
        ("VFIO_GROUP_GET_STATUS", VFIO_GROUP_GET_STATUS),
        ("VFIO_GROUP_SET_CONTAINER", VFIO_GROUP_SET_CONTAINER),
        ("VFIO_GROUP_UNSET_CONTAINER", VFIO_GROUP_UNSET_CONTAINER),
        ("VFIO_GROUP_GET_DEVICE_FD", VFIO_GROUP_GET_DEVICE_FD),
        ("VFIO_DEVICE_GET_INFO", VFIO_DEVICE_GET_INFO),
        ("VFIO_DEVICE_GET_REGION_INFO", VFIO_DEVICE_GET_REGION_INFO),
        ("VFIO_DEVICE_GET_IRQ_INFO", VFIO_DEVICE_GET_IRQ_INFO),
        ("VFIO_DEVICE_SET_IRQS", VFIO_DEVICE_SET_IRQS),
        ("VFIO_DEVICE_RESET", VFIO_DEVICE_RESET),
        ("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO", VFIO_DEVICE_GET_PCI_HOT_RESET_INFO),
        ("VFIO_DEVICE_PCI_HOT_RESET", VFIO_DEVICE_PCI_HOT_RESET),
        ("VFIO_DEVICE_QUERY_GFX_PLANE", VFIO_DEVICE_QUERY_GFX_PLANE),
        ("VFIO_DEVICE_GET_GFX_DMABUF", VFIO_DEVICE_GET_GFX_DMABUF),
        ("VFIO_DEVICE_IOEVENTFD", VFIO_DEVICE_IOEVENTFD),
        ("VFIO_DEVICE_FEATURE", VFIO_DEVICE_FEATURE),
        ("VFIO_DEVICE_BIND_IOMMUFD", VFIO_DEVICE_BIND_IOMMUFD),
        ("VFIO_DEVICE_ATTACH_IOMMUFD_PT", VFIO_DEVICE_ATTACH_IOMMUFD_PT),
        ("VFIO_DEVICE_DETACH_IOMMUFD_PT", VFIO_DEVICE_DETACH_IOMMUFD_PT),
        ("VFIO_MIG_GET_PRECOPY_INFO", VFIO_MIG_GET_PRECOPY_INFO),
        ("VFIO_IOMMU_GET_INFO", VFIO_IOMMU_GET_INFO),
        ("VFIO_IOMMU_MAP_DMA", VFIO_IOMMU_MAP_DMA),
        ("VFIO_IOMMU_UNMAP_DMA", VFIO_IOMMU_UNMAP_DMA),
        ("VFIO_IOMMU_ENABLE", VFIO_IOMMU_ENABLE),
        ("VFIO_IOMMU_DISABLE", VFIO_IOMMU_DISABLE),
        ("VFIO_IOMMU_DIRTY_PAGES", VFIO_IOMMU_DIRTY_PAGES),
        ("VFIO_IOMMU_SPAPR_TCE_GET_INFO", VFIO_IOMMU_SPAPR_TCE_GET_INFO),
        ("VFIO_EEH_PE_OP", VFIO_EEH_PE_OP),
        ("VFIO_IOMMU_SPAPR_REGISTER_MEMORY", VFIO_IOMMU_SPAPR_REGISTER_MEMORY),
        ("VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY", VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY),
        ("VFIO_IOMMU_SPAPR_TCE_CREATE", VFIO_IOMMU_SPAPR_TCE_CREATE),
        ("VFIO_IOMMU_SPAPR_TCE_REMOVE", VFIO_IOMMU_SPAPR_TCE_REMOVE),
        ("IOMMU_DESTROY", IOMMU_DESTROY),
        ("IOMMU_IOAS_ALLOC", IOMMU_IOAS_ALLOC),
        ("IOMMU_IOAS_IOVA_RANGES", IOMMU_IOAS_IOVA_RANGES),
        ("IOMMU_IOAS_ALLOW_IOVAS", IOMMU_IOAS_ALLOW_IOVAS),
        ("IOMMU_IOAS_MAP", IOMMU_IOAS_MAP),
        ("IOMMU_IOAS_MAP_FILE", IOMMU_IOAS_MAP_FILE),
        ("IOMMU_IOAS_COPY", IOMMU_IOAS_COPY),
        ("IOMMU_IOAS_UNMAP", IOMMU_IOAS_UNMAP),
        ("IOMMU_OPTION", IOMMU_OPTION),
        ("IOMMU_VFIO_IOAS", IOMMU_VFIO_IOAS),
        ("IOMMU_HWPT_ALLOC", IOMMU_HWPT_ALLOC),
        ("IOMMU_GET_HW_INFO", IOMMU_GET_HW_INFO),
        ("IOMMU_HWPT_SET_DIRTY_TRACKING", IOMMU_HWPT_SET_DIRTY_TRACKING),
        ("IOMMU_HWPT_GET_DIRTY_BITMAP", IOMMU_HWPT_GET_DIRTY_BITMAP),
        ("IOMMU_HWPT_INVALIDATE", IOMMU_HWPT_INVALIDATE),
        ("IOMMU_FAULT_QUEUE_ALLOC", IOMMU_FAULT_QUEUE_ALLOC),
        ("IOMMU_VIOMMU_ALLOC", IOMMU_VIOMMU_ALLOC),
        ("IOMMU_VDEVICE_ALLOC", IOMMU_VDEVICE_ALLOC),
        ("IOMMU_IOAS_CHANGE_PROCESS", IOMMU_IOAS_CHANGE_PROCESS),
        ("IOMMU_VEVENTQ_ALLOC", IOMMU_VEVENTQ_ALLOC),
        ("IOMMU_HW_QUEUE_ALLOC", IOMMU_HW_QUEUE_ALLOC),
    ]

    private static let byRequest: [UInt: String] = Dictionary(
        all.map { ($0.request, $0.name) }, uniquingKeysWith: { a, _ in a })

    /// The kernel's name for `request`, or its hex value for one we do not know
    /// (the selftest's IOMMU_TEST_CMD registers itself through ``register(_:_:)``).
    public static func name(of request: UInt) -> String {
        if let n = byRequest[request] { return n }
        if let n = extra.withLock({ $0[request] }) { return n }
        return "ioctl 0x" + String(request, radix: 16)
    }

    private static let extra = Mutex<[UInt: String]>([:])

    /// Names a request that is not part of the uapi (test-only ABIs).
    public static func register(_ name: String, _ request: UInt) {
        extra.withLock { $0[request] = name }
    }
}

import Synchronization
