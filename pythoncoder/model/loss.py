"""Memory-lean language-model loss: chunked cross-entropy over the 151,808-wide vocab.

Logits are never materialised for the whole batch.  The forward keeps each row's
log-sum-exp and target logit only: on TPU from the fused Pallas kernel ``ce_stats`` (the
head matmul with an online log-sum-exp; no logits in HBM), elsewhere one chunk of
``cfg.loss_chunk_size`` rows of fp32 logits at a time.  The backward (a custom VJP)
recomputes the logits one block of the vocabulary at a time over every row, writes each
block's gradient of the head once and accumulates the rows' gradient in fp32.
Loss = CE_main + mtp_weight * CE_mtp (MTP-01).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pythoncoder.model.config import target_platform
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _chunked_ce(xs, w, ys, wts, stats):
    return _chunked_ce_fwd(xs, w, ys, wts, stats)[0]


def _chunked_ce_fwd(xs, w, ys, wts, stats):
    """Each row's log-sum-exp and target logit, the only residuals the backward keeps
    (one float per row each).  ``stats="pallas"``: the fused kernel (``ce_stats``), which
    never writes the logits; ``"xla"``: per chunk, fp32 logits, then their log-sum-exp and
    the target's logit."""
    k, chunk, D = xs.shape
    if stats == "pallas":
        from pythoncoder.model.kernels.ce_stats import ce_stats

        lse, target = ce_stats(xs.reshape(k * chunk, D), w.astype(xs.dtype),
                               ys.reshape(k * chunk), interpret=target_platform() == "cpu")
        lse, target = lse.reshape(k, chunk), target.reshape(k, chunk)
        return jnp.sum((lse - target) * wts), (xs, w, ys, wts, lse, target)
    wc = w.astype(xs.dtype)  # once, not per chunk

    def one(total, c):
        x, y, wt = c
        logits = _chunk_logits(x, wc)
        lse = jax.nn.logsumexp(logits, axis=-1)
        target = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
        return total + jnp.sum((lse - target) * wt), (lse, target)

    total, (lse, target) = jax.lax.scan(one, jnp.zeros((), jnp.float32), (xs, ys, wts))
    return total, (xs, w, ys, wts, lse, target)


