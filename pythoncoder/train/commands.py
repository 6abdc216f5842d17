"""``pythoncoder train`` and ``pythoncoder memory``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from pathlib import Path

from pythoncoder.model.config import PRESETS, REMAT_POLICIES, ModelConfig
from pythoncoder.utils.argtypes import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    UsageError,
    check_out_dir,
    mesh_shape,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)

# CPU-friendly defaults per preset; the 1b uses the design doc's values (TrainConfig()).
PRESET_TRAIN_DEFAULTS = {
    "tiny": dict(seq_len=256, micro_batch=4, accum_steps=1, peak_lr=3e-3, epochs=1,
                 steps_per_checkpoint=40, eval_batches=4),
    "small": dict(seq_len=1024, micro_batch=8, accum_steps=2, peak_lr=1e-3,
                  steps_per_checkpoint=500),
    "1b": dict(),
}
DEFAULT_STEPS = {"tiny": 560}
# --vocab-rows defaults: the tiny preset keeps rows for the 8191 ids its train data uses
# most plus "other" (94.7% of stdlib tokens; the full head is >90% of its FLOPs).
DEFAULT_VOCAB_ROWS = {"tiny": 8192}
TRAIN_OVERRIDES = ("seq_len", "micro_batch", "accum_steps", "epochs", "peak_lr",
                   "warmup_steps", "weight_decay", "clip_norm", "steps_per_checkpoint",
                   "keep_checkpoints", "seed", "eval_batches", "log_every",
                   "max_consecutive_nonfinite")
OVERRIDE_TYPES = {"peak_lr": positive_float, "weight_decay": nonnegative_float,
                  "clip_norm": positive_float, "warmup_steps": nonnegative_int,
                  "eval_batches": nonnegative_int, "seed": int}


def _train_config(preset: str, args: argparse.Namespace):
    from pythoncoder.train.config import TrainConfig

    fields = dict(PRESET_TRAIN_DEFAULTS[preset])
    for name in TRAIN_OVERRIDES:
        value = getattr(args, name, None)
        if value is not None:
            fields[name] = value
    return TrainConfig(**fields)


def dropout_rate(text: str) -> float:
    value = nonnegative_float(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def configure_train(p: argparse.ArgumentParser) -> None:
    p.epilog = EXIT_CODES_HELP
    p.add_argument("--preset", default="tiny", choices=PRESETS)
    p.add_argument("--data", default=None,
                   help="prepared data dir (default: prepare the stdlib into the user cache)")
    p.add_argument("--out", default="runs/tiny", help="run directory (checkpoints, metrics)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="total optimizer steps (default for tiny: 560, about 8 min on 2 "
                        "CPU cores; otherwise the plan from the data and --epochs)")
    p.add_argument("--tokens", type=positive_float, default=None,
                   help="tokens per epoch for the plan (default: the data's size)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint that verifies (the run's preset, "
                        "model, seq_len, batch shape and data must match run.json)")
    p.add_argument("--mesh", type=mesh_shape, default=None, metavar="DATAxFSDP",
                   help="device mesh, e.g. 2x4 (default: all devices on fsdp)")
    p.add_argument("--compute-dtype", default=None, choices=["auto", "float32", "bfloat16"])
    p.add_argument("--remat", default=None, choices=REMAT_POLICIES,
                   help="rematerialisation policy (default: the preset's; auto, for small "
                        "and 1b, compiles the step per policy and takes the least "
                        "recomputation that fits the device's memory)")
    p.add_argument("--dropout", type=dropout_rate, default=None,
                   help="dropout rate (default: the design's 0.1)")
    p.add_argument("--vocab-rows", type=nonnegative_int, default=None, metavar="N",
                   help="model vocabulary rows: the N-1 token ids the train data uses most "
                        "plus one 'other' row (ModelConfig.vocab_subset); 0 = the full "
                        "151,808 (default: 8192 for tiny, the CPU demo; 0 otherwise)")
    p.add_argument("--peak-tflops", type=positive_float, default=None,
                   help="per-device peak TFLOP/s for the logged MFU (default: the datasheet "
                        "bf16 peak of known TPUs/GPUs; none on CPU)")
    p.add_argument("--no-progress", action="store_true")
    for name in TRAIN_OVERRIDES:
        p.add_argument("--" + name.replace("_", "-"), dest=name,
                       type=OVERRIDE_TYPES.get(name, positive_int), default=None)
    p.set_defaults(func=run_train, starts_jax=False)  # after the multi-host start


def _check_checkpoints(out: Path, resume: bool) -> None:
    """``--resume`` needs a checkpoint in ``--out``, a fresh run a directory without one
    (``run.check_run_dir`` says the same, once the run directory is locked)."""
    from pythoncoder.train.run import checkpoint_steps

    steps = checkpoint_steps(out)
    if resume and not steps:
        raise UsageError(f"--resume: no checkpoint in {out / 'checkpoints'} (start the run "
                         "without --resume)")
    if steps and not resume:
        raise UsageError(f"{out} already holds checkpoints (steps {steps}); pass --resume to "
                         "continue that run, or choose another --out")


def _check_data(data: str, train_cfg) -> None:
    """The prepared data is packed at the run's seq_len and fills one optimizer step."""
    from pythoncoder.data.shards import ShardError, read_manifest

    seq_len = train_cfg.seq_len
    try:
        manifest = read_manifest(data)
    except ShardError as e:
        raise UsageError(f"--data {data}: {e}") from None
    if int(manifest.get("seq_len", -1)) != seq_len:
        raise UsageError(f"--data {data} is packed at seq_len {manifest.get('seq_len')}, but "
                         f"seq_len {seq_len} was asked for (pass --seq-len "
                         f"{manifest.get('seq_len')}, or prepare the data again with "
                         f"--seq-len {seq_len})")
    rows = int(manifest.get("splits", {}).get("train", {}).get("rows", 0))
    per_step = train_cfg.micro_batch * train_cfg.accum_steps
    if rows < per_step:
        raise UsageError(f"--data {data} has {rows} train row(s) of {seq_len + 1} tokens; one "
                         f"step takes {per_step} (--micro-batch {train_cfg.micro_batch} x "
                         f"--accum-steps {train_cfg.accum_steps}): give more data, or lower "
                         f"them or --seq-len")


