/* Volatile MMIO accessors for mapped device BARs. Swift has no volatile loads
 * and stores outside an experimental module; these static inline functions are
 * emitted into the caller by the Clang importer and compile to one mov each. */
#ifndef CVFIO_MMIO_H
#define CVFIO_MMIO_H

#include <stdint.h>

static inline uint8_t cvfio_mmio_read8(const void *p) { return *(const volatile uint8_t *)p; }
static inline uint16_t cvfio_mmio_read16(const void *p) { return *(const volatile uint16_t *)p; }
static inline uint32_t cvfio_mmio_read32(const void *p) { return *(const volatile uint32_t *)p; }
static inline uint64_t cvfio_mmio_read64(const void *p) { return *(const volatile uint64_t *)p; }
static inline void cvfio_mmio_write8(void *p, uint8_t v) { *(volatile uint8_t *)p = v; }
static inline void cvfio_mmio_write16(void *p, uint16_t v) { *(volatile uint16_t *)p = v; }
static inline void cvfio_mmio_write32(void *p, uint32_t v) { *(volatile uint32_t *)p = v; }
static inline void cvfio_mmio_write64(void *p, uint64_t v) { *(volatile uint64_t *)p = v; }

#endif /* CVFIO_MMIO_H */
