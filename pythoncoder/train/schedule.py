"""TRAIN-01: the warmup-stable-decay (WSD) schedule, built from optax schedules."""

from __future__ import annotations

import optax


def wsd_schedule(peak_lr: float, total_steps: int, *, warmup_steps: int = 2000,
                 decay_fraction: float = 0.1, min_lr_ratio: float = 0.1) -> optax.Schedule:
    """Linear 0 -> peak over ``warmup_steps``; constant peak until ``(1-decay_fraction)``
    of ``total_steps``; cosine decay to ``min_lr_ratio * peak`` at ``total_steps``."""
    decay_start = total_steps - int(round(decay_fraction * total_steps))
    if not 0 <= warmup_steps <= decay_start <= total_steps:
        raise ValueError(f"need 0 <= warmup ({warmup_steps}) <= decay start ({decay_start}) "
                         f"<= total ({total_steps})")
    warmup = optax.linear_schedule(0.0, peak_lr, max(warmup_steps, 1))
    stable = optax.constant_schedule(peak_lr)
    decay = optax.cosine_decay_schedule(peak_lr, max(total_steps - decay_start, 1),
                                        alpha=min_lr_ratio)
    return optax.join_schedules([warmup, stable, decay], [warmup_steps, decay_start])
