"""MTP-01/02 and ARCH-07: the multi-token-prediction module, its loss, and the chunked CE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pythoncoder.model import build_model, lm_loss, param_breakdown
from pythoncoder.model.loss import chunked_cross_entropy
from pythoncoder.spec import check_values


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps) * w


def _ce(logits, labels):
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    return lse - np.take_along_axis(logits, labels[..., None], -1)[..., 0]


@pytest.fixture(scope="module")
def setup(make_micro):
    cfg = make_micro(loss_chunk_size=7)  # 7 does not divide B*T: exercises the padding
    model = build_model(cfg, seed=11)
    rows = jax.random.randint(jax.random.PRNGKey(3), (2, 13), 0, cfg.vocab_size)
    return cfg, model, rows[:, :-1], rows[:, 1:]


def _reference_losses(model, cfg, inputs, labels):
    """Float64 naive losses from the model's own hidden states and weights."""
    h, _ = model.hidden_states(inputs)
    h = np.asarray(h, np.float64)
    W = np.asarray(model.lm_head.kernel[...], np.float64)
    fn = np.asarray(model.final_norm.scale[...], np.float64)
    main = _ce(_rms(h, fn, cfg.rms_eps) @ W, np.asarray(labels))
    emb = np.asarray(model.embed.embedding[...], np.float64)[np.asarray(labels)]
    mtp = model.mtp
    cat = np.concatenate([_rms(emb, np.asarray(mtp.emb_norm.scale[...], np.float64), cfg.rms_eps),
                          _rms(h, np.asarray(mtp.hidden_norm.scale[...], np.float64),
                               cfg.rms_eps)], -1)
    hm = _rms(cat @ np.asarray(mtp.proj.kernel[...], np.float64),
              np.asarray(mtp.out_norm.scale[...], np.float64), cfg.rms_eps)
    mtp_logits = hm @ W
    # position t predicts labels[t+1] (= token t+2); the last position has no target
    mtp_ce = _ce(mtp_logits[:, :-1], np.asarray(labels)[:, 1:])
    return main, mtp_ce, mtp_logits


@pytest.mark.req("MTP-01")
def test_mtp_logits_shape_and_composition(setup):
    cfg, model, inputs, labels = setup
    h, _ = model.hidden_states(inputs)
    got = model.mtp_logits(h, labels)
    assert got.shape == (2, 12, cfg.vocab_size) and got.dtype == jnp.float32
    _, _, want = _reference_losses(model, cfg, inputs, labels)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
    assert model.mtp.proj.kernel.shape == (2 * cfg.hidden_size, cfg.hidden_size)


@pytest.mark.req("MTP-01")
@pytest.mark.parametrize("weight", [None, 0.5])
def test_loss_alignment_and_weighting(setup, weight):
    cfg, model, inputs, labels = setup
    parts = lm_loss(model, inputs, labels, mtp_weight=weight)
    main, mtp_ce, _ = _reference_losses(model, cfg, inputs, labels)
    np.testing.assert_allclose(float(parts.main), main.mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(parts.mtp), mtp_ce.mean(), rtol=1e-5, atol=1e-6)
    assert float(parts.mtp_count) == 2 * 11
    w = check_values("MTP-01")["mtp_weight"] if weight is None else weight
    np.testing.assert_allclose(float(parts.total), main.mean() + w * mtp_ce.mean(), rtol=1e-5,
                               atol=1e-6)
    # a shifted (wrong) alignment gives a different MTP loss: the check above can fail
    wrong = _ce(np.asarray(model.mtp_logits(model.hidden_states(inputs)[0], labels),
                           np.float64)[:, :-1], np.asarray(labels)[:, :-1]).mean()
    assert abs(wrong - float(parts.mtp)) > 1e-3


@pytest.mark.req("MTP-01")
def test_1b_mtp_dimensions():
    from pythoncoder.model import ModelConfig
    c = check_values("MTP-01")
    b = param_breakdown(ModelConfig.preset("1b"))
    assert b["mtp"] == c["projection_in"] * c["projection_out"] + 3 * 1536 == 4_723_200


