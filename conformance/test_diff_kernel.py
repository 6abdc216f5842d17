"""DIFF-06: every registered attention implementation (the reference and the fused Pallas
kernel, which runs in interpret mode on CPU) against a float64 reference of DIFF-03,
forward and all gradients, plus negative controls showing the check rejects broken kernels.

Shapes are few and fixed (each Pallas shape costs a compile of several seconds in interpret
mode); hypothesis draws the values, lambda, segments and seeds.  Block size 8 with T = 13 and
T = 21 leaves T off the block grid and gives causally skipped tiles.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pythoncoder.model import ModelConfig, lambda_init
from pythoncoder.model.attention import ATTENTION_KERNELS, lambda_full
from pythoncoder.model.config import ConfigError
from pythoncoder.model.kernels.diff_attention import diff_attention
from pythoncoder.spec import check_values
from pythoncoder.testing.targets import target_device

BLOCK = 8
D = 8
# (batch, T, KV groups): GQA 3:1 with two groups and with one; T not a multiple of BLOCK.
# The first is the default run's; the second (three query blocks) runs with -m slow.
SHAPES = [(2, 13, 2), (1, 21, 1)]
KERNEL_NAMES = sorted(ATTENTION_KERNELS)


def _impl(name, **variant):
    """A registered implementation at test block size, or a broken kernel variant."""
    if variant:
        return functools.partial(diff_attention, block_q=BLOCK, block_k=BLOCK, interpret=True,
                                 **variant)
    if name == "pallas":  # small blocks so the tests cross tile boundaries
        return functools.partial(diff_attention, block_q=BLOCK, block_k=BLOCK, interpret=True)
    return functools.partial(ATTENTION_KERNELS[name], block=BLOCK)


# ---------------------------------------------------------------- float64 reference
def ref_lambda64(vecs, lam_init):
    d1 = jnp.clip(jnp.dot(vecs[0], vecs[1]), -10.0, 10.0)
    d2 = jnp.clip(jnp.dot(vecs[2], vecs[3]), -10.0, 10.0)
    return jnp.clip(jnp.exp(d1) - jnp.exp(d2) + lam_init, 0.0, 1.0)


def ref_attention64(q, k, v, lam, seg):
    """DIFF-03 written from its text, one differential head at a time, float64.  The floor's
    gradient at the kink (difference exactly 0) is taken as 0, as the kernel does."""
    B, T, H2, d = q.shape
    G = v.shape[2]
    ratio = (H2 // 2) // G
    mask = jnp.tril(jnp.ones((T, T), bool))[None] & (seg[:, :, None] == seg[:, None, :])

    def softmax(s):
        s = jnp.where(mask, s, -jnp.inf)
        e = jnp.where(mask, jnp.exp(s - s.max(-1, keepdims=True)), 0.0)
        return e / e.sum(-1, keepdims=True)

    outs = []
    for i in range(H2 // 2):
        g = i // ratio
        s1 = jnp.einsum("btd,bsd->bts", q[:, :, 2 * i], k[:, :, 2 * g]) / math.sqrt(d)
        s2 = jnp.einsum("btd,bsd->bts", q[:, :, 2 * i + 1], k[:, :, 2 * g + 1]) / math.sqrt(d)
        raw = softmax(s1) - lam * softmax(s2)
        a = jnp.where(raw > 0, raw, 0.0)
        outs.append(jnp.einsum("bts,bse->bte", a, v[:, :, g]))
    return jnp.stack(outs, axis=2)


# ---------------------------------------------------------------- shared check
def _data(shape, seed, segmented, *, scale=2.0):
    B, T, G = shape
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, T, 6 * G, D)) * scale
    k = rng.normal(size=(B, T, 2 * G, D)) * scale
    v = rng.normal(size=(B, T, G, 2 * D))
    if segmented:  # 1..3 segments per row, contiguous (packed documents)
        seg = np.sort(rng.integers(1, 4, size=(B, T)), axis=1)
    else:
        seg = np.ones((B, T), np.int64)
    w = rng.normal(size=(B, T, 3 * G, 2 * D))  # loss weights: L = sum(w * out)
    vecs = rng.normal(size=(4, D)) * 0.1
    return q, k, v, seg, w, vecs


@functools.cache
def _value_and_grads(impl_key, forward_only=False):
    """jit((L, out), grads) of L = sum(w * impl(q, k, v, lambda(vecs))) in fp32."""
    name, variant = impl_key
    impl = _impl(name, **dict(variant))

    def loss(q, k, v, vecs, lam_init, seg, w):
        lam = lambda_full(*vecs, lam_init)
        out = impl(q, k, v, lam, seg, gqa_ratio=3)
        return jnp.sum(out * w), out

    if forward_only:  # the negative controls fail on the output already
        return jax.jit(lambda *a: (loss(*a), None))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))


def _reference_loss(q, k, v, vecs, lam_init, seg, w):
    out = ref_attention64(q, k, v, ref_lambda64(vecs, lam_init), seg)
    return jnp.sum(out * w), out


_reference_value_and_grads = jax.jit(jax.value_and_grad(_reference_loss, argnums=(0, 1, 2, 3),
                                                        has_aux=True))


def _reference(q, k, v, vecs, lam_init, seg, w):
    with jax.enable_x64(True):
        f64 = [jnp.asarray(x, jnp.float64) for x in (q, k, v, vecs, lam_init, w)]
        (_, out), grads = _reference_value_and_grads(*f64[:5], jnp.asarray(seg), f64[5])
        return np.asarray(out), [np.asarray(g) for g in grads]


def _lam_init_for(vecs, target):
    """lambda_init that puts lambda(vecs) at ``target`` (inside [0, 1], so unclipped)."""
    d1, d2 = np.dot(vecs[0], vecs[1]), np.dot(vecs[2], vecs[3])
    return float(target - (np.exp(d1) - np.exp(d2)))


def check_against_reference(name, q, k, v, seg, w, vecs, lam_init, variant=(),
                            forward_only=False):
    """Assert out and d/d(q, k, v, lambda vectors) equal the float64 reference."""
    c = check_values("DIFF-06")
    f32 = [jnp.asarray(x, jnp.float32) for x in (q, k, v, vecs)]
    (_, out), grads = _value_and_grads((name, tuple(variant)), forward_only)(
        *f32[:3], tuple(f32[3]), jnp.float32(lam_init), jnp.asarray(seg, jnp.int32),
        jnp.asarray(w, jnp.float32))
    want_out, want_grads = _reference(q, k, v, vecs, lam_init, seg, w)
    checks = [("out", np.asarray(out), want_out)]
    if not forward_only:
        got_grads = [np.asarray(g) for g in grads[:3]] + [np.stack([np.asarray(g)
                                                                   for g in grads[3]])]
        checks += zip(("dq", "dk", "dv", "dlambda_vectors"), got_grads, want_grads,
                      strict=True)
    for what, got, want in checks:
        np.testing.assert_allclose(got, want, rtol=c["rtol"],
                                   atol=c["atol"] * max(1.0, np.abs(want).max()),
                                   err_msg=f"{name}{dict(variant)}: {what}")
    return np.asarray(out)


# ---------------------------------------------------------------- DIFF-06
LAMBDAS = st.one_of(st.floats(1e-4, 1e-2), st.floats(0.99, 0.9999), st.floats(0.05, 0.95))


@pytest.mark.req("DIFF-06", "DIFF-03")
@pytest.mark.parametrize("name", KERNEL_NAMES)
@given(seed=st.integers(0, 2**31 - 1), segmented=st.booleans(), lam=LAMBDAS)
@settings(max_examples=5)
def test_kernel_matches_float64_reference_with_gradients(name, seed, segmented, lam):
    q, k, v, seg, w, vecs = _data(SHAPES[0], seed, segmented)
    check_against_reference(name, q, k, v, seg, w, vecs, _lam_init_for(vecs, lam))


@pytest.mark.slow
@pytest.mark.req("DIFF-06", "DIFF-03")
@pytest.mark.parametrize("name", KERNEL_NAMES)
@given(shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**31 - 1), segmented=st.booleans(),
       lam=LAMBDAS)
@settings(max_examples=20)
def test_kernel_matches_float64_reference_more_shapes(name, shape, seed, segmented, lam):
    q, k, v, seg, w, vecs = _data(shape, seed, segmented)
    check_against_reference(name, q, k, v, seg, w, vecs, _lam_init_for(vecs, lam))


@pytest.mark.req("DIFF-06", "DIFF-03")
@pytest.mark.parametrize("name", KERNEL_NAMES)
@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_kernel_at_lambda_bounds_and_fully_clipped_rows(name, lam):
    """lambda = 1 exactly: a segment's first row sees only itself, so both maps are 1 there
    and the floor clips the whole row to 0 (and its gradient); lambda = 0 is plain softmax.
    The lambda vectors sit where lambda is clipped, so their gradient is 0."""
    q, k, v, seg, w, _ = _data(SHAPES[0], seed=7, segmented=True)
    vecs = np.zeros((4, D))
    lam_init = 5.0 if lam == 1.0 else -5.0
    out = check_against_reference(name, q, k, v, seg, w, vecs, lam_init)
    starts = np.concatenate([np.ones((seg.shape[0], 1), bool), seg[:, 1:] != seg[:, :-1]], 1)
    if lam == 1.0:
        assert np.all(out[starts] == 0.0)  # every head of every segment-start row
    else:
        assert np.abs(out[starts]).min() > 0


@pytest.mark.req("DIFF-06", "DIFF-03")
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_floor_clips_negative_entries(name):
    """Q2 = 2 Q1, K2 = K1, lambda near 1: the second map is sharper, so the raw difference
    is negative off the peak and the floor must remove it (DIFF-03's own floor test, per
    implementation)."""
    q, k, v, seg, w, vecs = _data(SHAPES[0], seed=3, segmented=False)
    q[:, :, 1::2] = 2 * q[:, :, 0::2]
    k[:, :, 1::2] = k[:, :, 0::2]
    v = np.abs(v)
    out = check_against_reference(name, q, k, v, seg, w, vecs, _lam_init_for(vecs, 0.98))
    assert (out >= 0).all()


# ---------------------------------------------------------------- negative controls
@pytest.mark.req("DIFF-06")
@pytest.mark.parametrize("variant,what", [
    ((("floor", False),), "no floor"),
    ((("causal", False),), "sees future keys"),
])
def test_check_rejects_broken_kernels(variant, what):
    """The same check, on a kernel without the floor and on one without the causal mask,
    must fail: otherwise the equivalence tests above could not catch those bugs."""
    q, k, v, seg, w, vecs = _data(SHAPES[0], seed=3, segmented=True)
    q[:, :, 1::2] = 2 * q[:, :, 0::2]  # make the floor bite (see the test above)
    k[:, :, 1::2] = k[:, :, 0::2]
    lam_init = _lam_init_for(vecs, 0.98)
    check_against_reference("pallas", q, k, v, seg, w, vecs, lam_init)  # the real one passes
    with pytest.raises(AssertionError, match="out"):
        check_against_reference("pallas", q, k, v, seg, w, vecs, lam_init, variant=variant,
                                forward_only=True)


# ---------------------------------------------------------------- the seam
@pytest.mark.req("DIFF-06")
def test_attention_impl_setting():
    assert ModelConfig.preset("tiny").attention_impl == "auto"
    cfg = ModelConfig.preset("tiny")
    assert cfg.resolved_attention_impl("cpu") == "reference"
    assert cfg.resolved_attention_impl("gpu") == "pallas"
    assert cfg.resolved_attention_impl("tpu") == "pallas"
    assert cfg.replace(attention_impl="pallas").resolved_attention_impl("cpu") == "pallas"
    assert cfg.replace(attention_impl="reference").resolved_attention_impl("tpu") == "reference"
    with pytest.raises(ConfigError, match="attention_impl.*'auto', 'reference', 'pallas'"):
        ModelConfig.preset("tiny", attention_impl="cudnn")
    assert set(ATTENTION_KERNELS) == {"reference", "pallas"}
    assert lambda_init(0) == pytest.approx(0.2)


@pytest.mark.req("DIFF-06")
def test_kernel_lowers_through_triton_for_cuda():
    """No GPU needed: the forward and both backward kernels lower to Triton calls for CUDA
    at a 1b head shape, traced for a deviceless H100 (jax 0.12 lowers Triton only for a GPU
    device or an abstract one; ``tests/targets`` compiles them for every named target)."""
    device = target_device("h100")
    B, T = 1, 256
    q = jax.ShapeDtypeStruct((B, T, 12, 128), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((B, T, 4, 128), jnp.bfloat16)
    v = jax.ShapeDtypeStruct((B, T, 2, 256), jnp.bfloat16)
    seg = jax.ShapeDtypeStruct((B, T), jnp.int32)

    def fwd_bwd(q, k, v, lam, seg):
        out, vjp = jax.vjp(lambda q, k, v, lam: diff_attention(
            q, k, v, lam, seg, gqa_ratio=3), q, k, v, lam)
        return out, vjp(out)

    with jax.default_device(device):
        lowered = jax.jit(fwd_bwd).trace(q, k, v, jax.ShapeDtypeStruct((), jnp.float32), seg)
        text = lowered.lower(lowering_platforms=("cuda",)).as_text()
    names = ("diff_attention_fwd", "diff_attention_bwd_q", "diff_attention_bwd_kv")
    assert text.count("triton") >= 3 and all(n in text for n in names)


@pytest.mark.req("DIFF-06b")
def test_kernel_sized_for_the_h100_compiles_and_the_old_tiling_is_refused():
    """The forward kernel at 1b shapes (8 x 2048) compiles for a deviceless H100 with the
    tiling sized for it; the old fixed 128 x 128 / 8 warps / 2 stages (the negative
    control) is refused by the same compiler for want of shared memory.  Every kernel and
    every named target: ``tests/targets``."""
    from pythoncoder import targets
    from pythoncoder.model.kernels.diff_attention import KernelConfig, gpu_configs, smem_estimate

    checks = check_values("DIFF-06b")
    for name in ("h100", "a100", "l4"):
        assert (targets.TARGETS[name].gpu["shared_memory_per_block_optin"]
                == checks[f"{name}_smem_per_block"])
    device = target_device("h100")
    S = jax.ShapeDtypeStruct
    args = (S((8, 2048, 12, 128), jnp.bfloat16), S((8, 2048, 4, 128), jnp.bfloat16),
            S((8, 2048, 2, 256), jnp.bfloat16), S((), jnp.float32), S((8, 2048), jnp.int32))

    def compile_fwd(**kw):
        with jax.default_device(device):
            return jax.jit(functools.partial(diff_attention, gqa_ratio=3, **kw)).lower(
                *args).compile()

    limits = targets.gpu_limits(device)
    assert limits.smem_per_block == checks["h100_smem_per_block"]
    sized = gpu_configs(128, 256, 2, limits)["fwd"]
    assert smem_estimate("fwd", sized, 128, 256) <= limits.smem_per_block
    assert "diff_attention_fwd" in compile_fwd().as_text()
    old = KernelConfig(128, 128, 8, 2)
    with pytest.raises(Exception, match=r"Shared memory size limit exceeded.*available: 232448"):
        compile_fwd(config=old)

