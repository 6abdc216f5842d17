"""The differential attention map in plain XLA: the definition of correctness.

``differential_map`` computes one block of queries against all the keys it may see;
``blocked_differential_map`` runs it over query blocks, each rematerialised, so the backward
pass never holds more than one block's score maps (the floor at 0 needs both normalised
maps, so a block sees every key).  The conformance tests hold it to a float64 reference.
It is a leaf: the dispatch (``model/attention.py``) and the live-prefix path
(``model/live_attention.py``) both build on it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

MASK_VALUE = -1e30


def attention_mask(q_slots_BT: jax.Array, k_slots_S: jax.Array, q_seg_BT: jax.Array | None,
                   k_seg_BS: jax.Array | None) -> jax.Array:
    """(B, T, S) boolean: causal on slot index, and same segment when segments are given."""
    mask = k_slots_S[None, None, :] <= q_slots_BT[:, :, None]
    if q_seg_BT is not None and k_seg_BS is not None:
        mask = mask & (q_seg_BT[:, :, None] == k_seg_BS[:, None, :])
    return mask


def differential_map(q_BTHD: jax.Array, k_BSKD: jax.Array, v_BSGE: jax.Array, lam: jax.Array,
                     mask_BTS: jax.Array, gqa_ratio: int) -> jax.Array:
    """The differential attention map for one block of queries.

    Returns (B, T, heads, 2*head_dim) in the value dtype.  Scores and softmax are fp32.
    """
    B, T, H2, D = q_BTHD.shape
    G = v_BSGE.shape[2]
    R = gqa_ratio
    q = q_BTHD.reshape(B, T, G, R, 2, D)  # sub-head 2i+j with i = g*R + r
    q1, q2 = q[..., 0, :], q[..., 1, :]
    k = k_BSKD.reshape(B, k_BSKD.shape[1], G, 2, D)
    k1, k2 = k[..., 0, :], k[..., 1, :]
    scale = 1.0 / math.sqrt(D)
    mask = mask_BTS[:, None, None, :, :]

    def probs(qx, kx):
        s = jnp.einsum("btgrd,bsgd->bgrts", qx, kx, preferred_element_type=jnp.float32)
        s = jnp.where(mask, s * scale, MASK_VALUE)
        return jax.nn.softmax(s, axis=-1)

    a = jnp.maximum(probs(q1, k1) - lam * probs(q2, k2), 0.0)
    out = jnp.einsum("bgrts,bsge->btgre", a.astype(v_BSGE.dtype), v_BSGE,
                     preferred_element_type=jnp.float32)
    return out.reshape(B, T, G * R, v_BSGE.shape[-1]).astype(v_BSGE.dtype)


def blocked_differential_map(q, k, v, lam, q_slots, k_slots, q_seg, k_seg, *, gqa_ratio: int,
                             block: int) -> jax.Array:
    """``differential_map`` over query blocks of ``block`` rows, each rematerialised."""
    B, T = q.shape[:2]
    if T <= block or T % block:
        return differential_map(q, k, v, lam, attention_mask(q_slots, k_slots, q_seg, k_seg),
                                gqa_ratio)
    n = T // block

    def split(x):
        return None if x is None else jnp.moveaxis(x.reshape(B, n, block, *x.shape[2:]), 1, 0)

    @jax.checkpoint
    def one(args):
        qb, slots_b, seg_b = args
        return differential_map(qb, k, v, lam, attention_mask(slots_b, k_slots, seg_b, k_seg),
                                gqa_ratio)

    out = jax.lax.map(one, (split(q), split(q_slots), split(q_seg)))
    return jnp.moveaxis(out, 0, 1).reshape(B, T, *out.shape[3:])
