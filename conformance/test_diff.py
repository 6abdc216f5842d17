"""DIFF-01..05: differential attention (Ye et al., ICLR 2025; flashdiff head layout)."""

import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import pythoncoder.model.attention as attention_mod
from pythoncoder.model import ModelConfig, abstract_model, build_model, lambda_init
from pythoncoder.model.attention import (
    ATTENTION_KERNELS,
    DiffAttention,
    attention_mask,
    blocked_differential_map,
    differential_map,
    lambda_full,
)
from pythoncoder.model.rope import rope_cos_sin
from pythoncoder.spec import check_values

# Every registered attention implementation (DIFF-06).  The Pallas kernel runs in interpret
# mode on CPU, where compiling a whole model around it takes tens of seconds: the
# model-level checks run it with -m slow; conformance/test_diff_kernel.py covers it by default.
IMPLS = [pytest.param(name, marks=[pytest.mark.slow] if name == "pallas" else [])
         for name in sorted(ATTENTION_KERNELS)]
assert set(ATTENTION_KERNELS) == {"reference", "pallas"}  # a new kernel: add it above


# ---------------------------------------------------------------- float64 references
def ref_lambda(lq1, lk1, lq2, lk2, lam_init):
    d1 = np.clip(np.dot(lq1, lk1), -10, 10)
    d2 = np.clip(np.dot(lq2, lk2), -10, 10)
    return float(np.clip(np.exp(d1) - np.exp(d2) + lam_init, 0.0, 1.0))


def ref_softmax(s):
    s = s - s.max(axis=-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=-1, keepdims=True)


def ref_differential_map(q, k, v, lam, mask, gqa_ratio):
    """Naive per-head loops, written straight from DIFF-03's text."""
    B, T, H2, D = q.shape
    heads = H2 // 2
    out = np.zeros((B, T, heads, v.shape[-1]))
    for b in range(B):
        for i in range(heads):
            g = i // gqa_ratio
            q1, q2 = q[b, :, 2 * i], q[b, :, 2 * i + 1]
            k1, k2 = k[b, :, 2 * g], k[b, :, 2 * g + 1]
            m = mask[b]
            s1 = np.where(m, q1 @ k1.T / math.sqrt(D), -np.inf)
            s2 = np.where(m, q2 @ k2.T / math.sqrt(D), -np.inf)
            a = np.maximum(ref_softmax(s1) - lam * ref_softmax(s2), 0.0)
            out[b, :, i] = a @ v[b, :, g]
    return out


def ref_rope(x, pos, theta):
    D = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, D, 2) / D)
    ang = pos[..., None] * inv  # (B,T,D/2)
    cos, sin = np.cos(ang)[:, :, None], np.sin(ang)[:, :, None]
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


