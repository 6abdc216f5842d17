"""Floored differential attention of a few queries against a KV cache, in Pallas.

Decode and speculative verification attend ``T`` (1 or 2) new queries to a preallocated
cache of ``S`` slots of which only ``live = index + T`` are written.  One program per
(batch row, KV group) takes all ``R`` differential heads of the group times the ``T``
queries as the rows of one query tile (GQA: the group's keys and values are read once for
``R`` heads), and makes the same two passes as the training kernel
(``kernels/diff_attention.py``) over the key blocks ``0 .. ceil(live / block) - 1`` only:

1. both maps' row max and sum (log-sum-exp, fp32);
2. the floored map ``max(P1 - lambda P2, 0)`` with the final statistics, times ``V``.

The loop bound is read from ``live`` at run time, so blocks past the live prefix are never
loaded: on GPU (Triton) the key and value blocks are pointers into the cache and only the
visited tiles are read.  The mask is causal on cache slots (a key slot ``<=`` the query's
slot) plus equal segment ids, as in ``attention_mask``.  Forward only (inference).

The cache stays in its layout, (B, S, 2G, D) keys and (B, S, G, E) values, viewed as
(B, S, 2G*D) and (B, S, G*E): key sub-head ``2g`` (K1) and ``2g+1`` (K2) and value head
``g`` are column blocks, so nothing is transposed or copied per step.  Only the few query
rows are rearranged.

Used when ``ModelConfig.attention_impl == "pallas"`` (set explicitly) on CPU (interpret
mode, for the tests) and GPU.  ``auto`` keeps decode on the XLA live-prefix path
(``model/live_attention.py``) everywhere until this kernel has been run and measured on a
GPU; on TPU a whole-cache block would be staged into VMEM, so the kernel is not used there.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pythoncoder.model.config import target_platform
from pythoncoder.model.kernels.diff_attention import (
    CALLS,
    F32,
    GPU_PLATFORMS,
    KernelConfig,
    _floored_map_times_v,
    _round_up,
    _scores,
    first_fit,
    pallas_call,
    triton_params,
)

DEFAULT_BLOCK_K = 128
# GPU tilings of the key side, most preferred first (the query tile is fixed by the rows).
DECODE_CANDIDATES = tuple(KernelConfig(0, bk, 4, s) for bk, s in
                          ((128, 2), (64, 2), (128, 1), (64, 1), (32, 1), (16, 1)))


def decode_config(rows: int, D: int, E: int, itemsize: int = 2, limits=None) -> KernelConfig:
    """The decode kernel's tiling for a query tile of ``rows`` on the target GPU: the first
    ``DECODE_CANDIDATES`` entry that fits its shared memory (``KernelDoesNotFit`` if none)."""
    from pythoncoder.targets import gpu_limits

    candidates = [dataclasses.replace(c, block_q=rows) for c in DECODE_CANDIDATES]
    return first_fit("decode", candidates, D, E, itemsize, limits or gpu_limits())


def _decode_kernel(live_ref, lam_ref, q1_ref, q2_ref, qpos_ref, qseg_ref, k1_ref, k2_ref,
                   v_ref, kseg_ref, o_ref, *, bk, nk, scale, floor):
    live = live_ref[0, 0]
    n = jnp.minimum(jax.lax.div(live + bk - 1, bk), nk)  # key blocks holding live slots
    q1, q2 = q1_ref[...], q2_ref[...]  # (M, D)
    qpos, qseg = qpos_ref[...], qseg_ref[...]  # (M, 1)
    lam = lam_ref[...]  # (1, 1)

    # the training kernel's tile: key slot <= the query's slot, equal segment ids
    tile = functools.partial(_scores, q1, q2, k1_ref, k2_ref, kseg_ref, qseg, qpos, bk=bk,
                             scale=scale, causal=True)
    acc, _, _ = _floored_map_times_v(tile, n, v_ref, lam, bk=bk, rows=q1.shape[0],
                                     width=o_ref.shape[-1], floor=floor)
    o_ref[...] = acc.astype(o_ref.dtype)


def decode_diff_attention(q_BTHD: jax.Array, k_BSKD: jax.Array, v_BSGE: jax.Array,
                          lam: jax.Array, q_slots_BT: jax.Array, k_seg_BS: jax.Array,
                          q_seg_BT: jax.Array, live: jax.Array | int, *, gqa_ratio: int,
                          block_k: int | None = None, config: KernelConfig | None = None,
                          interpret: bool | None = None, platform: str | None = None,
                          floor: bool = True) -> jax.Array:
    """Floored differential attention of ``T`` queries against a cache, (B, T, heads, E).

    ``q_BTHD``: (B, T, 2*heads, D) query sub-heads; ``k_BSKD``: the cache's keys
    (B, S, 2*groups, D); ``v_BSGE``: its values (B, S, groups, E); ``q_slots_BT``: each
    query's cache slot; ``k_seg_BS`` / ``q_seg_BT``: segment ids (0 = an empty slot);
    ``live``: slots written so far including these queries (keys at slots ``>= live`` are
    never read).  The key block is ``block_k`` or ``config``'s if given, else on GPU sized
    for the target (``decode_config``), elsewhere ``DEFAULT_BLOCK_K``.  Equal to
    ``blocked_differential_map`` over the whole cache with
    ``attention_mask(q_slots, arange(S), q_seg, k_seg)``.  ``floor=False`` builds the
    negative control the tests must reject.
    """
    B, T, H2, D = q_BTHD.shape
    S, G, E = k_BSKD.shape[1], v_BSGE.shape[2], v_BSGE.shape[3]
    R = gqa_ratio
    if H2 != 2 * G * R or k_BSKD.shape[2] != 2 * G or k_BSKD.shape[0] != B:
        raise ValueError(f"head layout: q {q_BTHD.shape}, k {k_BSKD.shape}, v {v_BSGE.shape} "
                         f"do not match gqa_ratio {gqa_ratio}")
    platform = platform or target_platform()
    if interpret is None:
        interpret = platform == "cpu"
    gpu = platform in GPU_PLATFORMS
    # query tile: the group's R heads x T queries, padded (Triton's dot needs 16 rows)
    rows = R * T
    M = max(16 if gpu else 8, 1 << (rows - 1).bit_length())
    if config is None:
        config = (decode_config(M, D, E, jnp.dtype(q_BTHD.dtype).itemsize)
                  if gpu and not interpret else KernelConfig(M, DEFAULT_BLOCK_K))
    bk = min(block_k or config.block_k, _round_up(S, 8))
    Sp = _round_up(S, bk)
    if Sp != S:  # only when the cache length is not a multiple of the block: one copy
        pad = ((0, 0), (0, Sp - S), (0, 0), (0, 0))
        k_BSKD, v_BSGE = jnp.pad(k_BSKD, pad), jnp.pad(v_BSGE, pad)
        k_seg_BS = jnp.pad(k_seg_BS, ((0, 0), (0, Sp - S)), constant_values=-2)
    k_cols = k_BSKD.reshape(B, Sp, 2 * G * D)  # free: the cache's own memory order
    v_cols = v_BSGE.reshape(B, Sp, G * E)
    kseg = k_seg_BS.astype(jnp.int32).reshape(B, 1, Sp)

    q = q_BTHD.reshape(B, T, G, R, 2, D)

    def query_rows(x):  # (B, T, G, R, D) -> (B, G, M, D), row r*T + t
        x = jnp.moveaxis(x, 1, 3).reshape(B, G, rows, D)
        return jnp.pad(x, ((0, 0), (0, 0), (0, M - rows), (0, 0)))

    q1, q2 = query_rows(q[..., 0, :]), query_rows(q[..., 1, :])

    def per_row(x, fill):  # (B, T) -> (B, M, 1), row r*T + t takes x[:, t]
        x = jnp.tile(x.astype(jnp.int32), (1, R))
        return jnp.pad(x, ((0, 0), (0, M - rows)), constant_values=fill)[:, :, None]

    qpos = per_row(q_slots_BT, -1)  # padded rows see no key
    qseg = per_row(q_seg_BT, -1)
    live11 = jnp.asarray(live, jnp.int32).reshape(1, 1)
    lam11 = jnp.asarray(lam, F32).reshape(1, 1)

    kernel = functools.partial(_decode_kernel, bk=bk, nk=Sp // bk,
                               scale=1.0 / math.sqrt(D), floor=floor)
    scalar = pl.BlockSpec((1, 1), lambda b, g: (0, 0))
    q_spec = pl.BlockSpec((None, None, M, D), lambda b, g: (b, g, 0, 0))
    row_spec = pl.BlockSpec((None, M, 1), lambda b, g: (b, 0, 0))
    k1_spec = pl.BlockSpec((None, Sp, D), lambda b, g: (b, 0, 2 * g))
    k2_spec = pl.BlockSpec((None, Sp, D), lambda b, g: (b, 0, 2 * g + 1))
    v_spec = pl.BlockSpec((None, Sp, E), lambda b, g: (b, 0, g))
    kseg_spec = pl.BlockSpec((None, 1, Sp), lambda b, g: (b, 0, 0))
    compiler_params = triton_params(config) if gpu and not interpret else None
    live_blocks = Sp // bk  # an upper bound: the live part is known only at run time
    cost = pl.CostEstimate(
        flops=B * G * live_blocks * M * bk * (8 * D + 2 * E),
        transcendentals=B * G * live_blocks * M * bk * 4,
        bytes_accessed=(B * Sp * 2 * G * D * k_cols.dtype.itemsize  # keys, both maps
                        + B * Sp * G * E * v_cols.dtype.itemsize + B * Sp * 4
                        + 2 * B * G * M * (D + E) * q_BTHD.dtype.itemsize))
    out = pallas_call(
        kernel,
        grid=(B, G),
        in_specs=[scalar, scalar, q_spec, q_spec, row_spec, row_spec, k1_spec, k2_spec,
                  v_spec, kseg_spec],
        out_specs=pl.BlockSpec((None, None, M, E), lambda b, g: (b, g, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((B, G, M, E), v_BSGE.dtype),
        interpret=bool(interpret),
        compiler_params=compiler_params,
        cost_estimate=cost,
        name=CALLS["decode"],
    )(live11, lam11, q1, q2.astype(q1.dtype), qpos, qseg, k_cols.astype(q1.dtype),
      k_cols.astype(q1.dtype), v_cols, kseg)
    out = out[:, :, :rows].reshape(B, G, R, T, E)
    return jnp.moveaxis(out, 3, 1).reshape(B, T, G * R, E)
