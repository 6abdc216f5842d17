"""The training driver behind ``pythoncoder train``.

One jitted step per optimizer update (micro-batches are scanned inside it), FSDP
shardings on a (data, fsdp) mesh, Orbax checkpoints with the loader position, a
non-finite guard, validation at checkpoint time, JSONL metrics, a progress bar, a loss /
LR plot at the end, and a save on SIGTERM or SIGINT.

The run directory has one owner (``RunLock``); a fresh run refuses a directory that
already holds checkpoints, and a resumed one is checked against ``run.json`` (preset,
model config, seq_len, batch shape, data manifest) before anything is rewritten.
"""

from __future__ import annotations

import hashlib
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

from pythoncoder.checkpoint import (
    Checkpointer,
    CheckpointError,
    RunLock,
    read_run_file,
    write_run_files,
)
from pythoncoder.model import ModelConfig, abstract_model, build_model
from pythoncoder.train.config import RunPlan, TrainConfig, TrainConfigError, plan_run
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
from pythoncoder.utils.files import atomic_write_text
from pythoncoder.utils.perf import nominal_peak_flops, train_flops_per_token


class NonFiniteError(RuntimeError):
    """K consecutive non-finite steps (TRAIN-08). The last checkpoint is left intact."""


class _Sigterm:
    """Remember a SIGTERM or SIGINT so the loop can checkpoint before exiting."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Sigterm:
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def data_fingerprint(data_dir: str | Path) -> str | None:
    """sha256 of the prepared data's ``manifest.json`` (it lists every shard's sha256)."""
    path = Path(data_dir) / "manifest.json"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def check_resume(run_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 data: str | None) -> None:
    """One clear ``CheckpointError`` line if this run does not continue ``run.json``'s."""
    import dataclasses

    info = read_run_file(run_dir)
    saved_model, saved_train = info.get("model", {}), info.get("train", {})
    now_train = dataclasses.asdict(train_cfg)
    now_model = json.loads(json.dumps(dataclasses.asdict(model_cfg)))  # tuples as in JSON
    checks = [("preset", saved_model.get("name"), model_cfg.name)]
    checks += [(f"train.{k}", saved_train.get(k), now_train[k])
               for k in ("seq_len", "micro_batch", "accum_steps")]
    # a run from before a field existed has that field's default (vocab_subset: none)
    absent = {"vocab_subset": []}
    checks += [(f"model.{k}", saved_model.get(k, absent.get(k)), v)
               for k, v in now_model.items() if k != "name"]
    if "data_manifest_sha256" in info:
        checks.append(("data manifest sha256", info["data_manifest_sha256"], data))
    for field, was, now in checks:
        if was != now and field == "model.vocab_subset":
            raise CheckpointError(
                f"--resume: model.vocab_subset differs: the run in {run_dir} keeps "
                f"{len(was or [])} token ids, this command {len(now)} (or other ids); "
                f"pass the run's --vocab-rows and data")
        if was != now:
            raise CheckpointError(f"--resume: {field} differs: the run in {run_dir} has "
                                  f"{was!r}, this command has {now!r}")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows after ``step`` (written by a run that died after its checkpoint)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:
            continue  # a torn last line from a kill
    atomic_write_text(path, "".join(k + "\n" for k in kept))


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
          log=print, peak_flops: float | None = None) -> dict[str, Any]:
    """Train and return a summary. ``stop_after`` ends the process early (for resume
    tests) exactly as a preemption would, after saving a checkpoint.  ``peak_flops``
    (per device) sets the MFU denominator; default: the datasheet peak of known
    accelerators, else MFU is not reported.

    The run directory is locked for the whole run (``RunLockError`` if another live
    process holds it)."""
    run_dir = Path(run_dir)
    lock = RunLock(run_dir, log=log).acquire()
    try:
        return _train(model_cfg, train_cfg, data_dir, run_dir, total_steps=total_steps,
                      resume=resume, mesh=mesh, progress=progress, stop_after=stop_after,
                      log=log, peak_flops=peak_flops)
    finally:
        lock.release()


