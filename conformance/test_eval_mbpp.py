"""EVAL-03: MBPP through the same sandboxed harness.

Spec (spec/eval.toml, EVAL-03): "Same harness, reading a local JSONL in the standard MBPP
format (text, code, test_list, task_id)."
"""

from __future__ import annotations

import json
import sys
import types

import pytest

from pythoncoder.cli import main
from pythoncoder.eval import evaluate, mbpp
from pythoncoder.eval.harness import read_jsonl

# A tiny fixture in the standard MBPP layout (the real data set is not available offline).
PROBLEMS = [
    {
        "task_id": 11,
        "text": "Write a python function to remove first and last occurrence of a given "
                "character from the string.",
        "code": "def remove_Occ(s, ch):\n    i = s.find(ch)\n    if i >= 0:\n"
                "        s = s[:i] + s[i + 1:]\n    j = s.rfind(ch)\n    if j >= 0:\n"
                "        s = s[:j] + s[j + 1:]\n    return s",
        "test_list": ['assert remove_Occ("hello", "l") == "heo"',
                      'assert remove_Occ("abcda", "a") == "bcd"',
                      'assert remove_Occ("PHP", "P") == "H"'],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 12,
        "text": "Write a function to sort a given matrix in ascending order according to "
                "the sum of its rows.",
        "code": "def sort_matrix(M):\n    return sorted(M, key=sum)",
        "test_list": ["assert sort_matrix([[1, 2, 3], [2, 4, 5], [1, 1, 1]]) == "
                      "[[1, 1, 1], [1, 2, 3], [2, 4, 5]]",
                      "assert sort_matrix([[5, 8, 9], [6, 4, 3], [2, 1, 4]]) == "
                      "[[2, 1, 4], [6, 4, 3], [5, 8, 9]]"],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 13,
        "text": "Write a function to find the hypotenuse of a right angled triangle.",
        "code": "def hypotenuse(a, b):\n    return math.sqrt(a * a + b * b)",
        "test_list": ["assert hypotenuse(3, 4) == 5.0",
                      "assert abs(hypotenuse(1, 1) - math.sqrt(2)) < 1e-12"],
        "test_setup_code": "import math",  # the reference code relies on it
        "challenge_test_list": [],
    },
]
WRONG = {11: "def remove_Occ(s, ch):\n    return s.replace(ch, '', 1)",
         12: "def sort_matrix(M):\n    return M",
         13: "def hypotenuse(a, b):\n    return a + b"}


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return path


@pytest.mark.req("EVAL-03")
def test_reads_standard_format(data, tmp_path):
    problems = mbpp.load_problems(data)
    assert sorted(problems) == ["11", "12", "13"]
    assert all(set(mbpp.MBPP_FIELDS) <= set(p) for p in problems.values())
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": 1, "text": "no code or tests"}) + "\n")
    with pytest.raises(ValueError, match="not MBPP format"):
        mbpp.load_problems(bad)


@pytest.mark.req("EVAL-03")
def test_program_is_code_setup_and_asserts():
    p = PROBLEMS[2]
    assert mbpp.program(p, "CODE") == "CODE\nimport math\n" + "\n".join(p["test_list"]) + "\n"


@pytest.mark.req("EVAL-03")
def test_reference_code_passes_and_wrong_code_fails(data):
    problems = mbpp.load_problems(data)
    samples = [{"task_id": p["task_id"], "completion": p["code"]} for p in PROBLEMS]
    samples += [{"task_id": t, "completion": c} for t, c in WRONG.items()]
    # the same hostile early exit as for HumanEval: a correct body, then os._exit(0)
    samples.append({"task_id": 12, "completion": PROBLEMS[1]["code"]
                    + "\nimport os\nos._exit(0)\n"})
    rows = evaluate("mbpp", samples, problems, progress=False)
    assert [r["passed"] for r in rows] == [True] * 3 + [False] * 4
    assert all(r["result"].startswith("failed: ") for r in rows[3:])
    assert "AssertionError" in rows[3]["result"]


@pytest.mark.req("EVAL-03")
def test_cli_reference_and_samples(data, tmp_path, capsys):
    out = tmp_path / "reference.jsonl"
    assert main(["eval", "mbpp", "--data", str(data), "--out", str(out), "--no-progress"]) == 0
    assert "pass@1: 1.0000" in capsys.readouterr().out
    assert [r["passed"] for r in read_jsonl(out)] == [True, True, True]

    samples = tmp_path / "samples.jsonl"
    rows = [{"task_id": p["task_id"], "completion": c}
            for p in PROBLEMS for c in (p["code"], WRONG[p["task_id"]])]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "mbpp", "--data", str(data), "--samples", str(samples),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "pass@1: 0.5000" in printed and "pass@2: 1.0000" in printed
    results = read_jsonl(tmp_path / "samples_results.jsonl")
    assert [r["passed"] for r in results] == [True, False] * 3


