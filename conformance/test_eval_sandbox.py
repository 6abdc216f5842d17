"""EVAL-04..06: a hostile set against the evaluation sandbox (issue 12).

Every hostile sample below is a WRONG solution of HumanEval/0 that tries to pass anyway
(forging the verdict) or to damage / read the host or take the harness down. The whole
set, with honest neighbours interleaved, runs once through the real command line
(``pythoncoder eval humaneval --samples``) in a harness subprocess that

* carries a planted secret in its environment (``PYTHONCODER_PLANTED_SECRET``),
* is a child subreaper, so any process a sample leaves behind is re-parented to it and
  listed at the end,
* records its own nice value and CPU affinity before and after.

Each test then asserts one property over the whole set: nothing passed, sentinels and
neighbours untouched, nothing created outside, no process left, the secret nowhere in
the results, and the harness finished with every result.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from pythoncoder.eval import humaneval
from pythoncoder.eval.sandbox import (
    JUDGE,
    SANDBOX_UID,
    Job,
    SandboxConfig,
    _wire,
    isolation,
    run_program,
)

TASK = "HumanEval/0"
WRONG = "    return True\n"  # has_close_elements: half of the checks expect False
REPO = Path(__file__).resolve().parents[1]


def _top(*parts: str) -> str:
    """A wrong body, then ``parts`` at module level (runs when the candidate loads)."""
    return WRONG + "".join(textwrap.dedent(p) for p in parts)


def _body(code: str) -> str:
    """``code`` as the function body (runs on every call); it must return something."""
    return textwrap.indent(textwrap.dedent(code), "    ")


def hostile_samples(outside: Path, sentinel: Path, tcp_port: int, unix_path: Path,
                    abstract: str, marker: str) -> dict[str, str]:
    """name -> completion; ``@HARNESS_PID@`` is replaced by the harness's pid."""
    out, sen, tmp_new = str(outside), str(sentinel), f"/tmp/{marker}"
    data = humaneval.data_path()
    forge = """
        for tok in found:
            t = tok if isinstance(tok, bytes) else str(tok).encode()
            for fd in range(3, 64):
                try:
                    os.write(fd, b"ready\\nPASS " + t[-32:] + b"\\n")
                except OSError:
                    pass
        if found:
            os._exit(0)
    """
    loot = textwrap.dedent("""
        import os
        loot = ""
        for pid in [str(os.getppid()), "@HARNESS_PID@"]:
            try:
                loot += open(f"/proc/{pid}/environ").read()
            except OSError:
                pass
    """)
    samples = {
        # --- verdict forgery -------------------------------------------------------------
        "frame walk for the pass token": _top("""
            import os, sys
            found = []
            f = sys._getframe()
            while f is not None:
                for v in list(f.f_locals.values()) + list(f.f_globals.values()):
                    if isinstance(v, (bytes, str)) and 16 <= len(v) <= 64:
                        found.append(v)
                f = f.f_back
        """, forge),
        "sys._current_frames": _top("""
            import os, sys
            found = []
            for f in sys._current_frames().values():
                while f is not None:
                    found += [v for v in f.f_locals.values() if isinstance(v, (bytes, str))]
                    f = f.f_back
        """, forge),
        "settrace rewriting the harness's locals": _top("""
            import sys
            def tracer(frame, event, arg):
                loc = frame.f_locals
                for key in ("verdict", "passed", "status", "result"):
                    if key in loc:
                        token = b"PASS " + bytes(loc.get("nonce", b""))
                        loc[key] = token if key == "verdict" else True
                return tracer
            sys.settrace(tracer)
        """),
        "/proc/self/mem and the parent's memory": _top("""
            import os, re
            found = []
            for pid in ("self", str(os.getppid()), "@HARNESS_PID@"):
                try:
                    maps = open(f"/proc/{pid}/maps").read().splitlines()
                    mem = open(f"/proc/{pid}/mem", "rb", 0)
                except OSError:
                    continue
                for line in maps:
                    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                    if "rw" not in line.split()[1] or hi - lo > 1 << 26:
                        continue
                    try:
                        mem.seek(lo)
                        found += re.findall(rb"[0-9a-f]{32}", mem.read(hi - lo))
                    except (OSError, ValueError, OverflowError):
                        pass
        """, forge),
        "__eq__ always true": _body("""
            class Yes:
                def __eq__(self, other): return True
                def __ne__(self, other): return False
                def __bool__(self): return True
                def __hash__(self): return 0
            return Yes()
        """),
        "expected values from the test's bytecode": _body("""
            import sys, gc
            for f in [sys._getframe(i) for i in range(1, 8) if _has(i)]:
                pass
            for obj in gc.get_objects():
                if getattr(obj, "co_name", None) == "check":
                    return obj.co_consts
            return None
        """) + "def _has(i):\n    import sys\n    try:\n        sys._getframe(i)\n"
              "        return True\n    except ValueError:\n        return False\n",
        "solutions from the installed benchmark data": _body(f"""
            import gzip, json
            try:
                rows = [json.loads(line) for line in gzip.open({str(data)!r}, "rt")]
            except OSError:
                return True
            namespace = {{}}
            exec(rows[0]["prompt"] + rows[0]["canonical_solution"], namespace)
            return namespace["has_close_elements"](numbers, threshold)
        """),
        "line tracer jumping over check": _top("""
            import sys, threading
            def tracer(frame, event, arg):
                if frame.f_code.co_name == "check" and event == "line":
                    try:
                        frame.f_lineno = frame.f_code.co_firstlineno + 99
                    except ValueError:
                        pass
                return tracer
            sys.settrace(tracer)
            threading.settrace(tracer)
        """),
        "disable the audit hook via globals": _top(f"""
            import sys
            for mod in list(sys.modules.values()):
                g = getattr(mod, "__dict__", {{}})
                for k in list(g):
                    if k.startswith(("_DENIED", "_PATH_EVENTS", "_HARMLESS")):
                        try:
                            g[k] = type(g[k])()
                        except Exception:
                            pass
            try:
                open({sen!r}, "w").write("pwned by globals")
            except OSError:
                pass
        """),
        "patched AssertionError": _top("""
            import builtins
            class Never(BaseException):
                pass
            builtins.AssertionError = Never
        """),
        # --- host damage -----------------------------------------------------------------
        "dir_fd and chdir writes": _top(f"""
            import os
            for attempt in range(2):
                try:
                    fd = os.open({out!r}, os.O_RDONLY)
                    os.close(os.open("dirfd.txt", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
                except OSError:
                    pass
                try:
                    os.chdir({out!r})
                    open("chdir.txt", "w").write("x")
                except OSError:
                    pass
        """),
        "symlink swap": _top(f"""
            import os
            try:
                open("decoy", "w").write("x")
                os.symlink({sen!r}, "link")
                os.rename("link", "decoy")
                open("decoy", "w").write("pwned by symlink")
            except OSError:
                pass
        """),
        "sqlite3 file creation": _top(f"""
            import sqlite3
            for path in ({out + '/db.sqlite'!r}, {tmp_new + '.sqlite'!r}):
                try:
                    sqlite3.connect(path).execute("create table t(x)")
                except Exception:
                    pass
        """),
        "mkfifo and mknod": _top(f"""
            import os, stat
            for call in (lambda: os.mkfifo({out + '/fifo'!r}),
                         lambda: os.mknod({out + '/node'!r}, stat.S_IFREG | 0o644),
                         lambda: os.mkfifo({tmp_new + '.fifo'!r})):
                try:
                    call()
                except OSError:
                    pass
        """),
        "fchmod fchown utime": _top(f"""
            import os
            try:
                fd = os.open({sen!r}, os.O_RDONLY)
                for call in (lambda: os.fchmod(fd, 0o777), lambda: os.fchown(fd, 0, 0),
                             lambda: os.utime(fd, (0, 0))):
                    try:
                        call()
                    except OSError:
                        pass
            except OSError:
                pass
            for call in (lambda: os.chmod({sen!r}, 0o777), lambda: os.utime({sen!r}, (0, 0))):
                try:
                    call()
                except OSError:
                    pass
        """),
        "read the parent's environment": _top(loot, """
            import sys
            print(loot)
            print(loot, file=sys.stderr)
            raise RuntimeError(loot)
        """),
        "environment through the exception": _body(loot + 'raise ValueError(loot or "none")\n'),
        "setsid daemon": _top(f"""
            import os, time
            try:
                if os.fork() == 0:
                    os.setsid()
                    if os.fork() == 0:
                        for _ in range(300):
                            try:
                                open({sen!r}, "w").write("pwned by daemon")
                            except OSError:
                                pass
                            time.sleep(0.1)
                    os._exit(0)
            except OSError:
                pass
        """),
        "unix socket to the host": _top(f"""
            import socket
            for address in ({str(unix_path)!r}, {chr(0) + abstract!r}):
                try:
                    s = socket.socket(socket.AF_UNIX)
                    s.settimeout(1)
                    s.connect(address)
                    s.sendall(b"hello")
                except OSError:
                    pass
        """),
        "renice and pin the harness": _top("""
            import os
            for pid in (@HARNESS_PID@, os.getppid()):
                for call in (lambda: os.setpriority(os.PRIO_PROCESS, pid, 19),
                             lambda: os.sched_setaffinity(pid, {0})):
                    try:
                        call()
                    except OSError:
                        pass
        """),
        "pidfd_send_signal and kill on the harness": _top("""
            import os, signal
            for pid in (@HARNESS_PID@, os.getppid()):
                try:
                    signal.pidfd_send_signal(os.pidfd_open(pid), signal.SIGKILL)
                except OSError:
                    pass
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        """),
        "1500-deep directory chain": _top("""
            import os
            for _ in range(1500):
                os.mkdir("d")
                os.chdir("d")
        """),
        # --- the older hostile set ---------------------------------------------------------
        "spin": _top("while True:\n    pass\n"),
        "fork bomb": _top("""
            import os
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
        """),
        "memory bomb": _top("buf = bytearray(50 * 1024**3)\n"),
        "delete the sentinel": _top(f"import os\nos.remove({sen!r})\n"),
        "overwrite the sentinel": _top(f"open({sen!r}, 'w').write('pwned')\n"),
        "new file outside": _top(f"open({out + '/new.txt'!r}, 'w').write('x')\n"
                                 f"open({tmp_new + '.txt'!r}, 'w').write('x')\n"),
        "rmtree outside": _top(f"import shutil\nshutil.rmtree({out!r})\n"),
        "rename the sentinel": _top(f"import os\nos.rename({sen!r}, 'stolen')\n"),
        "tcp socket": _top(f"import socket\n"
                           f"socket.create_connection(('127.0.0.1', {tcp_port}), timeout=1)\n"),
        "os._exit(0)": _top("import os\nos._exit(0)\n"),
        "sys.exit(0)": _top("import sys\nsys.exit(0)\n"),
        "exit during the call": _body("import os\nos._exit(0)\n"),
        "closed stdout": _top("import os, sys\nsys.stdout.close()\nos.close(1)\nos.close(2)\n"),
        "signal tampering": _top("""
            import signal
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU,
                      signal.SIGALRM, signal.SIGUSR1):
                signal.signal(s, signal.SIG_IGN)
            while True:
                pass
        """),
        "output flood": _top("while True:\n    print('x' * 4096)\n"),
    }
    # Issue 27: copies of one completion learn the verdict from being called again and
    # pass it on through the kernel keyring of uid 65534; with the old judge the later
    # copies passed. Each copy guesses the unknown answers, alternating over copies.
    learner = _body(f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        desc = b"{marker}-oracle"
        st = has_close_elements.__dict__.setdefault("st", {{"i": 0, "last": None}})
        if "k" not in st:
            st["k"] = bytearray(b"?" * 16)
            serial = libc.syscall({KEY_NR["keyctl"]}, 10, -4, b"user", desc, 0)  # SEARCH
            if serial > 0:
                buf = ctypes.create_string_buffer(16)
                libc.syscall({KEY_NR["keyctl"]}, 11, serial, buf, 16)  # READ
                st["k"] = bytearray(buf.raw)
        k, i = st["k"], st["i"]
        if i > 0:  # called again: the previous answer was right
            k[i - 1] = ord("T" if st["last"] else "F")
        c = chr(k[i])
        answer = c == "T" or c == "?" or c == "f"
        if c in "?tf":
            k[i] = ord("t" if answer else "f")
        libc.syscall({KEY_NR["add_key"]}, b"user", desc, bytes(k), 16, -4)
        st["i"], st["last"] = i + 1, answer
        return answer
    """)
    samples.update({f"oracle via the keyring, copy {n}": learner for n in range(1, 11)})
    return samples


KEY_NR = {"x86_64": {"add_key": 248, "keyctl": 250},
          "aarch64": {"add_key": 217, "keyctl": 219}}.get(os.uname().machine,
                                                          {"add_key": -1, "keyctl": -1})


RUNNER = '''
import ctypes, json, os, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come to us
from pythoncoder.cli import main
templates, samples_path, out_path, report_path = sys.argv[1:5]
pid = str(os.getpid())
rows = [{"task_id": t, "completion": c.replace("@HARNESS_PID@", pid)}
        for t, c in json.load(open(templates))]
with open(samples_path, "w") as f:
    f.writelines(json.dumps(r) + "\\n" for r in rows)
before = (os.getpriority(os.PRIO_PROCESS, 0), sorted(os.sched_getaffinity(0)))
code = main(["eval", "humaneval", "--samples", samples_path, "--out", out_path,
             "--no-progress", "--workers", "2", "--timeout", "3"])
after = (os.getpriority(os.PRIO_PROCESS, 0), sorted(os.sched_getaffinity(0)))
left, deadline = [], time.monotonic() + 5
while time.monotonic() < deadline:
    try:  # reap what was re-parented to us (a killed sandbox's init, say)
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
    left = []
    for tid in os.listdir("/proc/self/task"):
        left += open(f"/proc/self/task/{tid}/children").read().split()
    if not left:
        break
    time.sleep(0.1)
left = [(p, open(f"/proc/{p}/cmdline").read().replace(chr(0), " ")[:200]) for p in left]
json.dump({"code": code, "before": before, "after": after, "left": left},
          open(report_path, "w"))
'''


class _Listeners:
    """A TCP and two unix-socket servers on the host that count connections."""

    def __init__(self, unix_path: Path, abstract: str) -> None:
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(str(unix_path))
        self.abstract = socket.socket(socket.AF_UNIX)
        self.abstract.bind("\0" + abstract)
        self.port = self.tcp.getsockname()[1]
        self.accepted, self.stop = 0, threading.Event()
        self.threads = []
        for s in (self.tcp, self.unix, self.abstract):
            s.listen()
            s.settimeout(0.2)
            t = threading.Thread(target=self._serve, args=(s,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, sock: socket.socket) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()
        for s in (self.tcp, self.unix, self.abstract):
            s.close()


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    problems = humaneval.load_problems()
    root = tmp_path_factory.mktemp("hostile")
    outside = root / "outside"
    outside.mkdir()
    sentinel = outside / "sentinel.txt"
    sentinel.write_text("keep me")
    os.chmod(sentinel, 0o644)
    sentinel_stat = sentinel.stat()
    marker = "pythoncoder-hostile-" + secrets.token_hex(6)
    abstract = marker + "-abstract"
    unix_path = root / "host.sock"
    secret = "planted-" + secrets.token_hex(16)
    listeners = _Listeners(unix_path, abstract)
    try:
        hostile = hostile_samples(outside, sentinel, listeners.port, unix_path, abstract,
                                  marker)
        jobs = [(TASK, name, code) for name, code in hostile.items()]
        keys_before = _keys_of(SANDBOX_UID)
        for j in range(1, 8):  # honest neighbours, interleaved
            task = f"HumanEval/{j}"
            jobs.insert(4 * j - 2, (task, "honest", problems[task]["canonical_solution"]))
        templates = root / "templates.json"
        templates.write_text(json.dumps([[task, code] for task, _, code in jobs]))
        runner = root / "runner.py"
        runner.write_text(RUNNER)
        paths = [root / n for n in ("samples.jsonl", "results.jsonl", "report.json")]
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONCODER_PLANTED_SECRET": secret}
        proc = subprocess.run([sys.executable, str(runner), str(templates), *map(str, paths)],
                              capture_output=True, text=True, env=env, timeout=600)
    finally:
        listeners.close()
    results = paths[1].read_text() if paths[1].exists() else ""
    report = json.loads(paths[2].read_text()) if paths[2].exists() else None
    return dict(jobs=jobs, proc=proc, results=results, report=report, outside=outside,
                sentinel=sentinel, sentinel_stat=sentinel_stat, marker=marker,
                secret=secret, accepted=listeners.accepted, keys_before=keys_before,
                keys_after=_keys_of(SANDBOX_UID))


def _keys_of(uid: int) -> str | None:
    """uid's line of /proc/key-users (its key count and bytes), host-wide."""
    try:
        lines = Path("/proc/key-users").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].split()[1] for line in lines
                 if line.split(":")[0].strip() == str(uid)), "0/0")


