"""The sandbox's seccomp filter: an allow-list, as a classic-BPF program built here and
loaded by bubblewrap.

``bwrap --seccomp FD`` installs it (``no_new_privs`` is set) right before it executes the
sandboxed interpreter, so it covers everything the candidate (and the judge) runs. The
filter *allows* what a Python program and its tests need (:data:`ALLOWED`, by purpose)
and refuses everything else:

* a call not on the list fails with ``ENOSYS`` (the C library then falls back where it
  can, e.g. ``clone3`` -> ``clone``, ``statx`` -> ``newfstatat``), so a system call added
  to the kernel later is refused until it is listed here;
* sockets of any family but ``AF_UNIX`` (``socket``, ``socketpair``) fail with
  ``EAFNOSUPPORT``: no ``AF_VSOCK`` (which reaches the hypervisor's host past
  ``--unshare-net`` on a virtual machine), ``AF_NETLINK``, ``AF_PACKET``, ``AF_ALG``,
  ``AF_INET*`` and the rest;
* ``madvise`` with an advice that reaches the page cache or other processes' pages
  (``MADV_WILLNEED``, ``MADV_COLD``, ``MADV_PAGEOUT``, ``MADV_POPULATE_*``, KSM's
  ``MADV_MERGEABLE``, ``MADV_HWPOISON``...) fails with ``EPERM``; the allocator's advices
  (:data:`MADVISE_ALLOWED`) pass;
* ``fcntl`` with ``F_SETPIPE_SZ`` (pipe buffers past 64 KiB: kernel memory the address-space
  limit does not see) or ``F_NOTIFY`` fails with ``EPERM``;
* ``clone`` with any ``CLONE_NEW*`` flag fails with ``EPERM``, ``clone3`` with ``ENOSYS``
  (its flags are in memory the filter cannot read; the C library falls back to ``clone``);
* the calls of :data:`DENIED` fail with ``EPERM`` (named so that a later edit of the
  allow-list cannot let them in by accident, and so that their refusal is explicit):
  the kernel keyring (a channel from one sample to the next), new namespaces, memory
  outside ``RLIMIT_AS`` (SysV/POSIX IPC, ``memfd``), the page cache (``mincore``,
  ``cachestat``, ``fadvise64``, ``readahead``, ``preadv2``/``pwritev2`` whose
  ``RWF_NOWAIT`` probes residency) and the ``sync`` family (``sync``, ``syncfs``,
  ``fsync``, ``fdatasync``, ``sync_file_range``, ``msync``: writeback the host pays for),
  host-wide counters (``sysinfo``: uptime, load, free memory, process count), pinned
  memory (``mlock*``), ``inotify`` (kernel memory per uid, shared by every sample),
  other processes and the kernel (``ptrace``, ``bpf``, ``perf_event_open``,
  ``io_uring_*``, module loading, ``kexec``, clock setting...), mount changes other than
  ``mount`` itself (a root harness's child mounts its inode-capped ``/work`` with it
  before dropping to uid 65534; after the drop it has no capability);
* syscalls of another ABI (i386 ``int 0x80``, x32) are refused as a whole (``EPERM``).

Which call was refused reaches the verdict (Linux 5.0 and later): the candidate's filter
hands its refusals to the harness instead of answering them itself.  bwrap loads
``program(notify=True)``, whose refusals are ``SECCOMP_RET_USER_NOTIF``; with no listener
the kernel answers those ``ENOSYS``.  Before any candidate code runs, the sandbox's
trusted child loads the same program again, *sealed* (``seccomp()`` itself refused,
``EPERM``), with ``SECCOMP_FILTER_FLAG_NEW_LISTENER``, and passes the listener to the
harness (``SCM_RIGHTS``).  For a call both filters refuse the kernel notifies the newest
filter's listener: the harness records the call (:func:`refusal` names it, e.g.
``socket(AF_INET)``) and answers it with the errno this module's plain program gives
(:func:`errno_for`: the classic-BPF program itself, run by :func:`run_filter`), so the
candidate sees exactly the errno above.  The seal matters: a listener may answer
``CONTINUE``, which runs the call, so a candidate that could stack a filter of its own
could let refused calls through.  Not handed over (answered by the kernel, not named):
``clone3`` (the C library's probe), another ABI's calls, and the trusted judge's calls
(its filter is the plain one).

Architectures: x86-64 and AArch64 (numbers from the kernel's ``unistd_64.h`` and
``asm-generic/unistd.h``; ``tests/eval/test_seccomp_unit.py`` checks them against the
installed headers); elsewhere :func:`program` returns ``None`` and the harness says once
that no seccomp filter is in place.
"""

