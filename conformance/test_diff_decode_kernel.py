"""DIFF-06a: the Pallas decode kernel (few queries against a KV cache, live blocks only).

``decode_diff_attention`` runs in interpret mode on CPU.  It is checked against a float64
reference of DIFF-03 written over the whole cache (mask: key slot <= query slot, equal
segment ids), over hypothesis-drawn cache lengths off the block grid, query counts 1-3,
cache positions, GQA 1 and 3 heads per group, one and two groups, segment holes and
lambda from 0 to 1 (rows the floor clips).  Tolerance: fp32 kernel vs float64, outputs of
size ~1: ``rtol = atol = 2e-5`` (the spec's check values).  The same check rejects the
kernel without the floor.  That blocks past the live prefix are never read is shown with
NaN there.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pythoncoder.model.kernels.diff_decode import decode_diff_attention
from pythoncoder.spec import check_values
from pythoncoder.testing.targets import target_device

RTOL, ATOL = check_values("DIFF-06a")["rtol"], check_values("DIFF-06a")["atol"]
D = 8


def ref_decode64(q, k, v, lam, q_slots, k_seg, q_seg):
    """DIFF-03 over the whole cache, one differential head at a time, float64."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, T, H2, d = q.shape
    S, G = k.shape[1], v.shape[2]
    R = H2 // 2 // G
    mask = (np.arange(S)[None, None, :] <= np.asarray(q_slots)[:, :, None]) & (
        np.asarray(q_seg)[:, :, None] == np.asarray(k_seg)[:, None, :])
    out = np.zeros((B, T, H2 // 2, v.shape[-1]))

    def softmax(s):
        s = np.where(mask, s, -np.inf)
        e = np.exp(s - s.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    for h in range(H2 // 2):
        g = h // R
        s1 = np.einsum("btd,bsd->bts", q[:, :, 2 * h], k[:, :, 2 * g]) / np.sqrt(d)
        s2 = np.einsum("btd,bsd->bts", q[:, :, 2 * h + 1], k[:, :, 2 * g + 1]) / np.sqrt(d)
        a = np.maximum(softmax(s1) - float(lam) * softmax(s2), 0.0)
        out[:, :, h] = np.einsum("bts,bse->bte", a, v[:, :, g])
    return out


def _inputs(seed, B, S, T, G, R, index):
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(ks[0], (B, T, 2 * G * R, D)) * 1.5
    k = jax.random.normal(ks[1], (B, S, 2 * G, D))
    v = jax.random.normal(ks[2], (B, S, G, 2 * D))
    seg = (jax.random.uniform(ks[3], (B, S)) > 0.25).astype(jnp.int32) * 2
    seg = seg.at[:, index:index + T].set(2)  # as in the engine: a query sees its own slot
    q_slots = jnp.broadcast_to(index + jnp.arange(T, dtype=jnp.int32), (B, T))
    q_seg = jnp.full((B, T), 2, jnp.int32)
    return q, k, v, seg, q_slots, q_seg


SHAPES = st.tuples(st.sampled_from([1, 2]), st.integers(9, 70), st.integers(1, 3),
                   st.sampled_from([1, 2]), st.sampled_from([1, 3]))


@pytest.mark.req("DIFF-06a")
@settings(max_examples=8, deadline=None)  # ~3 s of interpret-mode compiles each
@given(shape=SHAPES, where=st.floats(0.0, 1.0), block=st.sampled_from([8, 16]),
       lam=st.sampled_from([0.0, 0.05, 0.6, 0.97, 1.0]), seed=st.integers(0, 2**16))
def test_decode_kernel_equals_the_float64_reference(shape, where, block, lam, seed):
    B, S, T, G, R = shape
    index = int(where * (S - T))
    q, k, v, seg, q_slots, q_seg = _inputs(seed, B, S, T, G, R, index)
    got = decode_diff_attention(q, k, v, jnp.float32(lam), q_slots, seg, q_seg, index + T,
                                gqa_ratio=R, block_k=block, interpret=True)
    want = ref_decode64(q, k, v, lam, q_slots, seg, q_seg)
    assert got.shape == want.shape and got.dtype == v.dtype
    np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=ATOL)


@pytest.mark.req("DIFF-06a")
@pytest.mark.parametrize("index,T", [(0, 1), (13, 2), (31, 1), (40, 2)])
def test_decode_kernel_never_reads_past_the_live_blocks(index, T):
    """NaN in every cache slot of the blocks past ``ceil(live / block)`` leaves the output
    bit-identical: a read of them would reach it (``0 * NaN``).  Control: NaN inside the
    live prefix does reach it."""
    S, block = 64, 16
    q, k, v, seg, q_slots, q_seg = _inputs(index + 7, 2, S, T, 2, 3, index)

    def run(k, v):
        return decode_diff_attention(q, k, v, jnp.float32(0.5), q_slots, seg, q_seg,
                                     index + T, gqa_ratio=3, block_k=block, interpret=True)

    clean = np.asarray(run(k, v))
    end = -(-(index + T) // block) * block
    dirty = np.asarray(run(k.at[:, end:].set(jnp.nan), v.at[:, end:].set(jnp.nan)))
    np.testing.assert_array_equal(dirty, clean)
    assert np.isfinite(clean).all()
    inside = np.asarray(run(k, v.at[:, index].set(jnp.nan)))
    assert np.isnan(inside).any()


@pytest.mark.req("DIFF-06a")
def test_the_check_rejects_a_decode_kernel_without_the_floor():
    q, k, v, seg, q_slots, q_seg = _inputs(3, 2, 40, 2, 2, 3, 20)
    want = ref_decode64(q, k, v, 0.9, q_slots, seg, q_seg)
    broken = decode_diff_attention(q, k, v, jnp.float32(0.9), q_slots, seg, q_seg, 22,
                                   gqa_ratio=3, block_k=8, interpret=True, floor=False)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(np.asarray(broken), want, rtol=RTOL, atol=ATOL)


@pytest.mark.req("DIFF-06a")
def test_generation_through_the_decode_kernel_equals_the_reference(make_micro, monkeypatch):
    """``attention_impl="pallas"`` sends cached decode and speculative verification to the
    kernel; greedy tokens equal the reference path's, plain and speculative, and the
    cached logits agree to fp32 rounding."""
    from pythoncoder.infer.engine import Engine
    from pythoncoder.testing.models import agreeable_model

    cfg = make_micro(num_layers=2, attn_block_size=8)
    prompts = [[5, 9, 2, 7, 1], [3, 3, 8]]
    pads = np.array([0, 2], np.int32)
    padded = np.array([[5, 9, 2, 7, 1], [0, 0, 3, 3, 8]], np.int32)
    from pythoncoder.infer import engine as engine_mod
    from pythoncoder.model.kernels import diff_decode

    traced = []
    real = diff_decode.decode_diff_attention
    monkeypatch.setattr(diff_decode, "decode_diff_attention",
                        lambda q, *a, **kw: traced.append(q.shape[1]) or real(q, *a, **kw))
    runs, logits, calls = {}, {}, {}
    for impl in ("reference", "pallas"):
        engine_mod._programs.cache_clear()  # trace afresh: the spy sees every kernel call
        traced.clear()
        model = agreeable_model(cfg.replace(attention_impl=impl), 0, trunk_scale=0.01,
                                mtp_noise=0.3)
        engine = Engine(model)
        runs[impl] = [engine.generate(prompts, max_new_tokens=9, eos_id=None, speculative=s)
                      for s in (False, True)]
        state, _, _ = engine.prefill(padded, pads, cache_len=24, key=jax.random.PRNGKey(0))
        state, _, one = engine.decode(state)
        _, _, two = engine.speculate(state)
        logits[impl] = (np.asarray(one), np.asarray(two))
        calls[impl] = sorted(set(traced))
    # decode (1 query) and verification (2) traced through the kernel; the reference never
    assert calls["reference"] == [] and {1, 2} <= set(calls["pallas"])
    for ref, ker in zip(runs["reference"], runs["pallas"]):
        assert ker.tokens == ref.tokens
    assert runs["pallas"][1].stats["accepted"] > 0  # verification took the 2-query path
    for ref, ker in zip(logits["reference"], logits["pallas"]):
        np.testing.assert_allclose(ker, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.req("DIFF-06a")
def test_decode_kernel_lowers_through_triton_for_cuda():
    """No GPU needed: at the 1b head shapes (2 groups x 3 heads, d 128, values 256, bf16)
    the decode kernel lowers to a Triton call for CUDA, traced for a deviceless H100, for
    decode (T=1) and verification (T=2), with a cache off the block grid (``tests/targets``
    compiles it for every named GPU)."""
    device = target_device("h100")
    for B, S, T in ((1, 4096, 1), (8, 2176, 2)):
        q = jax.ShapeDtypeStruct((B, T, 12, 128), jnp.bfloat16)
        k = jax.ShapeDtypeStruct((B, S, 4, 128), jnp.bfloat16)
        v = jax.ShapeDtypeStruct((B, S, 2, 256), jnp.bfloat16)
        bt = jax.ShapeDtypeStruct((B, T), jnp.int32)
        bs = jax.ShapeDtypeStruct((B, S), jnp.int32)

        def fn(q, k, v, lam, q_slots, k_seg, q_seg, live):
            return decode_diff_attention(q, k, v, lam, q_slots, k_seg, q_seg, live,
                                         gqa_ratio=3, interpret=False)

        with jax.default_device(device):
            lowered = jax.jit(fn).trace(q, k, v, jax.ShapeDtypeStruct((), jnp.float32), bt,
                                        bs, bt, jax.ShapeDtypeStruct((), jnp.int32))
            text = lowered.lower(lowering_platforms=("cuda",)).as_text()
        assert "triton" in text and "diff_attention_decode" in text
