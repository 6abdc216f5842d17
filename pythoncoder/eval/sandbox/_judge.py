"""Trusted judge: ``python -sP -S -B _judge.py CONTROL_FD UID GID MEMORY``, one per worker.

It runs in its own sandbox (same kernel isolation as a candidate, no writable path), never
executes candidate code and never unpickles anything. For each job the harness sends, on
the ``SOCK_SEQPACKET`` control socket, a JSON header (trusted problem text) and two pipe
descriptors to a freshly started candidate (``SCM_RIGHTS``). The judge

1. traces the test against the problem's reference solution (cached per problem): the
   prelude (e.g. HumanEval's prompt with its helpers), the test text and ``check(...)``
   (HumanEval) or the asserts (MBPP), each call of a candidate function recorded as
   ``("call", name, args, kwargs)`` plain data (``_wire``), ``random`` seeded the same;
2. reads the candidate's first line (``ready`` or ``FAIL <reason>``) and sends it every
   traced call, whatever it answers, collecting the plain-data replies;
3. runs the test again with proxies that return those replies (built-in objects made
   here, so no candidate object can answer ``==``; list/dict/set arguments the candidate
   mutated are copied back); a call unlike the traced one (built from a wrong answer)
   fails. So the candidate is never told, by being called again, that an answer was
   right. A job without a reference calls the candidate live instead;
4. answers ``{"verdict": "passed" | "failed" | "timed out" | "unsupported", "reason": ...}``.

A *differential* job (``"mode": "differential"``: HumanEval+, MBPP+) has no test text: its
inputs come after the header as one ``_wire`` value (a list of argument lists). The judge
runs the reference on each (cached per problem), timing it; each input's time limit is
``max(min_time_limit, time_factor * reference time)`` as EvalPlus sets it, and the sample's
whole budget (sent to the harness with ``traced``) ``min(task_cap_s, sum of limits) + 1``.
The candidate then answers every input in turn, each within its limit, whatever it
answered before; afterwards each answer is compared with the reference's as EvalPlus does
(exact, or within ``atol``/``rtol 1e-7`` for floats; a few problems have their own oracle).
An answer too large to cross (a list or tuple past the wire's caps: Mbpp/255 answers 1.66
million 77-tuples of strings) comes as its digest (``_wire.digest``) and is compared with
the expected answer's, worked out once per problem with the answers. Which digest may
stand for which expected answer, and why a candidate cannot forge one, is
``_digest_record``'s docstring: keyed ``str`` hashes (the candidate and the judge share
the harness's PYTHONHASHSEED) for strings and tuples of strings; exact ``marshal`` bytes
for other lists and tuples of numbers, strings, bytes, bools and None; no digest (the
answer fails, as before) for anything else, for NaN, or where a tolerance applies.
   ``unsupported`` means the test itself passes something that is not plain data (a
   function, an object) to the candidate: the harness then falls back to the weak,
   in-sandbox verdict and labels the result.  Plain data past the wire's caps (which only
   the candidate's own answers, fed back by a test, can reach) is a fail instead, so a
   candidate cannot choose the weak verdict.
"""

import itertools
import json
import math
import os
import select
import socket
import sys
import time

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
past_caps, digest, str_items = _WIRE["past_caps"], _WIRE["digest"], _WIRE["str_items"]
_clean = _WIRE["printable"]  # the harness's sanitize, the same function

import builtins  # noqa: E402

_EXCEPTIONS = {
    name: obj for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, Exception)
    # AssertionError would fake the test's own failure; StopIteration raised inside the
    # test's map()/zip() over the candidate would silently end the iteration (a wrong
    # answer read as "all passed"), so those cross as RuntimeError.
    and name not in ("AssertionError", "StopIteration", "StopAsyncIteration")
}


# Both derive from BaseException: a test's own ``except Exception`` (around a call it
# expects to raise) must not swallow them and read a dead or diverged candidate as a pass.
class Unsupported(BaseException):
    """The test hands the candidate something that cannot cross as plain data."""


class CandidateGone(BaseException):
    """The candidate died, answered garbage, or the test's calls left the trace."""


