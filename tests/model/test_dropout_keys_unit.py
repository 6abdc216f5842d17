"""A deterministic forward (eval, every decode step) derives no random keys at all."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pythoncoder.model import ModelConfig, build_model

RANDOM_PRIMITIVES = ("random_bits", "random_split", "random_wrap", "random_fold_in",
                     "threefry2x32")


def _jaxpr_text(fn, *args) -> str:
    return str(jax.make_jaxpr(fn)(*args))


def test_deterministic_forward_has_no_random_ops_and_training_does():
    cfg = ModelConfig.preset("tiny", num_layers=2, vocab_size=512, dropout_rate=0.1)
    graphdef, state = nnx.split(build_model(cfg, seed=0))
    tokens = jnp.arange(8, dtype=jnp.int32).reshape(1, 8)

    det = _jaxpr_text(lambda s: nnx.merge(graphdef, s)(tokens), state)
    assert not [p for p in RANDOM_PRIMITIVES if p in det]

    def train_fwd(s, key):
        return nnx.merge(graphdef, s).hidden_states(tokens, deterministic=False,
                                                    dropout_key=key)[0]

    train = _jaxpr_text(train_fwd, state, jax.random.PRNGKey(0))
    assert [p for p in RANDOM_PRIMITIVES if p in train]  # the check can see them
    # and dropout still changes the training forward, keyed by the caller's key
    a = np.asarray(train_fwd(state, jax.random.PRNGKey(0)))
    b = np.asarray(train_fwd(state, jax.random.PRNGKey(1)))
    c = np.asarray(nnx.merge(graphdef, state).hidden_states(tokens)[0])
    assert not np.allclose(a, b, rtol=1e-3, atol=1e-3)
    assert not np.allclose(a, c, rtol=1e-3, atol=1e-3)
