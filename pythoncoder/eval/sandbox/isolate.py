"""Isolation: which tool (bwrap, else unshare, else none) and its command line.

The Python installation a sandbox sees, the private compiled copy of the sandbox scripts
(``/sbx``), bwrap's options and the seccomp filter (``_seccomp.py``) passed through file
descriptors, unshare's prefix, the probes behind :func:`isolation`, and the one-time
warnings for a missing mechanism."""

from __future__ import annotations

import atexit
import functools
import importlib.util
import marshal
import os
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pythoncoder.eval.sandbox import cgroup, notify
from pythoncoder.eval.sandbox.config import (
    _SBX,
    _WORK,
    CHILD_SCRIPT,
    JUDGE_SCRIPT,
    SANDBOX_GID,
    SANDBOX_UID,
    WIRE_SCRIPT,
    SandboxConfig,
)


def _python_roots(python: str) -> list[str]:
    """The Python installation to show in the sandbox: the base one (``-I -S`` never uses
    a virtualenv, so its directory, often under ``/tmp`` or a home, stays hidden)."""
    real = os.path.realpath(python)
    roots = {os.path.realpath(sys.base_prefix)}
    if not any(real.startswith(r + os.sep) for r in roots):
        roots.add(os.path.dirname(real))
    return sorted(roots)


@functools.cache
def _script_dir(python: str) -> str:
    """A private, world-readable copy of the three sandbox scripts, each also compiled
    to a ``.pyc`` when ``python`` is this interpreter (a sandbox then runs bytecode and
    skips compiling the scripts: several ms of CPU per sample). Removed at exit."""
    folder = tempfile.mkdtemp(prefix="pythoncoder-scripts-")
    atexit.register(shutil.rmtree, folder, True)
    os.chmod(folder, 0o755)
    compiled = os.path.realpath(python) == os.path.realpath(sys.executable)
    for src in (CHILD_SCRIPT, JUDGE_SCRIPT, WIRE_SCRIPT):
        name = os.path.basename(src)
        data = Path(src).read_bytes()
        Path(folder, name).write_bytes(data)
        if compiled:  # header: magic + 12 bytes that running a .pyc directly ignores
            code = compile(data, f"{_SBX}/{name}", "exec", dont_inherit=True)
            Path(folder, name + "c").write_bytes(
                importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code))
        for written in Path(folder).iterdir():
            written.chmod(0o644)
    # The interpreter as the sandbox starts it: ``/sbx/python``, so that no command line
    # in the sandbox (bwrap's own is its PID 1's) names a host path.
    os.symlink(os.path.realpath(python), os.path.join(folder, "python"))
    return folder


def _script_files(python: str) -> dict[str, str]:
    """``{name in /sbx: host path}``: the scripts as the sandbox runs them (their
    bytecode where compiled, else their source)."""
    folder = _script_dir(python)
    files = {}
    for src in (CHILD_SCRIPT, JUDGE_SCRIPT, WIRE_SCRIPT):
        name = os.path.basename(src)
        if os.path.exists(os.path.join(folder, name + "c")):
            name += "c"
        files[name] = os.path.join(folder, name)
    return files


def _script(python: str, kind: str, name: str) -> str:
    """Path of script ``name`` as the sandboxed interpreter sees it."""
    folder = _script_dir(python)
    if os.path.exists(os.path.join(folder, name + "c")):
        name += "c"
    return f"{_SBX}/{name}" if kind == "bwrap" else os.path.join(folder, name)


