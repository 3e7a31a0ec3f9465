/*
 * CVFIO: the iommufd user ABI of Linux 7.2 (<linux/iommufd.h>), written for VFIOKit.
 *
 * Same type, field, enum and constant names as the kernel's header. The kernel
 * declares almost every iommufd constant in an enum; those stay enums here.
 * Request numbers are `static const unsigned long` (the _IO macros do not
 * import into Swift). Scripts/abi-check.sh compares everything with the kernel.
 *
 * Include this before any <linux/iommufd.h>: it claims that header's include
 * guards, so a later #include <linux/iommufd.h> is a no-op.
 */
#ifndef CVFIO_IOMMUFD_H
#define CVFIO_IOMMUFD_H

#if defined(_IOMMUFD_H) || defined(_UAPI_IOMMUFD_H)
#error "<linux/iommufd.h> was included before CVFIO: include CVFIO's headers first (they replace it)"
#endif
#define _UAPI_IOMMUFD_H 1 /* guard of include/uapi/linux/iommufd.h */
#define _IOMMUFD_H 1      /* the same guard as installed by make headers_install */

#include <linux/types.h>
#include <linux/ioctl.h>

static const unsigned int IOMMUFD_TYPE = ';';

/* Command numbers; request = _IO(';', IOMMUFD_CMD_x), size is in the struct. */
enum {
	IOMMUFD_CMD_BASE = 0x80,
	IOMMUFD_CMD_DESTROY = IOMMUFD_CMD_BASE,
	IOMMUFD_CMD_IOAS_ALLOC = 0x81,
	IOMMUFD_CMD_IOAS_ALLOW_IOVAS = 0x82,
	IOMMUFD_CMD_IOAS_COPY = 0x83,
	IOMMUFD_CMD_IOAS_IOVA_RANGES = 0x84,
	IOMMUFD_CMD_IOAS_MAP = 0x85,
	IOMMUFD_CMD_IOAS_UNMAP = 0x86,
	IOMMUFD_CMD_OPTION = 0x87,
	IOMMUFD_CMD_VFIO_IOAS = 0x88,
	IOMMUFD_CMD_HWPT_ALLOC = 0x89,
	IOMMUFD_CMD_GET_HW_INFO = 0x8a,
	IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING = 0x8b,
	IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP = 0x8c,
	IOMMUFD_CMD_HWPT_INVALIDATE = 0x8d,
	IOMMUFD_CMD_FAULT_QUEUE_ALLOC = 0x8e,
	IOMMUFD_CMD_IOAS_MAP_FILE = 0x8f,
	IOMMUFD_CMD_VIOMMU_ALLOC = 0x90,
	IOMMUFD_CMD_VDEVICE_ALLOC = 0x91,
	IOMMUFD_CMD_IOAS_CHANGE_PROCESS = 0x92,
	IOMMUFD_CMD_VEVENTQ_ALLOC = 0x93,
	IOMMUFD_CMD_HW_QUEUE_ALLOC = 0x94,
};

#define CVFIO_IOMMUFD_IO_(cmd) _IO(';', (cmd))

/* ---- objects */

struct iommu_destroy {
	__u32 size;
	__u32 id;
};
static const unsigned long IOMMU_DESTROY = CVFIO_IOMMUFD_IO_(IOMMUFD_CMD_DESTROY);

/* ---- IO address spaces */

struct iommu_ioas_alloc {
	__u32 size;
	__u32 flags;
	__u32 out_ioas_id;
};
static const unsigned long IOMMU_IOAS_ALLOC = CVFIO_IOMMUFD_IO_(IOMMUFD_CMD_IOAS_ALLOC);

/* an inclusive IOVA interval */
struct iommu_iova_range {
	__aligned_u64 start;
	__aligned_u64 last;
};

struct iommu_ioas_iova_ranges {
	__u32 size;
	__u32 ioas_id;
	__u32 num_iovas;
	__u32 __reserved;
	__aligned_u64 allowed_iovas; /* user pointer to struct iommu_iova_range[num_iovas] */
	__aligned_u64 out_iova_alignment;
};
static const unsigned long IOMMU_IOAS_IOVA_RANGES = CVFIO_IOMMUFD_IO_(IOMMUFD_CMD_IOAS_IOVA_RANGES);

