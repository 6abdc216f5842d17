"""Unit tests of the sandbox: channels, guards, limits and clean-up."""

from __future__ import annotations

import glob
import json
import os
import resource
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from pythoncoder.eval import sandbox
from pythoncoder.eval.sandbox import (
    SANDBOX_GID,
    SANDBOX_UID,
    Job,
    SandboxConfig,
    isolate,
    isolation,
    process,
    run_program,
    run_programs,
)
from pythoncoder.eval.sandbox.process import _verdict

FAST = SandboxConfig(timeout_s=1.0)


def run(source: str, config: SandboxConfig = FAST):
    return run_program(textwrap.dedent(source), config)


def test_pass_fail_and_reason():
    assert run("x = 1").result == "passed"
    assert run("assert 1 == 2, 'nope'").result == "failed: AssertionError: nope"
    assert run("def f(:\n  pass").result.startswith("failed: SyntaxError")
    assert run("raise SystemExit(0)").result == "failed: SystemExit: 0"
    assert run("raise KeyboardInterrupt").result == "failed: KeyboardInterrupt"


def test_cannot_forge_the_success_token():
    forged = """
        import os, sys
        print("PASS deadbeef"); sys.stdout.flush()
        for fd in range(3, 64):
            try:
                os.write(fd, b"PASS 0123456789abcdef0123456789abcdef\\n")
            except OSError:
                pass
        os._exit(0)
    """
    assert not run(forged).passed


def test_nonce_is_not_in_argv_env_stdin_or_files():
    probe = """
        import os, sys
        assert os.read(0, 100) == b""
        blob = " ".join(sys.argv) + " ".join(os.environ.values())
        for name in os.listdir("."):
            blob += open(name).read()
        print(blob)
    """
    result = run(probe)
    assert result.passed, result.result
    # the nonce is 32 hex digits; nothing of that shape is visible
    assert not any(len(w) == 32 and all(c in "0123456789abcdef" for c in w)
                   for w in result.stdout.split())


def test_clean_environment_and_private_workdir():
    probe = """
        import os, tempfile
        assert not any("proxy" in k.lower() for k in os.environ), os.environ
        assert set(os.environ) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "PWD",
                                   "PYTHONHASHSEED"}, os.environ
        cwd = os.getcwd()
        assert os.environ["HOME"] == cwd == tempfile.gettempdir()
        open("scratch.txt", "w").write("ok")
        os.mkdir("sub"); os.rename("scratch.txt", "sub/moved.txt"); os.remove("sub/moved.txt")
        print(cwd, os.getuid(), os.getgid())
    """
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "pythoncoder-sbx-*")))
    result = run(probe)
    assert result.passed, result.result
    cwd, uid, gid = result.stdout.split()
    assert (int(uid), int(gid)) == (SANDBOX_UID, SANDBOX_GID)
    if isolation() == "bwrap":
        assert cwd == "/work"  # a tmpfs inside the sandbox's mount namespace
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "pythoncoder-sbx-*"))) <= before


@pytest.mark.parametrize(("escape", "error"), [
    ("import os; os.fork()", "BlockingIOError"),  # RLIMIT_NPROC 0 for uid 65534
    pytest.param("import os; os.kill(1, 9)", "PermissionError",  # the sandbox's root init
                 marks=pytest.mark.skipif(os.geteuid() != 0, reason="init is ours without root")),
    ("import os; os.mkdir('/usr/lib/pythoncoder-escape')", "OSError"),  # read-only
    ("import os; open(os.__file__, 'a')", "OSError"),  # the stdlib is read-only
    ("import resource; resource.setrlimit(resource.RLIMIT_CPU, (100, 100))", "ValueError"),
    ("import os; os.setuid(0)", "PermissionError"),
])
def test_kernel_refuses(escape, error):
    result = run(escape)
    assert not result.passed
    assert result.result.startswith("failed: "), result.result
    assert error in result.result or (error == "OSError" and "Error" in result.result), \
        result.result


