"""The sandbox's data: its limits (:class:`SandboxConfig`), a sample (:class:`Job`), an
outcome (:class:`SandboxResult`), the verdict names and :func:`sanitize`; and where the
sandbox-side scripts (``_sandbox_child.py``, ``_judge.py``, ``_wire.py``) lie: next to this
file, in this package."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pythoncoder.eval.sandbox import _wire

_HERE = Path(__file__).resolve().parent
CHILD_SCRIPT = str(_HERE / "_sandbox_child.py")
JUDGE_SCRIPT = str(_HERE / "_judge.py")
WIRE_SCRIPT = str(_HERE / "_wire.py")
PASSED, FAILED, TIMED_OUT = "passed", "failed", "timed out"
JUDGE, IN_SANDBOX = "judge", "in-sandbox"
SANDBOX_UID = SANDBOX_GID = 65534
REASON_CAP = 200
_SBX = "/sbx"  # where the scripts appear inside a bwrap sandbox
_WORK = "/work"


@dataclasses.dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Limits for one sandboxed run.

    ``max_processes`` is the ``RLIMIT_NPROC`` value for uid 65534: 0 forbids ``fork``.
    ``isolation`` is ``"auto"`` (bwrap, else unshare, else none, with a warning),
    or one of ``"bwrap"``, ``"unshare"``, ``"none"`` to force it. ``work_bytes`` and
    ``work_inodes`` cap the sample's writable ``/work`` tmpfs (inodes: root harness).
    ``memory_cgroup`` puts each sandbox in a memory cgroup of its own where the host allows
    (``cgroup.py``), limited to ``cgroup_bytes`` (0: ``memory_bytes`` + ``work_bytes`` +
    256 MiB for kernel memory); False only to show, in tests, what it bounds.
    """

    timeout_s: float = 3.0
    memory_bytes: int = 2 * 1024**3
    file_size_bytes: int = 16 * 1024**2
    work_bytes: int = 64 * 1024**2
    work_inodes: int = 4096
    max_processes: int = 0
    max_open_files: int = 64
    # RLIMIT_SIGPENDING: signals queued and POSIX timers (each holds one), kernel memory
    # no other limit counts; -1 leaves the host's (only to show, in tests, what it stops)
    max_pending_signals: int = 64
    output_cap_bytes: int = 64 * 1024
    isolate_network: bool = True
    isolation: str = "auto"
    python: str = sys.executable
    seccomp: bool = True  # False only to show, in tests, what the filter stops
    memory_cgroup: bool = True
    cgroup_bytes: int = 0

    @property
    def cpu_seconds(self) -> int:
        return math.ceil(self.timeout_s) + 1


@dataclasses.dataclass(frozen=True, slots=True)
class SandboxResult:
    """How one program ended: ``status`` is ``passed``, ``failed`` or ``timed out``.

    ``verdict`` says who decided: ``judge`` (outside the candidate) or ``in-sandbox``.
    ``refused`` names the calls the sandbox's filter refused, in the order first made
    (``socket(AF_INET)``, ``ptrace``...; empty where the host cannot tell, see
    ``notify.py``); a result that did not pass says them in its ``reason`` too.
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
    refused: tuple[str, ...] = ()

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

    ``data`` goes to the judge after the spec (a differential job's inputs, ``_wire``
    bytes); ``timeout_s``, when given, replaces the configured seconds for this job (its
    CPU limit and its clock until the judge names the budget it computed).
    """

    source: str
    judge: Mapping[str, Any] | None = None
    fallback: str | None = None
    data: bytes = b""
    timeout_s: float | None = None


def sanitize(text: str, cap: int = REASON_CAP) -> str:
    """Printable ASCII only, one line, at most ``cap`` characters (``_wire.printable``,
    which the judge uses too)."""
    return _wire.printable(text, cap)
