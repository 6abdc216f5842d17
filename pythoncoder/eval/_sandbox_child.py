"""Child side of the sandbox: ``python -I -S -B _sandbox_child.py WORKDIR REPORT_FD LIMITS...``.

Run as a script in a fresh interpreter (never imported by the package). It

1. reads ``NONCE\\n`` + the program source from stdin until EOF, then points fd 0 at
   ``/dev/null`` (the program sees an empty stdin and never sees the nonce in a file,
   an environment variable or argv);
2. lowers its resource limits (CPU seconds, address space, file size, processes, open
   files, no core dumps);
3. installs an audit hook (:pep:`578`) that refuses, by raising ``PermissionError``,
   process creation, sockets, signals to other processes, raising rlimits, ``ctypes``
   and similar native escape hatches, heap walking through ``gc``, and any file-system
   write, rename, link or delete outside ``WORKDIR``;
4. executes the program and writes ``PASS <nonce>`` to ``REPORT_FD`` only if it ran to
   the end without raising, else ``FAIL <reason>``; then leaves with ``os._exit``.

Success is therefore signalled positively: ``os._exit(0)``, ``sys.exit(0)``, a closed
stdout or a crash before the checks all read as "not passed" in the parent.

Honest limits. The audit hook and the nonce are best-effort guards inside the same
process as the untrusted code: they stop accidents and naive escapes, not code written
against this file (frame inspection can find the nonce, and a native-code escape would
bypass the hook, which is why ``ctypes``/``_ctypes``/``cffi`` imports are refused). The
kernel-enforced parts are the rlimits, the process group the parent kills with SIGKILL,
and, where the parent could create one, an empty network namespace. ``RLIMIT_NPROC``
does not bind root; the hook is what refuses ``fork`` there.
"""

import os
import resource
import sys

