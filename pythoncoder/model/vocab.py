"""A vocabulary subset: the model keeps rows for the K-1 ids a corpus uses most.

The tiny CPU demo spends over 90% of its FLOPs in the 151,808-wide output head (main and
MTP logits). With ``ModelConfig.vocab_subset`` set to ``K - 1`` sorted tokenizer ids, the
embedding and the head have K rows: row ``r >= 1`` is ``vocab_subset[r - 1]`` and row 0,
"other", stands for every id outside the subset.  Everything outside the model keeps the
tokenizer's ids: ``to_rows`` maps ids to rows on the way in, and ``full_vocab_logits``
expands the K logits to a distribution over the whole vocabulary on the way out, the
"other" probability spread evenly over the ``vocab_size - (K - 1)`` ids it stands for:

    log p(id) = logit[row(id)] - lse                       id in the subset
    log p(id) = logit[0] - log(vocab_size - K + 1) - lse   any other id

That is a proper distribution over the full vocabulary, so the training loss (which adds
the same ``log(vocab_size - K + 1)`` for "other" targets, a constant that leaves the
gradient alone) is the full-vocabulary cross-entropy and compares with a full model's.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from pythoncoder.model.config import ModelConfig


def other_log_share(cfg: ModelConfig) -> float:
    """log of the number of ids the "other" row stands for (0 without a subset)."""
    return math.log(cfg.vocab_size - len(cfg.vocab_subset)) if cfg.vocab_subset else 0.0


def to_rows(cfg: ModelConfig, ids: jax.Array) -> jax.Array:
    """Tokenizer ids -> model rows (identity without a subset; 0 for ids outside it)."""
    if not cfg.vocab_subset:
        return ids
    subset = jnp.asarray(cfg.vocab_subset, jnp.int32)
    ids = ids.astype(jnp.int32)
    pos = jnp.searchsorted(subset, ids)
    hit = subset[jnp.minimum(pos, subset.shape[0] - 1)] == ids
    return jnp.where(hit, pos + 1, 0).astype(jnp.int32)


def full_vocab_logits(cfg: ModelConfig, logits_K: jax.Array) -> jax.Array:
    """Model-row logits ``[..., K]`` -> logits over the full vocabulary ``[..., vocab]``.

    Their log-sum-exp equals the rows' (the "other" share is split, not added to)."""
    if not cfg.vocab_subset:
        return logits_K
    other = logits_K[..., :1] - other_log_share(cfg)
    full = jnp.broadcast_to(other, (*logits_K.shape[:-1], cfg.vocab_size))
    subset = jnp.asarray(cfg.vocab_subset, jnp.int32)
    return full.at[..., subset].set(logits_K[..., 1:])


def row_ids(cfg: ModelConfig) -> np.ndarray:
    """The tokenizer id each model row stands for, int32 ``[K]``: row ``r >= 1`` is
    ``vocab_subset[r - 1]``, row 0 the smallest id outside the subset (the one a
    full-vocabulary argmax picks among the "other" ids, which share one logit)."""
    if not cfg.vocab_subset:
        return np.arange(cfg.vocab_size, dtype=np.int32)
    subset = np.asarray(cfg.vocab_subset, np.int64)
    gaps = np.nonzero(subset != np.arange(len(subset)))[0]
    first_other = int(gaps[0]) if len(gaps) else len(subset)
    return np.concatenate([[first_other], subset]).astype(np.int32)


def greedy_ids(cfg: ModelConfig, logits_K: jax.Array, num_real: int) -> jax.Array:
    """``argmax`` over ids ``< num_real`` of ``full_vocab_logits(cfg, logits_K)``, int32,
    computed over the K rows instead of the full vocabulary.

    Equal to the full-vocabulary argmax, ties included (both take the smallest id of
    the maximum; the "other" ids share one value, so the smallest of them is the
    candidate).  Without a subset it is a plain argmax.
    """
    x = logits_K.astype(jnp.float32)
    if not cfg.vocab_subset:
        x = jnp.where(jnp.arange(x.shape[-1]) < num_real, x, -jnp.inf)
        return jnp.argmax(x, axis=-1).astype(jnp.int32)
    ids = jnp.asarray(row_ids(cfg))
    x = x.at[..., 0].add(-other_log_share(cfg))
    x = jnp.where(ids < num_real, x, -jnp.inf)
    best = jnp.max(x, axis=-1, keepdims=True)
    big = jnp.iinfo(jnp.int32).max
    chosen = jnp.min(jnp.where(x == best, ids, big), axis=-1)
    # a NaN maximum matches nothing: fall back to the row argmax picks (as argmax would)
    return jnp.where(chosen == big, ids[jnp.argmax(x, axis=-1)], chosen).astype(jnp.int32)
