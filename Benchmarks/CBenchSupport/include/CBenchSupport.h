/* Reference loops in plain C for VFIOKit's benchmarks, and an allocation
 * counter. The Swift side runs the same work through VFIOKit; the ratio of the
 * two is the overhead VFIOKit adds. */
#ifndef CBENCH_SUPPORT_H
#define CBENCH_SUPPORT_H

#include <stddef.h>
#include <stdint.h>

/* Monotonic clock in nanoseconds. */
uint64_t bench_now_ns(void);

/* malloc/calloc/realloc/posix_memalign calls made by this process so far
 * (counted by interposing the allocator in the benchmark executable). */
uint64_t bench_allocations(void);

/* IOMMU_IOAS_MAP at a fixed IOVA followed by IOMMU_IOAS_UNMAP, `iterations`
 * times, with raw ioctls. Returns 0 or -errno. */
int bench_raw_map_unmap(int iommufd, uint32_t ioas_id, void *buffer, uint64_t length,
                        uint64_t iova, int iterations);

/* 32-bit volatile loads / stores at bar + offset. Returns the xor of the loads. */
uint32_t bench_raw_mmio_read32(volatile void *bar, uint64_t offset, int iterations);
void bench_raw_mmio_write32(volatile void *bar, uint64_t offset, uint32_t value, int iterations);

/* Interrupt round trips on QEMU's edu device: write `raise_bit` to the raise
 * register (0x60), wait for the eventfd with poll + read, acknowledge (0x64).
 * Returns 0 or -errno (-ETIMEDOUT after 1 s without an interrupt). */
int bench_raw_edu_irq_roundtrip(volatile void *bar, int eventfd, uint32_t raise_bit, int iterations);

#endif