# ---------------------------------------------------------------- DIFF-01
@pytest.mark.req("DIFF-01")
def test_lambda_init_check_values():
    c = check_values("DIFF-01")
    np.testing.assert_allclose(lambda_init(0), c["l0"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(lambda_init(1), c["l1"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(lambda_init(23), c["l23"], rtol=0, atol=1e-6)
    # the traced form used inside the scanned layers agrees
    traced = jax.jit(lambda l: lambda_init(l))(jnp.arange(24))
    np.testing.assert_allclose(np.asarray(traced), [lambda_init(i) for i in range(24)],
                               rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- DIFF-02
@pytest.mark.req("DIFF-02")
def test_lambda_parameters_shape_dtype_init(make_micro):
    c = check_values("DIFF-02")
    cfg = make_micro(head_dim=128, num_layers=16, hidden_size=32, intermediate_size=32)
    params = nnx.state(build_model(cfg, seed=0), nnx.Param)["blocks"]["attn"]
    vals = []
    for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
        p = params[name][...]
        assert p.shape == (cfg.num_layers, cfg.head_dim)  # one set per layer, no head axis
        assert p.dtype == jnp.float32
        vals.append(np.asarray(p))
    std = np.concatenate(vals).std()
    # 8192 normal(0.01) samples: the sample std is within 5% with overwhelming probability
    np.testing.assert_allclose(std, c["init_std"], rtol=0.05, atol=0)
    abstract = nnx.state(abstract_model(ModelConfig.preset("1b")), nnx.Param)
    assert abstract["blocks"]["attn"]["lambda_q1"].shape == (24, c["vector_length"])


@pytest.mark.req("DIFF-02")
@given(st.integers(0, 23), st.integers(0, 2**31 - 1), st.floats(0.001, 3.0))
def test_lambda_matches_float64_reference(layer, seed, scale):
    rng = np.random.default_rng(seed)
    vecs = [rng.normal(size=128) * scale for _ in range(4)]
    got = lambda_full(*(jnp.asarray(v, jnp.float32) for v in vecs), lambda_init(layer))
    want = ref_lambda(*vecs, lambda_init(layer))
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.req("DIFF-02")
def test_lambda_clamps():
    big, zero = jnp.full((128,), 10.0), jnp.zeros((128,))
    # lq1.lk1 = 12800 clipped to 10: exp(10) - 1 + init >> 1 -> clipped to 1
    assert float(lambda_full(big, big, zero, zero, 0.2)) == 1.0
    # lq2.lk2 huge: 1 - exp(10) + init << 0 -> clipped to 0
    assert float(lambda_full(zero, zero, big, big, 0.2)) == 0.0
    # zero vectors: exp(0) - exp(0) + init = init
    np.testing.assert_allclose(float(lambda_full(zero, zero, zero, zero, 0.355509)), 0.355509,
                               rtol=1e-6, atol=0)


# ---------------------------------------------------------------- DIFF-03
@pytest.mark.req("DIFF-03")
@given(
    b=st.integers(1, 2), t=st.integers(1, 9), d=st.sampled_from([4, 8, 16]),
    lam=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1), segmented=st.booleans(),
)
@settings(max_examples=30)
def test_differential_map_matches_float64_reference(b, t, d, lam, seed, segmented):
    """12 query / 4 key sub-heads (6 differential heads, 2 KV groups, GQA 3:1)."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, t, 12, d)) * 2
    k = rng.normal(size=(b, t, 4, d)) * 2
    v = rng.normal(size=(b, t, 2, 2 * d))
    slots = np.broadcast_to(np.arange(t), (b, t))
    seg = rng.integers(1, 3, size=(b, t)).cumsum(axis=1) if segmented else None
    # each query always sees itself, so no row is fully masked
    mask = np.asarray(attention_mask(jnp.asarray(slots), jnp.arange(t),
                                     None if seg is None else jnp.asarray(seg),
                                     None if seg is None else jnp.asarray(seg)))
    ref_mask = slots[:, None, :] <= slots[:, :, None]
    if seg is not None:
        ref_mask = ref_mask & (seg[:, :, None] == seg[:, None, :])
    np.testing.assert_array_equal(mask, ref_mask)
    got = differential_map(jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32),
                           jnp.asarray(v, jnp.float32), jnp.float32(lam), jnp.asarray(mask), 3)
    want = ref_differential_map(q, k, v, lam, ref_mask, 3)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


@pytest.mark.req("DIFF-03")
def test_floor_at_zero_is_applied():
    """With lambda = 1 and Q2 = 2 Q1 the second map is sharper, so the raw difference is
    negative at some entries; the floor must remove them (outputs would differ otherwise)."""
    rng = np.random.default_rng(0)
    q = rng.normal(size=(1, 6, 12, 8)) * 3
    q[:, :, 1::2] = 2 * q[:, :, 0::2]
    k = rng.normal(size=(1, 6, 4, 8))
    k[:, :, 1::2] = k[:, :, 0::2]
    v = np.abs(rng.normal(size=(1, 6, 2, 16)))
    mask = np.tril(np.ones((6, 6), bool))[None]
    got = np.asarray(differential_map(*(jnp.asarray(a, jnp.float32) for a in (q, k, v)),
                                      jnp.float32(1.0), jnp.asarray(mask), 3))
    np.testing.assert_allclose(got, ref_differential_map(q, k, v, 1.0, mask, 3), rtol=1e-4,
                               atol=1e-5)
    assert (got >= 0).all()  # v >= 0 and A >= 0: without the floor some outputs go negative


@pytest.mark.req("DIFF-03")
def test_blocked_equals_unblocked():
    rng = np.random.default_rng(1)
    b, t = 2, 32
    q, k = rng.normal(size=(b, t, 12, 8)), rng.normal(size=(b, t, 4, 8))
    v = rng.normal(size=(b, t, 2, 16))
    slots = jnp.broadcast_to(jnp.arange(t), (b, t))
    seg = jnp.asarray(np.repeat([[1, 2]], t // 2, axis=1).reshape(1, t).repeat(b, 0))
    args = [jnp.asarray(a, jnp.float32) for a in (q, k, v)]
    full = blocked_differential_map(*args, jnp.float32(0.4), slots, jnp.arange(t), seg, seg,
                                    gqa_ratio=3, block=t)
    blocked = blocked_differential_map(*args, jnp.float32(0.4), slots, jnp.arange(t), seg, seg,
                                       gqa_ratio=3, block=8)
    np.testing.assert_allclose(np.asarray(blocked), np.asarray(full), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- DIFF-04 (module vs reference)
@pytest.mark.req("DIFF-03", "DIFF-04", "ROPE-01", "DIFF-06")
@pytest.mark.parametrize("impl", sorted(ATTENTION_KERNELS))
@pytest.mark.parametrize("layer", [0, 5])
def test_attention_module_matches_float64_reference(make_micro, layer, impl):
    cfg = make_micro(attn_block_size=4, attention_impl=impl)
    attn = DiffAttention(cfg, rngs=nnx.Rngs(layer + 1))
    rng = np.random.default_rng(layer)
    for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
        getattr(attn, name)[...] = jnp.asarray(rng.normal(size=cfg.head_dim) * 0.3, jnp.float32)
    attn.subln.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, cfg.value_head_dim), jnp.float32)
    B, T, D = 2, 12, cfg.head_dim
    x = rng.normal(size=(B, T, cfg.hidden_size))
    pos = np.broadcast_to(np.arange(T), (B, T))
    cos, sin = rope_cos_sin(jnp.asarray(pos), cfg)
    got, _ = attn(jnp.asarray(x, jnp.float32), cos, sin, jnp.asarray(pos), None, layer)

    W = {n: np.asarray(getattr(attn, n).kernel[...], np.float64)
         for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
    q = ref_rope((x @ W["q_proj"]).reshape(B, T, 12, D), pos, cfg.rope_theta)
    k = ref_rope((x @ W["k_proj"]).reshape(B, T, 4, D), pos, cfg.rope_theta)
    v = (x @ W["v_proj"]).reshape(B, T, 2, 2 * D)
    vecs = [np.asarray(getattr(attn, n)[...], np.float64)
            for n in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")]
    lam_init = 0.8 - 0.6 * math.exp(-0.3 * layer)
    lam = ref_lambda(*vecs, lam_init)
    mask = np.broadcast_to(np.tril(np.ones((T, T), bool)), (B, T, T))
    heads = ref_differential_map(q, k, v, lam, mask, 3)
    w = np.asarray(attn.subln.scale[...], np.float64)
    normed = heads / np.sqrt(np.mean(heads**2, axis=-1, keepdims=True) + 1e-5) * w
    want = (normed * (1 - lam_init)).reshape(B, T, -1) @ W["o_proj"]
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-5)
    assert cfg.subln_eps == check_values("DIFF-04")["subln_eps"]


# ---------------------------------------------------------------- DIFF-05
def _max_leak(apply, tokens, t, vocab):
    """Largest change of the outputs at positions <= t when every token after t changes."""
    changed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 17) % vocab)
    a, b = apply(tokens), apply(changed)
    return float(jnp.max(jnp.abs(a[:, : t + 1] - b[:, : t + 1])))


def _row_leak(apply, tokens, vocab):
    """Largest change of row 0's outputs when row 1 changes."""
    changed = tokens.at[1].set((tokens[1] + 5) % vocab)
    return float(jnp.max(jnp.abs(apply(tokens)[0] - apply(changed)[0])))


@pytest.fixture(scope="module", params=IMPLS)
def tiny_with_impl(request, tiny_model, tiny_cfg):
    if request.param == "reference":
        return tiny_model
    return build_model(tiny_cfg.replace(attention_impl=request.param), seed=0)


@pytest.fixture(scope="module")
def tiny_apply(tiny_with_impl):
    gdef, state = nnx.split(tiny_with_impl)
    fn = jax.jit(lambda s, t: nnx.merge(gdef, s)(t))
    return lambda tokens, s=state: fn(s, tokens)


@pytest.mark.req("DIFF-05")
def test_causality_and_batch_independence_on_tiny(tiny_apply, tiny_cfg):
    tokens = jax.random.randint(jax.random.PRNGKey(0), (3, 64), 0, 151_643)
    tol = check_values("DIFF-05")["tolerance"]
    for t in (0, 20, 62):
        assert _max_leak(tiny_apply, tokens, t, 151_643) <= tol
    assert _row_leak(tiny_apply, tokens, 151_643) <= tol


@pytest.mark.req("DIFF-05")
def test_causality_by_gradient_on_tiny(tiny_with_impl):
    """d(logits at t)/d(embedding rows of later tokens and of other rows) is exactly 0.
    Every position holds a distinct token, so an embedding row belongs to one position."""
    B, T, t = 2, 48, 23
    tokens = jnp.arange(B * T, dtype=jnp.int32).reshape(B, T) * 7 + 11

    def f(m):
        return jnp.sum(m(tokens)[0, t] ** 2)

    grads = nnx.jit(nnx.grad(f))(tiny_with_impl)
    g_emb = np.asarray(grads["embed"]["embedding"][...])
    toks = np.asarray(tokens)
    past = np.abs(g_emb[toks[0, : t + 1]]).max()
    assert past > 0  # the gradient does flow to the visible tokens
    assert np.abs(g_emb[toks[0, t + 1:]]).max() == 0.0
    assert np.abs(g_emb[toks[1]]).max() == 0.0


@pytest.mark.req("DIFF-05")
@pytest.mark.parametrize("impl", IMPLS)
def test_negative_control_data_dependent_lambda_is_caught(micro_cfg, monkeypatch, impl):
    """The leak a public implementation shipped (queries averaged into lambda) must make
    the causality check above fail; otherwise that check could not catch the bug."""
    micro_cfg = micro_cfg.replace(attention_impl=impl)
    model = build_model(micro_cfg, seed=1)
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 16), 0, micro_cfg.vocab_size)
    gdef, state = nnx.split(model)
    honest = jax.jit(lambda s, t: nnx.merge(gdef, s)(t))
    assert _max_leak(lambda x: honest(state, x), tokens, 7, micro_cfg.vocab_size) <= 1e-6

    def leaky_version(original):
        def leaky(q, k, v, lam, *args, **kw):
            lam = jnp.clip(lam + 0.5 * jnp.tanh(jnp.mean(q)), 0.0, 1.0)  # mean over batch+time
            return original(q, k, v, lam, *args, **kw)
        return leaky

    if impl == "reference":
        monkeypatch.setattr(attention_mod, "blocked_differential_map",
                            leaky_version(attention_mod.blocked_differential_map))
    else:
        monkeypatch.setitem(attention_mod.ATTENTION_KERNELS, impl,
                            leaky_version(attention_mod.ATTENTION_KERNELS[impl]))
    leaky_fn = jax.jit(lambda s, t: nnx.merge(gdef, s)(t))
    # the DIFF-05 check (tolerance 1e-6) flags both leaks by a wide margin
    assert _max_leak(lambda x: leaky_fn(state, x), tokens, 7, micro_cfg.vocab_size) > 1e-5
    assert _row_leak(lambda x: leaky_fn(state, x), tokens, micro_cfg.vocab_size) > 1e-5


@pytest.fixture(scope="module", params=IMPLS)
def micro_param_apply(make_micro, request):
    cfg = make_micro(num_layers=2, attention_impl=request.param)
    model = build_model(cfg, seed=4)
    gdef, state = nnx.split(model)
    return cfg, state, jax.jit(lambda s, t: nnx.merge(gdef, s)(t))


@pytest.mark.req("DIFF-05")
@given(vecs=hnp.arrays(np.float64, (4, 16), elements=st.floats(-1, 1)),
       norms=hnp.arrays(np.float64, (4,), elements=st.floats(0.0, 100.0)))
def test_extreme_lambda_vectors_never_nan(micro_param_apply, vecs, norms):
    cfg, state, apply = micro_param_apply
    unit = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    scaled = unit * norms[:, None]
    state = jax.tree.map(lambda a: a, state)
    attn = state["blocks"]["attn"]
    for i, name in enumerate(("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")):
        attn[name][...] = jnp.broadcast_to(jnp.asarray(scaled[i], jnp.float32),
                                           (cfg.num_layers, cfg.head_dim))
    tokens = jnp.arange(24, dtype=jnp.int32).reshape(2, 12) % cfg.vocab_size
    out = np.asarray(apply(state, tokens))
    assert np.isfinite(out).all()
