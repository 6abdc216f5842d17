"""``pythoncoder train`` and ``pythoncoder memory``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from pythoncoder.model import PRESETS, ModelConfig

# CPU-friendly defaults per preset; the 1b uses the design doc's values (TrainConfig()).
PRESET_TRAIN_DEFAULTS = {
    "tiny": dict(seq_len=256, micro_batch=4, accum_steps=1, peak_lr=2e-3, epochs=1,
                 steps_per_checkpoint=40, eval_batches=4),
    "small": dict(seq_len=1024, micro_batch=8, accum_steps=2, peak_lr=1e-3,
                  steps_per_checkpoint=500),
    "1b": dict(),
}
DEFAULT_STEPS = {"tiny": 120}
TRAIN_OVERRIDES = ("seq_len", "micro_batch", "accum_steps", "epochs", "peak_lr",
                   "warmup_steps", "weight_decay", "clip_norm", "steps_per_checkpoint",
                   "keep_checkpoints", "seed", "eval_batches", "log_every",
                   "max_consecutive_nonfinite")


def _train_config(preset: str, args: argparse.Namespace):
    from pythoncoder.train.config import TrainConfig

    fields = dict(PRESET_TRAIN_DEFAULTS[preset])
    for name in TRAIN_OVERRIDES:
        value = getattr(args, name, None)
        if value is not None:
            fields[name] = value
    return TrainConfig(**fields)


def configure_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", choices=PRESETS)
    p.add_argument("--data", default=None,
                   help="prepared data dir (default: prepare the stdlib into the user cache)")
    p.add_argument("--out", default="runs/tiny", help="run directory (checkpoints, metrics)")
    p.add_argument("--steps", type=int, default=None,
                   help="total optimizer steps (default for tiny: 120, about 10 min on 2 "
                        "CPU cores; otherwise the plan from the data and --epochs)")
    p.add_argument("--tokens", type=float, default=None,
                   help="tokens per epoch for the plan (default: the data's size)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--mesh", default=None, metavar="DATAxFSDP",
                   help="device mesh, e.g. 2x4 (default: all devices on fsdp)")
    p.add_argument("--compute-dtype", default=None, choices=["auto", "float32", "bfloat16"])
    p.add_argument("--remat", default=None, choices=["none", "full", "dots", "names"])
    p.add_argument("--no-progress", action="store_true")
    for name in TRAIN_OVERRIDES:
        kind = float if name in ("peak_lr", "weight_decay", "clip_norm") else int
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from pythoncoder.data.shards import ShardError
    from pythoncoder.train.checkpoint import CheckpointError
    from pythoncoder.train.config import TrainConfigError, plan_run
    from pythoncoder.train.loop import NonFiniteError, train
    from pythoncoder.train.sharding import make_mesh

    overrides = {}
    if args.compute_dtype:
        overrides["compute_dtype"] = args.compute_dtype
    if args.remat:
        overrides["remat_policy"] = args.remat
    model_cfg = ModelConfig.preset(args.preset, **overrides)
    train_cfg = _train_config(args.preset, args)
    total_steps = args.steps
    if args.tokens is not None and total_steps is None:
        total_steps = plan_run(int(args.tokens), train_cfg).total_steps
    if total_steps is None and args.epochs is None:
        # the demo budget: about 10 minutes on a 2-core CPU; --epochs/--tokens for more
        total_steps = DEFAULT_STEPS.get(args.preset)
    data = args.data
    if data is None:
        from pythoncoder.data.prepare import ensure_stdlib_data

        print(f"no --data: preparing the Python standard library at seq_len "
              f"{train_cfg.seq_len} (cached after the first run)", file=sys.stderr)
        data = ensure_stdlib_data(train_cfg.seq_len, progress=not args.no_progress)
    mesh = None
    if args.mesh:
        d, f = (int(x) for x in args.mesh.lower().split("x"))
        mesh = make_mesh(d, f)
    try:
        summary = train(model_cfg, train_cfg, data, args.out, total_steps=total_steps,
                        resume=args.resume, mesh=mesh, progress=not args.no_progress)
    except (CheckpointError, NonFiniteError, TrainConfigError, ShardError) as e:
        print(f"pythoncoder train: error: {e}", file=sys.stderr)
        return 1
    vals = summary["val_losses"]
    if vals:
        print(f"validation loss: {vals[0][1]:.4f} (step {vals[0][0]}) -> {vals[-1][1]:.4f} "
              f"(step {vals[-1][0]})")
    if summary["plot"]:
        print(f"loss/LR curves: {summary['plot']}")
    print(f"run directory: {summary['run_dir']}")
    return 0


def configure_memory(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="1b", choices=PRESETS)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--accum-steps", type=int, default=8)
    p.add_argument("--remat", default="full", choices=["none", "full", "dots", "names"])
    p.add_argument("--compute-dtype", default="bfloat16",
                   choices=["auto", "float32", "bfloat16"])
    p.add_argument("--topology", default=None, choices=["v6e-1"],
                   help="compile ahead of time with the TPU compiler for this topology "
                        "(needs libtpu: pip install 'jax[tpu]'); default: the local backend")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_memory)


def run_memory(args: argparse.Namespace) -> int:
    from pythoncoder.train.config import TrainConfig
    from pythoncoder.train.memory import train_step_memory

    model_cfg = ModelConfig.preset(args.preset, remat_policy=args.remat,
                                   compute_dtype=args.compute_dtype)
    train_cfg = TrainConfig(micro_batch=args.micro_batch, seq_len=args.seq_len,
                            accum_steps=args.accum_steps)
    try:
        report = train_step_memory(model_cfg, train_cfg, topology=args.topology)
    except RuntimeError as e:
        print(f"pythoncoder memory: {e}; falling back to the local compiler", file=sys.stderr)
        report = train_step_memory(model_cfg, train_cfg)
    report["train_config"] = dataclasses.asdict(train_cfg)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.preset} train step at {args.micro_batch}x{args.seq_len} "
              f"(accum {args.accum_steps}, remat {args.remat}) compiled by {report['compiler']}:")
        for k in ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "total_bytes"):
            print(f"  {k:<16}{report[k] / 2**30:8.2f} GiB")
        print(f"  fits 32 GiB: {report['fits_32gib']}")
    return 0
