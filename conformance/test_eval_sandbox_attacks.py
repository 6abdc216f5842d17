"""EVAL-04/05: the attack classes of issue 27, each with a negative control.

Every test runs an attack in the real sandbox and asserts it fails, then runs the same
attack against a deliberately weakened configuration (no seccomp filter, no inode cap,
live judge calls, bwrap's options on its command line, a broken interpreter) and asserts
it succeeds there: the test sees the hole when the hole is there.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pythoncoder.eval import sandbox
from pythoncoder.eval.sandbox import (
    JUDGE,
    Job,
    SandboxConfig,
    SandboxUnusable,
    _seccomp,
    check_usable,
    isolate,
    isolation,
    judge,
    notify,
    process,
    run_program,
)
from pythoncoder.spec import check_values

BWRAP = isolation() == "bwrap"
ROOT = os.geteuid() == 0
needs_bwrap = pytest.mark.skipif(not BWRAP, reason="needs bubblewrap")
ARCH = _seccomp._ARCHES.get(platform.machine())
needs_filter = pytest.mark.skipif(not BWRAP or ARCH is None,
                                  reason="needs bubblewrap and a known architecture")
SECURE = SandboxConfig(timeout_s=10.0)
WEAK = SandboxConfig(timeout_s=10.0, seccomp=False)


def _syscall_probe(calls: dict[str, str], setup: str = "") -> str:
    """A sample printing ``name result errno`` per raw syscall (numbers of this machine;
    ``setup`` runs first, so arguments may name what it makes)."""
    numbers = {**ARCH[1], **UNLISTED}
    lines = ["import ctypes", "libc = ctypes.CDLL(None, use_errno=True)",
             "def sc(nr, *args):",
             "    ctypes.set_errno(0)",
             "    return libc.syscall(nr, *args), ctypes.get_errno()", setup]
    for name, args in calls.items():
        syscall = name.split(":")[0]
        lines.append(f"print({name!r}, *sc({numbers[syscall]}, {args}), flush=True)")
    return "\n".join(lines) + "\n"


# Calls on neither list of the filter (the same number on x86-64 and AArch64).
UNLISTED = {"pidfd_open": 434, "process_madvise": 440}


def _outcomes(config: SandboxConfig, calls: dict[str, str], setup: str = ""
              ) -> dict[str, tuple[int, int]]:
    result = run_program(_syscall_probe(calls, setup), config)
    assert result.passed, (result.result, result.stderr[-500:])
    out = {}
    for line in result.stdout.splitlines():
        name, ret, err = line.split()
        out[name] = (int(ret), int(err))
    assert set(out) == set(calls), result.stdout
    return out


KEY = "b'user', b'pythoncoder-i27-oracle', b'1', 1, -4"  # KEY_SPEC_USER_KEYRING


@pytest.mark.req("EVAL-04")
@needs_filter
def test_keyring_is_closed_to_samples():
    calls = {"add_key": KEY, "keyctl": "0, -4, 0", "request_key":
             "b'user', b'pythoncoder-i27-oracle', None, 0"}
    secure = _outcomes(SECURE, calls)
    assert all(ret == -1 and err == 1 for ret, err in secure.values()), secure  # EPERM
    for path in ("/proc/keys", "/proc/key-users"):  # host-wide key accounting: hidden
        if os.path.exists(path):
            shown = run_program(f"open({path!r}).read()", SECURE)
            assert "PermissionError" in shown.result, (path, shown.result)
    # Control: without the filter the key is added. (To the sandbox process's own keyring,
    # which dies with it: a key in uid 65534's user keyring would outlive the test.)
    weak = _outcomes(WEAK, {"add_key": KEY.replace("-4", "-2")})  # KEY_SPEC_PROCESS_KEYRING
    assert weak["add_key"][0] > 0, weak


@pytest.mark.req("EVAL-04")
@needs_filter
def test_no_new_user_namespace_in_any_mode():
    calls = {"unshare": "0x10000000", "clone:newuser": "0x10000000 | 17, 0, 0, 0, 0"}
    secure = _outcomes(SECURE, calls)
    assert all(ret == -1 and err == 1 for ret, err in secure.values()), secure
    if not ROOT:  # bwrap's --disable-userns already refuses it without the filter
        return
    # Control (root harness, no filter): uid 65534 gets a user namespace -> a tmpfs of its
    # own without the sandbox's caps, as the issue found.
    weak = _outcomes(WEAK, {"unshare": "0x10000000"})
    if weak["unshare"] != (0, 0) and Path("/proc/sys/user/max_user_namespaces").read_text() \
            .strip() == "0":
        pytest.skip("user namespaces are off on this host: the control cannot show the hole")
    assert weak["unshare"] == (0, 0), weak


@pytest.mark.req("EVAL-04")
@needs_filter
def test_shared_memory_outside_the_address_space_limit_is_denied():
    size = 256 * 1024**2
    calls = {"shmget": f"0, {size}, 0o1000 | 0o600",  # IPC_PRIVATE, IPC_CREAT
             "memfd_create": "b'x', 0", "mq_open": "b'/q', 0o100 | 2, 0o600, None"}
    secure = _outcomes(SECURE, calls)
    assert all(ret == -1 and err == 1 for ret, err in secure.values()), secure
    shm = run_program("import os\nopen('/dev/shm/x', 'w')\n", SECURE)
    assert not shm.passed and "PermissionError" in shm.result, shm.result
    # Control: without the filter the segment is created (memory RLIMIT_AS does not see).
    weak = _outcomes(WEAK, {"shmget": calls["shmget"], "memfd_create": calls["memfd_create"]})
    assert all(ret >= 0 for ret, _ in weak.values()), weak


@pytest.mark.req("EVAL-04")
@needs_filter
def test_page_cache_probe_is_denied():
    probe = {"mincore": "0, 4096, 0"}  # any address: the filter answers before the kernel
    assert _outcomes(SECURE, probe)["mincore"] == (-1, 1)
    assert _outcomes(WEAK, probe)["mincore"][1] != 1  # control: the kernel itself answers


# A file of the host's (the interpreter, read-only in the view), an anonymous page, and a
# buffer: what the page-cache calls below are aimed at.
CACHE_SETUP = """
import mmap, os, sys
fd = os.open(sys.executable, os.O_RDONLY)
page = mmap.mmap(-1, 4096)
addr = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(page)))
buf = ctypes.create_string_buffer(4096)
iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 4096)
"""
NOWAIT = 8  # RWF_NOWAIT: EAGAIN unless the pages are cached, a residency probe


@pytest.mark.req("EVAL-04")
@needs_filter
def test_page_cache_and_sync_calls_are_refused():
    calls = {"sync": "", "syncfs": "fd", "fsync": "fd", "fdatasync": "fd",
             "sync_file_range": "fd, 0, 4096, 2", "fadvise64": "fd, 0, 4096, 3",  # WILLNEED
             "readahead": "fd, 0, 4096", "preadv2": f"fd, iov, 1, 0, 0, {NOWAIT}",
             "madvise:willneed": "addr, 4096, 3", "madvise:pageout": "addr, 4096, 21",
             "madvise:mergeable": "addr, 4096, 12"}
    if "readahead" not in ARCH[1]:  # AArch64's numbers
        calls.pop("readahead")
    secure = _outcomes(SECURE, calls, CACHE_SETUP)
    assert all(out == (-1, 1) for out in secure.values()), secure  # EPERM, every one
    allowed = _outcomes(SECURE, {"madvise:dontneed": "addr, 4096, 4"}, CACHE_SETUP)
    assert allowed["madvise:dontneed"] == (0, 0)  # the allocator's advice still works
    # Control: without the filter the kernel does what each asks (sync writes back the
    # host's dirty pages, fadvise/readahead fill its page cache, RWF_NOWAIT probes it).
    weak = _outcomes(WEAK, {k: v for k, v in calls.items() if k != "madvise:mergeable"},
                     CACHE_SETUP)
    assert all(err != 1 for _, err in weak.values()), weak
    assert weak["sync"] == (0, 0) and weak["fadvise64"] == (0, 0), weak


@pytest.mark.req("EVAL-04")
@needs_filter
def test_only_unix_sockets_can_be_made():
    families = {"unix": 1, "inet": 2, "inet6": 10, "netlink": 16, "packet": 17, "alg": 38,
                "vsock": 40, "bluetooth": 31, "can": 29}
    calls = {f"socket:{name}": f"{af}, 2 | 0o2000000, 0" for name, af in families.items()}
    calls["socketpair:inet"] = "2, 1, 0, (ctypes.c_int * 2)()"
    secure = _outcomes(SECURE, calls)
    assert secure.pop("socket:unix")[0] >= 0
    assert all(out == (-1, 97) for out in secure.values()), secure  # EAFNOSUPPORT
    # Control: without the filter the network namespace's own families open (vsock,
    # where the host has it, reaches the hypervisor past --unshare-net).
    weak = _outcomes(WEAK, {k: calls[k] for k in ("socket:inet", "socket:netlink")})
    assert all(ret >= 0 for ret, _ in weak.values()), weak


@pytest.mark.req("EVAL-04")
@needs_filter
def test_calls_off_the_allow_list_and_host_counters_are_refused():
    calls = {"pidfd_open": "os.getpid(), 0", "process_madvise": "0, 0, 0, 0, 0",
             "sysinfo": "buf"}
    setup = "import os\nbuf = ctypes.create_string_buffer(256)"
    secure = _outcomes(SECURE, calls, setup)
    assert secure["pidfd_open"] == (-1, 38) and secure["process_madvise"] == (-1, 38)  # ENOSYS
    assert secure["sysinfo"] == (-1, 1), secure  # host uptime, load, memory, processes
    weak = _outcomes(WEAK, {k: calls[k] for k in ("pidfd_open", "sysinfo")}, setup)
    assert weak["pidfd_open"][0] >= 0 and weak["sysinfo"] == (0, 0), weak  # the control


# Each kind of refusal once (numbers of this machine, arguments the filter looks at), in
# the order made; each answers the errno the plain filter gives, then the sample fails.
REFUSALS = {"ptrace": "0, 0, 0, 0", "socket:inet": "2, 1, 0", "pidfd_open": "os.getpid(), 0",
            "fcntl:pipe": "r, 1031, 1 << 20", "madvise:willneed": "addr, 4096, 3",
            "clone:newuser": "0x10000000 | 17, 0, 0, 0, 0"}
REFUSAL_SETUP = """import mmap, os
r, w = os.pipe()
page = mmap.mmap(-1, 4096)
addr = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(page)))"""
NAMED = ("ptrace", "socket(AF_INET)", "pidfd_open", "fcntl(F_SETPIPE_SZ)",
         "madvise(advice 3)", "clone(CLONE_NEW*)")
ERRNOS = {"ptrace": 1, "socket:inet": 97, "pidfd_open": 38, "fcntl:pipe": 1,
          "madvise:willneed": 1, "clone:newuser": 1}


def _refusals(config: SandboxConfig):
    source = _syscall_probe(REFUSALS, REFUSAL_SETUP) + "raise SystemExit(3)\n"
    result = run_program(source, config)
    errnos = {line.split()[0]: int(line.split()[2]) for line in result.stdout.splitlines()}
    return result, errnos


@pytest.mark.req("EVAL-04")
@needs_filter
def test_the_verdict_names_each_refused_call(monkeypatch):
    if not notify.supported():
        pytest.skip("seccomp notifications need Linux 5.0")
    result, errnos = _refusals(SECURE)
    assert errnos == ERRNOS, result.stdout  # the listener answers what the filter would
    assert result.refused == NAMED, result.refused
    assert result.result == "failed: SystemExit: 3; the sandbox refused " + ", ".join(NAMED)
    # In judge mode too: the candidate's own text never reaches the verdict, the names do.
    spec = dict(SPEC, test="assert f(1) == 2\n")
    probe = "def f(x):\n    import socket\n    try:\n        socket.socket(socket.AF_INET6)" \
            "\n    except OSError:\n        return 0\n"
    judged = run_program(Job(probe, spec), SECURE)
    assert judged.verdict == JUDGE and judged.refused == ("socket(AF_INET6)",)
    assert judged.result.endswith("; the sandbox refused socket(AF_INET6)"), judged.result
    # A passing sample's reason stays empty; the names are still on the result.
    quiet = run_program("import os\ntry:\n    os.sched_setaffinity(0, set())\n"
                        "except OSError:\n    pass\nos.sync()\n", SECURE)
    assert quiet.passed and quiet.reason == "" and quiet.refused == ("sync",), quiet
    # A sample that closes every pipe first is still answered (not left hanging until
    # its deadline, which would read as a timeout).
    closed = run_program("import os\nos.closerange(0, 1024)\nos.sync()\n", SECURE)
    assert closed.status == "failed" and closed.refused == ("sync",), closed
    # Control: the previous sandbox (the kernel answers, no listener): the same errnos,
    # and the verdict cannot say which call was refused.
    monkeypatch.setattr(notify, "supported", lambda: False)
    unnamed, errnos = _refusals(SECURE)
    assert errnos == ERRNOS and unnamed.refused == ()
    assert unnamed.result == "failed: SystemExit: 3", unnamed.result


# A sample that stacks a filter of its own whose listener answers CONTINUE: the call then
# runs although the sandbox's filters refuse it. The sandbox's listener must be gone first
# (the kernel allows one listener per chain): past MAX_NOTICES the harness closes it.
STACKED = """
import ctypes, fcntl, platform, socket, struct, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SECCOMP, SOCKET = {"x86_64": (317, 41), "aarch64": (277, 198)}[platform.machine()]
for _ in range(%d):
    try:
        socket.socket(socket.AF_INET)
    except OSError:
        pass
