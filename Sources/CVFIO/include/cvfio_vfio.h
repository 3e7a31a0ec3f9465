/*
 * CVFIO: the VFIO user ABI of Linux 7.2 (<linux/vfio.h>), written for VFIOKit.
 *
 * Same type, field and constant names as the kernel's header, so code written
 * against the kernel ABI reads the same. Differences, all deliberate:
 *   - object-like constants are typed `static const` variables instead of
 *     macros, typed after the field or argument they go into (macros would
 *     import into Swift as Int32 and request macros would not import at all);
 *   - ioctl request numbers are `static const unsigned long`;
 *   - the kernel's three function-like state macros are static inline functions.
 * Scripts/abi-check.sh compares every size, offset and value with the kernel.
 *
 * Include this before any <linux/vfio.h>: it claims the kernel header's include
 * guards, so a later #include <linux/vfio.h> is a no-op.
 */
#ifndef CVFIO_VFIO_H
#define CVFIO_VFIO_H

#if defined(VFIO_H) || defined(_UAPIVFIO_H)
#error "<linux/vfio.h> was included before CVFIO: include CVFIO's headers first (they replace it)"
#endif
#define _UAPIVFIO_H 1 /* guard of include/uapi/linux/vfio.h */
#define VFIO_H 1      /* the same guard as installed by make headers_install */

#include <linux/types.h>
#include <linux/ioctl.h>

/* Request numbers: _IO(';', 100 + n); no size is encoded, argsz carries it. */
#define CVFIO_VFIO_IO_(n) _IO(';', 100 + (n))

/* ---- API version, IOMMU types and extensions (VFIO_CHECK_EXTENSION's argument) */

static const int VFIO_API_VERSION = 0;

static const unsigned long VFIO_TYPE1_IOMMU = 1;
static const unsigned long VFIO_SPAPR_TCE_IOMMU = 2;
static const unsigned long VFIO_TYPE1v2_IOMMU = 3;
static const unsigned long VFIO_DMA_CC_IOMMU = 4;
static const unsigned long VFIO_EEH = 5;
static const unsigned long __VFIO_RESERVED_TYPE1_NESTING_IOMMU = 6;
static const unsigned long VFIO_SPAPR_TCE_v2_IOMMU = 7;
static const unsigned long VFIO_NOIOMMU_IOMMU = 8;
static const unsigned long VFIO_UNMAP_ALL = 9;
static const unsigned long VFIO_UPDATE_VADDR = 10;

static const unsigned int VFIO_TYPE = ';';
static const unsigned int VFIO_BASE = 100;

/* ---- capability chain header, shared by the *_INFO ioctls */

struct vfio_info_cap_header {
	__u16 id;
	__u16 version;
	__u32 next; /* offset of the next capability from the start of the info buffer, 0 ends */
};

/* ---- container fd (/dev/vfio/vfio) */

static const unsigned long VFIO_GET_API_VERSION = CVFIO_VFIO_IO_(0);
static const unsigned long VFIO_CHECK_EXTENSION = CVFIO_VFIO_IO_(1);
static const unsigned long VFIO_SET_IOMMU = CVFIO_VFIO_IO_(2);

/* ---- group fd (/dev/vfio/$GROUP) */

struct vfio_group_status {
	__u32 argsz;
	__u32 flags;
};
static const __u32 VFIO_GROUP_FLAGS_VIABLE = 1u << 0;
static const __u32 VFIO_GROUP_FLAGS_CONTAINER_SET = 1u << 1;

static const unsigned long VFIO_GROUP_GET_STATUS = CVFIO_VFIO_IO_(3);
static const unsigned long VFIO_GROUP_SET_CONTAINER = CVFIO_VFIO_IO_(4);
static const unsigned long VFIO_GROUP_UNSET_CONTAINER = CVFIO_VFIO_IO_(5);
static const unsigned long VFIO_GROUP_GET_DEVICE_FD = CVFIO_VFIO_IO_(6);

/* ---- device fd: info */