def _train(model_cfg: ModelConfig, train_cfg: TrainConfig, data_dir: str | Path,
           run_dir: Path, *, total_steps: int | None, resume: bool, mesh, progress: bool,
           stop_after: int | None, log, peak_flops: float | None) -> dict[str, Any]:
    from pythoncoder.data.loader import make_loader
    from pythoncoder.data.shards import ShardError

    maybe_initialize_distributed()
    if mesh is None:  # as many devices as evenly split a micro-batch's rows
        usable = math.gcd(jax.device_count(), train_cfg.micro_batch)
        mesh = make_mesh(1, usable, jax.devices()[:usable])
    procs = jax.process_count()
    rows_per_step = train_cfg.micro_batch * train_cfg.accum_steps
    if rows_per_step % procs:
        raise TrainConfigError(f"micro_batch*accum_steps={rows_per_step} rows per step do not "
                               f"split over {procs} hosts")
    loader = make_loader(data_dir, split="train", batch_size=rows_per_step // procs,
                         seed=train_cfg.seed)
    if loader.seq_len != train_cfg.seq_len:
        raise TrainConfigError(f"data in {data_dir} is packed at seq_len={loader.seq_len}, "
                               f"but seq_len={train_cfg.seq_len} was requested")
    tokens_per_epoch = loader.steps_per_epoch * train_cfg.tokens_per_step
    plan: RunPlan = plan_run(tokens_per_epoch, train_cfg, total_steps=total_steps)
    log(plan.describe())

    tx, schedule = make_optimizer(train_cfg, plan.total_steps, plan.warmup_steps)
    # The LR of every step, fetched once: reading it per step from a device computation
    # would queue behind the step just dispatched and make the host wait on the device.
    lr_table = np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(plan.total_steps + 1)))
    model = build_model(model_cfg, seed=train_cfg.seed)
    graphdef, _ = nnx.split(model, nnx.Param)
    abstract = abstract_train_state(model, tx)
    shardings = state_shardings(abstract, mesh)
    fingerprint = data_fingerprint(data_dir)
    ckpt_dir = run_dir / "checkpoints"
    existing = sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) \
        if ckpt_dir.is_dir() else []
    if resume:
        if not existing:
            raise CheckpointError(f"--resume: no checkpoint in {ckpt_dir.absolute()}")
        check_resume(run_dir, model_cfg, train_cfg, fingerprint)
    elif existing:
        raise CheckpointError(f"{run_dir} already holds checkpoints (steps {existing}); pass "
                              "--resume to continue that run, or choose another --out")
    ckpt = Checkpointer(run_dir, keep=train_cfg.keep_checkpoints)
    # Orbax temporaries of a killed save are never a finalised step: a resume drops them,
    # and so does a fresh start (a first save killed leaves nothing but them).
    ckpt.remove_partial_saves()
    meta: dict[str, Any] = {}
    if resume:
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              abstract, shardings)
        state, meta = ckpt.restore(target, log=log)
        restored = int(meta["global_step"])
        if plan.total_steps < restored:
            ckpt.close()
            raise CheckpointError(f"--steps {plan.total_steps} is below the restored step "
                                  f"{restored}; pass --steps {restored} or more")
        newer = [s for s in ckpt.all_steps() if s > restored]
        if newer:
            log(f"resuming from step {restored}, the newest checkpoint that verifies "
                f"(rejected: {newer})")
            ckpt.set_aside(newer, log=log)
        loader.set_state(meta["loader"])
        _truncate_metrics(run_dir / "metrics.jsonl", restored)
        log(f"resumed from {ckpt.directory}/{restored} (epoch {meta['epoch']}, "
            f"data_epoch {meta['data_epoch']})")
    else:
        state = jax.device_put(init_train_state(model, tx), shardings)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    del model
    remat, compiled = None, None
    if model_cfg.remat_policy == "auto":
        from pythoncoder.train.remat import choose_remat

        remat = choose_remat(model_cfg, train_cfg, tx, abstract, shardings, mesh, log=log)
        compiled = remat.pop("compiled")
        graphdef, _ = nnx.split(abstract_model(model_cfg.replace(remat_policy=remat["policy"])),
                                nnx.Param)
    write_run_files(run_dir, model_cfg, train_cfg, plan,
                    data=str(Path(data_dir).absolute()), data_manifest_sha256=fingerprint,
                    **({"remat": remat} if remat else {}))

    if compiled is not None:  # auto compiled the chosen step already: run that executable
        key_sharding = replicated(mesh)

        def step_fn(state, batch, key):
            return compiled(state, batch, jax.device_put(key, key_sharding))
    else:
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
    per_device = peak_flops or nominal_peak_flops(mesh.devices.flat[0])
    peak = per_device * mesh.devices.size if per_device else None
    base_key = jax.random.PRNGKey(train_cfg.seed)
    start = int(meta.get("global_step", 0))
    skipped_total = int(meta.get("skipped", 0))
    sink = MetricsSink(run_dir, total=plan.total_steps, initial=start, progress=progress)

    pending_val: dict[int, float | None] = {}

    def saved(step: int | None) -> None:
        """Log a checkpoint's validation loss once the checkpoint exists (verified save)."""
        if step is None:
            return
        val = pending_val.pop(step, None)
        if val is not None:
            sink.val_loss(step, val)

    def checkpoint(global_step: int) -> float | None:
        val = evaluate(eval_fn, state.params, val_loader, train_cfg.eval_batches) \
            if val_loader is not None else None
        save_meta = {
            "global_step": global_step, "epoch": global_step // max(plan.steps_per_epoch, 1),
            "data_epoch": loader.data_epoch, "loader": loader.get_state(),
            "seed": train_cfg.seed, "rng_key": [int(x) for x in np.asarray(base_key)],
            "skipped": skipped_total, "val_loss": val,
        }
        saved(ckpt.finish())  # the previous save, if still running
        ckpt.save(global_step, state, save_meta)
        pending_val[global_step] = val
        return val

    first_val = None
    if start == 0 and val_loader is not None:
        first_val = evaluate(eval_fn, state.params, val_loader, train_cfg.eval_batches)
        sink.val_loss(0, first_val)
    counters = {"bad": 0, "applied": int(state.step), "last_time": time.perf_counter(),
                "last_step": start}
    pending = None

    def record_step(done: int, m: dict, data_epoch: int) -> None:
        """Host side of one step: non-finite policy, LR, JSONL/TensorBoard/progress bar."""
        nonlocal skipped_total
        loss, finite = float(m["loss"]), bool(m["finite"])
        # the LR this step's update used
        lr = float(lr_table[min(counters["applied"], len(lr_table) - 1)])
        if not finite:
            counters["bad"] += 1
            skipped_total += 1
            log(f"step {done}: non-finite loss/grad norm (loss={loss}); update skipped "
                f"({counters['bad']} in a row)")
            if counters["bad"] >= train_cfg.max_consecutive_nonfinite:
                raise NonFiniteError(
                    f"{counters['bad']} consecutive non-finite steps ending at step "
                    f"{done}; stopping. The last good checkpoint in {ckpt.directory} "
                    f"(step {ckpt.latest_step()}) is intact.")
        else:
            counters["bad"] = 0
            counters["applied"] += 1
        sink.step_loss(done, loss)
        if done % train_cfg.log_every == 0 or done == plan.total_steps:
            now = time.perf_counter()
            tps = (done - counters["last_step"]) * train_cfg.tokens_per_step / max(
                now - counters["last_time"], 1e-9)
            mfu = tps * flops_per_token / peak if peak else None
            counters["last_time"], counters["last_step"] = now, done
            sink.train({"step": done, "loss": loss, "lr": lr, "grad_norm": float(m["grad_norm"]),
                        "tokens_per_s": tps, "mfu": mfu, "data_epoch": data_epoch,
                        "skipped": skipped_total})
        sink.tick()

    failed = True
    stopped: dict[str, Any] | None = None  # set when the loop ends before the plan's last step
    with _Sigterm() as sigterm:
        try:
            for global_step in range(start, plan.total_steps):
                saved(ckpt.poll())  # a failed background save stops the run here
                batch = global_batch(_reshape_batch(next(loader), train_cfg.accum_steps), mesh)
                key = jax.random.fold_in(base_key, global_step)
                state, m = step_fn(state, batch, key)
                done = global_step + 1
                # Step n-1's metrics are read only now, after step n is on its way: the
                # host never waits on the device between steps.
                if pending is not None:
                    record_step(*pending)
                pending = (done, m, loader.data_epoch)
                at_ckpt = done % train_cfg.steps_per_checkpoint == 0 or done == plan.total_steps
                stopping = sigterm.received is not None or (stop_after is not None
                                                             and done >= stop_after)
                if at_ckpt or stopping:  # the non-finite policy needs this step's flag
                    record_step(*pending)
                    pending = None
                if (at_ckpt or stopping) and counters["bad"]:
                    log(f"step {done}: checkpoint deferred during a non-finite streak; the "
                        f"last good one (step {ckpt.latest_step()}) stays")
                elif at_ckpt or stopping:
                    checkpoint(done)
                if stopping and done < plan.total_steps:
                    saved(ckpt.finish())
                    stopped = {"step": done, "by": sigterm.received,
                               "resume_step": ckpt.latest_step()}
                    where = (f"checkpoint saved in {ckpt.directory}" if not counters["bad"]
                             else f"no checkpoint at this step; resume starts from step "
                                  f"{stopped['resume_step']}")
                    log(f"stopping at step {done} ({sigterm.received or 'stop'}); {where}")
                    break
            if pending is not None:
                record_step(*pending)
            saved(ckpt.finish())
            failed = False
        finally:
            sink.close_bar()
            try:  # a save still in flight is finished (manifest written) even on an error
                saved(ckpt.finish())
            except CheckpointError as e:
                if not failed:
                    raise
                log(str(e))
            finally:
                ckpt.release()
            sink.close()
    plot = plot_curves(sink.path, run_dir / "curves.png") if sink.path.exists() else None
    return {
        "plan": plan,
        "steps_done": sink.history["loss"][-1][0] if sink.history["loss"] else start,
        "losses": [l for _, l in sink.history["loss"]], "val_losses": sink.history["val_loss"],
        "first_val_loss": first_val, "skipped": skipped_total, "plot": plot,
        "final_params": state.params, "run_dir": run_dir, "remat": remat,
        # a signal that arrives after the last step (final save, plot) ends a complete run
        "interrupted": stopped["by"] if stopped else None, "signal": sigterm.received,
        "resume_step": stopped["resume_step"] if stopped else None,
    }


