"""Candidate side of the sandbox (``python -sP -S -B _sandbox_child.py``: ``-I`` less its
``-E``, so that the harness's PYTHONHASHSEED applies; see ``isolate.PYTHON_FLAGS``).

Started (usually ahead of time) inside the kernel sandbox that ``sandbox/`` builds, as a
script in a fresh interpreter; never imported by the package. Trusted code, run before
any candidate code:

0. reads its set-up from the first line of stdin (``OUT IN UID GID WORK WORK_BYTES
   WORK_INODES NOTIFY SECCOMP_NR PROGRAM``; never argv, so no host path is on a command
   line); with ``WORK_BYTES`` (root harness, bwrap) mounts ``WORK`` as a tmpfs capped in
   bytes and inodes while it still has its capabilities;
1. drops to ``UID``/``GID`` if it is root (bubblewrap run by root keeps root until here;
   ``setuid`` then clears every capability; ``no_new_privs`` is already set by bwrap)
   and enters the per-sample work directory; with ``NOTIFY`` (a socket, not ``-1``) loads
   the sealed seccomp ``PROGRAM`` (hex) with a listener and sends the listener to the
   harness, which then names each refused call (``_seccomp.py``); if that fails no
   candidate code runs;
2. reads ``MODE NONCE LIMITED\\n`` + the program source from stdin until EOF and points
   fd 0 at ``/dev/null``; unless ``LIMITED`` is ``1`` (the harness already lowered this
   process's rlimits with ``prlimit``), lowers the rlimits itself (CPU, address space,
   file size, processes, open files, no cores), before any candidate code runs;
3. ``MODE == "serve"``: runs the source (problem prompt + completion), reports ``ready``
   (or the error) on ``OUT_FD``, then answers calls ``(name, args, kwargs)`` from the
   trusted judge on ``IN_FD`` with plain data only (``_wire``). A list or tuple too
   large to cross (past the wire's caps, told at C speed by ``_wire.past_caps`` or by
   the encoder) is answered ``("digest", kind, type, len, sha256, args)`` instead
   (``_wire.digest``); the judge alone decides whether a digest may stand for the
   expected answer. The verdict is the judge's, in another process; nothing here can
   forge it.
   ``MODE == "run"`` (the *weak* mode, for problems whose tests cannot cross a process
   boundary): runs the whole program and writes ``PASS <nonce>`` to ``OUT_FD`` if it
   ends without raising. That verdict is decided in the candidate's own interpreter and
   can be forged by code written against it; results say so (``verdict: in-sandbox``).

No Python-level guard is installed: an audit hook in the same interpreter is not a
boundary. Containment is the kernel's (namespaces, uid, rlimits) in ``sandbox/``.
"""

import os
import sys


def _set_limits(tokens):
    """The harness's rlimits, ``NAME:soft:hard`` each (``resource.RLIMIT_<NAME>``)."""
    import resource  # only when the harness could not set them (saves a module load)

    for token in tokens:
        name, soft, hard = token.split(":")
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (int(soft), int(hard)))


def _describe(exc):
    name = type(exc).__name__
    try:
        message = str(exc)
    except BaseException:  # a hostile __str__
        message = "<unprintable>"
    text = f"{name}: {message}" if message else name
    return text.replace("\n", " ")[:300]


def _read_wire():
    """The codec's bytecode (``_wire.pyc``, made by the harness) or its source."""
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("_wire.pyc", "_wire.py"):
        try:
            with open(os.path.join(here, name), "rb") as f:  # read while still root
                return name, f.read()
        except OSError:
            continue
    raise FileNotFoundError("_wire.py")


def _digest_reply(digest, result, back):
    """``("digest", kind, "list" | "tuple", len, sha256, back)``: an answer too large to
    cross, as ``_wire.digest``; ``("bad", ...)`` if even that cannot be made."""
    try:
        kind, value = digest(result)
        return ("digest", kind, type(result).__name__, len(result), value, back)
    except BaseException as exc:
        return ("bad", _describe(exc))


def _serve(namespace, wire_source, out_fd, in_fd, write, exit_now):
    import marshal

    wire = {"__name__": "_wire"}
    name, data = wire_source
    exec(marshal.loads(data[16:]) if name.endswith("c") else compile(data, name, "exec"), wire)
    encode, decode, frame = wire["encode"], wire["decode"], wire["frame"]
    read_frame, write_all = wire["read_frame"], wire["write_all"]
    past_caps, digest = wire["past_caps"], wire["digest"]
    read = os.read

    def send(value):
        try:
            data = encode(value)
        except BaseException as exc:  # not plain data: say so, as plain data
            data = encode(("bad", _describe(exc)))
        write_all(write, out_fd, frame(data))

    while True:
        try:
            message = decode(read_frame(read, in_fd))
            _, name, args, kwargs = message
        except BaseException:
            exit_now(0)  # the judge is done (or sent something unexpected)
        fn = namespace.get(name)
        reply = None
        try:
            if not callable(fn):
                raise NameError(f"name {name!r} is not defined")
            result = fn(*args, **kwargs)
            back = [a if type(a) in (list, dict, set) else None for a in args]
            reply = ("ok", result, back)
            if past_caps(result):  # told at C speed: no walk of millions of items first
                reply = _digest_reply(digest, result, back)
            encode(reply)  # raises on non-plain data, reported below
        except BaseException as exc:
            if isinstance(exc, wire["WireLimitError"]) and reply is not None \
                    and reply[0] == "ok" and type(result) in (list, tuple):
                reply = _digest_reply(digest, result, back)  # past MAX_FRAME, say
            elif isinstance(exc, wire["WireError"]):
                reply = ("bad", _describe(exc))
            else:
                reply = ("raise", type(exc).__name__, _describe(exc))
        try:
            send(reply)
        except BaseException:
            exit_now(3)


