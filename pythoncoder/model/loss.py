"""Memory-lean language-model loss: chunked cross-entropy over the 151,808-wide vocab.

Logits are never materialised for the whole batch: tokens are processed in chunks of
``cfg.loss_chunk_size`` under ``jax.checkpoint``, so the forward keeps one chunk of fp32
logits and the backward recomputes it.  Loss = CE_main + mtp_weight * CE_mtp (MTP-01).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from pythoncoder.model.transformer import PythonCoder
from pythoncoder.model.vocab import other_log_share, to_rows


class LossParts(NamedTuple):
    """Token-summed losses and their token counts; ``total`` is the optimised scalar."""

    total: jax.Array
    main_sum: jax.Array
    main_count: jax.Array
    mtp_sum: jax.Array
    mtp_count: jax.Array

    @property
    def main(self) -> jax.Array:
        return self.main_sum / jnp.maximum(self.main_count, 1.0)

    @property
    def mtp(self) -> jax.Array:
        return self.mtp_sum / jnp.maximum(self.mtp_count, 1.0)


def chunked_cross_entropy(x_ND: jax.Array, w_DV: jax.Array, labels_N: jax.Array,
                          weights_N: jax.Array, chunk: int) -> jax.Array:
    """sum_n weights[n] * CE(x[n] @ w, labels[n]) with fp32 logits, ``chunk`` rows at a time.

    The ``ceil(n / chunk)`` chunks are made equal (rounded up to 8 rows) rather than padding
    the last one to ``chunk``: 256 rows with ``chunk = 1024`` cost 256 rows of logits, not
    1024 (a 4x saving the tiny demo's small batches need)."""
    n = x_ND.shape[0]
    k = -(-n // chunk)
    rows = -(-n // k)  # ceil(n / k) rows per chunk, rounded up to 8
    chunk = min(chunk, -(-rows // 8) * 8)
    pad = k * chunk - n
    if pad:
        x_ND = jnp.pad(x_ND, ((0, pad), (0, 0)))
        labels_N = jnp.pad(labels_N, (0, pad))
        weights_N = jnp.pad(weights_N, (0, pad))
    xs = (x_ND.reshape(k, chunk, -1), labels_N.reshape(k, chunk), weights_N.reshape(k, chunk))

    @jax.checkpoint
    def one(total, xs_c):
        x, y, wt = xs_c
        logits = jnp.dot(x, w_DV.astype(x.dtype), preferred_element_type=jnp.float32)
        lse = jax.nn.logsumexp(logits, axis=-1)
        target = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
        return total + jnp.sum((lse - target) * wt), None

    total, _ = jax.lax.scan(one, jnp.zeros((), jnp.float32), xs)
    return total


def lm_loss(model: PythonCoder, inputs_BT: jax.Array, labels_BT: jax.Array, *,
            segment_ids_BT: jax.Array | None = None, loss_mask_BT: jax.Array | None = None,
            deterministic: bool = True, dropout_key: jax.Array | None = None,
            mtp_weight: float | None = None) -> LossParts:
    """Main next-token CE plus weighted MTP (t+2) CE, each a token mean.

    ``labels[t] = inputs[t+1]``.  The MTP module at position t sees ``h_t`` and the
    embedding of ``labels[t]`` and predicts ``labels[t+1]``; the last position has no MTP
    target.  EOS is an ordinary target (DATA-01).
    """
    cfg = model.cfg
    mtp_weight = cfg.mtp_weight if mtp_weight is None else mtp_weight
    B, T = inputs_BT.shape
    mask = jnp.ones((B, T), jnp.float32) if loss_mask_BT is None else loss_mask_BT.astype(
        jnp.float32)
    h, _ = model.hidden_states(inputs_BT, segment_ids_BT=segment_ids_BT,
                               deterministic=deterministic, dropout_key=dropout_key)
    w = model.lm_head.kernel[...]
    chunk = cfg.loss_chunk_size
    rows_BT = to_rows(cfg, labels_BT)  # head rows; the tokenizer ids without a subset
    share = other_log_share(cfg)
    hn = model.final_norm(h).reshape(B * T, -1)
    main_sum = chunked_cross_entropy(hn, w, rows_BT.reshape(-1), mask.reshape(-1), chunk)
    main_count = jnp.sum(mask)

    mtp_rows = jnp.concatenate([rows_BT[:, 1:], jnp.zeros((B, 1), rows_BT.dtype)], axis=1)
    mtp_mask = jnp.concatenate([mask[:, 1:] * mask[:, :-1], jnp.zeros((B, 1), jnp.float32)],
                               axis=1)
    hm = model.mtp_hidden(h, labels_BT).reshape(B * T, -1)
    mtp_sum = chunked_cross_entropy(hm, w, mtp_rows.reshape(-1), mtp_mask.reshape(-1), chunk)
    mtp_count = jnp.sum(mtp_mask)
    if cfg.vocab_subset:  # "other" targets: the even split over the ids it stands for
        other = (rows_BT == 0).astype(jnp.float32)
        main_sum = main_sum + share * jnp.sum(mask * other)
        mtp_sum = mtp_sum + share * jnp.sum(mtp_mask * jnp.concatenate(
            [other[:, 1:], jnp.zeros((B, 1), jnp.float32)], axis=1))
    total = main_sum / jnp.maximum(main_count, 1.0) + mtp_weight * mtp_sum / jnp.maximum(
        mtp_count, 1.0)
    return LossParts(total, main_sum, main_count, mtp_sum, mtp_count)
