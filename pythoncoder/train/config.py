"""Training configuration (the design doc's defaults) and the run plan (TRAIN-02, TRAIN-09)."""

from __future__ import annotations

import dataclasses
from typing import Any


class TrainConfigError(ValueError):
    """A training configuration is invalid; the message names the field."""


@dataclasses.dataclass(frozen=True, slots=True)
class TrainConfig:
    """Optimiser, batch and checkpoint settings. Defaults are the ``1b`` design values."""

    seq_len: int = 2048
    micro_batch: int = 8
    accum_steps: int = 8
    epochs: int = 4
    peak_lr: float = 3e-4
    warmup_steps: int = 2000
    decay_fraction: float = 0.1
    min_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    weight_decay: float = 0.1
    clip_norm: float = 1.0
    steps_per_checkpoint: int = 5000  # "steps_per_epoch" of the design doc (TRAIN-05)
    keep_checkpoints: int = 3
    max_consecutive_nonfinite: int = 5
    seed: int = 0
    log_every: int = 1
    eval_batches: int = 8

    def __post_init__(self) -> None:
        def need(cond: bool, field: str, why: str) -> None:
            if not cond:
                raise TrainConfigError(f"TrainConfig.{field}={getattr(self, field)!r}: {why}")

        for f in ("seq_len", "micro_batch", "accum_steps", "epochs", "steps_per_checkpoint",
                  "keep_checkpoints", "max_consecutive_nonfinite", "log_every"):
            need(getattr(self, f) >= 1, f, "must be >= 1")
        need(self.peak_lr > 0, "peak_lr", "must be > 0")
        need(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        need(0 <= self.decay_fraction <= 1, "decay_fraction", "must be in [0, 1]")
        need(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
        need(0 <= self.b1 < 1 and 0 <= self.b2 < 1, "b1", "Adam betas must be in [0, 1)")
        need(self.clip_norm > 0, "clip_norm", "must be > 0")

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.micro_batch * self.accum_steps

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True, slots=True)
class RunPlan:
    """How many optimizer steps a run takes, and where its LR decay begins."""

    tokens_per_epoch: int
    tokens_per_step: int
    steps_per_epoch: int
    epochs: int
    total_steps: int
    warmup_steps: int
    decay_start: int

    def describe(self) -> str:
        return (
            f"run plan: {self.tokens_per_epoch:,} tokens/epoch x {self.epochs} epochs; "
            f"{self.tokens_per_step:,} tokens/step; {self.steps_per_epoch:,} steps/epoch "
            f"(partial last batch dropped); {self.total_steps:,} total steps; warmup "
            f"{self.warmup_steps:,}; decay from step {self.decay_start:,}"
        )


def plan_run(tokens_per_epoch: int, cfg: TrainConfig, *, total_steps: int | None = None
             ) -> RunPlan:
    """TRAIN-09: steps from tokens (partial last batch dropped) x epochs, or a step override.

    The schedule's ``total`` is this plan's ``total_steps``, so the decay is always reached.
    """
    steps_per_epoch = tokens_per_epoch // cfg.tokens_per_step
    if steps_per_epoch < 1 and total_steps is None:
        raise TrainConfigError(
            f"the data has {tokens_per_epoch:,} tokens per epoch, fewer than one optimizer "
            f"step ({cfg.tokens_per_step:,} tokens); lower micro_batch/accum_steps/seq_len")
    total = steps_per_epoch * cfg.epochs if total_steps is None else total_steps
    if total < 1:
        raise TrainConfigError(f"total_steps={total}: must be >= 1")
    decay_start = total - int(round(cfg.decay_fraction * total))
    # A short run (demo, tests) whose warmup would not end before the decay starts warms
    # up over 10% of its steps instead; the plan printout shows it.
    warmup = cfg.warmup_steps if cfg.warmup_steps <= decay_start else max(total // 10, 1)
    return RunPlan(tokens_per_epoch, cfg.tokens_per_step, steps_per_epoch, cfg.epochs, total,
                   warmup, decay_start)
