/*
 * CVFIO is header-only (types, typed constants, static inline helpers); SwiftPM
 * needs one C source per C target. Compiling the umbrella here also checks that
 * the headers build as plain C with the package's flags.
 */
#define _GNU_SOURCE 1  /* posix_spawn_file_actions_addclosefrom_np, ppoll */
#include "CVFIO.h"

#include <time.h>

int cvfio_sys_ppoll(struct pollfd *fds, unsigned long count, long long timeout_ns) {
    if (timeout_ns < 0) return ppoll(fds, (nfds_t)count, NULL, NULL);
    struct timespec ts = { .tv_sec = (time_t)(timeout_ns / 1000000000LL), .tv_nsec = (long)(timeout_ns % 1000000000LL) };
    return ppoll(fds, (nfds_t)count, &ts, NULL);
}

int cvfio_spawn_file_actions_addclosefrom(posix_spawn_file_actions_t *actions, int from) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
#else
    (void)actions;
    (void)from;
    return ENOSYS;
#endif
}
