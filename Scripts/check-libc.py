#!/usr/bin/env python3
"""Counts C library calls in the library and the CLI outside Sources/VFIOSystem.

Every Swift file under Sources/ except the syscall layer itself (Sources/VFIOSystem)
and the test side (Sources/VFIOKitTestSupport: the fake kernel and the guest
harness, the kernel's side of the tests; Sources/vfiokit-edu-dma: a test helper
program), with comments and string literals taken out, is searched for
calls of the libc functions VFIOKit could reach for (system calls and their
wrappers, threads, signals, processes, limits, sleeps, raw memory, stdio), for
CVFIO's syscall shims and for `Glibc.`. Names that are also Swift methods here
(open, close, read, write, ioctl, poll, access, kill, free, sleep) are caught when
spelled `Glibc.name(`; stat, access, kill, poll, free and sleep also when called
with arguments (the methods and initializers of those names here take none).

Usage: check-libc.py ROOT. Prints each call and the count; exits 1 when any.
"""
import os
import re
import sys

NAMES = """opendir readdir closedir readlink readlinkat lstat fstat fstatat mkdir mkdirat rmdir unlink
unlinkat rename renameat renameat2 openat creat flock fsync fdatasync ftruncate truncate lseek pread pwrite
preadv pwritev mmap munmap mprotect madvise mlock munlock memfd_create eventfd epoll_create1 epoll_ctl
epoll_wait ppoll pthread_create pthread_detach pthread_join pthread_sigmask pthread_kill sigprocmask sigwait
sigtimedwait sigemptyset sigaddset sigaction getrlimit setrlimit prlimit uname sysconf getpagesize nanosleep
usleep clock_gettime clock_nanosleep sched_yield getpid getppid gettid getuid geteuid getgid getegid getgroups
posix_spawn posix_spawnp waitpid wait4 execv execve execvp fork vfork fcntl dup dup2 dup3 pipe pipe2 socket
chmod fchmod chown fchown umask statfs fstatfs memset memcpy memmove strdup strlen malloc calloc realloc
fflush fopen fclose fread fwrite fprintf cvfio_errno""".split()
CALL = re.compile(r"(?<![.\w])(" + "|".join(NAMES)
                  + r"|posix_spawn_file_actions_\w+|posix_spawnattr_\w+|cvfio_sys_\w+|cvfio_spawn_\w+)\s*\(")
# Names that are also methods or struct initializers here, counted when called with arguments.
CALL_WITH_ARGUMENTS = re.compile(r"(?<![.\w])(stat|access|kill|poll|free|sleep)\s*\((?!\s*\))")
QUALIFIED = re.compile(r"\bGlibc\.\w+")
DECLARATION = re.compile(r"\bfunc\s+$")
EXEMPT = ("Sources/VFIOSystem", "Sources/VFIOKitTestSupport", "Sources/vfiokit-edu-dma")


def code_only(text):
    """The text with comments and string literals blanked, lines kept."""
    out, i, n = [], 0, len(text)
    blank = lambda s: re.sub(r"[^\n]", " ", s)
    while i < n:
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(blank(text[i:j]))
            i = j
        elif text.startswith('"""', i):
            j = text.find('"""', i + 3)
            j = n if j < 0 else j + 3
            out.append(blank(text[i:j]))
            i = j
        elif text[i] == '"':
            # A one-line literal; interpolations \( ... ) are code, but blanking them is harmless here.
            j, depth = i + 1, 0
            while j < n and text[j] != "\n":
                if text[j] == "\\" and j + 1 < n and text[j + 1] == "(":
                    depth += 1
                    j += 2
                    continue
                if text[j] == "\\":
                    j += 2
                    continue
                if depth and text[j] == ")":
                    depth -= 1
                elif text[j] == '"' and depth == 0:
                    break
                j += 1
            out.append(" " * (j + 1 - i))
            i = j + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    hits = []
    for d, dirs, files in os.walk(os.path.join(root, "Sources")):
        dirs.sort()
        rel = os.path.relpath(d, root)
        if rel.startswith(EXEMPT):
            continue
        for f in sorted(files):
            if not f.endswith(".swift"):
                continue
            path = os.path.join(d, f)
            with open(path, encoding="utf-8") as fh:
                lines = code_only(fh.read()).split("\n")
            for no, line in enumerate(lines, 1):
                for m in list(CALL.finditer(line)) + list(CALL_WITH_ARGUMENTS.finditer(line)) + list(QUALIFIED.finditer(line)):
                    if DECLARATION.search(line[:m.start()]):
                        continue
                    hits.append(f"{os.path.relpath(path, root)}:{no}: {m.group(0).rstrip('(').strip()}")
    for h in hits:
        print("  " + h)
    print(f"  {len(hits)} C library calls outside Sources/VFIOSystem (in the library and the CLI)")
    return 1 if hits else 0


if __name__ == "__main__":
    sys.exit(main())