class Channel:
    def __init__(self, in_fd, out_fd):
        self.in_fd, self.out_fd = in_fd, out_fd

    def close(self):
        """Close both pipes once: the candidate then reads EOF and exits."""
        for fd in (self.in_fd, self.out_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.in_fd = self.out_fd = None

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

    def exchange(self, payload, limit=None):
        """Send one call (an encoded payload) and return the decoded reply; ``_LATE`` if
        it has not fully arrived ``limit`` seconds after the call was sent."""
        read = os.read
        if limit is not None:
            deadline = time.monotonic() + limit

            def read(fd, n):
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    raise _Late
                return os.read(fd, n)
        try:
            write_all(os.write, self.out_fd, frame(payload))
            return decode(read_frame(read, self.in_fd))
        except _Late:
            return _LATE
        except (OSError, EOFError):
            return _GONE
        except WireError:
            return _MALFORMED

    def call(self, name, args, kwargs):
        """A live call (no reference to trace): send, wait, interpret."""
        return _interpret(name, args, self.exchange(_encode_call(name, args, kwargs)))


_GONE, _MALFORMED, _LATE = ("gone",), ("malformed",), ("late",)


class _Late(Exception):
    pass


def _encode_call(name, args, kwargs):
    try:
        return encode(("call", name, list(args), dict(kwargs)))
    except WireLimitError:
        # Plain data past a cap can only be built from the candidate's own earlier
        # answers (a test's constants are small): a fail, never the weak fallback,
        # which a candidate could otherwise choose for itself.
        raise CandidateGone(f"an argument to {name} is past the wire's limits") from None
    except WireError as e:
        raise Unsupported(f"argument to {name}: {e}") from None


def _interpret(name, args, reply):
    """What a call of the test returns (or raises), given the candidate's reply."""
    if reply is _GONE:
        raise CandidateGone(f"the candidate died during a call to {name}")
    if reply is _MALFORMED or type(reply) is not tuple or not reply:
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
    if reply[0] == "digest":  # only a differential job compares an answer by its digest
        raise CandidateGone(f"{name} returned a value too large to cross to the judge")
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


def _load_failure(first):
    if first.startswith("FAIL "):  # the exception's type only: its text is the candidate's
        name = first[5:].split(":", 1)[0]
        known = name if name in _EXCEPTIONS or name in ("SyntaxError", "AssertionError") \
            else "an exception"
        return "failed", f"the candidate failed to load ({known})"
    return "failed", "the candidate wrote an unexpected first line"


_SEED = 20210707  # the test program's random numbers: the same in every run of it


def _run_test(job, proxies):
    """The problem's test with ``proxies`` standing for the candidate's functions."""
    import random

    random.seed(_SEED)  # unseeded tests (HumanEval/38, /53): the same calls every run
    namespace = {"__name__": "__judge__"}
    namespace.update(proxies)
    exec(compile(job["prelude"], "<problem>", "exec"), namespace)
    namespace.update(proxies)  # the prompt's stub of the entry point is not the candidate
    exec(compile(job["test"], "<test>", "exec"), namespace)
    if job["entry"] is not None:
        namespace["check"](proxies[job["entry"]])


_TRACES = {}  # the calls of each problem's test, made against its reference solution
_TRACE_CACHE = 256


def trace(job):
    """The calls (encoded) the test makes when the reference solution answers them.

    This is the whole call sequence every candidate of the problem then gets, whatever
    it answers; ``Unsupported`` if the test hands the reference non-plain data."""
    key = json.dumps([job["prelude"], job["test"], job["names"], job["entry"],
                      job["reference"]])
    if key in _TRACES:
        calls = _TRACES[key]
        if isinstance(calls, Unsupported):
            raise calls
        return calls
    reference = {"__name__": "__reference__"}
    calls = []

    def recorder(name):
        def candidate(*args, **kwargs):
            payload = _encode_call(name, args, kwargs)
            calls.append(payload)
            fn = reference.get(name)
            if not callable(fn):
                raise NameError(f"name {name!r} is not defined")
            _, _, fresh, fresh_kwargs = decode(payload)  # what a candidate would get
            result = fn(*fresh, **fresh_kwargs)
            for arg, new in zip(args, fresh):
                _copy_back(arg, new)
            try:
                return decode(encode(result))
            except WireError:
                raise Unsupported(f"the reference {name} returns non-plain data") from None

        candidate.__name__ = candidate.__qualname__ = name
        return candidate

    outcome = calls
    try:
        exec(compile(job["reference"], "<reference>", "exec"), reference)
        _run_test(job, {name: recorder(name) for name in job["names"]})
    except Unsupported as e:
        outcome = e
    except BaseException:  # noqa: S110 - a failing reference ends the trace where it failed
        pass
    if len(_TRACES) >= _TRACE_CACHE:
        _TRACES.pop(next(iter(_TRACES)))
    _TRACES[key] = outcome
    if isinstance(outcome, Unsupported):
        raise outcome
    return calls


def judge(job, channel, traced=lambda: None):
    """The verdict for one candidate.

    With a reference solution (``job["reference"]``) the candidate's calls do not depend
    on its answers: the test's call sequence is traced against the reference first, the
    candidate then answers every one of those calls, and only afterwards the test runs
    again on the recorded answers (a call that differs from the trace, because the test
    built it from an earlier wrong answer, fails). Being called again therefore says
    nothing about an earlier answer. Without a reference the test calls the candidate
    live, as it runs (a failed check stops the calls)."""
    calls = trace(job) if job.get("reference") is not None else None
    traced()  # the harness starts the sample's clock again: the reference's time is not its
    first = channel.first_line()
    if first != "ready":
        return _load_failure(first)
    if calls is None:
        _run_test(job, {name: _proxy(channel, name) for name in job["names"]})
        return "passed", ""
    replies = []
    for payload in calls:
        reply = channel.exchange(payload)
        replies.append(reply)
        if reply is _GONE:
            break
    # The candidate exits now, before the verdict is worked out: when it dies says
    # nothing about its answers either.
    channel.close()
    position = [0]

    def replayer(name):
        def candidate(*args, **kwargs):
            payload = _encode_call(name, args, kwargs)
            i = position[0]
            position[0] += 1
            if i >= len(replies) and i < len(calls) and payload == calls[i]:
                raise CandidateGone(f"the candidate died during a call to {name}")
            if i >= len(calls) or payload != calls[i]:
                raise CandidateGone(f"the test called {name} with arguments built from an "
                                    "earlier wrong answer")
            return _interpret(name, args, replies[i])

        candidate.__name__ = candidate.__qualname__ = name
        return candidate

    _run_test(job, {name: replayer(name) for name in job["names"]})
    return "passed", ""


# ---- differential testing (HumanEval+, MBPP+) ----------------------------------------

_EXPECTED = {}  # per problem: the calls, the reference's answers and each input's limit
_EXPECTED_CACHE = 64
_RTOL = 1e-7  # EvalPlus compares floats as np.allclose(out, exp, rtol=1e-7, atol=atol)


def _is_floats(x):
    """EvalPlus's test for a float answer: a float, or a non-empty list/tuple of floats."""
    if type(x) is float:
        return True
    return type(x) in (list, tuple) and len(x) > 0 and all(type(i) is float for i in x)


def _close(out, exp, atol):
    """``np.allclose(out, exp, rtol=1e-7, atol=atol)`` for the shapes EvalPlus meets: a
    number, or a list/tuple of numbers of the same type and length (NaN never close)."""
    if type(out) is not type(exp):
        return False
    if type(exp) in (list, tuple):
        return len(out) == len(exp) and all(_close_number(o, e, atol)
                                            for o, e in zip(out, exp))
    return _close_number(out, exp, atol)


def _close_number(o, e, atol):
    if type(o) not in (int, float, bool) or type(e) not in (int, float, bool):
        return False
    if o == e:  # equal infinities included
        return True
    if math.isnan(o) or math.isnan(e) or math.isinf(o) or math.isinf(e):
        return False
    return abs(o - e) <= atol + _RTOL * abs(e)


def _poly(xs, x):
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))