struct vfio_device_info {
	__u32 argsz;
	__u32 flags;
	__u32 num_regions;
	__u32 num_irqs;
	__u32 cap_offset;
	__u32 pad;
};
static const __u32 VFIO_DEVICE_FLAGS_RESET = 1u << 0;
static const __u32 VFIO_DEVICE_FLAGS_PCI = 1u << 1;
static const __u32 VFIO_DEVICE_FLAGS_PLATFORM = 1u << 2;
static const __u32 VFIO_DEVICE_FLAGS_AMBA = 1u << 3;
static const __u32 VFIO_DEVICE_FLAGS_CCW = 1u << 4;
static const __u32 VFIO_DEVICE_FLAGS_AP = 1u << 5;
static const __u32 VFIO_DEVICE_FLAGS_FSL_MC = 1u << 6;
static const __u32 VFIO_DEVICE_FLAGS_CAPS = 1u << 7;
static const __u32 VFIO_DEVICE_FLAGS_CDX = 1u << 8;

static const unsigned long VFIO_DEVICE_GET_INFO = CVFIO_VFIO_IO_(7);

/* device_api strings of mdev types */
static const char *const VFIO_DEVICE_API_PCI_STRING = "vfio-pci";
static const char *const VFIO_DEVICE_API_PLATFORM_STRING = "vfio-platform";
static const char *const VFIO_DEVICE_API_AMBA_STRING = "vfio-amba";
static const char *const VFIO_DEVICE_API_CCW_STRING = "vfio-ccw";
static const char *const VFIO_DEVICE_API_AP_STRING = "vfio-ap";

/* device info capability ids (vfio_info_cap_header.id) */
static const __u16 VFIO_DEVICE_INFO_CAP_ZPCI_BASE = 1;
static const __u16 VFIO_DEVICE_INFO_CAP_ZPCI_GROUP = 2;
static const __u16 VFIO_DEVICE_INFO_CAP_ZPCI_UTIL = 3;
static const __u16 VFIO_DEVICE_INFO_CAP_ZPCI_PFIP = 4;
static const __u16 VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP = 5;

struct vfio_device_info_cap_pci_atomic_comp {
	struct vfio_info_cap_header header;
	__u32 flags;
	__u32 reserved;
};
static const __u32 VFIO_PCI_ATOMIC_COMP32 = 1u << 0;
static const __u32 VFIO_PCI_ATOMIC_COMP64 = 1u << 1;
static const __u32 VFIO_PCI_ATOMIC_COMP128 = 1u << 2;

/* ---- device fd: regions */

struct vfio_region_info {
	__u32 argsz;
	__u32 flags;
	__u32 index;
	__u32 cap_offset;
	__aligned_u64 size;
	__aligned_u64 offset; /* offset of the region within the device fd */
};
static const __u32 VFIO_REGION_INFO_FLAG_READ = 1u << 0;
static const __u32 VFIO_REGION_INFO_FLAG_WRITE = 1u << 1;
static const __u32 VFIO_REGION_INFO_FLAG_MMAP = 1u << 2;
static const __u32 VFIO_REGION_INFO_FLAG_CAPS = 1u << 3;

static const unsigned long VFIO_DEVICE_GET_REGION_INFO = CVFIO_VFIO_IO_(8);

/* region info capability ids (vfio_info_cap_header.id) */
static const __u16 VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1;
static const __u16 VFIO_REGION_INFO_CAP_TYPE = 2;
static const __u16 VFIO_REGION_INFO_CAP_MSIX_MAPPABLE = 3;
static const __u16 VFIO_REGION_INFO_CAP_NVLINK2_SSATGT = 4;
static const __u16 VFIO_REGION_INFO_CAP_NVLINK2_LNKSPD = 5;

struct vfio_region_sparse_mmap_area {
	__aligned_u64 offset;
	__aligned_u64 size;
};

struct vfio_region_info_cap_sparse_mmap {
	struct vfio_info_cap_header header;
	__u32 nr_areas;
	__u32 reserved;
	struct vfio_region_sparse_mmap_area areas[]; /* see cvfio_sparse_areas() */
};