from __future__ import annotations

import errno
import functools
import platform
import struct

# What a Python program and its tests need, by purpose.
ALLOWED = {
    "files": (
        "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
        "open", "openat", "openat2", "close", "close_range", "creat", "lseek", "fstat",
        "stat", "lstat", "newfstatat", "statx", "access", "faccessat", "faccessat2",
        "readlink", "readlinkat", "getdents", "getdents64", "ioctl", "dup", "dup2",
        "dup3", "pipe", "pipe2", "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat",
        "rename", "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat",
        "chmod", "fchmod", "fchmodat", "truncate", "ftruncate", "fallocate", "utime",
        "utimes", "utimensat", "futimesat", "getcwd", "chdir", "fchdir", "umask", "statfs",
        "fstatfs", "flock", "sendfile", "copy_file_range", "getxattr", "lgetxattr",
        "fgetxattr", "listxattr", "llistxattr", "flistxattr",
    ),
    "memory": ("brk", "mmap", "munmap", "mremap", "mprotect", "membarrier"),
    "process": (
        "execve", "execveat", "exit", "exit_group", "wait4", "waitid", "kill", "tgkill",
        "tkill", "getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid",
        "getgroups", "getresuid", "getresgid", "setuid", "setgid", "setgroups", "setresuid",
        "setresgid", "getpgid", "getpgrp", "setpgid", "setsid", "getsid", "prctl",
        "arch_prctl", "set_tid_address", "set_robust_list", "get_robust_list", "rseq",
        "futex", "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam",
        "sched_getscheduler", "sched_get_priority_max", "sched_get_priority_min",
        "getpriority", "setpriority", "getrlimit", "setrlimit", "prlimit64", "getrusage",
        "times", "uname", "getrandom", "getcpu", "capget",
        "mount",  # the root harness's child mounts /work, then drops every capability
    ),
    "time": (
        "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday",
        "time", "alarm", "setitimer", "getitimer", "timer_create", "timer_settime",
        "timer_gettime", "timer_getoverrun", "timer_delete", "timerfd_create",
        "timerfd_settime", "timerfd_gettime",
    ),
    "signals": (
        "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigsuspend", "rt_sigpending",
        "rt_sigtimedwait", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "sigaltstack", "pause",
        "signalfd", "signalfd4", "restart_syscall",
    ),
    "polling": (
        "select", "pselect6", "poll", "ppoll", "epoll_create", "epoll_create1", "epoll_ctl",
        "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2",
    ),
    "sockets": (  # of the families socket() may create: AF_UNIX only
        "connect", "bind", "listen", "accept", "accept4", "sendto", "recvfrom", "sendmsg",
        "recvmsg", "sendmmsg", "recvmmsg", "shutdown", "getsockname", "getpeername",
        "getsockopt", "setsockopt",
    ),
}
SOCKET_FAMILIES = (1,)  # AF_UNIX
# fcntl commands refused: F_SETPIPE_SZ (a pipe's buffer up to pipe-max-size, 1 MiB each,
# kernel memory RLIMIT_AS does not see; a pipe keeps its 64 KiB) and F_NOTIFY (dnotify).
FCNTL_REFUSED = (1031, 1026)
# MADV_NORMAL, RANDOM, SEQUENTIAL, DONTNEED, FREE, REMOVE, DONTFORK, DOFORK, HUGEPAGE,
# NOHUGEPAGE, DONTDUMP, DODUMP, WIPEONFORK, KEEPONFORK: the allocators' advices.
MADVISE_ALLOWED = (0, 1, 2, 4, 8, 9, 10, 11, 14, 15, 16, 17, 18, 19)

# Refused with EPERM, by name (see the module docstring for why).
DENIED = (
    "add_key", "keyctl", "request_key",
    "unshare", "setns",
    "shmget", "shmat", "shmctl", "shmdt", "msgget", "msgsnd", "semget", "mq_open",
    "memfd_create", "memfd_secret",
    "mincore", "cachestat", "fadvise64", "readahead", "preadv2", "pwritev2",
    "sync", "syncfs", "fsync", "fdatasync", "sync_file_range", "msync",
    "sysinfo", "mlock", "mlock2", "mlockall", "munlock", "munlockall",
    "inotify_init", "inotify_init1", "inotify_add_watch",
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "bpf",
    "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "fanotify_init", "open_by_handle_at", "name_to_handle_at", "personality", "syslog", "acct",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "quotactl", "iopl", "ioperm", "vhangup", "lookup_dcookie",
    "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr",
)