@functools.cache
def _bwrap_base(python: str, unprivileged: bool) -> tuple[str, ...]:
    """bwrap's options (passed through ``--args FD``, never on its command line)."""
    args = ["--die-with-parent", "--new-session",
            "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try"]
    if unprivileged:
        args += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID),
                 "--disable-userns"]
    binds, links = [], []
    for lib in ("/usr/lib", "/usr/lib64", "/usr/lib32"):
        if os.path.isdir(lib) and not os.path.islink(lib):
            binds.append(lib)
    for top in ("/lib", "/lib64", "/lib32"):
        if os.path.islink(top):
            links += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            binds.append(top)
    roots = _python_roots(python)
    # bwrap makes missing parents 0700 (root's): make them traversable for uid 65534.
    parents = {str(q) for path in [*roots, _SBX, *binds] for q in Path(path).parents
               if str(q) != "/"}
    for parent in sorted(parents | {_SBX}, key=lambda q: q.count("/")):
        args += ["--perms", "0755", "--dir", parent]
    for path in binds:
        args += ["--ro-bind", path, path]
    args += links
    for root in roots:
        args += ["--ro-bind", root, root]
    site = {sysconfig.get_paths(vars={"base": r, "platbase": r})[k]
            for r in roots for k in ("purelib", "platlib")}
    # Installed packages elsewhere under the bound library dirs (Debian's dist-packages):
    # hidden too, so that no installed benchmark data (tests, solutions) can be read.
    site |= {str(p) for lib in binds for p in Path(lib).glob("python3*/*-packages")}
    for path in sorted(p for p in site if os.path.isdir(p)):
        args += ["--tmpfs", path]  # empty, root-owned 0755: unwritable for uid 65534
    # The scripts (a copy of this package's, see _script_dir) appear in /sbx as files of
    # bwrap's own tmpfs (--ro-bind-data, added by _bwrap_popen): a bind of the copy
    # would name its host folder in /proc/self/mountinfo.
    args += ["--symlink", os.path.realpath(python), f"{_SBX}/python"]
    args += ["--proc", "/proc", "--dev", "/dev"]
    # Host-wide state /proc shows whatever the namespaces: unreadable inside.
    for path in HIDDEN_PROC_DIRS:
        if os.path.isdir(path):
            args += ["--tmpfs", path]  # empty, root-owned
    for path in HIDDEN_PROC_FILES:
        if os.path.exists(path):
            args += ["--ro-bind", "/dev/null", path]  # reads as empty
    return tuple(args)


# /proc files and folders that show the host's, not the sandbox's, state to any uid:
# the host's counters (load, uptime, memory, CPU, I/O, interrupts, page allocator,
# pressure, locks held by every process, cgroup and key accounting), its kernel command
# line, its CPUs and disks, and its tunables and identity (/proc/sys: boot id, dentry and
# file counts, limits). Files only root may read (slabinfo, kpage*, timer_list...) stay:
# the sample runs as uid 65534. Each entry is one mount per sandbox (~0.2 ms).
HIDDEN_PROC_FILES = (
    "/proc/keys", "/proc/key-users", "/proc/loadavg", "/proc/uptime", "/proc/stat",
    "/proc/meminfo", "/proc/vmstat", "/proc/zoneinfo", "/proc/buddyinfo",
    "/proc/diskstats", "/proc/interrupts", "/proc/softirqs", "/proc/locks", "/proc/swaps",
    "/proc/partitions", "/proc/cmdline", "/proc/cpuinfo", "/proc/cgroups",
)
HIDDEN_PROC_DIRS = ("/proc/sys", "/proc/pressure")


@functools.cache
def _seccomp_program(notify: bool = False, sealed: bool = False) -> bytes | None:
    """The filter bwrap loads (``notify``: the candidate's, whose refusals reach the
    harness's listener once the child loads the ``sealed`` copy; else the judge's)."""
    from pythoncoder.eval.sandbox import _seccomp

    return _seccomp.program(notify=notify, sealed=sealed)


def _pipe_with(data: bytes) -> int:
    """The read end of a pipe holding ``data`` (then EOF): read once, never rewound."""
    r, w = os.pipe()
    try:
        if len(data) > 60000:  # a pipe buffer holds 64 KiB: the write must not block
            raise ValueError("sandbox options too long")
        os.write(w, data)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    return r