struct vfio_region_info_cap_type {
	struct vfio_info_cap_header header;
	__u32 type;
	__u32 subtype;
};

/* region types (vfio_region_info_cap_type.type) */
static const __u32 VFIO_REGION_TYPE_PCI_VENDOR_TYPE = 1u << 31;
static const __u32 VFIO_REGION_TYPE_PCI_VENDOR_MASK = 0xffff;
static const __u32 VFIO_REGION_TYPE_GFX = 1;
static const __u32 VFIO_REGION_TYPE_CCW = 2;
static const __u32 VFIO_REGION_TYPE_MIGRATION_DEPRECATED = 3;

/* region subtypes (vfio_region_info_cap_type.subtype) */
static const __u32 VFIO_REGION_SUBTYPE_INTEL_IGD_OPREGION = 1;
static const __u32 VFIO_REGION_SUBTYPE_INTEL_IGD_HOST_CFG = 2;
static const __u32 VFIO_REGION_SUBTYPE_INTEL_IGD_LPC_CFG = 3;
static const __u32 VFIO_REGION_SUBTYPE_NVIDIA_NVLINK2_RAM = 1;
static const __u32 VFIO_REGION_SUBTYPE_IBM_NVLINK2_ATSD = 1;
static const __u32 VFIO_REGION_SUBTYPE_GFX_EDID = 1;
static const __u32 VFIO_REGION_SUBTYPE_CCW_ASYNC_CMD = 1;
static const __u32 VFIO_REGION_SUBTYPE_CCW_SCHIB = 2;
static const __u32 VFIO_REGION_SUBTYPE_CCW_CRW = 3;
static const __u32 VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED = 1;

/* layout of the EDID region of a GFX device */
struct vfio_region_gfx_edid {
	__u32 edid_offset;
	__u32 edid_max_size;
	__u32 edid_size;
	__u32 max_xres;
	__u32 max_yres;
	__u32 link_state;
};
static const __u32 VFIO_DEVICE_GFX_LINK_STATE_UP = 1;
static const __u32 VFIO_DEVICE_GFX_LINK_STATE_DOWN = 2;

/* v1 migration region (deprecated, no longer offered by the kernel) */
struct vfio_device_migration_info {
	__u32 device_state;
	__u32 reserved;
	__aligned_u64 pending_bytes;
	__aligned_u64 data_offset;
	__aligned_u64 data_size;
};
static const __u32 VFIO_DEVICE_STATE_V1_STOP = 0;
static const __u32 VFIO_DEVICE_STATE_V1_RUNNING = 1u << 0;
static const __u32 VFIO_DEVICE_STATE_V1_SAVING = 1u << 1;
static const __u32 VFIO_DEVICE_STATE_V1_RESUMING = 1u << 2;
static const __u32 VFIO_DEVICE_STATE_MASK = (1u << 0) | (1u << 1) | (1u << 2);

/* The kernel's function-like macros of the v1 state, as functions. */
static inline int VFIO_DEVICE_STATE_VALID(__u32 state)
{
	return (state & VFIO_DEVICE_STATE_V1_RESUMING)
		? (state & VFIO_DEVICE_STATE_MASK) == VFIO_DEVICE_STATE_V1_RESUMING
		: 1;
}

static inline int VFIO_DEVICE_STATE_IS_ERROR(__u32 state)
{
	return (state & VFIO_DEVICE_STATE_MASK) ==
	       (VFIO_DEVICE_STATE_V1_SAVING | VFIO_DEVICE_STATE_V1_RESUMING);
}

static inline __u32 VFIO_DEVICE_STATE_SET_ERROR(__u32 state)
{
	return (state & ~VFIO_DEVICE_STATE_MASK) | VFIO_DEVICE_STATE_V1_SAVING |
	       VFIO_DEVICE_STATE_V1_RESUMING;
}

/* NVLink2 capabilities (deprecated, no longer offered by the kernel) */
struct vfio_region_info_cap_nvlink2_ssatgt {
	struct vfio_info_cap_header header;
	__aligned_u64 tgt;
};

