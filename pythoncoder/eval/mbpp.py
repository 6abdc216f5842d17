"""MBPP (Austin et al. 2021) from a local JSONL in the standard format.

Each row has ``task_id``, ``text`` (the description), ``code`` (a reference solution)
and ``test_list`` (assert statements); ``test_setup_code`` is used when present.
The program for a sample is ``completion + setup + the asserts``.

Verdict (EVAL-05): the candidate's sandbox runs ``completion + setup``; the trusted judge
runs the setup and the asserts with every free name of the asserts bound to a proxy of
the candidate's function of that name (plain data across the boundary). Where that
cannot work the sample gets the weak, in-sandbox verdict (``verdict: in-sandbox``,
counted and listed by problem in the summary):

* the asserts or setup do not parse, or name no candidate function;
* the reference ``code`` defines a class the asserts use (its instances cannot cross);
* the judge finds, while running, that the test passes a non-plain value (a function,
  an object) to the candidate.

Known limits of the judge mode: a name the asserts use for a candidate-defined
*constant* (not a function) reaches the test as a proxy and fails; a candidate result
that is not plain data (a generator, an instance of its own class) fails the sample.
"""

from __future__ import annotations

import ast
import builtins
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pythoncoder.eval.harness import check_sha256, read_jsonl, reference_source
from pythoncoder.eval.sandbox import Job

MBPP_FIELDS = ("task_id", "text", "code", "test_list")
# Stop sequences for generation from :func:`prompt`.
MBPP_STOP = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```")


def load_problems(path: str | Path, sha256: str | None = None) -> dict[str, dict[str, Any]]:
    """``{str(task_id): problem}``; raises ``ValueError`` on a row missing a standard field
    (or, with ``sha256``, on a file whose text has another digest)."""
    if sha256 is not None:
        check_sha256(path, sha256)
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


def _defined(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def judge_spec(problem: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the trusted judge runs: the setup code and the asserts, with every free name
    of the asserts bound to the candidate's function of that name.

    ``None`` (weak, in-sandbox verdict) when the texts do not parse, no free name is
    found, or the reference solution defines one of those names as a class (its
    instances cannot cross as plain data).
    """
    setup = problem.get("test_setup_code") or ""
    test = "\n".join(problem["test_list"])
    try:
        test_tree, setup_tree = ast.parse(test), ast.parse(setup)
        reference = ast.parse(problem.get("code") or "")
    except SyntaxError:
        return None
    known = _defined(setup_tree) | _defined(test_tree) | set(dir(builtins))
    free = {n.id for n in ast.walk(test_tree)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - known
    modules = _stdlib_modules_used(test_tree, free)
    names = sorted(free - modules)
    classes = {n.name for n in ast.walk(reference) if isinstance(n, ast.ClassDef)}
    if not names or classes & set(names):
        return None
    # ``assert math.isclose(area(2), 12.56)``: the judge imports ``math`` itself (a stdlib
    # module named by the trusted test text) instead of asking the candidate for it.
    prelude = "".join(f"import {m}\n" for m in sorted(modules)) + setup
    return {"prelude": prelude, "test": test, "names": names, "entry": None,
            "reference": reference_source(problem.get("code"), after=setup)}


def _stdlib_modules_used(tree: ast.AST, free: set[str]) -> set[str]:
    """Free names that are standard-library modules and are only used as ``name.attr``
    (never called or passed themselves, as the candidate's functions are)."""
    as_base = {id(n.value) for n in ast.walk(tree)
               if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
    other = {n.id for n in ast.walk(tree)
             if isinstance(n, ast.Name) and n.id in free and id(n) not in as_base}
    return {name for name in free - other if name in sys.stdlib_module_names}


def job(problem: Mapping[str, Any], completion: str) -> Job:
    """The candidate runs the completion (+ setup code); the judge runs the asserts."""
    spec = judge_spec(problem)
    full = program(problem, completion)
    if spec is None:
        return Job(full)
    setup = problem.get("test_setup_code") or ""
    return Job(f"{completion}\n{setup}\n", spec, fallback=full)


def prompt(problem: Mapping[str, Any]) -> str:
    """Docstring prompt with the description and the first test as the usage example."""
    return f'"""\n{problem["text"]}\n{problem["test_list"][0]}\n"""\n'
