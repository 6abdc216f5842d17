"""DROP-01 (model side) and NUM-01: dropout policy and the bf16/fp32 dtype policy."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pythoncoder.model import ModelConfig, build_model, lm_loss
from pythoncoder.spec import check_values


@pytest.fixture(scope="module")
def model_and_rows(make_micro):
    cfg = make_micro()
    model = build_model(cfg, seed=2)
    rows = jax.random.randint(jax.random.PRNGKey(8), (2, 17), 0, cfg.vocab_size)
    return model, rows[:, :-1], rows[:, 1:]


@pytest.mark.req("DROP-01")
def test_dropout_rate_and_default_deterministic(model_and_rows):
    assert ModelConfig.preset("1b").dropout_rate == check_values("DROP-01")["rate"]
    model, x, _ = model_and_rows
    a, b = model(x), model(x)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(model(x, deterministic=True)))


@pytest.mark.req("DROP-01")
def test_dropout_active_when_not_deterministic(model_and_rows):
    model, x, y = model_and_rows
    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)

    def loss(key, det=False):
        return float(lm_loss(model, x, y, deterministic=det, dropout_key=key).total)

    assert loss(k1) != loss(k2)  # two dropout keys, two losses
    assert loss(k1) == loss(k1)  # the key fully determines the mask
    assert loss(k1, det=True) == loss(k2, det=True)  # evaluation ignores the key
    assert loss(k1) != loss(k1, det=True)
    with pytest.raises(ValueError, match="dropout_key"):
        model(x, deterministic=False)


@pytest.mark.req("DROP-01")
@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
def test_dropout_with_backend_prng(make_micro, model_and_rows, impl):
    """ModelConfig.dropout_rng (issue 11): the cheaper bit generators keep the dropout
    contract: the caller's key fully determines the mask, two keys give two masks."""
    _, x, y = model_and_rows
    model = build_model(make_micro(dropout_rng=impl), seed=2)

    def loss(key, det=False):
        return float(lm_loss(model, x, y, deterministic=det, dropout_key=key).total)

    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    assert loss(k1) == loss(k1)
    assert loss(k1) != loss(k2)
    assert loss(k1) != loss(k1, det=True)
    cfg = ModelConfig.preset("tiny")
    assert cfg.dropout_rng == "auto"
    assert cfg.resolved_dropout_rng("cpu") == "threefry"
    assert cfg.resolved_dropout_rng("gpu") == cfg.resolved_dropout_rng("tpu") == "rbg"
    with pytest.raises(ValueError, match="dropout_rng"):
        ModelConfig.preset("tiny", dropout_rng="philox")


@pytest.mark.req("DROP-01")
def test_dropout_sits_on_both_branches(make_micro, model_and_rows):
    """p=0 and deterministic give identical outputs; p>0 changes the output even when the
    attention branch alone, or the MLP branch alone, is live (the other zeroed)."""
    _, x, _ = model_and_rows
    cfg = make_micro(dropout_rate=0.0)
    model = build_model(cfg, seed=2)
    key = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(np.asarray(model(x, deterministic=False, dropout_key=key)),
                                  np.asarray(model(x)))
    for dead in ("mlp", "attn"):
        m = build_model(make_micro(dropout_rate=0.5), seed=2)
        branch = getattr(m.blocks, dead)
        out_proj = branch.down if dead == "mlp" else branch.o_proj
        out_proj.kernel[...] = jnp.zeros_like(out_proj.kernel[...])
        live = np.asarray(m(x, deterministic=False, dropout_key=key))
        assert not np.allclose(live, np.asarray(m(x)), rtol=1e-6, atol=1e-6), dead


