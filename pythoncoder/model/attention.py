"""Differential attention with the flashdiff head layout under GQA 3:1.

Differential head ``i`` takes query sub-heads ``2i`` (Q1) and ``2i+1`` (Q2); in its KV
group ``g = i // 3`` it takes key sub-heads ``2g`` (K1) and ``2g+1`` (K2) and the
``2*head_dim``-wide value head ``g``:

    A   = max(softmax(Q1 K1^T / sqrt(d) + mask) - lambda * softmax(Q2 K2^T / sqrt(d) + mask), 0)
    out = subln(A V_g) * (1 - lambda_init)

``lambda`` is a function of four parameter vectors and the layer index only (DIFF-02):
it never sees activations, so it cannot leak across positions or batch rows.

The reference (``blocked_differential_map``, in ``model/reference_attention.py``) is the
definition of correctness.  ``ATTENTION_REGISTRY`` names each implementation (the reference,
the Pallas kernels: ``kernels/diff_attention.py`` for self-attention, ``kernels/
diff_decode.py`` for decode and verification) by the calls it serves, and
``differential_attention`` is the one dispatch point, chosen by
``ModelConfig.attention_impl``, the platform and the call's shape: self-attention (training,
cache-less prefill), or a cached call (decode, speculative verification, prefill), which
takes the named implementation's decode kernel where it has one and else the live-prefix
XLA path (``model/live_attention.py``).  A new kernel is one registry entry (and its name
in ``config.ATTENTION_IMPLS``, which a unit test holds equal).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from pythoncoder.model.config import ModelConfig, lambda_init, target_platform
from pythoncoder.model.kernels import diff_decode
from pythoncoder.model.kernels.diff_attention import KernelDoesNotFit, diff_attention, kernel_fits
from pythoncoder.model.layers import RMSNorm, dense
from pythoncoder.model.live_attention import live_differential_map
from pythoncoder.model.reference_attention import (  # noqa: F401 -- re-exported
    MASK_VALUE,
    attention_mask,
    blocked_differential_map,
    differential_map,
)
from pythoncoder.model.rope import apply_rope

LAMBDA_DOT_CLIP = 10.0
# Cached calls with at most this many queries may take the Pallas decode kernel (its query
# tile holds a KV group's heads x the queries); longer ones (prefill) take the XLA path.
DECODE_KERNEL_MAX_QUERIES = 8


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


def _reference_self_attention(q, k, v, lam, segment_ids_BT, *, gqa_ratio: int,
                              block: int) -> jax.Array:
    B, T = q.shape[:2]
    slots = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    return blocked_differential_map(q, k, v, lam, slots, jnp.arange(T, dtype=jnp.int32),
                                    segment_ids_BT, segment_ids_BT, gqa_ratio=gqa_ratio,
                                    block=block)


def _pallas_self_attention(q, k, v, lam, segment_ids_BT, *, gqa_ratio: int,
                           block: int) -> jax.Array:
    del block  # the kernel tiles with its own block sizes
    return diff_attention(q, k, v, lam, segment_ids_BT, gqa_ratio=gqa_ratio)


def _pallas_fits(cfg: ModelConfig, dtype) -> str | None:
    return kernel_fits(cfg.head_dim, cfg.value_head_dim, jnp.dtype(dtype).itemsize)


def _pallas_decode(q, k, v, lam, q_slots, k_seg, q_seg, live, *, gqa_ratio: int) -> jax.Array:
    return diff_decode.decode_diff_attention(q, k, v, lam, q_slots, k_seg, q_seg, live,
                                             gqa_ratio=gqa_ratio)


@dataclasses.dataclass(frozen=True)
class AttentionImpl:
    """One attention implementation, by the shapes of call it serves.

    ``self_attention(q, k, v, lam, segment_ids_BT, *, gqa_ratio, block)`` -> (B, T, heads,
    2*head_dim): no KV cache (training, cache-less prefill).  ``fits(cfg, dtype)``: why it
    cannot be sized for the target (``None`` when it can).  ``decode(q, k, v, lam, q_slots,
    k_seg, q_seg, live, *, gqa_ratio)``: the map over a cache's live bucket for a call of at
    most ``decode_max_queries`` queries (decode, speculative verification), taken only when
    the implementation is named explicitly and the platform is not in ``no_decode_on``;
    without it, cached calls take the live-prefix XLA path."""

    self_attention: Callable[..., jax.Array]
    fits: Callable[[ModelConfig, Any], str | None] | None = None
    decode: Callable[..., jax.Array] | None = None
    decode_max_queries: int = 0
    no_decode_on: tuple[str, ...] = ()


# The registry: a new kernel is one entry.  The DIFF conformance tests run over every entry.
ATTENTION_REGISTRY: dict[str, AttentionImpl] = {
    "reference": AttentionImpl(_reference_self_attention),
    "pallas": AttentionImpl(_pallas_self_attention, fits=_pallas_fits, decode=_pallas_decode,
                            decode_max_queries=DECODE_KERNEL_MAX_QUERIES,
                            no_decode_on=("tpu",)),
}
# Each entry's self-attention function, one signature
# (q, k, v, lam, segment_ids_BT, *, gqa_ratio, block) -> (B, T, heads, 2*head_dim);
# the dispatch calls through this table.
ATTENTION_KERNELS = {name: impl.self_attention for name, impl in ATTENTION_REGISTRY.items()}


@contextlib.contextmanager
def substituted(name: str, self_attention: Callable[..., jax.Array]) -> Iterator[None]:
    """Within the block, entry ``name``'s self-attention is ``self_attention`` (same
    signature): what is traced inside sees it, and the entry is restored however the block
    ends.  For a measurement that must run something the model is not, e.g. the device
    check's speed limit (four cuDNN flash calls in place of the reference map)."""
    saved = ATTENTION_KERNELS[name]
    ATTENTION_KERNELS[name] = self_attention
    try:
        yield
    finally:
        ATTENTION_KERNELS[name] = saved