@pytest.mark.req("EVAL-06")
def test_harness_finishes_with_every_result(hostile_run):
    proc, report = hostile_run["proc"], hostile_run["report"]
    assert proc.returncode == 0 and report is not None and report["code"] == 0, (
        f"the harness died (exit {proc.returncode}): {proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in hostile_run["results"].splitlines()]
    assert [r["task_id"] for r in rows] == [task for task, _, _ in hostile_run["jobs"]]
    for row in rows:
        assert row["result"] == "passed" or row["result"] == "timed out" \
            or row["result"].startswith("failed: ")
        assert len(row["result"]) <= 250, row["result"]
    # Nothing a sample did reached the harness's scheduling.
    assert report["after"] == report["before"]


@pytest.mark.req("EVAL-05")
def test_no_hostile_sample_passes_and_neighbours_do(hostile_run):
    rows = [json.loads(line) for line in hostile_run["results"].splitlines()]
    assert rows, "no results"
    for (task, name, _), row in zip(hostile_run["jobs"], rows, strict=True):
        if name == "honest":
            assert row["passed"], (task, row["result"])
        else:
            assert not row["passed"], (name, row["result"])
        assert row["verdict"] == JUDGE, (name, row["verdict"])
    by_name = {name: row for (_, name, _), row in zip(hostile_run["jobs"], rows)}
    for name in ("spin", "signal tampering", "output flood"):
        assert by_name[name]["result"] == "timed out", (name, by_name[name]["result"])


@pytest.mark.req("EVAL-04")
def test_host_is_untouched(hostile_run):
    sentinel, outside = hostile_run["sentinel"], hostile_run["outside"]
    assert sentinel.read_text() == "keep me"
    st, before = sentinel.stat(), hostile_run["sentinel_stat"]
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns) == (
        stat.S_IMODE(before.st_mode), before.st_uid, before.st_gid, before.st_mtime_ns)
    assert sorted(p.name for p in outside.iterdir()) == ["sentinel.txt"]
    assert [p for p in os.listdir("/tmp") if p.startswith(hostile_run["marker"])] == []
    assert hostile_run["accepted"] == 0  # neither TCP nor unix sockets reached the host
    # No key was left in the kernel keyring (a channel from one sample to the next).
    assert hostile_run["keys_after"] == hostile_run["keys_before"]


