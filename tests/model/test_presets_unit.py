"""Every preset loads and validates; small ones build and run (Levanter-style)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pythoncoder.model import PRESETS, ModelConfig, abstract_model, build_model, model_info


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds_abstractly(name):
    cfg = ModelConfig.preset(name)
    info = model_info(cfg)
    leaves = jax.tree.leaves(nnx.state(abstract_model(cfg), nnx.Param))
    assert info["param_count"] == sum(x.size for x in leaves)
    assert cfg.gqa_ratio == 3 and cfg.num_diff_heads == 6


def test_tiny_has_a_few_million_non_embedding_params():
    info = model_info(ModelConfig.preset("tiny"))
    assert info["dimensions"]["vocab_size"] == 151_808  # the real vocabulary
    assert 1_000_000 <= info["non_embedding_param_count"] <= 10_000_000


def test_tiny_forward_is_finite_and_yarn_changes_long_positions():
    cfg = ModelConfig.preset("tiny", compute_dtype="float32", num_layers=2)
    model = build_model(cfg)
    tokens = jnp.arange(32, dtype=jnp.int32).reshape(1, 32)
    plain = model(tokens)
    assert np.isfinite(np.asarray(plain)).all()
    yarn_model = nnx.merge(nnx.graphdef(build_model(cfg.with_yarn())), nnx.state(model))
    far = 3000 + jnp.arange(32, dtype=jnp.int32).reshape(1, 32)
    a = model(tokens, positions_BT=far)
    b = yarn_model(tokens, positions_BT=far)
    assert not np.allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
