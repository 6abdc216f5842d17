"""Run untrusted Python in a kernel-enforced sandbox; decide the verdict outside it.

Isolation (EVAL-04). Each sample gets a fresh bubblewrap (``bwrap``) sandbox:

* new mount, PID, IPC, UTS, network (and, where the kernel allows, cgroup) namespaces; when
  the harness is not root, also a user namespace (``--unshare-user --disable-userns``);
* it runs as uid/gid 65534 with no capabilities and ``no_new_privs`` (bwrap sets it; when
  the harness is root, the child drops from root to 65534 before reading any candidate
  code, which clears every capability);
* the file-system view is the shared libraries (``/usr/lib``, ``/usr/lib64``), the base
  Python installation read-only (never a virtualenv; its ``site-packages`` and any
  ``dist-packages`` under the library dirs masked by empty root-owned tmpfs), the three
  sandbox scripts read-only (``/sbx``, a compiled private copy, with ``/sbx/python``
  linking to the interpreter), a private ``/proc`` (``/proc/keys`` and
  ``/proc/key-users``, host-wide, unreadable) and bwrap's minimal ``/dev``, and one
  writable directory, ``/work``: a tmpfs that vanishes with the namespace, capped in
  bytes and, when the harness is root, in inodes (the child mounts it with
  ``nr_inodes`` before dropping root; bwrap's own ``--size`` tmpfs cannot cap inodes).
  No host ``/tmp``, home, ``/etc``, ``/run`` or socket is visible;
* bwrap's options come through ``--args FD`` and the child's set-up through stdin, so no
  command line in the sandbox (``/proc/1/cmdline`` is bwrap's) names a host path;
* a seccomp filter (``_seccomp.py``, loaded by ``bwrap --seccomp FD``) denies the kernel
  keyring, new namespaces (so no user namespace in any mode, root harness included),
  memory outside ``RLIMIT_AS`` (SysV/POSIX shared memory, ``memfd``), ``mincore`` and
  the kernel's other attack surface (its docstring lists every call and why);
* ``--die-with-parent``, ``--new-session``; the sandbox's PID 1 takes every process of
  the sample with it when the harness kills the sandbox, so no daemon survives;
* rlimits: CPU seconds, address space, file size, processes (0: no fork), open files;
  set by the harness with ``prlimit`` on the waiting interpreter where the kernel allows
  (it must still be root, or the harness must hold ``CAP_SYS_RESOURCE``), else by the
  child itself, in both cases before any candidate code runs.

Without bwrap, ``unshare`` gives the namespaces (no file-system view, host work dir, no
seccomp filter), and with neither the sample only has the uid drop (when root) and the
rlimits; the harness warns once, saying which protection remains, and once per mechanism
a bwrap host lacks (the filter on an unknown architecture, the inode cap without root).
Before any sample, :func:`check_usable` runs a trivial correct program (it imports
``typing``, ``json``, ``math``) through the judge: a sandbox that cannot (an interpreter
unreadable after the uid drop, a broken bwrap) raises :class:`SandboxUnusable` instead of
scoring every sample as failed.

Verdict (EVAL-05). For a :class:`Job` with a judge spec the candidate never sees the
test: it runs the problem prompt plus completion and then serves calls. A trusted judge
(``_judge.py``; one long-lived process per worker, itself in a sandbox) runs the test
and calls the candidate over pipes, with only plain data crossing (``_wire``). With a
reference solution in the spec the calls are the test's calls traced against that
reference, all sent whatever the candidate answers and compared afterwards, so no
answer is revealed by being called again; the sample's clock restarts after the trace.
Samples start in a random order. A plain
source string (or a problem whose test passes non-plain values, reported by the judge as
``unsupported``) runs in the *weak* mode: the whole program in the sandbox, verdict
``PASS <nonce>`` from inside, labelled ``verdict == "in-sandbox"``.

Speed. Sandboxes are started one ahead per worker (the next one boots while the current
sample runs) and the judge is reused across samples, so a sample costs one bwrap and one
bare interpreter (``python -I -S -B``).

Robustness (EVAL-06). Nothing a sample does reaches the harness (separate PID namespace
and uid); every sample's outcome is caught and recorded; reasons are capped and
sanitized; candidate output is kept only in :class:`SandboxResult`, never in results rows.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import importlib.util
import json
import marshal
import math
import os
import queue
import random
import resource
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
CHILD_SCRIPT = str(_HERE / "_sandbox_child.py")
JUDGE_SCRIPT = str(_HERE / "_judge.py")
WIRE_SCRIPT = str(_HERE / "_wire.py")
PASSED, FAILED, TIMED_OUT = "passed", "failed", "timed out"
JUDGE, IN_SANDBOX = "judge", "in-sandbox"
SANDBOX_UID = SANDBOX_GID = 65534
REASON_CAP = 200
_READ_CHUNK = 1 << 16
_SBX = "/sbx"  # where the scripts appear inside a bwrap sandbox
_WORK = "/work"


@dataclasses.dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Limits for one sandboxed run.

    ``max_processes`` is the ``RLIMIT_NPROC`` value for uid 65534: 0 forbids ``fork``.
    ``isolation`` is ``"auto"`` (bwrap, else unshare, else none, with a warning),
    or one of ``"bwrap"``, ``"unshare"``, ``"none"`` to force it. ``work_bytes`` and
    ``work_inodes`` cap the sample's writable ``/work`` tmpfs (inodes: root harness).
    """

    timeout_s: float = 3.0
    memory_bytes: int = 2 * 1024**3
    file_size_bytes: int = 16 * 1024**2
    work_bytes: int = 64 * 1024**2
    work_inodes: int = 4096
    max_processes: int = 0
    max_open_files: int = 64
    output_cap_bytes: int = 64 * 1024
    isolate_network: bool = True
    isolation: str = "auto"
    python: str = sys.executable
    seccomp: bool = True  # False only to show, in tests, what the filter stops

    @property
    def cpu_seconds(self) -> int:
        return math.ceil(self.timeout_s) + 1


