"""Plain-data codec for the sandbox's process boundary (no pickle, no code).

Only ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes`` and
``list``/``tuple``/``dict``/``set``/``frozenset`` of these cross, in a tagged text-like
encoding. The encoder sends exact types, a subclass of one (``IntEnum``, ``OrderedDict``, a
namedtuple...) as its plain base value, and refuses anything else; the decoder validates
every byte, caps depth, item count and size, and
builds fresh built-in objects. It is loaded by file path in the sandboxed candidate and
judge (stdlib only, no imports at load: :func:`digest` imports ``hashlib``, ``marshal``
and ``array`` when called) and imported by the harness.

An answer too large to cross (a list or tuple past ``MAX_ITEMS`` or ``MAX_FRAME``) crosses
as its :func:`digest` instead (the judge decides whether a digest can stand for it: see
``_judge.py``); :func:`past_caps` tells, without walking it in Python, that one must.

Frame: ``<decimal length>\\n<payload>``. Payload grammar (lengths are decimal ASCII
followed by ``:``)::

    N | T | F | i<hex digits>; | f<float.hex()>; | c<hex>;<hex>; | s<n>:<utf-8> | b<n>:<bytes>
    | l<n>: item*n | t<n>: item*n | e<n>: item*n | z<n>: item*n | d<n>: (key value)*n
"""

MAX_FRAME = 64 * 1024 * 1024
MAX_DEPTH = 64
MAX_ITEMS = 4 * 1024 * 1024  # HumanEval+ asks for lists of a million numbers
MAX_INT_DIGITS = 1 << 20  # hexadecimal digits (4 million bits): no str() digit limit applies


class WireError(ValueError):
    """Not plain data, or a malformed / oversized frame."""


class WireLimitError(WireError):
    """Plain data past a cap of the encoder (size, depth, item count, integer digits)."""


def encode(value) -> bytes:
    out = []
    count = [0]
    _enc(value, out, 0, count)
    payload = b"".join(out)
    if len(payload) > MAX_FRAME:
        raise WireLimitError("value too large to send")
    return payload


def _enc(v, out, depth, count):
    if depth > MAX_DEPTH:
        raise WireLimitError("value nested too deeply")
    count[0] += 1
    if count[0] > MAX_ITEMS:
        raise WireLimitError("value has too many items")
    t = type(v)
    if v is None:
        out.append(b"N")
    elif v is True:
        out.append(b"T")
    elif v is False:
        out.append(b"F")
    elif t is int:
        text = int.__format__(v, "x")  # hex: exact, linear, outside int<->str's cap
        if len(text) > MAX_INT_DIGITS + 1:
            raise WireLimitError("integer too large to send")
        out.append(b"i" + text.encode("ascii") + b";")
    elif t is float:
        out.append(b"f" + float.hex(v).encode("ascii") + b";")
    elif t is complex:
        out.append(b"c" + float.hex(v.real).encode("ascii") + b";"
                   + float.hex(v.imag).encode("ascii") + b";")
    elif t is str:
        data = str.encode(v, "utf-8", "surrogatepass")
        out.append(b"s" + str(len(data)).encode("ascii") + b":" + data)
    elif t is bytes:
        out.append(b"b" + str(len(v)).encode("ascii") + b":" + v)
    elif t is list or t is tuple or t is set or t is frozenset:
        tag = {list: b"l", tuple: b"t", set: b"e", frozenset: b"z"}[t]
        items = list(v) if t in (set, frozenset) else v
        out.append(tag + str(len(items)).encode("ascii") + b":")
        for item in items:
            _enc(item, out, depth + 1, count)
    elif t is dict:
        items = list(dict.items(v))
        out.append(b"d" + str(len(items)).encode("ascii") + b":")
        for key, item in items:
            _enc(key, out, depth + 1, count)
            _enc(item, out, depth + 1, count)
    else:
        base = _plain_base(v)
        if base is None:
            raise WireError(f"not plain data: {t.__name__}")
        # A subclass of a plain type (IntEnum, OrderedDict, Counter, a namedtuple...)
        # crosses as its plain base value: what arrives is always an exact built-in.
        count[0] -= 1
        _enc(base, out, depth, count)


def _plain_base(v):
    for base, convert in ((int, int.__index__), (float, float.__float__),
                          (complex, complex.__complex__), (str, str.__str__),
                          (bytes, bytes.__bytes__), (tuple, tuple), (list, list),
                          (dict, dict), (set, set), (frozenset, frozenset)):
        if isinstance(v, base):
            out = convert(v)
            return out if type(out) is base else None
    return None


def decode(payload: bytes):
    if type(payload) is not bytes or len(payload) > MAX_FRAME:
        raise WireError("frame too large or not bytes")
    dec = _Decoder(payload)
    value = dec.value(0)
    if dec.pos != len(payload):
        raise WireError("trailing bytes after the value")
    return value