@pytest.mark.req("EVAL-04", "EVAL-06")
def test_no_process_left_behind(hostile_run):
    report = hostile_run["report"]
    assert report is not None, hostile_run["proc"].stderr[-2000:]
    assert report["left"] == []


@pytest.mark.req("EVAL-04", "EVAL-06")
def test_planted_secret_is_absent_from_results(hostile_run):
    secret = hostile_run["secret"]
    assert hostile_run["results"], "no results"
    for text in (hostile_run["results"], hostile_run["proc"].stdout, hostile_run["proc"].stderr):
        assert secret not in text


# ---------------------------------------------------------------------------------------
# Smaller, direct checks.


@pytest.mark.req("EVAL-04")
@pytest.mark.skipif(isolation() != "bwrap", reason="needs bubblewrap")
def test_sample_runs_unprivileged_in_its_own_namespaces():
    probe = textwrap.dedent("""
        import os
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
        ns = {n: os.readlink(f"/proc/self/ns/{n}") for n in ("mnt", "pid", "net", "ipc", "uts")}
        print(os.getuid(), os.getgid(), int(status["CapEff"], 16), int(status["CapPrm"], 16),
              status["NoNewPrivs"].strip(), os.getpid(), " ".join(ns[n] for n in sorted(ns)))
    """)
    result = run_program(probe)
    assert result.passed, result.result
    uid, gid, eff, prm, nnp, pid, *ns = result.stdout.split()
    assert (int(uid), int(gid), int(eff), int(prm), nnp) == (SANDBOX_UID, SANDBOX_UID, 0, 0, "1")
    assert int(pid) <= 3  # a fresh PID namespace
    mine = [os.readlink(f"/proc/self/ns/{n}") for n in sorted(("mnt", "pid", "net", "ipc", "uts"))]
    assert all(a != b for a, b in zip(ns, mine, strict=True)), (ns, mine)


