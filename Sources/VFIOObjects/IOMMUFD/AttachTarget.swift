import VFIOSystem

/// Something a device can be attached to in iommufd: an ``IOAS`` (the kernel
/// then picks or makes a paging domain) or a ``HWPT``.
///
/// A device attached to a target keeps it alive until it detaches, so an
/// address space can never be destroyed under a device that uses it.
public protocol IOMMUAttachTarget: AnyObject, Sendable {
    /// The iommufd object id (`pt_id` in `VFIO_DEVICE_ATTACH_IOMMUFD_PT`).
    var objectID: UInt32 { get }
    /// The context the object lives in.
    var iommufd: IOMMUFD { get }
}