@pytest.mark.skipif(isolation() != "bwrap", reason="needs bubblewrap")
def test_host_paths_are_invisible():
    # Only the Python installation is bound where it lives (its shared library's RUNPATH
    # names that path); a virtualenv, the temp directory and the cwd are not, wherever
    # they are (a venv under /tmp included).
    roots = [os.path.realpath(sys.base_prefix)]
    shown = {Path(r).parts[1] for r in roots}
    hidden = [p for p in (tempfile.gettempdir(), os.getcwd(), "/etc/passwd")
              if not any(p == r or p.startswith(r + os.sep) for r in roots)]
    if sys.prefix != sys.base_prefix:  # a virtualenv: never needed (-I -S), never shown
        hidden.append(sys.prefix)
    # Parents of the installation appear as bare directories holding only the next part.
    parents = {str(q): sorted({Path(r).relative_to(q).parts[0] for r in roots
                               if Path(r).is_relative_to(q) and Path(r) != q})
               for r in roots for q in Path(r).parents if str(q) != "/"}
    probe = f"""
        import os
        print(repr((sorted(os.listdir("/")), [os.path.exists(p) for p in {hidden!r}],
                    {{q: sorted(os.listdir(q)) for q in {sorted(parents)!r}}},
                    len([p for p in os.listdir("/proc") if p.isdigit()]) <= 3)))
    """
    result = run(probe)
    assert result.passed, result.result
    top, exists, listed, few = eval(result.stdout)
    assert set(top) <= {"usr", "lib", "lib64", "lib32", "proc", "dev", "work", "sbx"} | shown
    assert exists == [False] * len(hidden), dict(zip(hidden, exists))
    for q, names in listed.items():  # e.g. /root holds .pyenv only
        assert set(names) <= set(parents[q]) | {"lib", "lib64", "lib32"}, (q, names)
    assert few


def test_closing_stdout_does_not_confuse_the_harness():
    assert run("import sys; sys.stdout.close(); sys.stderr.close()").passed
    closed_fds = "import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass\n"
    assert run(closed_fds).result == "timed out"


def test_output_is_capped_and_drained():
    config = SandboxConfig(timeout_s=5.0, output_cap_bytes=1000)
    result = run("import sys\nprint('x' * 10**7)\nsys.stderr.write('e' * 10**6)", config)
    assert result.passed
    assert len(result.stdout) == 1000 and result.stdout_truncated
    assert len(result.stderr) == 1000 and result.stderr_truncated
    assert not run("print('small')").stdout_truncated


def test_file_size_limit():
    config = SandboxConfig(timeout_s=2.0, file_size_bytes=1 << 20)
    result = run("open('big', 'wb').write(b'x' * (4 << 20))", config)
    assert result.result.startswith("failed: OSError"), result.result  # EFBIG
    assert run("open('ok', 'wb').write(b'x' * (1 << 19))", config).passed


def test_memory_limit():
    config = SandboxConfig(memory_bytes=512 * 1024**2)
    assert run("b = bytearray(1024**3)", config).result == "failed: MemoryError"
    assert run("b = bytearray(100 * 1024**2)", config).passed


def test_killed_by_signal_is_reported():
    result = run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert result.result == "failed: killed by signal SIGKILL"


def test_cpu_limit_backs_up_the_wall_clock():
    config = SandboxConfig(timeout_s=1.0)
    assert config.cpu_seconds == 2
    # Ignore SIGXCPU: the hard CPU limit still kills it, or the wall clock does.
    result = run("import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
                 "while True:\n    pass\n", config)
    assert result.result in ("timed out", "failed: killed by signal SIGKILL")


def test_network_namespace_when_available():
    result = run("import os\nprint(os.readlink('/proc/self/ns/net'))")
    assert result.passed
    mine = os.readlink("/proc/self/ns/net")
    if isolation() == "none":
        pytest.skip("neither bwrap nor unshare works here")
    assert result.stdout.strip() != mine