struct vfio_region_info_cap_nvlink2_lnkspd {
	struct vfio_info_cap_header header;
	__u32 link_speed;
	__u32 __pad;
};

/* ---- device fd: interrupts */

struct vfio_irq_info {
	__u32 argsz;
	__u32 flags;
	__u32 index;
	__u32 count;
};
static const __u32 VFIO_IRQ_INFO_EVENTFD = 1u << 0;
static const __u32 VFIO_IRQ_INFO_MASKABLE = 1u << 1;
static const __u32 VFIO_IRQ_INFO_AUTOMASKED = 1u << 2;
static const __u32 VFIO_IRQ_INFO_NORESIZE = 1u << 3;

static const unsigned long VFIO_DEVICE_GET_IRQ_INFO = CVFIO_VFIO_IO_(9);

struct vfio_irq_set {
	__u32 argsz;
	__u32 flags;
	__u32 index;
	__u32 start;
	__u32 count;
	__u8 data[]; /* bools (u8) or eventfds (s32); see cvfio_irq_set_data() */
};
static const __u32 VFIO_IRQ_SET_DATA_NONE = 1u << 0;
static const __u32 VFIO_IRQ_SET_DATA_BOOL = 1u << 1;
static const __u32 VFIO_IRQ_SET_DATA_EVENTFD = 1u << 2;
static const __u32 VFIO_IRQ_SET_ACTION_MASK = 1u << 3;
static const __u32 VFIO_IRQ_SET_ACTION_UNMASK = 1u << 4;
static const __u32 VFIO_IRQ_SET_ACTION_TRIGGER = 1u << 5;
static const __u32 VFIO_IRQ_SET_DATA_TYPE_MASK = (1u << 0) | (1u << 1) | (1u << 2);
static const __u32 VFIO_IRQ_SET_ACTION_TYPE_MASK = (1u << 3) | (1u << 4) | (1u << 5);

static const unsigned long VFIO_DEVICE_SET_IRQS = CVFIO_VFIO_IO_(10);
static const unsigned long VFIO_DEVICE_RESET = CVFIO_VFIO_IO_(11);

/* ---- fixed region and irq indexes of the bus drivers */

/* vfio-pci regions; indexes >= VFIO_PCI_NUM_REGIONS are described by caps */
enum {
	VFIO_PCI_BAR0_REGION_INDEX,
	VFIO_PCI_BAR1_REGION_INDEX,
	VFIO_PCI_BAR2_REGION_INDEX,
	VFIO_PCI_BAR3_REGION_INDEX,
	VFIO_PCI_BAR4_REGION_INDEX,
	VFIO_PCI_BAR5_REGION_INDEX,
	VFIO_PCI_ROM_REGION_INDEX,
	VFIO_PCI_CONFIG_REGION_INDEX,
	VFIO_PCI_VGA_REGION_INDEX,
	VFIO_PCI_NUM_REGIONS = 9
};

/* vfio-pci irqs */
enum {
	VFIO_PCI_INTX_IRQ_INDEX,
	VFIO_PCI_MSI_IRQ_INDEX,
	VFIO_PCI_MSIX_IRQ_INDEX,
	VFIO_PCI_ERR_IRQ_INDEX,
	VFIO_PCI_REQ_IRQ_INDEX,
	VFIO_PCI_NUM_IRQS
};

/* vfio-ccw regions */
enum {
	VFIO_CCW_CONFIG_REGION_INDEX,
	VFIO_CCW_NUM_REGIONS
};

/* vfio-ccw irqs */
enum {
	VFIO_CCW_IO_IRQ_INDEX,
	VFIO_CCW_CRW_IRQ_INDEX,
	VFIO_CCW_REQ_IRQ_INDEX,
	VFIO_CCW_NUM_IRQS
};

/* vfio-ap irqs */
enum {
	VFIO_AP_REQ_IRQ_INDEX,
	VFIO_AP_CFG_CHG_IRQ_INDEX,
	VFIO_AP_NUM_IRQS
};

/* ---- device fd: PCI hot reset */

