"""HumanEval+ and MBPP+ (EvalPlus, Liu et al. 2023): the originals' problems with 35-80x
more tests, scored by differential testing against the canonical solution.

The data is EvalPlus's release files, which are not on the package index. Get them from
the releases of ``github.com/evalplus/humanevalplus_release`` (``HumanEvalPlus.jsonl.gz``,
v0.1.10) and ``github.com/evalplus/mbppplus_release`` (``MbppPlus.jsonl.gz``, v0.2.0), or
the Hugging Face datasets ``evalplus/humanevalplus`` and ``evalplus/mbppplus``, and pass
the file, or the folder holding it, to ``--problems``. The file is checked before use: the
sha256 of its JSONL text (gzip or not, so re-compressing does not matter) must be one of
the releases in :data:`RELEASES`, or the digest the user states with ``--data-sha256``.

How a sample is scored, as EvalPlus scores it (``evalplus.evaluate``):

* the candidate program is ``prompt + completion``; each problem has ``base_input`` (the
  original tests' inputs) and ``plus_input``; each part runs as its own sample, in its own
  sandbox, against the answers of ``prompt + canonical_solution`` (run by the trusted
  judge, ``sandbox/_judge.py``, which times it);
* each input's time limit is ``max(min_time_limit, time_factor * reference time)``
  (EvalPlus's defaults 4 s and 4x), the part's ``min(task_cap_s, sum of limits) + 1``;
* an answer too large to cross to the judge (past the wire's caps) is compared by a
  digest: keyed hashes of its strings, or its exact bytes (``sandbox/_judge.py``);
* answers are compared exactly, floats within ``atol`` (``1e-6`` when the problem's is 0)
  and ``rtol 1e-7``; the problems EvalPlus gives their own oracle (a root of HumanEval/32's
  polynomial; MBPP+'s set-valued, None-or-not and four others) get the same one;
* ``base`` passes when every base input is answered right; ``plus`` when every base *and*
  plus input is; pass@k is reported for both, side by side.

MBPP+ stores tuples, sets and complex numbers as JSON lists and strings; the problems'
arguments are rebuilt as EvalPlus rebuilds them (:data:`MBPP_ARGUMENT_TYPES`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pythoncoder.eval.harness import check_sha256, read_jsonl, text_sha256
from pythoncoder.eval.sandbox import Job, _wire

PARTS = ("base", "plus")
MIN_TIME_LIMIT_S = 4.0  # EvalPlus's DEFAULT_MIN_TIME_LIMIT
TIME_FACTOR = 4.0  # EvalPlus's DEFAULT_GT_TIME_LIMIT_FACTOR
TASK_CAP_S = 60.0  # EvalPlus's EVALPLUS_TIMEOUT_PER_TASK default

FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input",
          "plus_input", "atol")

# sha256 of each release's JSONL text (after gunzip) -> its version.
RELEASES: dict[str, dict[str, str]] = {
    "humaneval+": {
        "42526ec0e7d5f3ee0b06d6ced98f8c8bae3d76519151bfb3d36f79010645bd7f": "v0.1.10",
        "50d50fda1ecf4c9168d762456ae29c1d8b8b922e68c66964f7891c98d93a04b7": "v0.1.9",
    },
    "mbpp+": {
        "b54e762755248ca411b523c917fa9f93c07b5ff2966bf60b3917b853926a3dad": "v0.2.0",
    },
}
FILE_NAMES = {"humaneval+": "HumanEvalPlus", "mbpp+": "MbppPlus"}

# The problems whose answers EvalPlus checks with an oracle of its own, by entry point as
# EvalPlus keys them (``evalplus/eval/_special_oracle.py``); the judge implements each
# (``sandbox/_judge._agrees``).
ORACLES: dict[str, dict[str, str]] = {
    "humaneval+": {"find_zero": "poly_root"},  # HumanEval/32: any root will do
    "mbpp+": {
        "are_equivalent": "any",  # Mbpp/164
        "sum_div": "or_zero",  # Mbpp/295
        "surface_Area": "surface_area",  # Mbpp/581
        "digit_distance_nums": "digit_distance",  # Mbpp/558
        **dict.fromkeys(("similar_elements", "find_char_long", "common_in_nested_lists",
                         "extract_singly", "larg_nnum", "intersection_array",
                         "find_dissimilar", "Diff"), "set_equal"),
        **dict.fromkeys(("check_str", "text_match_three", "text_starta_endb"), "not_none"),
    },
}


# ---- MBPP+ arguments: JSON lists back to the tuples, sets and complex numbers they were

def _tuple(x: Any) -> tuple:
    return tuple(x)


def _tuples(x: Any) -> list:
    return [tuple(i) for i in x]


def _tuple_of_tuples(x: Any) -> tuple:
    return tuple(tuple(i) for i in x)


def _deep_tuple(x: Any) -> Any:
    return tuple(_deep_tuple(i) for i in x) if isinstance(x, list) else x


def _same(x: Any) -> Any:
    return x


def _sets(x: Any) -> list:  # an empty list was written for an empty dict (``{}``)
    return [set(i) if isinstance(i, list) and i else {} for i in x]


def _inner_lists_tuple(x: Any) -> tuple:
    return tuple(tuple(i) if isinstance(i, list) else i for i in x)


def _dict_values_tuples(x: Any) -> dict:
    return {k: tuple(v) for k, v in x.items()}


# task number -> how its arguments are rebuilt: one function per argument (the remaining
# arguments as they are), or "all" with one function for every argument, or "whole" with
# one function for the argument list itself. EvalPlus v0.2.0's own reading of its file.
MBPP_ARGUMENT_TYPES: dict[int, tuple[str, tuple[Callable[[Any], Any], ...]]] = {
    **{n: ("all", (_tuple,)) for n in (2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424,
                                       429, 470, 560, 579, 596, 616, 630, 726, 740, 744,
                                       809)},
    **{n: ("all", (_tuples,)) for n in (63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417,
                                        438, 473, 614, 780)},
    **{n: ("args", (_tuples, _same)) for n in (75, 413, 444, 753)},
    **{n: ("args", (_same, _tuple)) for n in (106, 750)},
    115: ("args", (_sets,)),
    124: ("args", (float, complex)),
    **{n: ("args", (_tuple, _same)) for n in (250, 405, 446, 617, 720, 763, 808)},
    **{n: ("all", (_tuple_of_tuples,)) for n in (259, 401, 445)},
    278: ("args", (_inner_lists_tuple,)),
    307: ("args", (_tuple, _same, _same)),
    722: ("args", (_dict_values_tuples,)),
    252: ("args", (complex,)),
    **{n: ("whole", (_deep_tuple,)) for n in (580, 615, 791)},
}


def mbpp_arguments(task_id: str, inputs: list) -> list:
    """``inputs`` (a list of argument lists) as the reference solution takes them."""
    number = int(str(task_id).rsplit("/", 1)[-1])
    how, fns = MBPP_ARGUMENT_TYPES.get(number, ("args", ()))
    if how == "whole":
        return [fns[0](args) for args in inputs]
    if how == "all":
        return [[fns[0](a) for a in args] for args in inputs]
    return [[fn(a) for fn, a in zip(fns, args)] + list(args[len(fns):]) for args in inputs]


# ---- the data file ------------------------------------------------------------------

def data_file(path: str | Path, benchmark: str) -> Path:
    """The release file ``path`` names: itself, or in a folder the one EvalPlus names
    ``HumanEvalPlus.jsonl[.gz]`` / ``MbppPlus.jsonl[.gz]`` (versioned names too)."""
    path = Path(path)
    if not path.is_dir():
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        return path
    stem = FILE_NAMES[benchmark]
    found = sorted(p for p in path.iterdir() if p.name.startswith(stem)
                   and p.name.endswith((".jsonl", ".jsonl.gz"))
                   and "-Mini" not in p.name and "-NoExtreme" not in p.name
                   and "-OriginFmt" not in p.name)
    if len(found) != 1:
        raise FileNotFoundError(
            f"{path} holds {len(found)} {stem}*.jsonl[.gz] files"
            + (f" ({', '.join(p.name for p in found)}): name one" if found else
               f"; get {stem}.jsonl.gz from EvalPlus's releases (see `pythoncoder eval "
               f"{benchmark} --help`)"))
    return found[0]


def verify(path: Path, benchmark: str, sha256: str | None = None) -> str:
    """The release ``path`` is (its version, or ``"sha256 <digest>"`` when the user
    stated the digest); ``ValueError`` naming the digest when it is neither."""
    if sha256 is not None:
        return f"sha256 {check_sha256(path, sha256)}"
    digest = text_sha256(path)
    version = RELEASES[benchmark].get(digest)
    other = [f"{name} {RELEASES[name][digest]}" for name in RELEASES if digest in RELEASES[name]]
    if version is None and other:
        raise ValueError(f"{path} is {other[0]}, not {benchmark}: score it with "
                         f"`pythoncoder eval {other[0].split()[0]}`")
    if version is None:
        known = ", ".join(sorted(RELEASES[benchmark].values()))
        raise ValueError(f"{path}: not a known {FILE_NAMES[benchmark]} release (sha256 of "
                         f"its JSONL text {digest}; known: {known}); pass --data-sha256 "
                         f"{digest} to use it anyway")
    return version


def load(benchmark: str, path: str | Path | None, sha256: str | None = None
         ) -> dict[str, dict[str, Any]]:
    """``{task_id: problem}`` of a verified EvalPlus release, each with its inputs encoded
    for the judge (``problem["inputs"][part]``, ``_wire`` bytes) and its oracle."""
    if path is None:
        raise ValueError(f"{benchmark} needs EvalPlus's data: --problems FILE or FOLDER "
                         f"(get {FILE_NAMES[benchmark]}.jsonl.gz from its releases)")
    file = data_file(path, benchmark)
    version = verify(file, benchmark, sha256)
    problems = {}
    for i, row in enumerate(read_jsonl(file)):
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise ValueError(f"{file}: problem {i} lacks {missing}")
        task = str(row["task_id"])
        oracle = ORACLES[benchmark].get(row["entry_point"])
        inputs = {}
        for part in PARTS:
            args = row[f"{part}_input"]
            if benchmark == "mbpp+":
                args = mbpp_arguments(task, args)
            inputs[part] = _wire.encode(list(args))
        problems[task] = {**row, "task_id": task, "inputs": inputs, "oracle": oracle,
                          "release": version}
    return problems


def judge_spec(problem: Mapping[str, Any], part: str,
               time_limits: tuple[float, float, float] | None = None) -> dict[str, Any]:
    min_time, factor, cap = time_limits or (MIN_TIME_LIMIT_S, TIME_FACTOR, TASK_CAP_S)
    return {"mode": "differential", "part": part, "entry": problem["entry_point"],
            "names": [problem["entry_point"]], "oracle": problem["oracle"],
            "reference": f"{problem['prompt']}{problem['canonical_solution']}",
            "atol": float(problem["atol"] or 0), "min_time_limit": min_time,
            "time_factor": factor, "task_cap_s": cap}


def job(problem: Mapping[str, Any], completion: str, part: str = "plus",
        time_limits: tuple[float, float, float] | None = None) -> Job:
    """One part (``base`` or ``plus``) of a sample: the candidate runs prompt +
    completion; the judge calls it on that part's inputs (sent after the header).
    ``time_limits``: (min per input, factor on the reference's time, cap per part)."""
    spec = judge_spec(problem, part, time_limits)
    return Job(f"{problem['prompt']}{completion}\n", spec,
               data=problem["inputs"][part], timeout_s=spec["task_cap_s"] + 2)


def prompt(problem: Mapping[str, Any]) -> str:
    return problem["prompt"]
