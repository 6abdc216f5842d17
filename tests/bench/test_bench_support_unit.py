"""The benchmark helpers that can be checked without timing anything (issue 10's bugs)."""

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pythoncoder.data.loader import gather_index
from pythoncoder.data.throughput import MIN_CHARS_PER_WORKER, pool_size
from pythoncoder.utils.perf import bench_preset

ROOT = Path(__file__).resolve().parents[2]


@given(rows=st.integers(1, 3000), steps=st.integers(1, 120), batch=st.integers(1, 20),
       seed=st.integers(0, 2**16))
def test_gather_index_shape_and_epochs(rows, steps, batch, seed):
    """Any number of rows (1,324 rows for 100 x 16 crashed the gather benchmark): each
    epoch visits every row once, epochs back to back."""
    idx = gather_index(rows, steps, batch, np.random.default_rng(seed))
    assert idx.shape == (steps, batch)
    flat = idx.reshape(-1)
    assert flat.min() >= 0 and flat.max() < rows
    for start in range(0, flat.size - rows + 1, rows):  # whole epochs are permutations
        np.testing.assert_array_equal(np.sort(flat[start:start + rows]), np.arange(rows))
    counts = np.bincount(flat, minlength=rows)
    assert counts.max() - counts.min() <= 1


def test_gather_index_rejects_no_rows():
    with pytest.raises(ValueError, match="no rows"):
        gather_index(0, 1, 1, np.random.default_rng(0))


@given(requested=st.integers(1, 64), chars=st.integers(0, 10**9))
def test_pool_size_is_worth_its_start_cost(requested, chars):
    n = pool_size(requested, chars)
    assert 1 <= n <= requested
    assert n == 1 or n * MIN_CHARS_PER_WORKER <= chars


def test_pool_size_examples():
    assert pool_size(16, 7_500_000) == 3  # the benchmark's stdlib sample
    assert pool_size(16, 100_000_000) == 16
    assert pool_size(2, 0) == 1
    with pytest.raises(ValueError):
        pool_size(0, 10)


@pytest.mark.parametrize(("name", "backend", "want"), [
    ("auto", "cpu", "tiny"), ("auto", "gpu", "1b"), ("auto", "tpu", "1b"),
    ("small", "gpu", "small"), ("tiny", "tpu", "tiny")])
def test_bench_preset(name, backend, want):
    assert bench_preset(name, backend) == want


def test_benchmark_run_writes_its_json_report(tmp_path):
    """The benchmarks' reporting path against the installed pytest-benchmark: `pytest
    benchmarks` writes the project's own report (figures, timings, versions) whatever
    pytest-benchmark's release (5.3 crashed at the end when the project set its
    --benchmark-json option), and an explicit --benchmark-json still gets
    pytest-benchmark's report with the figures added."""
    out, theirs = tmp_path / "out", tmp_path / "theirs.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/test_bench_ceilings.py", "-q",
         "-p", "no:cacheprovider", "--bench-out", str(out), "-k", "bandwidth",
         f"--benchmark-json={theirs}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    mine = json.loads((out / "benchmarks.json").read_text())
    assert mine["versions"]["pytest-benchmark"] == metadata.version("pytest-benchmark")
    assert mine["versions"]["jax"] == metadata.version("jax")
    (figure,) = mine["figures"]
    assert figure["unit"] == "GB/s" and figure["value"] > 0, figure
    (timing,) = mine["benchmarks"]
    assert timing["benchmark"].endswith(figure["benchmark"].rsplit("::", 1)[-1])
    assert 0 < timing["min"] <= timing["mean"] <= timing["max"] and timing["rounds"] >= 1
    assert json.loads((out / "benchmark-figures.json").read_text()) == mine["figures"]
    assert (out / "benchmarks.md").read_text().startswith("Benchmarks on")
    report = json.loads(theirs.read_text())
    assert [b["name"] for b in report["benchmarks"]] == [figure["benchmark"].split("::")[-1]]
    assert report["figures"] == mine["figures"]
