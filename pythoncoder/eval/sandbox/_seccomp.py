"""The sandbox's seccomp filter: a classic-BPF program built here, loaded by bubblewrap.

``bwrap --seccomp FD`` installs it (``no_new_privs`` is set) right before it executes the
sandboxed interpreter, so it covers everything the candidate (and the judge) runs. Every
syscall not listed is allowed; the listed ones fail with ``EPERM`` (``clone3`` with
``ENOSYS``, so that the C library falls back to ``clone``, whose flags the filter can see).

Denied, and why (EVAL-04):

* kernel keyring -- ``add_key``, ``keyctl``, ``request_key``: keys of uid 65534 outlive the
  sandbox and are shared by every sample of every run (a channel from one sample to the next);
* new namespaces -- ``unshare``, ``setns``, and ``clone`` with any ``CLONE_NEW*`` flag: a
  new user namespace would give the sample capabilities over a fresh mount namespace (a
  tmpfs without the sandbox's size and inode limits) in every mode, root harness included;
* memory outside the address-space limit -- SysV shared memory (``shmget``, ``shmat``,
  ``shmctl``, ``shmdt``), SysV message queues and semaphores (``msgget``, ``msgsnd``,
  ``semget``), POSIX message queues (``mq_open``), ``memfd_create``, ``memfd_secret``:
  pages held there do not count against ``RLIMIT_AS`` (no memory cgroup is used);
* page-cache probing -- ``mincore``: which pages of a shared file are cached is host-wide
  state another sample can set;
* other processes and the kernel -- ``ptrace``, ``process_vm_readv``/``writev``, ``kcmp``,
  ``pidfd_getfd``, ``bpf``, ``perf_event_open``, ``userfaultfd``, ``io_uring_*``,
  ``fanotify_init``, ``open_by_handle_at``, ``name_to_handle_at``, ``personality``,
  ``syslog``, ``acct``, module and ``kexec`` loading, ``reboot``, ``swapon``/``swapoff``,
  clock setting, ``quotactl``, ``iopl``/``ioperm`` (x86), ``vhangup``, ``lookup_dcookie``;
* mount changes other than ``mount`` itself -- ``umount2``, ``pivot_root``, ``chroot`` and the
  new mount API (``open_tree``, ``move_mount``, ``fsopen``, ``fsconfig``, ``fsmount``,
  ``fspick``, ``mount_setattr``). ``mount`` stays allowed because a root harness's child
  mounts its inode-capped ``/work`` with it before dropping to uid 65534; after the drop
  it has no capability, and with no way to a new user namespace it cannot get one.
* syscalls of another ABI (i386 ``int 0x80``, x32) are refused as a whole.

Architectures: x86-64 and AArch64; elsewhere :func:`program` returns ``None`` and the
harness says once that no seccomp filter is in place.
"""

from __future__ import annotations

import errno
import platform
import struct

# Denied syscalls by name; numbers per architecture below.
DENIED = (
    "add_key", "keyctl", "request_key",
    "unshare", "setns",
    "shmget", "shmat", "shmctl", "shmdt", "msgget", "msgsnd", "semget", "mq_open",
    "memfd_create", "memfd_secret",
    "mincore",
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "bpf",
    "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "fanotify_init", "open_by_handle_at", "name_to_handle_at", "personality", "syslog", "acct",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "quotactl", "iopl", "ioperm", "vhangup", "lookup_dcookie",
    "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr",
)

