"""Shared evaluation plumbing: samples in, sandboxed verdicts out, JSONL on disk."""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pythoncoder.eval.passk import DEFAULT_KS, pass_at_ks
from pythoncoder.eval.sandbox import PASSED, Job, SandboxConfig, run_programs
from pythoncoder.utils.jsonl import iter_objects

MAX_JSONL_LINE_CHARS = 16 * 1024 * 1024


def read_jsonl(path: str | Path, *, max_line_chars: int = MAX_JSONL_LINE_CHARS
               ) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl`` or ``.jsonl.gz`` file (blank lines skipped); a line that is not
    a JSON object, or longer than ``max_line_chars``, is a ``ValueError`` naming its line."""
    return [row for _, row in iter_objects(path, max_line_chars=max_line_chars)]


def text_sha256(path: str | Path) -> str:
    """sha256 of a file's JSONL text (gunzipped first if it is gzip), so re-compressing a
    data file does not change it."""
    digest = hashlib.sha256()
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path: str | Path, expected: str) -> str:
    """The digest of ``path``'s text; ``ValueError`` naming both if it is not ``expected``
    (``--data-sha256``)."""
    digest = text_sha256(path)
    if digest != expected.strip().lower():
        raise ValueError(f"{path}: sha256 of its JSONL text is {digest}, not the "
                         f"--data-sha256 given ({expected})")
    return digest


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
    build_program: Callable[..., str | Job],
    config: SandboxConfig | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "eval",
    parts: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Run ``build_program(sample)`` for every sample in the sandbox.

    Returns one row per sample, in input order: ``task_id``, ``completion_id`` (its index
    among the samples of that task), ``completion``, ``result`` (``passed``,
    ``failed: <reason>`` or ``timed out``), ``passed``, ``verdict`` (``judge``: decided
    outside the candidate; ``in-sandbox``: the weak fallback) and ``duration_s``.

    With ``parts`` (e.g. HumanEval+'s ``base`` and ``plus``) each sample runs once per
    part, ``build_program(sample, part)``, each in its own sandbox; the row holds
    ``<part>_result`` and ``<part>_passed`` for each, and a part passes only if it and
    every part before it do (EvalPlus's plus score needs base and plus). ``passed`` and
    ``result`` are the last part's.
    """
    if parts:
        programs = [build_program(s, part) for s in samples for part in parts]
    else:
        programs = [build_program(s) for s in samples]
    bar, lock = None, threading.Lock()
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(programs), desc=desc, unit="run" if parts else "sample")

    def tick(_index: int, _result: object) -> None:
        if bar is not None:
            with lock:
                bar.update(1)

    try:
        results = run_programs(programs, config, workers=workers, on_result=tick)
    finally:
        if bar is not None:
            bar.close()
    width = max(1, len(parts))
    seen: dict[str, int] = {}
    rows = []
    for i, sample in enumerate(samples):
        key = str(sample["task_id"])
        seen[key] = seen.get(key, -1) + 1
        runs = results[i * width:(i + 1) * width]
        row = {"task_id": sample["task_id"], "completion_id": seen[key],
               "completion": sample["completion"]}
        result, passed = (PASSED, True) if parts else (runs[0].result, runs[0].passed)
        for part, run in zip(parts, runs):  # none without parts
            if passed and not run.passed:  # the first part that fails decides the rest
                result, passed = run.result, False
            row[f"{part}_result"], row[f"{part}_passed"] = result, passed
        row.update({
            "result": result, "passed": passed,
            "verdict": "judge" if all(r.verdict == "judge" for r in runs) else "in-sandbox",
            "duration_s": round(sum(r.duration_s for r in runs), 4),
        })
        rows.append(row)
    return rows


def task_counts(rows: Iterable[Mapping[str, Any]], field: str = "passed"
                ) -> dict[str, tuple[int, int]]:
    """``{task_id: (n samples, c correct)}``, correct as ``row[field]`` says."""
    counts: dict[str, tuple[int, int]] = {}
    for row in rows:
        n, c = counts.get(str(row["task_id"]), (0, 0))
        counts[str(row["task_id"])] = (n + 1, c + bool(row[field]))
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
    ks = tuple(ks)
    parts = [f[:-len("_passed")] for f in (rows[0] if rows else {}) if f.endswith("_passed")]
    return {
        "problems": len(counts), "samples": len(rows), **outcomes,
        "pass_at_k": pass_at_ks(counts, ks),
        # base and plus side by side (HumanEval+, MBPP+): each part's own pass@k
        **({"pass_at_k_by_part": {p: pass_at_ks(task_counts(rows, f"{p}_passed"), ks)
                                  for p in parts}} if parts else {}),
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
    by_part = summary.get("pass_at_k_by_part")
    if by_part:
        lines += [f"pass@{k}: " + "  ".join(f"{part} {values[k]:.4f}"
                                            for part, values in by_part.items())
                  for k in summary["pass_at_k"]]
    else:
        lines += [f"pass@{k}: {v:.4f}" for k, v in summary["pass_at_k"].items()]
    return "\n".join(lines)
