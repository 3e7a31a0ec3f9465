/* Volatile MMIO accessors for mapped device BARs, and the barriers that order
 * them against normal memory (DMA buffers), after Linux's writel/readl and
 * dma_wmb/dma_rmb. Swift has no volatile loads and stores outside an
 * experimental module; these static inline functions are emitted into the
 * caller by the Clang importer and compile to one mov each on x86-64 (where
 * the barriers are compiler barriers only).
 *
 *   cvfio_dma_wmb   prior normal-memory stores are visible to the device
 *                   before later stores (a doorbell): arm64 `dmb oshst`.
 *   cvfio_dma_rmb   later loads happen after prior loads (a completion's
 *                   phase bit, an MMIO status read): arm64 `dmb oshld`.
 *   cvfio_mmio_writeN          cvfio_dma_wmb, then the store (writel).
 *   cvfio_mmio_readN           the load, then cvfio_dma_rmb (readl).
 *   cvfio_mmio_*_relaxed       the access alone (writel_relaxed/readl_relaxed):
 *                              ordered with other MMIO accesses to the same
 *                              device, not with normal memory.
 * On x86-64 stores are not reordered with older stores, nor loads with older
 * loads (TSO), and BARs are mapped uncached: the compiler barrier is enough,
 * as in Linux, whose x86 dma_wmb/dma_rmb are barrier(). */
#ifndef CVFIO_MMIO_H
#define CVFIO_MMIO_H

#include <stdint.h>

static inline __attribute__((always_inline)) void cvfio_dma_wmb(void) {
#if defined(__aarch64__)
    __asm__ __volatile__("dmb oshst" ::: "memory");
#elif defined(__x86_64__) || defined(__i386__)
    __asm__ __volatile__("" ::: "memory");
#else
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

static inline __attribute__((always_inline)) void cvfio_dma_rmb(void) {
#if defined(__aarch64__)
    __asm__ __volatile__("dmb oshld" ::: "memory");
#elif defined(__x86_64__) || defined(__i386__)
    __asm__ __volatile__("" ::: "memory");
#else
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

/* Relaxed: the volatile access alone. */
static inline uint8_t cvfio_mmio_read8_relaxed(const void *p) { return *(const volatile uint8_t *)p; }
static inline uint16_t cvfio_mmio_read16_relaxed(const void *p) { return *(const volatile uint16_t *)p; }
static inline uint32_t cvfio_mmio_read32_relaxed(const void *p) { return *(const volatile uint32_t *)p; }
static inline uint64_t cvfio_mmio_read64_relaxed(const void *p) { return *(const volatile uint64_t *)p; }
static inline void cvfio_mmio_write8_relaxed(void *p, uint8_t v) { *(volatile uint8_t *)p = v; }
static inline void cvfio_mmio_write16_relaxed(void *p, uint16_t v) { *(volatile uint16_t *)p = v; }
static inline void cvfio_mmio_write32_relaxed(void *p, uint32_t v) { *(volatile uint32_t *)p = v; }
static inline void cvfio_mmio_write64_relaxed(void *p, uint64_t v) { *(volatile uint64_t *)p = v; }

/* Ordered (readl/writel): a read is followed by cvfio_dma_rmb, a write
 * preceded by cvfio_dma_wmb. */
static inline uint8_t cvfio_mmio_read8(const void *p) {
    uint8_t v = *(const volatile uint8_t *)p; cvfio_dma_rmb(); return v;
}
static inline uint16_t cvfio_mmio_read16(const void *p) {
    uint16_t v = *(const volatile uint16_t *)p; cvfio_dma_rmb(); return v;
}
static inline uint32_t cvfio_mmio_read32(const void *p) {
    uint32_t v = *(const volatile uint32_t *)p; cvfio_dma_rmb(); return v;
}
static inline uint64_t cvfio_mmio_read64(const void *p) {
    uint64_t v = *(const volatile uint64_t *)p; cvfio_dma_rmb(); return v;
}
static inline void cvfio_mmio_write8(void *p, uint8_t v) { cvfio_dma_wmb(); *(volatile uint8_t *)p = v; }
static inline void cvfio_mmio_write16(void *p, uint16_t v) { cvfio_dma_wmb(); *(volatile uint16_t *)p = v; }
static inline void cvfio_mmio_write32(void *p, uint32_t v) { cvfio_dma_wmb(); *(volatile uint32_t *)p = v; }
static inline void cvfio_mmio_write64(void *p, uint64_t v) { cvfio_dma_wmb(); *(volatile uint64_t *)p = v; }

#endif /* CVFIO_MMIO_H */