def _surface_area(base_edge, height):
    """Mbpp/581 read with the height perpendicular to the base, rounded."""
    slant = math.sqrt((base_edge / 2) ** 2 + height ** 2)
    return round(base_edge ** 2 + 2 * base_edge * slant)


def _digit_distance(a, b):
    """Mbpp/558 with the shorter number padded with leading zeros."""
    x, y = str(a), str(b)
    width = max(len(x), len(y))
    return sum(abs(int(p) - int(q)) for p, q in zip(x.zfill(width), y.zfill(width)))


def _agrees(oracle, out, exp, args, atol):
    """Whether the candidate's answer ``out`` to ``args`` is right (EvalPlus's rules)."""
    if oracle == "poly_root":  # HumanEval/32: any root of the polynomial will do
        return type(out) in (int, float) and abs(_poly(*args, out)) <= atol
    if oracle == "not_none":  # the reference's answer is only known as None / not None
        return out == exp if type(out) is bool else exp == (out is not None)
    if oracle == "set_equal":
        try:
            return set(out) == set(exp)
        except TypeError:
            return False
    if out == exp:
        return True
    if oracle == "any":
        return True
    if oracle == "or_zero" and out == 0:
        return True
    if oracle == "surface_area":
        try:
            return abs(out - _surface_area(*args)) <= atol
        except (TypeError, ValueError, OverflowError):
            return False
    if oracle == "digit_distance":
        return out == _digit_distance(*args)
    if atol == 0 and _is_floats(exp):
        atol = 1e-6  # EvalPlus compares float answers within 1e-6 when atol is 0
    return atol != 0 and _close(out, exp, atol)