struct iommu_ioas_allow_iovas {
	__u32 size;
	__u32 ioas_id;
	__u32 num_iovas;
	__u32 __reserved;
	__aligned_u64 allowed_iovas; /* user pointer to struct iommu_iova_range[num_iovas] */
};
static const unsigned long IOMMU_IOAS_ALLOW_IOVAS = CVFIO_IOMMUFD_IO_(IOMMUFD_CMD_IOAS_ALLOW_IOVAS);

enum iommufd_ioas_map_flags {
	IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0,
	IOMMU_IOAS_MAP_WRITEABLE = 1 << 1,
	IOMMU_IOAS_MAP_READABLE = 1 << 2,
};

struct iommu_ioas_map {
	__u32 size;
	__u32 flags; /* enum iommufd_ioas_map_flags */
	__u32 ioas_id;
	__u32 __reserved;
	__aligned_u64 user_va;
	__aligned_u64 length;
	__aligned_u64 iova; /* in with FIXED_IOVA, else out */
};
static const unsigned long IOMMU_IOAS_MAP = CVFIO_IOMMUFD_IO_(IOMMUFD_CMD_IOAS_MAP);

struct iommu_ioas_map_file {
	__u32 size;
	__u32 flags; /* enum iommufd_ioas_map_flags */
	__u32 ioas_id;
	__s32 fd; /* memfd, or a supported dma-buf */
	__aligned_u64 start;
	__aligned_u64 length;
	__aligned_u64 iova;
};
static const unsigned long IOMMU_IOAS_MAP_FILE = CVFIO_IOMMUFD_IO_(IOMMUFD_CMD_IOAS_MAP_FILE);

struct iommu_ioas_copy {
	__u32 size;
	__u32 flags; /* enum iommufd_ioas_map_flags */
	__u32 dst_ioas_id;
	__u32 src_ioas_id;
	__aligned_u64 length;
	__aligned_u64 dst_iova;
	__aligned_u64 src_iova;
};
static const unsigned long IOMMU_IOAS_COPY = CVFIO_IOMMUFD_IO_(IOMMUFD_CMD_IOAS_COPY);

struct iommu_ioas_unmap {
	__u32 size;
	__u32 ioas_id;
	__aligned_u64 iova;
	__aligned_u64 length; /* in: bytes to unmap, out: bytes unmapped */
};
static const unsigned long IOMMU_IOAS_UNMAP = CVFIO_IOMMUFD_IO_(IOMMUFD_CMD_IOAS_UNMAP);

/* ---- options */

enum iommufd_option {
	IOMMU_OPTION_RLIMIT_MODE = 0,
	IOMMU_OPTION_HUGE_PAGES = 1,
};

enum iommufd_option_ops {
	IOMMU_OPTION_OP_SET = 0,
	IOMMU_OPTION_OP_GET = 1,
};

struct iommu_option {
	__u32 size;
	__u32 option_id; /* enum iommufd_option */
	__u16 op;        /* enum iommufd_option_ops */
	__u16 __reserved;
	__u32 object_id;
	__aligned_u64 val64;
};
static const unsigned long IOMMU_OPTION = CVFIO_IOMMUFD_IO_(IOMMUFD_CMD_OPTION);

/* ---- VFIO container compatibility */

enum iommufd_vfio_ioas_op {
	IOMMU_VFIO_IOAS_GET = 0,
	IOMMU_VFIO_IOAS_SET = 1,
	IOMMU_VFIO_IOAS_CLEAR = 2,
};

struct iommu_vfio_ioas {
	__u32 size;
	__u32 ioas_id;
	__u16 op; /* enum iommufd_vfio_ioas_op */
	__u16 __reserved;
};
static const unsigned long IOMMU_VFIO_IOAS = CVFIO_IOMMUFD_IO_(IOMMUFD_CMD_VFIO_IOAS);

/* ---- hardware page tables */

enum iommufd_hwpt_alloc_flags {
	IOMMU_HWPT_ALLOC_NEST_PARENT = 1 << 0,
	IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 1 << 1,
	IOMMU_HWPT_FAULT_ID_VALID = 1 << 2,
	IOMMU_HWPT_ALLOC_PASID = 1 << 3,
};

