"""``pythoncoder generate``: sample from a trained run, streaming to the terminal."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from pythoncoder.infer.stops import HUMANEVAL_STOPS, stable_prefix
from pythoncoder.utils.argtypes import (
    UsageError,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    unit_interval,
)


def configure_generate(p: argparse.ArgumentParser) -> None:
    model = p.add_mutually_exclusive_group()
    model.add_argument("--run", type=Path, default=None, metavar="RUN_DIR",
                       help="training run directory (default: a random tiny model, with a "
                            "warning)")
    model.add_argument("--weights", type=Path, default=None, metavar="DIR",
                       help="an export directory (`pythoncoder export`) instead of a run")
    p.add_argument("--step", type=nonnegative_int, default=None,
                   help="checkpoint step (default: latest)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-file", type=Path, help="read the prompt from a file")
    p.add_argument("--max-new-tokens", type=positive_int, default=256)
    p.add_argument("--temperature", type=nonnegative_float, default=0.0,
                   help="0 = greedy (default)")
    p.add_argument("--top-k", type=nonnegative_int, default=0, help="0 = off")
    p.add_argument("--top-p", type=unit_interval, default=1.0, help="in (0, 1]; 1 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-n", "--num-samples", type=positive_int, default=1,
                   help="completions (one batch)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop sequence (repeatable; escapes like \\n are understood)")
    p.add_argument("--humaneval-stops", action="store_true",
                   help=f"stop at any of {list(HUMANEVAL_STOPS)}")
    p.add_argument("--speculative", action="store_true",
                   help="MTP self-speculative decoding (exact for greedy; rejection sampling "
                        "otherwise)")
    yarn = p.add_mutually_exclusive_group()
    yarn.add_argument("--yarn", dest="yarn", action="store_true", default=None,
                      help="YaRN RoPE (8192 context); default: on when needed past 2048")
    yarn.add_argument("--no-yarn", dest="yarn", action="store_false")
    p.add_argument("--json", action="store_true", help="print one JSON object, no streaming")
    p.add_argument("--no-stream", action="store_true", help="print when done")
    p.set_defaults(func=run_generate)


def _unescape(text: str) -> str:
    return text.encode("utf-8").decode("unicode_escape") if "\\" in text else text


def run_generate(args: argparse.Namespace) -> int:
    from pythoncoder.export import ExportError
    from pythoncoder.infer.api import load_generator, needs_yarn
    from pythoncoder.infer.loading import RunDirError
    from pythoncoder.infer.sampling import SamplingConfig

    try:
        prompt = args.prompt if args.prompt is not None else args.prompt_file.read_text()
        sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k,
                                  top_p=args.top_p)
        if args.max_new_tokens < 1 or args.num_samples < 1:
            raise ValueError("--max-new-tokens and --num-samples must be >= 1")
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from None
    stops = [_unescape(s) for s in args.stop] + (list(HUMANEVAL_STOPS)
                                                 if args.humaneval_stops else [])
    run = str(args.run) if args.run is not None else None
    weights = str(args.weights) if args.weights is not None else None
    try:
        gen = load_generator(run, False, args.step, weights)
        yarn = args.yarn
        if yarn is None:
            cfg = gen.engine.cfg
            yarn = needs_yarn(cfg.yarn_original_max_position, len(gen.encode(prompt)),
                              args.max_new_tokens)
        if yarn:
            gen = load_generator(run, True, args.step, weights)
    except (RunDirError, ExportError, OSError) as e:
        raise UsageError(str(e)) from None

    stream = not (args.json or args.no_stream)
    shown = {"text": ""}

    def on_tokens(row: int, _new: list[int]) -> None:
        if row != 0:
            return
        text = stable_prefix(gen.decode(streamed[0]), stops)
        if len(text) > len(shown["text"]):
            sys.stdout.write(text[len(shown["text"]):])
            sys.stdout.flush()
            shown["text"] = text

    streamed: list[list[int]] = [[]]

    def collect(row: int, new: list[int]) -> None:
        if row == 0:
            streamed[0].extend(new)
            on_tokens(row, new)

    try:
        texts, result = gen.generate([prompt] * args.num_samples,
                                     max_new_tokens=args.max_new_tokens, sampling=sampling,
                                     stop=stops, seed=args.seed, speculative=args.speculative,
                                     on_tokens=collect if stream else None)
    except ValueError as e:
        raise UsageError(str(e)) from None
    stats = dict(result.stats, yarn=bool(yarn))
    if args.json:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                 for k, v in stats.items()}
        print(json.dumps({"prompt": prompt, "completions": texts, "tokens": result.tokens,
                          "finish_reasons": result.finish_reasons, "stats": clean}, indent=2))
        return 0
    if stream:
        sys.stdout.write(texts[0][len(shown["text"]):] + "\n")
        rest = texts[1:]
    else:
        rest = texts
    for i, t in enumerate(rest, start=2 if stream else 1):
        print(f"--- sample {i} ---\n{t}")
    acc = stats["acceptance_rate"]
    spec = "" if math.isnan(acc) else f", acceptance {acc:.1%}"
    print(f"[{stats['generated_tokens']} tokens, {stats['decode_tokens_per_second']:.1f} tok/s "
          f"decode{spec}; finish: {', '.join(result.finish_reasons)}]", file=sys.stderr)
    return 0


def configure_export(p: argparse.ArgumentParser) -> None:
    """``pythoncoder export --run RUN --out DIR``: a run's weights in the portable format
    of ``pythoncoder.export``."""
    from pythoncoder.export import DTYPES

    p.add_argument("--run", type=Path, required=True, metavar="RUN_DIR",
                   help="training run directory")
    p.add_argument("--step", type=nonnegative_int, default=None,
                   help="checkpoint step (default: latest)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="export directory (model.safetensors, config.json, tokenizer.json)")
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                   help="stored tensor dtype (default bfloat16)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    import numpy as np

    from pythoncoder.export import ExportError, export_weights, tensor_names
    from pythoncoder.infer.loading import RunDirError, load_for_inference
    from pythoncoder.utils.argtypes import UsageError, check_out_dir

    check_out_dir(args.out)
    try:
        model, cfg = load_for_inference(args.run, step=args.step)
        out = export_weights(model, cfg, args.out, dtype=args.dtype)
    except (RunDirError, ExportError, OSError) as e:
        raise UsageError(str(e)) from None
    n = sum(int(np.prod(s)) for s in tensor_names(cfg).values())
    print(f"exported {n:,} parameters ({args.dtype}) to {out}")
    return 0