_EXACT_LEAVES = {str, bytes, int, float, complex, bool, type(None)}
_NOT_YET = object()  # an answer's digest record, not worked out yet


def _exact_eligible(value):
    """Lists and tuples (any depth up to the wire's) of numbers, strings, bytes, bools and
    None, no NaN: where ``marshal``'s exact bytes agree only for equal values. Not a flat
    list of floats (EvalPlus compares those within a tolerance)."""
    if _is_floats(value):
        return False
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > _WIRE["MAX_DEPTH"]:
            return False
        types = set(map(type, itertools.chain.from_iterable(level)))
        if not types <= _EXACT_LEAVES | {list, tuple}:
            return False
        if (float in types or complex in types) and any(
                x != x for x in itertools.chain.from_iterable(level)
                if type(x) is float or type(x) is complex):
            return False  # NaN: never equal, though its bytes are
        level = [x for x in itertools.chain.from_iterable(level)
                 if type(x) is list or type(x) is tuple] if types & {list, tuple} else []
    return True


def _digest_record(exp):
    """``(kind, type name, len, sha256)`` standing for the expected answer ``exp`` when a
    candidate's answer cannot cross, or None where no digest may stand for it.

    Why a digest can be trusted though the candidate computes its own: to send the
    expected digest it must know the expected answer's item hashes (or exact bytes), that
    is, compute the right answer; it never sees them. An accidental match of a wrong
    answer needs keyed 64-bit SipHash values to collide (about 2**-64 per item) or
    sha256 to. So the ``"hash"`` digest is accepted only where every hashed leaf is a
    ``str``, whose hash is keyed by the seed both interpreters share: not ints or floats
    (``hash(-1) == hash(-2)``, ints hash modulo 2**61 - 1: an off-by-one answer would
    agree), not bytes (``hash(b"a") == hash("a")``), not None (its hash is its address
    in 3.11, another in each process). Other plain shapes get the ``"exact"`` digest,
    over ``marshal`` bytes (stricter than ``==``: ``1``, ``1.0`` and ``True`` differ,
    as do ``0.0`` and ``-0.0``: such a right answer fails, never the reverse)."""
    if type(exp) is not list and type(exp) is not tuple:
        return None
    if str_items(exp, exact=True):
        kind = "hash"
    elif _exact_eligible(exp):
        kind = "exact"
    else:
        return None
    return (kind, type(exp).__name__, len(exp), digest(exp, kind)[1])


def _digest_agrees(record, reply, atol):
    """True/False: the candidate's digest reply is/is not the expected answer's; None
    where no digest may stand for the expected answer (it then cannot cross)."""
    if record is None or (atol != 0 and record[0] != "hash"):
        return None
    return tuple(reply[1:5]) == record


def expected(job, data):
    """The calls, the reference's answers and each input's time limit for one problem;
    and each answer's digest record (``_digest_record``) where it is surely past the
    wire's caps, worked out here once, not on a candidate's clock (others when needed)."""
    key = (data, job["reference"], job["entry"], job.get("oracle"),
           job["min_time_limit"], job["time_factor"])
    if key in _EXPECTED:
        return _EXPECTED[key]
    inputs = decode(data)
    entry = job["entry"]
    namespace = {"__name__": "__reference__"}
    exec(compile(job["reference"], "<reference>", "exec"), namespace)
    fn = namespace[entry]
    calls, answers, limits, records = [], [], [], []
    for args in inputs:
        calls.append(_encode_call(entry, args, {}))
        fresh = decode(encode(list(args)))  # the reference may mutate its arguments
        start = time.perf_counter()
        out = fn(*fresh)
        elapsed = time.perf_counter() - start
        answers.append(out is not None if job.get("oracle") == "not_none" else out)
        limits.append(max(job["min_time_limit"], job["time_factor"] * elapsed))
        plain = job.get("oracle") is None
        records.append(_digest_record(out) if plain and past_caps(out) else _NOT_YET)
    if len(_EXPECTED) >= _EXPECTED_CACHE:
        _EXPECTED.pop(next(iter(_EXPECTED)))
    _EXPECTED[key] = outcome = (calls, inputs, answers, limits, records)
    return outcome


