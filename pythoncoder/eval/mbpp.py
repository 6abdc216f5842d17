"""MBPP (Austin et al. 2021) from a local JSONL in the standard format.

Each row has ``task_id``, ``text`` (the description), ``code`` (a reference solution)
and ``test_list`` (assert statements); ``test_setup_code`` is used when present.
The program for a sample is ``completion + setup + the asserts``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pythoncoder.eval.harness import evaluate_samples, read_jsonl
from pythoncoder.eval.sandbox import SandboxConfig

MBPP_FIELDS = ("task_id", "text", "code", "test_list")
# Stop sequences for generation from :func:`prompt`.
MBPP_STOP = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```")


def load_problems(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{str(task_id): problem}``; raises ``ValueError`` on a row missing a standard field."""
    problems = {}
    for i, row in enumerate(read_jsonl(path)):
        missing = [f for f in MBPP_FIELDS if f not in row]
        if missing:
            raise ValueError(f"{path}: row {i} is not MBPP format, lacks {missing}")
        problems[str(row["task_id"])] = row
    return problems


def program(problem: Mapping[str, Any], completion: str) -> str:
    setup = problem.get("test_setup_code") or ""
    return f"{completion}\n{setup}\n" + "\n".join(problem["test_list"]) + "\n"


def prompt(problem: Mapping[str, Any]) -> str:
    """Docstring prompt with the description and the first test as the usage example."""
    return f'"""\n{problem["text"]}\n{problem["test_list"][0]}\n"""\n'


def evaluate(
    samples: Sequence[Mapping[str, Any]],
    problems: Mapping[str, Mapping[str, Any]],
    config: SandboxConfig | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Sandboxed verdict for each ``{"task_id", "completion"}`` sample (see ``harness``)."""
    unknown = sorted({str(s["task_id"]) for s in samples} - set(problems))
    if unknown:
        raise KeyError(f"samples for unknown MBPP task(s): {unknown[:5]}")
    return evaluate_samples(
        samples, lambda s: program(problems[str(s["task_id"])], s["completion"]), config,
        workers=workers, progress=progress, desc="mbpp",
    )