def ins(code, k, jt=0, jf=0):
    return struct.pack("=HBBI", code, jt, jf, k)
prog = ins(0x20, 0) + ins(0x15, SOCKET, 0, 1) + ins(0x06, 0x7FC00000) + ins(0x06, 0x7FFF0000)
code = ctypes.create_string_buffer(prog, len(prog))
fprog = ctypes.create_string_buffer(struct.pack("=H6xQ", len(prog) // 8,
                                                ctypes.addressof(code)), 16)
ctypes.set_errno(0)
listener = libc.syscall(ctypes.c_long(SECCOMP), ctypes.c_long(1), ctypes.c_long(8),
                        ctypes.c_long(ctypes.addressof(fprog)))
print("listener", listener, ctypes.get_errno(), flush=True)
if listener >= 0:
    def serve():
        notice = bytearray(80)
        fcntl.ioctl(listener, 0xC0502100, notice, True)
        fcntl.ioctl(listener, 0xC0182101,
                    struct.pack("=QqiI", struct.unpack_from("=Q", notice)[0], 0, 0, 1))
    helper = threading.Thread(target=serve)
    helper.start()
    try:
        print("inet", socket.socket(socket.AF_INET).fileno() >= 0, flush=True)
    except OSError as e:
        print("inet", e.errno, flush=True)
    helper.join()
