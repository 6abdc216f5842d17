"""Basic layers: fp32 RMSNorm, bias-free dense, SwiGLU MLP."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class RMSNorm(nnx.Module):
    """RMSNorm computed in fp32 and cast back to the input dtype (ARCH-04)."""

    def __init__(self, dim: int, *, eps: float, param_dtype=jnp.float32) -> None:
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        w = self.scale[...].astype(jnp.float32).reshape((1,) * (x.ndim - 1) + (-1,))
        return (y * w).astype(x.dtype)


def dense(in_dim: int, out_dim: int, *, dtype, std: float, rngs: nnx.Rngs) -> nnx.Linear:
    """A bias-free linear layer: fp32 kernel, matmul in ``dtype``."""
    return nnx.Linear(
        in_dim, out_dim, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=nnx.initializers.normal(std), rngs=rngs,
    )


class SwiGLU(nnx.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int, *, dtype, std: float, rngs: nnx.Rngs) -> None:
        self.gate = dense(dim, hidden, dtype=dtype, std=std, rngs=rngs)
        self.up = dense(dim, hidden, dtype=dtype, std=std, rngs=rngs)
        self.down = dense(hidden, dim, dtype=dtype, std=std, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))
