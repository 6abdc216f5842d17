"""The harness side of the judge: the :class:`_Judge` process of one worker (it runs
``_judge.py`` in its own sandbox and is reused across samples) and the reading of its
verdict (:func:`_judge_verdict`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Mapping
from typing import Any

from pythoncoder.eval.sandbox import cgroup
from pythoncoder.eval.sandbox.config import (
    FAILED,
    PASSED,
    SANDBOX_GID,
    SANDBOX_UID,
    TIMED_OUT,
    SandboxConfig,
)
from pythoncoder.eval.sandbox.isolate import (
    PYTHON_FLAGS,
    _bwrap_base,
    _bwrap_popen,
    _sbx_python,
    _script,
    _unshare_prefix,
    sandbox_env,
)

MESSAGE = 1 << 16  # the judge reads a message into a buffer of this size


class _Judge:
    """The trusted judge process of one worker, in its own sandbox."""

    def __init__(self, config: SandboxConfig, kind: str) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        uid = SANDBOX_UID if os.geteuid() == 0 else -1
        cmd = [_sbx_python(config.python, kind), *PYTHON_FLAGS,
               _script(config.python, kind, "_judge.py"), str(theirs.fileno()),
               str(uid), str(SANDBOX_GID), str(config.memory_bytes)]
        popen = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, cwd="/", start_new_session=True,
                     env=sandbox_env())
        self.cgroup = None
        try:
            self.cgroup = cgroup.create(config)
            join = self.cgroup.prefix() if self.cgroup is not None else []
            if kind == "bwrap":
                self.proc = _bwrap_popen([*_bwrap_base(config.python, os.geteuid() != 0),
                                          "--chdir", "/"], cmd, config.seccomp,
                                         (theirs.fileno(),), python=config.python,
                                         prefix=join, **popen)
            else:
                prefix = _unshare_prefix() if kind == "unshare" else []
                self.proc = subprocess.Popen([*join, *prefix, *cmd],
                                             pass_fds=(theirs.fileno(),), **popen)
        except BaseException:
            self.sock.close()
            if self.cgroup is not None:
                self.cgroup.remove()
            raise
        finally:
            theirs.close()

    def send(self, job: Mapping[str, Any], fds: tuple[int, int], data: bytes = b"") -> None:
        """The spec (JSON) and ``data`` after it, in messages of at most ``MESSAGE``
        bytes (a datagram socket's send buffer holds ~200 KiB, a problem's inputs can be
        more); the candidate's two pipe ends ride on the first."""
        header = json.dumps(dict(job)).encode()
        body = b"%d %d\n" % (len(header), len(data)) + header + data
        socket.send_fds(self.sock, [body[:MESSAGE]], list(fds))
        for at in range(MESSAGE, len(body), MESSAGE):
            self.sock.sendall(body[at:at + MESSAGE])

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.sock.close()
        if self.cgroup is not None:
            self.cgroup.remove()


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
    if verdict == TIMED_OUT:  # an input of a differential job past its own limit
        return TIMED_OUT, reason
    return FAILED, reason or "the test failed"
