#define _GNU_SOURCE
#include "CBenchSupport.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

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

/* poll (1 s) then read one count, as a C driver waits for an interrupt; 0 or -errno. */
static inline int wait_eventfd(int eventfd) {
    struct pollfd p = { .fd = eventfd, .events = POLLIN };
    int r;
    do { r = poll(&p, 1, 1000); } while (r < 0 && errno == EINTR);
    if (r < 0) return -errno;
    if (r == 0) return -ETIMEDOUT;
    uint64_t count;
    if (read(eventfd, &count, sizeof(count)) != sizeof(count)) return -errno;
    return 0;
}

int bench_raw_edu_irq_roundtrip(volatile void *bar, int eventfd, uint32_t raise_bit, int iterations) {
    volatile uint32_t *raise = (volatile uint32_t *)((volatile char *)bar + 0x60);
    volatile uint32_t *ack = (volatile uint32_t *)((volatile char *)bar + 0x64);
    for (int i = 0; i < iterations; i++) {
        *raise = raise_bit;
        int r = wait_eventfd(eventfd);
        if (r < 0) return r;
        *ack = raise_bit;
    }
    return 0;
}

int bench_raw_eventfd_roundtrip(int eventfd, int iterations) {
    for (int i = 0; i < iterations; i++) {
        uint64_t one = 1;
        if (write(eventfd, &one, sizeof(one)) != sizeof(one)) return -errno;
        int r = wait_eventfd(eventfd);
        if (r < 0) return r;
    }
    return 0;
}

/* Instruction counting under valgrind's callgrind: no-ops when the headers are
 * missing or the process does not run under valgrind. */
#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
int bench_on_valgrind(void) { return RUNNING_ON_VALGRIND ? 1 : 0; }
void bench_cg_zero(void) { CALLGRIND_ZERO_STATS; }
void bench_cg_dump(const char *name) { CALLGRIND_DUMP_STATS_AT(name); }
#else
int bench_on_valgrind(void) { return 0; }
void bench_cg_zero(void) {}
void bench_cg_dump(const char *name) { (void)name; }
#endif

int bench_raw_type1_map_unmap(int container, void *buffer, uint64_t length, uint64_t iova, int iterations) {
    for (int i = 0; i < iterations; i++) {
        struct vfio_iommu_type1_dma_map map = {
            .argsz = sizeof(map),
            .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            .vaddr = (uintptr_t)buffer,
            .iova = iova,
            .size = length,
        };
        if (ioctl(container, VFIO_IOMMU_MAP_DMA, &map)) return -errno;
        struct vfio_iommu_type1_dma_unmap unmap = { .argsz = sizeof(unmap), .iova = iova, .size = length };
        if (ioctl(container, VFIO_IOMMU_UNMAP_DMA, &unmap)) return -errno;
        if (unmap.size != length) return -EIO;
    }
    return 0;
}

int bench_raw_config_read32(int device, uint64_t region_offset, uint64_t offset, int iterations, uint32_t *acc) {
    uint32_t x = 0;
    for (int i = 0; i < iterations; i++) {
        uint32_t v;
        if (pread(device, &v, 4, (off_t)(region_offset + offset)) != 4) return -errno;
        x ^= v;
    }
    *acc = x;
    return 0;
}

static int raw_attach_one(const char *cdev, int iommufd, int *out_fd, uint32_t *out_ioas) {
    int fd = open(cdev, O_RDWR | O_CLOEXEC);
    if (fd < 0) return -errno;
    struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = iommufd };
    if (ioctl(fd, VFIO_DEVICE_BIND_IOMMUFD, &bind)) { int e = errno; close(fd); return -e; }
    struct iommu_ioas_alloc alloc = { .size = sizeof(alloc) };
    if (ioctl(iommufd, IOMMU_IOAS_ALLOC, &alloc)) { int e = errno; close(fd); return -e; }
    struct vfio_device_attach_iommufd_pt attach = { .argsz = sizeof(attach), .pt_id = alloc.out_ioas_id };
    if (ioctl(fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach)) {
        int e = errno;
        close(fd);
        struct iommu_destroy destroy = { .size = sizeof(destroy), .id = alloc.out_ioas_id };
        ioctl(iommufd, IOMMU_DESTROY, &destroy);
        return -e;
    }
    *out_fd = fd;
    *out_ioas = alloc.out_ioas_id;
    return 0;
}