@dataclasses.dataclass(frozen=True, slots=True)
class SandboxResult:
    """How one program ended: ``status`` is ``passed``, ``failed`` or ``timed out``.

    ``verdict`` says who decided: ``judge`` (outside the candidate) or ``in-sandbox``.
    """

    status: str
    reason: str
    returncode: int | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    duration_s: float
    pid: int  # the sandbox's process (group) id on the host; gone once the result exists
    verdict: str = IN_SANDBOX

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def result(self) -> str:
        """``passed``, ``failed: <reason>`` or ``timed out``."""
        return f"{FAILED}: {self.reason}" if self.status == FAILED else self.status


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """A sample: ``source`` runs in the candidate sandbox.

    With ``judge`` (``prelude``, ``test``, ``names``, ``entry``) the candidate's source is
    only the solution, and the judge runs ``prelude`` + ``test`` (+ ``check(entry)``),
    calling the candidate's functions ``names`` across the process boundary. Without it
    the source is the whole program and the verdict is the weak in-sandbox one;
    ``fallback`` is that whole program for when the judge finds the test unsupported.
    """

    source: str
    judge: Mapping[str, Any] | None = None
    fallback: str | None = None


def sanitize(text: str, cap: int = REASON_CAP) -> str:
    """Printable ASCII only, one line, at most ``cap`` characters."""
    return "".join(c if " " <= c <= "~" else "?" for c in str(text))[:cap]


# ---------------------------------------------------------------------------------------
# Isolation: which tool, and the command line.


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
    # The scripts (a copy of this package's, see _script_dir) as /sbx. One bind, not
    # three: each --ro-bind makes bwrap re-read the mount table (CPU per sample).
    args += ["--ro-bind", _script_dir(python), _SBX]
    args += ["--proc", "/proc", "--dev", "/dev"]
    # Host-wide key accounting (every uid's key counts): unreadable inside (nodev binds).
    for path in ("/proc/keys", "/proc/key-users"):
        if os.path.exists(path):
            args += ["--ro-bind", "/dev/null", path]
    return tuple(args)


