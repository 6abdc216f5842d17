"""The training driver behind ``pythoncoder train``: ``train`` builds the run once
(``run.build_run``) and runs its steps (``run_steps``).

One jitted step per optimizer update (micro-batches are scanned inside it), FSDP
shardings on a (data, fsdp) mesh, Orbax checkpoints with the loader position, a
non-finite guard, validation at checkpoint time, JSONL metrics, a progress bar, a loss /
LR plot at the end, and a save on SIGTERM or SIGINT. The host-side policies of a step
live in ``train.host``; what each step of a run does, and where:

- lock the run directory: ``checkpoint.RunLock`` (``train``)
- mesh, data, plan, optimizer, state (fresh or restored), remat, step, validation data,
  metrics sink: ``run.build_run``
- each step: batch (``_reshape_batch`` + ``sharding.global_batch``), key, the jitted step
  (``step.make_train_step``): ``_steps``
- its metrics, one step late: ``host.OneStepLate`` -> ``host.StepRecorder`` (non-finite
  policy ``host.NonFiniteGuard``, tokens/s ``host.Throughput``, ``metrics.MetricsSink``)
- checkpoint + validation loss: ``host.CheckpointSaver`` (``host.Evaluation``)
- SIGTERM / SIGINT: ``host.Preemption`` -> ``_stop``
- the summary and the loss / LR plot: ``_summary`` (``metrics.plot_curves``)

The run directory has one owner (``RunLock``); a fresh run refuses a directory that
already holds checkpoints, and a resumed one is checked against ``run.json`` (preset,
model config, seq_len, batch shape, data manifest) before anything is rewritten.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np

from pythoncoder.checkpoint import RunLock
from pythoncoder.model import ModelConfig
from pythoncoder.train.config import TrainConfig
from pythoncoder.train.host import (
    CheckpointSaver,
    NonFiniteError,
    NonFiniteGuard,
    OneStepLate,
    Preemption,
    StepRecorder,
    Throughput,
)
from pythoncoder.train.metrics import plot_curves
from pythoncoder.train.run import Run, build_run
from pythoncoder.train.sharding import global_batch

__all__ = ["NonFiniteError", "Outcome", "Stop", "run_steps", "train"]


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
        run = build_run(model_cfg, train_cfg, data_dir, run_dir, total_steps=total_steps,
                        resume=resume, mesh=mesh, progress=progress, log=log,
                        peak_flops=peak_flops)
        return _summary(run, run_steps(run, stop_after=stop_after, log=log))
    finally:
        lock.release()


@dataclasses.dataclass(frozen=True)
class Stop:
    """A run that stopped before its plan's last step: where, why, where resume starts."""

    step: int
    by: str | None  # the signal's name; None for ``stop_after``
    resume_step: int | None


@dataclasses.dataclass(frozen=True)
class Outcome:
    first_val_loss: float | None
    skipped: int
    stop: Stop | None
    signal: str | None  # also set by a signal after the last step (a complete run)


def run_steps(run: Run, *, stop_after: int | None = None, log=print) -> Outcome:
    """Steps ``run.start + 1`` .. ``plan.total_steps`` (or up to a stop), each checkpoint
    saved and verified; the checkpointer and the sink are closed on the way out."""
    cfg = run.train_cfg
    guard = NonFiniteGuard(cfg.max_consecutive_nonfinite, run.lr_table,
                           applied=int(run.state.step), skipped=run.skipped,
                           checkpoints=run.ckpt, log=log)
    saver = CheckpointSaver(run.ckpt, run.sink, run.evaluation, run.loader,
                            steps_per_epoch=run.plan.steps_per_epoch, seed=cfg.seed,
                            rng_key=[int(x) for x in np.asarray(run.base_key)], log=log)
    first_val = None
    if run.start == 0 and run.evaluation.available:
        first_val = run.evaluation(run.state.params)
        run.sink.val_loss(0, first_val)
    meter = Throughput(cfg.tokens_per_step, run.flops_per_token, run.peak_flops, run.start)
    recorder = StepRecorder(guard, meter, run.sink, log_every=cfg.log_every,
                            last_step=run.plan.total_steps)
    failed, stop = True, None
    with Preemption(stop_after) as preemption:
        try:
            stop = _steps(run, saver, guard, OneStepLate(recorder.record), preemption, log)
            failed = False
        finally:
            run.sink.close_bar()
            try:
                saver.close(failed=failed)
            finally:
                run.sink.close()
    return Outcome(first_val, guard.skipped, stop, preemption.received)


def _steps(run: Run, saver: CheckpointSaver, guard: NonFiniteGuard, late: OneStepLate,
           preemption: Preemption, log) -> Stop | None:
    cfg, total = run.train_cfg, run.plan.total_steps
    for global_step in range(run.start, total):
        saver.poll()  # a failed background save stops the run here
        batch = global_batch(_reshape_batch(next(run.loader), cfg.accum_steps), run.mesh)
        key = jax.random.fold_in(run.base_key, global_step)
        run.state, metrics = run.step_fn(run.state, batch, key)
        done = global_step + 1
        # Step n-1's metrics are read only now, after step n is on its way: the host
        # never waits on the device between steps.
        late.push(done, metrics, run.loader.data_epoch)
        at_ckpt = done % cfg.steps_per_checkpoint == 0 or done == total
        stopping = preemption.requested(done)
        if at_ckpt or stopping:
            late.flush()  # the non-finite policy needs this step's own flag
            saver.save_unless_streak(done, run.state, guard)
        if stopping and done < total:
            return _stop(done, saver, guard, preemption, run.ckpt, log)
    late.flush()
    saver.finish()
    return None


def _stop(step: int, saver: CheckpointSaver, guard: NonFiniteGuard, preemption: Preemption,
          ckpt, log) -> Stop:
    """Wait for the stop's save; say where a resume will start."""
    saver.finish()
    stop = Stop(step, preemption.received, ckpt.latest_step())
    where = (f"checkpoint saved in {ckpt.directory}" if not guard.streak
             else f"no checkpoint at this step; resume starts from step {stop.resume_step}")
    log(f"stopping at step {step} ({preemption.received or 'stop'}); {where}")
    return stop


def _summary(run: Run, outcome: Outcome) -> dict[str, Any]:
    """What ``train`` returns (the CLI prints it); draws ``curves.png``."""
    sink, stop = run.sink, outcome.stop
    plot = plot_curves(sink.path, run.run_dir / "curves.png") if sink.path.exists() else None
    return {
        "plan": run.plan,
        "steps_done": sink.history["loss"][-1][0] if sink.history["loss"] else run.start,
        "losses": [l for _, l in sink.history["loss"]], "val_losses": sink.history["val_loss"],
        "first_val_loss": outcome.first_val_loss, "skipped": outcome.skipped, "plot": plot,
        "final_params": run.state.params, "run_dir": run.run_dir, "remat": run.remat,
        # a signal that arrives after the last step (final save, plot) ends a complete run
        "interrupted": stop.by if stop else None, "signal": outcome.signal,
        "resume_step": stop.resume_step if stop else None,
    }


def _reshape_batch(batch: dict[str, np.ndarray], accum: int) -> dict[str, np.ndarray]:
    out = {}
    for k, v in batch.items():
        rows = v.shape[0]
        out[k] = np.asarray(v).reshape(accum, rows // accum, *v.shape[1:])
    return out
