"""ARCH-01..07: dimensions, alignment, parameter count, block structure, GQA, scan, remat.

The real ``1b`` preset is only ever built abstractly (``nnx.eval_shape``)."""

import contextlib
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pythoncoder.cli import main as cli_main
from pythoncoder.model import ConfigError, ModelConfig, abstract_model, build_model, lm_loss
from pythoncoder.model.layers import RMSNorm, SwiGLU
from pythoncoder.model.params import model_info, param_breakdown
from pythoncoder.spec import check_values


@pytest.fixture(scope="module")
def cfg_1b():
    return ModelConfig.preset("1b")


@pytest.mark.req("ARCH-01")
def test_1b_dimensions_match_spec(cfg_1b):
    for field, value in check_values("ARCH-01").items():
        assert getattr(cfg_1b, field) == value, field
    # and the abstract parameters really have those shapes
    state = nnx.state(abstract_model(cfg_1b), nnx.Param)
    assert state["embed"]["embedding"].shape == (151_808, 1536)
    attn = state["blocks"]["attn"]
    assert attn["q_proj"]["kernel"].shape == (24, 1536, 12 * 128)
    assert attn["k_proj"]["kernel"].shape == (24, 1536, 4 * 128)
    assert attn["v_proj"]["kernel"].shape == (24, 1536, 4 * 128)
    assert attn["o_proj"]["kernel"].shape == (24, 1536, 1536)
    assert state["blocks"]["mlp"]["gate"]["kernel"].shape == (24, 1536, 4096)
    assert state["lm_head"]["kernel"].shape == (1536, 151_808)


@pytest.mark.req("ARCH-02")
def test_1b_is_256_aligned(cfg_1b):
    c = check_values("ARCH-02")
    assert cfg_1b.tpu_aligned
    assert cfg_1b.q_width == c["q_projection_width"]
    assert cfg_1b.kv_width == c["kv_projection_width"]
    for width in (cfg_1b.hidden_size, cfg_1b.intermediate_size, cfg_1b.vocab_size,
                  cfg_1b.q_width, cfg_1b.kv_width):
        assert width % c["alignment"] == 0


@pytest.mark.req("ARCH-02")
@pytest.mark.parametrize("overrides,field", [
    (dict(hidden_size=1500), "hidden_size"),
    (dict(intermediate_size=4000), "intermediate_size"),
    (dict(vocab_size=151_665), "vocab_size"),
    # q width 18*64 = 1152 (k/v width 384 is checked after it)
    (dict(head_dim=64, num_q_subheads=18, num_kv_subheads=6), "q-projection width"),
    # q width 16*96 = 1536 is aligned; k/v width 4*96 = 384 is not
    (dict(head_dim=96, num_q_subheads=16), "k/v-projection width"),
])
def test_misaligned_tpu_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig.preset("1b", **overrides)


@pytest.mark.req("ARCH-02")
def test_cpu_presets_opt_out_explicitly():
    tiny = ModelConfig.preset("tiny")
    assert tiny.tpu_aligned is False
    with pytest.raises(ConfigError, match="hidden_size"):
        ModelConfig.preset("tiny", tpu_aligned=True)
    assert ModelConfig.preset("small").tpu_aligned  # small is aligned