"""


@pytest.mark.req("EVAL-04")
@needs_filter
def test_a_sample_cannot_stack_a_listener_of_its_own(monkeypatch):
    if not notify.supported():
        pytest.skip("seccomp notifications need Linux 5.0")
    threads = SandboxConfig(timeout_s=20.0, max_processes=64)  # a thread to answer with
    source = STACKED % (notify.MAX_NOTICES + 1)
    sealed = run_program(source, threads)
    assert sealed.stdout.split() == ["listener", "-1", "1"], sealed.stdout  # EPERM
    # Control: the child's copy of the filter not sealed -> the sample's listener lets
    # socket(AF_INET) through both of the sandbox's filters.
    plain = process._seccomp_program
    monkeypatch.setattr(process, "_seccomp_program",
                        lambda notify=False, sealed=False: plain(notify, False))
    open_ = run_program(source, threads)
    assert open_.stdout.split()[-2:] == ["inet", "True"], (open_.stdout, open_.result)


FLOOD = """
import os
n = 0
try:
    for n in range(1, 1001):
        open(f"f{n}", "w").close()
except OSError as e:
    print("stopped", n, e.errno)
else:
    print("created", n)
"""


@pytest.mark.req("EVAL-04")
@pytest.mark.skipif(not (BWRAP and ROOT), reason="the inode cap needs bubblewrap and root")
def test_inode_flood_is_capped():
    capped = run_program(FLOOD, dataclasses_replace(SECURE, work_inodes=200))
    word, count, *err = capped.stdout.split()
    assert word == "stopped" and int(count) <= 200 and err == ["28"], capped.stdout  # ENOSPC
    # Control: the same flood with a cap above it creates every file.
    loose = run_program(FLOOD, dataclasses_replace(SECURE, work_inodes=100_000))
    assert loose.stdout.split() == ["created", "1000"], loose.stdout
    assert SandboxConfig().work_inodes == check_values("EVAL-04")["work_inodes"]


FILL = """
written = 0
try:
    for n in range(6):
        with open(f"big{n}", "wb") as f:
            for _ in range(15):
                f.write(bytes(1 << 20))
                written += 1
