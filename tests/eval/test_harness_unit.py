"""Unit tests of the harness helpers and the command-line parser."""

from __future__ import annotations

import argparse
import json

import pytest

from pythoncoder.eval import HUMANEVAL_STOP, summarize, task_counts, truncate_at_stop
from pythoncoder.eval.commands import _results_path, configure_eval
from pythoncoder.eval.harness import format_summary, read_jsonl, write_jsonl
from pythoncoder.eval.passk import pass_at_ks


def test_truncate_at_stop():
    text = "    return 1\n\ndef other():\n    pass\nprint(1)"
    assert truncate_at_stop(text, HUMANEVAL_STOP) == "    return 1\n"
    assert truncate_at_stop("no stop here", HUMANEVAL_STOP) == "no stop here"
    assert truncate_at_stop("abc", ["", "zz"]) == "abc"
    assert HUMANEVAL_STOP == ("\ndef", "\nclass", "\nif", "\nprint", "\n#")


def test_counts_and_summary():
    rows = [{"task_id": "a", "passed": True, "result": "passed"},
            {"task_id": "a", "passed": False, "result": "failed: x"},
            {"task_id": 7, "passed": False, "result": "timed out"},
            {"task_id": 7, "passed": True, "result": "passed"}]
    assert task_counts(rows) == {"a": (2, 1), "7": (2, 1)}
    summary = summarize(rows)
    assert (summary["passed"], summary["failed"], summary["timed out"]) == (2, 1, 1)
    assert summary["pass_at_k"] == pytest.approx({1: 0.5, 2: 1.0}, rel=1e-12)
    assert "pass@2: 1.0000" in format_summary("x", summary)
    assert summarize(rows, ks=[1, 5])["pass_at_k"] == {1: 0.5}


def test_pass_at_ks_uses_smallest_n():
    assert sorted(pass_at_ks({"a": (5, 1), "b": (2, 0)}, ks=(1, 2, 5))) == [1, 2]
    assert pass_at_ks({}) == {}


def test_jsonl_round_trip(tmp_path):
    rows = [{"task_id": "t", "completion": "x\ny"}]
    write_jsonl(tmp_path / "d" / "a.jsonl", rows)
    assert read_jsonl(tmp_path / "d" / "a.jsonl") == rows
    assert _results_path(tmp_path / "s.jsonl").name == "s_results.jsonl"
    assert _results_path(tmp_path / "s.jsonl.gz").name == "s_results.jsonl"


def test_parser():
    parser = argparse.ArgumentParser()
    configure_eval(parser)
    args = parser.parse_args(["humaneval", "--samples", "s.jsonl", "--k", "1,10"])
    assert (args.benchmark, args.k, args.timeout, args.run) == ("humaneval", (1, 10), 3.0, None)
    args = parser.parse_args(["humaneval", "--run", "r", "--n", "4", "--temperature", "0.8"])
    assert (args.n, args.temperature, args.samples) == (4, 0.8, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["humaneval", "--run", "r", "--samples", "s"])
    with pytest.raises(SystemExit):
        parser.parse_args(["humaneval"])
    with pytest.raises(SystemExit):
        parser.parse_args(["mbpp"])  # --data is required
    assert parser.parse_args(["mbpp", "--data", "d.jsonl"]).samples is None


def test_cli_rejects_malformed_samples(tmp_path, capsys):
    from pythoncoder.cli import main

    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"task_id": "HumanEval/0"}) + "\n")
    assert main(["eval", "humaneval", "--samples", str(path), "--no-progress"]) == 2
    assert "lacks task_id or completion" in capsys.readouterr().err
    path.write_text(json.dumps({"task_id": "Nope/1", "completion": ""}) + "\n")
    assert main(["eval", "humaneval", "--samples", str(path), "--no-progress"]) == 2
    assert "unknown HumanEval task" in capsys.readouterr().err


@pytest.mark.parametrize("body, message", [
    ('{"task_id": "a", "completion": ""}\n\n[1, 2]\n', "line 3: expected a JSON object, got list"),
    ('{"task_id": "a", "completion": ""}\n{"task_id": \n', "line 2: not valid JSON"),
    ('{"task_id": "a", "completion": "' + "x" * 200 + '"}\n', "line 1: longer than 100"),
])
def test_bad_jsonl_rows_are_named_by_line(tmp_path, body, message):
    path = tmp_path / "s.jsonl"
    path.write_text(body)
    with pytest.raises(ValueError, match=message):
        read_jsonl(path, max_line_chars=100)


def test_cli_bad_samples_row_is_one_line_exit_2(tmp_path, capsys):
    from pythoncoder.cli import main

    path = tmp_path / "samples.jsonl"
    path.write_text('{"task_id": "HumanEval/0", "completion": "    return 1\\n"}\n"oops"\n')
    assert main(["eval", "humaneval", "--samples", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 2: expected a JSON object, got str" in err[0]
