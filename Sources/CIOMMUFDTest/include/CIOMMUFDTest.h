/*
 * CIOMMUFDTest: the iommufd selftest ABI of Linux 7.2 (IOMMU_TEST_CMD and the
 * mock driver's data), as drivers/iommu/iommufd/iommufd_test.h defines it for
 * kernels built with CONFIG_IOMMUFD_TEST. Written for VFIOKit's mock-domain
 * tests; same names as the kernel. Constants the kernel writes as macros are
 * typed `static const` variables here; its enums stay enums.
 *
 * Claims the kernel header's include guard, so a later include of it is a no-op.
 */
#ifndef CIOMMUFDTEST_H
#define CIOMMUFDTEST_H

#ifdef _UAPI_IOMMUFD_TEST_H
#error "iommufd_test.h was included before CIOMMUFDTest: include CIOMMUFDTest.h first (it replaces it)"
#endif
#define _UAPI_IOMMUFD_TEST_H 1

#include <linux/types.h>
#include <linux/ioctl.h>
#include "CVFIO.h"

/* iommu_test_cmd.op */
enum {
	IOMMU_TEST_OP_ADD_RESERVED = 1,
	IOMMU_TEST_OP_MOCK_DOMAIN,
	IOMMU_TEST_OP_MD_CHECK_MAP,
	IOMMU_TEST_OP_MD_CHECK_REFS,
	IOMMU_TEST_OP_CREATE_ACCESS,
	IOMMU_TEST_OP_DESTROY_ACCESS_PAGES,
	IOMMU_TEST_OP_ACCESS_PAGES,
	IOMMU_TEST_OP_ACCESS_RW,
	IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT,
	IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE,
	IOMMU_TEST_OP_ACCESS_REPLACE_IOAS,
	IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS,
	IOMMU_TEST_OP_DIRTY,
	IOMMU_TEST_OP_MD_CHECK_IOTLB,
	IOMMU_TEST_OP_TRIGGER_IOPF,
	IOMMU_TEST_OP_DEV_CHECK_CACHE,
	IOMMU_TEST_OP_TRIGGER_VEVENT,
	IOMMU_TEST_OP_PASID_ATTACH,
	IOMMU_TEST_OP_PASID_REPLACE,
	IOMMU_TEST_OP_PASID_DETACH,
	IOMMU_TEST_OP_PASID_CHECK_HWPT,
	IOMMU_TEST_OP_DMABUF_GET,
	IOMMU_TEST_OP_DMABUF_REVOKE,
};

/* iommu_hwpt_selftest.pagetable_type */
enum {
	MOCK_IOMMUPT_DEFAULT = 0,
	MOCK_IOMMUPT_HUGE,
};

/* geometry of the mock domain with MOCK_IOMMUPT_DEFAULT */
enum {
	MOCK_APERTURE_START = 1UL << 24,
	MOCK_APERTURE_LAST = (1UL << 31) - 1,
	MOCK_PAGE_SIZE = 2048,
	MOCK_HUGE_PAGE_SIZE = 512 * MOCK_PAGE_SIZE,
};

/* create_access.flags */
enum {
	MOCK_FLAGS_ACCESS_WRITE = 1 << 0,
	MOCK_FLAGS_ACCESS_SYZ = 1 << 16,
};

/* access_rw.flags */
enum {
	MOCK_ACCESS_RW_WRITE = 1 << 0,
	MOCK_ACCESS_RW_SLOW_PATH = 1 << 2,
};

/* create_access.flags */
enum {
	MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES = 1 << 0,
};

/* mock_domain_flags.dev_flags */
enum {
	MOCK_FLAGS_DEVICE_NO_DIRTY = 1 << 0,
	MOCK_FLAGS_DEVICE_PASID = 1 << 2,
};

enum {
	MOCK_NESTED_DOMAIN_IOTLB_ID_MAX = 3,
	MOCK_NESTED_DOMAIN_IOTLB_NUM = 4,
};

enum {
	MOCK_DEV_CACHE_ID_MAX = 3,
	MOCK_DEV_CACHE_NUM = 4,
};

/* a PASID the mock driver reserves for its replace test */
static const __u32 IOMMU_TEST_PASID_RESERVED = 1024;

