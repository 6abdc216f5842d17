"""Diff-Llama-MTP: the full model with scanned layers, named remat and the MTP module."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from pythoncoder.model.attention import DiffAttention, KVCache
from pythoncoder.model.config import ModelConfig
from pythoncoder.model.layers import RMSNorm, SwiGLU, dense
from pythoncoder.model.rope import rope_cos_sin
from pythoncoder.model.vocab import full_vocab_logits, to_rows

# Named remat policies (MaxText style); "names" keeps the tagged branch outputs.
REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "names": jax.checkpoint_policies.save_only_these_names("attn_out", "mlp_out"),
}


def dropout_keys(key: jax.Array, cfg: ModelConfig) -> jax.Array:
    """The dropout key in ``cfg``'s PRNG implementation, derived from the caller's key.

    threefry keeps the key as it is; rbg/unsafe_rbg draw their 4-word key from it, so the
    masks stay a function of the caller's key (bitwise resume is unaffected)."""
    impl = cfg.resolved_dropout_rng()
    if impl == "threefry":
        return key
    data = jax.random.bits(key, (4,), jnp.uint32)
    return jax.random.wrap_key_data(data, impl=impl)


class Dropout(nnx.Dropout):
    """Inverted dropout (DROP-01) from 16-bit random numbers: an entry is dropped when its
    draw is below ``round(rate * 2**16)`` (rate 0.1: 6554 / 65536 = 0.100006).
    ``nnx.Dropout`` draws a 32-bit float per entry; at the 1b step's 8 x 2048 x 1536
    activations that is 100 MB written and read back per site and pass (two sites per
    layer, twice with remat: 77 GB of HBM traffic per v6e step), half of it here."""

    def __call__(self, inputs, *, deterministic: bool, rngs=None):
        if deterministic or self.rate == 0.0:
            return inputs
        threshold = round(self.rate * 2**16)
        # drawn as (..., features, positions) and swapped: the compiler lays the (B, T, D)
        # activations out with T minor, which is then a bitcast of the random numbers
        # instead of a copy of them (0.1 GB per site and pass at 1b)
        if inputs.ndim >= 2:
            shape = inputs.shape[:-2] + inputs.shape[:-3:-1]
            bits = jnp.swapaxes(jax.random.bits(rngs, shape, jnp.uint16), -1, -2)
        else:
            bits = jax.random.bits(rngs, inputs.shape, jnp.uint16)
        keep = bits >= threshold
        return jnp.where(keep, inputs / (1.0 - self.rate), 0).astype(inputs.dtype)


class Block(nnx.Module):
    """Pre-norm block: x + drop(attn(norm(x))), then + drop(mlp(norm(.)))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs) -> None:
        dt = cfg.dtype()
        self.attn_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_eps)
        self.attn = DiffAttention(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, dtype=dt, std=cfg.init_std,
                          rngs=rngs)
        self.dropout = Dropout(cfg.dropout_rate)

    def __call__(self, x, cos, sin, q_slots, segment_ids, layer_index, dropout_key,
                 deterministic: bool, cache: KVCache | None = None, cache_index=None):
        # deterministic: no dropout, so no keys (``dropout_key`` is then a placeholder)
        k_attn, k_mlp = (None, None) if deterministic else jax.random.split(dropout_key)
        a, cache = self.attn(self.attn_norm(x), cos, sin, q_slots, segment_ids, layer_index,
                             cache, cache_index)
        a = checkpoint_name(a, "attn_out")
        x = x + self.dropout(a, deterministic=deterministic, rngs=k_attn)
        m = checkpoint_name(self.mlp(self.mlp_norm(x)), "mlp_out")
        x = x + self.dropout(m, deterministic=deterministic, rngs=k_mlp)
        return x, cache


class MTPModule(nnx.Module):
    """MTP-01: h' = W_p [RMSNorm(emb(t+1)); RMSNorm(h_t)], then RMSNorm; head is shared."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs) -> None:
        self.emb_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_eps)
        self.hidden_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_eps)
        self.proj = dense(2 * cfg.hidden_size, cfg.hidden_size, dtype=cfg.dtype(),
                          std=cfg.init_std, rngs=rngs)
        self.out_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_eps)

    def __call__(self, next_emb_BTD: jax.Array, h_BTD: jax.Array) -> jax.Array:
        cat = jnp.concatenate([self.emb_norm(next_emb_BTD), self.hidden_norm(h_BTD)], axis=-1)
        return self.out_norm(self.proj(cat))


