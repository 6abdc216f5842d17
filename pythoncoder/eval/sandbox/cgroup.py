"""Memory cgroups: every sandboxed process tree (a candidate, a judge) in a memory cgroup
of its own, kernel memory included, so that memory no rlimit counts (the directory-entry
cache that ``stat()`` of many non-existent names grows, pipe buffers, pending signals,
tmpfs pages; measured: dentries and pipe buffers) is charged to the sample, capped, and
freed when it ends.

Modes (:func:`mode`):

* ``v2``: the harness's own cgroup v2 directory is writable and offers ``memory``; each
  sandbox gets ``<own>/pythoncoder-<pid>-<n>`` with ``memory.max``, ``memory.swap.max=0``
  and ``memory.oom.group=1``. A non-root v2 cgroup may not hold processes and hand
  controllers to children at once, so when ``+memory`` cannot be enabled the harness moves
  itself into a leaf ``<own>/pythoncoder-harness-<pid>`` first (and back at exit);
* ``v1``: the memory controller's v1 hierarchy is mounted and the harness's own memory
  cgroup is writable (root): ``memory.limit_in_bytes`` and ``memory.memsw.limit_in_bytes``.
  On this kernel's v1 ``memory.usage_in_bytes`` includes the kernel memory allocated with
  ``__GFP_ACCOUNT`` (dentries, pipe buffers, ...): the limit caps both;
* ``none``: neither; the harness warns once (``isolate._missing_mechanisms``) and the
  sample has its rlimits only.

A sandbox is started inside its group before any of its code runs: ``/bin/sh`` writes its
own pid into ``cgroup.procs`` and then execs bwrap (:func:`Group.prefix`), so every
process bwrap forks is born in the group (a v1 move of one pid would not move children
already forked). On removal every process left in the group is killed, the group's
memory reclaimed (v1 ``memory.force_empty``, v2 ``memory.reclaim``: otherwise the kernel
memory would move to the parent, i.e. stay on the host), then the directory removed; an
``atexit`` hook removes any group a harness error left behind.
"""

from __future__ import annotations

import atexit
import errno
import functools
import itertools
import os
import signal
import threading
import time
from pathlib import Path

from pythoncoder.eval.sandbox.config import SandboxConfig

HEADROOM = 256 * 1024**2  # kernel memory beyond the address space and the /work tmpfs
_PREFIX = "pythoncoder-"
_SCRIPT = 'echo $$ >"$0" || exit 125; exec "$@"'  # exit 125: the sandbox never starts


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/<pid>/cgroup`` as {controller: path}; the v2 entry (``0::/x``) is ``""``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            out[""] = path
        for name in controllers.split(","):
            if name:
                out[name.removeprefix("name=")] = path
    return out