def test_run_programs_keeps_order_and_reports_each():
    seen = []
    sources = [f"assert {i} % 2 == 0" for i in range(6)]
    results = run_programs(sources, FAST, workers=3, on_result=lambda i, r: seen.append(i))
    assert [r.passed for r in results] == [True, False] * 3
    assert sorted(seen) == list(range(6))


def test_verdict_requires_token_and_clean_exit():
    assert _verdict("PASS abc\n", "abc", 0) == ("passed", "")
    assert _verdict("PASS abc\n", "abc", 1)[0] == "failed"
    assert _verdict("PASS abd\n", "abc", 0)[0] == "failed"
    assert _verdict("", "abc", -9) == ("failed", "killed by signal SIGKILL")
    assert _verdict("FAIL ValueError: x\n", "abc", 1) == ("failed", "ValueError: x")


@pytest.mark.parametrize("kind", ["unshare", "none"])
def test_fallback_isolation_runs_judges_and_cleans_up(kind):
    if kind == "unshare" and not isolate._probe("unshare", sys.executable):
        pytest.skip("unshare is not permitted here")
    config = SandboxConfig(isolation=kind, timeout_s=5.0)
    if os.geteuid() == 0 and not isolate._others_can_read(sysconfig.get_paths()["stdlib"]):
        # uid 65534 cannot import from this Python (a 0700 parent): the harness refuses
        with pytest.raises(sandbox.SandboxUnusable, match="apt-get install bubblewrap"):
            run("pass", config)
        return
    deep = run("import os\nfor _ in range(1500):\n    os.mkdir('d')\n    os.chdir('d')\n"
               "print(os.getcwd().split('/d/')[0], os.getuid())", config)
    assert deep.passed, deep.result
    workdir, uid = deep.stdout.split()
    assert not os.path.exists(workdir)  # removed although deeper than Python's recursion
    if os.geteuid() == 0:
        assert int(uid) == SANDBOX_UID
    spec = {"prelude": "", "test": "def check(c):\n    assert c(1) == 2\n", "names": ["f"],
            "entry": "f"}
    judged = run_program(Job("def f(x):\n    return x + 1\n", spec), config)
    assert (judged.result, judged.verdict) == ("passed", "judge")
    # Outside bwrap a sample can read host files: its exception text stays out.
    assert run("raise ValueError('host data')", config).result == "failed: ValueError"


def test_warns_once_without_bwrap(monkeypatch):
    monkeypatch.setattr(isolate, "_probe", lambda kind, python: kind == "unshare")
    monkeypatch.setattr(isolate, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match="isolation is 'unshare'.*file system stays visible"):
        assert sandbox.isolation() == "unshare"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sandbox.isolation() == "unshare"  # no second warning


@pytest.mark.parametrize("by", ["harness", "child"])
def test_limits_hold_whether_the_harness_or_the_child_sets_them(by, monkeypatch):
    # Pre-started sandboxes get their rlimits from the harness (prlimit) when their
    # interpreter is up in time, else the child sets them from the same list: every sample
    # sees the same, a job's own seconds included.
    if by == "child":
        monkeypatch.setattr(process, "_prlimit", lambda cand, config: False)
    config = SandboxConfig(timeout_s=2.0, memory_bytes=768 * 1024**2)
    names = ("CPU", "AS", "FSIZE", "NPROC", "NOFILE", "CORE", "SIGPENDING", "MSGQUEUE",
             "MEMLOCK", "RTPRIO")
    probe = ("import resource as r\nprint([r.getrlimit(getattr(r, 'RLIMIT_' + n)) for n in "
             f"{names!r}])")
    expected = [(3, 4), (768 * 1024**2,) * 2, (config.file_size_bytes,) * 2, (0, 0),
                (64, 64), (0, 0), (64, 64), (0, 0), (0, 0), (0, 0)]
    results = run_programs([probe] * 4 + [Job(probe, timeout_s=9.0)], config, workers=1)
    assert [r.stdout.strip() for r in results] == [str(expected)] * 4 + [
        str([(10, 11), *expected[1:]])]
    assert process.rlimits(config) == [(n, *v) for n, v in zip(
        ("CPU", "CORE", "AS", "FSIZE", "NPROC", "NOFILE", "SIGPENDING", "MSGQUEUE", "MEMLOCK",
         "RTPRIO"), [expected[i] for i in (0, 5, 1, 2, 3, 4, 6, 7, 8, 9)], strict=True)]


