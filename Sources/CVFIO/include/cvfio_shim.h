/*
 * Helpers for Swift: fixed-signature ioctl entry points (glibc's ioctl is
 * variadic, musl's takes an int request) and accessors for the flexible array
 * members, which Swift does not import as fields.
 *
 * Each accessor returns a pointer to the first element of the trailing array;
 * the caller must have allocated the struct with room for the elements.
 */
#ifndef CVFIO_SHIM_H
#define CVFIO_SHIM_H

#include <sys/ioctl.h>
#include "cvfio_vfio.h"
#include "cvfio_iommufd.h"

/* ioctl(fd, request, arg) for requests whose argument is a pointer. */
static inline int cvfio_ioctl(int fd, unsigned long request, void *arg)
{
	return ioctl(fd, request, arg);
}

/* ioctl(fd, request, value) for requests whose argument is a plain integer
 * (VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU) or absent (pass 0). */
static inline int cvfio_ioctl_value(int fd, unsigned long request, unsigned long value)
{
	return ioctl(fd, request, value);
}

/* struct vfio_region_info_cap_sparse_mmap.areas[nr_areas] */
static inline struct vfio_region_sparse_mmap_area *
cvfio_sparse_areas(struct vfio_region_info_cap_sparse_mmap *cap)
{
	return cap->areas;
}

/* struct vfio_irq_set.data[]: count u8 bools or count __s32 eventfds */
static inline __u8 *cvfio_irq_set_data(struct vfio_irq_set *set)
{
	return set->data;
}

/* the same bytes as cvfio_irq_set_data(), typed for VFIO_IRQ_SET_DATA_EVENTFD */
static inline __s32 *cvfio_irq_set_eventfds(struct vfio_irq_set *set)
{
	return (__s32 *)(void *)set->data;
}

/* struct vfio_pci_hot_reset_info.devices[count] */
static inline struct vfio_pci_dependent_device *
cvfio_hot_reset_info_devices(struct vfio_pci_hot_reset_info *info)
{
	return info->devices;
}

/* struct vfio_pci_hot_reset.group_fds[count] */
static inline __s32 *cvfio_hot_reset_group_fds(struct vfio_pci_hot_reset *reset)
{
	return reset->group_fds;
}

/* struct vfio_device_feature.data[]: the feature's payload */
static inline __u8 *cvfio_device_feature_data(struct vfio_device_feature *feature)
{
	return feature->data;
}

/* struct vfio_device_feature_dma_buf.dma_ranges[nr_ranges] */
static inline struct vfio_region_dma_range *
cvfio_dma_buf_ranges(struct vfio_device_feature_dma_buf *dma_buf)
{
	return dma_buf->dma_ranges;
}

/* struct vfio_iommu_type1_info_cap_iova_range.iova_ranges[nr_iovas] */
static inline struct vfio_iova_range *
cvfio_iova_ranges(struct vfio_iommu_type1_info_cap_iova_range *cap)
{
	return cap->iova_ranges;
}

/* struct vfio_iommu_type1_dma_unmap.data[]: a struct vfio_bitmap with
 * VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP */
static inline __u8 *cvfio_dma_unmap_data(struct vfio_iommu_type1_dma_unmap *unmap)
{
	return unmap->data;
}

/* struct vfio_iommu_type1_dirty_bitmap.data[]: a struct
 * vfio_iommu_type1_dirty_bitmap_get with VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP */
static inline __u8 *cvfio_dirty_bitmap_data(struct vfio_iommu_type1_dirty_bitmap *bitmap)
{
	return bitmap->data;
}

#endif /* CVFIO_SHIM_H */
