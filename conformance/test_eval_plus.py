"""EVAL-07: HumanEval+ / MBPP+ scored by differential testing in the sandbox.

Problems here are small ones in EvalPlus's format, written by the test (EvalPlus's own
release files are not on the package index; ``benchmarks/test_bench_eval.py`` scores
them when ``PYTHONCODER_EVALPLUS`` names the folder holding them)."""

import json
import socket

import pytest

from pythoncoder.cli import main
from pythoncoder.eval import evaluate, plus
from pythoncoder.eval.harness import text_sha256
from pythoncoder.eval.sandbox import JUDGE, SandboxConfig, _wire, run_program
from pythoncoder.eval.sandbox.judge import MESSAGE

pytestmark = pytest.mark.req("EVAL-07")

INC = {"task_id": "HumanEval/900", "prompt": "def inc_all(xs):\n    '''Add one to each.'''\n",
       "entry_point": "inc_all", "canonical_solution": "    return [x + 1 for x in xs]\n",
       "base_input": [[[1, 2]], [[]]], "plus_input": [[[0] * 50], [[-5, 10**30]]], "atol": 0}
SLOW = "def wait(s):\n    import time\n    time.sleep(s)\n    return s\n"


def _load(tmp_path, rows, benchmark="humaneval+"):
    path = tmp_path / f"{benchmark}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return plus.load(benchmark, path, sha256=text_sha256(path)), path


def _run(problem, completion, part, limits=None):
    return run_program(plus.job(problem, completion, part, limits), SandboxConfig())


def test_canonical_passes_and_the_plus_inputs_catch_what_the_base_ones_miss(tmp_path):
    problems, _ = _load(tmp_path, [INC])
    samples = [{"task_id": INC["task_id"], "completion": c} for c in (
        INC["canonical_solution"],
        "    return [x + 1 if abs(x) < 1000 else x for x in xs]\n",  # right on base only
        "    return [x + 2 for x in xs]\n",  # wrong everywhere
    )]
    rows = evaluate("humaneval+", samples, problems, workers=2, progress=False)
    assert [(r["base_passed"], r["plus_passed"], r["passed"]) for r in rows] == [
        (True, True, True), (True, False, False), (False, False, False)]
    assert rows[1]["plus_result"] == "failed: plus input 2 of 2: wrong answer", rows[1]
    assert rows[2]["base_result"] == "failed: base input 1 of 2: wrong answer", rows[2]
    assert rows[2]["plus_result"] == rows[2]["base_result"]  # plus counts only with base
    assert all(r["verdict"] == JUDGE for r in rows)


def test_each_input_has_evalplus_time_limit(tmp_path):
    # the reference sleeps 0.25 s: with factor 4 the input's limit is 1 s (min 0.1 s)
    row = {**INC, "task_id": "HumanEval/901", "prompt": "", "entry_point": "wait",
           "canonical_solution": SLOW, "base_input": [[0.0], [0.25]], "plus_input": [[0.0]]}
    problems, _ = _load(tmp_path, [row])
    limits = (0.1, 4.0, 60.0)
    slow = SLOW.replace("time.sleep(s)", "time.sleep(2.0 if s else 0)")
    ok = SLOW.replace("time.sleep(s)", "time.sleep(0.6 if s else 0)")
    late = _run(problems["HumanEval/901"], slow, "base", limits)
    assert late.status == "timed out", late
    assert late.reason.startswith("base input 2 of 2: no answer within "), late.reason
    limit = float(late.reason.rsplit(" ", 2)[-2])
    assert 1.0 <= limit < 1.6, late.reason  # 4 x the reference's 0.25 s (and its overhead)
    assert late.duration_s < 2.0, late  # stopped at the limit, not at the sleep's end
    assert _run(problems["HumanEval/901"], ok, "base", limits).passed  # the control


