"""Memory-lean language-model loss: chunked cross-entropy over the 151,808-wide vocab.

Logits are never materialised for the whole batch: tokens are processed in chunks of
``cfg.loss_chunk_size``; the forward keeps one chunk of fp32 logits at a time and only
each row's log-sum-exp and target logit for the backward, which recomputes the chunk's
logits (a custom VJP).  Loss = CE_main + mtp_weight * CE_mtp (MTP-01).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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


def _chunk_logits(x, w):
    return jnp.dot(x, w, preferred_element_type=jnp.float32)


def _onehot(y, V):
    return jax.lax.broadcasted_iota(jnp.int32, (y.shape[0], V), 1) == y[:, None]


@jax.custom_vjp
def _chunked_ce(xs, w, ys, wts):
    return _chunked_ce_fwd(xs, w, ys, wts)[0]


def _chunked_ce_fwd(xs, w, ys, wts):
    """Per chunk: fp32 logits, their log-sum-exp and the target's logit.  Only the
    log-sum-exp and the target logit (one float per row each) are kept for the backward."""
    wc = w.astype(xs.dtype)  # once, not per chunk

    def one(total, c):
        x, y, wt = c
        logits = _chunk_logits(x, wc)
        lse = jax.nn.logsumexp(logits, axis=-1)
        target = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]  # a gather
        return total + jnp.sum((lse - target) * wt), (lse, target)

    total, (lse, target) = jax.lax.scan(one, jnp.zeros((), jnp.float32), (xs, ys, wts))
    return total, (xs, w, ys, wts, lse, target)


def _chunked_ce_bwd(res, g):
    """Per chunk, recompute the logits and form d(logits) = (softmax - onehot) * weight in
    one pass, in the compute dtype; d(x) and d(w) are two matmuls of it (d(w) accumulated
    over chunks in fp32).  No logit-sized gradient of the gather, no second softmax."""
    xs, w, ys, wts, lse, target = res
    wc = w.astype(xs.dtype)

    def one(dw, c):
        x, y, wt, lse_c = c
        logits = _chunk_logits(x, wc)
        p = jnp.exp(logits - lse_c[:, None])
        d = ((p - _onehot(y, logits.shape[1])) * (wt * g)[:, None]).astype(x.dtype)
        dx = jnp.dot(d, wc.T, preferred_element_type=jnp.float32).astype(x.dtype)
        return dw + jnp.dot(x.T, d, preferred_element_type=jnp.float32), dx

    dw, dxs = jax.lax.scan(one, jnp.zeros(w.shape, jnp.float32), (xs, ys, wts, lse))
    return (dxs, dw.astype(w.dtype), np.zeros(ys.shape, jax.dtypes.float0),
            (lse - target) * g)


_chunked_ce.defvjp(_chunked_ce_fwd, _chunked_ce_bwd)


def chunked_cross_entropy(x_ND: jax.Array, w_DV: jax.Array, labels_N: jax.Array,
                          weights_N: jax.Array, chunk: int) -> jax.Array:
    """sum_n weights[n] * CE(x[n] @ w, labels[n]) with fp32 logits, ``chunk`` rows at a time.

    The ``ceil(n / chunk)`` chunks are made equal (rounded up to 8 rows) rather than padding
    the last one to ``chunk``: 256 rows with ``chunk = 1024`` cost 256 rows of logits, not
    1024 (a 4x saving the tiny demo's small batches need).  A custom VJP: the backward
    recomputes each chunk's logits and writes their gradient once, in the compute dtype
    (HBM traffic of the 1b step's two heads: issue 25)."""
    n = x_ND.shape[0]
    k = -(-n // chunk)
    rows = -(-n // k)  # ceil(n / k) rows per chunk, rounded up to 8
    chunk = min(chunk, -(-rows // 8) * 8)
    pad = k * chunk - n
    if pad:
        x_ND = jnp.pad(x_ND, ((0, pad), (0, 0)))
        labels_N = jnp.pad(labels_N, (0, pad))
        weights_N = jnp.pad(weights_N, (0, pad))
    return _chunked_ce(x_ND.reshape(k, chunk, -1), w_DV,
                       labels_N.astype(jnp.int32).reshape(k, chunk),
                       weights_N.astype(jnp.float32).reshape(k, chunk))


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
