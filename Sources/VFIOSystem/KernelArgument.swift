import CVFIO

/// A VFIO ioctl argument: a C struct that starts with `argsz` and `flags`.
///
/// Build one with ``make()``: it zeroes the struct and fills `argsz`, so no
/// caller ever writes a size by hand.
///
/// `@usableFromInline`, so the inlinable ``make()`` is specialised in the
/// caller's module (a `package` protocol alone keeps it a generic call there).
@usableFromInline
package protocol VFIOArgument {
    init()
    var argsz: UInt32 { get set }
}

/// An iommufd ioctl argument: a C struct that starts with `size`.
/// `@usableFromInline` for ``make()``, as ``VFIOArgument``.
@usableFromInline
package protocol IOMMUArgument {
    init()
    var size: UInt32 { get set }
}

extension VFIOArgument {
    /// A zeroed argument with `argsz` set to this struct's size. Inlinable: made
    /// in the caller's module, it is specialised there (a generic call across the
    /// module boundary cost about 35 user instructions per argument).
    @inlinable @inline(__always)
    package static func make() -> Self {
        var a = Self()
        a.argsz = UInt32(MemoryLayout<Self>.size)
        return a
    }
}

extension IOMMUArgument {
    /// A zeroed argument with `size` set to this struct's size (inlinable, as
    /// ``VFIOArgument/make()``).
    @inlinable @inline(__always)
    package static func make() -> Self {
        var a = Self()
        a.size = UInt32(MemoryLayout<Self>.size)
        return a
    }
}

extension vfio_group_status: VFIOArgument {}
extension vfio_device_info: VFIOArgument {}
extension vfio_region_info: VFIOArgument {}
extension vfio_irq_info: VFIOArgument {}
extension vfio_irq_set: VFIOArgument {}
extension vfio_pci_hot_reset_info: VFIOArgument {}
extension vfio_pci_hot_reset: VFIOArgument {}
extension vfio_device_gfx_plane_info: VFIOArgument {}
extension vfio_device_ioeventfd: VFIOArgument {}
extension vfio_device_feature: VFIOArgument {}
extension vfio_device_bind_iommufd: VFIOArgument {}
extension vfio_device_attach_iommufd_pt: VFIOArgument {}
extension vfio_device_detach_iommufd_pt: VFIOArgument {}
extension vfio_precopy_info: VFIOArgument {}
extension vfio_iommu_type1_info: VFIOArgument {}
extension vfio_iommu_type1_dma_map: VFIOArgument {}
extension vfio_iommu_type1_dma_unmap: VFIOArgument {}
extension vfio_iommu_type1_dirty_bitmap: VFIOArgument {}
extension vfio_iommu_spapr_tce_info: VFIOArgument {}
extension vfio_eeh_pe_op: VFIOArgument {}
extension vfio_iommu_spapr_register_memory: VFIOArgument {}
extension vfio_iommu_spapr_tce_create: VFIOArgument {}
extension vfio_iommu_spapr_tce_remove: VFIOArgument {}

extension iommu_destroy: IOMMUArgument {}
extension iommu_ioas_alloc: IOMMUArgument {}
extension iommu_ioas_iova_ranges: IOMMUArgument {}
extension iommu_ioas_allow_iovas: IOMMUArgument {}
extension iommu_ioas_map: IOMMUArgument {}
extension iommu_ioas_map_file: IOMMUArgument {}
extension iommu_ioas_copy: IOMMUArgument {}
extension iommu_ioas_unmap: IOMMUArgument {}
extension iommu_option: IOMMUArgument {}
extension iommu_vfio_ioas: IOMMUArgument {}
extension iommu_hwpt_alloc: IOMMUArgument {}
extension iommu_hw_info: IOMMUArgument {}
extension iommu_hwpt_set_dirty_tracking: IOMMUArgument {}
extension iommu_hwpt_get_dirty_bitmap: IOMMUArgument {}
extension iommu_hwpt_invalidate: IOMMUArgument {}
extension iommu_fault_alloc: IOMMUArgument {}
extension iommu_viommu_alloc: IOMMUArgument {}
extension iommu_vdevice_alloc: IOMMUArgument {}
extension iommu_ioas_change_process: IOMMUArgument {}
extension iommu_veventq_alloc: IOMMUArgument {}
extension iommu_hw_queue_alloc: IOMMUArgument {}