enum iommu_hwpt_vtd_s1_flags {
	IOMMU_VTD_S1_SRE = 1 << 0,
	IOMMU_VTD_S1_EAFE = 1 << 1,
	IOMMU_VTD_S1_WPE = 1 << 2,
};

/* IOMMU_HWPT_DATA_VTD_S1 */
struct iommu_hwpt_vtd_s1 {
	__aligned_u64 flags; /* enum iommu_hwpt_vtd_s1_flags */
	__aligned_u64 pgtbl_addr;
	__u32 addr_width;
	__u32 __reserved;
};

/* IOMMU_HWPT_DATA_ARM_SMMUV3: the first two words of a stream table entry, LE */
struct iommu_hwpt_arm_smmuv3 {
	__aligned_le64 ste[2];
};

/* IOMMU_HWPT_DATA_AMD_GUEST: guest device table entry */
struct iommu_hwpt_amd_guest {
	__aligned_u64 dte[4];
};

enum iommu_hwpt_data_type {
	IOMMU_HWPT_DATA_NONE = 0,
	IOMMU_HWPT_DATA_VTD_S1 = 1,
	IOMMU_HWPT_DATA_ARM_SMMUV3 = 2,
	IOMMU_HWPT_DATA_AMD_GUEST = 3,
};

struct iommu_hwpt_alloc {
	__u32 size;
	__u32 flags; /* enum iommufd_hwpt_alloc_flags */
	__u32 dev_id;
	__u32 pt_id; /* IOAS, HWPT or vIOMMU */
	__u32 out_hwpt_id;
	__u32 __reserved;
	__u32 data_type; /* enum iommu_hwpt_data_type */
	__u32 data_len;
	__aligned_u64 data_uptr;
	__u32 fault_id; /* with IOMMU_HWPT_FAULT_ID_VALID */
	__u32 __reserved2;
};
static const unsigned long IOMMU_HWPT_ALLOC = CVFIO_IOMMUFD_IO_(IOMMUFD_CMD_HWPT_ALLOC);

/* ---- hardware information */

enum iommu_hw_info_vtd_flags {
	IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 = 1 << 0,
};

/* IOMMU_HW_INFO_TYPE_INTEL_VTD */
struct iommu_hw_info_vtd {
	__u32 flags; /* enum iommu_hw_info_vtd_flags */
	__u32 __reserved;
	__aligned_u64 cap_reg;
	__aligned_u64 ecap_reg;
};

/* IOMMU_HW_INFO_TYPE_ARM_SMMUV3 */
struct iommu_hw_info_arm_smmuv3 {
	__u32 flags;
	__u32 __reserved;
	__u32 idr[6];
	__u32 iidr;
	__u32 aidr;
};

/* IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV */
struct iommu_hw_info_tegra241_cmdqv {
	__u32 flags;
	__u8 version;
	__u8 log2vcmdqs;
	__u8 log2vsids;
	__u8 __reserved;
};

/* IOMMU_HW_INFO_TYPE_AMD */
struct iommu_hw_info_amd {
	__aligned_u64 efr;
	__aligned_u64 efr2;
};

enum iommu_hw_info_type {
	IOMMU_HW_INFO_TYPE_NONE = 0,
	IOMMU_HW_INFO_TYPE_DEFAULT = 0,
	IOMMU_HW_INFO_TYPE_INTEL_VTD = 1,
	IOMMU_HW_INFO_TYPE_ARM_SMMUV3 = 2,
	IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV = 3,
	IOMMU_HW_INFO_TYPE_AMD = 4,
};

enum iommufd_hw_capabilities {
	IOMMU_HW_CAP_DIRTY_TRACKING = 1 << 0,
	IOMMU_HW_CAP_PCI_PASID_EXEC = 1 << 1,
	IOMMU_HW_CAP_PCI_PASID_PRIV = 1 << 2,
	IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED = 1 << 3,
};

enum iommufd_hw_info_flags {
	IOMMU_HW_INFO_FLAG_INPUT_TYPE = 1 << 0,
};

struct iommu_hw_info {
	__u32 size;
	__u32 flags; /* enum iommufd_hw_info_flags */
	__u32 dev_id;
	__u32 data_len;
	__aligned_u64 data_uptr;
	union {
		__u32 in_data_type; /* with IOMMU_HW_INFO_FLAG_INPUT_TYPE */
		__u32 out_data_type; /* enum iommu_hw_info_type */
	};
	__u8 out_max_pasid_log2;
	__u8 __reserved[3];
	__aligned_u64 out_capabilities; /* enum iommufd_hw_capabilities */
};
static const unsigned long IOMMU_GET_HW_INFO = CVFIO_IOMMUFD_IO_(IOMMUFD_CMD_GET_HW_INFO);

