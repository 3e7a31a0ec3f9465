#pragma once
#include <stdint.h>

/* Allocations (malloc, calloc, realloc, posix_memalign, aligned_alloc, memalign)
   made so far by the calling thread. */
uint64_t vfiokit_thread_allocations(void);

/* 1 when the allocator is interposed and counting works; 0 in a sanitizer
   build (the sanitizer interposes the allocator itself). */
int vfiokit_allocations_counted(void);