struct vfio_pci_dependent_device {
	union {
		__u32 group_id; /* device opened through a group */
		__u32 devid;    /* device opened as a cdev */
	};
	__u16 segment;
	__u8 bus;
	__u8 devfn;
};
/* special devid values (the kernel writes -1 into the __u32 field) */
static const __u32 VFIO_PCI_DEVID_OWNED = 0;
static const __u32 VFIO_PCI_DEVID_NOT_OWNED = 0xffffffffu;

struct vfio_pci_hot_reset_info {
	__u32 argsz;
	__u32 flags;
	__u32 count;
	struct vfio_pci_dependent_device devices[]; /* see cvfio_hot_reset_info_devices() */
};
static const __u32 VFIO_PCI_HOT_RESET_FLAG_DEV_ID = 1u << 0;
static const __u32 VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED = 1u << 1;

static const unsigned long VFIO_DEVICE_GET_PCI_HOT_RESET_INFO = CVFIO_VFIO_IO_(12);

struct vfio_pci_hot_reset {
	__u32 argsz;
	__u32 flags;
	__u32 count;
	__s32 group_fds[]; /* see cvfio_hot_reset_group_fds() */
};

static const unsigned long VFIO_DEVICE_PCI_HOT_RESET = CVFIO_VFIO_IO_(13);

/* ---- device fd: mdev graphics */

struct vfio_device_gfx_plane_info {
	__u32 argsz;
	__u32 flags;
	__u32 drm_plane_type;
	__u32 drm_format;
	__aligned_u64 drm_format_mod;
	__u32 width;
	__u32 height;
	__u32 stride;
	__u32 size;
	__u32 x_pos;
	__u32 y_pos;
	__u32 x_hot;
	__u32 y_hot;
	union {
		__u32 region_index;
		__u32 dmabuf_id;
	};
	__u32 reserved;
};
static const __u32 VFIO_GFX_PLANE_TYPE_PROBE = 1u << 0;
static const __u32 VFIO_GFX_PLANE_TYPE_DMABUF = 1u << 1;
static const __u32 VFIO_GFX_PLANE_TYPE_REGION = 1u << 2;

static const unsigned long VFIO_DEVICE_QUERY_GFX_PLANE = CVFIO_VFIO_IO_(14);
static const unsigned long VFIO_DEVICE_GET_GFX_DMABUF = CVFIO_VFIO_IO_(15);

/* ---- device fd: ioeventfd */

struct vfio_device_ioeventfd {
	__u32 argsz;
	__u32 flags;
	__aligned_u64 offset;
	__aligned_u64 data;
	__s32 fd; /* -1 removes */
	__u32 reserved;
};
static const __u32 VFIO_DEVICE_IOEVENTFD_8 = 1u << 0;
static const __u32 VFIO_DEVICE_IOEVENTFD_16 = 1u << 1;
static const __u32 VFIO_DEVICE_IOEVENTFD_32 = 1u << 2;
static const __u32 VFIO_DEVICE_IOEVENTFD_64 = 1u << 3;
static const __u32 VFIO_DEVICE_IOEVENTFD_SIZE_MASK = 0xf;

static const unsigned long VFIO_DEVICE_IOEVENTFD = CVFIO_VFIO_IO_(16);

/* ---- device fd: features */

struct vfio_device_feature {
	__u32 argsz;
	__u32 flags; /* feature id in the low 16 bits, plus GET/SET/PROBE */
	__u8 data[]; /* see cvfio_device_feature_data() */
};
static const __u32 VFIO_DEVICE_FEATURE_MASK = 0xffff;
static const __u32 VFIO_DEVICE_FEATURE_GET = 1u << 16;
static const __u32 VFIO_DEVICE_FEATURE_SET = 1u << 17;
static const __u32 VFIO_DEVICE_FEATURE_PROBE = 1u << 18;

static const unsigned long VFIO_DEVICE_FEATURE = CVFIO_VFIO_IO_(17);

/* ---- device fd: iommufd (cdev) binding */