/* ---- dirty tracking */

enum iommufd_hwpt_set_dirty_tracking_flags {
	IOMMU_HWPT_DIRTY_TRACKING_ENABLE = 1,
};

struct iommu_hwpt_set_dirty_tracking {
	__u32 size;
	__u32 flags; /* enum iommufd_hwpt_set_dirty_tracking_flags */
	__u32 hwpt_id;
	__u32 __reserved;
};
static const unsigned long IOMMU_HWPT_SET_DIRTY_TRACKING =
	CVFIO_IOMMUFD_IO_(IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING);

enum iommufd_hwpt_get_dirty_bitmap_flags {
	IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR = 1,
};

struct iommu_hwpt_get_dirty_bitmap {
	__u32 size;
	__u32 hwpt_id;
	__u32 flags; /* enum iommufd_hwpt_get_dirty_bitmap_flags */
	__u32 __reserved;
	__aligned_u64 iova;
	__aligned_u64 length;
	__aligned_u64 page_size;
	__aligned_u64 data; /* user pointer to a u64 bitmap, one bit per page_size */
};
static const unsigned long IOMMU_HWPT_GET_DIRTY_BITMAP =
	CVFIO_IOMMUFD_IO_(IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP);

/* ---- cache invalidation */

enum iommu_hwpt_invalidate_data_type {
	IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 = 0,
	IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 = 1,
};

enum iommu_hwpt_vtd_s1_invalidate_flags {
	IOMMU_VTD_INV_FLAGS_LEAF = 1 << 0,
};

/* IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 */
struct iommu_hwpt_vtd_s1_invalidate {
	__aligned_u64 addr;
	__aligned_u64 npages;
	__u32 flags; /* enum iommu_hwpt_vtd_s1_invalidate_flags */
	__u32 __reserved;
};

/* IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3: one 128-bit CMDQ command, LE */
struct iommu_viommu_arm_smmuv3_invalidate {
	__aligned_le64 cmd[2];
};

struct iommu_hwpt_invalidate {
	__u32 size;
	__u32 hwpt_id; /* nested HWPT or vIOMMU */
	__aligned_u64 data_uptr; /* user pointer to entry_num entries of entry_len bytes */
	__u32 data_type; /* enum iommu_hwpt_invalidate_data_type */
	__u32 entry_len;
	__u32 entry_num; /* in: entries given, out: entries handled */
	__u32 __reserved;
};
static const unsigned long IOMMU_HWPT_INVALIDATE = CVFIO_IOMMUFD_IO_(IOMMUFD_CMD_HWPT_INVALIDATE);

/* ---- I/O page faults (read from / written to the fault queue fd) */

enum iommu_hwpt_pgfault_flags {
	IOMMU_PGFAULT_FLAGS_PASID_VALID = (1 << 0),
	IOMMU_PGFAULT_FLAGS_LAST_PAGE = (1 << 1),
};

enum iommu_hwpt_pgfault_perm {
	IOMMU_PGFAULT_PERM_READ = (1 << 0),
	IOMMU_PGFAULT_PERM_WRITE = (1 << 1),
	IOMMU_PGFAULT_PERM_EXEC = (1 << 2),
	IOMMU_PGFAULT_PERM_PRIV = (1 << 3),
};

struct iommu_hwpt_pgfault {
	__u32 flags; /* enum iommu_hwpt_pgfault_flags */
	__u32 dev_id;
	__u32 pasid;
	__u32 grpid;
	__u32 perm; /* enum iommu_hwpt_pgfault_perm */
	__u32 __reserved;
	__aligned_u64 addr;
	__u32 length;
	__u32 cookie;
};

enum iommufd_page_response_code {
	IOMMUFD_PAGE_RESP_SUCCESS = 0,
	IOMMUFD_PAGE_RESP_INVALID = 1,
};

struct iommu_hwpt_page_response {
	__u32 cookie;
	__u32 code; /* enum iommufd_page_response_code */
};

