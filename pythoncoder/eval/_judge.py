"""Trusted judge: ``python -I -S -B _judge.py CONTROL_FD UID GID MEMORY``, one per worker.

It runs in its own sandbox (same kernel isolation as a candidate, no writable path), never
executes candidate code and never unpickles anything. For each job the harness sends, on
the ``SOCK_SEQPACKET`` control socket, a JSON header (trusted problem text) and two pipe
descriptors to a freshly started candidate (``SCM_RIGHTS``). The judge

1. reads the candidate's first line (``ready`` or ``FAIL <reason>``);
2. runs the problem's prelude (e.g. HumanEval's prompt with its helpers), binds each
   candidate function name to a proxy, runs the test text and ``check(candidate)``
   (HumanEval) or the asserts (MBPP);
3. each proxy call sends ``("call", name, args, kwargs)`` as plain data and gets back
   plain data (``_wire``): built-in objects made here, so no candidate object can answer
   ``==``; list/dict/set arguments the candidate mutated are copied back;
4. answers ``{"verdict": "passed" | "failed" | "unsupported", "reason": ...}``.
   ``unsupported`` means the test itself passes something that is not plain data (a
   function, an object) to the candidate: the harness then falls back to the weak,
   in-sandbox verdict and labels the result.  Plain data past the wire's caps (which only
   the candidate's own answers, fed back by a test, can reach) is a fail instead, so a
   candidate cannot choose the weak verdict.
"""

import json
import os
import socket
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_WIRE = {"__name__": "_wire"}
if os.path.exists(os.path.join(_HERE, "_wire.pyc")):  # compiled by the harness
    import marshal

    with open(os.path.join(_HERE, "_wire.pyc"), "rb") as _f:
        exec(marshal.loads(_f.read()[16:]), _WIRE)
else:
    with open(os.path.join(_HERE, "_wire.py"), "rb") as _f:
        exec(compile(_f.read(), "_wire.py", "exec"), _WIRE)
encode, decode, frame = _WIRE["encode"], _WIRE["decode"], _WIRE["frame"]
read_frame, write_all, WireError = _WIRE["read_frame"], _WIRE["write_all"], _WIRE["WireError"]
WireLimitError = _WIRE["WireLimitError"]

import builtins  # noqa: E402

_EXCEPTIONS = {
    name: obj for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, Exception)
    # AssertionError would fake the test's own failure; StopIteration raised inside the
    # test's map()/zip() over the candidate would silently end the iteration (a wrong
    # answer read as "all passed"), so those cross as RuntimeError.
    and name not in ("AssertionError", "StopIteration", "StopAsyncIteration")
}


class Unsupported(Exception):
    """The test hands the candidate something that cannot cross as plain data."""


class CandidateGone(Exception):
    pass


def _clean(text, limit=200):
    text = "".join(c if " " <= c <= "~" else "?" for c in str(text))
    return text[:limit]