def test_prlimit_targets_only_the_interpreter():
    # Never bwrap (its argv names the script too): the child, told the limits are set,
    # would skip them while its interpreter ran unlimited.
    config = SandboxConfig()
    cand = process._Candidate(config, isolation(config))
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # from the first instant: bwrap still starting
            process._prlimit(cand, config)
        pids, pid = [cand.proc.pid], cand.proc.pid
        while kids := process._children(pid):
            pid = kids[0]
            pids.append(pid)
        assert len(pids) >= 2
        for p in pids[:-1]:  # bwrap (and its init): untouched
            assert resource.prlimit(p, resource.RLIMIT_NPROC)[0] != 0
    finally:
        cand.kill()


def test_judge_maps_iteration_ending_exceptions_to_runtime_error():
    """StopIteration from the candidate must not end a test's map()/zip() early as a pass."""
    from pythoncoder.eval.sandbox import _judge

    for name in ("StopIteration", "StopAsyncIteration", "AssertionError"):
        assert _judge._EXCEPTIONS.get(name, RuntimeError) is RuntimeError
    assert _judge._EXCEPTIONS["ValueError"] is ValueError

    def candidate(x):  # what a proxy does with a ("raise", "StopIteration") reply
        raise _judge._EXCEPTIONS.get("StopIteration", RuntimeError)("raised in the sandbox")

    with pytest.raises(RuntimeError):
        all(map(candidate, [1, 2, 3]))


@pytest.mark.parametrize("kind", ["auto", "unshare", "none"])
def test_hash_seed_is_the_harness_s_and_no_other_python_variable_reaches(monkeypatch, kind):
    # -I less its -E: PYTHONHASHSEED is read (the judge's digests need it), yet only
    # the harness's own environment reaches the interpreter, never the host's PYTHON*
    if kind == "unshare" and not isolate._probe("unshare", sys.executable):
        pytest.skip("unshare is not permitted here")
    if kind != "auto" and os.geteuid() == 0 \
            and not isolate._others_can_read(sysconfig.get_paths()["stdlib"]):
        pytest.skip("uid 65534 cannot import from this Python outside bwrap")
    for name, value in (("PYTHONINSPECT", "1"), ("PYTHONWARNINGS", "error"),
                        ("PYTHONPATH", "/tmp"), ("PYTHONHASHSEED", "1"),
                        ("PYTHONSTARTUP", "/etc/passwd")):
        monkeypatch.setenv(name, value)
    probe = """
        import json, os, sys
        f = sys.flags
        print(json.dumps([hash("pythoncoder"), sorted(os.environ), sys.path, sys.warnoptions,
                          [f.no_user_site, f.safe_path, f.ignore_environment, f.no_site,
                           f.dont_write_bytecode, f.inspect]]))
    """
    result = run(probe, SandboxConfig(isolation=kind, timeout_s=5.0))
    assert result.passed, result.result
    seeded = subprocess.run(
        [sys.executable, "-c", "print(hash('pythoncoder'))"], capture_output=True, text=True,
        env={"PYTHONHASHSEED": isolate.HASH_SEED}, check=True).stdout
    hashed, names, path, warnoptions, flags = json.loads(result.stdout)
    assert hashed == int(seeded)  # the harness's seed, as every sandbox of this process
    assert set(names) - {"PWD"} == {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL",
                                    "PYTHONHASHSEED"}, names
    assert flags == [1, True, 0, 1, 1, 0]  # -s -P -S -B, not -E; no PYTHONINSPECT
    assert warnoptions == [] and "/tmp" not in path, path  # no PYTHONWARNINGS, PYTHONPATH
    assert not any("sbx" in p or "pythoncoder-scripts" in p for p in path), path  # -P
