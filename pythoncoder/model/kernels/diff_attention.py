"""Fused floored differential attention in Pallas (DIFF-03, DIFF-06), forward and backward.

The map ``A = max(softmax(Q1 K1^T/sqrt(d) + M) - lambda softmax(Q2 K2^T/sqrt(d) + M), 0)``
cannot be split into two ordinary flash-attention calls: the floor needs both *normalised*
maps.  So the forward kernel makes two passes over the key blocks of its query block:

1. stream the key blocks and keep both maps' running row max and sum (log-sum-exp, fp32);
2. recompute each tile's scores, normalise them with the final statistics, form the
   floored map and accumulate ``A V`` in fp32.

The backward pass is two kernels, neither of which writes a T x S tensor to HBM:

* per query block: a pass over key blocks for the two softmax-backward row sums
  ``D1 = rowsum(G * P1)`` and ``E = rowsum(G * P2)`` (``G = dO V^T`` where ``A > 0``, else
  0), then a second pass for ``dQ1`` and ``dQ2``.  ``-sum(E)`` is d(lambda) for that head:
  the caller reduces it over heads and rows and lets JAX differentiate the lambda function;
* per key block (all ``R`` query heads of its GQA group): ``dV``, ``dK1``, ``dK2``.

Tiles that the causal mask removes entirely are skipped (loop bounds come from the block
indices).  The mask is causal on the position index plus equal segment ids.  Self-attention
only: query row ``t`` is at slot ``t`` (the training and cache-less prefill path).  Decode
against a KV cache (few queries, long cache) uses the reference in ``model/attention.py``.

On CPU the kernels run in Pallas interpret mode; on GPU they lower through Triton, on TPU
through Mosaic.  ``floor`` and ``causal`` exist only so tests can build the broken
variants (negative controls) and show that the equivalence checks reject them.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pythoncoder.model.config import target_platform

MASK_VALUE = -1e30
DEFAULT_BLOCK = 128
F32 = jnp.float32


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def _dot_t(a, b):
    """a @ b^T with fp32 accumulation."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=F32)


def _dot(a, b):
    return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=F32)


def _dot_tn(a, b):
    """a^T @ b with fp32 accumulation."""
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=F32)


def _n_visible(q_block: jax.Array, bq: int, bk: int, nk: int, causal: bool):
    """Key blocks that query block ``q_block`` can see under the causal mask."""
    if not causal:
        return nk
    # lax.div (non-negative operands): jnp's floor division lowers through sign(), which
    # Mosaic only lowers with a TPU attached, so it would break ahead-of-time compilation.
    return jnp.minimum(jax.lax.div((q_block + 1) * bq + bk - 1, bk), nk)


def _first_visible(k_block: jax.Array, bq: int, bk: int, causal: bool):
    """First query block that can see key block ``k_block`` under the causal mask."""
    return jax.lax.div(k_block * bk, bq) if causal else 0


def _scores(q1, q2, k1_ref, k2_ref, kseg_ref, qseg, qpos, j, *, bk, scale, causal):
    """Masked, scaled fp32 scores of one (query block, key block j) tile for both maps."""
    ks = pl.ds(j * bk, bk)
    mask = kseg_ref[:, ks] == qseg  # (bq, bk)
    if causal:
        kpos = j * bk + jax.lax.broadcasted_iota(jnp.int32, (1, bk), 1)
        mask = mask & (kpos <= qpos)
    s1 = jnp.where(mask, _dot_t(q1, k1_ref[ks, :]) * scale, MASK_VALUE)
    s2 = jnp.where(mask, _dot_t(q2, k2_ref[ks, :]) * scale, MASK_VALUE)
    return s1, s2