class Channel:
    def __init__(self, in_fd, out_fd):
        self.in_fd, self.out_fd = in_fd, out_fd

    def first_line(self):
        line = b""
        while not line.endswith(b"\n"):
            c = os.read(self.in_fd, 1)
            if not c:
                raise CandidateGone("the candidate exited before it was ready")
            line += c
            if len(line) > 512:
                raise CandidateGone("the candidate wrote garbage")
        return line[:-1].decode("utf-8", "replace")

    def call(self, name, args, kwargs):
        try:
            payload = encode(("call", name, list(args), dict(kwargs)))
        except WireLimitError:
            # Plain data past a cap can only be built from the candidate's own earlier
            # answers (a test's constants are small): a fail, never the weak fallback,
            # which a candidate could otherwise choose for itself.
            raise CandidateGone(f"an argument to {name} is past the wire's limits") from None
        except WireError as e:
            raise Unsupported(f"argument to {name}: {e}") from None
        try:
            write_all(os.write, self.out_fd, frame(payload))
            reply = decode(read_frame(os.read, self.in_fd))
        except (OSError, EOFError):
            raise CandidateGone(f"the candidate died during a call to {name}") from None
        except WireError as e:
            raise CandidateGone(f"malformed reply from {name}: {e}") from None
        if type(reply) is not tuple or not reply:
            raise CandidateGone(f"malformed reply from {name}")
        if reply[0] == "ok" and len(reply) == 3 and type(reply[2]) is list \
                and len(reply[2]) == len(args):
            for arg, new in zip(args, reply[2]):
                _copy_back(arg, new)
            return reply[1]
        if reply[0] == "raise" and len(reply) == 3 and type(reply[1]) is str:
            # The type crosses (a test may expect e.g. ValueError); the candidate's message
            # does not, so no text of its choosing reaches the results.
            exc_type = _EXCEPTIONS.get(reply[1], RuntimeError)
            raise exc_type(f"raised by {name} in the sandbox")
        if reply[0] == "bad" and len(reply) == 2:
            # fixed text: the reply's description is the candidate's to choose
            raise CandidateGone(f"{name} returned a value that is not plain data")
        raise CandidateGone(f"malformed reply from {name}")


def _copy_back(arg, new):
    """Mirror the candidate's in-place mutation of a list/dict/set argument."""
    if type(arg) is list and type(new) is list and arg != new:
        arg[:] = new
    elif type(arg) is dict and type(new) is dict and arg != new:
        arg.clear()
        arg.update(new)
    elif type(arg) is set and type(new) is set and arg != new:
        arg.clear()
        arg.update(new)


def _proxy(channel, name):
    def candidate(*args, **kwargs):
        return channel.call(name, args, kwargs)

    candidate.__name__ = candidate.__qualname__ = name
    return candidate


def judge(job, channel):
    first = channel.first_line()
    if first != "ready":
        if first.startswith("FAIL "):  # the exception's type only: its text is the candidate's
            name = first[5:].split(":", 1)[0]
            known = name if name in _EXCEPTIONS or name in ("SyntaxError", "AssertionError") \
                else "an exception"
            return "failed", f"the candidate failed to load ({known})"
        return "failed", "the candidate wrote an unexpected first line"
    namespace = {"__name__": "__judge__"}
    proxies = {name: _proxy(channel, name) for name in job["names"]}
    namespace.update(proxies)
    exec(compile(job["prelude"], "<problem>", "exec"), namespace)
    namespace.update(proxies)  # the prompt's stub of the entry point is not the candidate
    exec(compile(job["test"], "<test>", "exec"), namespace)
    if job["entry"] is not None:
        namespace["check"](proxies[job["entry"]])
    return "passed", ""


def main():
    control = socket.socket(fileno=int(sys.argv[1]))
    uid, gid, memory = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    import resource  # before the uid drop: outside bwrap the stdlib may be root-only

    if uid >= 0 and os.getuid() == 0:  # trusted, but it needs no privilege either
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    # Values from a candidate can make a test allocate or loop: bound what that costs.
    for limit, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_NPROC, 0),
                         (resource.RLIMIT_FSIZE, 0), (resource.RLIMIT_NOFILE, 64),
                         (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, 1 << 20, 2)
        except OSError:
            return
        if not data:
            return
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            control.send(json.dumps({"verdict": "failed", "reason": "judge: no channel"})
                         .encode())
            continue
        channel = Channel(*fds)
        try:
            verdict, reason = judge(json.loads(data), channel)
        except Unsupported as e:
            verdict, reason = "unsupported", _clean(e)
        except CandidateGone as e:
            verdict, reason = "failed", _clean(e)
        except BaseException as e:  # the test failed (AssertionError) or errored
            message = _clean(e, 150)
            verdict = "failed"
            reason = f"{type(e).__name__}: {message}" if message else type(e).__name__
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
        control.send(json.dumps({"verdict": verdict, "reason": reason}).encode())


if __name__ == "__main__":
    main()