def _c_function(name, result):
    """The C library's ``name`` returning the C type ``result`` (a ``struct`` code), errno
    kept; and that type. ``_ctypes`` alone, not ``ctypes``, to keep the start cheap."""
    import _ctypes

    class _Result(_ctypes._SimpleCData):
        _type_ = result

    class _Fn(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
        _restype_ = _Result

    return _Fn(_ctypes.dlsym(_ctypes.dlopen(None, 0), name)), _Result


def _mount_work(workdir, size, inodes, uid, gid):
    """A tmpfs capped in bytes and inodes on ``workdir``, owned by the sample's uid (the
    root harness's child still has its capabilities here)."""
    import _ctypes

    mount, _ = _c_function("mount", "i")
    options = f"size={size},nr_inodes={inodes},mode=0700,uid={uid},gid={gid}".encode()
    if mount(b"tmpfs", workdir.encode(), b"tmpfs", 2 | 4 | 8, options) != 0:  # nosuid nodev noexec
        raise OSError(_ctypes.get_errno(), f"cannot mount the {workdir} tmpfs")


def _seal(sock_fd, nr, program):
    """Load the sandbox's filter again, sealed, with a listener, and send the listener to
    the harness over ``sock_fd`` (``_seccomp.py``: then the harness names every refused
    call). Raises if any step fails: no candidate code may run under the outer filter
    alone (its refusals would be left to whoever stacks a listener first)."""
    import _ctypes
    import _socket

    class _Char(_ctypes._SimpleCData):
        _type_ = "c"

    def buffer(data):
        return type("_Buf", (_ctypes.Array,), {"_type_": _Char, "_length_": len(data)}) \
            .from_buffer_copy(data)

    syscall, _Long = _c_function("syscall", "l")
    code = buffer(program)
    order = sys.byteorder
    fprog = buffer((len(program) // 8).to_bytes(2, order) + bytes(6)
                   + _ctypes.addressof(code).to_bytes(8, order))
    # seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &fprog)
    listener = syscall(_Long(nr), _Long(1), _Long(8), _Long(_ctypes.addressof(fprog)))
    if listener < 0:
        raise OSError(_ctypes.get_errno(), "cannot load the sealed seccomp filter")
    sock = _socket.socket(fileno=sock_fd)
    try:
        sock.sendmsg([b"L"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                               listener.to_bytes(4, order))])
    finally:
        os.close(listener)
        sock.close()


def _read_setup():
    """The first line of stdin (the harness's set-up) and whatever followed it."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(0, 4096)
        if not chunk:
            os._exit(4)
        data += chunk
    line, _, rest = data.partition(b"\n")
    return line.decode("ascii").split(" "), rest


def _main():
    write, exit_now = os.write, os._exit  # held before the program can monkeypatch os
    setup, rest = _read_setup()
    out_fd, in_fd, uid, gid = (int(a) for a in setup[:4])
    workdir = setup[4]
    work_bytes, work_inodes = int(setup[5]), int(setup[6])
    notify_fd, seccomp_nr, program = int(setup[7]), int(setup[8]), setup[9]
    if work_bytes:
        _mount_work(workdir, work_bytes, work_inodes, max(uid, 0), gid)
    os.chdir(workdir)
    wire_source = _read_wire()
    if not __file__.startswith("/sbx/"):  # outside bwrap the stdlib may be root-only
        import resource  # noqa: F401 - loaded now, while still root
    if uid >= 0 and os.getuid() == 0:
        if not work_bytes:
            os.chown(workdir, uid, gid)
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)  # all of real, effective and saved: capabilities are cleared
    seal_error = None
    if notify_fd >= 0:
        try:
            _seal(notify_fd, seccomp_nr, bytes.fromhex(program))
        except BaseException as exc:  # reported as the sample's failure, below
            seal_error = exc

    chunks = [rest]
    while chunk := os.read(0, 1 << 16):
        chunks.append(chunk)
    data = b"".join(chunks)
    del chunks
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    header, _, source = data.partition(b"\n")
    mode, nonce, limited, *limits = header.decode("ascii", "replace").split(" ")
    nonce = nonce.encode("ascii")
    if limited != "1":  # the harness did not prlimit() this process: its job's limits
        _set_limits(limits)

    namespace = {"__name__": "__sample__", "__builtins__": __builtins__}
    streams = (sys.stdout, sys.stderr)
    try:
        if seal_error is not None:
            raise RuntimeError(f"sandbox set-up: {_describe(seal_error)}")
        exec(compile(source, "<sample>", "exec"), namespace)
        verdict = b"PASS " + nonce if mode == "run" else b"ready"
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are failures too
        verdict = b"FAIL " + _describe(exc).encode("utf-8", "replace")
    for stream in streams:
        try:
            stream.flush()
        except BaseException:
            pass
    try:
        write(out_fd, verdict + b"\n")
    except BaseException:
        exit_now(3)
    if mode == "serve" and verdict == b"ready":
        _serve(namespace, wire_source, out_fd, in_fd, write, exit_now)
    exit_now(0 if verdict.startswith((b"PASS ", b"ready")) else 1)


if __name__ == "__main__":
    _main()