# Every system call's number (the kernel headers' tables, so that a refused call can be
# named; up to Linux 6.13's); a name an architecture lacks (AArch64 has no ``open``,
# ``stat``, ``poll``...) is simply absent from its table.
_X86_64 = {
    "_sysctl": 156, "accept": 43, "accept4": 288, "access": 21, "acct": 163, "add_key": 248,
    "adjtimex": 159, "afs_syscall": 183, "alarm": 37, "arch_prctl": 158, "bind": 49,
    "bpf": 321, "brk": 12, "cachestat": 451, "capget": 125, "capset": 126, "chdir": 80,
    "chmod": 90, "chown": 92, "chroot": 161, "clock_adjtime": 305, "clock_getres": 229,
    "clock_gettime": 228, "clock_nanosleep": 230, "clock_settime": 227, "clone": 56,
    "clone3": 435, "close": 3, "close_range": 436, "connect": 42, "copy_file_range": 326,
    "creat": 85, "create_module": 174, "delete_module": 176, "dup": 32, "dup2": 33,
    "dup3": 292, "epoll_create": 213, "epoll_create1": 291, "epoll_ctl": 233,
    "epoll_ctl_old": 214, "epoll_pwait": 281, "epoll_pwait2": 441, "epoll_wait": 232,
    "epoll_wait_old": 215, "eventfd": 284, "eventfd2": 290, "execve": 59, "execveat": 322,
    "exit": 60, "exit_group": 231, "faccessat": 269, "faccessat2": 439, "fadvise64": 221,
    "fallocate": 285, "fanotify_init": 300, "fanotify_mark": 301, "fchdir": 81,
    "fchmod": 91, "fchmodat": 268, "fchmodat2": 452, "fchown": 93, "fchownat": 260,
    "fcntl": 72, "fdatasync": 75, "fgetxattr": 193, "finit_module": 313, "flistxattr": 196,
    "flock": 73, "fork": 57, "fremovexattr": 199, "fsconfig": 431, "fsetxattr": 190,
    "fsmount": 432, "fsopen": 430, "fspick": 433, "fstat": 5, "fstatfs": 138, "fsync": 74,
    "ftruncate": 77, "futex": 202, "futex_requeue": 456, "futex_wait": 455,
    "futex_waitv": 449, "futex_wake": 454, "futimesat": 261, "get_kernel_syms": 177,
    "get_mempolicy": 239, "get_robust_list": 274, "get_thread_area": 211, "getcpu": 309,
    "getcwd": 79, "getdents": 78, "getdents64": 217, "getegid": 108, "geteuid": 107,
    "getgid": 104, "getgroups": 115, "getitimer": 36, "getpeername": 52, "getpgid": 121,
    "getpgrp": 111, "getpid": 39, "getpmsg": 181, "getppid": 110, "getpriority": 140,
    "getrandom": 318, "getresgid": 120, "getresuid": 118, "getrlimit": 97, "getrusage": 98,
    "getsid": 124, "getsockname": 51, "getsockopt": 55, "gettid": 186, "gettimeofday": 96,
    "getuid": 102, "getxattr": 191, "getxattrat": 464, "init_module": 175,
    "inotify_add_watch": 254, "inotify_init": 253, "inotify_init1": 294,
    "inotify_rm_watch": 255, "io_cancel": 210, "io_destroy": 207, "io_getevents": 208,
    "io_pgetevents": 333, "io_setup": 206, "io_submit": 209, "io_uring_enter": 426,
    "io_uring_register": 427, "io_uring_setup": 425, "ioctl": 16, "ioperm": 173,
    "iopl": 172, "ioprio_get": 252, "ioprio_set": 251, "kcmp": 312, "kexec_file_load": 320,
    "kexec_load": 246, "keyctl": 250, "kill": 62, "landlock_add_rule": 445,
    "landlock_create_ruleset": 444, "landlock_restrict_self": 446, "lchown": 94,
    "lgetxattr": 192, "link": 86, "linkat": 265, "listen": 50, "listmount": 458,
    "listxattr": 194, "listxattrat": 465, "llistxattr": 195, "lookup_dcookie": 212,
    "lremovexattr": 198, "lseek": 8, "lsetxattr": 189, "lsm_get_self_attr": 459,
    "lsm_list_modules": 461, "lsm_set_self_attr": 460, "lstat": 6, "madvise": 28,
    "map_shadow_stack": 453, "mbind": 237, "membarrier": 324, "memfd_create": 319,
    "memfd_secret": 447, "migrate_pages": 256, "mincore": 27, "mkdir": 83, "mkdirat": 258,
    "mknod": 133, "mknodat": 259, "mlock": 149, "mlock2": 325, "mlockall": 151, "mmap": 9,
    "modify_ldt": 154, "mount": 165, "mount_setattr": 442, "move_mount": 429,
    "move_pages": 279, "mprotect": 10, "mq_getsetattr": 245, "mq_notify": 244,
    "mq_open": 240, "mq_timedreceive": 243, "mq_timedsend": 242, "mq_unlink": 241,
    "mremap": 25, "mseal": 462, "msgctl": 71, "msgget": 68, "msgrcv": 70, "msgsnd": 69,
    "msync": 26, "munlock": 150, "munlockall": 152, "munmap": 11, "name_to_handle_at": 303,
    "nanosleep": 35, "newfstatat": 262, "nfsservctl": 180, "open": 2,
    "open_by_handle_at": 304, "open_tree": 428, "openat": 257, "openat2": 437, "pause": 34,
    "perf_event_open": 298, "personality": 135, "pidfd_getfd": 438, "pidfd_open": 434,
    "pidfd_send_signal": 424, "pipe": 22, "pipe2": 293, "pivot_root": 155,
    "pkey_alloc": 330, "pkey_free": 331, "pkey_mprotect": 329, "poll": 7, "ppoll": 271,
    "prctl": 157, "pread64": 17, "preadv": 295, "preadv2": 327, "prlimit64": 302,
    "process_madvise": 440, "process_mrelease": 448, "process_vm_readv": 310,
    "process_vm_writev": 311, "pselect6": 270, "ptrace": 101, "putpmsg": 182,
    "pwrite64": 18, "pwritev": 296, "pwritev2": 328, "query_module": 178, "quotactl": 179,
    "quotactl_fd": 443, "read": 0, "readahead": 187, "readlink": 89, "readlinkat": 267,
    "readv": 19, "reboot": 169, "recvfrom": 45, "recvmmsg": 299, "recvmsg": 47,
    "remap_file_pages": 216, "removexattr": 197, "removexattrat": 466, "rename": 82,
    "renameat": 264, "renameat2": 316, "request_key": 249, "restart_syscall": 219,
    "rmdir": 84, "rseq": 334, "rt_sigaction": 13, "rt_sigpending": 127,
    "rt_sigprocmask": 14, "rt_sigqueueinfo": 129, "rt_sigreturn": 15, "rt_sigsuspend": 130,
    "rt_sigtimedwait": 128, "rt_tgsigqueueinfo": 297, "sched_get_priority_max": 146,
    "sched_get_priority_min": 147, "sched_getaffinity": 204, "sched_getattr": 315,
    "sched_getparam": 143, "sched_getscheduler": 145, "sched_rr_get_interval": 148,
    "sched_setaffinity": 203, "sched_setattr": 314, "sched_setparam": 142,
    "sched_setscheduler": 144, "sched_yield": 24, "seccomp": 317, "security": 185,
    "select": 23, "semctl": 66, "semget": 64, "semop": 65, "semtimedop": 220,
    "sendfile": 40, "sendmmsg": 307, "sendmsg": 46, "sendto": 44, "set_mempolicy": 238,
    "set_mempolicy_home_node": 450, "set_robust_list": 273, "set_thread_area": 205,
    "set_tid_address": 218, "setdomainname": 171, "setfsgid": 123, "setfsuid": 122,
    "setgid": 106, "setgroups": 116, "sethostname": 170, "setitimer": 38, "setns": 308,
    "setpgid": 109, "setpriority": 141, "setregid": 114, "setresgid": 119, "setresuid": 117,
    "setreuid": 113, "setrlimit": 160, "setsid": 112, "setsockopt": 54, "settimeofday": 164,
    "setuid": 105, "setxattr": 188, "setxattrat": 463, "shmat": 30, "shmctl": 31,
    "shmdt": 67, "shmget": 29, "shutdown": 48, "sigaltstack": 131, "signalfd": 282,
    "signalfd4": 289, "socket": 41, "socketpair": 53, "splice": 275, "stat": 4,
    "statfs": 137, "statmount": 457, "statx": 332, "swapoff": 168, "swapon": 167,
    "symlink": 88, "symlinkat": 266, "sync": 162, "sync_file_range": 277, "syncfs": 306,
    "sysfs": 139, "sysinfo": 99, "syslog": 103, "tee": 276, "tgkill": 234, "time": 201,
    "timer_create": 222, "timer_delete": 226, "timer_getoverrun": 225, "timer_gettime": 224,
    "timer_settime": 223, "timerfd_create": 283, "timerfd_gettime": 287,
    "timerfd_settime": 286, "times": 100, "tkill": 200, "truncate": 76, "tuxcall": 184,
    "umask": 95, "umount2": 166, "uname": 63, "unlink": 87, "unlinkat": 263, "unshare": 272,
    "uselib": 134, "userfaultfd": 323, "ustat": 136, "utime": 132, "utimensat": 280,
    "utimes": 235, "vfork": 58, "vhangup": 153, "vmsplice": 278, "vserver": 236,
    "wait4": 61, "waitid": 247, "write": 1, "writev": 20,
}