class PythonCoder(nnx.Module):
    """The Diff-Llama-MTP language model.

    ``hidden_states`` runs the blocks and returns the last block's output ``h`` (the MTP
    module's input); ``logits`` applies the final norm and the untied head in fp32.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs) -> None:
        self.cfg = cfg
        dt = cfg.dtype()
        self.embed = nnx.Embed(cfg.model_vocab_rows, cfg.hidden_size, dtype=dt,
                               param_dtype=jnp.float32,
                               embedding_init=nnx.initializers.normal(cfg.init_std), rngs=rngs)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(rngs: nnx.Rngs) -> Block:
            return Block(cfg, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.final_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_eps)
        self.lm_head = dense(cfg.hidden_size, cfg.model_vocab_rows, dtype=dt, std=cfg.init_std,
                             rngs=rngs)
        self.mtp = MTPModule(cfg, rngs=rngs)

    # ---- embeddings and heads -------------------------------------------------------
    def embed_tokens(self, tokens_BT: jax.Array) -> jax.Array:
        """Embeddings of tokenizer ids (mapped to rows under a ``vocab_subset``)."""
        return self.embed(to_rows(self.cfg, tokens_BT)).astype(self.cfg.dtype())

    def head(self, x_BTD: jax.Array) -> jax.Array:
        """The shared output head, fp32 logits over the model's rows (NUM-01); ``logits``
        and ``mtp_logits`` give them over the full vocabulary."""
        w = self.lm_head.kernel[...].astype(x_BTD.dtype)
        return jnp.einsum("btd,dv->btv", x_BTD, w, preferred_element_type=jnp.float32)

    def logits(self, h_BTD: jax.Array) -> jax.Array:
        """fp32 next-token logits over the tokenizer's full vocabulary."""
        return full_vocab_logits(self.cfg, self.head(self.final_norm(h_BTD)))

    def mtp_hidden(self, h_BTD: jax.Array, next_tokens_BT: jax.Array) -> jax.Array:
        """MTP features at t from h_t and the embedding of token t+1 (predicts t+2)."""
        return self.mtp(self.embed_tokens(next_tokens_BT), h_BTD)

    def mtp_logits(self, h_BTD: jax.Array, next_tokens_BT: jax.Array) -> jax.Array:
        return full_vocab_logits(self.cfg, self.head(self.mtp_hidden(h_BTD, next_tokens_BT)))

    # ---- trunk ----------------------------------------------------------------------
    def hidden_states(
        self,
        tokens_BT: jax.Array,
        *,
        positions_BT: jax.Array | None = None,
        segment_ids_BT: jax.Array | None = None,
        deterministic: bool = True,
        dropout_key: jax.Array | None = None,
        cache: KVCache | None = None,
        cache_index: jax.Array | int | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Run the blocks.  Dropout is off unless ``deterministic=False`` (DROP-01).

        With a ``cache`` (stacked over layers), the T new tokens occupy cache slots
        ``cache_index .. cache_index+T-1``; ``positions_BT`` default to those slots.
        """
        cfg = self.cfg
        B, T = tokens_BT.shape
        start = 0 if cache is None else jnp.asarray(cache_index, jnp.int32)
        q_slots = jnp.broadcast_to(start + jnp.arange(T, dtype=jnp.int32), (B, T))
        positions_BT = q_slots if positions_BT is None else positions_BT
        if not deterministic and dropout_key is None:
            raise ValueError("deterministic=False needs a dropout_key")
        if deterministic:  # inference and eval derive no random keys at all
            layer_keys = jnp.zeros((cfg.num_layers,), jnp.uint32)
        else:
            layer_keys = jax.random.split(dropout_keys(dropout_key, cfg), cfg.num_layers)
        cos, sin = rope_cos_sin(positions_BT, cfg)
        x = self.embed_tokens(tokens_BT)
        layer_ids = jnp.arange(cfg.num_layers, dtype=jnp.int32)

        def body(block: Block, x, layer_id, key, cache):
            return block(x, cos, sin, q_slots, segment_ids_BT, layer_id, key, deterministic,
                         cache, cache_index)

        policy = REMAT_POLICIES[cfg.built_remat_policy]
        if cfg.built_remat_policy != "none":
            body = nnx.remat(body, policy=policy, prevent_cse=not cfg.scan_layers)

        # The KV cache (every layer, stacked) is carried through the layers whole: each
        # layer writes its new slots in place and reads its live bucket, so no layer copies
        # the cache (as scanning over it as an input and stacking it as an output would).
        if cfg.scan_layers:
            @nnx.scan(in_axes=(0, nnx.Carry, 0, 0), out_axes=nnx.Carry)
            def run(block, carry, layer_id, key):
                x, c = carry
                return body(block, x, layer_id, key, c)

            x, cache = run(self.blocks, (x, cache), layer_ids, layer_keys)
        else:
            graphdef, state = nnx.split(self.blocks)
            for i in range(cfg.num_layers):
                block = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
                x, cache = body(block, x, layer_ids[i], layer_keys[i], cache)
        return x, cache

    def __call__(self, tokens_BT: jax.Array, **kwargs: Any) -> jax.Array:
        """Full-sequence fp32 logits (for inference and tests; training uses the loss)."""
        h, _ = self.hidden_states(tokens_BT, **kwargs)
        return self.logits(h)

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """An empty cache for all layers: (L, B, S, ...) in the compute dtype."""
        cfg, dtype = self.cfg, dtype or self.cfg.dtype()
        L = cfg.num_layers
        return KVCache(
            k=jnp.zeros((L, batch, max_len, cfg.num_kv_subheads, cfg.head_dim), dtype),
            v=jnp.zeros((L, batch, max_len, cfg.num_kv_groups, cfg.value_head_dim), dtype),
            segment_ids=jnp.zeros((L, batch, max_len), jnp.int32),
        )


def build_model(cfg: ModelConfig, seed: int = 0) -> PythonCoder:
    return PythonCoder(cfg, rngs=nnx.Rngs(params=seed))


def abstract_model(cfg: ModelConfig) -> PythonCoder:
    """The model with ShapeDtypeStruct leaves: nothing is allocated (``nnx.eval_shape``)."""
    return nnx.eval_shape(lambda: PythonCoder(cfg, rngs=nnx.Rngs(params=0)))
