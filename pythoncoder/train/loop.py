"""The training driver behind ``pythoncoder train``.

One jitted step per optimizer update (micro-batches are scanned inside it), FSDP
shardings on a (data, fsdp) mesh, Orbax checkpoints with the loader position, a
non-finite guard, validation at checkpoint time, JSONL metrics, a progress bar, a loss /
LR plot at the end, and a save on SIGTERM.
"""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from pythoncoder.model import ModelConfig, build_model
from pythoncoder.train.checkpoint import Checkpointer, CheckpointError, write_run_files
from pythoncoder.train.config import RunPlan, TrainConfig, plan_run
from pythoncoder.train.memory import abstract_train_state
from pythoncoder.train.optimizer import make_optimizer
from pythoncoder.train.sharding import (
    global_batch,
    make_mesh,
    maybe_initialize_distributed,
    replicated,
    state_shardings,
)
from pythoncoder.train.step import init_train_state, make_eval_step, make_train_step
from pythoncoder.utils.perf import measure_matmul_flops, train_flops_per_token


class NonFiniteError(RuntimeError):
    """K consecutive non-finite steps (TRAIN-08). The last checkpoint is left intact."""


class _Sigterm:
    """Remember a SIGTERM so the loop can checkpoint before exiting (preemptible TPUs)."""

    def __init__(self) -> None:
        self.received = False
        self._previous = None

    def __enter__(self) -> _Sigterm:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        self.received = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _reshape_batch(batch: dict[str, np.ndarray], accum: int) -> dict[str, np.ndarray]:
    out = {}
    for k, v in batch.items():
        rows = v.shape[0]
        out[k] = np.asarray(v).reshape(accum, rows // accum, *v.shape[1:])
    return out


def evaluate(eval_fn, params, loader, batches: int) -> float | None:
    """Token-mean main-model CE over up to ``batches`` validation batches."""
    total, count = 0.0, 0.0
    for i, batch in enumerate(loader.iter_epoch(0)):
        if i >= batches:
            break
        out = eval_fn(params, {"tokens": jnp.asarray(batch["tokens"]),
                               "segment_ids": jnp.asarray(batch["segment_ids"])})
        total += float(out["main_sum"])
        count += float(out["main_count"])
    return total / count if count else None


def plot_curves(metrics_path: Path, out_path: Path) -> Path | None:
    """Loss (train and validation) and LR against step, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r]
    if not train:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", lw=0.8)
    if val:
        ax1.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss (main CE + 0.1 MTP CE; validation: main CE)")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot([r["step"] for r in train], [r["lr"] for r in train])
    ax2.set_xlabel("step")
    ax2.set_ylabel("learning rate (WSD)")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, data_dir: str | Path,
          run_dir: str | Path, *, total_steps: int | None = None, resume: bool = False,
          mesh=None, progress: bool = True, stop_after: int | None = None,
          log=print) -> dict[str, Any]:
    """Train and return a summary. ``stop_after`` ends the process early (for resume
    tests) exactly as a preemption would, after saving a checkpoint."""
    from pythoncoder.data.loader import make_loader
    from pythoncoder.data.shards import ShardError

    maybe_initialize_distributed()
    run_dir = Path(run_dir)
    if mesh is None:  # as many devices as evenly split a micro-batch's rows
        usable = math.gcd(jax.device_count(), train_cfg.micro_batch)
        mesh = make_mesh(1, usable, jax.devices()[:usable])
    procs = jax.process_count()
    rows_per_step = train_cfg.micro_batch * train_cfg.accum_steps
    if rows_per_step % procs:
        raise ValueError(f"micro_batch*accum_steps={rows_per_step} rows per step do not split "
                         f"over {procs} hosts")
    loader = make_loader(data_dir, split="train", batch_size=rows_per_step // procs,
                         seed=train_cfg.seed)
    if loader.seq_len != train_cfg.seq_len:
        raise ValueError(f"data in {data_dir} is packed at seq_len={loader.seq_len}, but "
                         f"seq_len={train_cfg.seq_len} was requested")
    tokens_per_epoch = loader.steps_per_epoch * train_cfg.tokens_per_step
    plan: RunPlan = plan_run(tokens_per_epoch, train_cfg, total_steps=total_steps)
    log(plan.describe())

    tx, schedule = make_optimizer(train_cfg, plan.total_steps, plan.warmup_steps)
    model = build_model(model_cfg, seed=train_cfg.seed)
    graphdef, _ = nnx.split(model, nnx.Param)
    abstract = abstract_train_state(model, tx)
    shardings = state_shardings(abstract, mesh)
    ckpt = Checkpointer(run_dir, keep=train_cfg.keep_checkpoints)
    meta: dict[str, Any] = {}
    if resume:
        if ckpt.latest_step() is None:
            raise CheckpointError(f"--resume: no checkpoint in {ckpt.directory}")
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              abstract, shardings)
        state, meta = ckpt.restore(target)
        loader.set_state(meta["loader"])
        log(f"resumed from {ckpt.directory}/{meta['global_step']} (epoch {meta['epoch']}, "
            f"data_epoch {meta['data_epoch']})")
    else:
        state = jax.device_put(init_train_state(model, tx), shardings)
    del model
    write_run_files(run_dir, model_cfg, train_cfg, plan)

    step_fn = jax.jit(make_train_step(graphdef, tx, mtp_weight=model_cfg.mtp_weight),
                      in_shardings=(shardings, None, replicated(mesh)),
                      out_shardings=(shardings, replicated(mesh)), donate_argnums=0)
    eval_fn = jax.jit(make_eval_step(graphdef, model_cfg.mtp_weight))
    val_loader = None
    try:
        val_loader = make_loader(data_dir, split="val", batch_size=train_cfg.micro_batch,
                                 seed=train_cfg.seed)
    except (ShardError, FileNotFoundError, ValueError) as e:
        log(f"no validation split ({e}); validation loss disabled")

    flops_per_token = train_flops_per_token(model_cfg, train_cfg.seq_len)
    peak = measure_matmul_flops(model_cfg.dtype(), min_time=0.5) * mesh.devices.size
    base_key = jax.random.PRNGKey(train_cfg.seed)
    metrics_path = run_dir / "metrics.jsonl"
    start = int(meta.get("global_step", 0))
    consecutive_bad, skipped_total = 0, int(meta.get("skipped", 0))
    history: dict[str, list] = {"loss": [], "val_loss": []}
    bar = tqdm(total=plan.total_steps, initial=start, disable=not progress, unit="step",
               dynamic_ncols=True)
    tb = _tensorboard(run_dir)
    last_time, last_step = time.perf_counter(), start

    def checkpoint(global_step: int) -> float | None:
        val = evaluate(eval_fn, state.params, val_loader, train_cfg.eval_batches) \
            if val_loader is not None else None
        save_meta = {
            "global_step": global_step, "epoch": global_step // max(plan.steps_per_epoch, 1),
            "data_epoch": loader.data_epoch, "loader": loader.get_state(),
            "seed": train_cfg.seed, "rng_key": [int(x) for x in np.asarray(base_key)],
            "skipped": skipped_total, "val_loss": val,
        }
        ckpt.save(global_step, state, save_meta)
        if val is not None:
            history["val_loss"].append((global_step, val))
            _append(metrics_path, {"step": global_step, "val_loss": val})
            if tb:
                tb.add_scalar("val/loss", val, global_step)
        return val

    first_val = None
    if start == 0 and val_loader is not None:
        first_val = evaluate(eval_fn, state.params, val_loader, train_cfg.eval_batches)
        _append(metrics_path, {"step": 0, "val_loss": first_val})
        history["val_loss"].append((0, first_val))
    with _Sigterm() as sigterm:
        try:
            for global_step in range(start, plan.total_steps):
                batch = global_batch(_reshape_batch(next(loader), train_cfg.accum_steps), mesh)
                key = jax.random.fold_in(base_key, global_step)
                state, m = step_fn(state, batch, key)
                done = global_step + 1
                loss, finite = float(m["loss"]), bool(m["finite"])
                if not finite:
                    consecutive_bad += 1
                    skipped_total += 1
                    log(f"step {done}: non-finite loss/grad norm (loss={loss}); update skipped "
                        f"({consecutive_bad} in a row)")
                    if consecutive_bad >= train_cfg.max_consecutive_nonfinite:
                        raise NonFiniteError(
                            f"{consecutive_bad} consecutive non-finite steps ending at step "
                            f"{done}; stopping. The last good checkpoint in {ckpt.directory} "
                            f"(step {ckpt.latest_step()}) is intact.")
                else:
                    consecutive_bad = 0
                lr = float(schedule(int(state.step) - 1 if finite else int(state.step)))
                history["loss"].append((done, loss))
                if done % train_cfg.log_every == 0 or done == plan.total_steps:
                    now = time.perf_counter()
                    tps = (done - last_step) * train_cfg.tokens_per_step / max(now - last_time,
                                                                               1e-9)
                    mfu = tps * flops_per_token / peak
                    last_time, last_step = now, done
                    record = {"step": done, "loss": loss, "lr": lr,
                              "grad_norm": float(m["grad_norm"]), "tokens_per_s": tps,
                              "mfu": mfu, "data_epoch": loader.data_epoch,
                              "skipped": skipped_total}
                    _append(metrics_path, record)
                    if tb:
                        for k in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
                            tb.add_scalar(f"train/{k}", record[k], done)
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}",
                                    mfu=f"{mfu:.1%}")
                bar.update(1)
                at_ckpt = done % train_cfg.steps_per_checkpoint == 0 or done == plan.total_steps
                stopping = sigterm.received or (stop_after is not None and done >= stop_after)
                if (at_ckpt or stopping) and consecutive_bad:
                    log(f"step {done}: checkpoint deferred during a non-finite streak; the "
                        f"last good one (step {ckpt.latest_step()}) stays")
                elif at_ckpt or stopping:
                    checkpoint(done)
                if stopping:
                    log(f"stopping at step {done} ({'SIGTERM' if sigterm.received else 'stop'}"
                        f"); checkpoint saved in {ckpt.directory}")
                    break
        finally:
            bar.close()
            ckpt.close()
            if tb:
                tb.close()
    plot = plot_curves(metrics_path, run_dir / "curves.png") if metrics_path.exists() else None
    return {
        "plan": plan, "steps_done": history["loss"][-1][0] if history["loss"] else start,
        "losses": [l for _, l in history["loss"]], "val_losses": history["val_loss"],
        "first_val_loss": first_val, "skipped": skipped_total, "plot": plot,
        "final_params": state.params, "run_dir": run_dir,
    }


def _append(path: Path, record: dict[str, Any]) -> None:
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in record.items()}
    with path.open("a") as f:
        f.write(json.dumps(clean) + "\n")


def _tensorboard(run_dir: Path):
    try:
        from tensorboardX import SummaryWriter  # optional
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