except OSError as e:
    print("stopped", written, e.errno)
else:
    print("wrote", written)
"""


@pytest.mark.req("EVAL-04")
@pytest.mark.skipif(not BWRAP, reason="needs bubblewrap")
def test_work_bytes_are_capped():
    capped = run_program(FILL, dataclasses_replace(SECURE, work_bytes=32 * 1024**2))
    word, mib, *err = capped.stdout.split()
    assert word == "stopped" and int(mib) <= 32 and err == ["28"], capped.stdout  # ENOSPC
    # Control: a cap above the 90 MiB written lets it all through.
    loose = run_program(FILL, dataclasses_replace(SECURE, work_bytes=128 * 1024**2))
    assert loose.stdout.split() == ["wrote", "90"], loose.stdout


def dataclasses_replace(config: SandboxConfig, **changes) -> SandboxConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


# ---------------------------------------------------------------------------------------
# Oracle through repeated calls: the judge's calls must not depend on the answers.

COUNTING = """
def f(x):
    print("called", repr(x), flush=True)
    return {answer}
"""
SPEC = {"prelude": "", "test": "".join(f"assert f({i}) == {i + 1}\n" for i in range(6)),
        "names": ["f"], "entry": None, "reference": "def f(x):\n    return x + 1\n"}


def _calls(answer: str, spec: dict) -> tuple[str, list[str]]:
    result = run_program(Job(COUNTING.format(answer=answer), spec), SECURE)
    assert result.verdict == JUDGE
    return result.status, [line for line in result.stdout.splitlines() if line]


@pytest.mark.req("EVAL-05")
def test_calls_do_not_depend_on_the_answers():
    right = _calls("x + 1", SPEC)
    wrong = _calls("x", SPEC)
    guess = _calls("x + 1 if x % 2 else x", SPEC)  # half right
    assert (right[0], wrong[0], guess[0]) == ("passed", "failed", "failed")
    assert right[1] == wrong[1] == guess[1] == [f"called {i}" for i in range(6)]
    # Control: without a reference the judge calls live, and a wrong first answer ends
    # the calls -- being called again would tell the candidate it was right.
    live = {k: v for k, v in SPEC.items() if k != "reference"}
    assert _calls("x", live)[1] == ["called 0"]
    assert _calls("x + 1", live)[1] == right[1]


@pytest.mark.req("EVAL-05")
def test_arguments_built_from_a_wrong_answer_fail():
    spec = dict(SPEC, test="assert f(f(1)) == 3\n")
    assert _calls("x + 1", spec)[0] == "passed"
    status, calls = _calls("x + 2", spec)  # f(1) = 3, then f(3): not the traced f(2)
    assert status == "failed" and calls == ["called 1", "called 2"]


@pytest.mark.req("EVAL-05")
def test_a_traced_call_answered_past_the_caps_fails():
    """Only a differential job compares an answer by its digest: a test's call answered
    with a value past the wire's caps is a fail with that reason."""
    spec = dict(SPEC, test="assert f(1) == 2\n")
    big = run_program(Job("def f(x):\n    return ['a'] * (1 << 22)\n", spec), SECURE)
    assert big.result == "failed: f returned a value too large to cross to the judge", \
        big.result