@pytest.mark.req("ARCH-02")
@pytest.mark.parametrize("overrides,field", [
    (dict(head_dim=15), "head_dim"), (dict(dropout_rate=1.5), "dropout_rate"),
    (dict(remat_policy="everything"), "remat_policy"), (dict(num_layers=0), "num_layers"),
    (dict(attention_impl="flash"), "attention_impl"),
])
def test_bad_configs_raise_clear_errors(overrides, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig.preset("tiny", **overrides)
    with pytest.raises(ConfigError, match="unknown preset"):
        ModelConfig.preset("2b")


@pytest.mark.req("ARCH-03")
def test_exact_parameter_count_and_breakdown(cfg_1b):
    c = check_values("ARCH-03")
    b = param_breakdown(cfg_1b)
    L = cfg_1b.num_layers
    assert b["embedding"] == c["embedding"]
    assert b["lm_head"] == c["lm_head"]
    assert b["final_norm"] == c["final_norm"]
    assert b["mtp"] == c["mtp"]
    assert b["layers.attention"] == c["attention"] * L
    assert b["layers.mlp"] == c["mlp"] * L
    assert b["layers.norms"] == c["layer_norms"] * L
    assert b["layers.lambda_vectors"] == c["lambda_vectors"] * L
    assert b["layers.subln"] == c["subln"] * L
    layers = sum(v for k, v in b.items() if k.startswith("layers."))
    assert layers == c["layers_total"] == c["per_layer"] * L
    assert sum(b.values()) == c["total"]


@pytest.mark.req("ARCH-03")
def test_count_is_abstract(cfg_1b):
    leaves = jax.tree.leaves(nnx.state(abstract_model(cfg_1b), nnx.Param))
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)


@pytest.mark.req("ARCH-03", "ARCH-05")
def test_info_cli_json():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli_main(["info", "--preset", "1b", "--json"]) == 0
    info = json.loads(buf.getvalue())
    c = check_values("ARCH-03")
    assert info["param_count"] == c["total"]
    assert info["param_count_human"] == c["human"]
    assert info["breakdown"]["per_layer"]["total"] == c["per_layer"]
    assert info["kv_values_per_token_per_layer"] == 1024
    assert info["dimensions"]["hidden_size"] == 1536
    assert info == model_info(ModelConfig.preset("1b"))