def _with_vocab_subset(args: argparse.Namespace, cfg: ModelConfig, data) -> ModelConfig:
    """``cfg`` with ``--vocab-rows`` applied (the most frequent train ids of ``data``)."""
    from pythoncoder.data.shards import ShardError, frequent_ids
    from pythoncoder.model.config import ConfigError

    rows = args.vocab_rows if args.vocab_rows is not None else DEFAULT_VOCAB_ROWS.get(
        args.preset, 0)
    if rows == 0:
        return cfg
    if not 2 <= rows < cfg.vocab_size:
        raise UsageError(f"--vocab-rows {rows}: must be 0 (the full vocabulary) or in "
                         f"[2, {cfg.vocab_size})")
    try:
        subset = frequent_ids(data, rows)
        cfg = cfg.replace(vocab_subset=subset)
    except ShardError as e:
        raise UsageError(f"--data {data}: {e}") from None
    except ConfigError as e:
        raise UsageError(f"--vocab-rows {rows}: {e}") from None
    print(f"vocabulary: {len(subset) + 1:,} rows, the {len(subset):,} token ids the train "
          f"data uses most and one for all others (--vocab-rows 0 for all "
          f"{cfg.vocab_size:,})", file=sys.stderr)
    return cfg


def check_seq_len(preset: str, model_cfg: ModelConfig, seq_len: int) -> None:
    limit = model_cfg.max_position_embeddings
    if seq_len > limit:
        raise UsageError(f"--seq-len {seq_len} is above the {limit} positions the "
                         f"'{preset}' model supports")