@pytest.mark.req("EVAL-05")
def test_wire_carries_plain_data_only():
    value = [None, True, 3, -2**70 + 3**9000, 1.5, float("inf"), 2j, "é\ud800", b"\0x", (1, [2]),
             {"a": {1, 2}}, frozenset({"z"})]
    decoded = _wire.decode(_wire.encode(value))
    assert decoded[:5] == value[:5] and decoded[6:] == value[6:]
    assert decoded[5] == float("inf")

    class Sneaky(int):
        def __eq__(self, other):
            return True

    # A subclass crosses as its plain base value: what arrives is an exact built-in.
    sneaky = _wire.decode(_wire.encode({"k": [Sneaky(2)]}))
    assert type(sneaky["k"][0]) is int and sneaky["k"][0] != 3
    for bad in (object(), print, [lambda: 0], {"k": object()}, iter([1]), range(3)):
        with pytest.raises(_wire.WireError):
            _wire.encode(bad)
    for frame in (b"x", b"l2:N", b"i12g;", b"i;", b"i-;", b"iA;", b"d1:l0:N", b"e1:l0:",
                  b"N trailing", b"l1:" * 100 + b"N"):
        with pytest.raises(_wire.WireError):
            _wire.decode(frame)


@pytest.mark.req("EVAL-05")
def test_judge_decides_and_copies_back_mutation():
    spec = {"prelude": "def f(xs):\n    '''doc'''\n",
            "test": "def check(c):\n    xs = [3, 1, 2]\n    assert c(xs) is None\n"
                    "    assert xs == [1, 2, 3]\n    try:\n        c(None)\n"
                    "    except AttributeError:\n        pass\n    else:\n        assert False\n",
            "names": ["f"], "entry": "f"}
    good = run_program(Job("def f(xs):\n    xs.sort()\n", spec))
    assert (good.result, good.verdict) == ("passed", JUDGE)
    wrong = run_program(Job("def f(xs):\n    return None\n", spec))
    assert wrong.result == "failed: AssertionError", wrong.result


