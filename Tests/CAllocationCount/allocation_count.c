/* Counts the test process's allocations per thread by interposing glibc's
   allocator (the definitions in the executable win over libc's; each forwards
   to glibc's __libc_* entry point), as Benchmarks/CBenchSupport does for the
   bench. Per thread, so tests running in parallel on other threads do not
   disturb a count. Linked only into the host test bundle (VFIOKitTests). */
#include "allocation_count.h"
#include <stddef.h>
#include <errno.h>

#ifndef __has_feature
#define __has_feature(x) 0
#endif

#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)

uint64_t vfiokit_thread_allocations(void) { return 0; }
int vfiokit_allocations_counted(void) { return 0; }

#else

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static __thread __attribute__((tls_model("initial-exec"))) uint64_t allocations;

void *malloc(size_t n) { allocations++; return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { allocations++; return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { allocations++; return __libc_realloc(p, n); }
int posix_memalign(void **out, size_t align, size_t n) {
    allocations++;
    if (align % sizeof(void *) != 0 || (align & (align - 1)) != 0) return EINVAL;
    void *p = __libc_memalign(align, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}
void *aligned_alloc(size_t align, size_t n) { allocations++; return __libc_memalign(align, n); }
void *memalign(size_t align, size_t n) { allocations++; return __libc_memalign(align, n); }

uint64_t vfiokit_thread_allocations(void) { return allocations; }
int vfiokit_allocations_counted(void) { return 1; }

#endif