@pytest.mark.req("MTP-02")
def test_untied_embedding_and_head_shared_with_mtp(setup):
    cfg, model, inputs, labels = setup
    emb, head = model.embed.embedding[...], model.lm_head.kernel[...]
    assert emb.shape == (cfg.vocab_size, cfg.hidden_size)
    assert head.shape == (cfg.hidden_size, cfg.vocab_size)
    assert not np.allclose(np.asarray(emb), np.asarray(head).T, rtol=0, atol=1e-3)  # untied
    mtp_params = nnx.state(model.mtp, nnx.Param)
    names = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(mtp_params)}
    assert not [n for n in names if "embed" in n or "lm_head" in n]  # no copies of its own

    def mtp_only(m):
        return lm_loss(m, inputs, labels, mtp_weight=1.0).mtp

    g = nnx.grad(mtp_only)(model)
    # the MTP loss reaches the shared embedding (through emb(t+1)) and the shared head
    used = np.unique(np.asarray(labels))
    assert np.abs(np.asarray(g["embed"]["embedding"][...])[used]).max() > 0
    assert np.abs(np.asarray(g["lm_head"]["kernel"][...])).max() > 0


@pytest.mark.req("ARCH-07")
def test_chunked_ce_equals_full_logits_float64():
    rng = np.random.default_rng(0)
    n, d, v = 50, 16, 300
    x, w = rng.normal(size=(n, d)), rng.normal(size=(d, v)) * 0.5
    y = rng.integers(0, v, size=n)
    wt = rng.integers(0, 2, size=n).astype(np.float64)
    want = (_ce(x @ w, y) * wt).sum()
    for chunk in (7, 16, 50, 64):
        got = chunked_cross_entropy(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
                                    jnp.asarray(y), jnp.asarray(wt, jnp.float32), chunk)
        np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-4)


@pytest.mark.req("ARCH-07")
def test_chunked_ce_gradient_equals_full(make_micro):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(20, 8)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(8, 40)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 40, size=20))
    ones = jnp.ones((20,), jnp.float32)

    def full(x, w):
        logits = x @ w
        return jnp.sum(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None],
                                                                             -1)[:, 0])

    g_full = jax.grad(full, argnums=(0, 1))(x, w)
    g_chunk = jax.grad(lambda x, w: chunked_cross_entropy(x, w, y, ones, 6), argnums=(0, 1))(x, w)
    for a, b in zip(g_full, g_chunk, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


@pytest.mark.req("ARCH-07")
@pytest.mark.parametrize("stats", ["xla", "pallas"])
@pytest.mark.parametrize("n,v,chunk", [(20, 40, 64), (50, 300, 16), (37, 1000, 10)],
                         ids=["one-chunk", "chunks", "ragged-vocab-blocks"])
def test_chunked_ce_value_and_gradient_at_a_non_unit_cotangent(stats, n, v, chunk):
    """Both ways of forming the rows' statistics (``xla``: fp32 logits per chunk;
    ``pallas``: the fused kernel, interpreted here, never writing them) and the backward
    (over vocabulary blocks, the last one partly padding) against a float64 reference: the
    value, and the gradients of ``c * loss`` for a cotangent ``c`` that is not 1 (a
    backward that ignored its cotangent would return the ``c = 1`` gradients), with
    per-row weights, some zero."""
    rng = np.random.default_rng(n + v)
    x, w = rng.normal(size=(n, 16)), rng.normal(size=(16, v)) * 0.5
    y = rng.integers(0, v, size=n)
    wt = rng.integers(0, 3, size=n).astype(np.float64)
    c = 0.37

    def ref(x, w):
        logits = x @ w
        top = logits.max(1, keepdims=True)
        lse = np.log(np.exp(logits - top).sum(1)) + top[:, 0]
        p = np.exp(logits - lse[:, None])
        d = (p - np.eye(v)[y]) * wt[:, None] * c
        return ((lse - logits[np.arange(n), y]) * wt).sum(), d @ w.T, x.T @ d

    want, dx, dw = ref(x, w)

    def loss(x, w):
        return chunked_cross_entropy(x, w, jnp.asarray(y), jnp.asarray(wt, jnp.float32), chunk,
                                     stats=stats)

    args = (jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
    np.testing.assert_allclose(float(loss(*args)), want, rtol=1e-5, atol=1e-4)
    gx, gw = jax.grad(lambda x, w: c * loss(x, w), argnums=(0, 1))(*args)
    np.testing.assert_allclose(np.asarray(gx), dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gw), dw, rtol=1e-4, atol=1e-5)
    # control: the unit-cotangent gradient is a different answer
    assert not np.allclose(dx / c, dx, rtol=1e-3, atol=1e-5)


@pytest.mark.req("ARCH-07")
def test_chunked_ce_rejects_an_unknown_statistics_path():
    x = jnp.zeros((4, 8), jnp.float32)
    with pytest.raises(ValueError, match="stats must be"):
        chunked_cross_entropy(x, jnp.zeros((8, 16)), jnp.zeros(4, jnp.int32), jnp.ones(4), 4,
                              stats="cuda")