@pytest.mark.req("ARCH-04")
def test_rmsnorm_fp32_against_float64_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 64)).astype(np.float32) * 3
    norm = RMSNorm(64, eps=1e-6)
    w = rng.normal(size=(64,)).astype(np.float32)
    norm.scale[...] = jnp.asarray(w)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt(np.mean(x64**2, axis=-1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(np.asarray(norm(jnp.asarray(x))), ref, rtol=1e-5, atol=1e-6)
    # Inputs so small that eps is most of the denominator: eps must sit inside the square
    # root (eps outside it would give outputs ~10x larger here), and a zero row stays 0.
    tiny = (rng.normal(size=(3, 64)) * 1e-4).astype(np.float32)
    tiny[2] = 0.0
    t64 = tiny.astype(np.float64)
    ref_tiny = t64 / np.sqrt(np.mean(t64**2, axis=-1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(np.asarray(norm(jnp.asarray(tiny))), ref_tiny, rtol=1e-5,
                               atol=1e-7)
    # bf16 input: computed in fp32, returned in bf16, within bf16 rounding of the reference
    y = norm(jnp.asarray(x, jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    xb = np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), np.float64)
    refb = xb / np.sqrt(np.mean(xb**2, axis=-1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(np.asarray(y.astype(jnp.float32)), refb, rtol=1e-2, atol=1e-2)
    assert ModelConfig.preset("1b").rms_eps == check_values("ARCH-04")["rms_eps"]


@pytest.mark.req("ARCH-04")
def test_swiglu_against_float64_reference():
    mlp = SwiGLU(32, 48, dtype=jnp.float32, std=0.2, rngs=nnx.Rngs(0))
    x = np.random.default_rng(1).normal(size=(3, 32))
    g, u, d = (np.asarray(m.kernel[...], np.float64) for m in (mlp.gate, mlp.up, mlp.down))
    a = x @ g
    ref = ((a / (1 + np.exp(-a))) * (x @ u)) @ d
    np.testing.assert_allclose(np.asarray(mlp(jnp.asarray(x, jnp.float32))), ref,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.req("ARCH-04")
def test_no_biases_anywhere(cfg_1b):
    paths = [jax.tree_util.keystr(p) for p, _ in
             jax.tree_util.tree_leaves_with_path(nnx.state(abstract_model(cfg_1b), nnx.Param))]
    assert paths and not [p for p in paths if "bias" in p]


@pytest.mark.req("ARCH-04")
def test_block_is_prenorm_residual(make_micro):
    """Block output == x + attn(norm1(x)) then + mlp(norm2(.)), with the model's own parts."""
    cfg = make_micro(num_layers=1)
    model = build_model(cfg, seed=3)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, cfg.hidden_size))
    graphdef, state = nnx.split(model.blocks)
    block = nnx.merge(graphdef, jax.tree.map(lambda a: a[0], state))
    from pythoncoder.model.rope import rope_cos_sin
    pos = jnp.broadcast_to(jnp.arange(8), (2, 8))
    cos, sin = rope_cos_sin(pos, cfg)
    out, _ = block(x, cos, sin, pos, None, 0, jax.random.PRNGKey(0), True)
    a, _ = block.attn(block.attn_norm(x), cos, sin, pos, None, 0)
    h = x + a
    ref = h + block.mlp(block.mlp_norm(h))
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6, atol=1e-6)


@pytest.mark.req("ARCH-05")
def test_gqa_cache_layout(cfg_1b):
    c = check_values("ARCH-05")
    assert cfg_1b.gqa_ratio == c["gqa_ratio"]
    model = abstract_model(cfg_1b)
    cache = jax.eval_shape(lambda: model.init_cache(1, 16))
    L, B, S = 24, 1, 16
    assert cache.k.shape == (L, B, S, 4, 128)
    assert cache.v.shape == (L, B, S, 2, 256)
    per_token_layer = (np.prod(cache.k.shape[3:]) + np.prod(cache.v.shape[3:]))
    assert per_token_layer == c["kv_values_per_token_per_layer"] == 1024


def _loss_and_grads(model, tokens):
    def f(m):
        return lm_loss(m, tokens[:, :-1], tokens[:, 1:]).total

    return nnx.jit(nnx.value_and_grad(f))(model)


@pytest.mark.req("ARCH-06")
def test_scan_equals_unrolled_loop(make_micro):
    cfg = make_micro()
    tokens = jax.random.randint(jax.random.PRNGKey(5), (2, 17), 0, cfg.vocab_size)
    scanned = build_model(cfg, seed=7)
    unrolled = build_model(cfg.replace(scan_layers=False), seed=7)
    l1, g1 = _loss_and_grads(scanned, tokens)
    l2, g2 = _loss_and_grads(unrolled, tokens)
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


@pytest.mark.req("ARCH-06")
def test_scan_keeps_one_layer_in_the_program(make_micro):
    """Compile cost stays flat: the scanned HLO does not grow with depth."""
    sizes = []
    for layers in (2, 8):
        cfg = make_micro(num_layers=layers)
        model = abstract_model(cfg)
        gdef, state = nnx.split(model)
        tokens = jax.ShapeDtypeStruct((1, 16), jnp.int32)
        fn = jax.jit(lambda s, t, gdef=gdef: nnx.merge(gdef, s)(t))
        sizes.append(len(fn.lower(state, tokens).as_text()))
    assert sizes[1] < sizes[0] * 1.1


@pytest.mark.req("ARCH-06")
@pytest.mark.parametrize("policy", ["full", "dots", "names"])
def test_remat_equals_no_remat(make_micro, policy):
    cfg = make_micro()
    tokens = jax.random.randint(jax.random.PRNGKey(6), (2, 17), 0, cfg.vocab_size)
    l0, g0 = _loss_and_grads(build_model(cfg, seed=9), tokens)
    l1, g1 = _loss_and_grads(build_model(cfg.replace(remat_policy=policy), seed=9), tokens)
    # NUM-02: remat recomputes the forward, and fusion may reorder its fp32 sums (seen:
    # 2e-6 on a GPU), so gradients agree to fp32 accumulation error relative to each
    # tensor's size, not bit for bit.
    np.testing.assert_allclose(float(l0), float(l1), rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))