def _bwrap_popen(options: Sequence[str], command: Sequence[str], seccomp: bool,
                 pass_fds: Sequence[int] = (), *, python: str | None = None,
                 prefix: Sequence[str] = (), notify: bool = False,
                 **kwargs: Any) -> subprocess.Popen:
    """Start ``command`` in bwrap: options through ``--args FD`` and the seccomp filter
    through ``--seccomp FD``, so bwrap's command line (what ``/proc/1/cmdline`` shows
    inside) is ``bwrap --args N [--seccomp M] /sbx/python ...``, no host path; the
    scripts of ``python`` (its private copy) reach /sbx as bind-data from descriptors.
    ``prefix`` (a memory cgroup's, ``cgroup.Group.prefix``) runs first and execs bwrap."""
    fds = []
    bwrap = shutil.which("bwrap")
    try:
        # the scripts as files of bwrap's tmpfs, read from descriptors (no host path)
        scripts = []
        for name, path in _script_files(python or sys.executable).items():
            fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
            scripts += ["--perms", "0644", "--ro-bind-data", str(fds[-1]), f"{_SBX}/{name}"]
        fds.insert(0, _pipe_with(b"".join(os.fsencode(a) + b"\0"
                                          for a in (*options, *scripts))))
        argv = ["bwrap", "--args", str(fds[0])]
        if prefix:  # exec'd by the prefix through PATH: by name only if PATH finds this one
            path = (kwargs.get("env") or os.environ).get("PATH", "")
            if shutil.which("bwrap", path=path) != bwrap:
                argv[0] = bwrap
        program = _seccomp_program(notify) if seccomp else None
        if program is not None:
            fds.append(_pipe_with(program))
            argv += ["--seccomp", str(fds[-1])]
        return subprocess.Popen([*prefix, *argv, *command],
                                executable=prefix[0] if prefix else bwrap,
                                pass_fds=(*pass_fds, *fds), **kwargs)
    finally:
        for fd in fds:
            os.close(fd)


def _sbx_python(python: str, kind: str) -> str:
    _script_dir(python)
    return f"{_SBX}/python" if kind == "bwrap" else python


# How the candidate and the judge interpreters start: ``-I`` (isolated) less its ``-E``, so
# that PYTHONHASHSEED is read: ``-s`` (no user site) and ``-P`` (no script folder on
# sys.path), ``-S`` (no site), ``-B`` (no .pyc written). Safe because each sandbox gets a
# complete environment of the harness's making (``_Candidate``, ``_Judge``: PATH, the
# locale, HOME/TMPDIR and ``sandbox_env``), which bwrap, unshare and the cgroup's
# ``sh -c`` prefix pass on as it is: no other PYTHON* variable reaches the interpreter.
# Three arguments, as ``-I -S -B`` were: ``_prlimit`` finds the script at argv[4].
PYTHON_FLAGS = ("-sP", "-S", "-B")
# One seed per harness process, shared by every candidate and judge it starts, so that
# ``hash()`` of a str agrees across them: the judge compares an answer too large to cross
# by a digest over its items' hashes (``_wire.digest``). 0 would turn hashing's
# randomization off: 1 .. 2**32 - 1. No secret from a sample (its own environment): a
# sample could collide the str keys of a dict it answers, as it always could with int
# keys, and slow the judge's decoding only within the part's time budget.
HASH_SEED = str(1 + secrets.randbelow((1 << 32) - 1))


def sandbox_env(**variables: str) -> dict[str, str]:
    """A sandboxed interpreter's whole environment: ``variables``, PATH, the locale and
    the shared hash seed."""
    return {"PATH": "/usr/bin:/bin", **variables, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "PYTHONHASHSEED": HASH_SEED}


