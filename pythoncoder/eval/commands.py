"""``pythoncoder eval BENCHMARK``: sandboxed pass@k from samples or from a run, for every
benchmark of :data:`pythoncoder.eval.benchmarks.BENCHMARKS` (one sub-command each).

Examples::

    pythoncoder eval humaneval --samples samples.jsonl        # task_id + completion rows
    pythoncoder eval humaneval --run runs/tiny --n 10 --temperature 0.8
    pythoncoder eval mbpp --data mbpp.jsonl                    # scores the reference code
    pythoncoder eval mbpp --data mbpp.jsonl --samples mbpp_samples.jsonl
    pythoncoder eval humaneval+ --problems HumanEvalPlus.jsonl.gz --samples samples.jsonl
    pythoncoder eval mbpp+ --problems evalplus/ --run runs/tiny   # base and plus pass@k
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pythoncoder.data.decontam import provenance_note
from pythoncoder.eval.benchmarks import BENCHMARKS, Benchmark, evaluate
from pythoncoder.eval.harness import format_summary, read_jsonl, summarize, write_jsonl
from pythoncoder.eval.passk import DEFAULT_KS
from pythoncoder.eval.sandbox import (
    SandboxConfig,
    SandboxUnusable,
    check_usable,
    default_workers,
)
from pythoncoder.infer.stops import truncate_at_stop
from pythoncoder.utils.argtypes import (
    UsageError,
    check_out_dir,
    nonnegative_float,
    positive_float,
    positive_int,
)

GENERATION_UNAVAILABLE = (
    "generation needs pythoncoder.infer (pythoncoder.infer.api.complete), which could not be "
    "imported: {error}. Generate samples elsewhere and pass --samples FILE.jsonl instead."
)


def configure_eval(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for bench in BENCHMARKS.values():
        scored = ("" if bench.reference_field is None else
                  " With neither --samples nor --run, the reference solutions are scored.")
        both = (f" Each sample runs on the {' and '.join(bench.parts)} tests in turn "
                "(EvalPlus): pass@k for each, side by side." if bench.parts else "")
        p = sub.add_parser(bench.name, help=f"{bench.title}: {bench.data_help}",
                           description=f"{bench.title} pass@k in the sandbox.{scored}{both}")
        # --data: MBPP's name for its file since the first version
        flag = "--data" if bench.name == "mbpp" else "--problems"
        p.add_argument(flag, dest="problems", type=Path,
                       required=bench.default_file is None, metavar="FILE|DIR",
                       help=bench.data_help)
        p.add_argument("--data-sha256", default=None, metavar="HEX",
                       help="the sha256 the problem file's JSONL text must have (gunzipped)"
                            + (": needed for a release not in pythoncoder.eval.plus.RELEASES"
                               if bench.parts else ""))
        source = p.add_mutually_exclusive_group(required=bench.reference_field is None)
        source.add_argument("--samples", type=Path, metavar="FILE.jsonl",
                            help="completions to score: rows with task_id and completion")
        source.add_argument("--run", type=Path, metavar="RUN_DIR",
                            help="generate completions from this trained run, then score them")
        _add_common(p)
    parser.set_defaults(func=run_eval, starts_jax=False)  # only --run needs it


def _add_common(p: argparse.ArgumentParser) -> None:
    gen = p.add_argument_group("generation (with --run)")
    gen.add_argument("--n", type=positive_int, default=1, help="samples per problem (default 1)")
    gen.add_argument("--temperature", type=nonnegative_float, default=0.2, help="default 0.2")
    gen.add_argument("--max-new-tokens", type=positive_int, default=512)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--limit", type=positive_int, default=None, metavar="N",
                     help="only the first N problems (smoke runs)")
    box = p.add_argument_group("sandbox and report")
    box.add_argument("--timeout", type=positive_float, default=3.0, help="seconds per sample (3)")
    box.add_argument("--memory-mb", type=positive_int, default=2048,
                     help="address-space limit (2048)")
    box.add_argument("--workers", type=positive_int, default=default_workers(),
                     help="parallel sandboxes (default min(8, CPUs))")
    box.add_argument("--k", type=_int_list, default=None, metavar="K,K,...",
                     help="pass@k to report, those with k <= n (default: n and "
                          + ",".join(map(str, DEFAULT_KS)) + ")")
    box.add_argument("--out", type=Path, default=None, metavar="FILE.jsonl",
                     help="per-sample results (default: next to the samples)")
    box.add_argument("--overwrite", action="store_true",
                     help="replace an earlier run's samples or results file (default: refuse)")
    box.add_argument("--no-progress", action="store_true", help="no progress bar")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {text!r}") from e
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers: "
                                         f"{text!r}")
    return ks


def _load_generator() -> Callable[..., list[list[str]]]:
    from pythoncoder.utils.platforms import start_jax

    start_jax()  # without the driver messages of the targets extra (cli.main skips eval)
    from pythoncoder.infer.api import complete  # lazy: generation is optional here

    return complete


def run_eval(args: argparse.Namespace) -> int:
    config = SandboxConfig(timeout_s=args.timeout, memory_bytes=args.memory_mb * 1024**2)
    name = args.benchmark
    bench = BENCHMARKS[name]
    try:
        problems = bench.load(args.problems, sha256=args.data_sha256)
    except (OSError, ValueError) as e:
        print(f"pythoncoder eval {name}: cannot read problems: {e}", file=sys.stderr)
        return 2
    if args.limit is not None:
        problems = dict(list(problems.items())[: args.limit])
    if args.out is not None:
        try:
            check_out_dir(args.out, file=True)
        except UsageError as e:
            print(f"pythoncoder eval {name}: {e}", file=sys.stderr)
            return 2
    try:  # before generating or scoring anything: never a results file of misjudged fails
        check_usable(config)
    except SandboxUnusable as e:
        print(f"pythoncoder eval {name}: {e}", file=sys.stderr)
        return 2
    samples_path, out = _output_paths(bench, args)
    earlier = [p for p in (samples_path, out) if p is not None and p.exists()]
    if earlier and not args.overwrite:  # before any work: an earlier run's files stay
        print(f"pythoncoder eval {name}: {earlier[0]} exists (an earlier run's); pass "
              f"--overwrite to replace it" + ("" if samples_path else " or --out FILE"),
              file=sys.stderr)
        return 2

    if args.run is not None:
        try:
            samples = _generate(name, problems, args)
        except ImportError as e:
            print(f"pythoncoder eval {name}: " + GENERATION_UNAVAILABLE.format(error=e),
                  file=sys.stderr)
            return 2
        except ValueError as e:
            print(f"pythoncoder eval {name}: {e}", file=sys.stderr)
            return 2
        write_jsonl(samples_path, samples)
        print(f"samples: {samples_path}")
    elif args.samples is not None:
        try:
            samples = read_jsonl(args.samples)
        except (OSError, ValueError) as e:
            print(f"pythoncoder eval {name}: cannot read samples: {e}", file=sys.stderr)
            return 2
        if not samples:
            print(f"pythoncoder eval {name}: no samples in {args.samples}", file=sys.stderr)
            return 2
        bad = [i for i, s in enumerate(samples) if "task_id" not in s or "completion" not in s]
        if bad:
            print(f"pythoncoder eval {name}: sample row {bad[0]} lacks task_id or completion",
                  file=sys.stderr)
            return 2
    else:  # the benchmark's reference solutions
        samples = [{"task_id": p["task_id"], "completion": p[bench.reference_field]}
                   for p in problems.values()]

    try:
        rows = evaluate(bench, samples, problems, config, workers=args.workers,
                        progress=not args.no_progress)
    except KeyError as e:
        print(f"pythoncoder eval {name}: {e.args[0]}", file=sys.stderr)
        return 2
    write_jsonl(out, rows)
    print(format_summary(name, summarize(rows, args.k)))
    if args.run is not None:
        problems_file = bench.problems_file(args.problems)
        ok, note = decontamination_note(args.run, name, problems_file)
        print(note, file=sys.stdout if ok else sys.stderr)
    print(f"results: {out}")
    return 0


def decontamination_note(run_dir: Path, benchmark: str, problems_file: Path
                         ) -> tuple[bool, str]:
    """What the run's prepared data (``run.json``'s ``data``) says about ``benchmark``."""
    import json

    from pythoncoder.data.shards import ShardError, read_manifest

    try:
        data = json.loads((Path(run_dir) / "run.json").read_text()).get("data")
        manifest = read_manifest(data) if data else None
    except (OSError, ValueError, ShardError):
        manifest = None
    return provenance_note(manifest, benchmark, problems_file)


def _results_path(path: Path, suffix: str = "_results.jsonl") -> Path:
    stem = path.name.removesuffix(".gz").removesuffix(".jsonl")
    return path.with_name(stem + suffix)


def _output_paths(bench: Benchmark, args: argparse.Namespace) -> tuple[Path | None, Path]:
    """Where this run writes: the generated samples (with ``--run``; else None) and the
    per-sample results."""
    if args.run is not None:
        samples = args.run / "eval" / f"{bench.name}_samples.jsonl"
        return samples, args.out or samples.with_name(f"{bench.name}_results.jsonl")
    if args.samples is not None:
        return None, args.out or _results_path(args.samples)
    return None, args.out or _results_path(bench.problems_file(args.problems),
                                           "_reference_results.jsonl")


def _generate(name: str, problems: Mapping[str, Mapping[str, Any]],
              args: argparse.Namespace) -> list[dict[str, Any]]:
    complete = _load_generator()
    bench = BENCHMARKS[name]
    prompts = [bench.prompt(p) for p in problems.values()]
    stop: Sequence[str] = bench.stops
    outputs = complete(str(args.run), prompts, n=args.n, temperature=args.temperature,
                       max_new_tokens=args.max_new_tokens, stop=list(stop), seed=args.seed,
                       progress=not args.no_progress)
    if len(outputs) != len(prompts) or any(len(o) != args.n for o in outputs):
        raise ValueError(f"the generator returned {len(outputs)} prompt(s) of "
                         f"{sorted({len(o) for o in outputs})} completion(s); expected "
                         f"{len(prompts)} of {args.n}")
    return [
        {"task_id": p["task_id"], "completion": truncate_at_stop(c, stop)}
        for p, completions in zip(problems.values(), outputs, strict=True)
        for c in completions
    ]
