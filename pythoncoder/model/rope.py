"""Rotary position embeddings (rotate-half, theta 500k) with optional YaRN scaling.

YaRN follows HuggingFace ``_compute_yarn_parameters``: a ramp that is linear in the
dimension index between the correction dims of beta_fast and beta_slow, and an attention
factor ``0.1 ln s + 1`` multiplied into both cos and sin (so logits scale by its square).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from pythoncoder.model.config import ModelConfig


def yarn_correction_dim(num_rotations: float, dim: int, base: float, original_len: int) -> float:
    """Dimension index whose wavelength completes ``num_rotations`` over ``original_len``."""
    return dim * math.log(original_len / (num_rotations * 2 * math.pi)) / (2 * math.log(base))


def yarn_correction_range(cfg: ModelConfig) -> tuple[int, int]:
    """(low, high) = (floor d(beta_fast), ceil d(beta_slow)), clamped to [0, dim-1]."""
    d = cfg.head_dim
    low = math.floor(yarn_correction_dim(cfg.yarn_beta_fast, d, cfg.rope_theta,
                                         cfg.yarn_original_max_position))
    high = math.ceil(yarn_correction_dim(cfg.yarn_beta_slow, d, cfg.rope_theta,
                                         cfg.yarn_original_max_position))
    return max(low, 0), min(high, d - 1)


def yarn_ramp(cfg: ModelConfig) -> np.ndarray:
    """Interpolation weight per frequency: 0 keeps theta_i, 1 uses theta_i / s."""
    low, high = yarn_correction_range(cfg)
    if low == high:
        high += 0.001
    i = np.arange(cfg.head_dim // 2, dtype=np.float64)
    return np.clip((i - low) / (high - low), 0.0, 1.0)


def yarn_attention_factor(cfg: ModelConfig) -> float:
    """0.1 ln s + 1 when YaRN is on, else 1."""
    if not cfg.yarn or cfg.yarn_factor <= 1.0:
        return 1.0
    return 0.1 * math.log(cfg.yarn_factor) + 1.0


def inv_frequencies(cfg: ModelConfig) -> np.ndarray:
    """Per-pair inverse frequencies theta_i = base^(-2i/d), YaRN-blended when enabled."""
    d = cfg.head_dim
    theta = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    if not cfg.yarn:
        return theta
    ramp = yarn_ramp(cfg)
    return theta * (1.0 - ramp) + (theta / cfg.yarn_factor) * ramp


def rope_cos_sin(positions: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables of shape positions.shape + (head_dim,), fp32, attention factor in."""
    inv = jnp.asarray(inv_frequencies(cfg), jnp.float32)
    angles = positions.astype(jnp.float32)[..., None] * inv.reshape((1,) * positions.ndim + (-1,))
    angles = jnp.concatenate([angles, angles], axis=-1)
    m = yarn_attention_factor(cfg)
    return jnp.cos(angles) * m, jnp.sin(angles) * m


def apply_rope(x_BTHD: jax.Array, cos_BTD: jax.Array, sin_BTD: jax.Array) -> jax.Array:
    """Rotate-half RoPE on the last axis of ``x`` (any number of sub-heads), in fp32."""
    d = x_BTHD.shape[-1]
    half = d // 2
    # rotate-half as a product with a signed permutation: exact (one nonzero term per
    # output, accumulated in fp32), and a matmul whose epilogue the compiler fuses the
    # rest into, so RoPE reads and writes x once in its own dtype
    rot = np.zeros((d, d), np.float32)
    rot[np.arange(half) + half, np.arange(half)] = -1.0  # out[:half] = -x[half:]
    rot[np.arange(half), np.arange(half) + half] = 1.0  # out[half:] = x[:half]
    rotated = jnp.einsum("bthd,de->bthe", x_BTHD, jnp.asarray(rot, x_BTHD.dtype),
                         preferred_element_type=jnp.float32,
                         precision=jax.lax.Precision.HIGHEST)
    cos, sin = cos_BTD[:, :, None, :], sin_BTD[:, :, None, :]
    return (x_BTHD.astype(jnp.float32) * cos + rotated * sin).astype(x_BTHD.dtype)