_AARCH64 = {
    "accept": 202, "accept4": 242, "acct": 89, "add_key": 217, "adjtimex": 171, "bind": 200,
    "bpf": 280, "brk": 214, "cachestat": 451, "capget": 90, "capset": 91, "chdir": 49,
    "chroot": 51, "clock_adjtime": 266, "clock_adjtime64": 405, "clock_getres": 114,
    "clock_getres_time64": 406, "clock_gettime": 113, "clock_gettime64": 403,
    "clock_nanosleep": 115, "clock_nanosleep_time64": 407, "clock_settime": 112,
    "clock_settime64": 404, "clone": 220, "clone3": 435, "close": 57, "close_range": 436,
    "connect": 203, "copy_file_range": 285, "delete_module": 106, "dup": 23, "dup3": 24,
    "epoll_create1": 20, "epoll_ctl": 21, "epoll_pwait": 22, "epoll_pwait2": 441,
    "eventfd2": 19, "execve": 221, "execveat": 281, "exit": 93, "exit_group": 94,
    "faccessat": 48, "faccessat2": 439, "fadvise64": 223, "fallocate": 47,
    "fanotify_init": 262, "fanotify_mark": 263, "fchdir": 50, "fchmod": 52, "fchmodat": 53,
    "fchmodat2": 452, "fchown": 55, "fchownat": 54, "fcntl": 25, "fdatasync": 83,
    "fgetxattr": 10, "finit_module": 273, "flistxattr": 13, "flock": 32, "fremovexattr": 16,
    "fsconfig": 431, "fsetxattr": 7, "fsmount": 432, "fsopen": 430, "fspick": 433,
    "fstat": 80, "fstatfs": 44, "fsync": 82, "ftruncate": 46, "futex": 98,
    "futex_requeue": 456, "futex_time64": 422, "futex_wait": 455, "futex_waitv": 449,
    "futex_wake": 454, "get_mempolicy": 236, "get_robust_list": 100, "getcpu": 168,
    "getcwd": 17, "getdents64": 61, "getegid": 177, "geteuid": 175, "getgid": 176,
    "getgroups": 158, "getitimer": 102, "getpeername": 205, "getpgid": 155, "getpid": 172,
    "getppid": 173, "getpriority": 141, "getrandom": 278, "getresgid": 150,
    "getresuid": 148, "getrlimit": 163, "getrusage": 165, "getsid": 156, "getsockname": 204,
    "getsockopt": 209, "gettid": 178, "gettimeofday": 169, "getuid": 174, "getxattr": 8,
    "getxattrat": 464, "init_module": 105, "inotify_add_watch": 27, "inotify_init1": 26,
    "inotify_rm_watch": 28, "io_cancel": 3, "io_destroy": 1, "io_getevents": 4,
    "io_pgetevents": 292, "io_pgetevents_time64": 416, "io_setup": 0, "io_submit": 2,
    "io_uring_enter": 426, "io_uring_register": 427, "io_uring_setup": 425, "ioctl": 29,
    "ioprio_get": 31, "ioprio_set": 30, "kcmp": 272, "kexec_file_load": 294,
    "kexec_load": 104, "keyctl": 219, "kill": 129, "landlock_add_rule": 445,
    "landlock_create_ruleset": 444, "landlock_restrict_self": 446, "lgetxattr": 9,
    "linkat": 37, "listen": 201, "listmount": 458, "listxattr": 11, "listxattrat": 465,
    "llistxattr": 12, "lookup_dcookie": 18, "lremovexattr": 15, "lseek": 62, "lsetxattr": 6,
    "lsm_get_self_attr": 459, "lsm_list_modules": 461, "lsm_set_self_attr": 460,
    "madvise": 233, "map_shadow_stack": 453, "mbind": 235, "membarrier": 283,
    "memfd_create": 279, "memfd_secret": 447, "migrate_pages": 238, "mincore": 232,
    "mkdirat": 34, "mknodat": 33, "mlock": 228, "mlock2": 284, "mlockall": 230, "mmap": 222,
    "mount": 40, "mount_setattr": 442, "move_mount": 429, "move_pages": 239,
    "mprotect": 226, "mq_getsetattr": 185, "mq_notify": 184, "mq_open": 180,
    "mq_timedreceive": 183, "mq_timedreceive_time64": 419, "mq_timedsend": 182,
    "mq_timedsend_time64": 418, "mq_unlink": 181, "mremap": 216, "mseal": 462,
    "msgctl": 187, "msgget": 186, "msgrcv": 188, "msgsnd": 189, "msync": 227,
    "munlock": 229, "munlockall": 231, "munmap": 215, "name_to_handle_at": 264,
    "nanosleep": 101, "newfstatat": 79, "nfsservctl": 42, "open_by_handle_at": 265,
    "open_tree": 428, "openat": 56, "openat2": 437, "perf_event_open": 241,
    "personality": 92, "pidfd_getfd": 438, "pidfd_open": 434, "pidfd_send_signal": 424,
    "pipe2": 59, "pivot_root": 41, "pkey_alloc": 289, "pkey_free": 290,
    "pkey_mprotect": 288, "ppoll": 73, "ppoll_time64": 414, "prctl": 167, "pread64": 67,
    "preadv": 69, "preadv2": 286, "prlimit64": 261, "process_madvise": 440,
    "process_mrelease": 448, "process_vm_readv": 270, "process_vm_writev": 271,
    "pselect6": 72, "pselect6_time64": 413, "ptrace": 117, "pwrite64": 68, "pwritev": 70,
    "pwritev2": 287, "quotactl": 60, "quotactl_fd": 443, "read": 63, "readahead": 213,
    "readlinkat": 78, "readv": 65, "reboot": 142, "recvfrom": 207, "recvmmsg": 243,
    "recvmmsg_time64": 417, "recvmsg": 212, "remap_file_pages": 234, "removexattr": 14,
    "removexattrat": 466, "renameat": 38, "renameat2": 276, "request_key": 218,
    "restart_syscall": 128, "rseq": 293, "rt_sigaction": 134, "rt_sigpending": 136,
    "rt_sigprocmask": 135, "rt_sigqueueinfo": 138, "rt_sigreturn": 139,
    "rt_sigsuspend": 133, "rt_sigtimedwait": 137, "rt_sigtimedwait_time64": 421,
    "rt_tgsigqueueinfo": 240, "sched_get_priority_max": 125, "sched_get_priority_min": 126,
    "sched_getaffinity": 123, "sched_getattr": 275, "sched_getparam": 121,
    "sched_getscheduler": 120, "sched_rr_get_interval": 127,
    "sched_rr_get_interval_time64": 423, "sched_setaffinity": 122, "sched_setattr": 274,
    "sched_setparam": 118, "sched_setscheduler": 119, "sched_yield": 124, "seccomp": 277,
    "semctl": 191, "semget": 190, "semop": 193, "semtimedop": 192, "semtimedop_time64": 420,
    "sendfile": 71, "sendmmsg": 269, "sendmsg": 211, "sendto": 206, "set_mempolicy": 237,
    "set_mempolicy_home_node": 450, "set_robust_list": 99, "set_tid_address": 96,
    "setdomainname": 162, "setfsgid": 152, "setfsuid": 151, "setgid": 144, "setgroups": 159,
    "sethostname": 161, "setitimer": 103, "setns": 268, "setpgid": 154, "setpriority": 140,
    "setregid": 143, "setresgid": 149, "setresuid": 147, "setreuid": 145, "setrlimit": 164,
    "setsid": 157, "setsockopt": 208, "settimeofday": 170, "setuid": 146, "setxattr": 5,
    "setxattrat": 463, "shmat": 196, "shmctl": 195, "shmdt": 197, "shmget": 194,
    "shutdown": 210, "sigaltstack": 132, "signalfd4": 74, "socket": 198, "socketpair": 199,
    "splice": 76, "statfs": 43, "statmount": 457, "statx": 291, "swapoff": 225,
    "swapon": 224, "symlinkat": 36, "sync": 81, "sync_file_range": 84,
    "syncfs": 267, "sysinfo": 179, "syslog": 116, "tee": 77,
    "tgkill": 131, "timer_create": 107, "timer_delete": 111, "timer_getoverrun": 109,
    "timer_gettime": 108, "timer_gettime64": 408, "timer_settime": 110,
    "timer_settime64": 409, "timerfd_create": 85, "timerfd_gettime": 87,
    "timerfd_gettime64": 410, "timerfd_settime": 86, "timerfd_settime64": 411, "times": 153,
    "tkill": 130, "truncate": 45, "umask": 166, "umount2": 39, "uname": 160, "unlinkat": 35,
    "unshare": 97, "userfaultfd": 282, "utimensat": 88, "utimensat_time64": 412,
    "vhangup": 58, "vmsplice": 75, "wait4": 260, "waitid": 95, "write": 64, "writev": 66,
}