@functools.cache
def _probe(kind: str, python: str) -> bool:
    try:
        if kind == "bwrap":
            if shutil.which("bwrap") is None:
                return False
            proc = _bwrap_popen(
                [*_bwrap_base(python, os.geteuid() != 0), "--perms", "1777", "--tmpfs", _WORK,
                 "--chdir", _WORK], [_sbx_python(python, kind), "-I", "-S", "-c", "pass"],
                seccomp=True, python=python, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
        else:
            if shutil.which("unshare") is None:
                return False
            proc = subprocess.Popen([*_unshare_prefix(), python, "-I", "-S", "-c", "pass"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            return proc.wait(timeout=30) == 0
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return False
    except (OSError, subprocess.SubprocessError, ValueError):
        return False


def _unshare_prefix() -> list[str]:
    args = [shutil.which("unshare") or "unshare", "--fork", "--pid", "--mount-proc", "--net",
            "--ipc", "--uts", "--kill-child"]
    if os.geteuid() != 0:
        args += ["--user", "--map-root-user"]
    return args


_WARNED: set[str] = set()


def isolation(config: SandboxConfig | None = None) -> str:
    """The isolation in use: ``bwrap``, ``unshare`` or ``none`` (warns once if not bwrap)."""
    config = config or SandboxConfig()
    if config.isolation != "auto":
        return config.isolation
    for kind in ("bwrap", "unshare"):
        if _probe(kind, config.python):
            break
    else:
        kind = "none"
    if kind != "bwrap" and kind not in _WARNED:
        _WARNED.add(kind)
        remains = {
            "unshare": "PID, network, IPC and UTS namespaces, the uid drop to 65534 when "
                       "root, and the rlimits; the host file system stays visible (reads "
                       "allowed, writes limited by file permissions); no seccomp filter "
                       "(keyring, user namespaces, shared memory open) and no /work caps",
            "none": "only the uid drop to 65534 when root, the rlimits and the process-group "
                    "kill; the sample sees the host file system and network; no seccomp "
                    "filter and no /work caps",
        }[kind]
        if os.geteuid() == 0 and not _others_can_read(sysconfig.get_paths()["stdlib"]):
            remains += ("; and the Python installation is not readable by uid 65534 (a 0700 "
                        "parent such as /root), so samples' imports fail after the uid drop")
        warnings.warn(
            f"pythoncoder eval sandbox: bubblewrap is not usable here (apt-get install "
            f"bubblewrap); isolation is '{kind}': {remains}.", RuntimeWarning, stacklevel=2)
    return kind


def _missing_mechanisms(config: SandboxConfig, kind: str) -> list[str]:
    """What this host's bwrap sandbox lacks of the full design, and what that means."""
    if kind != "bwrap":
        return []  # the isolation warning says it all
    missing = []
    if not config.seccomp or _seccomp_program() is None:
        missing.append(
            f"no seccomp filter ({'disabled' if not config.seccomp else os.uname().machine}): "
            "samples may make any system call: the kernel keyring (state that outlives "
            "them), user namespaces when the harness is root, SysV/POSIX shared memory "
            "outside the memory limit, sockets of every family, page-cache probes and sync")
    elif not notify.supported():
        missing.append(
            "refused system calls are not named in verdicts (the kernel has no seccomp "
            "notifications, Linux 5.0): they are still refused, with the same errno")
    if os.geteuid() != 0:
        missing.append(
            "no inode cap on /work (bubblewrap cannot set nr_inodes; the harness mounts it "
            "only when root): a sample can create empty files, which its byte cap does not "
            "count, until its time runs out (about 1 KiB of kernel memory each)")
    return missing


def _missing_memory_cgroup(config: SandboxConfig) -> list[str]:
    """The memory cgroup, in every isolation mode: what its absence means."""
    if cgroup.mode(config) != "none":
        return []
    return [f"no memory cgroup ({cgroup.why_none(config)}): kernel memory that no rlimit "
            "counts (directory-entry cache, pipe and socket buffers, pending signals) is "
            "unbounded for a sample and can outlive it; memory is capped by rlimits only "
            "(cgroup v2 with a delegated subtree, or v1 as root, gives the cap)"]


def _warn_missing(config: SandboxConfig, kind: str) -> None:
    for text in [*_missing_mechanisms(config, kind), *_missing_memory_cgroup(config)]:
        if text not in _WARNED:
            _WARNED.add(text)
            warnings.warn(f"pythoncoder eval sandbox: {text}.", RuntimeWarning, stacklevel=3)


def _others_can_read(path: str) -> bool:
    """Whether a process of another uid can reach and list ``path`` (mode bits only)."""
    p = Path(path).resolve()
    try:
        if not all(q.stat().st_mode & 0o001 for q in p.parents):
            return False
        return p.stat().st_mode & 0o005 == 0o005
    except OSError:
        return False
