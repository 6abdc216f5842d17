"""HumanEval+ / MBPP+ without a sandbox: the release check, MBPP+'s arguments, and the
judge's comparison rules (EvalPlus's), each against values worked out by hand."""

import gzip
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pythoncoder.eval import plus
from pythoncoder.eval.harness import summarize, text_sha256
from pythoncoder.eval.sandbox import _judge, _wire

ROW = {"task_id": "HumanEval/0", "prompt": "def f(x):\n", "entry_point": "f",
       "canonical_solution": "    return x + 1\n", "base_input": [[1], [2]],
       "plus_input": [[3]], "atol": 0, "test": "", "contract": ""}


def _write(path, rows, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(text) if gz else text)
    return path


def test_a_release_is_known_by_its_text_whatever_the_compression(tmp_path, monkeypatch):
    plain = _write(tmp_path / "a.jsonl", [ROW])
    packed = _write(tmp_path / "b.jsonl.gz", [ROW], gz=True)
    digest = text_sha256(plain)
    assert text_sha256(packed) == digest
    with pytest.raises(ValueError, match=f"not a known HumanEvalPlus release .*{digest}"):
        plus.load("humaneval+", packed)
    monkeypatch.setitem(plus.RELEASES["humaneval+"], digest, "v-test")
    problems = plus.load("humaneval+", packed)
    with pytest.raises(ValueError, match="is humaneval\\+ v-test, not mbpp\\+"):
        plus.load("mbpp+", packed)  # the other benchmark's release: named
    assert problems["HumanEval/0"]["release"] == "v-test"
    assert _wire.decode(problems["HumanEval/0"]["inputs"]["base"]) == [[1], [2]]
    assert _wire.decode(problems["HumanEval/0"]["inputs"]["plus"]) == [[3]]


def test_a_stated_digest_is_the_only_one_taken(tmp_path):
    path = _write(tmp_path / "HumanEvalPlus.jsonl", [ROW])
    digest = text_sha256(path)
    assert plus.load("humaneval+", tmp_path, sha256=digest.upper())  # the folder's file
    with pytest.raises(ValueError, match="not the --data-sha256 given"):
        plus.load("humaneval+", path, sha256="0" * 64)
    with pytest.raises(ValueError, match="needs EvalPlus's data"):
        plus.load("humaneval+", None)


def test_a_folder_names_one_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds 0 HumanEvalPlus"):
        plus.data_file(tmp_path, "humaneval+")
    _write(tmp_path / "HumanEvalPlus-OriginFmt.jsonl.gz", [ROW], gz=True)  # not this one
    _write(tmp_path / "HumanEvalPlus-Mini.jsonl.gz", [ROW], gz=True)  # nor this
    one = _write(tmp_path / "HumanEvalPlus-v0.1.10.jsonl.gz", [ROW], gz=True)
    assert plus.data_file(tmp_path, "humaneval+") == one
    _write(tmp_path / "HumanEvalPlus.jsonl", [ROW])
    with pytest.raises(FileNotFoundError, match="holds 2 .*name one"):
        plus.data_file(tmp_path, "humaneval+")


def test_a_problem_without_its_fields_is_refused(tmp_path):
    path = _write(tmp_path / "x.jsonl", [{k: v for k, v in ROW.items() if k != "plus_input"}])
    with pytest.raises(ValueError, match=r"problem 0 lacks \['plus_input'\]"):
        plus.load("humaneval+", path, sha256=text_sha256(path))


@pytest.mark.parametrize(("task", "given_", "rebuilt"), [
    ("Mbpp/2", [[[3, 4], [5]]], [[(3, 4), (5,)]]),  # every argument a tuple
    ("Mbpp/63", [[[[1, 2], [3, 4]]]], [[[(1, 2), (3, 4)]]]),  # a list of tuples
    ("Mbpp/75", [[[[1, 2]], 3]], [[[(1, 2)], 3]]),
    ("Mbpp/106", [[[1], [2, 3]]], [[[1], (2, 3)]]),
    ("Mbpp/115", [[[[1, 2], [], 7]]], [[[{1, 2}, {}, {}]]]),  # EvalPlus's {} for empty
    ("Mbpp/124", [["1.5", "(1+2j)"]], [[1.5, 1 + 2j]]),
    ("Mbpp/250", [[[1, 2], 2]], [[(1, 2), 2]]),
    ("Mbpp/259", [[[[1, 2]], [[3]]]], [[((1, 2),), ((3,),)]]),
    ("Mbpp/278", [[[1, [2, 3], 4]]], [[(1, (2, 3), 4)]]),
    ("Mbpp/307", [[[1, 2], 0, 5]], [[(1, 2), 0, 5]]),
    ("Mbpp/722", [[{"a": [1, 2]}, 1, 2]], [[{"a": (1, 2)}, 1, 2]]),
    ("Mbpp/252", [["(1+2j)"]], [[1 + 2j]]),
    ("Mbpp/580", [[[1, [2, [3]]]]], [((1, (2, (3,))),)]),
    ("Mbpp/3", [[[1, 2]]], [[[1, 2]]]),  # not listed: as it is
])
def test_mbpp_plus_arguments_are_rebuilt_as_evalplus_does(task, given_, rebuilt):
    out = plus.mbpp_arguments(task, given_)
    assert out == rebuilt
    assert _wire.encode(out) == _wire.encode(rebuilt)  # types too (tuple vs list, set)


