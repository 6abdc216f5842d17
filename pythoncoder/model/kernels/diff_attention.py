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

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pythoncoder.model.config import target_platform
from pythoncoder.model.kernels import registry

MASK_VALUE = -1e30
DEFAULT_BLOCK = 128
TPU_LANES = 128  # a TPU vector register row
F32 = jnp.float32


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def _precision(a):
    """Low-precision operands take the default (native) dot: Mosaic refuses an fp32
    contract precision on bf16 tiles, which a global ``jax_default_matmul_precision =
    "highest"`` (the test suites' policy) would otherwise ask for.  fp32 operands follow
    the global setting."""
    return None if a.dtype == F32 else jax.lax.Precision.DEFAULT


def _dot_t(a, b):
    """a @ b^T with fp32 accumulation."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=_precision(a),
                               preferred_element_type=F32)


def _dot(a, b):
    return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=_precision(a),
                               preferred_element_type=F32)


def _dot_tn(a, b):
    """a^T @ b with fp32 accumulation."""
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=_precision(a),
                               preferred_element_type=F32)


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


# ------------------------------------------------------------------ sizing for the target
@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Tiles of one kernel and, on GPU, Triton's warps and software-pipelining stages."""

    block_q: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 1


# GPU candidates, most preferred first (bigger tiles re-read fewer key/value blocks and keep
# the tensor cores busier; fewer stages trade latency hiding for shared memory).  Each kernel
# takes the first one whose shared memory estimate fits the device's per-block limit.
GPU_CANDIDATES = (
    KernelConfig(128, 128, 8, 2), KernelConfig(128, 64, 8, 2), KernelConfig(64, 128, 8, 2),
    KernelConfig(128, 64, 8, 1), KernelConfig(64, 128, 8, 1), KernelConfig(64, 64, 8, 2),
    KernelConfig(64, 64, 4, 1), KernelConfig(32, 64, 4, 1), KernelConfig(32, 32, 4, 1),
    KernelConfig(16, 32, 4, 1),
)
KERNELS = ("fwd", "bwd_q", "bwd_kv")
GPU_PLATFORMS = registry.GPU_PLATFORMS
# the name each kernel's pallas_call carries (its registry entry's)
CALLS = dict(zip(("fwd", "bwd_q", "bwd_kv", "decode"), registry.entry("attention", "pallas").calls,
                 strict=True))
# Triton's bf16/fp16 tensor-core dots need sm_80 (Ampere) or newer.
MIN_COMPUTE_CAPABILITY = (8, 0)


class KernelDoesNotFit(ValueError):
    """No candidate tiling of a kernel fits the target's limits."""


def mma_family(compute_capability: tuple[int, int]) -> str:
    """How Triton stages a dot's operands on a GPU of ``compute_capability``: ``hopper``
    (sm_90's wgmma reads its left operand from registers), ``blackwell`` (sm_100's tcgen05,
    which pipelines the backward kernels' streamed tiles twice over) or ``mma`` (sm_80 to
    sm_89 and sm_120: ``mma`` reads every operand from shared memory, and the pipeliner
    streams only the operands that feed a dot straight from memory)."""
    major = compute_capability[0]
    return "hopper" if major == 9 else "blackwell" if major == 10 else "mma"