def parse_mountinfo(text: str) -> list[tuple[str, str, str, set[str]]]:
    """Cgroup mounts of ``/proc/self/mountinfo``: (root, mount point, type, options)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        after = line.split(" - ", 1)[1].split()
        if len(after) < 3 or after[0] not in ("cgroup", "cgroup2"):
            continue
        point = fields[4].replace("\\040", " ")
        mounts.append((fields[3], point, after[0], set(after[2].split(","))))
    return mounts


def _own_dir(root: str, point: str, path: str) -> str:
    """The directory of cgroup ``path`` under a mount whose root is ``root``."""
    if root != "/" and (path == root or path.startswith(root.rstrip("/") + "/")):
        path = path[len(root.rstrip("/")):]  # a mount of a sub-tree (a container's)
    return os.path.join(point, path.lstrip("/")).rstrip("/") or "/"


def detect(proc_cgroup: str, mountinfo: str, writable=None) -> tuple[str, str, str]:
    """(mode, own directory, why not) from the two files' text: ``v2`` when the harness's
    cgroup v2 directory offers ``memory`` and is writable, else ``v1`` when the v1 memory
    controller's directory of the harness is writable, else ``none`` (and the reason)."""
    writable = writable or (lambda p: os.access(p, os.W_OK))
    groups, mounts = parse_proc_cgroup(proc_cgroup), parse_mountinfo(mountinfo)
    reasons = []
    for root, point, kind, _ in mounts:
        if kind != "cgroup2" or "" not in groups:
            continue
        own = _own_dir(root, point, groups[""])
        try:
            offered = Path(own, "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if "memory" not in offered:
            reasons.append("cgroup v2 has no memory controller here")
        elif not writable(own):
            reasons.append(f"cgroup v2 directory {own} not writable (no delegation)")
        else:
            return "v2", own, ""
    for root, point, kind, options in mounts:
        if kind != "cgroup" or "memory" not in options or "memory" not in groups:
            continue
        own = _own_dir(root, point, groups["memory"])
        if not os.path.exists(os.path.join(own, "memory.limit_in_bytes")):
            reasons.append(f"no v1 memory cgroup at {own}")
        elif not writable(own):
            reasons.append(f"v1 memory cgroup {own} not writable (not root)")
        else:
            return "v1", own, ""
    return "none", "", "; ".join(reasons) or "no memory cgroup mounted"


@functools.cache
def _host() -> tuple[str, str, str]:
    try:
        return detect(Path("/proc/self/cgroup").read_text(),
                      Path("/proc/self/mountinfo").read_text())
    except OSError as e:
        return "none", "", f"cannot read /proc/self/cgroup: {e.strerror}"


_LOCK = threading.Lock()
_SETUP: dict[str, str | None] = {}  # own dir -> None (ready) or why it failed
_LIVE: set[str] = set()
_COUNTER = itertools.count()
_MOVED: list[tuple[str, str, bool]] = []  # v2: (own, leaf, whether we enabled +memory)


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _v2_ready(own: str) -> str | None:
    """Enable ``memory`` for the children of ``own`` (moving the harness into a leaf
    first when ``own`` holds it). None when ready, else why not."""
    control = os.path.join(own, "cgroup.subtree_control")
    if "memory" in Path(control).read_text().split():
        return None
    try:
        _write(control, "+memory")
        _MOVED.append((own, "", True))
        return None
    except OSError as e:
        if e.errno != errno.EBUSY:
            return f"cannot enable memory in {control}: {e.strerror}"
    leaf = os.path.join(own, f"{_PREFIX}harness-{os.getpid()}")
    try:
        os.makedirs(leaf, exist_ok=True)
        _write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
        _write(control, "+memory")
    except OSError as e:
        try:
            _write(os.path.join(own, "cgroup.procs"), str(os.getpid()))
            os.rmdir(leaf)
        except OSError:
            pass
        return (f"cannot enable memory in {control} (other processes share the "
                f"harness's cgroup?): {e.strerror}")
    _MOVED.append((own, leaf, True))
    return None


def mode(config: SandboxConfig | None = None) -> str:
    """The memory guarantee of this run: ``v2``, ``v1`` or ``none`` (rlimits only)."""
    return _state(config or SandboxConfig())[0]


def why_none(config: SandboxConfig | None = None) -> str:
    """Why :func:`mode` is ``none`` (empty otherwise)."""
    return _state(config or SandboxConfig())[2]


def _state(config: SandboxConfig) -> tuple[str, str, str]:
    if not config.memory_cgroup:
        return "none", "", "disabled (SandboxConfig.memory_cgroup=False)"
    kind, own, why = _host()
    if kind != "v2":
        return kind, own, why
    with _LOCK:
        if own not in _SETUP:
            try:
                _SETUP[own] = _v2_ready(own)
            except OSError as e:
                _SETUP[own] = f"cannot set up cgroup v2 at {own}: {e.strerror}"
        failed = _SETUP[own]
    return ("none", "", failed) if failed else (kind, own, why)


def limit_bytes(config: SandboxConfig) -> int:
    """The group's limit: ``cgroup_bytes``, else the address space, the /work tmpfs and
    :data:`HEADROOM` for kernel memory."""
    return config.cgroup_bytes or config.memory_bytes + config.work_bytes + HEADROOM


class Group:
    """One sandbox's memory cgroup (create it, start the sandbox through :meth:`prefix`,
    :meth:`remove` it after the sandbox is killed)."""

    def __init__(self, kind: str, own: str, limit: int) -> None:
        self.kind, self.limit = kind, limit
        self.path = os.path.join(own, f"{_PREFIX}{os.getpid()}-{next(_COUNTER)}")
        os.mkdir(self.path)
        with _LOCK:
            _LIVE.add(self.path)
        try:
            if kind == "v1":
                self._set("memory.limit_in_bytes", limit)
                if os.path.exists(self._file("memory.memsw.limit_in_bytes")):
                    self._set("memory.memsw.limit_in_bytes", limit)  # no swap beyond it
            else:
                self._set("memory.max", limit)
                for name, value in (("memory.swap.max", 0), ("memory.oom.group", 1)):
                    if os.path.exists(self._file(name)):
                        self._set(name, value)
        except BaseException:
            self.remove()
            raise

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _set(self, name: str, value: int) -> None:
        _write(self._file(name), str(value))

    def _read(self, name: str) -> int | None:
        try:
            text = Path(self._file(name)).read_text().split()
            return int(text[0]) if text and text[0] != "max" else None
        except (OSError, ValueError):
            return None

    def prefix(self) -> list[str]:
        """The command prefix that joins the group, then execs the rest of the line."""
        return ["/bin/sh", "-c", _SCRIPT, self._file("cgroup.procs")]

    def stats(self) -> dict[str, int | None]:
        """``usage``, ``peak``, ``kernel`` (bytes) and ``limit`` as the kernel counts them."""
        if self.kind == "v1":
            return {"usage": self._read("memory.usage_in_bytes"),
                    "peak": self._read("memory.max_usage_in_bytes"),
                    "kernel": self._read("memory.kmem.usage_in_bytes"),
                    "limit": self._read("memory.limit_in_bytes")}
        kernel = None
        try:
            for line in Path(self._file("memory.stat")).read_text().splitlines():
                if line.startswith("kernel "):
                    kernel = int(line.split()[1])
        except (OSError, ValueError):
            pass
        return {"usage": self._read("memory.current"), "peak": self._read("memory.peak"),
                "kernel": kernel, "limit": self._read("memory.max")}

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in Path(self._file("cgroup.procs")).read_text().split()]
        except (OSError, ValueError):
            return []

    def remove(self) -> None:
        """Kill what is left in the group, free its memory, remove it (idempotent)."""
        with _LOCK:
            if self.path not in _LIVE:
                return
        _remove(self.kind, self.path)