def test_a_part_has_min_cap_sum_plus_one_seconds(tmp_path):
    row = {**INC, "task_id": "HumanEval/902", "prompt": "", "entry_point": "wait",
           "canonical_solution": SLOW, "base_input": [[0.0]] * 3, "plus_input": [[0.0]]}
    problems, _ = _load(tmp_path, [row])
    each = SLOW.replace("time.sleep(s)", "time.sleep(0.7)")
    over = _run(problems["HumanEval/902"], each, "base", (4.0, 4.0, 0.5))  # 0.5 + 1 s
    assert (over.status, over.reason) == ("timed out", "no result within 1.5 s"), over
    assert _run(problems["HumanEval/902"], each, "base", (4.0, 4.0, 3.0)).passed


def test_floats_within_evalplus_tolerance(tmp_path):
    row = {**INC, "task_id": "HumanEval/903", "prompt": "def third(x):\n",
           "entry_point": "third", "canonical_solution": "    return x / 3\n",
           "base_input": [[1.0], [7.0]], "plus_input": [[1e6]]}
    problems, _ = _load(tmp_path, [row])
    p = problems["HumanEval/903"]
    # atol 0 with float answers: 1e-6 + 1e-7 * |exp| (3.3e-2 more at 1e6 / 3)
    assert _run(p, "    return x / 3 + 9e-7\n", "base").passed
    assert _run(p, "    return x / 3 + 2e-2\n", "plus").passed
    near = _run(p, "    return x / 3 + 2e-6\n", "base")
    assert near.reason == "base input 1 of 2: wrong answer", near
    assert _run(p, "    return x // 3\n", "base").reason == "base input 1 of 2: wrong answer"


def test_inputs_past_one_socket_message_cross(tmp_path):
    big = [[list(range(60_000))]]  # ~420 KB encoded: many messages of MESSAGE bytes
    row = {**INC, "task_id": "HumanEval/904", "plus_input": big}
    problems, _ = _load(tmp_path, [row])
    assert len(problems["HumanEval/904"]["inputs"]["plus"]) > 4 * MESSAGE
    result = _run(problems["HumanEval/904"], INC["canonical_solution"], "plus")
    assert result.passed, result
    # the control: one datagram that size is refused by the kernel
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b, pytest.raises(OSError):
        a.send(problems["HumanEval/904"]["inputs"]["plus"])


def test_answers_past_the_old_decimal_cap_cross(tmp_path):
    row = {**INC, "task_id": "HumanEval/905", "prompt": "def power(n):\n",
           "entry_point": "power", "canonical_solution": "    return 7 ** n\n",
           "base_input": [[3]], "plus_input": [[20_000]]}  # 16,902 decimal digits
    problems, _ = _load(tmp_path, [row])
    assert _run(problems["HumanEval/905"], "    return 7 ** n\n", "plus").passed
    wrong = _run(problems["HumanEval/905"], "    return 7 ** n + 1\n", "plus")
    assert wrong.reason == "plus input 1 of 1: wrong answer", wrong


MBPP_ROW = {"task_id": "Mbpp/2", "prompt": '"""\nShared elements.\n"""\n',
            "entry_point": "similar_elements",
            "canonical_solution": "def similar_elements(a, b):\n"
                                  "    assert type(a) is tuple and type(b) is tuple\n"
                                  "    return tuple(set(a) & set(b))\n",
            "base_input": [[[3, 4, 5, 6], [5, 7, 4, 10]]], "plus_input": [[[1, 2], [2, 1]]],
            "atol": 0}


