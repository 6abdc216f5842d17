"""Random models whose MTP draft agrees with the main head often (tests and benchmarks).

A freshly initialised model drafts almost nothing right (acceptance about 1/vocab), so
the accept path of speculative decoding would go untested.  Here the trunk's residual
branches are scaled by ``trunk_scale`` (0 makes ``h_t`` the embedding of token t) and the
MTP projection is ``[I; 0]`` plus noise of size ``mtp_noise``, so the MTP module sees
roughly the embedding of token t+1, which is roughly what the main head sees one step
later.  ``head_scale`` spreads the logits so greedy choices are not near-ties.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pythoncoder.model import ModelConfig, PythonCoder, build_model


def agreeable_model(cfg: ModelConfig, seed: int = 0, *, trunk_scale: float = 0.3,
                    mtp_noise: float = 0.3, head_scale: float = 20.0) -> PythonCoder:
    """A random model of ``cfg`` edited as described in the module docstring."""
    model = build_model(cfg, seed)
    key = jax.random.PRNGKey(seed + 10_007)
    blocks = model.blocks
    blocks.attn.o_proj.kernel[...] = blocks.attn.o_proj.kernel[...] * trunk_scale
    blocks.mlp.down.kernel[...] = blocks.mlp.down.kernel[...] * trunk_scale
    D = cfg.hidden_size
    eye = jnp.concatenate([jnp.eye(D, dtype=jnp.float32), jnp.zeros((D, D), jnp.float32)])
    noise = jax.random.normal(key, (2 * D, D), jnp.float32) * (mtp_noise / jnp.sqrt(D))
    model.mtp.proj.kernel[...] = eye + noise
    model.lm_head.kernel[...] = model.lm_head.kernel[...] * head_scale
    return model