def _remove(kind: str, path: str, patience_s: float = 10.0) -> None:
    procs = os.path.join(path, "cgroup.procs")
    deadline, pause = time.monotonic() + patience_s, 0.0005
    while True:
        try:
            pids = [int(p) for p in Path(procs).read_text().split()]
        except FileNotFoundError:
            with _LOCK:
                _LIVE.discard(path)
            return
        except (OSError, ValueError):
            pids = []
        if not pids:
            try:  # free its memory here: else the kernel memory moves to the parent
                if kind == "v1":
                    _write(os.path.join(path, "memory.force_empty"), "0")
                elif os.path.exists(os.path.join(path, "memory.reclaim")):
                    _write(os.path.join(path, "memory.reclaim"), str(1 << 40))
            except OSError:
                pass  # v2 reclaim reports EAGAIN when it could not free it all
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(pause)  # a process is still exiting: not a busy loop
                pause = min(pause * 2, 0.01)
                continue
            with _LOCK:
                _LIVE.discard(path)
            return
        if kind == "v2" and os.path.exists(os.path.join(path, "cgroup.kill")):
            try:
                _write(os.path.join(path, "cgroup.kill"), "1")
            except OSError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if time.monotonic() > deadline:
            raise OSError(errno.EBUSY, f"processes survive in {path}: {pids}")
        time.sleep(pause)
        pause = min(pause * 2, 0.01)


def create(config: SandboxConfig) -> Group | None:
    """A fresh group for one sandbox, or None in mode ``none``."""
    kind, own, _ = _state(config)
    if kind == "none":
        return None
    return Group(kind, own, limit_bytes(config))


@atexit.register
def _cleanup() -> None:
    """Remove every group still there (a harness error), then undo a v2 move."""
    with _LOCK:
        left = list(_LIVE)
    kind = _host()[0]
    for path in left:
        try:
            _remove(kind, path, patience_s=2.0)
        except OSError:
            pass
    while _MOVED:
        own, leaf, enabled = _MOVED.pop()
        try:
            if enabled:
                _write(os.path.join(own, "cgroup.subtree_control"), "-memory")
            if leaf:
                _write(os.path.join(own, "cgroup.procs"), str(os.getpid()))
                os.rmdir(leaf)
        except OSError:
            pass
