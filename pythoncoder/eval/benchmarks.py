"""The benchmarks ``pythoncoder eval`` scores, one entry each, and the one ``evaluate``.

An entry says how to read its problems, the prompt a model completes, where generation
stops, and the sandbox job that judges a completion (``humaneval.py``, ``mbpp.py``); a new
benchmark is its module and one entry here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pythoncoder.eval import humaneval, mbpp
from pythoncoder.eval.harness import evaluate_samples
from pythoncoder.eval.sandbox import Job, SandboxConfig


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    title: str  # as its authors write it, for messages
    load: Callable[[Path | None], dict[str, dict[str, Any]]]  # None: its default file
    prompt: Callable[[Mapping[str, Any]], str]
    stops: tuple[str, ...]
    job: Callable[[Mapping[str, Any], str], Job]
    default_file: Callable[[], Path] | None = None  # None: the user must name the file
    reference_field: str | None = None  # a field holding reference code to score, if any


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("humaneval", "HumanEval", humaneval.load_problems, humaneval.prompt,
              humaneval.HUMANEVAL_STOP, humaneval.job, default_file=humaneval.data_path),
    Benchmark("mbpp", "MBPP", mbpp.load_problems, mbpp.prompt, mbpp.MBPP_STOP, mbpp.job,
              reference_field="code"),
)}


def evaluate(
    benchmark: Benchmark | str,
    samples: Sequence[Mapping[str, Any]],
    problems: Mapping[str, Mapping[str, Any]],
    config: SandboxConfig | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Sandboxed verdict for each ``{"task_id", "completion"}`` sample of ``benchmark``
    (rows as ``harness.evaluate_samples`` gives them).  Raises ``KeyError`` for a sample
    of a task that is not among ``problems``."""
    bench = BENCHMARKS[benchmark] if isinstance(benchmark, str) else benchmark
    unknown = sorted({str(s["task_id"]) for s in samples} - set(problems))
    if unknown:
        raise KeyError(f"samples for unknown {bench.title} task(s): {unknown[:5]}")
    return evaluate_samples(
        samples, lambda s: bench.job(problems[str(s["task_id"])], s["completion"]), config,
        workers=workers, progress=progress, desc=bench.name,
    )
