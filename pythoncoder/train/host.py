"""The host side of the training loop: what the CPU does between device steps.

Each piece is one policy with its own state, used by ``loop.run_steps``:

- ``OneStepLate``: step n's metrics are read only after step n+1 is dispatched, so the
  host never waits on the device between steps (a checkpoint or a stop reads them at once).
- ``NonFiniteGuard``: TRAIN-08. A non-finite step's update is skipped (by the step itself);
  the guard counts it, stops the run after ``max_consecutive_nonfinite`` in a row, and knows
  the LR each step used (the schedule follows applied updates, not steps).
- ``Throughput``: tokens/s and MFU over the steps since the last logged one.
- ``StepRecorder``: one finished step's host work: the guard, the loss history, the logged
  row every ``log_every`` steps, the progress bar.
- ``Evaluation``: the validation loss (token-mean main-model CE) of some parameters.
- ``CheckpointSaver``: TRAIN-05 saves with their validation loss; none while a non-finite
  streak is open; the validation row is logged once the save is verified on disk.
- ``Preemption``: SIGTERM / SIGINT (or a test's ``stop_after``) asks the loop to save and stop.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from pythoncoder.checkpoint import CheckpointError


class NonFiniteError(RuntimeError):
    """K consecutive non-finite steps (TRAIN-08). The last checkpoint is left intact."""


class OneStepLate:
    """Holds the metrics of the step just dispatched; ``push`` of the next step records
    the held one (its values are ready, or nearly, by then), ``flush`` records it now."""

    def __init__(self, record: Callable[[int, Any, int], None]) -> None:
        self._record = record
        self._held: tuple[int, Any, int] | None = None

    def push(self, step: int, metrics: Any, data_epoch: int) -> None:
        self.flush()
        self._held = (step, metrics, data_epoch)

    def flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._record(*held)


class NonFiniteGuard:
    """Counts skipped updates and the streak of non-finite steps; ``observe`` returns the
    LR the step's update used: ``lr_table[n]`` with n the updates applied before it."""

    def __init__(self, limit: int, lr_table: np.ndarray, *, applied: int, skipped: int,
                 checkpoints: Any, log: Callable[[str], Any]) -> None:
        self.limit, self.lr_table, self.log = limit, lr_table, log
        self.applied, self.skipped, self.streak = applied, skipped, 0
        self.checkpoints = checkpoints  # named in the error: where the last good one is

    def observe(self, step: int, loss: float, finite: bool) -> float:
        lr = float(self.lr_table[min(self.applied, len(self.lr_table) - 1)])
        if finite:
            self.streak = 0
            self.applied += 1
            return lr
        self.streak += 1
        self.skipped += 1
        self.log(f"step {step}: non-finite loss/grad norm (loss={loss}); update skipped "
                 f"({self.streak} in a row)")
        if self.streak >= self.limit:
            raise NonFiniteError(
                f"{self.streak} consecutive non-finite steps ending at step {step}; "
                f"stopping. The last good checkpoint in {self.checkpoints.directory} "
                f"(step {self.checkpoints.latest_step()}) is intact.")
        return lr


