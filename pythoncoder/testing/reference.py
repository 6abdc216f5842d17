"""A float64 reference of the whole Diff-Llama-MTP model and its loss, for tests only.

Written from the requirement texts (ARCH-04, ROPE-01, DIFF-01..04, MTP-01, TRAIN-03,
DATA-01), not from ``pythoncoder.model``: plain per-layer, per-head loops over a flat
``{"blocks/attn/q_proj/kernel": array, ...}`` dict, nothing blocked, chunked, scanned or
rematerialised.  It shares no code with the model, so a test that compares the two fails
when either drifts from the spec (layer ids off by one, segment ids dropped, EOS masked out
of the targets, the MTP mean taken over T instead of T-1, ...).

It is written with ``jax.numpy`` so that ``jax.grad`` gives float64 reference gradients;
call it inside ``with jax.enable_x64(True):`` with float64 inputs.  Use small configs: the
attention loops are Python loops.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def flat_params(state: Any, dtype=np.float64) -> dict[str, np.ndarray]:
    """``nnx.State`` of ``nnx.Param`` -> {"blocks/attn/q_proj/kernel": ndarray, ...}."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        names = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
        out["/".join(names)] = np.asarray(leaf, dtype)
    return out


def rms_norm(x, w, eps):
    """ARCH-04: x / sqrt(mean(x^2) + eps) * w (eps inside the square root)."""
    w = jnp.reshape(w, (1,) * (x.ndim - 1) + (-1,))
    return x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, positions, theta):
    """ROPE-01, rotate-half: pairs (i, i + d/2) turn by position * theta^(-2i/d).
    ``x`` is (B, T, heads, d); ``positions`` (B, T)."""
    d = x.shape[-1]
    freq = theta ** (-jnp.arange(0, d // 2, dtype=jnp.float64) * 2.0 / d)
    ang = positions[:, :, None, None].astype(jnp.float64) * freq[None, None, None, :]
    a, b = x[..., : d // 2], x[..., d // 2:]
    c, s = jnp.cos(ang), jnp.sin(ang)
    return jnp.concatenate([a * c - b * s, b * c + a * s], axis=-1)


def lambda_init(layer: int) -> float:
    """DIFF-01 with the 0-based layer index."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer)


def lam(p, layer: int):
    """DIFF-02 for one layer (the vectors are stacked over layers)."""
    def dot(a, b):
        return jnp.clip(jnp.dot(p[f"blocks/attn/{a}"][layer], p[f"blocks/attn/{b}"][layer]),
                        -10.0, 10.0)
    return jnp.clip(jnp.exp(dot("lambda_q1", "lambda_k1")) - jnp.exp(dot("lambda_q2",
                    "lambda_k2")) + lambda_init(layer), 0.0, 1.0)


def softmax_masked(scores, mask):
    scores = jnp.where(mask, scores, -jnp.inf)
    scores = scores - jnp.max(scores, axis=-1, keepdims=True)
    e = jnp.where(mask, jnp.exp(scores), 0.0)
    return e / jnp.sum(e, axis=-1, keepdims=True)


def attention(p, cfg, layer: int, x, segment_ids):
    """DIFF-03/04 for one layer, one differential head at a time."""
    B, T, _ = x.shape
    d, heads, groups = cfg.head_dim, cfg.num_q_subheads // 2, cfg.num_kv_subheads // 2
    per_group = heads // groups
    L = "blocks/attn/"
    q = (x @ p[L + "q_proj/kernel"][layer]).reshape(B, T, cfg.num_q_subheads, d)
    k = (x @ p[L + "k_proj/kernel"][layer]).reshape(B, T, cfg.num_kv_subheads, d)
    v = (x @ p[L + "v_proj/kernel"][layer]).reshape(B, T, groups, 2 * d)
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    q, k = rope(q, pos, cfg.rope_theta), rope(k, pos, cfg.rope_theta)
    causal = jnp.arange(T)[None, :] <= jnp.arange(T)[:, None]  # [query, key]
    mask = jnp.broadcast_to(causal[None], (B, T, T))
    if segment_ids is not None:
        mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
    lam_l = lam(p, layer)
    outs = []
    for i in range(heads):
        g = i // per_group
        s1 = jnp.einsum("btd,bsd->bts", q[:, :, 2 * i], k[:, :, 2 * g]) / math.sqrt(d)
        s2 = jnp.einsum("btd,bsd->bts", q[:, :, 2 * i + 1], k[:, :, 2 * g + 1]) / math.sqrt(d)
        a = jnp.maximum(softmax_masked(s1, mask) - lam_l * softmax_masked(s2, mask), 0.0)
        o = jnp.einsum("bts,bse->bte", a, v[:, :, g])
        o = rms_norm(o, p[L + "subln/scale"][layer], cfg.subln_eps) * (1.0 - lambda_init(layer))
        outs.append(o)
    return jnp.concatenate(outs, axis=-1) @ p[L + "o_proj/kernel"][layer]


def mlp(p, layer: int, x):
    """ARCH-04: down(silu(gate x) * up x)."""
    g = x @ p["blocks/mlp/gate/kernel"][layer]
    return (g * jax.nn.sigmoid(g) * (x @ p["blocks/mlp/up/kernel"][layer])
            ) @ p["blocks/mlp/down/kernel"][layer]


def hidden_states(p, cfg, tokens, segment_ids=None):
    """The last block's output h (B, T, D)."""
    x = p["embed/embedding"][tokens]
    for layer in range(cfg.num_layers):
        x = x + attention(p, cfg, layer, rms_norm(x, p["blocks/attn_norm/scale"][layer],
                                                  cfg.rms_eps), segment_ids)
        x = x + mlp(p, layer, rms_norm(x, p["blocks/mlp_norm/scale"][layer], cfg.rms_eps))
    return x


def logits(p, cfg, h):
    return rms_norm(h, p["final_norm/scale"], cfg.rms_eps) @ p["lm_head/kernel"]


def mtp_logits(p, cfg, h, next_tokens):
    """MTP-01: out_norm(W_p [emb_norm(emb(t+1)); hidden_norm(h_t)]), then the shared head."""
    e = rms_norm(p["embed/embedding"][next_tokens], p["mtp/emb_norm/scale"], cfg.rms_eps)
    hh = rms_norm(h, p["mtp/hidden_norm/scale"], cfg.rms_eps)
    z = jnp.concatenate([e, hh], axis=-1) @ p["mtp/proj/kernel"]
    return rms_norm(z, p["mtp/out_norm/scale"], cfg.rms_eps) @ p["lm_head/kernel"]


def cross_entropy(lg, labels):
    """Per-position CE, every position a target (EOS included)."""
    lse = jax.scipy.special.logsumexp(lg, axis=-1)
    return lse - jnp.take_along_axis(lg, labels[..., None], axis=-1)[..., 0]


def loss(p, cfg, rows, segment_ids=None, mtp_weight: float = 0.1):
    """TRAIN-03/MTP-01 for packed rows (B, T+1): the mean next-token CE over all B*T
    positions plus ``mtp_weight`` times the mean t+2 CE over the B*(T-1) positions that
    have a t+2 token.  ``segment_ids`` (B, T+1) restrict attention to a document."""
    x, y = rows[:, :-1], rows[:, 1:]
    seg = None if segment_ids is None else segment_ids[:, :-1]
    h = hidden_states(p, cfg, x, seg)
    main = jnp.mean(cross_entropy(logits(p, cfg, h), y))
    # MTP at t sees h_t and token t+1 (= y[t]) and predicts token t+2 (= y[t+1]).
    mtp = jnp.mean(cross_entropy(mtp_logits(p, cfg, h[:, :-1], y[:, :-1]), y[:, 1:]))
    return main + mtp_weight * mtp, (main, mtp)
