/* Fixed-signature wrappers for the syscalls VFIOKit uses that Swift's Glibc
 * module does not import (eventfd) or imports as variadic (ioctl, open). */
#ifndef CVFIO_SYS_H
#define CVFIO_SYS_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static inline int cvfio_sys_ioctl(int fd, unsigned long request, void *arg) {
    return ioctl(fd, request, arg);
}
static inline int cvfio_sys_open(const char *path, int flags, unsigned int mode) {
    return open(path, flags, mode);
}
static inline int cvfio_sys_eventfd(unsigned int initval, int flags) {
    return eventfd(initval, flags);
}
static inline int cvfio_sys_memfd_create(const char *name, unsigned int flags) {
    return (int)syscall(SYS_memfd_create, name, flags);
}
static inline int cvfio_errno(void) { return errno; }

/* posix_spawn_file_actions_addclosefrom_np (glibc 2.34 and later), which
 * <spawn.h> declares only under _GNU_SOURCE: close every fd >= from in the
 * child. Returns 0 or an errno; ENOSYS where the C library lacks it. */
int cvfio_spawn_file_actions_addclosefrom(posix_spawn_file_actions_t *actions, int from);

static const unsigned int CVFIO_MFD_CLOEXEC = 0x0001U;
static const unsigned int CVFIO_MFD_HUGETLB = 0x0004U;

static const int CVFIO_EFD_CLOEXEC = EFD_CLOEXEC;
static const int CVFIO_EFD_NONBLOCK = EFD_NONBLOCK;
static const int CVFIO_EFD_SEMAPHORE = EFD_SEMAPHORE;

#endif