def _fitting(cfg: ModelConfig, name: str, dtype) -> str:
    """``name`` where its self-attention can be sized for the target; otherwise ``auto``
    takes the reference with a one-line warning and an implementation named explicitly
    raises ``KernelDoesNotFit`` (at trace time, so before any step runs)."""
    fits = ATTENTION_REGISTRY[name].fits
    reason = None if fits is None else fits(cfg, dtype)
    if reason is None:
        return name
    if cfg.attention_impl == name:
        raise KernelDoesNotFit(f"attention_impl={name!r} cannot run here: {reason}")
    warnings.warn(f"attention_impl='auto': {reason}; using the reference attention",
                  stacklevel=3)
    return "reference"


def _decode_kernel(cfg: ModelConfig, queries: int):
    """The named implementation's decode kernel for a cached call of ``queries`` queries on
    this platform, else ``None`` (the live-prefix XLA path)."""
    impl = ATTENTION_REGISTRY.get(cfg.attention_impl)
    if (impl is None or impl.decode is None or queries > impl.decode_max_queries
            or target_platform() in impl.no_decode_on):
        return None
    return functools.partial(impl.decode, gqa_ratio=cfg.gqa_ratio)


def differential_attention(q, k, v, lam, q_slots, k_slots, q_seg, k_seg, *, cfg: ModelConfig,
                           self_attention: bool, live_len: jax.Array | int | None = None,
                           layer: jax.Array | int | None = None) -> jax.Array:
    """The one dispatch point, by ``cfg.attention_impl``, the platform and the call's shape.

    ``self_attention`` (no KV cache: query ``t`` at slot ``t``, keys = queries) takes the
    resolved implementation's ``self_attention`` (``auto``: the fused kernel on GPU/TPU)
    where it fits the target.  With a cache (``live_len`` = slots filled so far) and at
    most ``decode_max_queries`` queries (decode, speculative verification), an
    implementation named explicitly takes its decode kernel (Pallas: not on TPU); every
    other cached call (``auto``, the reference, prefill) takes the live-prefix XLA path,
    which reads only the cache blocks below ``live_len``.  With ``layer``, ``k``/``v``/
    ``k_seg`` are every layer's stacked cache and layer ``layer``'s live bucket is read."""
    if self_attention:
        impl = _fitting(cfg, cfg.resolved_attention_impl(), q.dtype)
        return ATTENTION_KERNELS[impl](q, k, v, lam, q_seg, gqa_ratio=cfg.gqa_ratio,
                                       block=cfg.attn_block_size)
    if live_len is not None:
        return live_differential_map(q, k, v, lam, q_slots, k_seg, q_seg, live_len,
                                     gqa_ratio=cfg.gqa_ratio, block=cfg.attn_block_size,
                                     layer=layer, kernel=_decode_kernel(cfg, q.shape[1]))
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