def differential(job, data, channel, traced):
    """The verdict of one candidate on one problem's inputs (base or plus)."""
    calls, inputs, answers, limits, records = expected(job, data)
    traced(min(job["task_cap_s"], sum(limits)) + 1)
    first = channel.first_line()
    if first != "ready":
        return _load_failure(first)
    part, oracle = job.get("part", "test"), job.get("oracle")
    replies = []
    for payload, limit in zip(calls, limits):  # every input, whatever the answers so far
        reply = channel.exchange(payload, limit)
        if reply is _GONE or reply is _LATE:
            break
        replies.append(reply)
    channel.close()
    for i, (args, exp) in enumerate(zip(inputs, answers)):
        where = f"{part} input {i + 1} of {len(inputs)}"
        if i >= len(replies):
            if reply is _LATE:
                return "timed out", f"{where}: no answer within {limits[i]:.3g} s"
            return "failed", f"{where}: the candidate died"
        r = replies[i]
        if type(r) is tuple and len(r) == 6 and r[0] == "digest":
            if oracle in ("not_none", "any"):
                r = ("ok", object(), [])  # an answer too large to cross is not None
            elif oracle is None:
                if records[i] is _NOT_YET:  # past MAX_FRAME only: rare, worked out now
                    records[i] = _digest_record(exp)
                agrees = _digest_agrees(records[i], r, job["atol"])
                if agrees is False:
                    return "failed", f"{where}: wrong answer (compared by digest)"
                if agrees:
                    continue
        if type(r) is tuple and len(r) == 2 and r[0] == "bad" and oracle == "not_none":
            r = ("ok", object(), [])  # an answer that cannot cross is not None
        if type(r) is not tuple or len(r) != 3 or r[0] not in ("ok", "raise"):
            return "failed", (f"{where}: the answer cannot cross to the judge (not plain "
                              "data, or past the wire's limits)")
        if r[0] == "raise":
            name = r[1] if type(r[1]) is str and r[1] in _EXCEPTIONS else "an exception"
            return "failed", f"{where}: raised {name}"
        if not _agrees(oracle, r[1], exp, args, job["atol"]):
            return "failed", f"{where}: wrong answer"
    return "passed", ""


def _receive(control):
    """One job: ``<header bytes> <data bytes>\n`` then the header (JSON) and the data,
    over as many messages as it takes; the two pipe descriptors come with the first."""
    first, fds, _, _ = socket.recv_fds(control, 1 << 16, 2)
    if not first:
        return None, None, fds
    line, _, rest = first.partition(b"\n")
    sizes = line.split(b" ")
    if len(sizes) != 2 or not all(x.isdigit() for x in sizes):
        return {}, b"", fds
    n_header, n_data = int(sizes[0]), int(sizes[1])
    parts, got = [rest], len(rest)
    while got < n_header + n_data:
        chunk = control.recv(1 << 16)
        if not chunk:
            return None, None, fds
        parts.append(chunk)
        got += len(chunk)
    body = b"".join(parts)
    return json.loads(body[:n_header]), body[n_header:], fds


def main():
    control = socket.socket(fileno=int(sys.argv[1]))
    uid, gid, memory = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    import array  # noqa: F401 - before the uid drop: outside bwrap the stdlib may be
    import hashlib  # noqa: F401 - root-only (a 0700 parent); these two for _wire.digest,
    import random  # noqa: F401 - the tests' random (seeded per run)
    import resource

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
            job, data, fds = _receive(control)
        except (OSError, ValueError):
            return
        if job is None:
            return
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            control.send(json.dumps({"verdict": "failed", "reason": "judge: no channel"})
                         .encode())
            continue
        channel = Channel(*fds)

        def traced(budget=None):  # the harness restarts the sample's clock (at budget s)
            control.send(b"traced" if budget is None else b"traced %.6f" % budget)

        try:
            if job.get("mode") == "differential":
                verdict, reason = differential(job, data, channel, traced)
            else:
                verdict, reason = judge(job, channel, traced)
        except Unsupported as e:
            verdict, reason = "unsupported", _clean(e)
        except CandidateGone as e:
            verdict, reason = "failed", _clean(e)
        except BaseException as e:  # the test failed (AssertionError) or errored
            message = _clean(e, 150)
            verdict = "failed"
            reason = f"{type(e).__name__}: {message}" if message else type(e).__name__
        finally:
            channel.close()
        control.send(json.dumps({"verdict": verdict, "reason": reason}).encode())


if __name__ == "__main__":
    main()