@pytest.mark.req("EVAL-05")
def test_a_test_catching_exceptions_cannot_swallow_a_dead_candidate():
    spec = dict(SPEC, test="for x in (1, 2):\n    try:\n        f(x)\n"
                           "    except Exception:\n        pass\n")
    dies = run_program(Job("def f(x):\n    import os\n    os._exit(0)\n", spec), SECURE)
    assert dies.result == "failed: the candidate died during a call to f", dies.result
    # Control: an exception the candidate raises is the test's to catch (a pass here).
    raises = run_program(Job("def f(x):\n    raise ValueError(x)\n", spec), SECURE)
    assert raises.passed, raises.result


# ---------------------------------------------------------------------------------------
# Nothing of the host on a command line inside the sandbox.

CMDLINES = """
import os
for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
    try:
        print(open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode())
    except OSError:
        pass
"""


def _host_paths() -> set[str]:
    paths = {sys.prefix, os.path.realpath(sys.prefix), os.path.dirname(sys.executable),
             isolate._script_dir(sys.executable), os.getcwd(),
             str(Path(sandbox.__file__).parent)}
    paths |= {os.path.realpath(sys.base_prefix)}  # the installation, bound where it is
    return {p for p in paths if len(p) > 1}


def _leaks(output: str) -> set[str]:
    return {p for p in _host_paths() if p in output}


