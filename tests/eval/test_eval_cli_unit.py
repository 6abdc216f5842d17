"""``pythoncoder eval``: one benchmark table and one ``evaluate``, and an earlier run's
files never replaced without ``--overwrite``."""

import json

import pytest

from pythoncoder.cli import main
from pythoncoder.eval import BENCHMARKS, evaluate, humaneval, mbpp
from pythoncoder.infer.stops import HUMANEVAL_STOPS

PROBLEM = {"task_id": 1, "text": "Add two numbers.", "code": "def add(a, b):\n    return a + b\n",
           "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}


def test_each_benchmark_is_one_entry():
    assert set(BENCHMARKS) == {"humaneval", "mbpp", "humaneval+", "mbpp+"}
    assert BENCHMARKS["humaneval"].stops == HUMANEVAL_STOPS  # one stop list with generate's
    assert BENCHMARKS["mbpp"].stops == mbpp.MBPP_STOP
    he = humaneval.load_problems()
    first = next(iter(he.values()))
    assert BENCHMARKS["humaneval"].prompt(first) == first["prompt"]
    assert BENCHMARKS["mbpp"].prompt(PROBLEM).startswith('"""\nAdd two numbers.')
    with pytest.raises(KeyError, match="unknown MBPP task"):
        evaluate("mbpp", [{"task_id": "9", "completion": ""}], {"1": PROBLEM}, progress=False)


def test_an_earlier_results_file_is_kept_unless_overwrite(tmp_path, capsys):
    data = tmp_path / "mbpp.jsonl"
    data.write_text(json.dumps(PROBLEM) + "\n")
    args = ["eval", "mbpp", "--data", str(data), "--no-progress", "--workers", "1"]
    assert main(args) == 0
    results = tmp_path / "mbpp_reference_results.jsonl"
    first = results.read_bytes()
    assert json.loads(first.splitlines()[0])["passed"] is True
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err and "--overwrite" in err, err
    assert results.read_bytes() == first
    results.write_text("marker\n")
    assert main([*args, "--overwrite"]) == 0
    assert json.loads(results.read_text().splitlines()[0])["passed"] is True