struct vfio_device_bind_iommufd {
	__u32 argsz;
	__u32 flags;
	__s32 iommufd;
	__u32 out_devid;
	__aligned_u64 token_uuid_ptr; /* user pointer to a 16-byte UUID, with FLAG_TOKEN */
};
static const __u32 VFIO_DEVICE_BIND_FLAG_TOKEN = 1u << 0;

static const unsigned long VFIO_DEVICE_BIND_IOMMUFD = CVFIO_VFIO_IO_(18);

struct vfio_device_attach_iommufd_pt {
	__u32 argsz;
	__u32 flags;
	__u32 pt_id;
	__u32 pasid;
};
static const __u32 VFIO_DEVICE_ATTACH_PASID = 1u << 0;

static const unsigned long VFIO_DEVICE_ATTACH_IOMMUFD_PT = CVFIO_VFIO_IO_(19);

struct vfio_device_detach_iommufd_pt {
	__u32 argsz;
	__u32 flags;
	__u32 pasid;
};
static const __u32 VFIO_DEVICE_DETACH_PASID = 1u << 0;

static const unsigned long VFIO_DEVICE_DETACH_IOMMUFD_PT = CVFIO_VFIO_IO_(20);

/* ---- device features (the low 16 bits of vfio_device_feature.flags) */

static const __u32 VFIO_DEVICE_FEATURE_PCI_VF_TOKEN = 0; /* data: 16-byte UUID */

struct vfio_device_feature_migration {
	__aligned_u64 flags;
};
static const __u64 VFIO_MIGRATION_STOP_COPY = 1u << 0;
static const __u64 VFIO_MIGRATION_P2P = 1u << 1;
static const __u64 VFIO_MIGRATION_PRE_COPY = 1u << 2;
static const __u32 VFIO_DEVICE_FEATURE_MIGRATION = 1;

struct vfio_device_feature_mig_state {
	__u32 device_state; /* enum vfio_device_mig_state */
	__s32 data_fd;
};
static const __u32 VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE = 2;

enum vfio_device_mig_state {
	VFIO_DEVICE_STATE_ERROR = 0,
	VFIO_DEVICE_STATE_STOP = 1,
	VFIO_DEVICE_STATE_RUNNING = 2,
	VFIO_DEVICE_STATE_STOP_COPY = 3,
	VFIO_DEVICE_STATE_RESUMING = 4,
	VFIO_DEVICE_STATE_RUNNING_P2P = 5,
	VFIO_DEVICE_STATE_PRE_COPY = 6,
	VFIO_DEVICE_STATE_PRE_COPY_P2P = 7,
	VFIO_DEVICE_STATE_NR,
};

/* on the migration data fd, in the PRE_COPY states */
struct vfio_precopy_info {
	__u32 argsz;
	__u32 flags;
	__aligned_u64 initial_bytes;
	__aligned_u64 dirty_bytes;
};
static const __u32 VFIO_PRECOPY_INFO_REINIT = 1u << 0;

static const unsigned long VFIO_MIG_GET_PRECOPY_INFO = CVFIO_VFIO_IO_(21);

static const __u32 VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY = 3;

struct vfio_device_low_power_entry_with_wakeup {
	__s32 wakeup_eventfd;
	__u32 reserved;
};
static const __u32 VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP = 4;

static const __u32 VFIO_DEVICE_FEATURE_LOW_POWER_EXIT = 5;

struct vfio_device_feature_dma_logging_control {
	__aligned_u64 page_size;
	__u32 num_ranges;
	__u32 __reserved;
	__aligned_u64 ranges; /* user pointer to vfio_device_feature_dma_logging_range[] */
};

struct vfio_device_feature_dma_logging_range {
	__aligned_u64 iova;
	__aligned_u64 length;
};
static const __u32 VFIO_DEVICE_FEATURE_DMA_LOGGING_START = 6;
static const __u32 VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP = 7;

struct vfio_device_feature_dma_logging_report {
	__aligned_u64 iova;
	__aligned_u64 length;
	__aligned_u64 page_size;
	__aligned_u64 bitmap; /* user pointer to a u64 bitmap */
};
static const __u32 VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT = 8;