@pytest.mark.req("NUM-01")
def test_bf16_compute_fp32_params_logits_loss(make_micro):
    cfg = make_micro(compute_dtype="bfloat16")
    model = build_model(cfg, seed=0)
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert params and all(p.dtype == jnp.float32 for p in params)  # fp32 masters
    x = jnp.arange(16, dtype=jnp.int32).reshape(1, 16)
    h, _ = model.hidden_states(x)
    assert h.dtype == jnp.bfloat16  # activations in the compute dtype
    assert model.blocks.attn.q_proj.dtype == jnp.bfloat16
    assert model.logits(h).dtype == jnp.float32
    assert model.mtp_logits(h, x).dtype == jnp.float32
    loss = lm_loss(model, x, x)
    assert loss.total.dtype == jnp.float32 and np.isfinite(float(loss.total))
    # The traced program really multiplies in bf16 and takes the softmax in fp32.
    gdef, state = nnx.split(model)
    jaxpr = str(jax.make_jaxpr(lambda s, t: nnx.merge(gdef, s)(t))(state, x))
    assert "bf16" in jaxpr and "dot_general" in jaxpr
    # bf16 compute stays close to the fp32 model with the same parameters
    ref = build_model(make_micro(compute_dtype="float32"), seed=0)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(ref(x)), rtol=0, atol=0.1)


@pytest.mark.req("NUM-01")
def test_auto_compute_dtype_by_backend():
    cfg = ModelConfig.preset("tiny")
    assert cfg.compute_dtype == "auto"
    want = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    assert cfg.dtype() == want
    assert ModelConfig.preset("tiny", compute_dtype="bfloat16").dtype() == jnp.bfloat16


# ---------------------------------------------------------------- NUM-02 test policy
def _round_to_tf32(x: np.ndarray) -> np.ndarray:
    """Round float32 to TF32 (10 explicit mantissa bits, round to nearest), as a GPU's
    default fp32 matmul does with its inputs."""
    drop = 23 - check_values("NUM-02")["tf32_mantissa_bits"]
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + (1 << (drop - 1))) & ~np.uint64((1 << drop) - 1)
    return u.astype(np.uint32).view(np.float32)


@pytest.mark.req("NUM-02")
def test_reference_checks_run_at_highest_matmul_precision():
    from pythoncoder.testing.precision import cuda_backend_installed

    assert jax.config.jax_default_matmul_precision == check_values("NUM-02")["matmul_precision"]
    if cuda_backend_installed():
        flags = os.environ.get("XLA_FLAGS", "")
        assert "deterministic_ops" in flags, f"no deterministic-ops flag in {flags!r}"


@pytest.mark.req("NUM-02")
def test_fp32_reference_tolerance_rejects_tf32_matmuls():
    """Why the policy exists: the SwiGLU reference check's tolerance passes fp32 and fails
    when the matmul inputs carry TF32's 10-bit mantissa (a GPU's default fp32 matmul). The
    CPU ignores matmul precision settings, so TF32 is emulated by rounding the inputs."""
    from pythoncoder.model.layers import SwiGLU

    mlp = SwiGLU(32, 48, dtype=jnp.float32, std=0.2, rngs=nnx.Rngs(0))
    x = np.random.default_rng(1).normal(size=(3, 32)).astype(np.float32)
    g, u, d = (np.asarray(m.kernel[...], np.float64) for m in (mlp.gate, mlp.up, mlp.down))
    a = x.astype(np.float64) @ g
    want = ((a / (1 + np.exp(-a))) * (x @ u)) @ d
    np.testing.assert_allclose(np.asarray(mlp(jnp.asarray(x))), want, rtol=1e-4, atol=1e-5)
    for m in (mlp.gate, mlp.up, mlp.down):
        m.kernel[...] = jnp.asarray(_round_to_tf32(np.asarray(m.kernel[...])))
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(np.asarray(mlp(jnp.asarray(_round_to_tf32(x)))), want,
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.req("NUM-02")
def test_gpu_determinism_flag_is_known_to_this_xla():
    """The flag the suites add on GPU is one this jaxlib's XLA parses (XLA_FLAGS are parsed
    by the same code on every backend; an unknown one aborts the process)."""
    from pythoncoder.testing.precision import GPU_DETERMINISM_FLAGS, accepted_xla_flag

    assert accepted_xla_flag() in GPU_DETERMINISM_FLAGS
    assert accepted_xla_flag(("--xla_no_such_flag_for_pythoncoder=true",)) is None
