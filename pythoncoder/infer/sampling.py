"""Token sampling: padding-id masking (TOK-02), greedy, temperature, top-k and top-p.

Everything here is a pure function of fp32 logits, jit-friendly, with the sampling
settings static (a frozen, hashable :class:`SamplingConfig`).  The same transform is used
for the target model and for the MTP draft, which rejection sampling relies on.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

# Qwen2.5 vocabulary layout (see pythoncoder.data.tokenizer): 151,665 real tokens padded to
# 151,808 embedding rows.  Ids 151,665..151,807 are never produced and never sampled.
# Kept here as constants so the token-level engine does not import the tokenizer.
NUM_REAL_TOKENS = 151_665
EOS_ID = 151_643
NEG_INF = float("-inf")


@dataclasses.dataclass(frozen=True, slots=True)
class SamplingConfig:
    """How the next token is chosen.  ``temperature == 0`` is greedy (argmax).

    ``top_k == 0`` and ``top_p == 1`` switch those filters off.  Filters apply after the
    temperature, top-k before top-p (nucleus over the surviving tokens).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature={self.temperature!r}: must be >= 0")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k={self.top_k!r}: must be an integer >= 0 (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p!r}: must be in (0, 1] (1 = off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GREEDY = SamplingConfig()


def num_sampleable(vocab_size: int) -> int:
    """How many leading ids may be sampled: the padding rows (TOK-02) are cut off."""
    return min(vocab_size, NUM_REAL_TOKENS)


def mask_padding(logits_BV: jax.Array, num_real: int | None = None) -> jax.Array:
    """Set the logits of ids ``>= num_real`` (default 151,665) to -inf (TOK-02)."""
    vocab = logits_BV.shape[-1]
    num_real = num_sampleable(vocab) if num_real is None else num_real
    if num_real >= vocab:
        return logits_BV
    ids = jnp.arange(vocab, dtype=jnp.int32).reshape((1,) * (logits_BV.ndim - 1) + (vocab,))
    return jnp.where(ids < num_real, logits_BV, NEG_INF)


def filtered_logits(logits_BV: jax.Array, sampling: SamplingConfig,
                    num_real: int | None = None) -> jax.Array:
    """Masked, temperature-scaled, top-k/top-p-filtered fp32 logits (-inf = excluded).

    Ties at the top-k / top-p threshold keep every tied token, so the filter never
    depends on how a sort orders equal values.
    """
    x = mask_padding(logits_BV.astype(jnp.float32), num_real)
    if sampling.greedy:
        return x
    x = x / sampling.temperature
    k = sampling.top_k
    if k and k < x.shape[-1]:
        kth = jax.lax.top_k(x, k)[0][..., k - 1:k]
        x = jnp.where(x < kth, NEG_INF, x)
    if sampling.top_p < 1.0:
        # The nucleus is taken over the top-k survivors (ties with the k-th included, so
        # there may be more than k of them), renormalised: removed tokens sort last with
        # probability 0.
        sorted_desc = -jnp.sort(-x, axis=-1)
        p_sorted = jax.nn.softmax(sorted_desc, axis=-1)
        before = jnp.cumsum(p_sorted, axis=-1) - p_sorted  # mass strictly above each token
        keep = before < sampling.top_p  # the top token always survives (before = 0)
        threshold = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
        x = jnp.where(x < threshold, NEG_INF, x)
    return x


def probabilities(logits_BV: jax.Array, sampling: SamplingConfig,
                  num_real: int | None = None) -> jax.Array:
    """The distribution tokens are drawn from (one-hot on the argmax when greedy)."""
    x = filtered_logits(logits_BV, sampling, num_real)
    if sampling.greedy:
        return jax.nn.one_hot(jnp.argmax(x, axis=-1), x.shape[-1], dtype=jnp.float32)
    return jax.nn.softmax(x, axis=-1)


def sample(logits_BV: jax.Array, key: jax.Array, sampling: SamplingConfig,
           num_real: int | None = None) -> jax.Array:
    """One token id per row, int32; greedy ignores ``key``."""
    x = filtered_logits(logits_BV, sampling, num_real)
    if sampling.greedy:
        return jnp.argmax(x, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, x, axis=-1).astype(jnp.int32)


def speculative_accept(p_target_BV: jax.Array, q_draft_BV: jax.Array, draft_B: jax.Array,
                       key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Rejection sampling (Leviathan et al. 2023; Chen et al. 2023) for one drafted token.

    The draft ``d ~ q`` is kept with probability ``min(1, p(d) / q(d))``; otherwise a
    replacement is drawn from ``norm(max(p - q, 0))``.  The emitted token is then
    distributed exactly as ``p``.  Returns ``(accepted_B, token_B)`` where ``token`` is
    the draft when accepted and the replacement otherwise.
    """
    k_u, k_r = jax.random.split(key)
    rows = jnp.arange(draft_B.shape[0])
    p_d = p_target_BV[rows, draft_B]
    q_d = q_draft_BV[rows, draft_B]
    u = jax.random.uniform(k_u, draft_B.shape, jnp.float32)
    # u < p/q  <=>  u*q < p; q(d) > 0 because d was drawn from q.
    accepted = u * q_d < p_d
    residual = jnp.maximum(p_target_BV - q_draft_BV, 0.0)
    mass = jnp.sum(residual, axis=-1, keepdims=True)
    # mass == 0 only when p == q, where rejection has probability 0; fall back to p.
    residual = jnp.where(mass > 0.0, residual, p_target_BV)
    replacement = jax.random.categorical(k_r, jnp.log(residual), axis=-1).astype(jnp.int32)
    return accepted, jnp.where(accepted, draft_B.astype(jnp.int32), replacement)