def smem_estimate(kernel: str, c: KernelConfig, D: int, E: int, itemsize: int = 2,
                  compute_capability: tuple[int, int] = (9, 0)) -> int:
    """Shared memory (bytes) Triton asks for to run ``kernel`` at ``c`` (head dim ``D``,
    value dim ``E``) on a GPU of ``compute_capability``: an upper estimate fitted to the
    compiler's own requests (``tests/targets`` reads them from its refusals for every
    candidate tiling, every family and two head shapes, and checks the estimate is never
    below them and, at the 1b shapes, not far above).  The terms: the operand tiles each
    dot stages (a program's fixed side and the streamed side), a copy of the streamed tiles
    (or, where only they are pipelined, the row statistics) per extra pipeline stage, and,
    outside Hopper, the score/map tile that ``mma`` reads from shared memory too."""
    bq, bk, extra = c.block_q, c.block_k, max(c.num_stages, 1) - 1
    family = mma_family(compute_capability)
    row = (2 * D + E) * itemsize  # q1, q2 and dO rows, or k1, k2 and v rows
    if kernel == "fwd":  # Q1, Q2 fixed; K1, K2 (pass 1) and K1, K2, V (pass 2) streamed
        base = itemsize * (2 * D * bq + max(2 * D, E) * bk)
        if family == "mma":
            base += itemsize * bq * bk
            stage = itemsize * max(2 * D, E) * bk
        else:
            stage = itemsize * (4 * D + E) * bk
            if bq < 64:  # small query tiles stage the map tile for the A V dot too
                base += itemsize * bq * bk
    elif kernel == "bwd_q":  # Q1, Q2, dO fixed; K1, K2, V streamed
        base = row * (bq + bk)
        stage = {"hopper": row * bk, "blackwell": itemsize * (4 * D + E) * bk + 8 * bk,
                 "mma": itemsize * D * bk}[family]
    elif kernel == "bwd_kv":  # K1, K2, V fixed; Q1, Q2, dO streamed; a bf16 dS tile
        base = row * (bq + bk) + itemsize * bq * bk
        # per stage: the streamed rows and their fp32 statistics (lse1, lse2, D1, E, the
        # segment id); mma pipelines only the statistics
        stage = {"hopper": (row + 32) * bq, "blackwell": 2 * row * bq + 1024,
                 "mma": 20 * bq}[family]
        if family != "mma" and c.num_warps < 8 and bq != bk:  # 4-warp rectangular tiles
            base += itemsize * E * bq  # convert dO again
    elif kernel == "decode":  # the query tile (bq = its rows) fixed; K1, K2, V streamed
        base = itemsize * (2 * D * bq + max(2 * D, E) * bk) + 32 * bk
        stage = (itemsize * max(2 * D, E) + 8) * bk
    else:
        raise ValueError(f"unknown kernel {kernel!r}")
    return base + extra * stage + 2048


def first_fit(kernel: str, candidates, D: int, E: int, itemsize: int, limits) -> KernelConfig:
    """The first of ``candidates`` whose ``smem_estimate`` fits ``limits`` (a
    ``pythoncoder.targets.GpuLimits``).  Raises ``KernelDoesNotFit``."""
    where = limits.device_kind or "this GPU"
    if tuple(limits.compute_capability) < MIN_COMPUTE_CAPABILITY:
        cc = ".".join(map(str, limits.compute_capability))
        raise KernelDoesNotFit(f"the fused attention kernels need compute capability 8.0+, "
                               f"{where} has {cc}")
    for c in candidates:
        need = smem_estimate(kernel, c, D, E, itemsize, tuple(limits.compute_capability))
        if need <= limits.smem_per_block:
            return c
    raise KernelDoesNotFit(f"no tiling of diff_attention_{kernel} fits the "
                           f"{limits.smem_per_block} B of shared memory per block of {where}")


def gpu_configs(D: int, E: int, itemsize: int = 2, limits=None) -> dict[str, KernelConfig]:
    """Per training kernel, the first ``GPU_CANDIDATES`` entry that fits ``limits``
    (default: the target's, ``pythoncoder.targets.gpu_limits``)."""
    from pythoncoder.targets import gpu_limits

    limits = limits or gpu_limits()
    return {k: first_fit(k, GPU_CANDIDATES, D, E, itemsize, limits) for k in KERNELS}


def kernel_fits(D: int, E: int, itemsize: int = 2, platform: str | None = None) -> str | None:
    """None when the training kernel can be sized for the target, else the reason."""
    if (platform or target_platform()) not in GPU_PLATFORMS:
        return None
    try:
        gpu_configs(D, E, itemsize)
    except KernelDoesNotFit as e:
        return str(e)
    return None



def triton_params(c: KernelConfig):
    from jax.experimental.pallas import triton as pl_triton

    return pl_triton.CompilerParams(num_warps=c.num_warps, num_stages=c.num_stages)