_X86_64 = {
    "add_key": 248, "keyctl": 250, "request_key": 249, "unshare": 272, "setns": 308,
    "shmget": 29, "shmat": 30, "shmctl": 31, "shmdt": 67, "msgget": 68, "msgsnd": 69,
    "semget": 64, "mq_open": 240, "memfd_create": 319, "memfd_secret": 447, "mincore": 27,
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
    "pidfd_getfd": 438, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "fanotify_init": 300, "open_by_handle_at": 304, "name_to_handle_at": 303,
    "personality": 135, "syslog": 103, "acct": 163, "init_module": 175, "finit_module": 313,
    "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320, "reboot": 169,
    "swapon": 167, "swapoff": 168, "settimeofday": 164, "clock_settime": 227,
    "clock_adjtime": 305, "adjtimex": 159, "quotactl": 179, "iopl": 172, "ioperm": 173,
    "vhangup": 153, "lookup_dcookie": 212, "umount2": 166, "pivot_root": 155, "chroot": 161,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442,
    "clone": 56, "clone3": 435,
}
# AArch64 uses the generic table (asm-generic/unistd.h); it has no iopl/ioperm.
_AARCH64 = {
    "add_key": 217, "keyctl": 219, "request_key": 218, "unshare": 97, "setns": 268,
    "shmget": 194, "shmat": 196, "shmctl": 195, "shmdt": 197, "msgget": 186, "msgsnd": 189,
    "semget": 190, "mq_open": 180, "memfd_create": 279, "memfd_secret": 447, "mincore": 232,
    "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272,
    "pidfd_getfd": 438, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "fanotify_init": 262, "open_by_handle_at": 265, "name_to_handle_at": 264,
    "personality": 92, "syslog": 116, "acct": 89, "init_module": 105, "finit_module": 273,
    "delete_module": 106, "kexec_load": 104, "kexec_file_load": 294, "reboot": 142,
    "swapon": 224, "swapoff": 225, "settimeofday": 170, "clock_settime": 112,
    "clock_adjtime": 266, "adjtimex": 171, "quotactl": 60, "vhangup": 58,
    "lookup_dcookie": 18, "umount2": 39, "pivot_root": 41, "chroot": 51,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442,
    "clone": 220, "clone3": 435,
}
_ARCHES = {
    "x86_64": (0xC000003E, _X86_64, 0x40000000),  # AUDIT_ARCH_X86_64; x32 syscall bit
    "aarch64": (0xC00000B7, _AARCH64, None),  # AUDIT_ARCH_AARCH64
}
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME
CLONE_NEW_ANY = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 \
    | 0x20000000 | 0x40000000 | 0x00000080

_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _ERRNO = 0x7FFF0000, 0x00050000
_NR, _ARCH, _ARG0_LO = 0, 4, 16  # offsets in struct seccomp_data (little-endian args)


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program(machine: str | None = None, *, denied: tuple[str, ...] = DENIED) -> bytes | None:
    """The filter as ``struct sock_filter[]`` bytes, or ``None`` for an unknown machine."""
    arch = _ARCHES.get(machine or platform.machine())
    if arch is None:
        return None
    audit, numbers, abi_bit = arch
    nrs = sorted({numbers[name] for name in denied if name in numbers})
    # Layout: checks, then three return blocks at the end: [clone test] EPERM ENOSYS ALLOW.
    body: list[tuple[int, int, str | None, str | None]] = []  # (code, k, jt label, jf label)
    body.append((_LD_W_ABS, _ARCH, None, None))
    body.append((_JEQ, audit, None, "eperm"))
    body.append((_LD_W_ABS, _NR, None, None))
    if abi_bit is not None:
        body.append((_JGE, abi_bit, "eperm", None))
    for nr in nrs:
        body.append((_JEQ, nr, "eperm", None))
    body.append((_JEQ, numbers["clone3"], "enosys", None))
    body.append((_JEQ, numbers["clone"], None, "allow"))
    body.append((_LD_W_ABS, _ARG0_LO, None, None))
    body.append((_JSET, CLONE_NEW_ANY, "eperm", "allow"))
    labels = {"eperm": len(body), "enosys": len(body) + 1, "allow": len(body) + 2}
    out = []
    for i, (code, k, jt, jf) in enumerate(body):
        if code == _LD_W_ABS:
            out.append(_ins(code, k))
            continue
        t = labels[jt] - i - 1 if jt else 0
        f = labels[jf] - i - 1 if jf else 0
        if not (0 <= t < 256 and 0 <= f < 256):
            raise ValueError("seccomp filter too long for 8-bit jumps")
        out.append(_ins(code, k, t, f))
    out.append(_ins(_RET, _ERRNO | errno.EPERM))
    out.append(_ins(_RET, _ERRNO | errno.ENOSYS))
    out.append(_ins(_RET, _ALLOW))
    return b"".join(out)
