"""EVAL-01: unbiased pass@k in its stable product form; best-of-n curves.

Spec (spec/eval.toml, EVAL-01): "pass@k = 1 - C(n-c,k)/C(n,k) in its stable product form."
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pythoncoder.eval.passk import best_of_n, mean_pass_at_k, pass_at_k, pass_at_ks
from pythoncoder.spec import check_values

CHECKS = check_values("EVAL-01")


def _exact(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


@st.composite
def nck(draw, max_n: int = 60):
    n = draw(st.integers(1, max_n))
    return n, draw(st.integers(0, n)), draw(st.integers(1, n))


@pytest.mark.req("EVAL-01")
@pytest.mark.parametrize("key", sorted(CHECKS))
def test_check_values(key):
    n, c, k = (int(v) for v in re.fullmatch(r"n(\d+)_c(\d+)_k(\d+)", key).groups())
    assert pass_at_k(n, c, k) == pytest.approx(CHECKS[key], rel=1e-8, abs=1e-9)


@pytest.mark.req("EVAL-01")
@given(nck())
def test_equals_exact_combinatorics(args):
    n, c, k = args
    assert pass_at_k(n, c, k) == pytest.approx(float(_exact(n, c, k)), rel=1e-12, abs=1e-12)


@pytest.mark.req("EVAL-01")
@given(nck(max_n=400))
def test_in_unit_interval_and_monotone(args):
    n, c, k = args
    p = pass_at_k(n, c, k)
    assert 0.0 <= p <= 1.0
    if c < n:
        assert pass_at_k(n, c + 1, k) >= p - 1e-12
    if k < n:
        assert pass_at_k(n, c, k + 1) >= p - 1e-12
    assert (p == 0.0) == (c == 0)
    if n - c < k:  # every draw of k contains a correct sample
        assert p == 1.0


@pytest.mark.req("EVAL-01")
@given(st.integers(1, 10_000), st.data())
def test_pass_at_1_is_fraction_correct(n, data):
    c = data.draw(st.integers(0, n))
    assert pass_at_k(n, c, 1) == pytest.approx(c / n, rel=1e-12, abs=1e-15)


@pytest.mark.req("EVAL-01")
def test_stable_for_large_n():
    # C(10^6, 500) overflows floats; the product form does not.
    value = pass_at_k(1_000_000, 1_000, 500)
    assert math.isfinite(value)
    reference = 1 - math.exp(sum(math.log1p(-500 / i) for i in range(999_001, 1_000_001)))
    assert value == pytest.approx(reference, rel=1e-9, abs=1e-12)


@pytest.mark.req("EVAL-01")
@pytest.mark.parametrize("n,c,k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_rejects_invalid_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


@pytest.mark.req("EVAL-01")
def test_mean_and_reported_ks():
    counts = {"a": (3, 1), "b": (3, 3), "c": (3, 0)}
    got = pass_at_ks(counts, ks=(1, 2, 3, 5, 10))
    assert sorted(got) == [1, 2, 3]  # k above n is not reported
    assert got[1] == pytest.approx((1 / 3 + 1 + 0) / 3, rel=1e-12)
    assert got[2] == pytest.approx((2 / 3 + 1 + 0) / 3, rel=1e-12)
    assert got[3] == pytest.approx(2 / 3, rel=1e-12)
    assert mean_pass_at_k(counts.values(), 2) == pytest.approx(got[2], rel=1e-12)


@pytest.mark.req("EVAL-01")
@given(st.lists(st.tuples(st.integers(0, 8)), min_size=1, max_size=6), st.integers(1, 8))
def test_best_of_n_curve(correct, n):
    counts = {str(i): (n, min(c, n)) for i, (c,) in enumerate(correct)}
    curve = best_of_n(counts)
    assert list(curve) == list(range(1, n + 1))
    values = list(curve.values())
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    solved = sum(c > 0 for _, c in counts.values()) / len(counts)
    assert curve[n] == pytest.approx(solved, rel=1e-12, abs=1e-12)
    assert curve[1] == pytest.approx(sum(c for _, c in counts.values()) / (n * len(counts)),
                                     rel=1e-12, abs=1e-12)