# ------------------------------------------------------------------ pallas_call wrappers
class _Static:
    """Hashable static configuration of one kernel instance: one ``KernelConfig`` per
    kernel (``fwd``, ``bwd_q``, ``bwd_kv``)."""

    def __init__(self, *, ratio, configs, scale, floor, causal, interpret, platform):
        self.ratio, self.configs, self.scale = ratio, dict(configs), scale
        self.floor, self.causal, self.interpret = floor, causal, interpret
        self.platform = platform
        self._key = (ratio, tuple(sorted(self.configs.items())), scale, floor, causal,
                     interpret, platform)

    def compiler_params(self, kernel: str):
        """Triton on GPU (Pallas would otherwise pick Mosaic GPU, whose whole-block shared
        memory staging does not fit these key/value blocks); defaults elsewhere."""
        if self.interpret or self.platform not in GPU_PLATFORMS:
            return None
        return triton_params(self.configs[kernel])

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Static) and self._key == other._key


def _common_specs(c: KernelConfig, R: int, T: int, D: int, E: int, per_group: bool):
    """in_specs for q1, q2, k1, k2, v, qseg, kseg, lam on grid (B, H or G, blocks)."""
    bq, bk = c.block_q, c.block_k
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


def _row_spec(c: KernelConfig, width):
    return pl.BlockSpec((None, None, c.block_q, width), lambda b, h, i: (b, h, i, 0))