@functools.cache
def _seccomp_program() -> bytes | None:
    from pythoncoder.eval import _seccomp

    return _seccomp.program()


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
                 pass_fds: Sequence[int] = (), **kwargs: Any) -> subprocess.Popen:
    """Start ``command`` in bwrap: options through ``--args FD`` and the seccomp filter
    through ``--seccomp FD``, so bwrap's command line (what ``/proc/1/cmdline`` shows
    inside) is ``bwrap --args N [--seccomp M] /sbx/python ...``, no host path."""
    fds = [_pipe_with(b"".join(os.fsencode(a) + b"\0" for a in options))]
    argv = ["bwrap", "--args", str(fds[0])]
    try:
        program = _seccomp_program() if seccomp else None
        if program is not None:
            fds.append(_pipe_with(program))
            argv += ["--seccomp", str(fds[1])]
        return subprocess.Popen([*argv, *command], executable=shutil.which("bwrap"),
                                pass_fds=(*pass_fds, *fds), **kwargs)
    finally:
        for fd in fds:
            os.close(fd)


def _sbx_python(python: str, kind: str) -> str:
    _script_dir(python)
    return f"{_SBX}/python" if kind == "bwrap" else python


@functools.cache
def _probe(kind: str, python: str) -> bool:
    try:
        if kind == "bwrap":
            if shutil.which("bwrap") is None:
                return False
            proc = _bwrap_popen(
                [*_bwrap_base(python, os.geteuid() != 0), "--perms", "1777", "--tmpfs", _WORK,
                 "--chdir", _WORK], [_sbx_python(python, kind), "-I", "-S", "-c", "pass"],
                seccomp=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
            "samples may use the kernel keyring (state that outlives them), create user "
            "namespaces when the harness is root, and hold SysV/POSIX shared memory outside "
            "the memory limit")
    if os.geteuid() != 0:
        missing.append(
            "no inode cap on /work (bubblewrap cannot set nr_inodes; the harness mounts it "
            "only when root): a sample can create empty files, which its byte cap does not "
            "count, until its time runs out (about 1 KiB of kernel memory each)")
    return missing


def _warn_missing(config: SandboxConfig, kind: str) -> None:
    for text in _missing_mechanisms(config, kind):
        if text not in _WARNED:
            _WARNED.add(text)
            warnings.warn(f"pythoncoder eval sandbox: {text}.", RuntimeWarning, stacklevel=3)


class SandboxUnusable(RuntimeError):
    """The sandbox cannot run a trivial correct program here: scoring would misjudge."""


# A correct program that imports what HumanEval solutions import, judged both ways.
_SELF_TEST = "from typing import List\nimport json\nimport math\n\n\n" \
             "def f(x):\n    return math.floor(x) + len(json.dumps([1]))\n"
_SELF_TEST_JUDGE = {"prelude": "", "test": "assert f(1.5) == 4\n", "names": ["f"],
                    "entry": None, "reference": _SELF_TEST}
_CHECKED: dict[tuple[SandboxConfig, str], str | None] = {}
_CHECK_LOCK = threading.Lock()


def check_usable(config: SandboxConfig | None = None, slot: _Slot | None = None) -> None:
    """Raise :class:`SandboxUnusable` (one line: what is missing, how to fix it) unless
    the sandbox passes a trivial correct program (the judge's verdict). Once per
    configuration and process; :func:`run_programs` calls it before any sample, on one
    of its own workers (whose judge then stays up for the samples)."""
    config = config or SandboxConfig()
    kind = isolation(config)
    with _CHECK_LOCK:
        if (config, kind) not in _CHECKED:
            _CHECKED[(config, kind)] = _self_test(config, kind, slot)
        message = _CHECKED[(config, kind)]
    if message is not None:
        raise SandboxUnusable(message)


