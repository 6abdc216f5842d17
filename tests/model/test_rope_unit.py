"""``apply_rope`` forms rotate-half with a signed permutation matmul (one fused pass on TPU);
it must give exactly what the slicing formula gives, in fp32 and in bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pythoncoder.model import ModelConfig
from pythoncoder.model.rope import apply_rope, rope_cos_sin


def _slicing(x, cos, sin):
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]).astype(x.dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_rope_equals_the_rotate_half_formula_exactly(dtype):
    cfg = ModelConfig.preset("tiny")
    positions = jnp.broadcast_to(jnp.arange(37), (2, 37)) * 97  # far positions too
    cos, sin = rope_cos_sin(positions, cfg)
    x = jax.random.normal(jax.random.key(0), (2, 37, 3, cfg.head_dim)).astype(dtype) * 5
    got, want = apply_rope(x, cos, sin), _slicing(x, cos, sin)
    assert got.dtype == dtype
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               rtol=0, atol=0)
    # control: a rotation with the other sign is a different answer
    wrong = _slicing(x, cos, -sin)
    assert not np.allclose(np.asarray(got, np.float32), np.asarray(wrong, np.float32))
