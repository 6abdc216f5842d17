"""The attention kernels' declared cost (what ``pythoncoder memory`` and XLA's scheduler
read for a Pallas call) against counts that do not use the code under test: the tiles a
causal mask leaves, counted element by element; the bytes of the call's own operands and
results, from the traced program; and the kernels' loop bounds, which must visit exactly
those tiles.  Traced in interpret mode on the CPU (nothing runs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pythoncoder.model.kernels import diff_attention as da

B, H, R, D, E = 1, 6, 3, 16, 32
HQ, HK, G = 2 * H, 2 * H // R, H // R
BLOCKS = st.sampled_from([16, 32, 64, 128])

# FLOPs per visited score element, by the passes each kernel makes (its docstring): the
# forward computes both maps' scores (2 x 2D) twice (statistics, then output) and A V (2E);
# the dQ kernel two passes of both scores and dO V^T (2 x (4D + 2E)), then dS K for both
# maps (2 x 2D); the dK/dV kernel the scores (4D), dO V^T (2E), dK1 and dK2 (2 x 2D), dV (2E).
FLOPS_PER_ELEMENT = {"fwd": 2 * 4 * D + 2 * E, "bwd_q": 2 * (4 * D + 2 * E) + 4 * D,
                     "bwd_kv": 4 * D + 2 * E + 4 * D + 2 * E}
EXPS_PER_ELEMENT = {"fwd": 4, "bwd_q": 4, "bwd_kv": 2}  # two maps, once or twice


def brute_force_tiles(T: int, bq: int, bk: int, causal: bool = True) -> int:
    """(query block, key block) tiles holding at least one visible (query, key) pair."""
    q = np.arange(T)[:, None]
    k = np.arange(T)[None, :]
    visible = (k <= q) if causal else np.ones((T, T), bool)
    tiles = visible.reshape(T // bq, bq, T // bk, bk).any(axis=(1, 3))
    return int(tiles.sum())


@settings(max_examples=40, deadline=None)
@given(bq=BLOCKS, bk=BLOCKS, blocks=st.integers(1, 4), causal=st.booleans())
def test_loop_bounds_visit_exactly_the_tiles_the_mask_leaves(bq, bk, blocks, causal):
    """The forward/dQ kernels' key loop (``_n_visible`` per query block) and the dK/dV
    kernel's query loop (from ``_first_visible`` per key block) visit the tiles holding a
    visible pair, partial diagonal tiles whole, and ``visible_tiles`` (the declared cost's
    count) is the same number."""
    T = blocks * max(bq, bk)
    nq, nk = T // bq, T // bk
    expected = brute_force_tiles(T, bq, bk, causal)
    by_query = sum(int(da._n_visible(jnp.int32(i), bq, bk, nk, causal)) for i in range(nq))
    by_key = sum(nq - int(da._first_visible(jnp.int32(j), bq, bk, causal)) for j in range(nk))
    assert by_query == by_key == expected
    assert da.visible_tiles(T, bq, bk, causal) == expected


def _pallas_calls(jaxpr, out):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            out.append(eqn)
        for value in eqn.params.values():
            for sub in value if isinstance(value, list | tuple) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    _pallas_calls(inner, out)
    return out


def _traced_calls(T, bq, bk, causal, dtype):
    S = jax.ShapeDtypeStruct

    def f(q, k, v, lam, seg):
        def loss(q, k, v, lam):
            out = da.diff_attention(q, k, v, lam, seg, gqa_ratio=R, block_q=bq, block_k=bk,
                                    interpret=True, causal=causal)
            return jnp.sum(out.astype(jnp.float32))
        return jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, lam)

    jaxpr = jax.make_jaxpr(f)(S((B, T, HQ, D), dtype), S((B, T, HK, D), dtype),
                              S((B, T, G, E), dtype), S((), jnp.float32), S((B, T), jnp.int32))
    calls = {str(e.params["name"]).removeprefix("diff_attention_"): e
             for e in _pallas_calls(jaxpr.jaxpr, [])}
    assert sorted(calls) == sorted(da.KERNELS)
    return calls


def _nbytes(avals) -> int:
    return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in avals)


@pytest.mark.parametrize("bq,bk,causal", [(32, 64, True), (64, 32, True), (32, 32, True),
                                          (64, 32, False)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_declared_cost_counts_the_visited_tiles_and_the_calls_own_operands(bq, bk, causal,
                                                                           dtype):
    """Per kernel: FLOPs and exps are the brute-force visited tiles times the per-element
    work of its passes; bytes are every operand of the traced call read once and every
    result written once (the 4-byte lambda aside)."""
    T = 128
    tiles = brute_force_tiles(T, bq, bk, causal)
    for kernel, eqn in _traced_calls(T, bq, bk, causal, dtype).items():
        cost = eqn.params["cost_estimate"]
        elements = B * H * tiles * bq * bk
        assert cost.flops == FLOPS_PER_ELEMENT[kernel] * elements, kernel
        assert cost.transcendentals == EXPS_PER_ELEMENT[kernel] * elements, kernel
        operands = _nbytes(v.aval for v in eqn.invars)
        results = _nbytes(v.aval for v in eqn.outvars)
        assert operands + results - 4 <= cost.bytes_accessed <= operands + results, kernel