def _self_test(config: SandboxConfig, kind: str, slot: _Slot | None) -> str | None:
    own = slot is None
    if own:
        slot = _Slot(config, prestart=False)
    try:
        result = slot.run(Job(_SELF_TEST, _SELF_TEST_JUDGE), timeout_s=max(config.timeout_s, 30))
    except Exception as e:  # noqa: BLE001 - reported as the reason it is unusable
        return sanitize(f"the evaluation sandbox ({kind}) cannot start: {type(e).__name__}: "
                        f"{e}; install bubblewrap (apt-get install bubblewrap)", 400)
    finally:
        if own:
            slot.close()
    if result.passed:
        return None
    stdlib = sysconfig.get_paths()["stdlib"]
    if kind != "bwrap" and os.geteuid() == 0 and not _others_can_read(stdlib):
        return (f"the evaluation sandbox cannot run Python: without bubblewrap samples run "
                f"as uid {SANDBOX_UID}, which cannot read the Python installation ({stdlib}: a "
                f"parent directory is not world-readable); install bubblewrap (apt-get install "
                f"bubblewrap) or use a Python installed outside that directory")
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    detail = result.result + (f"; {errors[-1]}" if errors else "")
    fix = ("install bubblewrap (apt-get install bubblewrap)" if kind != "bwrap" else
           "see the README's 'Evaluation sandbox' section")
    return sanitize(f"the evaluation sandbox ({kind}) fails a trivial correct program "
                    f"({detail}); {fix}", 400)


def _others_can_read(path: str) -> bool:
    """Whether a process of another uid can reach and list ``path`` (mode bits only)."""
    p = Path(path).resolve()
    try:
        if not all(q.stat().st_mode & 0o001 for q in p.parents):
            return False
        return p.stat().st_mode & 0o005 == 0o005
    except OSError:
        return False


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _limits(config: SandboxConfig) -> list[str]:
    return [str(config.cpu_seconds), str(config.memory_bytes), str(config.file_size_bytes),
            str(config.max_processes), str(config.max_open_files)]


class _Candidate:
    """A started (possibly pre-started) candidate sandbox waiting for its source."""

    def __init__(self, config: SandboxConfig, kind: str) -> None:
        self.workdir = None
        c2j_r, c2j_w = os.pipe()
        j2c_r, j2c_w = os.pipe()
        self.out_r, self.in_w = c2j_r, j2c_w
        root = os.geteuid() == 0
        mount_work = kind == "bwrap" and root  # the child mounts /work: bytes and inodes
        if kind == "bwrap":
            workdir = _WORK
            options = [*_bwrap_base(config.python, not root)]
            if mount_work:
                options += ["--dir", _WORK, "--chdir", "/"]
            else:  # bwrap's tmpfs: bytes capped, inodes not (no way to ask it)
                options += ["--perms", "1777", "--size", str(config.work_bytes),
                            "--tmpfs", _WORK, "--chdir", _WORK]
        else:
            self.workdir = workdir = tempfile.mkdtemp(prefix="pythoncoder-sbx-")
            os.chmod(workdir, 0o777)
        self.argv0 = _sbx_python(config.python, kind)
        cmd = [self.argv0, "-I", "-S", "-B", _script(config.python, kind, "_sandbox_child.py")]
        # The child's set-up comes on stdin, not argv: no host path on any command line.
        uid = SANDBOX_UID if root else -1
        setup = " ".join(map(str, (
            c2j_w, j2c_r, uid, SANDBOX_GID, workdir,
            config.work_bytes if mount_work else 0, config.work_inodes,
            *_limits(config)))) + "\n"
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        popen = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     cwd="/", env=env, start_new_session=True)
        try:
            if kind == "bwrap":
                self.proc = _bwrap_popen(options, cmd, config.seccomp, (c2j_w, j2c_r),
                                         **popen)
            else:
                prefix = _unshare_prefix() if kind == "unshare" else []
                self.proc = subprocess.Popen([*prefix, *cmd], pass_fds=(c2j_w, j2c_r),
                                             **popen)
        except BaseException:
            for fd in (c2j_r, j2c_w):
                os.close(fd)
            self._remove_workdir()
            raise
        finally:
            os.close(c2j_w)
            os.close(j2c_r)
        try:
            self.proc.stdin.write(setup.encode())  # a fresh pipe: never blocks
            self.proc.stdin.flush()
        except OSError:  # it died at once: its sample fails like any early exit
            pass

    def kill(self) -> int:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        returncode = self.proc.wait()
        for fd in (self.out_r, self.in_w):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.out_r = self.in_w = None
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                try:
                    stream.close()
                except OSError:
                    pass
        self._remove_workdir()
        return returncode

    def _remove_workdir(self) -> None:
        if self.workdir is None:
            return
        try:
            shutil.rmtree(self.workdir, ignore_errors=True)
        except RecursionError:  # a tree deeper than Python's recursion limit
            pass
        if os.path.lexists(self.workdir):  # rm walks any depth without recursion
            subprocess.run(["rm", "-rf", "--one-file-system", "--", self.workdir],
                           capture_output=True, check=False)
        self.workdir = None