def _two_map_lse(tile, n, rows: int):
    """Pass 1: both maps' row log-sum-exp over key blocks ``0..n-1`` (``tile(j)`` gives a
    block's masked fp32 scores ``(s1, s2)``), streamed with a running max and sum."""

    def stats(j, carry):
        m1, l1, m2, l2 = carry
        s1, s2 = tile(j)
        n1 = jnp.maximum(m1, jnp.max(s1, axis=1, keepdims=True))
        n2 = jnp.maximum(m2, jnp.max(s2, axis=1, keepdims=True))
        l1 = l1 * jnp.exp(m1 - n1) + jnp.sum(jnp.exp(s1 - n1), axis=1, keepdims=True)
        l2 = l2 * jnp.exp(m2 - n2) + jnp.sum(jnp.exp(s2 - n2), axis=1, keepdims=True)
        return n1, l1, n2, l2

    init = jnp.full((rows, 1), -jnp.inf, F32), jnp.zeros((rows, 1), F32)
    m1, l1, m2, l2 = jax.lax.fori_loop(0, n, stats, init + init)
    return m1 + jnp.log(l1), m2 + jnp.log(l2)


def _floored(p1, p2, lam, floor):
    raw = p1 - lam * p2
    return (jnp.maximum(raw, 0.0) if floor else raw), raw


def _floored_map_times_v(tile, n, v_ref, lam, *, bk: int, rows: int, width: int, floor: bool):
    """Both passes over key blocks ``0..n-1``: the log-sum-exps, then the floored map of
    each tile with the final statistics times its value block, accumulated in fp32.
    Returns ``(acc (rows, width), lse1, lse2)``."""
    lse1, lse2 = _two_map_lse(tile, n, rows)

    def accumulate(j, acc):
        s1, s2 = tile(j)
        a, _ = _floored(jnp.exp(s1 - lse1), jnp.exp(s2 - lse2), lam, floor)
        v = v_ref[pl.ds(j * bk, bk), :]
        return acc + _dot(a.astype(v.dtype), v)

    acc = jax.lax.fori_loop(0, n, accumulate, jnp.zeros((rows, width), F32))
    return acc, lse1, lse2


# ------------------------------------------------------------------ forward kernel
def _fwd_kernel(q1_ref, q2_ref, k1_ref, k2_ref, v_ref, qseg_ref, kseg_ref, lam_ref,
                o_ref, lse1_ref, lse2_ref, *, bq, bk, nk, scale, floor, causal):
    i = pl.program_id(2)
    q1, q2 = q1_ref[...], q2_ref[...]
    qseg = qseg_ref[...]
    qpos = i * bq + jax.lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
    lam = lam_ref[...]  # (1, 1) fp32
    n = _n_visible(i, bq, bk, nk, causal)
    tile = functools.partial(_scores, q1, q2, k1_ref, k2_ref, kseg_ref, qseg, qpos, bk=bk,
                             scale=scale, causal=causal)

    acc, lse1, lse2 = _floored_map_times_v(tile, n, v_ref, lam, bk=bk, rows=bq,
                                           width=o_ref.shape[-1], floor=floor)
    o_ref[...] = acc.astype(o_ref.dtype)
    lse1_ref[...] = lse1
    lse2_ref[...] = lse2