_ARCHES = {
    "x86_64": (0xC000003E, _X86_64, 0x40000000),  # AUDIT_ARCH_X86_64; x32 syscall bit
    "aarch64": (0xC00000B7, _AARCH64, None),  # AUDIT_ARCH_AARCH64
}
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME
CLONE_NEW_ANY = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 \
    | 0x20000000 | 0x40000000 | 0x00000080

_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _ERRNO, USER_NOTIF = 0x7FFF0000, 0x00050000, 0x7FC00000  # SECCOMP_RET_*
_NR, _ARCH, _ARG0_LO, _ARG1_LO, _ARG2_LO = 0, 4, 16, 24, 32  # in struct seccomp_data (LE)
# Calls first in the chain: the interpreter's most frequent (a shorter walk per call).
_HOT = ("read", "write", "futex", "newfstatat", "fstat", "lseek", "mmap", "munmap", "brk",
        "openat", "close", "getdents64", "rt_sigaction", "clock_gettime", "pselect6",
        "recvmsg", "sendto", "ioctl", "mprotect")


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _ret(action: int) -> bytes:
    return _ins(_RET, action)


def _one_of(values: tuple[int, ...], yes: int, no: int) -> list[bytes]:
    """The loaded word is one of ``values`` -> ``yes``, else ``no`` (both RETs)."""
    out = []
    for i, value in enumerate(values):
        out.append(_ins(_JEQ, value, len(values) - i, 0))  # true: jump to the yes RET
    return [*out, _ret(no), _ret(yes)]


