/*
 * CVFIO is header-only (types, typed constants, static inline helpers); SwiftPM
 * needs one C source per C target. Compiling the umbrella here also checks that
 * the headers build as plain C with the package's flags.
 */
#define _GNU_SOURCE 1  /* posix_spawn_file_actions_addclosefrom_np */
#include "CVFIO.h"

int cvfio_spawn_file_actions_addclosefrom(posix_spawn_file_actions_t *actions, int from) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
#else
    (void)actions;
    (void)from;
    return ENOSYS;
#endif
}