# ------------------------------------------------------------------ backward kernels
def _bwd_q_kernel(q1_ref, q2_ref, k1_ref, k2_ref, v_ref, qseg_ref, kseg_ref, lam_ref,
                  lse1_ref, lse2_ref, do_ref, dq1_ref, dq2_ref, d1_ref, e_ref, *, bq, bk, nk,
                  scale, floor, causal):
    i = pl.program_id(2)
    q1, q2 = q1_ref[...], q2_ref[...]
    qseg = qseg_ref[...]
    qpos = i * bq + jax.lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
    lam = lam_ref[...]
    lse1, lse2 = lse1_ref[...], lse2_ref[...]
    do = do_ref[...]
    n = _n_visible(i, bq, bk, nk, causal)
    tile = functools.partial(_scores, q1, q2, k1_ref, k2_ref, kseg_ref, qseg, qpos, bk=bk,
                             scale=scale, causal=causal)

    def probs_and_grad(j):
        s1, s2 = tile(j)
        p1, p2 = jnp.exp(s1 - lse1), jnp.exp(s2 - lse2)
        _, raw = _floored(p1, p2, lam, floor)
        da = _dot_t(do, v_ref[pl.ds(j * bk, bk), :])  # dO V^T, (bq, bk)
        g = jnp.where(raw > 0, da, 0.0) if floor else da
        return p1, p2, g

    def row_sums(j, carry):
        d1, e = carry
        p1, p2, g = probs_and_grad(j)
        return (d1 + jnp.sum(g * p1, axis=1, keepdims=True),
                e + jnp.sum(g * p2, axis=1, keepdims=True))

    zero = jnp.zeros((bq, 1), F32)
    d1, e = jax.lax.fori_loop(0, n, row_sums, (zero, zero))
    d2 = -lam * e

    def grads(j, carry):
        dq1, dq2 = carry
        p1, p2, g = probs_and_grad(j)
        ds1 = p1 * (g - d1)
        ds2 = p2 * (-lam * g - d2)
        ks = pl.ds(j * bk, bk)
        k1, k2 = k1_ref[ks, :], k2_ref[ks, :]
        return (dq1 + _dot(ds1.astype(k1.dtype), k1), dq2 + _dot(ds2.astype(k2.dtype), k2))

    init = jnp.zeros(dq1_ref.shape, F32)
    dq1, dq2 = jax.lax.fori_loop(0, n, grads, (init, init))
    dq1_ref[...] = (dq1 * scale).astype(dq1_ref.dtype)
    dq2_ref[...] = (dq2 * scale).astype(dq2_ref.dtype)
    d1_ref[...] = d1
    e_ref[...] = e


def _bwd_kv_kernel(q1_ref, q2_ref, k1_ref, k2_ref, v_ref, qseg_ref, kseg_ref, lam_ref,
                   lse1_ref, lse2_ref, do_ref, d1_ref, e_ref, dk1_ref, dk2_ref, dv_ref, *,
                   bq, bk, nq, ratio, scale, floor, causal):
    j = pl.program_id(2)
    k1, k2, v = k1_ref[...], k2_ref[...], v_ref[...]
    kseg = kseg_ref[...]  # (1, bk)
    kpos = j * bk + jax.lax.broadcasted_iota(jnp.int32, (1, bk), 1)
    lam = lam_ref[...]
    start = _first_visible(j, bq, bk, causal)

    def one_head(r, carry):
        def one_block(i, carry):
            dk1, dk2, dv = carry
            qs = pl.ds(i * bq, bq)
            q1, q2 = q1_ref[r, qs, :], q2_ref[r, qs, :]
            qseg = qseg_ref[qs, :]
            mask = kseg == qseg
            if causal:
                qpos = i * bq + jax.lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
                mask = mask & (kpos <= qpos)
            s1 = jnp.where(mask, _dot_t(q1, k1) * scale, MASK_VALUE)
            s2 = jnp.where(mask, _dot_t(q2, k2) * scale, MASK_VALUE)
            p1 = jnp.exp(s1 - lse1_ref[r, qs, :])
            p2 = jnp.exp(s2 - lse2_ref[r, qs, :])
            a, raw = _floored(p1, p2, lam, floor)
            do = do_ref[r, qs, :]
            da = _dot_t(do, v)
            g = jnp.where(raw > 0, da, 0.0) if floor else da
            ds1 = p1 * (g - d1_ref[r, qs, :])
            ds2 = p2 * (-lam * g + lam * e_ref[r, qs, :])
            return (dk1 + _dot_tn(ds1.astype(q1.dtype), q1),
                    dk2 + _dot_tn(ds2.astype(q2.dtype), q2),
                    dv + _dot_tn(a.astype(do.dtype), do))

        return jax.lax.fori_loop(start, nq, one_block, carry)

    init = (jnp.zeros(dk1_ref.shape, F32), jnp.zeros(dk2_ref.shape, F32),
            jnp.zeros(dv_ref.shape, F32))
    dk1, dk2, dv = jax.lax.fori_loop(0, ratio, one_head, init)
    dk1_ref[...] = (dk1 * scale).astype(dk1_ref.dtype)
    dk2_ref[...] = (dk2 * scale).astype(dk2_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


# ------------------------------------------------------------------ pallas_call wrappers
class _Static:
    """Hashable static configuration of one kernel instance."""

    def __init__(self, *, ratio, bq, bk, scale, floor, causal, interpret, platform):
        self.ratio, self.bq, self.bk, self.scale = ratio, bq, bk, scale
        self.floor, self.causal, self.interpret = floor, causal, interpret
        self.platform = platform
        self._key = (ratio, bq, bk, scale, floor, causal, interpret, platform)

    @property
    def compiler_params(self):
        """Triton on GPU (Pallas would otherwise pick Mosaic GPU, whose whole-block shared
        memory staging does not fit these key/value blocks); defaults elsewhere."""
        if self.interpret or self.platform not in ("gpu", "cuda", "rocm"):
            return None
        from jax.experimental.pallas import triton as pl_triton

        return pl_triton.CompilerParams(num_warps=8, num_stages=2)

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Static) and self._key == other._key


