"""TRAIN-04: AdamW with a weight-decay mask on matrices only, and global-norm clipping."""

from __future__ import annotations

from typing import Any

import jax
import optax

from pythoncoder.train.config import TrainConfig
from pythoncoder.train.schedule import wsd_schedule

DECAYED_LEAVES = ("kernel", "embedding")  # matrices
UNDECAYED_LEAVES = ("scale", "lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")  # norms, lambda


def leaf_name(path: tuple) -> str:
    """The parameter's own name in a pytree path: ``kernel`` for
    ``['blocks']['mlp']['up']['kernel'].value``.

    Flax NNX states flatten a ``Variable`` to its ``.value`` (an attribute key after the
    name), so the last key is not the name: attribute and sequence keys are skipped."""
    for key in reversed(path):
        if isinstance(key, jax.tree_util.GetAttrKey | jax.tree_util.SequenceKey):
            continue
        return str(getattr(key, "key", getattr(key, "name", key)))
    raise ValueError(f"no parameter name in path {jax.tree_util.keystr(path)!r}")


def decay_mask(params: Any) -> Any:
    """True for weight matrices (Linear kernels, the embedding); False for RMSNorm scales
    and the lambda vectors.  By name, because stacked layers make norms 2-D too.

    A parameter with any other name is an error, not a silent "no decay": a mask that
    matched nothing once left every run without weight decay."""

    def is_matrix(path, _leaf) -> bool:
        name = leaf_name(path)
        if name in DECAYED_LEAVES:
            return True
        if name in UNDECAYED_LEAVES:
            return False
        raise ValueError(f"decay_mask: parameter {jax.tree_util.keystr(path)!r} is named "
                         f"{name!r}, neither a matrix {DECAYED_LEAVES} nor a vector "
                         f"{UNDECAYED_LEAVES}; add it to one of them")

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