def validate_train_args(args: argparse.Namespace, model_cfg: ModelConfig, train_cfg) -> None:
    """Everything checkable before training starts; ``UsageError`` (exit 2) otherwise."""
    check_seq_len(args.preset, model_cfg, train_cfg.seq_len)
    if args.mesh is not None:
        import jax

        d, f = args.mesh
        if d * f != jax.device_count():
            raise UsageError(f"--mesh {d}x{f} needs {d * f} devices; {jax.device_count()} "
                             f"are present ({jax.default_backend()})")
    check_out_dir(Path(args.out))
    _check_checkpoints(Path(args.out), args.resume)
    if args.data is not None:
        _check_data(args.data, train_cfg)


def _start_distributed() -> None:
    from pythoncoder.train.sharding import maybe_initialize_distributed  # imports JAX

    maybe_initialize_distributed()


def run_train(args: argparse.Namespace) -> int:
    from pythoncoder.utils.platforms import start_jax

    # jax.distributed.initialize (multi-host environment) before any backend starts (--mesh
    # counts the devices below); the second call is for where start_jax did nothing
    start_jax(before_backend=_start_distributed)
    _start_distributed()
    from pythoncoder.checkpoint import CheckpointError
    from pythoncoder.data.shards import ShardError
    from pythoncoder.train.config import TrainConfigError, plan_run
    from pythoncoder.train.loop import NonFiniteError, train
    from pythoncoder.train.sharding import make_mesh

    overrides: dict = {}
    if args.dropout is not None:
        overrides["dropout_rate"] = args.dropout
    if args.compute_dtype:
        overrides["compute_dtype"] = args.compute_dtype
    if args.remat:
        overrides["remat_policy"] = args.remat
    model_cfg = ModelConfig.preset(args.preset, **overrides)
    try:
        train_cfg = _train_config(args.preset, args)
    except TrainConfigError as e:
        raise UsageError(str(e)) from None
    validate_train_args(args, model_cfg, train_cfg)
    total_steps = args.steps
    if args.tokens is not None and total_steps is None:
        try:
            total_steps = plan_run(int(args.tokens), train_cfg).total_steps
        except TrainConfigError as e:
            raise UsageError(f"--tokens {args.tokens:g}: {e}") from None
    if total_steps is None and args.epochs is None:
        # the demo budget: about 10 minutes on a 2-core CPU; --epochs/--tokens for more
        total_steps = DEFAULT_STEPS.get(args.preset)
    data = args.data
    if data is None:
        from pythoncoder.data.prepare import ensure_stdlib_data

        print(f"no --data: preparing the Python standard library at seq_len "
              f"{train_cfg.seq_len} (cached after the first run)", file=sys.stderr)
        data = ensure_stdlib_data(train_cfg.seq_len, progress=not args.no_progress)
    model_cfg = _with_vocab_subset(args, model_cfg, data)
    mesh = None
    if args.mesh:
        mesh = make_mesh(*args.mesh)
    try:
        summary = train(model_cfg, train_cfg, data, args.out, total_steps=total_steps,
                        resume=args.resume, mesh=mesh, progress=not args.no_progress,
                        peak_flops=args.peak_tflops * 1e12 if args.peak_tflops else None)
    except (CheckpointError, NonFiniteError, TrainConfigError, ShardError) as e:
        print(f"pythoncoder train: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:  # disk full or read-only while writing metrics or run files
        print(f"pythoncoder train: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    line = val_loss_line(summary["val_losses"], Path(summary["run_dir"]) / "metrics.jsonl")
    if line:
        print(line)
    if summary["plot"]:
        print(f"loss/LR curves: {summary['plot']}")
    print(f"run directory: {summary['run_dir']}")
    if summary.get("interrupted"):
        resume_step = summary.get("resume_step")
        if resume_step == summary["steps_done"]:
            saved = "checkpoint saved"
        elif resume_step is None:
            saved = "no checkpoint was saved (a non-finite streak); resume starts from scratch"
        else:
            saved = (f"no checkpoint at this step (a non-finite streak); resume starts from "
                     f"step {resume_step}")
        print(f"pythoncoder train: interrupted by {summary['interrupted']} at step "
              f"{summary['steps_done']}; {saved}. Continue with: pythoncoder train "
              f"--resume --out {summary['run_dir']} (same options)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def val_loss_line(this_process: list[tuple[int, float]], metrics: Path) -> str | None:
    """The summary's validation line: the run's first measured loss -> its last.

    A resumed run's earlier losses are in ``metrics.jsonl`` (this process measured only
    its own steps); one measurement, or none in this process (a resume of a finished run),
    is printed alone."""
    measured: list[tuple[int, float]] = []
    try:
        for text in metrics.read_text().splitlines():
            record = json.loads(text) if text.strip() else {}
            if record.get("val_loss") is not None:
                measured.append((int(record["step"]), float(record["val_loss"])))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        measured = []
    if not measured and not this_process:
        return None
    first = measured[0] if measured else this_process[0]
    last = this_process[-1] if this_process else measured[-1]
    if first[0] == last[0]:
        return f"validation loss: {last[1]:.4f} (step {last[0]})"
    return (f"validation loss: {first[1]:.4f} (step {first[0]}) -> {last[1]:.4f} "
            f"(step {last[0]})")


def configure_memory(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="1b", choices=PRESETS)
    p.add_argument("--micro-batch", type=positive_int, default=8)
    p.add_argument("--seq-len", type=positive_int, default=2048)
    p.add_argument("--accum-steps", type=positive_int, default=8)
    p.add_argument("--remat", default="full", choices=REMAT_POLICIES,
                   help="remat policy to compile; auto compiles none, dots, full and takes, of "
                        "those within 90%% of the device memory, the smallest roofline bound "
                        "(with --topology, or on an accelerator with datasheet peaks; else "
                        "the first that fits), as train's auto does")
    p.add_argument("--compute-dtype", default="bfloat16",
                   choices=["auto", "float32", "bfloat16"])
    from pythoncoder.targets import COMPILE_TARGETS

    p.add_argument("--topology", default=None, choices=COMPILE_TARGETS,
                   help="compile ahead of time for this target with its own compiler (libtpu "
                        "for a TPU; XLA's GPU compiler, Triton and ptxas for the GPUs; "
                        "pip install -e '.[targets]'), and report FLOPs, HBM bytes and the "
                        "roofline step bound; default: the local backend")
    p.add_argument("--target-config", default=None, metavar="FILE",
                   help="compile for the GPU described by this XLA gpu_target_config text "
                        "proto (instead of --topology)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_memory)


def _memory_report(args: argparse.Namespace, model_cfg: ModelConfig, train_cfg,
                   topology: str | None, target_config: str | None):
    """The compiled step's memory report; with ``--remat auto`` the policy is the one
    ``choose_remat`` (train's chooser) takes for this target, ``None`` when the compiler
    refused every policy as out of memory."""
    from pythoncoder.train.memory import memory_report, step_target, train_step_memory
    from pythoncoder.train.remat import choose_remat

    if args.remat != "auto":
        return train_step_memory(model_cfg, train_cfg, topology=topology,
                                 target_config=target_config)
    target = step_target(model_cfg, train_cfg, topology=topology, target_config=target_config)
    choice = choose_remat(model_cfg, train_cfg, target.tx, target.state, target.shardings,
                          target.mesh, limit_bytes=target.limit_bytes(), peaks=target.peaks(),
                          log=lambda line: print(line, file=sys.stderr))
    if choice["compiled"] is None:
        return None
    report = memory_report(choice["compiled"], model_cfg.replace(remat_policy=choice["policy"]),
                           train_cfg, target)
    return dataclasses.replace(report, remat_auto={
        "budget_bytes": choice["budget_bytes"], "chosen": choice["policy"],
        "chosen_by": choice["chosen_by"], "compiled_bytes": choice["compiled_bytes"],
        "bound_s": choice["bound_s"]})


def _load_tpu_compiler(topology: str | None) -> None:
    """Load libtpu for a TPU ``topology`` with the lines it logs on a host that is not a
    TPU VM dropped (``utils.platforms.LIBTPU_NOISE``); its first load is the only one that
    logs them.  A missing libtpu is left for the compile to report."""
    from pythoncoder.targets import TARGETS, topology_devices
    from pythoncoder.utils.platforms import filtered_stderr, is_libtpu_noise

    if topology not in TARGETS or TARGETS[topology].tpu_topology is None:
        return
    with filtered_stderr(is_libtpu_noise), contextlib.suppress(RuntimeError):
        topology_devices(topology)


def run_memory(args: argparse.Namespace) -> int:
    from pythoncoder.train.config import TrainConfig, TrainConfigError
    from pythoncoder.train.remat import is_out_of_memory

    model_cfg = ModelConfig.preset(args.preset, remat_policy=args.remat,
                                   compute_dtype=args.compute_dtype)
    try:
        train_cfg = TrainConfig(micro_batch=args.micro_batch, seq_len=args.seq_len,
                                accum_steps=args.accum_steps)
    except TrainConfigError as e:
        raise UsageError(str(e)) from None
    check_seq_len(args.preset, model_cfg, train_cfg.seq_len)
    topology, target_config = args.topology, None
    if args.target_config is not None:
        if topology is not None:
            raise UsageError("--topology and --target-config are exclusive")
        from pythoncoder.targets import parse_target_config

        try:
            target_config = Path(args.target_config).read_text()
            parse_target_config(target_config)
        except (OSError, ValueError) as e:
            raise UsageError(f"--target-config {args.target_config}: {e}") from None
    _load_tpu_compiler(topology)
    try:
        report = _memory_report(args, model_cfg, train_cfg, topology, target_config)
    except RuntimeError as e:
        if is_out_of_memory(e):  # the TPU compiler refuses what exceeds HBM
            print(f"remat {model_cfg.remat_policy}: does not fit: {str(e).splitlines()[0]}",
                  file=sys.stderr)
            return 1
        if topology is None and target_config is None:
            raise
        from pythoncoder.targets import TARGETS

        if topology is None or TARGETS[topology].tpu_topology is None:
            # no libtpu: a TPU target falls back to the local compiler; a GPU target does not
            print(f"pythoncoder memory: {e}", file=sys.stderr)
            return EXIT_FAILED
        print(f"pythoncoder memory: {e}; falling back to the local compiler", file=sys.stderr)
        report = _memory_report(args, model_cfg, train_cfg, None, None)
    if report is None:  # remat auto: the compiler refused every policy as out of memory
        return 1
    report = {**report.to_json(), "train_config": dataclasses.asdict(train_cfg)}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.preset} train step at {args.micro_batch}x{args.seq_len} "
              f"(accum {args.accum_steps}, remat {report['remat_policy']}"
              f"{' by auto' if args.remat == 'auto' else ''}) compiled by "
              f"{report['compiler']}:")
        for k in ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "total_bytes"):
            print(f"  {k:<16}{report[k] / 2**30:8.2f} GiB")
        limit = report["limit_bytes"]
        print(f"  fits {limit / 2**30:.1f} GiB ({report['limit_of']}): "
              f"{report['total_bytes'] <= limit}")
        print(f"  attention: {report['attention_impl']}")
        if report.get("cost_note"):
            print(f"  per step: {report['cost_note']}")
        if report.get("roofline_step_s"):
            print(f"  per step: {report['flops_per_step'] / 1e12:.1f} TFLOP, "
                  f"{report['hbm_bytes_per_step'] / 1e9:.1f} GB of HBM traffic")
            print(f"  roofline bound: {report['roofline_step_s']:.3f} s/step, "
                  f"{report['roofline_bound']}-bound "
                  f"(compute {report['roofline_compute_s']:.3f} s, memory "
                  f"{report['roofline_memory_s']:.3f} s), at most "
                  f"{report['roofline_tokens_per_s']:,.0f} tokens/s, MFU "
                  f"{100 * report['roofline_mfu']:.0f}% (a lower bound on the step time "
                  "of this untuned compile, not a prediction)")
    return 0
