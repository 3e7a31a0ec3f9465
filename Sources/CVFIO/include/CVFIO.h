/*
 * CVFIO umbrella header: the VFIO and iommufd user ABI of Linux 7.2 under the
 * kernel's own names, plus a few fixed-signature helpers for Swift.
 *
 * No system <linux/vfio.h> or <linux/iommufd.h> is needed (or used): the ABI
 * headers need only <linux/types.h> and <linux/ioctl.h>.
 */
#ifndef CVFIO_H
#define CVFIO_H

#include "cvfio_vfio.h"
#include "cvfio_iommufd.h"
#include "cvfio_shim.h"
#include "cvfio_mmio.h" /* volatile MMIO loads and stores */
#include "cvfio_sys.h" /* syscall wrappers (open, eventfd, errno) used by VFIOKit */

#endif /* CVFIO_H */