def visible_tiles(T: int, bq: int, bk: int, causal: bool = True) -> int:
    """(query block, key block) tiles one head's kernel visits: the causal mask skips the
    rest (the loop bounds of ``_n_visible`` / ``_first_visible``)."""
    nq, nk = T // bq, T // bk
    if not causal:
        return nq * nk
    return sum(min(-(-((i + 1) * bq) // bk), nk) for i in range(nq))


def cost_estimate(kernel: str, c: KernelConfig, *, B: int, H: int, T: int, D: int, E: int,
                  R: int, itemsize: int = 2, causal: bool = True) -> pl.CostEstimate:
    """What one call of ``kernel`` costs, for XLA's scheduler and the roofline of
    ``pythoncoder memory``.  FLOPs and exps are exact over the visited tiles (both passes,
    scores recomputed where the kernel recomputes them).  Bytes are the compulsory HBM
    traffic: every operand read once and every output written once, i.e. a head's keys and
    values (or, for ``bwd_kv``, a group's queries) stay in L2 across the query (key) blocks
    that re-read them (1-6 MB at 1b shapes against an H100's 50 MB)."""
    tiles = B * H * visible_tiles(T, c.block_q, c.block_k, causal) * c.block_q * c.block_k
    G = H // R
    q = 2 * B * H * T * D * itemsize  # q1 and q2
    kv = B * G * T * (2 * D + E) * itemsize  # k1, k2, v
    o = B * H * T * E * itemsize  # the output or dO
    seg = 2 * B * T * 4
    stat = B * H * T * 4  # one (B, H, T, 1) fp32 row statistic
    if kernel == "fwd":  # two passes of both score matmuls, then A V
        flops, exps, nbytes = tiles * (8 * D + 2 * E), 4 * tiles, q + kv + seg + o + 2 * stat
    elif kernel == "bwd_q":  # two passes of scores + dO V^T, then dS K for both maps
        flops, exps = tiles * (12 * D + 4 * E), 4 * tiles
        nbytes = q + kv + seg + 2 * stat + o + q + 2 * stat
    elif kernel == "bwd_kv":  # scores, dO V^T, dK1, dK2, dV
        flops, exps = tiles * (8 * D + 4 * E), 2 * tiles
        nbytes = q + kv + seg + 4 * stat + o + kv
    else:
        raise ValueError(f"unknown kernel {kernel!r}")
    return pl.CostEstimate(flops=int(flops), transcendentals=int(exps),
                           bytes_accessed=int(nbytes))


def pallas_call(kernel, *, name: str, out_shape, cost_estimate, **kw):
    """``pl.pallas_call`` that also records the kernel's declared cost for the step-cost
    analysis (``pythoncoder.hlo_cost``): Triton's lowering does not pass it on to XLA."""
    from pythoncoder.hlo_cost import record_kernel_cost

    record_kernel_cost(name, out_shape if isinstance(out_shape, list | tuple) else [out_shape],
                       cost_estimate)
    return pl.pallas_call(kernel, name=name, out_shape=out_shape, cost_estimate=cost_estimate,
                          **kw)


def _forward(cfg, q1, q2, k1, k2, v, qseg, kseg, lam):
    B, H, T, D = q1.shape
    E = v.shape[-1]
    c = cfg.configs["fwd"]
    kernel = functools.partial(_fwd_kernel, bq=c.block_q, bk=c.block_k, nk=T // c.block_k,
                               scale=cfg.scale, floor=cfg.floor, causal=cfg.causal)
    stat = jax.ShapeDtypeStruct((B, H, T, 1), F32)
    return pallas_call(
        kernel,
        grid=(B, H, T // c.block_q),
        in_specs=_common_specs(c, cfg.ratio, T, D, E, per_group=False),
        out_specs=[_row_spec(c, E), _row_spec(c, 1), _row_spec(c, 1)],
        out_shape=[jax.ShapeDtypeStruct((B, H, T, E), v.dtype), stat, stat],
        interpret=cfg.interpret,
        compiler_params=cfg.compiler_params("fwd"),
        cost_estimate=cost_estimate("fwd", c, B=B, H=H, T=T, D=D, E=E, R=cfg.ratio,
                                    itemsize=q1.dtype.itemsize, causal=cfg.causal),
        name=CALLS["fwd"],
    )(q1, q2, k1, k2, v, qseg, kseg, lam)


def _backward_q(cfg, q1, q2, k1, k2, v, qseg, kseg, lam, lse1, lse2, do):
    """dQ1, dQ2 and the row sums D1, E, per query block."""
    B, H, T, D = q1.shape
    E = v.shape[-1]
    c = cfg.configs["bwd_q"]
    stat = jax.ShapeDtypeStruct((B, H, T, 1), F32)
    kernel = functools.partial(_bwd_q_kernel, bq=c.block_q, bk=c.block_k, nk=T // c.block_k,
                               scale=cfg.scale, floor=cfg.floor, causal=cfg.causal)
    return pallas_call(
        kernel,
        grid=(B, H, T // c.block_q),
        in_specs=_common_specs(c, cfg.ratio, T, D, E, per_group=False)
        + [_row_spec(c, 1), _row_spec(c, 1), _row_spec(c, E)],
        out_specs=[_row_spec(c, D), _row_spec(c, D), _row_spec(c, 1), _row_spec(c, 1)],
        out_shape=[jax.ShapeDtypeStruct(q1.shape, q1.dtype),
                   jax.ShapeDtypeStruct(q2.shape, q2.dtype), stat, stat],
        interpret=cfg.interpret,
        compiler_params=cfg.compiler_params("bwd_q"),
        cost_estimate=cost_estimate("bwd_q", c, B=B, H=H, T=T, D=D, E=E, R=cfg.ratio,
                                    itemsize=q1.dtype.itemsize, causal=cfg.causal),
        name=CALLS["bwd_q"],
    )(q1, q2, k1, k2, v, qseg, kseg, lam, lse1, lse2, do)


def _backward_kv(cfg, q1, q2, k1, k2, v, qseg, kseg, lam, lse1, lse2, do, d1, e):
    """dK1, dK2, dV per key block, over all query heads of its group."""
    B, H, T, D = q1.shape
    E = v.shape[-1]
    G, R = v.shape[1], cfg.ratio
    c = cfg.configs["bwd_kv"]
    bk = c.block_k

    def group_rows(width):
        return pl.BlockSpec((None, R, T, width), lambda b, g, j: (b, g, 0, 0))

    kernel = functools.partial(_bwd_kv_kernel, bq=c.block_q, bk=bk, nq=T // c.block_q,
                               ratio=R, scale=cfg.scale, floor=cfg.floor, causal=cfg.causal)
    return pallas_call(
        kernel,
        grid=(B, G, T // bk),
        in_specs=_common_specs(c, R, T, D, E, per_group=True)
        + [group_rows(1), group_rows(1), group_rows(E), group_rows(1), group_rows(1)],
        out_specs=[pl.BlockSpec((None, None, bk, D), lambda b, g, j: (b, g, j, 0))] * 2
        + [pl.BlockSpec((None, None, bk, E), lambda b, g, j: (b, g, j, 0))],
        out_shape=[jax.ShapeDtypeStruct(k1.shape, k1.dtype),
                   jax.ShapeDtypeStruct(k2.shape, k2.dtype),
                   jax.ShapeDtypeStruct(v.shape, v.dtype)],
        interpret=cfg.interpret,
        compiler_params=cfg.compiler_params("bwd_kv"),
        cost_estimate=cost_estimate("bwd_kv", c, B=B, H=H, T=T, D=D, E=E, R=R,
                                    itemsize=q1.dtype.itemsize, causal=cfg.causal),
        name=CALLS["bwd_kv"],
    )(q1, q2, k1, k2, v, qseg, kseg, lam, lse1, lse2, do, d1, e)


def _backward(cfg, *common):
    dq1, dq2, d1, e = _backward_q(cfg, *common)
    dk1, dk2, dv = _backward_kv(cfg, *common, d1, e)
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


def kernel_configs(T: int, D: int, E: int, *, platform: str, itemsize: int = 2,
                   block_q: int | None = None, block_k: int | None = None,
                   config: KernelConfig | None = None) -> dict[str, KernelConfig]:
    """The tiling of each kernel for sequence length ``T``: ``config`` for all three if
    given; on GPU sized for the target (``gpu_configs``), with ``block_q``/``block_k``
    overriding the tiles; elsewhere ``DEFAULT_BLOCK`` (or the given blocks).  Tiles never
    exceed ``T`` rounded up to 8, or on TPU to 128: Mosaic loads the key side's segment
    ids as a lane-dense row, whose length must be a multiple of 128 lanes (a shorter
    sequence is padded to one tile; padded keys are masked)."""
    if config is not None:
        configs = dict.fromkeys(KERNELS, config)
    elif platform in GPU_PLATFORMS:
        configs = gpu_configs(D, E, itemsize)
    else:
        configs = dict.fromkeys(KERNELS, KernelConfig(DEFAULT_BLOCK, DEFAULT_BLOCK))
    cap = _round_up(T, TPU_LANES if platform == "tpu" else 8)
    return {k: dataclasses.replace(c, block_q=min(block_q or c.block_q, cap),
                                   block_k=min(block_k or c.block_k, cap))
            for k, c in configs.items()}


def diff_attention(q_BTHD: jax.Array, k_BTKD: jax.Array, v_BTGE: jax.Array, lam: jax.Array,
                   segment_ids_BT: jax.Array | None, *, gqa_ratio: int,
                   block_q: int | None = None, block_k: int | None = None,
                   config: KernelConfig | None = None,
                   interpret: bool | None = None, platform: str | None = None,
                   floor: bool = True, causal: bool = True) -> jax.Array:
    """Floored differential self-attention, the fused kernel.

    ``q_BTHD``: (B, T, 2*heads, D) query sub-heads; ``k_BTKD``: (B, T, 2*groups, D);
    ``v_BTGE``: (B, T, groups, E); ``lam``: scalar; ``segment_ids_BT``: (B, T) or None.
    Returns (B, T, heads, E) in the value dtype, equal to ``differential_map`` with the
    causal + segment mask of query slots ``0..T-1``.  ``platform`` (default
    ``target_platform()``) picks the lowering: ``cpu`` interprets (unless ``interpret`` says
    otherwise), ``gpu`` lowers through Triton, ``tpu`` through Mosaic.
    Tiles: ``block_q``/``block_k`` or ``config`` (all three kernels) if given, else sized
    for the target (``kernel_configs``; ``KernelDoesNotFit`` where no tiling fits a GPU).
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
    configs = kernel_configs(T, D, v_BTGE.shape[-1], platform=platform,
                             itemsize=jnp.dtype(q_BTHD.dtype).itemsize, block_q=block_q,
                             block_k=block_k, config=config)
    Tp = _round_up(T, math.lcm(*(b for c in configs.values()
                                 for b in (c.block_q, c.block_k))))
    cfg = _Static(ratio=gqa_ratio, configs=configs, scale=1.0 / math.sqrt(D), floor=floor,
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