def test_mbpp_plus_through_the_command(tmp_path, capsys):
    _, path = _load(tmp_path, [MBPP_ROW], "mbpp+")
    digest = text_sha256(path)
    args = ["eval", "mbpp+", "--problems", str(path), "--no-progress", "--workers", "1"]
    assert main(args) == 2  # not a known release
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and digest in err and "--data-sha256" in err, err
    assert main([*args, "--data-sha256", digest]) == 0
    out = capsys.readouterr().out
    assert "pass@1: base 1.0000  plus 1.0000" in out, out
    rows = [json.loads(x) for x in (tmp_path / "mbpp+_reference_results.jsonl").open()]
    assert rows[0]["base_passed"] and rows[0]["plus_passed"]
    # tuples reach the candidate as tuples; a set-valued answer in any order passes
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "Mbpp/2", "completion": (
        "def similar_elements(a, b):\n    assert type(a) is tuple\n"
        "    return tuple(sorted(set(a) & set(b), reverse=True))\n")}) + "\n")
    assert main([*args, "--data-sha256", digest, "--samples", str(samples)]) == 0
    assert "pass@1: base 1.0000  plus 1.0000" in capsys.readouterr().out


def test_humaneval_plus_needs_its_data(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "humaneval+", "--samples", "x.jsonl"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert "required: --problems" in err, err


# An answer past the wire's item cap (4,194,304): 900,000 4-tuples of str are 4.5 million
# items, built from 4 strings so that making, hashing and comparing them is cheap.
BIG = {**INC, "task_id": "HumanEval/906", "prompt": "def pairs(n, k):\n",
       "entry_point": "pairs", "canonical_solution": (
           "    return [('ab', 'cd', 'ef', 'gh')] * n + [('x',) * k]\n"),
       "base_input": [[1, 1]], "plus_input": [[900_000, 2]]}


def test_an_answer_too_large_to_cross_is_compared_by_its_digest(tmp_path):
    problems, _ = _load(tmp_path, [BIG])
    p = problems["HumanEval/906"]
    answer = [("ab", "cd", "ef", "gh")] * 900_000 + [("x", "x")]
    with pytest.raises(_wire.WireLimitError):  # the control: it cannot cross as itself
        _wire.encode(answer)
    right = _run(p, BIG["canonical_solution"], "plus")  # strings made afresh: same digest
    assert right.passed, right
    made = "    return [(''.join(['a', 'b']), 'cd', 'ef', 'gh') for _ in range(n)] + [('x',) * k]\n"
    assert _run(p, made, "plus").passed
    # one item of the answer wrong (a length, or list for tuple: tests/eval/test_plus_unit)
    wrong = _run(p, "    out = [('ab', 'cd', 'ef', 'gh')] * n + [('x',) * k]\n"
                    "    out[n // 2] = ('ab', 'cd', 'ef', 'gX')\n    return out\n", "plus")
    assert wrong.reason == "plus input 1 of 1: wrong answer (compared by digest)", wrong


def test_a_digest_stands_only_for_answers_of_strings_or_exact_plain_data(tmp_path):
    # ints: compared by their exact bytes (their hashes are not keyed); NaN or a set: no
    # digest may stand for them, and such an answer past the caps fails as before
    rows = [{**BIG, "task_id": "HumanEval/907", "canonical_solution": (
                "    return [(1, 2, 3, n)] * n + [(-1,) * k]\n")},
            {**BIG, "task_id": "HumanEval/908", "canonical_solution": (
                "    return [(1.5, float('nan'), 3.0, 4.0)] * n + [(0.0,) * k]\n")},
            {**BIG, "task_id": "HumanEval/909", "canonical_solution": (
                "    return [('ab', 'cd', 'ef', frozenset({'gh'}))] * n + [('x',) * k]\n")}]
    problems, _ = _load(tmp_path, rows)
    ints = problems["HumanEval/907"]
    assert _run(ints, rows[0]["canonical_solution"], "plus").passed
    off = _run(ints, rows[0]["canonical_solution"].replace("(-1,)", "(-2,)"), "plus")
    assert off.reason == "plus input 1 of 1: wrong answer (compared by digest)", off
    for task in ("HumanEval/908", "HumanEval/909"):
        result = _run(problems[task], [r for r in rows if r["task_id"] == task][0][
            "canonical_solution"], "plus")
        assert result.reason.startswith("plus input 1 of 1: the answer cannot cross"), result
