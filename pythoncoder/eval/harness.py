"""Shared evaluation plumbing: samples in, sandboxed verdicts out, JSONL on disk."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pythoncoder.eval.passk import DEFAULT_KS, pass_at_ks
from pythoncoder.eval.sandbox import Job, SandboxConfig, run_programs
from pythoncoder.utils.jsonl import iter_objects

MAX_JSONL_LINE_CHARS = 16 * 1024 * 1024


def read_jsonl(path: str | Path, *, max_line_chars: int = MAX_JSONL_LINE_CHARS
               ) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl`` or ``.jsonl.gz`` file (blank lines skipped); a line that is not
    a JSON object, or longer than ``max_line_chars``, is a ``ValueError`` naming its line."""
    return [row for _, row in iter_objects(path, max_line_chars=max_line_chars)]


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def reference_source(solution: str | None, before: str = "", after: str = "") -> str | None:
    """The trusted reference the judge traces the test's calls against (EVAL-05), or
    ``None`` (live calls) if there is none or it does not compile."""
    if not isinstance(solution, str) or not solution.strip():
        return None
    source = f"{before}{solution}\n{after}"
    try:
        compile(source, "<reference>", "exec")
    except (SyntaxError, ValueError):
        return None
    return source


def evaluate_samples(
    samples: Sequence[Mapping[str, Any]],
    build_program: Callable[[Mapping[str, Any]], str | Job],
    config: SandboxConfig | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "eval",
) -> list[dict[str, Any]]:
    """Run ``build_program(sample)`` for every sample in the sandbox.

    Returns one row per sample, in input order: ``task_id``, ``completion_id`` (its index
    among the samples of that task), ``completion``, ``result`` (``passed``,
    ``failed: <reason>`` or ``timed out``), ``passed``, ``verdict`` (``judge``: decided
    outside the candidate; ``in-sandbox``: the weak fallback) and ``duration_s``.
    """
    programs = [build_program(s) for s in samples]
    bar, lock = None, threading.Lock()
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(programs), desc=desc, unit="sample")

    def tick(_index: int, _result: object) -> None:
        if bar is not None:
            with lock:
                bar.update(1)

    try:
        results = run_programs(programs, config, workers=workers, on_result=tick)
    finally:
        if bar is not None:
            bar.close()
    seen: dict[str, int] = {}
    rows = []
    for sample, result in zip(samples, results, strict=True):
        key = str(sample["task_id"])
        seen[key] = seen.get(key, -1) + 1
        rows.append({
            "task_id": sample["task_id"], "completion_id": seen[key],
            "completion": sample["completion"], "result": result.result,
            "passed": result.passed, "verdict": result.verdict,
            "duration_s": round(result.duration_s, 4),
        })
    return rows


def task_counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """``{task_id: (n samples, c correct)}``."""
    counts: dict[str, tuple[int, int]] = {}
    for row in rows:
        n, c = counts.get(str(row["task_id"]), (0, 0))
        counts[str(row["task_id"])] = (n + 1, c + bool(row["passed"]))
    return counts


def summarize(rows: Sequence[Mapping[str, Any]], ks: Iterable[int] | None = None) -> dict:
    """Totals and ``pass@k`` for every requested ``k`` not above the per-problem ``n``.

    By default ``ks`` is :data:`DEFAULT_KS` plus ``n`` itself (the best-of-n figure).
    """
    counts = task_counts(rows)
    if ks is None:
        ks = (*DEFAULT_KS, min((n for n, _ in counts.values()), default=1))
    outcomes = {"passed": 0, "failed": 0, "timed out": 0}
    for row in rows:
        outcomes[row["result"].split(":", 1)[0]] += 1
    weak = sorted({str(r["task_id"]) for r in rows if r.get("verdict") == "in-sandbox"})
    return {
        "problems": len(counts), "samples": len(rows), **outcomes,
        "pass_at_k": pass_at_ks(counts, ks),
        # EVAL-05: samples whose verdict the candidate's own interpreter decided (the
        # problem's test passes non-plain values, or no judge spec could be built).
        "in_sandbox_verdicts": sum(r.get("verdict") == "in-sandbox" for r in rows),
        "in_sandbox_problems": weak,
    }


def format_summary(name: str, summary: Mapping[str, Any]) -> str:
    lines = [
        f"{name}: {summary['problems']} problems, {summary['samples']} samples: "
        f"{summary['passed']} passed, {summary['failed']} failed, "
        f"{summary['timed out']} timed out",
    ]
    weak = summary.get("in_sandbox_verdicts", 0)
    if weak:
        problems = summary.get("in_sandbox_problems", [])
        lines.append(
            f"weak verdicts: {weak} sample(s) of {len(problems)} problem(s) judged inside the "
            f"candidate's sandbox (tests pass non-plain values): {', '.join(problems[:10])}"
            + (" ..." if len(problems) > 10 else ""))
    lines += [f"pass@{k}: {v:.4f}" for k, v in summary["pass_at_k"].items()]
    return "\n".join(lines)