@pytest.mark.req("EVAL-04")
@needs_bwrap
def test_no_host_path_on_any_command_line(monkeypatch):
    result = run_program(CMDLINES, SECURE)
    assert result.passed, result.result
    assert result.stdout.startswith("bwrap --args"), result.stdout
    assert _leaks(result.stdout) == set(), result.stdout

    # Control: bwrap's options on its own command line (the old launcher): /proc/1/cmdline
    # shows the Python installation and the scripts' host directory.
    def on_argv(options, command, seccomp, pass_fds=(), *, python=None, prefix=(), notify=False,
                **kwargs):
        scripts = [arg for name, path in isolate._script_files(python or sys.executable).items()
                   for arg in ("--ro-bind", path, f"/sbx/{name}")]
        return subprocess.Popen([shutil.which("bwrap"), *options, *scripts, *command],
                                pass_fds=pass_fds, **kwargs)

    for module in (isolate, judge, process):  # every module that starts a bwrap
        monkeypatch.setattr(module, "_bwrap_popen", on_argv)
    leaked = run_program(CMDLINES, SandboxConfig(timeout_s=10.0, memory_bytes=2**31 - 1))
    assert leaked.passed, leaked.result
    assert _leaks(leaked.stdout), leaked.stdout


# ---------------------------------------------------------------------------------------
# A sandbox that cannot run a correct program refuses instead of scoring.


@pytest.fixture
def broken_python(tmp_path):
    """An "interpreter" that fails every program, as an unreadable one does."""
    path = tmp_path / "python"
    path.write_text("#!/bin/sh\nexit 1\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.req("EVAL-04")
def test_a_broken_sandbox_refuses_to_score(broken_python):
    config = SandboxConfig(isolation="none", python=broken_python)
    with pytest.raises(SandboxUnusable, match="evaluation sandbox.*apt-get install bubblewrap"):
        sandbox.run_programs(["pass"], config)
    check_usable(SandboxConfig())  # control: this host's real sandbox runs it


@pytest.mark.req("EVAL-04")
def test_eval_exits_2_with_one_line_and_no_results(broken_python, tmp_path, monkeypatch, capsys):
    from pythoncoder.eval import commands, humaneval

    problems = humaneval.load_problems()
    samples = tmp_path / "samples.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": "    return False\\n"}\n')
    out = tmp_path / "results.jsonl"
    args = ["eval", "humaneval", "--samples", str(samples), "--out", str(out), "--limit", "1",
            "--no-progress"]
    from pythoncoder.cli import main

    monkeypatch.setattr(commands, "SandboxConfig", functools.partial(
        SandboxConfig, isolation="none", python=broken_python))
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pythoncoder eval humaneval: the evaluation "
                                               "sandbox"), err
    assert not out.exists()
    # Control: the real sandbox scores the same file.
    monkeypatch.undo()
    assert main(args) == 0 and out.exists()
    assert len(problems) == humaneval.NUM_PROBLEMS