class _Decoder:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.items = data, 0, 0

    def _until(self, stop: bytes) -> bytes:
        end = self.data.find(stop, self.pos, self.pos + MAX_INT_DIGITS + 9)
        if end < 0:
            raise WireError("malformed frame")
        chunk = self.data[self.pos:end]
        self.pos = end + 1
        return chunk

    def _length(self) -> int:
        digits = self._until(b":")
        if not digits.isdigit() or len(digits) > 9:
            raise WireError("malformed length")
        return int(digits)

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise WireError("truncated frame")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def _float(self) -> float:
        try:
            return float.fromhex(self._until(b";").decode("ascii"))
        except (UnicodeDecodeError, ValueError) as e:
            raise WireError("malformed float") from e

    def value(self, depth: int):
        if depth > MAX_DEPTH:
            raise WireError("value nested too deeply")
        self.items += 1
        if self.items > MAX_ITEMS:
            raise WireError("too many items")
        tag = self._take(1)
        if tag == b"N":
            return None
        if tag == b"T":
            return True
        if tag == b"F":
            return False
        if tag == b"i":
            digits = self._until(b";")
            body = digits[1:] if digits[:1] == b"-" else digits
            if not body or body.strip(b"0123456789abcdef"):
                raise WireError("malformed integer")
            return int(digits, 16)
        if tag == b"f":
            return self._float()
        if tag == b"c":
            return complex(self._float(), self._float())
        if tag == b"s":
            try:
                return self._take(self._length()).decode("utf-8", "surrogatepass")
            except UnicodeDecodeError as e:
                raise WireError("malformed string") from e
        if tag == b"b":
            return self._take(self._length())
        if tag in (b"l", b"t", b"e", b"z"):
            n = self._length()
            if n > MAX_ITEMS:
                raise WireError("too many items")
            items = [self.value(depth + 1) for _ in range(n)]
            if tag == b"l":
                return items
            if tag == b"t":
                return tuple(items)
            try:
                return set(items) if tag == b"e" else frozenset(items)
            except TypeError as e:
                raise WireError("unhashable set element") from e
        if tag == b"d":
            n = self._length()
            if n > MAX_ITEMS:
                raise WireError("too many items")
            out = {}
            for _ in range(n):
                key = self.value(depth + 1)
                try:
                    out[key] = self.value(depth + 1)
                except TypeError as e:
                    raise WireError("unhashable dict key") from e
            return out
        raise WireError("unknown tag")


DIGEST_CHUNK = 4096  # items per marshal call of an "exact" digest


def past_caps(value) -> bool:
    """Whether ``value`` (a list or tuple) is surely past ``MAX_ITEMS``, told at C speed:
    its items, or, when every item is a tuple, its items and theirs (each counts at least
    one). False when unsure: the value then tries the ordinary encoding first."""
    if type(value) is not list and type(value) is not tuple:
        return False
    if len(value) >= MAX_ITEMS:
        return True
    if set(map(type, value)) != {tuple}:
        return False
    return 1 + len(value) + sum(map(len, value)) > MAX_ITEMS


def str_items(value, exact=False) -> bool:
    """Every item a ``str``, or every item a tuple of ``str``: the candidate's choice of
    the ``"hash"`` digest, told at C speed (``"".join`` raises at the first item with a
    non-str). ``exact``: of exactly ``str``, no subclass, every leaf's type looked at
    (about 4x slower): the judge's rule, worked out off the candidate's clock."""
    types = set(map(type, value))
    if types == {str}:
        return True
    if types != {tuple}:
        return False
    if exact:
        from itertools import chain

        return set(map(type, chain.from_iterable(value))) == {str}
    try:
        for _ in map("".join, value):  # TypeError at the first item with a non-str
            pass
    except TypeError:
        return False
    return True


def digest(value, kind=None):
    """``(kind, sha256 bytes)`` of a list or tuple too large to cross, over its items in
    order (its type and length travel beside it).

    ``"hash"``: over ``hash()`` of each item, a C-speed walk of the ``str`` leaves'
    cached hashes (SipHash keyed by the interpreter's hash seed: the harness starts the
    candidate and the judge with the same ``PYTHONHASHSEED``); chosen when every item is a
    str or a tuple of strs. ``"exact"``: over ``marshal`` version 2 of the items (an exact,
    type-tagged encoding with no back-references, so equal values made differently give
    the same bytes), for any other shape. Which digest the judge accepts for which
    expected answer is the judge's rule (``_judge._digest_record``), not this function's.
    """
    import hashlib
    import marshal

    if kind is None:
        kind = "hash" if str_items(value) else "exact"
    h = hashlib.sha256()
    if kind == "hash":
        from array import array

        h.update(array("q", map(hash, value)).tobytes())
    elif kind == "exact":
        for at in range(0, len(value), DIGEST_CHUNK):
            h.update(marshal.dumps(value[at:at + DIGEST_CHUNK], 2))
    else:
        raise WireError(f"unknown digest {kind!r}")
    return kind, h.digest()


def frame(payload: bytes) -> bytes:
    return str(len(payload)).encode("ascii") + b"\n" + payload


def read_frame(read, fd: int) -> bytes:
    """One frame from ``fd`` with ``read`` (``os.read``); ``EOFError`` at end of stream."""
    head = b""
    while not head.endswith(b"\n"):
        c = read(fd, 1)
        if not c:
            raise EOFError("channel closed")
        head += c
        if len(head) > 10:
            raise WireError("malformed frame header")
    size = head[:-1]
    if not size.isdigit() or int(size) > MAX_FRAME:
        raise WireError("frame too large")
    size = int(size)
    parts, got = [], 0
    while got < size:
        chunk = read(fd, min(1 << 20, size - got))
        if not chunk:
            raise EOFError("channel closed mid-frame")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def write_all(write, fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[write(fd, view):]


def printable(text, cap=200) -> str:
    """``text`` as printable ASCII only (anything else ``?``), one line, at most ``cap``
    characters: every reason that reaches a result, from the judge or the harness."""
    return "".join(c if " " <= c <= "~" else "?" for c in str(text))[:cap]