struct vfio_device_feature_mig_data_size {
	__aligned_u64 stop_copy_length;
};
static const __u32 VFIO_DEVICE_FEATURE_MIG_DATA_SIZE = 9;

struct vfio_device_feature_bus_master {
	__u32 op;
};
static const __u32 VFIO_DEVICE_FEATURE_CLEAR_MASTER = 0;
static const __u32 VFIO_DEVICE_FEATURE_SET_MASTER = 1;
static const __u32 VFIO_DEVICE_FEATURE_BUS_MASTER = 10;

static const __u32 VFIO_DEVICE_FEATURE_DMA_BUF = 11;

struct vfio_region_dma_range {
	__u64 offset;
	__u64 length;
};

struct vfio_device_feature_dma_buf {
	__u32 region_index;
	__u32 open_flags;
	__u32 flags;
	__u32 nr_ranges;
	struct vfio_region_dma_range dma_ranges[]; /* nr_ranges; see cvfio_dma_buf_ranges() */
};

static const __u32 VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 = 12;

/* ---- type1 IOMMU (container fd) */

struct vfio_iommu_type1_info {
	__u32 argsz;
	__u32 flags;
	__aligned_u64 iova_pgsizes;
	__u32 cap_offset;
	__u32 pad;
};
static const __u32 VFIO_IOMMU_INFO_PGSIZES = 1u << 0;
static const __u32 VFIO_IOMMU_INFO_CAPS = 1u << 1;

/* type1 info capability ids (vfio_info_cap_header.id) */
static const __u16 VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1;
static const __u16 VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION = 2;
static const __u16 VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3;

struct vfio_iova_range {
	__u64 start;
	__u64 end;
};

struct vfio_iommu_type1_info_cap_iova_range {
	struct vfio_info_cap_header header;
	__u32 nr_iovas;
	__u32 reserved;
	struct vfio_iova_range iova_ranges[]; /* see cvfio_iova_ranges() */
};

struct vfio_iommu_type1_info_cap_migration {
	struct vfio_info_cap_header header;
	__u32 flags;
	__u64 pgsize_bitmap;
	__u64 max_dirty_bitmap_size;
};

struct vfio_iommu_type1_info_dma_avail {
	struct vfio_info_cap_header header;
	__u32 avail;
};

static const unsigned long VFIO_IOMMU_GET_INFO = CVFIO_VFIO_IO_(12);

struct vfio_iommu_type1_dma_map {
	__u32 argsz;
	__u32 flags;
	__u64 vaddr;
	__u64 iova;
	__u64 size;
};
static const __u32 VFIO_DMA_MAP_FLAG_READ = 1u << 0;
static const __u32 VFIO_DMA_MAP_FLAG_WRITE = 1u << 1;
static const __u32 VFIO_DMA_MAP_FLAG_VADDR = 1u << 2;

static const unsigned long VFIO_IOMMU_MAP_DMA = CVFIO_VFIO_IO_(13);

struct vfio_bitmap {
	__u64 pgsize;
	__u64 size;
	__u64 *data; /* user memory, one bit per page */
};

struct vfio_iommu_type1_dma_unmap {
	__u32 argsz;
	__u32 flags;
	__u64 iova;
	__u64 size;
	__u8 data[]; /* a struct vfio_bitmap with GET_DIRTY_BITMAP; see cvfio_dma_unmap_data() */
};
static const __u32 VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1u << 0;
static const __u32 VFIO_DMA_UNMAP_FLAG_ALL = 1u << 1;
static const __u32 VFIO_DMA_UNMAP_FLAG_VADDR = 1u << 2;

static const unsigned long VFIO_IOMMU_UNMAP_DMA = CVFIO_VFIO_IO_(14);
static const unsigned long VFIO_IOMMU_ENABLE = CVFIO_VFIO_IO_(15);
static const unsigned long VFIO_IOMMU_DISABLE = CVFIO_VFIO_IO_(16);

struct vfio_iommu_type1_dirty_bitmap {
	__u32 argsz;
	__u32 flags;
	__u8 data[]; /* a struct vfio_iommu_type1_dirty_bitmap_get with GET_BITMAP */
};
static const __u32 VFIO_IOMMU_DIRTY_PAGES_FLAG_START = 1u << 0;
static const __u32 VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP = 1u << 1;
static const __u32 VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP = 1u << 2;

