"""The loss forward's row statistics fused with the head matmul, in Pallas (TPU).

For rows ``x`` (N, D), the head ``w`` (D, V) and targets ``y`` (N,) the kernel returns
``lse = logsumexp(x @ w, axis=-1)`` and ``target = (x @ w)[n, y[n]]`` in fp32 without
writing the N x V logits anywhere: the grid walks row blocks (parallel) and, innermost,
vocabulary blocks (sequential), keeping each row's running maximum, the sum of exponentials
rescaled to it (the online softmax of flash attention) and the target's logit in the output
blocks, which stay in on-chip memory while the vocabulary blocks stream past.

Why: the chunked loss in XLA writes each chunk's fp32 logits (2048 x 151,808 x 4 B =
1.24 GB for the 1b model) and reads them back for the log-sum-exp, twice per micro-step
(the main and the MTP head); the TPU compiler fuses a reduction into a matmul's epilogue
but cannot carry a running maximum across the vocabulary.  This kernel reads the head once
per row block and nothing else of size.

The vocabulary is padded to whole blocks (the padding's logits are masked to -1e30, which
never wins the maximum and adds exp(-1e30 - m) = 0).  On CPU the kernel runs in Pallas
interpret mode (tests); the loss uses it on TPU only (``loss.py``): Triton runs a grid's
programs concurrently, so the sequential vocabulary axis this kernel accumulates over
does not exist there.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pythoncoder.model.kernels import registry
from pythoncoder.model.kernels.diff_attention import _dot, pallas_call

F32 = jnp.float32
MASK_VALUE = -1e30
BLOCK_ROWS = 2048
BLOCK_VOCAB = 512
(NAME,) = registry.entry("loss", "pallas").calls


def _kernel(x_ref, w_ref, y_ref, m_ref, s_ref, t_ref, *, bv: int, vocab: int):
    j = pl.program_id(1)

    @pl.when(j == 0)
    def _():
        m_ref[...] = jnp.full(m_ref.shape, MASK_VALUE, F32)
        s_ref[...] = jnp.zeros(s_ref.shape, F32)
        t_ref[...] = jnp.zeros(t_ref.shape, F32)

    # the attention kernel's matmul: fp32 accumulation, the native precision for bf16 tiles
    logits = _dot(x_ref[...], w_ref[...])
    cols = j * bv + jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1)
    logits = jnp.where(cols < vocab, logits, MASK_VALUE)
    m_old = m_ref[...]
    m_new = jnp.maximum(m_old, jnp.max(logits, axis=1, keepdims=True))
    s_ref[...] = (s_ref[...] * jnp.exp(m_old - m_new)
                  + jnp.sum(jnp.exp(logits - m_new), axis=1, keepdims=True))
    m_ref[...] = m_new
    t_ref[...] += jnp.sum(jnp.where(cols == y_ref[...], logits, 0.0), axis=1, keepdims=True)


def cost_estimate(n: int, d: int, vocab_padded: int, *, block_rows: int,
                  itemsize: int = 2) -> pl.CostEstimate:
    """One call's FLOPs (the matmul), exponentials and HBM bytes: the rows once, the head
    once per row block, the targets, three fp32 statistics per row."""
    return pl.CostEstimate(
        flops=2 * n * d * vocab_padded, transcendentals=n * vocab_padded,
        bytes_accessed=n * d * itemsize + (n // block_rows) * d * vocab_padded * itemsize
        + n * 4 + 3 * n * 4)


@functools.partial(jax.jit, static_argnames=("block_rows", "block_vocab", "interpret"))
def ce_stats(x_ND: jax.Array, w_DV: jax.Array, y_N: jax.Array, *,
             block_rows: int = BLOCK_ROWS, block_vocab: int = BLOCK_VOCAB,
             interpret: bool = False) -> tuple[jax.Array, jax.Array]:
    """``(lse, target)``, each (N,) fp32, of the logits ``x @ w`` (fp32 accumulation),
    never materialised.  ``x`` and ``w`` in the compute dtype; N is padded to whole row
    blocks and V to whole vocabulary blocks here."""
    n, d = x_ND.shape
    vocab = w_DV.shape[1]
    bm = min(block_rows, -(-n // 8) * 8)
    n_pad = -(-n // bm) * bm
    bv = min(block_vocab, -(-vocab // 128) * 128)
    v_pad = -(-vocab // bv) * bv
    x = jnp.pad(x_ND, ((0, n_pad - n), (0, 0)))
    w = jnp.pad(w_DV.astype(x_ND.dtype), ((0, 0), (0, v_pad - vocab)))
    y = jnp.pad(y_N.astype(jnp.int32), (0, n_pad - n)).reshape(n_pad, 1)
    stat = jax.ShapeDtypeStruct((n_pad, 1), F32)
    row = pl.BlockSpec((bm, 1), lambda i, j: (i, 0))
    m, s, t = pallas_call(
        functools.partial(_kernel, bv=bv, vocab=vocab),
        grid=(n_pad // bm, v_pad // bv),
        in_specs=[pl.BlockSpec((bm, d), lambda i, j: (i, 0)),
                  pl.BlockSpec((d, bv), lambda i, j: (0, j)), row],
        out_specs=[row, row, row],
        out_shape=[stat, stat, stat],
        interpret=interpret,
        compiler_params=None if interpret else pltpu.CompilerParams(
            dimension_semantics=("parallel", "arbitrary")),
        cost_estimate=cost_estimate(n_pad, d, v_pad, block_rows=bm,
                                    itemsize=jnp.dtype(x.dtype).itemsize),
        name=NAME,
    )(x, w, y)
    return (m + jnp.log(s))[:n, 0], t[:n, 0]
