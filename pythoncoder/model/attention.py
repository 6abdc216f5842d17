"""Differential attention with the flashdiff head layout under GQA 3:1.

Differential head ``i`` takes query sub-heads ``2i`` (Q1) and ``2i+1`` (Q2); in its KV
group ``g = i // 3`` it takes key sub-heads ``2g`` (K1) and ``2g+1`` (K2) and the
``2*head_dim``-wide value head ``g``:

    A   = max(softmax(Q1 K1^T / sqrt(d) + mask) - lambda * softmax(Q2 K2^T / sqrt(d) + mask), 0)
    out = subln(A V_g) * (1 - lambda_init)

``lambda`` is a function of four parameter vectors and the layer index only (DIFF-02):
it never sees activations, so it cannot leak across positions or batch rows.

The reference (``blocked_differential_map``) is blocked over queries: each block sees all
keys (the floor at 0 needs both normalised maps), and each block is rematerialised so the
backward pass never holds more than one block's score maps.  It is the definition of
correctness.  ``differential_attention`` is the one dispatch point between it and the fused
Pallas kernel (``pythoncoder.model.kernels.diff_attention``), chosen by
``ModelConfig.attention_impl``; the kernel covers self-attention (training, cache-less
prefill).  The KV-cache paths (decode, speculative verification) use the live-prefix XLA
path (``model/live_attention.py``), or the Pallas decode kernel
(``kernels/diff_decode.py``) when ``attention_impl`` is set to ``"pallas"``.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from pythoncoder.model.config import ModelConfig, lambda_init, target_platform
from pythoncoder.model.layers import RMSNorm, dense
from pythoncoder.model.rope import apply_rope

LAMBDA_DOT_CLIP = 10.0
# Cached calls with at most this many queries may take the Pallas decode kernel (its query
# tile holds a KV group's heads x the queries); longer ones (prefill) take the XLA path.
DECODE_KERNEL_MAX_QUERIES = 8
MASK_VALUE = -1e30


class KVCache(NamedTuple):
    """Every layer's cache, stacked on a leading layer axis.

    ``k``: (L, B, S, num_kv_subheads, head_dim); ``v``: (L, B, S, groups, 2*head_dim);
    ``segment_ids``: (L, B, S) int32, 0 for padding slots.  The same layout serves prefill
    and decode; each layer writes its new entries at the caller's ``cache_index`` offset
    into its own row, in place (the layer scan carries the whole stack), and reads only its
    live bucket, so a step's cost does not grow with the preallocated length ``S``.
    """

    k: jax.Array
    v: jax.Array
    segment_ids: jax.Array


def lambda_full(lq1: jax.Array, lk1: jax.Array, lq2: jax.Array, lk2: jax.Array,
                lam_init: jax.Array | float) -> jax.Array:
    """DIFF-02: clip(exp(clip(lq1.lk1)) - exp(clip(lq2.lk2)) + lambda_init, 0, 1), fp32."""
    f32 = jnp.float32
    d1 = jnp.clip(jnp.dot(lq1.astype(f32), lk1.astype(f32)), -LAMBDA_DOT_CLIP, LAMBDA_DOT_CLIP)
    d2 = jnp.clip(jnp.dot(lq2.astype(f32), lk2.astype(f32)), -LAMBDA_DOT_CLIP, LAMBDA_DOT_CLIP)
    return jnp.clip(jnp.exp(d1) - jnp.exp(d2) + lam_init, 0.0, 1.0)


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


def _reference_self_attention(q, k, v, lam, segment_ids_BT, *, gqa_ratio: int,
                              block: int) -> jax.Array:
    B, T = q.shape[:2]
    slots = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    return blocked_differential_map(q, k, v, lam, slots, jnp.arange(T, dtype=jnp.int32),
                                    segment_ids_BT, segment_ids_BT, gqa_ratio=gqa_ratio,
                                    block=block)


def _pallas_self_attention(q, k, v, lam, segment_ids_BT, *, gqa_ratio: int,
                           block: int) -> jax.Array:
    from pythoncoder.model.kernels.diff_attention import diff_attention

    del block  # the kernel tiles with its own block sizes
    return diff_attention(q, k, v, lam, segment_ids_BT, gqa_ratio=gqa_ratio)


# Registered self-attention implementations, all with one signature
# (q, k, v, lam, segment_ids_BT, *, gqa_ratio, block) -> (B, T, heads, 2*head_dim).
# The DIFF conformance tests run over every entry.
ATTENTION_KERNELS = {
    "reference": _reference_self_attention,
    "pallas": _pallas_self_attention,
}


def _kernel_or_reference(cfg: ModelConfig, dtype) -> str:
    """``pallas`` where the training kernel can be sized for the target GPU; otherwise
    ``auto`` takes the reference with a one-line warning and an explicit ``pallas`` raises
    ``KernelDoesNotFit`` (at trace time, so before any step runs)."""
    from pythoncoder.model.kernels.diff_attention import KernelDoesNotFit, kernel_fits

    reason = kernel_fits(cfg.head_dim, cfg.value_head_dim, jnp.dtype(dtype).itemsize)
    if reason is None:
        return "pallas"
    if cfg.attention_impl == "pallas":
        raise KernelDoesNotFit(f"attention_impl='pallas' cannot run here: {reason}")
    warnings.warn(f"attention_impl='auto': {reason}; using the reference attention",
                  stacklevel=3)
    return "reference"


def differential_attention(q, k, v, lam, q_slots, k_slots, q_seg, k_seg, *, cfg: ModelConfig,
                           self_attention: bool, live_len: jax.Array | int | None = None,
                           layer: jax.Array | int | None = None) -> jax.Array:
    """The one dispatch point: the fused kernel or the reference, per ``cfg.attention_impl``.

    ``self_attention`` (no KV cache: query ``t`` at slot ``t``, keys = queries) is the path
    the training kernel covers.  With a cache (``live_len`` = slots filled so far) and at
    most ``DECODE_KERNEL_MAX_QUERIES`` queries (decode, speculative verification),
    ``attention_impl="pallas"`` set explicitly takes the decode kernel (not on TPU); every
    other cached call (``auto``, the reference, prefill) takes the live-prefix XLA path,
    which reads only the cache blocks below ``live_len``.  With ``layer``, ``k``/``v``/
    ``k_seg`` are every layer's stacked cache and layer ``layer``'s live bucket is read."""
    impl = cfg.resolved_attention_impl()
    if self_attention and impl == "pallas":
        impl = _kernel_or_reference(cfg, q.dtype)
    if self_attention and impl != "reference":
        return ATTENTION_KERNELS[impl](q, k, v, lam, q_seg, gqa_ratio=cfg.gqa_ratio,
                                       block=cfg.attn_block_size)
    if live_len is not None:
        from pythoncoder.model.live_attention import live_differential_map

        kernel = None
        if (cfg.attention_impl == "pallas" and q.shape[1] <= DECODE_KERNEL_MAX_QUERIES
                and target_platform() != "tpu"):
            from pythoncoder.model.kernels.diff_decode import decode_diff_attention

            def kernel(q, k, v, lam, q_slots, k_seg, q_seg, live):
                return decode_diff_attention(q, k, v, lam, q_slots, k_seg, q_seg, live,
                                             gqa_ratio=cfg.gqa_ratio)

        return live_differential_map(q, k, v, lam, q_slots, k_seg, q_seg, live_len,
                                     gqa_ratio=cfg.gqa_ratio, block=cfg.attn_block_size,
                                     layer=layer, kernel=kernel)
    return blocked_differential_map(q, k, v, lam, q_slots, k_slots, q_seg, k_seg,
                                    gqa_ratio=cfg.gqa_ratio, block=cfg.attn_block_size)


class DiffAttention(nnx.Module):
    """Multi-head differential attention (DIFF-02..04) with GQA and a KV cache."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs) -> None:
        self.cfg = cfg
        dt, std = cfg.dtype(), cfg.init_std
        self.q_proj = dense(cfg.hidden_size, cfg.q_width, dtype=dt, std=std, rngs=rngs)
        self.k_proj = dense(cfg.hidden_size, cfg.kv_width, dtype=dt, std=std, rngs=rngs)
        self.v_proj = dense(cfg.hidden_size, cfg.kv_width, dtype=dt, std=std, rngs=rngs)
        self.o_proj = dense(cfg.num_diff_heads * cfg.value_head_dim, cfg.hidden_size,
                            dtype=dt, std=std, rngs=rngs)
        init = nnx.initializers.normal(cfg.lambda_init_std)
        for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            setattr(self, name, nnx.Param(init(rngs.params(), (cfg.head_dim,), jnp.float32)))
        self.subln = RMSNorm(cfg.value_head_dim, eps=cfg.subln_eps)

    def lam(self, layer_index: jax.Array | int) -> jax.Array:
        return lambda_full(self.lambda_q1[...], self.lambda_k1[...], self.lambda_q2[...],
                           self.lambda_k2[...], lambda_init(layer_index))

    def __call__(self, x_BTD: jax.Array, cos: jax.Array, sin: jax.Array, q_slots_BT: jax.Array,
                 segment_ids_BT: jax.Array | None, layer_index: jax.Array | int,
                 cache: KVCache | None = None, cache_index: jax.Array | int | None = None,
                 ) -> tuple[jax.Array, KVCache | None]:
        cfg = self.cfg
        B, T, _ = x_BTD.shape
        q = self.q_proj(x_BTD).reshape(B, T, cfg.num_q_subheads, cfg.head_dim)
        k = self.k_proj(x_BTD).reshape(B, T, cfg.num_kv_subheads, cfg.head_dim)
        v = self.v_proj(x_BTD).reshape(B, T, cfg.num_kv_groups, cfg.value_head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            k_all, v_all, k_seg = k, v, segment_ids_BT
            k_slots = jnp.arange(T, dtype=jnp.int32)
        else:
            seg = (jnp.ones((B, T), jnp.int32) if segment_ids_BT is None
                   else segment_ids_BT.astype(jnp.int32))
            idx = jnp.asarray(cache_index, jnp.int32)
            layer = jnp.asarray(layer_index, jnp.int32)
            zero = jnp.zeros((), jnp.int32)
            # ``cache`` holds every layer (L, B, S, ...): write this layer's T new slots in
            # place; attention reads this layer's live bucket from it (live_attention.py).
            cache = KVCache(
                jax.lax.dynamic_update_slice(cache.k, k[None].astype(cache.k.dtype),
                                             (layer, zero, idx, zero, zero)),
                jax.lax.dynamic_update_slice(cache.v, v[None].astype(cache.v.dtype),
                                             (layer, zero, idx, zero, zero)),
                jax.lax.dynamic_update_slice(cache.segment_ids, seg[None], (layer, zero, idx)),
            )
            k_all, v_all, k_seg = cache.k, cache.v, cache.segment_ids
            k_slots = None
            if segment_ids_BT is None:
                segment_ids_BT = seg
        lam = self.lam(layer_index)
        out = differential_attention(q, k_all, v_all, lam, q_slots_BT, k_slots, segment_ids_BT,
                                     k_seg, cfg=cfg, self_attention=cache is None,
                                     live_len=None if cache is None else idx + T,
                                     layer=None if cache is None else layer)
        out = self.subln(out) * (1.0 - lambda_init(layer_index))
        out = out.astype(x_BTD.dtype).reshape(B, T, cfg.num_diff_heads * cfg.value_head_dim)
        return self.o_proj(out), cache
