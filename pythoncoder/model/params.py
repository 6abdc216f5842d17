"""Abstract parameter counting and the ``info`` report (nothing is allocated)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx

from pythoncoder.model.config import ModelConfig
from pythoncoder.model.transformer import abstract_model


def human_count(n: int) -> str:
    """1_075_150_848 -> '1.08B'."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{suffix}"
    return str(n)


def _component(path: tuple) -> str:
    """Map a parameter path to its ARCH-03 breakdown component."""
    keys = [str(getattr(p, "key", p)) for p in path]
    if keys[0] != "blocks":
        return {"embed": "embedding", "final_norm": "final_norm", "lm_head": "lm_head",
                "mtp": "mtp"}[keys[0]]
    if keys[1] == "mlp":
        return "layers.mlp"
    if keys[1] != "attn":
        return "layers.norms"
    if keys[2].startswith("lambda_"):
        return "layers.lambda_vectors"
    return "layers.subln" if keys[2] == "subln" else "layers.attention"


def param_breakdown(cfg: ModelConfig) -> dict[str, int]:
    """Parameter counts per component, from ``nnx.eval_shape`` shapes."""
    state = nnx.state(abstract_model(cfg), nnx.Param)
    out: dict[str, int] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        name = _component(path)
        out[name] = out.get(name, 0) + int(leaf.size)
    return out


def param_count(cfg: ModelConfig) -> int:
    return sum(param_breakdown(cfg).values())


def model_info(cfg: ModelConfig) -> dict[str, Any]:
    """What ``pythoncoder info --json`` prints."""
    breakdown = param_breakdown(cfg)
    total = sum(breakdown.values())
    L = cfg.num_layers
    layer_keys = [k for k in breakdown if k.startswith("layers.")]
    per_layer = {k.split(".", 1)[1]: breakdown[k] // L for k in layer_keys}
    return {
        "preset": cfg.name,
        "param_count": total,
        "param_count_human": human_count(total),
        "non_embedding_param_count": total - breakdown["embedding"] - breakdown["lm_head"],
        "breakdown": {
            "embedding": breakdown["embedding"],
            "layers": sum(breakdown[k] for k in layer_keys),
            "per_layer": {**per_layer, "total": sum(per_layer.values())},
            "final_norm": breakdown["final_norm"],
            "lm_head": breakdown["lm_head"],
            "mtp": breakdown["mtp"],
        },
        "kv_values_per_token_per_layer": cfg.kv_values_per_token_per_layer,
        "dimensions": {
            "hidden_size": cfg.hidden_size, "num_layers": cfg.num_layers,
            "head_dim": cfg.head_dim, "num_q_subheads": cfg.num_q_subheads,
            "num_kv_subheads": cfg.num_kv_subheads, "num_diff_heads": cfg.num_diff_heads,
            "value_head_dim": cfg.value_head_dim, "gqa_ratio": cfg.gqa_ratio,
            "intermediate_size": cfg.intermediate_size, "vocab_size": cfg.vocab_size,
            "max_position_embeddings": cfg.max_position_embeddings,
        },
        "config": {**dataclasses.asdict(cfg), "vocab_subset": list(cfg.vocab_subset)},
    }