def _chunked_ce_bwd(stats, res, g):
    """Over the vocabulary in blocks, every row at once: per block, recompute its logits
    and form d(logits) = (softmax - onehot) * weight in one pass, in the compute dtype; the
    block's d(w) is one matmul over all rows, written once into its columns, and d(x)
    accumulates over the blocks in fp32.  Blocking the rows instead (the forward's chunks)
    would add every chunk's d(w) into an fp32 vocab-wide accumulator, reading and writing
    it once per chunk (2 x 0.93 GB per 2048-row chunk of the 1b model); a block of the
    vocabulary holds as many logits as a chunk of rows.  No logit-sized gradient of a
    gather, no second softmax."""
    xs, w, ys, wts, lse, target = res
    k, chunk, D = xs.shape
    V = w.shape[1]
    n = k * chunk
    x, y = xs.reshape(n, D), ys.reshape(n)
    scale, lse_n = (wts * g).reshape(n), lse.reshape(n)
    # As many logits per block as a chunk of rows holds; half that on the XLA path (GPU,
    # CPU), whose forward keeps a chunk of logits too: with the larger blocks XLA fit an
    # L4's 24 GB by recomputing MLP matmuls (+10 TFLOP per 1b step); on TPU the kernel
    # forward holds none, and the larger blocks move 41 GB less per v6e step.
    per_block = -(-V // (k if stats == "pallas" else 2 * k))
    vb = min(-(-per_block // 128) * 128, V) if k > 1 else V  # lane-aligned blocks
    nb = -(-V // vb)
    wc = w.astype(xs.dtype)

    def block(carry, j):
        dx, dw = carry
        # the last block ends at the vocabulary's end, overlapping the one before it (no
        # padded copy of the head); a column belongs to the first block that holds it
        start = jnp.minimum(j * vb, V - vb)
        # one block (a single chunk): the whole head, so the compiler can reuse the
        # forward's logits instead of recomputing them
        wj = wc if nb == 1 else jax.lax.dynamic_slice_in_dim(wc, start, vb, axis=1)
        logits = _chunk_logits(x, wj)
        cols = start + jax.lax.broadcasted_iota(jnp.int32, (1, vb), 1)
        mine = cols >= j * vb
        p = jnp.exp(logits - lse_n[:, None])
        d = jnp.where(mine, (p - (cols == y[:, None])) * scale[:, None], 0.0).astype(x.dtype)
        dx = dx + jnp.dot(d, wj.T, preferred_element_type=jnp.float32)
        dwj = jnp.dot(x.T, d, preferred_element_type=jnp.float32)
        if nb > 1:  # keep the columns an earlier block wrote
            dwj = jnp.where(mine, dwj, jax.lax.dynamic_slice_in_dim(dw, start, vb, axis=1))
        return (dx, jax.lax.dynamic_update_slice_in_dim(dw, dwj, start, axis=1)), None

    init = (jnp.zeros((n, D), jnp.float32), jnp.zeros((D, V), jnp.float32))
    if nb == 1:
        (dx, dw), _ = block(init, 0)
    else:
        (dx, dw), _ = jax.lax.scan(block, init, jnp.arange(nb))
    return (dx.astype(xs.dtype).reshape(k, chunk, D), dw.astype(w.dtype),
            np.zeros(ys.shape, jax.dtypes.float0), (lse - target) * g)


_chunked_ce.defvjp(_chunked_ce_fwd, _chunked_ce_bwd)


def chunked_cross_entropy(x_ND: jax.Array, w_DV: jax.Array, labels_N: jax.Array,
                          weights_N: jax.Array, chunk: int, stats: str = "auto") -> jax.Array:
    """sum_n weights[n] * CE(x[n] @ w, labels[n]) with fp32 logits, ``chunk`` rows at a time.

    The ``ceil(n / chunk)`` chunks are made equal (rounded up to 8 rows) rather than padding
    the last one to ``chunk``: 256 rows with ``chunk = 1024`` cost 256 rows of logits, not
    1024 (a 4x saving the tiny demo's small batches need); the backward's vocabulary
    blocks hold as many logits as a chunk.  ``stats`` picks how the forward forms each
    row's log-sum-exp and target logit: ``"pallas"`` (the fused kernel, interpreted on
    CPU), ``"xla"`` (a chunk of logits at a time), ``"auto"`` (the kernel on TPU).  HBM
    traffic of the 1b step's two heads: issues 25 and 34, ``docs/step-bytes.md``."""
    n = x_ND.shape[0]
    k = -(-n // chunk)
    rows = -(-n // k)  # ceil(n / k) rows per chunk, rounded up to 8
    chunk = min(chunk, -(-rows // 8) * 8)
    pad = k * chunk - n
    if pad:
        x_ND = jnp.pad(x_ND, ((0, pad), (0, 0)))
        labels_N = jnp.pad(labels_N, (0, pad))
        weights_N = jnp.pad(weights_N, (0, pad))
    if stats == "auto":  # the fused kernel where it runs natively: TPU (ce_stats' doc)
        from pythoncoder.model.kernels import registry

        stats = registry.auto_choice("loss", target_platform()) or "xla"
    if stats not in ("pallas", "xla"):
        raise ValueError(f"stats must be 'auto', 'pallas' or 'xla', not {stats!r}")
    return _chunked_ce(x_ND.reshape(k, chunk, -1), w_DV,
                       labels_N.astype(jnp.int32).reshape(k, chunk),
                       weights_N.astype(jnp.float32).reshape(k, chunk), stats)


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