struct iommu_test_cmd {
	__u32 size;
	__u32 op;
	__u32 id;
	__u32 __reserved;
	union {
		struct {
			__aligned_u64 start;
			__aligned_u64 length;
		} add_reserved;
		struct {
			__u32 out_stdev_id;
			__u32 out_hwpt_id;
			__u32 out_idev_id; /* the device's iommufd bind id */
		} mock_domain;
		struct {
			__u32 out_stdev_id;
			__u32 out_hwpt_id;
			__u32 out_idev_id;
			__u32 dev_flags;
		} mock_domain_flags;
		struct {
			__u32 pt_id;
		} mock_domain_replace;
		struct {
			__aligned_u64 iova;
			__aligned_u64 length;
			__aligned_u64 uptr;
		} check_map;
		struct {
			__aligned_u64 length;
			__aligned_u64 uptr;
			__u32 refs;
		} check_refs;
		struct {
			__u32 out_access_fd;
			__u32 flags;
		} create_access;
		struct {
			__u32 access_pages_id;
		} destroy_access_pages;
		struct {
			__u32 flags;
			__u32 out_access_pages_id;
			__aligned_u64 iova;
			__aligned_u64 length;
			__aligned_u64 uptr;
		} access_pages;
		struct {
			__aligned_u64 iova;
			__aligned_u64 length;
			__aligned_u64 uptr;
			__u32 flags;
		} access_rw;
		struct {
			__u32 limit;
		} memory_limit;
		struct {
			__u32 ioas_id;
		} access_replace_ioas;
		struct {
			__u32 flags;
			__aligned_u64 iova;
			__aligned_u64 length;
			__aligned_u64 page_size;
			__aligned_u64 uptr;
			__aligned_u64 out_nr_dirty;
		} dirty;
		struct {
			__u32 id;
			__u32 iotlb;
		} check_iotlb;
		struct {
			__u32 dev_id;
			__u32 pasid;
			__u32 grpid;
			__u32 perm;
			__u64 addr;
		} trigger_iopf;
		struct {
			__u32 id;
			__u32 cache;
		} check_dev_cache;
		struct {
			__u32 dev_id;
		} trigger_vevent;
		struct {
			__u32 pasid;
			__u32 pt_id;
		} pasid_attach; /* id is the stdev_id */
		struct {
			__u32 pasid;
			__u32 pt_id;
		} pasid_replace;
		struct {
			__u32 pasid;
		} pasid_detach;
		struct {
			__u32 pasid;
			__u32 hwpt_id;
		} pasid_check;
		struct {
			__u32 length;
			__u32 open_flags;
		} dmabuf_get;
		struct {
			__s32 dmabuf_fd;
			__u32 revoked;
		} dmabuf_revoke;
	};
	__u32 last;
};
static const unsigned long IOMMU_TEST_CMD = _IO(';', IOMMUFD_CMD_BASE + 32);

/* PASID width of the mock device/IOMMU (iommu_hw_info.out_max_pasid_log2) */
static const __u8 MOCK_PASID_WIDTH = 20;

/* IOMMU_GET_HW_INFO of a mock device */
static const __u32 IOMMU_HW_INFO_TYPE_SELFTEST = 0xfeedbeef;
static const __u32 IOMMU_HW_INFO_SELFTEST_REGVAL = 0xdeadbeef;

struct iommu_test_hw_info {
	__u32 flags;
	__u32 test_reg;
};

/* IOMMU_HWPT_ALLOC data of the mock driver */
static const __u32 IOMMU_HWPT_DATA_SELFTEST = 0xdead;
static const __u32 IOMMU_TEST_IOTLB_DEFAULT = 0xbadbeef;
static const __u32 IOMMU_TEST_DEV_CACHE_DEFAULT = 0xbaddad;

struct iommu_hwpt_selftest {
	__u32 iotlb;
	__u32 pagetable_type; /* MOCK_IOMMUPT_* */
};

/* IOMMU_HWPT_INVALIDATE data of the mock driver */
static const __u32 IOMMU_HWPT_INVALIDATE_DATA_SELFTEST = 0xdeadbeef;
static const __u32 IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID = 0xdadbeef;

static const __u32 IOMMU_TEST_INVALIDATE_FLAG_ALL = 1u << 0;

struct iommu_hwpt_invalidate_selftest {
	__u32 flags; /* IOMMU_TEST_INVALIDATE_FLAG_ALL ignores iotlb_id */
	__u32 iotlb_id;
};

/* IOMMU_VIOMMU_ALLOC data of the mock driver */
static const __u32 IOMMU_VIOMMU_TYPE_SELFTEST = 0xdeadbeef;

struct iommu_viommu_selftest {
	__u32 in_data;
	__u32 out_data; /* echoes in_data */
	__aligned_u64 out_mmap_offset;
	__aligned_u64 out_mmap_length;
};

/* vIOMMU invalidation data of the mock driver */
static const __u32 IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST = 0xdeadbeef;
static const __u32 IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID = 0xdadbeef;

struct iommu_viommu_invalidate_selftest {
	__u32 flags; /* IOMMU_TEST_INVALIDATE_FLAG_ALL ignores cache_id */
	__u32 vdev_id;
	__u32 cache_id;
};

/* vEVENTQ of the mock driver */
static const __u32 IOMMU_VEVENTQ_TYPE_SELFTEST = 0xbeefbeef;

struct iommu_viommu_event_selftest {
	__u32 virt_id;
};

/* HW queues of the mock driver */
static const __u32 IOMMU_HW_QUEUE_TYPE_SELFTEST = 0xdeadbeef;
static const __u32 IOMMU_TEST_HW_QUEUE_MAX = 2;

#endif /* CIOMMUFDTEST_H */
