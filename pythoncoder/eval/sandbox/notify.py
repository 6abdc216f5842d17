"""The harness's end of the candidate's seccomp listener: every call the sandbox refuses
is handed here, named and answered with the errno the filter gives (``_seccomp.py``
explains the two filters and why the candidate's is sealed).

The sandbox's trusted child sends the listener (``SCM_RIGHTS``) over a socket pair made
for each candidate (:func:`pair`); :class:`Listener` answers one notification at a time
from the harness's select loop (``process._supervise``), so a candidate blocked in a
refused call waits only for that loop. A candidate that makes more than
:data:`MAX_NOTICES` refused calls gets its listener closed: the kernel then answers the
rest ``ENOSYS`` itself, and the verdict says that more calls were refused.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import select
import socket
import struct

from pythoncoder.eval.sandbox import _seccomp

# struct seccomp_notif {u64 id; u32 pid; u32 flags; struct seccomp_data data;} (80 bytes)
# struct seccomp_notif_resp {u64 id; s64 val; s32 error; u32 flags;} (24 bytes)
_NOTIF, _RESP = struct.Struct("=QII64s"), struct.Struct("=QqiI")
_RECV = 0xC0000000 | (_NOTIF.size << 16) | (ord("!") << 8) | 0  # _IOWR('!', 0, notif)
_SEND = 0xC0000000 | (_RESP.size << 16) | (ord("!") << 8) | 1  # _IOWR('!', 1, resp)
MAX_NOTICES = 1000
MAX_NAMED = 6


@functools.cache
def supported() -> bool:
    """The kernel has ``SECCOMP_RET_USER_NOTIF`` (Linux 5.0; asked with
    ``SECCOMP_GET_ACTION_AVAIL``, which loads nothing) on a machine the filter knows;
    elsewhere the filter answers refusals itself and the verdict cannot name them."""
    if _seccomp.program() is None:
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    libc.syscall.restype = ctypes.c_long
    action = ctypes.c_uint32(_seccomp.USER_NOTIF)
    return libc.syscall(ctypes.c_long(_seccomp.number("seccomp")), ctypes.c_long(2),
                        ctypes.c_long(0), ctypes.byref(action)) == 0  # GET_ACTION_AVAIL


def pair() -> tuple[socket.socket, socket.socket]:
    """(the harness's end, the child's end): a datagram pair for the listener's handover."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    return ours, theirs


def receive(sock: socket.socket) -> Listener | None:
    """The listener the child sent (``None``: it sent none, or it died first)."""
    try:
        _, fds, _, _ = socket.recv_fds(sock, 16, 4)
    except (BlockingIOError, OSError):
        return None
    for extra in fds[1:]:
        os.close(extra)
    return Listener(fds[0]) if fds else None


class Listener:
    """A seccomp notification fd: :meth:`serve` answers what is pending."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.refused: list[str] = []  # distinct names, in the order first refused
        self.count = 0

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def serve(self) -> bool:
        """Answer one pending notification; False once the listener is done with (no task
        left under the filter, or past :data:`MAX_NOTICES`: then it is closed)."""
        if self.fd < 0:
            return False
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        events = poller.poll(0)
        if not events or not events[0][1] & select.POLLIN:  # POLLHUP alone: nobody left
            if events:
                self.close()
                return False
            return True
        buf = bytearray(_NOTIF.size)  # the kernel wants it zeroed
        try:
            fcntl.ioctl(self.fd, _RECV, buf, True)
        except OSError as e:  # ENOENT: the caller died or was interrupted meanwhile
            return e.errno in (errno.ENOENT, errno.EINTR)
        notice_id, _, _, data = _NOTIF.unpack(buf)
        self.count += 1
        name = _seccomp.refusal(data)
        if name not in self.refused:
            self.refused.append(name)
        try:
            fcntl.ioctl(self.fd, _SEND, _RESP.pack(notice_id, 0, -_seccomp.errno_for(data), 0))
        except OSError:  # the call is gone (signal, death): nothing to answer
            pass
        if self.count >= MAX_NOTICES:
            self.close()
            return False
        return True

    def summary(self) -> str:
        """``the sandbox refused ptrace, socket(AF_INET)`` (or ``""``)."""
        if not self.refused:
            return ""
        names = self.refused[:MAX_NAMED]
        more = len(self.refused) - len(names)
        text = "the sandbox refused " + ", ".join(names)
        if more > 0:
            text += f" and {more} other call{'s' if more > 1 else ''}"
        if self.count >= MAX_NOTICES:
            text += f" ({MAX_NOTICES}+ refusals; the rest unnamed)"
        return text