def program(machine: str | None = None, *, denied: tuple[str, ...] = DENIED,
            allowed: dict[str, tuple[str, ...]] | None = None, notify: bool = False,
            sealed: bool = False) -> bytes | None:
    """The filter as ``struct sock_filter[]`` bytes, or ``None`` for an unknown machine.

    ``notify``: every refusal below (but another ABI's calls and ``clone3``) is
    ``SECCOMP_RET_USER_NOTIF`` instead of its errno, and ``seccomp()`` is allowed (the
    trusted child loads the sealed copy with it). ``sealed``: ``seccomp()`` refused."""
    arch = _ARCHES.get(machine or platform.machine())
    if arch is None:
        return None
    audit, numbers, abi_bit = arch
    allowed = ALLOWED if allowed is None else allowed
    names = [n for group in allowed.values() for n in group]
    if notify and not sealed:
        names.append("seccomp")
    order = [n for n in _HOT if n in names] + [n for n in names if n not in _HOT]
    eperm, enosys = _ERRNO | errno.EPERM, _ERRNO | errno.ENOSYS

    def refuse(code: int) -> int:
        return USER_NOTIF if notify else _ERRNO | code

    out = [_ins(_LD_W_ABS, _ARCH), _ins(_JEQ, audit, 1, 0), _ret(eperm),
           _ins(_LD_W_ABS, _NR)]
    if abi_bit is not None:
        out += [_ins(_JGE, abi_bit, 0, 1), _ret(eperm)]
    if sealed:
        out += [_ins(_JEQ, numbers["seccomp"], 0, 1), _ret(eperm)]
    # Each call: "JEQ nr (else skip the next); RET" -- no jump is ever long.
    for name in dict.fromkeys(order):
        if name in numbers and name not in denied:
            out += [_ins(_JEQ, numbers[name], 0, 1), _ret(_ALLOW)]
    for name in sorted(set(denied)):
        if name in numbers:
            out += [_ins(_JEQ, numbers[name], 0, 1), _ret(refuse(errno.EPERM))]
    # clone: allowed without CLONE_NEW*; clone3 -> ENOSYS (the C library falls back)
    out += [_ins(_JEQ, numbers["clone3"], 0, 1), _ret(enosys)]
    out += [_ins(_JEQ, numbers["clone"], 0, 4), _ins(_LD_W_ABS, _ARG0_LO),
            _ins(_JSET, CLONE_NEW_ANY, 0, 1), _ret(refuse(errno.EPERM)), _ret(_ALLOW)]
    for name in ("socket", "socketpair"):  # the family is the first argument
        block = [_ins(_LD_W_ABS, _ARG0_LO),
                 *_one_of(SOCKET_FAMILIES, _ALLOW, refuse(errno.EAFNOSUPPORT))]
        out += [_ins(_JEQ, numbers[name], 0, len(block)), *block]
        out.append(_ins(_LD_W_ABS, _NR))  # reload the number for the next test
    block = [_ins(_LD_W_ABS, _ARG1_LO), *_one_of(FCNTL_REFUSED, refuse(errno.EPERM), _ALLOW)]
    out += [_ins(_JEQ, numbers["fcntl"], 0, len(block)), *block]
    block = [_ins(_LD_W_ABS, _ARG2_LO),
             *_one_of(MADVISE_ALLOWED, _ALLOW, refuse(errno.EPERM))]
    if len(block) > 255:
        raise ValueError("seccomp filter: the madvise list is too long for 8-bit jumps")
    out += [_ins(_JEQ, numbers["madvise"], 0, len(block)), *block]
    out.append(_ret(refuse(errno.ENOSYS)))  # everything else
    return b"".join(out)


