/* Fixed-signature wrappers for the syscalls VFIOKit uses that Swift's Glibc
 * module does not import (eventfd, getdents64) or imports as variadic (ioctl,
 * open, openat, fcntl). Only VFIOSystem calls them. */
#ifndef CVFIO_SYS_H
#define CVFIO_SYS_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
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
static inline int cvfio_sys_openat(int dirfd, const char *path, int flags, unsigned int mode) {
    return openat(dirfd, path, flags, mode);
}
static inline int cvfio_sys_fcntl(int fd, int command, int argument) {
    return fcntl(fd, command, argument);
}
/* getdents64(2): the directory entries of an open directory fd, as
 * struct linux_dirent64 records (d_ino u64, d_off s64, d_reclen u16, d_type u8,
 * d_name[]). Returns the bytes written, 0 at the end, or -1 with errno. */
static inline long cvfio_sys_getdents64(int fd, void *buffer, unsigned long count) {
    return syscall(SYS_getdents64, fd, buffer, count);
}
/* flock and stat share their names with structs, which hides the functions in Swift. */
static inline int cvfio_sys_flock(int fd, int operation) {
    return flock(fd, operation);
}
static inline int cvfio_sys_stat(const char *path, struct stat *status) {
    return stat(path, status);
}
static inline int cvfio_errno(void) { return errno; }

/* posix_spawn_file_actions_addclosefrom_np (glibc 2.34 and later), which
 * <spawn.h> declares only under _GNU_SOURCE: close every fd >= from in the
 * child. Returns 0 or an errno; ENOSYS where the C library lacks it. */
int cvfio_spawn_file_actions_addclosefrom(posix_spawn_file_actions_t *actions, int from);

/* ppoll(2) with a relative timeout in nanoseconds (negative: wait forever) and
 * no signal mask change: poll(2) with nanosecond rather than millisecond
 * resolution. ppoll is declared only under _GNU_SOURCE. */
int cvfio_sys_ppoll(struct pollfd *fds, unsigned long count, long long timeout_ns);

static const unsigned int CVFIO_MFD_CLOEXEC = 0x0001U;
static const unsigned int CVFIO_MFD_HUGETLB = 0x0004U;

static const int CVFIO_EFD_CLOEXEC = EFD_CLOEXEC;
static const int CVFIO_EFD_NONBLOCK = EFD_NONBLOCK;
static const int CVFIO_EFD_SEMAPHORE = EFD_SEMAPHORE;

#endif