class _Judge:
    """The trusted judge process of one worker, in its own sandbox."""

    def __init__(self, config: SandboxConfig, kind: str) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        uid = SANDBOX_UID if os.geteuid() == 0 else -1
        cmd = [_sbx_python(config.python, kind), "-I", "-S", "-B",
               _script(config.python, kind, "_judge.py"), str(theirs.fileno()),
               str(uid), str(SANDBOX_GID), str(config.memory_bytes)]
        popen = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, cwd="/", start_new_session=True,
                     env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"})
        try:
            if kind == "bwrap":
                self.proc = _bwrap_popen([*_bwrap_base(config.python, os.geteuid() != 0),
                                          "--chdir", "/"], cmd, config.seccomp,
                                         (theirs.fileno(),), **popen)
            else:
                prefix = _unshare_prefix() if kind == "unshare" else []
                self.proc = subprocess.Popen([*prefix, *cmd], pass_fds=(theirs.fileno(),),
                                             **popen)
        finally:
            theirs.close()

    def send(self, job: Mapping[str, Any], fds: tuple[int, int]) -> None:
        socket.send_fds(self.sock, [json.dumps(dict(job)).encode()], list(fds))

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.sock.close()


class _Capture:
    """Keeps the first ``cap`` bytes of a stream and counts the rest."""

    def __init__(self, cap: int) -> None:
        self.cap, self.parts, self.size, self.dropped = cap, [], 0, 0

    def add(self, chunk: bytes) -> None:
        room = self.cap - self.size
        if room > 0:
            self.parts.append(chunk[:room])
            self.size += min(room, len(chunk))
        self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        return b"".join(self.parts).decode("utf-8", "replace")


