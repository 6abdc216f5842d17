"""TRAIN-04: AdamW with a weight-decay mask on matrices only, and global-norm clipping."""

from __future__ import annotations

from typing import Any

import jax
import optax

from pythoncoder.train.config import TrainConfig
from pythoncoder.train.schedule import wsd_schedule

DECAYED_LEAVES = ("kernel", "embedding")  # matrices; norms' "scale" and lambda_* are not


def decay_mask(params: Any) -> Any:
    """True for weight matrices (Linear kernels, the embedding); False for RMSNorm scales
    and the lambda vectors.  By name, because stacked layers make norms 2-D too."""

    def is_matrix(path, _leaf) -> bool:
        last = path[-1]
        return str(getattr(last, "key", getattr(last, "name", last))) in DECAYED_LEAVES

    return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(cfg: TrainConfig, total_steps: int, warmup_steps: int | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = wsd_schedule(cfg.peak_lr, total_steps,
                            warmup_steps=cfg.warmup_steps if warmup_steps is None
                            else warmup_steps,
                            decay_fraction=cfg.decay_fraction, min_lr_ratio=cfg.min_lr_ratio)
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                    mask=decay_mask),
    )
    return tx, schedule