# Events refused outright.
_DENIED_EVENTS = frozenset({
    "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
    "os.startfile", "subprocess.Popen", "pty.spawn",
    "socket.__new__", "socket.bind", "socket.connect", "socket.getaddrinfo",
    "socket.gethostbyname", "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg",
    "urllib.Request", "http.client.connect", "ftplib.connect", "smtplib.connect",
    "poplib.connect", "imaplib.open", "nntplib.connect", "telnetlib.Telnet.open",
    "webbrowser.open",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
    "resource.setrlimit", "resource.prlimit",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents",
})
# Modules whose import is refused: native escape hatches and process/network plumbing.
_DENIED_MODULES = frozenset({
    "ctypes", "_ctypes", "cffi", "_cffi_backend", "_posixsubprocess", "_socket", "socket",
    "ssl", "_ssl", "_multiprocessing", "_xxsubinterpreters",
})
# Events that touch the file system: (positions of path arguments, positions of dir_fd).
_PATH_EVENTS = {
    "os.remove": ((0,), (1,)),
    "os.rmdir": ((0,), (1,)),
    "os.rename": ((0, 1), (2, 3)),
    "os.link": ((0, 1), (2, 3)),
    "os.symlink": ((1,), (2,)),
    "os.mkdir": ((0,), (2,)),
    "os.chmod": ((0,), (2,)),
    "os.chown": ((0,), (3,)),
    "os.utime": ((0,), (3,)),
    "os.truncate": ((0,), ()),
    "os.chflags": ((0,), ()),
    "os.lchflags": ((0,), ()),
    "os.setxattr": ((0,), ()),
    "os.removexattr": ((0,), ()),
    "shutil.rmtree": ((0,), (1,)),
    "shutil.copyfile": ((1,), ()),
    "shutil.copymode": ((1,), ()),
    "shutil.copystat": ((1,), ()),
    "shutil.copytree": ((1,), ()),
    "shutil.move": ((0, 1), ()),
    "shutil.chown": ((0,), ()),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_HARMLESS_WRITE_TARGETS = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr"})


def _install_guard(workdir: str) -> None:
    root = os.path.realpath(workdir)
    prefix = root + os.sep
    realpath, fspath, fsdecode, isdir = os.path.realpath, os.fspath, os.fsdecode, os.path.isdir
    own_pid, own_pgid = os.getpid(), os.getpgid(0)
    watched = _DENIED_EVENTS | set(_PATH_EVENTS) | {"open", "import", "os.kill", "os.killpg"}

    def resolve(path):
        if isinstance(path, int):
            return None  # an already-open descriptor: it was checked when opened
        path = fspath(path)
        return realpath(fsdecode(path) if isinstance(path, bytes) else path)

    def inside(path) -> bool:
        resolved = resolve(path)
        return resolved is None or resolved == root or resolved.startswith(prefix)

    def hook(event, args):
        if event not in watched:
            return
        if event in _DENIED_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = bool(flags & _WRITE_FLAGS) or (
                isinstance(mode, str) and any(c in mode for c in "wax+"))
            if path is None or isinstance(path, int):
                return
            if writing:
                if fspath(path) in _HARMLESS_WRITE_TARGETS or inside(path):
                    return
                raise PermissionError(f"sandbox: writing {path!r} outside the work directory")
            resolved = resolve(path)
            if resolved.startswith("/proc/") and resolved.endswith("/mem"):
                raise PermissionError("sandbox: reading process memory is not allowed")
            # A directory descriptor outside would let *at() calls (dir_fd=) escape.
            if mode is None and not inside(path) and isdir(resolved):
                raise PermissionError("sandbox: opening directories outside is not allowed")
        elif event == "import":
            name = args[0]
            if name in _DENIED_MODULES or name.split(".", 1)[0] in _DENIED_MODULES:
                raise PermissionError(f"sandbox: importing {name} is not allowed")
        elif event == "os.kill":
            pid = args[0]
            if pid not in (0, own_pid, -own_pgid):
                raise PermissionError("sandbox: signalling other processes is not allowed")
        elif event == "os.killpg":
            if args[0] not in (0, own_pgid):
                raise PermissionError("sandbox: signalling other process groups is not allowed")
        else:
            path_positions, dir_fd_positions = _PATH_EVENTS[event]
            for i in dir_fd_positions:
                if i < len(args) and args[i] is not None and args[i] != -1:
                    raise PermissionError(f"sandbox: {event} with dir_fd is not allowed")
            for i in path_positions:
                if i < len(args) and not inside(args[i]):
                    raise PermissionError(f"sandbox: {event} outside the work directory")

    sys.addaudithook(hook)


def _set_limits(cpu_s: int, memory: int, file_size: int, nproc: int, nofile: int) -> None:
    for limit, value in (
        (resource.RLIMIT_CPU, (cpu_s, cpu_s + 1)),  # soft: SIGXCPU, hard: SIGKILL
        (resource.RLIMIT_AS, (memory, memory)),
        (resource.RLIMIT_FSIZE, (file_size, file_size)),
        (resource.RLIMIT_NPROC, (nproc, nproc)),
        (resource.RLIMIT_NOFILE, (nofile, nofile)),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        resource.setrlimit(limit, value)


def _describe(exc: BaseException) -> str:
    name = type(exc).__name__
    try:
        message = str(exc)
    except BaseException:  # a hostile __str__
        message = "<unprintable>"
    text = f"{name}: {message}" if message else name
    return text.replace("\n", " ")[:500]


def _main() -> None:
    write, exit_now = os.write, os._exit  # held before the program can monkeypatch os
    workdir, report_fd = sys.argv[1], int(sys.argv[2])
    cpu_s, memory, file_size, nproc, nofile = (int(a) for a in sys.argv[3:8])

    chunks = []
    while chunk := os.read(0, 1 << 16):
        chunks.append(chunk)
    nonce, _, source = b"".join(chunks).partition(b"\n")
    del chunks
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)

    os.chdir(workdir)
    _set_limits(cpu_s, memory, file_size, nproc, nofile)
    _install_guard(workdir)
    streams = (sys.stdout, sys.stderr)
    namespace = {"__name__": "__sample__", "__builtins__": __builtins__}
    try:
        exec(compile(source, "<sample>", "exec"), namespace)
        verdict = b"PASS " + nonce
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are failures too
        verdict = b"FAIL " + _describe(exc).encode("utf-8", "replace")
    for stream in streams:
        try:
            stream.flush()
        except BaseException:
            pass
    try:
        write(report_fd, verdict + b"\n")
    except BaseException:
        exit_now(3)
    exit_now(0 if verdict.startswith(b"PASS ") else 1)


if __name__ == "__main__":
    _main()