def run_filter(prog: bytes, data: bytes) -> int:
    """The action ``prog`` returns for ``data`` (a ``struct seccomp_data``): classic BPF,
    the few instructions :func:`program` emits."""
    code = _decoded(prog)
    acc, pc = 0, 0
    while True:  # every jump is forward: the walk ends
        op, jt, jf, k = code[pc]
        if op == _LD_W_ABS:
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif op == _JEQ:
            pc += 1 + (jt if acc == k else jf)
        elif op == _JGE:
            pc += 1 + (jt if acc >= k else jf)
        elif op == _JSET:
            pc += 1 + (jt if acc & k else jf)
        elif op == _RET:
            return k
        else:
            raise ValueError(f"seccomp filter: unexpected opcode {op:#x}")


@functools.lru_cache(maxsize=8)
def _decoded(prog: bytes) -> tuple[tuple[int, int, int, int], ...]:
    """The program's instructions, unpacked once (the harness runs it per refused call)."""
    return tuple(struct.iter_unpack("=HBBI", prog))


_SECCOMP_DATA = struct.Struct("=iIQ6Q")  # nr, arch, instruction pointer, args
_FAMILIES = {2: "AF_INET", 3: "AF_AX25", 4: "AF_IPX", 5: "AF_APPLETALK", 9: "AF_X25",
             10: "AF_INET6", 16: "AF_NETLINK", 17: "AF_PACKET", 29: "AF_CAN",
             31: "AF_BLUETOOTH", 38: "AF_ALG", 40: "AF_VSOCK", 44: "AF_XDP"}