class _Slot:
    """One worker: a judge reused across samples and the next candidate already booting."""

    def __init__(self, config: SandboxConfig, prestart: bool = True) -> None:
        self.config, self.prestart = config, prestart
        self.kind = isolation(config)
        self.judge: _Judge | None = None
        self.ready: _Candidate | None = None

    def _candidate(self) -> _Candidate:
        cand, self.ready = self.ready, None
        if cand is not None and cand.proc.poll() is not None:  # died while it waited
            cand.kill()
            cand = None
        if cand is None:
            cand = _Candidate(self.config, self.kind)
        if self.prestart:
            try:
                self.ready = _Candidate(self.config, self.kind)
            except OSError:
                self.ready = None
        return cand

    def close(self) -> None:
        if self.ready is not None:
            self.ready.kill()
            self.ready = None
        if self.judge is not None:
            self.judge.close()
            self.judge = None

    def run(self, job: Job, timeout_s: float | None = None) -> SandboxResult:
        if job.judge is None:
            return self._run(job.source, None, timeout_s)
        result = self._run(job.source, job.judge, timeout_s)
        if result.status == "unsupported":
            return self._run(job.fallback or job.source, None, timeout_s)
        return result

    def _run(self, source: str, judge_spec: Mapping[str, Any] | None,
             timeout_s: float | None = None) -> SandboxResult:
        config = self.config
        if timeout_s is not None:  # the self-test's longer clock (a loaded host)
            config = dataclasses.replace(config, timeout_s=timeout_s)
        cand = self._candidate()
        nonce = secrets.token_hex(16)
        mode = "serve" if judge_spec is not None else "run"
        start = time.monotonic()
        control = None
        try:
            if judge_spec is not None:
                if self.judge is None:
                    self.judge = _Judge(config, self.kind)
                try:
                    self.judge.send(judge_spec, (cand.out_r, cand.in_w))
                except OSError:  # the judge is gone (it should not be): one fresh try
                    self.judge.close()
                    self.judge = _Judge(config, self.kind)
                    self.judge.send(judge_spec, (cand.out_r, cand.in_w))
                control = self.judge.sock
                for fd in (cand.out_r, cand.in_w):
                    os.close(fd)
                cand.out_r = cand.in_w = None
            else:
                os.close(cand.in_w)
                cand.in_w = None
            limited = int(_prlimit(cand, config))
            payload = f"{mode} {nonce} {limited}\n{source}".encode("utf-8", "surrogatepass")
            outcome = _supervise(cand, payload, control, config, start)
        except BaseException:
            cand.kill()
            if self.judge is not None:
                self.judge.close()
                self.judge = None
            raise
        returncode = cand.kill()
        timed_out, report, out, err, judge_reply = outcome
        if timed_out or (control is not None and judge_reply is None):
            if self.judge is not None:  # it may be stuck in the test: start a fresh one
                self.judge.close()
                self.judge = None
        if timed_out:
            status, reason = TIMED_OUT, f"no result within {config.timeout_s:g} s"
        elif judge_spec is not None:
            status, reason = _judge_verdict(judge_reply)
        else:
            status, reason = _verdict(report, nonce, returncode)
            if self.kind != "bwrap" and status == FAILED and report:
                # Outside bwrap the sample can read host files: keep only the type name.
                reason = reason.split(":", 1)[0]
        return SandboxResult(
            status=status, reason=sanitize(reason), returncode=returncode,
            stdout=out.text(), stderr=err.text(), stdout_truncated=out.dropped > 0,
            stderr_truncated=err.dropped > 0, duration_s=time.monotonic() - start,
            pid=cand.proc.pid, verdict=JUDGE if judge_spec is not None else IN_SANDBOX)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _prlimit(cand: _Candidate, config: SandboxConfig) -> bool:
    """Lower the rlimits of the waiting candidate interpreter from here (``prlimit``), so
    it need not load ``resource`` itself. False (the child then does it) if it cannot be
    found yet (still starting) or the kernel refuses."""
    pid = cand.proc.pid
    for _ in range(3):  # bwrap -> the sandbox's init -> the interpreter (fewer outside)
        kids = _children(pid)
        if len(kids) != 1:
            break
        pid = kids[0]
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # Only the interpreter itself (bwrap's own argv names the script too): else the
    # limits would land on bwrap, and the child, told they are set, would skip them.
    if argv[0] != os.fsencode(cand.argv0) or len(argv) < 5 \
            or not argv[4].rstrip(b"c").endswith(b"_sandbox_child.py") or _children(pid):
        return False
    cpu = config.cpu_seconds
    try:
        for limit, value in (
            (resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_CORE, (0, 0)),
            (resource.RLIMIT_AS, (config.memory_bytes,) * 2),
            (resource.RLIMIT_FSIZE, (config.file_size_bytes,) * 2),
            (resource.RLIMIT_NPROC, (config.max_processes,) * 2),
            (resource.RLIMIT_NOFILE, (config.max_open_files,) * 2),
        ):
            resource.prlimit(pid, limit, value)
    except OSError:
        return False
    return True


def _judge_verdict(reply: bytes | None) -> tuple[str, str]:
    if not reply:
        return FAILED, "the judge gave no verdict"
    try:
        data = json.loads(reply)
        verdict, reason = data["verdict"], str(data.get("reason", ""))
    except (ValueError, KeyError, TypeError):
        return FAILED, "the judge gave a malformed verdict"
    if verdict == PASSED:
        return PASSED, ""
    if verdict == "unsupported":
        return "unsupported", reason
    return FAILED, reason or "the test failed"