class MetricsSink:
    """Where a run's metrics go: ``metrics.jsonl`` (one JSON object per line, non-finite
    numbers as null), TensorBoard when ``tensorboardX`` is installed, and the progress bar;
    it keeps the loss history the run's summary returns."""

    TRAIN_SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu")

    def __init__(self, run_dir: Path, *, total: int, initial: int, progress: bool) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.history: dict[str, list] = {"loss": [], "val_loss": []}
        self.bar = tqdm(total=total, initial=initial, disable=not progress, unit="step",
                        dynamic_ncols=True)
        self.tb = _tensorboard(run_dir)

    def train(self, record: dict[str, Any]) -> None:
        """One logged training step: ``step``, ``loss``, ``lr``, ``grad_norm``,
        ``tokens_per_s``, ``mfu`` (None without a peak) and any other fields."""
        _append(self.path, record)
        if self.tb:
            for k in self.TRAIN_SCALARS:
                if record.get(k) is not None:
                    self.tb.add_scalar(f"train/{k}", record[k], record["step"])
        mfu = record.get("mfu")
        self.bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                             tok_s=f"{record['tokens_per_s']:,.0f}",
                             mfu="n/a" if mfu is None else f"{mfu:.1%}")

    def step_loss(self, step: int, loss: float) -> None:
        """Every step's loss (the summary's history; the file gets the logged steps)."""
        self.history["loss"].append((step, loss))

    def val_loss(self, step: int, value: float) -> None:
        self.history["val_loss"].append((step, value))
        _append(self.path, {"step": step, "val_loss": value})
        if self.tb:
            self.tb.add_scalar("val/loss", value, step)

    def tick(self) -> None:
        self.bar.update(1)

    def close_bar(self) -> None:
        self.bar.close()

    def close(self) -> None:
        self.bar.close()
        if self.tb:
            self.tb.close()


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