@pytest.mark.req("EVAL-03")
def test_cli_generates_with_mbpp_prompts(data, tmp_path, capsys, monkeypatch):
    seen = {}

    def complete(run_dir, prompts, *, n, temperature, max_new_tokens, stop, seed,
                 progress=False):
        seen.update(prompts=prompts, stop=stop, n=n)
        code = {mbpp.prompt(p): p["code"] for p in PROBLEMS}
        return [[code[p] + "\nassert False"] * n for p in prompts]  # cut at the stop

    monkeypatch.setitem(sys.modules, "pythoncoder.infer.api",
                        types.SimpleNamespace(complete=complete))
    assert main(["eval", "mbpp", "--data", str(data), "--run", str(tmp_path),
                 "--no-progress"]) == 0
    assert "pass@1: 1.0000" in capsys.readouterr().out
    assert seen["stop"] == list(mbpp.MBPP_STOP) and seen["n"] == 1
    assert PROBLEMS[0]["text"] in seen["prompts"][0]
    assert PROBLEMS[0]["test_list"][0] in seen["prompts"][0]


@pytest.mark.req("EVAL-05")
def test_judge_mode_and_the_labelled_weak_fallbacks():
    from pythoncoder.eval.harness import format_summary, summarize

    problems = {
        "12": PROBLEMS[1],  # judged outside the candidate
        "2": {"task_id": 2, "text": "Pair class", "code": "class Pair:\n    def __init__(s, a):"
              "\n        s.a = a\n\ndef first(p):\n    return p.a",
              "test_list": ["assert first(Pair(3)) == 3"], "test_setup_code": ""},
        "3": {"task_id": 3, "text": "apply f", "code": "def apply(f, x):\n    return f(x)",
              "test_list": ["assert apply(lambda v: v + 1, 1) == 2"], "test_setup_code": ""},
    }
    assert mbpp.judge_spec(problems["12"])["names"] == ["sort_matrix"]
    assert mbpp.judge_spec(problems["2"]) is None  # the reference defines a class the test uses
    assert mbpp.judge_spec(problems["3"]) is not None  # only the judge finds the lambda
    samples = [{"task_id": p["task_id"], "completion": p["code"]} for p in problems.values()]
    rows = evaluate("mbpp", samples, problems, progress=False)
    assert [(r["passed"], r["verdict"]) for r in rows] == [
        (True, "judge"), (True, "in-sandbox"), (True, "in-sandbox")]
    summary = summarize(rows)
    assert (summary["in_sandbox_verdicts"], summary["in_sandbox_problems"]) == (2, ["2", "3"])
    assert "weak verdicts: 2 sample(s) of 2 problem(s)" in format_summary("mbpp", summary)


@pytest.mark.req("EVAL-05")
def test_stdlib_modules_in_the_asserts_are_the_judges_own():
    """``math.isclose`` in an assert is the judge's ``math``, not a proxy for a candidate
    function called ``math`` (which made every correct sample fail); a free name that is
    called stays the candidate's, even when a stdlib module has that name."""
    problem = {"task_id": 21, "text": "Area of a circle.",
               "code": "import math\ndef circle_area(r):\n    return math.pi * r * r",
               "test_list": ["assert math.isclose(circle_area(1), 3.14159, rel_tol=1e-3)",
                             "assert math.isclose(circle_area(2), 12.566, rel_tol=1e-3)"],
               "test_setup_code": ""}
    spec = mbpp.judge_spec(problem)
    assert spec["names"] == ["circle_area"] and spec["prelude"].startswith("import math\n")
    called = dict(problem, test_list=["assert random(3) == [3]"])  # MBPP-style name clash
    assert mbpp.judge_spec(called)["names"] == ["random"]
    wrong = "import math\ndef circle_area(r):\n    return 2 * math.pi * r"
    samples = [{"task_id": 21, "completion": problem["code"]},
               {"task_id": 21, "completion": wrong}]
    rows = evaluate("mbpp", samples, {"21": problem}, progress=False)
    assert [(r["passed"], r["verdict"]) for r in rows] == [(True, "judge"), (False, "judge")]