@pytest.mark.req("EVAL-05")
def test_unsupported_tests_fall_back_to_a_labelled_weak_verdict():
    # The test hands the candidate a function: that cannot cross as plain data.
    spec = {"prelude": "", "test": "def check(c):\n    assert c(len) == 3\n",
            "names": ["f"], "entry": "f"}
    full = "def f(g):\n    return g('abc')\n\ndef check(c):\n    assert c(len) == 3\n\ncheck(f)\n"
    result = run_program(Job("def f(g):\n    return g('abc')\n", spec, fallback=full))
    assert (result.result, result.verdict) == ("passed", "in-sandbox")


@pytest.mark.req("EVAL-05")
@pytest.mark.parametrize("shape", ["deep", "wide"])
def test_a_candidate_cannot_choose_the_weak_verdict_through_the_caps(shape):
    """The test feeds the candidate's answer back to it (``c(c(1))``).  An answer just
    inside the reply's caps that the judge's next call would carry past them (two levels
    deeper, or more items) is a judged fail: were it ``unsupported``, the harness would run
    the weak in-sandbox fallback, whose verdict code written against it can forge."""
    spec = {"prelude": "", "test": "def check(c):\n    assert c(c(1)) == 'unreachable'\n",
            "names": ["f"], "entry": "f"}
    if shape == "deep":
        value, body = 0, "    v = 0\n    for _ in range(63):\n        v = [v]\n    return v\n"
        for _ in range(63):
            value = [value]
    else:  # a string whose reply frame fits and whose call frame does not
        base = len(_wire.encode(("ok", "", [1])))  # holds "s0:"; "s<8 digits>:" is 7 more
        n = _wire.MAX_FRAME - base - 7
        value, body = "x" * n, f"    return 'x' * {n} if x == 1 else 'unreachable'\n"
    _wire.encode(("ok", value, [1]))  # the candidate can send it ...
    with pytest.raises(_wire.WireLimitError):  # ... the judge cannot send it back
        _wire.encode(("call", "f", [value], {}))
    forged = "import os\nos._exit(0)\n"  # what a forging fallback would amount to
    result = run_program(Job("def f(x):\n" + body, spec, fallback=forged))
    assert result.verdict == JUDGE and result.result.startswith("failed"), result
    assert "past the wire's limits" in result.reason


@pytest.mark.req("EVAL-06")
def test_reasons_are_capped_and_sanitized():
    result = run_program("raise ValueError('\\x1b[31m' + 'A' * 5000)", SandboxConfig())
    assert result.result.startswith("failed: ValueError: ?[31mAAA")
    assert len(result.reason) <= 200