HOST_STATE = """
import os
for path in ("/proc/loadavg", "/proc/uptime", "/proc/stat", "/proc/meminfo", "/proc/locks",
             "/proc/cmdline", "/proc/sys/kernel/random/boot_id", "/proc/sys/fs/dentry-state",
             "/proc/pressure/memory", "/proc/diskstats", "/proc/cpuinfo"):
    try:
        with open(path) as f:
            print(path, len(f.read()))
    except OSError as e:
        print(path, "unreadable", type(e).__name__)
print("mountinfo", open("/proc/self/mountinfo").read().replace(chr(10), " | "))
"""


def _host_state(config: SandboxConfig) -> tuple[dict[str, str], str]:
    result = run_program(HOST_STATE, config)
    assert result.passed, (result.result, result.stderr[-500:])
    lines = result.stdout.splitlines()
    mountinfo = lines.pop()
    return dict(line.split(" ", 1) for line in lines), mountinfo


@pytest.mark.req("EVAL-04")
@needs_bwrap
def test_host_counters_and_paths_are_not_readable(monkeypatch):
    seen, mountinfo = _host_state(SECURE)
    assert all(v == "0" or v.startswith("unreadable") for v in seen.values()), seen
    folder = isolate._script_dir(sys.executable)  # the scripts' host copy
    assert os.path.basename(folder) not in mountinfo and "/sbx/_judge.py" in mountinfo
    # Control: without the masks each is the host's (non-empty); a bind names its host
    # source in mountinfo (the Python installation, bound at its own path, does).
    monkeypatch.setattr(isolate, "HIDDEN_PROC_FILES", ())
    monkeypatch.setattr(isolate, "HIDDEN_PROC_DIRS", ())
    isolate._bwrap_base.cache_clear()
    try:
        open_, mountinfo = _host_state(SECURE)
    finally:
        monkeypatch.undo()
        isolate._bwrap_base.cache_clear()  # no weakened options left for later tests
    readable = [k for k, v in open_.items() if v.isdigit() and int(v) > 0]
    assert {"/proc/loadavg", "/proc/uptime", "/proc/stat", "/proc/meminfo", "/proc/cmdline",
            "/proc/sys/kernel/random/boot_id"} <= set(readable), open_
    root = sys.base_prefix
    assert f" {root} {root} " in mountinfo


KERNEL_OBJECTS = """
import ctypes, fcntl, os, signal
libc = ctypes.CDLL(None, use_errno=True)
made = []
for _ in range(4000):  # each POSIX timer holds a preallocated queued signal
    tid = ctypes.c_void_p()
    if libc.timer_create(1, None, ctypes.byref(tid)) != 0:  # CLOCK_MONOTONIC
        break
    made.append(tid)
timers = len(made)
for tid in made:
    libc.timer_delete(tid)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGRTMIN})
queued = 0
while queued < 4000 and libc.sigqueue(os.getpid(), signal.SIGRTMIN, 0) == 0:
    queued += 1  # sigqueue(): one queued signal, one kernel object each
r, w = os.pipe()
try:
    grown = fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ: 1 MiB of pipe buffer
except OSError as e:
    grown = -e.errno
print(queued, timers, grown)
"""


@pytest.mark.req("EVAL-04")
@needs_filter
def test_signals_timers_and_pipe_buffers_are_bounded_per_sample():
    result = run_program(KERNEL_OBJECTS, SECURE)
    assert result.passed, (result.result, result.stderr[-400:])
    queued, timers, grown = map(int, result.stdout.split())
    pending = SECURE.max_pending_signals
    assert queued <= pending and timers <= pending, result.stdout  # RLIMIT_SIGPENDING
    assert grown == -1, result.stdout  # F_SETPIPE_SZ refused (EPERM): 64 KiB per pipe
    # Control: without the limits a sample queues thousands and grows a pipe to 1 MiB.
    weak = run_program(KERNEL_OBJECTS, dataclasses.replace(WEAK, max_pending_signals=-1))
    assert weak.passed, (weak.result, weak.stderr[-400:])
    queued, timers, grown = map(int, weak.stdout.split())
    assert queued == 4000 and timers == 4000 and grown == 1 << 20, weak.stdout