def _supervise(cand: _Candidate, payload: bytes, control: socket.socket | None,
               config: SandboxConfig, start: float):
    """Feed the source, drain output, wait for the verdict, the exit or the deadline."""
    proc = cand.proc
    deadline = start + config.timeout_s
    out, err = _Capture(config.output_cap_bytes), _Capture(config.output_cap_bytes)
    report = _Capture(4096)
    sinks = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    if cand.out_r is not None:
        sinks[cand.out_r] = report
    stdin_fd = proc.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    sel = selectors.DefaultSelector()
    sel.register(stdin_fd, selectors.EVENT_WRITE)
    for fd in sinks:
        sel.register(fd, selectors.EVENT_READ)
    if control is not None:
        sel.register(control.fileno(), selectors.EVENT_READ)
    timed_out, sent, judge_reply = False, 0, None
    try:
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(remaining):
                fd = key.fd
                if fd == stdin_fd:
                    try:
                        sent += os.write(fd, payload[sent:sent + _READ_CHUNK])
                    except BlockingIOError:
                        continue
                    except OSError:  # the child is gone or closed its stdin
                        sent = len(payload)
                    if sent >= len(payload):
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                if control is not None and fd == control.fileno():
                    judge_reply = control.recv(1 << 16)
                    if judge_reply == b"traced":  # the reference's time is not the sample's
                        deadline = time.monotonic() + config.timeout_s
                        continue
                    sel.close()
                    return False, "", out, err, judge_reply
                chunk = os.read(fd, _READ_CHUNK)
                if chunk:
                    sinks[fd].add(chunk)
                else:
                    sel.unregister(fd)
        if control is None:  # weak mode: every pipe closed, wait for the exit
            pause = 0.0005
            while not timed_out and not _exited(proc.pid):
                if time.monotonic() >= deadline:
                    timed_out = True
                    break
                time.sleep(pause)
                pause = min(pause * 2, 0.01)
    finally:
        sel.close()
    return timed_out, report.text(), out, err, judge_reply


def _exited(pid: int) -> bool:
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _verdict(report: str, nonce: str, returncode: int) -> tuple[str, str]:
    lines = report.splitlines()
    if f"PASS {nonce}" in lines:
        if returncode == 0:
            return PASSED, ""
        return FAILED, f"exit status {returncode} after the checks"
    failures = [line[5:] for line in lines if line.startswith("FAIL ")]
    if failures:
        return FAILED, failures[-1]
    if returncode is not None and 128 < returncode < 128 + 65:
        returncode = 128 - returncode  # bwrap exits 128 + N when its child died of signal N
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return FAILED, f"killed by signal {name}"
    return FAILED, f"exited with status {returncode} before the checks completed"


def run_program(source: str | Job, config: SandboxConfig | None = None) -> SandboxResult:
    """Run one program (or :class:`Job`) in a fresh sandbox; never raises for what it does."""
    return run_programs([source], config, workers=1)[0]


def run_programs(
    sources: Sequence[str | Job],
    config: SandboxConfig | None = None,
    *,
    workers: int | None = None,
    on_result: Callable[[int, SandboxResult], None] | None = None,
) -> list[SandboxResult]:
    """Run many programs or :class:`Job`\\ s in parallel, one sandbox each.

    Results come back in input order; ``on_result(index, result)`` is called as each one
    finishes (from worker threads). A failure of the harness around one sample is that
    sample's ``failed: harness error`` result, never a lost result.
    """
    config = config or SandboxConfig()
    _warn_missing(config, isolation(config))  # probe (and warn) once, before the threads
    jobs = [s if isinstance(s, Job) else Job(s) for s in sources]
    workers = max(1, min(workers or default_workers(), len(jobs) or 1))
    results: list[SandboxResult | None] = [None] * len(jobs)
    slots: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
    for _ in range(workers):
        slots.put(_Slot(config, prestart=len(jobs) > workers))
    first = slots.get()
    slots.put(first)
    try:  # a sandbox that cannot run a correct program refuses to score anything
        check_usable(config, first)
    except BaseException:
        while True:
            try:
                slots.get_nowait().close()
            except queue.Empty:
                break
        raise

    def one(index: int) -> None:
        slot = slots.get()
        start = time.monotonic()
        try:
            result = slot.run(jobs[index])
        except Exception as e:  # noqa: BLE001 - recorded as this sample's result
            result = SandboxResult(
                status=FAILED, reason=sanitize(f"harness error: {type(e).__name__}"),
                returncode=None, stdout="", stderr="", stdout_truncated=False,
                stderr_truncated=False, duration_s=time.monotonic() - start, pid=0)
        finally:
            slots.put(slot)
        results[index] = result
        if on_result is not None:
            on_result(index, result)

    try:
        # Samples start in a random order (results stay in input order): which copy of a
        # completion runs first, or next to which, is nothing a sample can count on.
        order = list(range(len(jobs)))
        random.SystemRandom().shuffle(order)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(one, i) for i in order]:
                future.result()
    finally:
        while True:
            try:
                slots.get_nowait().close()
            except queue.Empty:
                break
    return results  # type: ignore[return-value]