_FCNTL = {1031: "F_SETPIPE_SZ", 1026: "F_NOTIFY"}


def errno_for(data: bytes, machine: str | None = None) -> int:
    """The errno the plain program (``notify=False``) answers for this call."""
    action = run_filter(_plain(machine or platform.machine()), data)
    return action & 0xFFFF if action & 0xFFFF0000 == _ERRNO else errno.ENOSYS


def refusal(data: bytes, machine: str | None = None) -> str:
    """A refused call as the verdict names it: ``ptrace``, ``socket(AF_INET)``,
    ``fcntl(F_SETPIPE_SZ)``, ``madvise(advice 3)``, ``clone(CLONE_NEW*)``, ``system call
    N`` (a number this module does not name)."""
    nr, _, _, *args = _SECCOMP_DATA.unpack_from(data)
    numbers = _ARCHES[machine or platform.machine()][1]
    name = next((n for n, v in numbers.items() if v == nr), None)
    if name is None:
        return f"system call {nr}"
    if name in ("socket", "socketpair"):
        family = args[0] & 0xFFFFFFFF
        return f"{name}({_FAMILIES.get(family, f'family {family}')})"
    if name == "fcntl":
        return f"fcntl({_FCNTL.get(args[1] & 0xFFFFFFFF, args[1] & 0xFFFFFFFF)})"
    if name == "madvise":
        return f"madvise(advice {args[2] & 0xFFFFFFFF})"
    if name == "clone":
        return "clone(CLONE_NEW*)"
    return name


@functools.cache
def _plain(machine: str) -> bytes:
    prog = program(machine)
    if prog is None:
        raise ValueError(f"no seccomp filter for {machine}")
    return prog


def number(name: str, machine: str | None = None) -> int:
    """The system call's number on ``machine`` (this one by default)."""
    return _ARCHES[machine or platform.machine()][1][name]