struct iommu_fault_alloc {
	__u32 size;
	__u32 flags;
	__u32 out_fault_id;
	__u32 out_fault_fd;
};
static const unsigned long IOMMU_FAULT_QUEUE_ALLOC = CVFIO_IOMMUFD_IO_(IOMMUFD_CMD_FAULT_QUEUE_ALLOC);

/* ---- virtual IOMMUs and devices */

enum iommu_viommu_type {
	IOMMU_VIOMMU_TYPE_DEFAULT = 0,
	IOMMU_VIOMMU_TYPE_ARM_SMMUV3 = 1,
	IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV = 2,
};

/* IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV data: where to mmap the VINTF page0 */
struct iommu_viommu_tegra241_cmdqv {
	__aligned_u64 out_vintf_mmap_offset;
	__aligned_u64 out_vintf_mmap_length;
};

struct iommu_viommu_alloc {
	__u32 size;
	__u32 flags;
	__u32 type; /* enum iommu_viommu_type */
	__u32 dev_id;
	__u32 hwpt_id; /* nesting parent */
	__u32 out_viommu_id;
	__u32 data_len;
	__u32 __reserved;
	__aligned_u64 data_uptr;
};
static const unsigned long IOMMU_VIOMMU_ALLOC = CVFIO_IOMMUFD_IO_(IOMMUFD_CMD_VIOMMU_ALLOC);

struct iommu_vdevice_alloc {
	__u32 size;
	__u32 viommu_id;
	__u32 dev_id;
	__u32 out_vdevice_id;
	__aligned_u64 virt_id;
};
static const unsigned long IOMMU_VDEVICE_ALLOC = CVFIO_IOMMUFD_IO_(IOMMUFD_CMD_VDEVICE_ALLOC);

struct iommu_ioas_change_process {
	__u32 size;
	__u32 __reserved;
};
static const unsigned long IOMMU_IOAS_CHANGE_PROCESS =
	CVFIO_IOMMUFD_IO_(IOMMUFD_CMD_IOAS_CHANGE_PROCESS);

/* ---- virtual event queues */

enum iommu_veventq_flag {
	IOMMU_VEVENTQ_FLAG_LOST_EVENTS = (1U << 0),
};

/* precedes every event read from a vEVENTQ fd */
struct iommufd_vevent_header {
	__u32 flags; /* enum iommu_veventq_flag */
	__u32 sequence;
};

enum iommu_veventq_type {
	IOMMU_VEVENTQ_TYPE_DEFAULT = 0,
	IOMMU_VEVENTQ_TYPE_ARM_SMMUV3 = 1,
	IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV = 2,
};

/* IOMMU_VEVENTQ_TYPE_ARM_SMMUV3: a 256-bit event record, LE */
struct iommu_vevent_arm_smmuv3 {
	__aligned_le64 evt[4];
};

/* IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV: the 128-bit LVCMDQ error map, LE */
struct iommu_vevent_tegra241_cmdqv {
	__aligned_le64 lvcmdq_err_map[2];
};

struct iommu_veventq_alloc {
	__u32 size;
	__u32 flags;
	__u32 viommu_id;
	__u32 type; /* enum iommu_veventq_type */
	__u32 veventq_depth;
	__u32 out_veventq_id;
	__u32 out_veventq_fd;
	__u32 __reserved;
};
static const unsigned long IOMMU_VEVENTQ_ALLOC = CVFIO_IOMMUFD_IO_(IOMMUFD_CMD_VEVENTQ_ALLOC);

/* ---- hardware queues */

enum iommu_hw_queue_type {
	IOMMU_HW_QUEUE_TYPE_DEFAULT = 0,
	IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV = 1,
};

struct iommu_hw_queue_alloc {
	__u32 size;
	__u32 flags;
	__u32 viommu_id;
	__u32 type; /* enum iommu_hw_queue_type */
	__u32 index;
	__u32 out_hw_queue_id;
	__aligned_u64 nesting_parent_iova;
	__aligned_u64 length;
};
static const unsigned long IOMMU_HW_QUEUE_ALLOC = CVFIO_IOMMUFD_IO_(IOMMUFD_CMD_HW_QUEUE_ALLOC);

#undef CVFIO_IOMMUFD_IO_

#endif /* CVFIO_IOMMUFD_H */