def _common_specs(cfg, B, H, T, D, E, per_group: bool):
    """in_specs for q1, q2, k1, k2, v, qseg, kseg, lam on grid (B, H or G, blocks)."""
    bq, bk, R = cfg.bq, cfg.bk, cfg.ratio
    if per_group:  # grid (B, G, key block): all R heads of the group, all queries
        qspec = pl.BlockSpec((None, R, T, D), lambda b, g, j: (b, g, 0, 0))
        kspec = pl.BlockSpec((None, None, bk, D), lambda b, g, j: (b, g, j, 0))
        vspec = pl.BlockSpec((None, None, bk, E), lambda b, g, j: (b, g, j, 0))
        qseg = pl.BlockSpec((None, T, 1), lambda b, g, j: (b, 0, 0))
        kseg = pl.BlockSpec((None, 1, bk), lambda b, g, j: (b, 0, j))
    else:  # grid (B, H, query block): one head's query block, all keys of its group
        qspec = pl.BlockSpec((None, None, bq, D), lambda b, h, i: (b, h, i, 0))
        kspec = pl.BlockSpec((None, None, T, D), lambda b, h, i: (b, h // R, 0, 0))
        vspec = pl.BlockSpec((None, None, T, E), lambda b, h, i: (b, h // R, 0, 0))
        qseg = pl.BlockSpec((None, bq, 1), lambda b, h, i: (b, i, 0))
        kseg = pl.BlockSpec((None, 1, T), lambda b, h, i: (b, 0, 0))
    lam = pl.BlockSpec((1, 1), lambda *_: (0, 0))
    return [qspec, qspec, kspec, kspec, vspec, qseg, kseg, lam]


def _row_spec(cfg, width):
    return pl.BlockSpec((None, None, cfg.bq, width), lambda b, h, i: (b, h, i, 0))


def _forward(cfg, q1, q2, k1, k2, v, qseg, kseg, lam):
    B, H, T, D = q1.shape
    E = v.shape[-1]
    kernel = functools.partial(_fwd_kernel, bq=cfg.bq, bk=cfg.bk, nk=T // cfg.bk,
                               scale=cfg.scale, floor=cfg.floor, causal=cfg.causal)
    stat = jax.ShapeDtypeStruct((B, H, T, 1), F32)
    return pl.pallas_call(
        kernel,
        grid=(B, H, T // cfg.bq),
        in_specs=_common_specs(cfg, B, H, T, D, E, per_group=False),
        out_specs=[_row_spec(cfg, E), _row_spec(cfg, 1), _row_spec(cfg, 1)],
        out_shape=[jax.ShapeDtypeStruct((B, H, T, E), v.dtype), stat, stat],
        interpret=cfg.interpret,
        compiler_params=cfg.compiler_params,
        name="diff_attention_fwd",
    )(q1, q2, k1, k2, v, qseg, kseg, lam)


def _backward(cfg, q1, q2, k1, k2, v, qseg, kseg, lam, lse1, lse2, do):
    B, H, T, D = q1.shape
    G, E = v.shape[1], v.shape[-1]
    common = (q1, q2, k1, k2, v, qseg, kseg, lam, lse1, lse2, do)
    stat = jax.ShapeDtypeStruct((B, H, T, 1), F32)
    q_kernel = functools.partial(_bwd_q_kernel, bq=cfg.bq, bk=cfg.bk, nk=T // cfg.bk,
                                 scale=cfg.scale, floor=cfg.floor, causal=cfg.causal)
    dq1, dq2, d1, e = pl.pallas_call(
        q_kernel,
        grid=(B, H, T // cfg.bq),
        in_specs=_common_specs(cfg, B, H, T, D, E, per_group=False)
        + [_row_spec(cfg, 1), _row_spec(cfg, 1), _row_spec(cfg, E)],
        out_specs=[_row_spec(cfg, D), _row_spec(cfg, D), _row_spec(cfg, 1), _row_spec(cfg, 1)],
        out_shape=[jax.ShapeDtypeStruct(q1.shape, q1.dtype),
                   jax.ShapeDtypeStruct(q2.shape, q2.dtype), stat, stat],
        interpret=cfg.interpret,
        compiler_params=cfg.compiler_params,
        name="diff_attention_bwd_q",
    )(*common)

    R = cfg.ratio

    def group_rows(width):
        return pl.BlockSpec((None, R, T, width), lambda b, g, j: (b, g, 0, 0))

    kv_kernel = functools.partial(_bwd_kv_kernel, bq=cfg.bq, bk=cfg.bk, nq=T // cfg.bq,
                                  ratio=R, scale=cfg.scale, floor=cfg.floor, causal=cfg.causal)
    dk1, dk2, dv = pl.pallas_call(
        kv_kernel,
        grid=(B, G, T // cfg.bk),
        in_specs=_common_specs(cfg, B, H, T, D, E, per_group=True)
        + [group_rows(1), group_rows(1), group_rows(E), group_rows(1), group_rows(1)],
        out_specs=[pl.BlockSpec((None, None, cfg.bk, D), lambda b, g, j: (b, g, j, 0))] * 2
        + [pl.BlockSpec((None, None, cfg.bk, E), lambda b, g, j: (b, g, j, 0))],
        out_shape=[jax.ShapeDtypeStruct(k1.shape, k1.dtype),
                   jax.ShapeDtypeStruct(k2.shape, k2.dtype),
                   jax.ShapeDtypeStruct(v.shape, v.dtype)],
        interpret=cfg.interpret,
        compiler_params=cfg.compiler_params,
        name="diff_attention_bwd_kv",
    )(*common, d1, e)
    # d(lambda): A depends on lambda through -lambda P2 under the floor, so
    # dL/dlambda = -sum(G * P2) = -sum(E) over batch, heads and rows.
    dlam = -jnp.sum(e).reshape(1, 1)
    return dq1, dq2, dk1, dk2, dv, dlam


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(cfg, q1, q2, k1, k2, v, qseg, kseg, lam):
    return _forward(cfg, q1, q2, k1, k2, v, qseg, kseg, lam)[0]


def _fused_fwd(cfg, q1, q2, k1, k2, v, qseg, kseg, lam):
    o, lse1, lse2 = _forward(cfg, q1, q2, k1, k2, v, qseg, kseg, lam)
    return o, (q1, q2, k1, k2, v, qseg, kseg, lam, lse1, lse2)


def _fused_bwd(cfg, res, do):
    q1, q2, k1, k2, v, qseg, kseg, lam, lse1, lse2 = res
    dq1, dq2, dk1, dk2, dv, dlam = _backward(cfg, q1, q2, k1, k2, v, qseg, kseg, lam,
                                             lse1, lse2, do)
    return dq1, dq2, dk1, dk2, dv, None, None, dlam.astype(lam.dtype)


_fused.defvjp(_fused_fwd, _fused_bwd)


def diff_attention(q_BTHD: jax.Array, k_BTKD: jax.Array, v_BTGE: jax.Array, lam: jax.Array,
                   segment_ids_BT: jax.Array | None, *, gqa_ratio: int,
                   block_q: int = DEFAULT_BLOCK, block_k: int = DEFAULT_BLOCK,
                   interpret: bool | None = None, platform: str | None = None,
                   floor: bool = True, causal: bool = True) -> jax.Array:
    """Floored differential self-attention, the fused kernel.

    ``q_BTHD``: (B, T, 2*heads, D) query sub-heads; ``k_BTKD``: (B, T, 2*groups, D);
    ``v_BTGE``: (B, T, groups, E); ``lam``: scalar; ``segment_ids_BT``: (B, T) or None.
    Returns (B, T, heads, E) in the value dtype, equal to ``differential_map`` with the
    causal + segment mask of query slots ``0..T-1``.  ``platform`` (default
    ``target_platform()``) picks the lowering: ``cpu`` interprets (unless ``interpret`` says
    otherwise), ``gpu`` lowers through Triton, ``tpu`` through Mosaic.
    ``floor=False`` / ``causal=False`` build the broken variants used as negative controls.
    """
    B, T, H2, D = q_BTHD.shape
    G = v_BTGE.shape[2]
    H = H2 // 2
    if k_BTKD.shape[:2] != (B, T) or v_BTGE.shape[:2] != (B, T):
        raise ValueError("diff_attention is self-attention: q, k and v need the same (B, T); "
                         f"got {q_BTHD.shape}, {k_BTKD.shape}, {v_BTGE.shape}")
    if H != G * gqa_ratio or k_BTKD.shape[2] != 2 * G:
        raise ValueError(f"head layout: {H} differential heads, {G} KV groups and "
                         f"gqa_ratio {gqa_ratio} do not match (need heads = groups * ratio)")
    platform = platform or target_platform()
    if interpret is None:
        interpret = platform == "cpu"
    # One block size for queries and keys when T is short; pad T to a multiple of both.
    bq = min(block_q, _round_up(T, 8))
    bk = min(block_k, _round_up(T, 8))
    Tp = _round_up(T, math.lcm(bq, bk))
    cfg = _Static(ratio=gqa_ratio, bq=bq, bk=bk, scale=1.0 / math.sqrt(D), floor=floor,
                  causal=causal, interpret=bool(interpret), platform=platform)
    pad = Tp - T

    def heads(x, n):  # (B, T, n*2, W) -> two (B, n, Tp, W)
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
        x = x.reshape(B, Tp, n, 2, x.shape[-1])
        return jnp.moveaxis(x[:, :, :, 0], 1, 2), jnp.moveaxis(x[:, :, :, 1], 1, 2)

    q1, q2 = heads(q_BTHD, H)
    k1, k2 = heads(k_BTKD.astype(q_BTHD.dtype), G)
    v = jnp.moveaxis(jnp.pad(v_BTGE, ((0, 0), (0, pad), (0, 0), (0, 0))), 1, 2)
    seg = (jnp.ones((B, T), jnp.int32) if segment_ids_BT is None
           else segment_ids_BT.astype(jnp.int32))
    # padded queries (-1) and padded keys (-2) match nothing real, nor each other
    qseg = jnp.pad(seg, ((0, 0), (0, pad)), constant_values=-1)[:, :, None]
    kseg = jnp.pad(seg, ((0, 0), (0, pad)), constant_values=-2)[:, None, :]
    lam11 = jnp.asarray(lam, F32).reshape(1, 1)
    out = _fused(cfg, q1, q2, k1, k2, v, qseg, kseg, lam11)  # (B, H, Tp, E)
    return jnp.moveaxis(out, 2, 1)[:, :T]
