"""Run untrusted Python programs, one fresh subprocess each, and report how they ended.

Each program runs

* in a fresh interpreter (``python -I -S -B``: no environment-driven start-up, no site
  packages, no bytecode writes) in its own session and process group;
* in a new temporary working directory (also its ``HOME`` and ``TMPDIR``), removed after;
* with a clean environment (no proxies, no credentials: only ``PATH``, ``HOME``,
  ``TMPDIR`` and the locale);
* with no network: in an empty network namespace (``unshare -n``) where the kernel
  allows it, and always with sockets refused by the child's audit hook;
* with rlimits on CPU time, address space, file size, processes and open files;
* with stdout/stderr captured, read incrementally and capped at ``output_cap_bytes``;
* under a wall-clock timeout (3 s by default): on expiry the whole process group gets
  SIGKILL. The group is also killed after a normal exit, so nothing it forked survives.

A program *passes* only if the child reports ``PASS <nonce>`` (a random per-run token
sent over stdin, never in argv or the environment) on a dedicated pipe after the program
ran to the end, and exits with status 0. See ``_sandbox_child.py`` for the in-process
guards and their honest limits: they are best-effort, whereas the rlimits, the process
group kill and the network namespace are enforced by the kernel.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CHILD_SCRIPT = str(Path(__file__).with_name("_sandbox_child.py"))
PASSED, FAILED, TIMED_OUT = "passed", "failed", "timed out"
_READ_CHUNK = 1 << 16


@dataclasses.dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Limits for one sandboxed run.

    ``max_processes`` is the ``RLIMIT_NPROC`` value; it counts every process and thread of
    the user, so 0 forbids new ones for an unprivileged user. Root is exempt from it by
    the kernel, which is why the child's audit hook also refuses ``fork`` and friends.
    """

    timeout_s: float = 3.0
    memory_bytes: int = 2 * 1024**3
    file_size_bytes: int = 16 * 1024**2
    max_processes: int = 0
    max_open_files: int = 64
    output_cap_bytes: int = 64 * 1024
    isolate_network: bool = True
    python: str = sys.executable

    @property
    def cpu_seconds(self) -> int:
        return math.ceil(self.timeout_s) + 1


@dataclasses.dataclass(frozen=True, slots=True)
class SandboxResult:
    """How one program ended: ``status`` is ``passed``, ``failed`` or ``timed out``."""

    status: str
    reason: str
    returncode: int | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    duration_s: float
    pid: int  # also the process group id; the group is gone once the result exists

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def result(self) -> str:
        """``passed``, ``failed: <reason>`` or ``timed out``."""
        return f"{FAILED}: {self.reason}" if self.status == FAILED else self.status


@functools.cache
def network_namespace_prefix() -> tuple[str, ...]:
    """``("unshare", "-n")`` if this process may create network namespaces, else ``()``."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    try:
        probe = subprocess.run([unshare, "-n", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ()
    return (unshare, "-n") if probe.returncode == 0 else ()


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


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


def run_program(source: str, config: SandboxConfig | None = None) -> SandboxResult:
    """Run ``source`` in a fresh sandboxed subprocess; never raises for anything it does."""
    config = config or SandboxConfig()
    workdir = tempfile.mkdtemp(prefix="pythoncoder-sbx-")
    nonce = secrets.token_hex(16)
    report_r, report_w = os.pipe()
    cmd = [
        *(network_namespace_prefix() if config.isolate_network else ()),
        config.python, "-I", "-S", "-B", CHILD_SCRIPT, workdir, str(report_w),
        str(config.cpu_seconds), str(config.memory_bytes), str(config.file_size_bytes),
        str(config.max_processes), str(config.max_open_files),
    ]
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(report_w,), cwd=workdir, env=env, start_new_session=True,
        )
    except BaseException:
        os.close(report_r)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        os.close(report_w)
    try:
        return _supervise(proc, report_r, (nonce + "\n" + source).encode(), nonce,
                          config, start)
    finally:
        os.close(report_r)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _supervise(proc: subprocess.Popen, report_fd: int, payload: bytes, nonce: str,
               config: SandboxConfig, start: float) -> SandboxResult:
    deadline = start + config.timeout_s
    out, err = _Capture(config.output_cap_bytes), _Capture(config.output_cap_bytes)
    report = _Capture(4096)
    sinks = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, report_fd: report}
    stdin_fd = proc.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    sel = selectors.DefaultSelector()
    sel.register(stdin_fd, selectors.EVENT_WRITE)
    for fd in sinks:
        sel.register(fd, selectors.EVENT_READ)
    timed_out, sent = False, 0
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
                chunk = os.read(fd, _READ_CHUNK)
                if chunk:
                    sinks[fd].add(chunk)
                else:
                    sel.unregister(fd)
        # Every pipe is closed; wait for the exit without reaping, so the group id stays
        # reserved (no pid reuse) until the group has been killed below.
        pause = 0.0005
        while not timed_out and not _exited(proc.pid):
            if time.monotonic() >= deadline:
                timed_out = True
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
    finally:
        sel.close()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        returncode = proc.wait()
    duration = time.monotonic() - start

    if timed_out:
        status, reason = TIMED_OUT, f"no result within {config.timeout_s:g} s"
    else:
        status, reason = _verdict(report.text(), nonce, returncode)
    return SandboxResult(
        status=status, reason=reason, returncode=returncode, stdout=out.text(),
        stderr=err.text(), stdout_truncated=out.dropped > 0, stderr_truncated=err.dropped > 0,
        duration_s=duration, pid=proc.pid,
    )


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
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return FAILED, f"killed by signal {name}"
    return FAILED, f"exited with status {returncode} before the checks completed"


def run_programs(
    sources: Sequence[str],
    config: SandboxConfig | None = None,
    *,
    workers: int | None = None,
    on_result: Callable[[int, SandboxResult], None] | None = None,
) -> list[SandboxResult]:
    """Run many programs in parallel (``workers`` threads, one subprocess each).

    Results come back in input order; ``on_result(index, result)`` is called as each one
    finishes (from worker threads), e.g. to advance a progress bar.
    """
    config = config or SandboxConfig()
    if config.isolate_network:
        network_namespace_prefix()  # probe once, before the threads race to do it
    results: list[SandboxResult | None] = [None] * len(sources)

    def one(index: int) -> None:
        results[index] = run_program(sources[index], config)
        if on_result is not None:
            on_result(index, results[index])

    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        for future in [pool.submit(one, i) for i in range(len(sources))]:
            future.result()
    return results  # type: ignore[return-value]