class Throughput:
    """Tokens/s (and MFU, given the mesh's peak FLOP/s) since the last ``measure``."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float | None,
                 step: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.peak_flops, self.clock = peak_flops, clock
        self._step, self._time = step, clock()

    def measure(self, step: int) -> tuple[float, float | None]:
        now = self.clock()
        tps = (step - self._step) * self.tokens_per_step / max(now - self._time, 1e-9)
        mfu = tps * self.flops_per_token / self.peak_flops if self.peak_flops else None
        self._step, self._time = step, now
        return tps, mfu


class StepRecorder:
    """The host side of one finished step, in order: the non-finite policy, the loss
    history, the logged row (every ``log_every`` steps and the last), the progress bar."""

    def __init__(self, guard: NonFiniteGuard, meter: Throughput, sink: Any, *,
                 log_every: int, last_step: int) -> None:
        self.guard, self.meter, self.sink = guard, meter, sink
        self.log_every, self.last_step = log_every, last_step

    def record(self, step: int, metrics: Any, data_epoch: int) -> None:
        loss, finite = float(metrics["loss"]), bool(metrics["finite"])
        lr = self.guard.observe(step, loss, finite)
        self.sink.step_loss(step, loss)
        if step % self.log_every == 0 or step == self.last_step:
            tps, mfu = self.meter.measure(step)
            self.sink.train({"step": step, "loss": loss, "lr": lr,
                             "grad_norm": float(metrics["grad_norm"]), "tokens_per_s": tps,
                             "mfu": mfu, "data_epoch": data_epoch,
                             "skipped": self.guard.skipped})
        self.sink.tick()


@dataclasses.dataclass
class Evaluation:
    """Validation loss: the token-mean main-model CE over up to ``batches`` batches of
    ``loader`` (``None`` when the data has no validation split)."""

    eval_fn: Callable[[Any, dict[str, Any]], dict[str, Any]]
    loader: Any
    batches: int

    @property
    def available(self) -> bool:
        return self.loader is not None

    def __call__(self, params: Any) -> float | None:
        if self.loader is None:
            return None
        total, count = 0.0, 0.0
        for i, batch in enumerate(self.loader.iter_epoch(0)):
            if i >= self.batches:
                break
            out = self.eval_fn(params, {"tokens": jnp.asarray(batch["tokens"]),
                                        "segment_ids": jnp.asarray(batch["segment_ids"])})
            total += float(out["main_sum"])
            count += float(out["main_count"])
        return total / count if count else None


class CheckpointSaver:
    """Saves from the loop (one async save in flight; ``Checkpointer`` verifies it) with
    the validation loss at that step, which reaches the metrics once the save is verified."""

    def __init__(self, ckpt: Any, sink: Any, evaluation: Evaluation, loader: Any, *,
                 steps_per_epoch: int, seed: int, rng_key: list[int],
                 log: Callable[[str], Any]) -> None:
        self.ckpt, self.sink, self.evaluation, self.loader = ckpt, sink, evaluation, loader
        self.steps_per_epoch, self.seed, self.rng_key, self.log = (
            max(steps_per_epoch, 1), seed, rng_key, log)
        self._val: dict[int, float | None] = {}  # validation loss of saves in flight

    def poll(self) -> None:
        """Never waits; a failed background save raises ``CheckpointError`` here."""
        self._saved(self.ckpt.poll())

    def finish(self) -> None:
        """Waits for the save in flight, if any."""
        self._saved(self.ckpt.finish())

    def _saved(self, step: int | None) -> None:
        val = self._val.pop(step, None) if step is not None else None
        if val is not None:
            self.sink.val_loss(step, val)

    def save(self, step: int, state: Any, *, skipped: int) -> float | None:
        val = self.evaluation(state.params)
        meta = {"global_step": step, "epoch": step // self.steps_per_epoch,
                "data_epoch": self.loader.data_epoch, "loader": self.loader.get_state(),
                "seed": self.seed, "rng_key": self.rng_key, "skipped": skipped,
                "val_loss": val}
        self.finish()  # the previous save, if still running
        self.ckpt.save(step, state, meta)
        self._val[step] = val
        return val

    def save_unless_streak(self, step: int, state: Any, guard: NonFiniteGuard) -> None:
        """A checkpoint step or a stop: save, unless this step ends a non-finite streak
        (then the last good checkpoint stays the one to resume from)."""
        if guard.streak:
            self.log(f"step {step}: checkpoint deferred during a non-finite streak; the "
                     f"last good one (step {self.ckpt.latest_step()}) stays")
        else:
            self.save(step, state, skipped=guard.skipped)

    def close(self, *, failed: bool) -> None:
        """Finish a save still in flight (its manifest written) even after an error; a
        failed save then is logged rather than hiding the run's own error."""
        try:
            self.finish()
        except CheckpointError as e:
            if not failed:
                raise
            self.log(str(e))
        finally:
            self.ckpt.release()


class Preemption:
    """Remembers a SIGTERM or SIGINT (the handler only records it) so the loop saves a
    checkpoint and stops between steps; ``stop_after`` stops the same way at that step
    (the resume tests' preemption)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Preemption:
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
        self._previous.clear()

    def requested(self, step: int) -> bool:
        """Whether to stop after ``step`` (1-based steps done)."""
        return self.received is not None or (self.stop_after is not None
                                             and step >= self.stop_after)
