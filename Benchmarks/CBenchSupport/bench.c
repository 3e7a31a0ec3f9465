#define _GNU_SOURCE
#include "CBenchSupport.h"

#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <CVFIO.h>

uint64_t bench_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The allocation counter: these definitions interpose glibc's allocator for the
 * whole process (the executable's symbols win over libc's). */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
static _Atomic uint64_t allocations;

void *malloc(size_t n) { atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed); return __libc_realloc(p, n); }
int posix_memalign(void **out, size_t align, size_t n) {
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    void *p = __libc_memalign(align, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}
void *aligned_alloc(size_t align, size_t n) { atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed); return __libc_memalign(align, n); }
void *memalign(size_t align, size_t n) { atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed); return __libc_memalign(align, n); }

uint64_t bench_allocations(void) { return atomic_load_explicit(&allocations, memory_order_relaxed); }

int bench_raw_map_unmap(int iommufd, uint32_t ioas_id, void *buffer, uint64_t length, uint64_t iova, int iterations) {
    for (int i = 0; i < iterations; i++) {
        struct iommu_ioas_map map = {
            .size = sizeof(map),
            .flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
            .ioas_id = ioas_id,
            .user_va = (uintptr_t)buffer,
            .length = length,
            .iova = iova,
        };
        if (ioctl(iommufd, IOMMU_IOAS_MAP, &map)) return -errno;
        struct iommu_ioas_unmap unmap = { .size = sizeof(unmap), .ioas_id = ioas_id, .iova = iova, .length = length };
        if (ioctl(iommufd, IOMMU_IOAS_UNMAP, &unmap)) return -errno;
    }
    return 0;
}

uint32_t bench_raw_mmio_read32(volatile void *bar, uint64_t offset, int iterations) {
    uint32_t acc = 0;
    volatile uint32_t *reg = (volatile uint32_t *)((volatile char *)bar + offset);
    for (int i = 0; i < iterations; i++) acc ^= *reg;
    return acc;
}

void bench_raw_mmio_write32(volatile void *bar, uint64_t offset, uint32_t value, int iterations) {
    volatile uint32_t *reg = (volatile uint32_t *)((volatile char *)bar + offset);
    for (int i = 0; i < iterations; i++) *reg = value;
}

int bench_raw_edu_irq_roundtrip(volatile void *bar, int eventfd, uint32_t raise_bit, int iterations) {
    volatile uint32_t *raise = (volatile uint32_t *)((volatile char *)bar + 0x60);
    volatile uint32_t *ack = (volatile uint32_t *)((volatile char *)bar + 0x64);
    for (int i = 0; i < iterations; i++) {
        *raise = raise_bit;
        struct pollfd p = { .fd = eventfd, .events = POLLIN };
        int r;
        do { r = poll(&p, 1, 1000); } while (r < 0 && errno == EINTR);
        if (r < 0) return -errno;
        if (r == 0) return -ETIMEDOUT;
        uint64_t count;
        if (read(eventfd, &count, sizeof(count)) != sizeof(count)) return -errno;
        *ack = raise_bit;
    }
    return 0;
}