struct vfio_iommu_type1_dirty_bitmap_get {
	__u64 iova;
	__u64 size;
	struct vfio_bitmap bitmap;
};

static const unsigned long VFIO_IOMMU_DIRTY_PAGES = CVFIO_VFIO_IO_(17);

/* ---- sPAPR TCE IOMMU (POWER) */

struct vfio_iommu_spapr_tce_ddw_info {
	__u64 pgsizes;
	__u32 max_dynamic_windows_supported;
	__u32 levels;
};

struct vfio_iommu_spapr_tce_info {
	__u32 argsz;
	__u32 flags;
	__u32 dma32_window_start;
	__u32 dma32_window_size;
	struct vfio_iommu_spapr_tce_ddw_info ddw;
};
static const __u32 VFIO_IOMMU_SPAPR_INFO_DDW = 1u << 0;

static const unsigned long VFIO_IOMMU_SPAPR_TCE_GET_INFO = CVFIO_VFIO_IO_(12);

/* EEH PE operations */
struct vfio_eeh_pe_err {
	__u32 type;
	__u32 func;
	__u64 addr;
	__u64 mask;
};

struct vfio_eeh_pe_op {
	__u32 argsz;
	__u32 flags;
	__u32 op;
	union {
		struct vfio_eeh_pe_err err;
	};
};

/* vfio_eeh_pe_op.op, and the states VFIO_EEH_PE_GET_STATE returns */
static const __u32 VFIO_EEH_PE_DISABLE = 0;
static const __u32 VFIO_EEH_PE_ENABLE = 1;
static const __u32 VFIO_EEH_PE_UNFREEZE_IO = 2;
static const __u32 VFIO_EEH_PE_UNFREEZE_DMA = 3;
static const __u32 VFIO_EEH_PE_GET_STATE = 4;
static const __u32 VFIO_EEH_PE_STATE_NORMAL = 0;
static const __u32 VFIO_EEH_PE_STATE_RESET = 1;
static const __u32 VFIO_EEH_PE_STATE_STOPPED = 2;
static const __u32 VFIO_EEH_PE_STATE_STOPPED_DMA = 4;
static const __u32 VFIO_EEH_PE_STATE_UNAVAIL = 5;
static const __u32 VFIO_EEH_PE_RESET_DEACTIVATE = 5;
static const __u32 VFIO_EEH_PE_RESET_HOT = 6;
static const __u32 VFIO_EEH_PE_RESET_FUNDAMENTAL = 7;
static const __u32 VFIO_EEH_PE_CONFIGURE = 8;
static const __u32 VFIO_EEH_PE_INJECT_ERR = 9;

static const unsigned long VFIO_EEH_PE_OP = CVFIO_VFIO_IO_(21);

struct vfio_iommu_spapr_register_memory {
	__u32 argsz;
	__u32 flags;
	__u64 vaddr;
	__u64 size;
};

static const unsigned long VFIO_IOMMU_SPAPR_REGISTER_MEMORY = CVFIO_VFIO_IO_(17);
static const unsigned long VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY = CVFIO_VFIO_IO_(18);

struct vfio_iommu_spapr_tce_create {
	__u32 argsz;
	__u32 flags;
	__u32 page_shift; /* in */
	__u32 __resv1;
	__u64 window_size; /* in */
	__u32 levels;      /* in */
	__u32 __resv2;
	__u64 start_addr; /* out */
};

static const unsigned long VFIO_IOMMU_SPAPR_TCE_CREATE = CVFIO_VFIO_IO_(19);

struct vfio_iommu_spapr_tce_remove {
	__u32 argsz;
	__u32 flags;
	__u64 start_addr;
};

static const unsigned long VFIO_IOMMU_SPAPR_TCE_REMOVE = CVFIO_VFIO_IO_(20);

#undef CVFIO_VFIO_IO_

#endif /* CVFIO_VFIO_H */
