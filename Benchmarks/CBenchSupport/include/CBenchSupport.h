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

/* The host stand-in for an interrupt round trip: write 1 to the eventfd, wait
 * for it with poll + read. Returns 0 or -errno. */
int bench_raw_eventfd_roundtrip(int eventfd, int iterations);

/* Instruction counts under valgrind's callgrind (no-ops elsewhere): whether the
 * process runs under valgrind; zero the counters; dump them to a part file
 * whose description is "Trigger: Client Request: <name>". */
int bench_on_valgrind(void);
void bench_cg_zero(void);
void bench_cg_dump(const char *name);

/* VFIO_IOMMU_MAP_DMA then VFIO_IOMMU_UNMAP_DMA (type1 container), `iterations`
 * times. Returns 0 or -errno (-EIO when the unmap is short). */
int bench_raw_type1_map_unmap(int container, void *buffer, uint64_t length, uint64_t iova, int iterations);

/* pread of 4 bytes of config space (region at region_offset in the device fd),
 * `iterations` times; the xor of the values in *acc. Returns 0 or -errno. */
int bench_raw_config_read32(int device, uint64_t region_offset, uint64_t offset, int iterations, uint32_t *acc);

/* open(cdev), VFIO_DEVICE_BIND_IOMMUFD, IOMMU_IOAS_ALLOC, VFIO_DEVICE_ATTACH_IOMMUFD_PT
 * `iterations` times (each torn down again: close, IOMMU_DESTROY). Returns the
 * nanoseconds spent from open to attached, summed, or -errno. */
int64_t bench_raw_open_attach(const char *cdev, int iommufd, int iterations);

/* The same for `n` devices at once sharing one iommufd and one IOAS (devices of
 * one IOMMU group must share a domain, so the edu pair cannot each have their
 * own): IOMMU_IOAS_ALLOC, then one thread per device opens, binds and attaches.
 * Returns the nanoseconds from the alloc to the last attach, summed over
 * iterations, or -errno. */
int64_t bench_raw_open_attach_parallel(const char *const *cdevs, int n, int iommufd, int iterations);

/* Runs fn(ctx, i) on `n` new threads (i = 0..<n) and joins them. 0 or -errno. */
typedef void (*bench_thread_fn)(void *ctx, int index);
int bench_run_threads(int n, bench_thread_fn fn, void *ctx);

#endif
