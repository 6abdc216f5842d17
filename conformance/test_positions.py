"""ROPE-01 and YARN-01: rotate-half RoPE with theta 500k; YaRN for 8192-token inference."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pythoncoder.model import ModelConfig
from pythoncoder.model.rope import (
    apply_rope,
    inv_frequencies,
    rope_cos_sin,
    yarn_attention_factor,
    yarn_correction_range,
    yarn_ramp,
)
from pythoncoder.spec import check_values


def _rotate(x, pos, cfg):
    """RoPE on a single (head_dim,) vector at one position, through the model's code."""
    cos, sin = rope_cos_sin(jnp.asarray([[pos]]), cfg)
    return np.asarray(apply_rope(jnp.asarray(x, jnp.float32)[None, None, None], cos, sin))[0, 0, 0]


@pytest.fixture(scope="module")
def cfg():
    return ModelConfig.preset("1b", compute_dtype="float32")


@pytest.mark.req("ROPE-01")
def test_theta_and_frequencies(cfg):
    assert cfg.rope_theta == check_values("ROPE-01")["theta"]
    d = cfg.head_dim
    want = 500_000.0 ** (-np.arange(0, d, 2) / d)
    np.testing.assert_allclose(inv_frequencies(cfg), want, rtol=1e-12, atol=0)
    assert not cfg.yarn  # training config: plain RoPE


@pytest.mark.req("ROPE-01")
@given(m=st.integers(0, 2047), n=st.integers(0, 2047), shift=st.integers(0, 4096),
       seed=st.integers(0, 2**31 - 1))
def test_rotation_is_relative_and_norm_preserving(cfg, m, n, shift, seed):
    rng = np.random.default_rng(seed)
    q, k = rng.normal(size=128), rng.normal(size=128)
    qm, kn = _rotate(q, m, cfg), _rotate(k, n, cfg)
    # <R_m q, R_n k> depends on m - n only
    np.testing.assert_allclose(np.dot(qm, kn),
                               np.dot(_rotate(q, m + shift, cfg), _rotate(k, n + shift, cfg)),
                               rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(qm), np.linalg.norm(q), rtol=1e-5, atol=0)


@pytest.mark.req("ROPE-01")
def test_rotate_half_pairs_dim_i_with_i_plus_half(cfg):
    """Float64 reference: pair (i, i+64) rotates by angle pos * theta_i."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3, 128))
    pos = np.arange(10).reshape(2, 5) * 37
    cos, sin = rope_cos_sin(jnp.asarray(pos), cfg)
    got = np.asarray(apply_rope(jnp.asarray(x, jnp.float32), cos, sin))
    ang = pos[..., None, None] * inv_frequencies(cfg)  # (2,5,1,64)
    a, b = x[..., :64], x[..., 64:]
    want = np.concatenate([a * np.cos(ang) - b * np.sin(ang), b * np.cos(ang) + a * np.sin(ang)],
                          axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.req("YARN-01")
def test_yarn_check_values(cfg):
    c = check_values("YARN-01")
    y = cfg.with_yarn()
    assert (y.yarn_factor, y.yarn_original_max_position) == (c["factor"],
                                                            c["original_max_position"])
    assert (y.yarn_beta_fast, y.yarn_beta_slow) == (c["beta_fast"], c["beta_slow"])
    assert yarn_correction_range(y) == (c["low"], c["high"])
    ramp = yarn_ramp(y)
    np.testing.assert_allclose(ramp[20], c["ramp_at_20"], rtol=0, atol=1e-12)
    theta = inv_frequencies(cfg)
    np.testing.assert_allclose(inv_frequencies(y)[20] / theta[20], c["inv_freq_ratio_at_20"],
                               rtol=1e-12, atol=0)
    np.testing.assert_allclose(yarn_attention_factor(y), c["attention_factor"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(yarn_attention_factor(y) ** 2, c["logit_scale"], rtol=0, atol=1e-7)


@pytest.mark.req("YARN-01")
def test_yarn_ramp_is_linear_in_dimension_index(cfg):
    y = cfg.with_yarn()
    low, high = yarn_correction_range(y)
    ramp = yarn_ramp(y)
    assert (ramp[: low + 1] == 0).all() and (ramp[high:] == 1).all()
    np.testing.assert_allclose(np.diff(ramp[low: high + 1]), 1.0 / (high - low), rtol=1e-12,
                               atol=0)
    theta, inv = inv_frequencies(cfg), inv_frequencies(y)
    np.testing.assert_allclose(inv[:low + 1], theta[:low + 1], rtol=1e-12, atol=0)  # extrapolate
    np.testing.assert_allclose(inv[high:], theta[high:] / 4, rtol=1e-12, atol=0)  # interpolate


@pytest.mark.req("YARN-01")
@pytest.mark.parametrize("pos", [0, 3000, 8191])
def test_yarn_attention_factor_scales_logits(cfg, pos):
    """Same position for q and k: rotations cancel, so the logit scales by factor**2."""
    rng = np.random.default_rng(pos)
    q, k = rng.normal(size=128), rng.normal(size=128)
    y = cfg.with_yarn()
    plain = np.dot(_rotate(q, pos, cfg), _rotate(k, pos, cfg))
    scaled = np.dot(_rotate(q, pos, y), _rotate(k, pos, y))
    np.testing.assert_allclose(scaled / plain, check_values("YARN-01")["logit_scale"], rtol=1e-4,
                               atol=0)
    np.testing.assert_allclose(0.1 * math.log(4) + 1, 1.1386294, rtol=0, atol=1e-7)