static int raw_release_one(int iommufd, int fd, uint32_t ioas) {
    close(fd);
    struct iommu_destroy destroy = { .size = sizeof(destroy), .id = ioas };
    return ioctl(iommufd, IOMMU_DESTROY, &destroy) ? -errno : 0;
}

int64_t bench_raw_open_attach(const char *cdev, int iommufd, int iterations) {
    int64_t total = 0;
    for (int i = 0; i < iterations; i++) {
        int fd;
        uint32_t ioas;
        uint64_t t0 = bench_now_ns();
        int r = raw_attach_one(cdev, iommufd, &fd, &ioas);
        if (r) return r;
        total += (int64_t)(bench_now_ns() - t0);
        if ((r = raw_release_one(iommufd, fd, ioas))) return r;
    }
    return total;
}

struct bench_job { bench_thread_fn fn; void *ctx; int index; };
static void *bench_thread_main(void *p) {
    struct bench_job *j = p;
    j->fn(j->ctx, j->index);
    return 0;
}

int bench_run_threads(int n, bench_thread_fn fn, void *ctx) {
    struct bench_job jobs[16];
    pthread_t threads[16];
    if (n > 16) return -EINVAL;
    int started = 0, err = 0;
    for (int i = 0; i < n; i++) {
        jobs[i] = (struct bench_job){ fn, ctx, i };
        int r = pthread_create(&threads[i], 0, bench_thread_main, &jobs[i]);
        if (r) { err = -r; break; }
        started++;
    }
    for (int i = 0; i < started; i++) pthread_join(threads[i], 0);
    return err;
}

struct parallel_ctx { const char *const *cdevs; int iommufd; uint32_t ioas; int fds[16]; int errs[16]; };

/* open, bind, attach to the shared IOAS: one thread's part. */
static void parallel_one(void *p, int i) {
    struct parallel_ctx *c = p;
    c->fds[i] = -1;
    int fd = open(c->cdevs[i], O_RDWR | O_CLOEXEC);
    if (fd < 0) { c->errs[i] = -errno; return; }
    struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = c->iommufd };
    struct vfio_device_attach_iommufd_pt attach = { .argsz = sizeof(attach), .pt_id = c->ioas };
    if (ioctl(fd, VFIO_DEVICE_BIND_IOMMUFD, &bind) || ioctl(fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach)) {
        c->errs[i] = -errno;
        close(fd);
        return;
    }
    c->fds[i] = fd;
}

int64_t bench_raw_open_attach_parallel(const char *const *cdevs, int n, int iommufd, int iterations) {
    int64_t total = 0;
    if (n > 16) return -EINVAL;
    for (int it = 0; it < iterations; it++) {
        struct parallel_ctx c = { .cdevs = cdevs, .iommufd = iommufd };
        uint64_t t0 = bench_now_ns();
        struct iommu_ioas_alloc alloc = { .size = sizeof(alloc) };
        if (ioctl(iommufd, IOMMU_IOAS_ALLOC, &alloc)) return -errno;
        c.ioas = alloc.out_ioas_id;
        int err = bench_run_threads(n, parallel_one, &c);
        total += (int64_t)(bench_now_ns() - t0);
        for (int i = 0; i < n; i++) {
            if (c.errs[i] && !err) err = c.errs[i];
            if (c.fds[i] >= 0) close(c.fds[i]);
        }
        struct iommu_destroy destroy = { .size = sizeof(destroy), .id = alloc.out_ioas_id };
        if (ioctl(iommufd, IOMMU_DESTROY, &destroy) && !err) err = -errno;
        if (err) return err;
    }
    return total;
}
