"""Process control: the candidate sandbox (:class:`_Candidate`, started one ahead per
worker), a worker's slot (:class:`_Slot`: its judge and its next candidate), the rlimits
set from outside (:func:`_prlimit`), the supervision of one sample (source in, output
drained, verdict, exit or deadline) and the weak mode's in-sandbox verdict."""

from __future__ import annotations

import dataclasses
import os
import resource
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pythoncoder.eval.sandbox import _seccomp, cgroup, notify
from pythoncoder.eval.sandbox.config import (
    _WORK,
    FAILED,
    IN_SANDBOX,
    JUDGE,
    PASSED,
    REASON_CAP,
    SANDBOX_GID,
    SANDBOX_UID,
    TIMED_OUT,
    Job,
    SandboxConfig,
    SandboxResult,
    sanitize,
)
from pythoncoder.eval.sandbox.isolate import (
    PYTHON_FLAGS,
    _bwrap_base,
    _bwrap_popen,
    _sbx_python,
    _script,
    _seccomp_program,
    _unshare_prefix,
    isolation,
    sandbox_env,
)
from pythoncoder.eval.sandbox.judge import _Judge, _judge_verdict

_READ_CHUNK = 1 << 16


def rlimits(config: SandboxConfig) -> list[tuple[str, int, int]]:
    """A sample's rlimits, ``(name, soft, hard)`` with ``resource.RLIMIT_<name>``: set by
    the harness (:func:`_prlimit`) or, where it cannot, by the child from the same list.
    Beyond CPU, memory, file size, processes and files: queued signals and POSIX timers
    (SIGPENDING), POSIX message-queue bytes, locked memory, real-time priority."""
    cpu = config.cpu_seconds
    out = [("CPU", cpu, cpu + 1), ("CORE", 0, 0),  # soft: SIGXCPU, hard: SIGKILL
           ("AS", config.memory_bytes, config.memory_bytes),
           ("FSIZE", config.file_size_bytes, config.file_size_bytes),
           ("NPROC", config.max_processes, config.max_processes),
           ("NOFILE", config.max_open_files, config.max_open_files)]
    if config.max_pending_signals >= 0:
        pending = config.max_pending_signals
        out += [("SIGPENDING", pending, pending), ("MSGQUEUE", 0, 0), ("MEMLOCK", 0, 0),
                ("RTPRIO", 0, 0)]
    return out


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
        cmd = [self.argv0, *PYTHON_FLAGS, _script(config.python, kind, "_sandbox_child.py")]
        # Refused calls named: the child hands the harness a seccomp listener (notify.py).
        self.notify, self.listener = None, None
        theirs, handover = None, (-1, 0, "-")
        if kind == "bwrap" and config.seccomp and notify.supported():
            self.notify, theirs = notify.pair()
            sealed = _seccomp_program(notify=True, sealed=True)
            handover = (theirs.fileno(), _seccomp.number("seccomp"), sealed.hex())
        # The child's set-up comes on stdin, not argv: no host path on any command line.
        uid = SANDBOX_UID if root else -1
        setup = " ".join(map(str, (
            c2j_w, j2c_r, uid, SANDBOX_GID, workdir,
            config.work_bytes if mount_work else 0, config.work_inodes, *handover))) + "\n"
        env = sandbox_env(HOME=workdir, TMPDIR=workdir)
        popen = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     cwd="/", env=env, start_new_session=True)
        self.cgroup = None
        try:
            self.cgroup = cgroup.create(config)  # born in it: joined before bwrap starts
            join = self.cgroup.prefix() if self.cgroup is not None else []
            if kind == "bwrap":
                passed = (c2j_w, j2c_r) if theirs is None else (c2j_w, j2c_r, theirs.fileno())
                self.proc = _bwrap_popen(options, cmd, config.seccomp, passed,
                                         python=config.python, prefix=join,
                                         notify=theirs is not None, **popen)
            else:
                prefix = _unshare_prefix() if kind == "unshare" else []
                self.proc = subprocess.Popen([*join, *prefix, *cmd], pass_fds=(c2j_w, j2c_r),
                                             **popen)
        except BaseException:
            for fd in (c2j_r, j2c_w):
                os.close(fd)
            if self.notify is not None:
                self.notify.close()
            self._remove_workdir()
            if self.cgroup is not None:
                self.cgroup.remove()
            raise
        finally:
            os.close(c2j_w)
            os.close(j2c_r)
            if theirs is not None:
                theirs.close()
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
        for end in (self.notify, self.listener):
            if end is not None:
                end.close()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                try:
                    stream.close()
                except OSError:
                    pass
        self._remove_workdir()
        if self.cgroup is not None:  # kills any straggler, frees its kernel memory
            self.cgroup.remove()
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
        timeout_s = timeout_s or job.timeout_s
        if job.judge is None:
            return self._run(job.source, None, timeout_s)
        result = self._run(job.source, job.judge, timeout_s, job.data)
        if result.status == "unsupported":
            return self._run(job.fallback or job.source, None, timeout_s)
        return result

    def _run(self, source: str, judge_spec: Mapping[str, Any] | None,
             timeout_s: float | None = None, data: bytes = b"") -> SandboxResult:
        config = self.config
        if timeout_s is not None:  # the self-test's longer clock (a loaded host), a job's
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
                    self.judge.send(judge_spec, (cand.out_r, cand.in_w), data)
                except OSError:  # the judge is gone (it should not be): one fresh try
                    self.judge.close()
                    self.judge = _Judge(config, self.kind)
                    self.judge.send(judge_spec, (cand.out_r, cand.in_w), data)
                control = self.judge.sock
                for fd in (cand.out_r, cand.in_w):
                    os.close(fd)
                cand.out_r = cand.in_w = None
            else:
                os.close(cand.in_w)
                cand.in_w = None
            limited = int(_prlimit(cand, config))
            limits = " ".join(f"{n}:{soft}:{hard}" for n, soft, hard in rlimits(config))
            payload = f"{mode} {nonce} {limited} {limits}\n{source}".encode(
                "utf-8", "surrogatepass")
            outcome = _supervise(cand, payload, control, config, start)
        except BaseException:
            cand.kill()
            if self.judge is not None:
                self.judge.close()
                self.judge = None
            raise
        returncode = cand.kill()
        timed_out, report, out, err, judge_reply, allowed = outcome
        if timed_out or (control is not None and judge_reply is None):
            if self.judge is not None:  # it may be stuck in the test: start a fresh one
                self.judge.close()
                self.judge = None
        if timed_out:
            status, reason = TIMED_OUT, f"no result within {allowed:.3g} s"
        elif judge_spec is not None:
            status, reason = _judge_verdict(judge_reply)
        else:
            status, reason = _verdict(report, nonce, returncode)
            if self.kind != "bwrap" and status == FAILED and report:
                # Outside bwrap the sample can read host files: keep only the type name.
                reason = reason.split(":", 1)[0]
        refused = tuple(cand.listener.refused) if cand.listener is not None else ()
        reason = sanitize(reason)
        if refused and status != PASSED:  # named after the reason, which gives way to it
            said = sanitize(cand.listener.summary())
            reason = f"{sanitize(reason, max(REASON_CAP - len(said) - 2, 40))}; {said}" \
                if reason else said
        return SandboxResult(
            status=status, reason=sanitize(reason), returncode=returncode,
            stdout=out.text(), stderr=err.text(), stdout_truncated=out.dropped > 0,
            stderr_truncated=err.dropped > 0, duration_s=time.monotonic() - start,
            pid=cand.proc.pid, verdict=JUDGE if judge_spec is not None else IN_SANDBOX,
            refused=refused)


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
    try:
        for name, soft, hard in rlimits(config):
            resource.prlimit(pid, getattr(resource, f"RLIMIT_{name}"), (soft, hard))
    except OSError:
        return False
    return True


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
    if cand.notify is not None:  # the child's listener arrives here (notify.py)
        sel.register(cand.notify.fileno(), selectors.EVENT_READ)
    listening = {cand.notify.fileno()} if cand.notify is not None else set()

    def refusal(fd: int) -> None:
        """The listener's handover, or one refused call to name and answer."""
        if cand.listener is None or fd != cand.listener.fileno():
            sel.unregister(fd)
            listening.discard(fd)
            cand.listener = notify.receive(cand.notify)
            if cand.listener is not None:
                sel.register(cand.listener.fileno(), selectors.EVENT_READ)
                listening.add(cand.listener.fileno())
        elif not cand.listener.serve():  # nobody left under the filter, or a flood
            sel.unregister(fd)
            listening.discard(fd)

    timed_out, sent, judge_reply, allowed = False, 0, None, config.timeout_s
    try:
        while len(sel.get_map()) > len(listening):  # a pipe or the judge still open
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(remaining):
                fd = key.fd
                if fd in listening:
                    refusal(fd)
                    continue
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
                    if judge_reply.startswith(b"traced"):  # the reference's time is not
                        allowed = _budget(judge_reply, config.timeout_s)  # the sample's
                        deadline = time.monotonic() + allowed
                        continue
                    sel.close()
                    return False, "", out, err, judge_reply, allowed
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
                for key, _ in sel.select(pause):  # still answering refused calls
                    refusal(key.fd)
                pause = min(pause * 2, 0.01)
    finally:
        sel.close()
    return timed_out, report.text(), out, err, judge_reply, allowed


def _budget(traced: bytes, limit: float) -> float:
    """The sample's seconds after ``traced [seconds]``: the judge's figure (a differential
    job's, from the reference's times) but never more than the job's own limit."""
    try:
        given = float(traced[len(b"traced"):] or limit)
    except ValueError:
        return limit
    return min(given, limit) if given > 0 else limit


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