def _agrees(out, exp, args=(), atol=0.0, oracle=None):
    return _judge._agrees(oracle, out, exp, list(args), atol)


def test_answers_compare_as_evalplus_compares_them():
    assert _agrees([1, 2], [1, 2]) and not _agrees([1, 2], (1, 2))
    assert not _agrees(1, 2) and _agrees("a", "a")
    # atol 0 and a float answer: within 1e-6 + 1e-7 * |exp|
    assert _agrees(1.0 + 1.05e-6, 1.0) and not _agrees(1.0 + 1.15e-6, 1.0)
    # rtol 1e-7 of 1000 is 1e-4 more: 1.01e-4 in all
    assert _agrees(1000.0 + 0.99e-4, 1000.0) and not _agrees(1000.0 + 1.03e-4, 1000.0)
    assert _agrees([1.0, 2.0 + 1e-7], [1.0, 2.0])
    assert not _agrees((1.0, 2.0), [1.0, 2.0])  # the type must match
    assert not _agrees([1.0], [1.0, 2.0])
    assert not _agrees(float("nan"), float("nan")) and _agrees(math.inf, math.inf)
    assert not _agrees(math.inf, 1.0) and not _agrees("1.0", 1.0)
    # a problem's own atol
    assert _agrees(2.00009, 2.0, atol=1e-4) and not _agrees(2.00011, 2.0, atol=1e-4)
    # an int answer gets no tolerance (atol 0, not floats)
    assert not _agrees(3, 2)


def test_evalplus_oracles():
    xs = [-6.0, 11.0, -6.0, 1.0]  # (x-1)(x-2)(x-3)
    assert _agrees(2.0, 1.0, [xs], atol=1e-4, oracle="poly_root")  # any root
    assert not _agrees(1.5, 1.0, [xs], atol=1e-4, oracle="poly_root")
    assert not _agrees("2", 1.0, [xs], atol=1e-4, oracle="poly_root")
    assert _agrees((4, 5), (5, 4), oracle="set_equal")
    assert not _agrees((4, 5, 6), (5, 4), oracle="set_equal")
    assert _agrees("a match", True, oracle="not_none") and _agrees(None, False, oracle="not_none")
    assert not _agrees(None, True, oracle="not_none") and _agrees(True, True, oracle="not_none")
    assert _agrees(True, False, oracle="any")
    assert _agrees(0, 7, oracle="or_zero") and not _agrees(1, 7, oracle="or_zero")
    # Mbpp/581: base 3, height 4 -> 9 + 2*3*sqrt(1.5^2 + 16) = 34.63 -> 35
    assert _agrees(35, 33, [3, 4], oracle="surface_area")
    assert not _agrees(34, 33, [3, 4], oracle="surface_area")
    # Mbpp/558: 123 vs 2561 -> 0123 vs 2561: 2 + 4 + 4 + 2 = 12
    assert _agrees(12, 10, [123, 2561], oracle="digit_distance")
    assert not _agrees(11, 10, [123, 2561], oracle="digit_distance")


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
       st.floats(min_value=0, max_value=1e-3))
def test_float_closeness_is_numpys_allclose(exp, delta):
    np = pytest.importorskip("numpy")
    out = exp + delta
    assert _judge._close(out, exp, 1e-6) == bool(np.allclose(out, exp, rtol=1e-7, atol=1e-6))


def test_the_summary_puts_base_and_plus_side_by_side():
    rows = [{"task_id": t, "result": "passed" if p else "failed: x", "passed": p,
             "base_passed": b, "plus_passed": p}
            for t, b, p in (("a", True, True), ("a", True, False), ("b", True, False),
                            ("b", False, False))]
    summary = summarize(rows, ks=(1, 2))
    assert summary["pass_at_k_by_part"]["base"] == {1: 0.75, 2: 1.0}
    assert summary["pass_at_k_by_part"]["plus"] == summary["pass_at_k"] == {1: 0.25, 2: 0.5}
