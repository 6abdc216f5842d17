"""Step accounting, in one place: the model's FLOPs per token (MFU's numerator), a compiled
step's memory (what ``memory_analysis`` says it holds per device) and the roofline bound of
its FLOPs and HBM bytes against a device's peaks (``pythoncoder.targets``: the one home of
device facts)."""

from __future__ import annotations

import dataclasses
from typing import Any

from pythoncoder.model import ModelConfig


def model_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Model FLOPs per trained token, MaxText-style: 6 x matmul parameters + attention.

    * matmul parameters: every weight matrix except the embedding lookup; the output
      head counts twice because the MTP module reuses it (main + MTP logits).
    * attention (causal, so half the full T x T map), forward + backward = 3 x forward:
      per layer the two differential score maps cost 2*T*q_width and A.V costs
      2*T*(heads*2*head_dim) = 2*T*q_width, so 3 * 0.5 * 4 * T * q_width = 6*T*q_width.

    No recomputation (remat) and no padding: the work the model itself needs.
    """
    d, L = cfg.hidden_size, cfg.num_layers
    attn = d * cfg.q_width + 2 * d * cfg.kv_width + cfg.num_diff_heads * cfg.value_head_dim * d
    mlp = 3 * d * cfg.intermediate_size
    head = d * cfg.model_vocab_rows
    mtp = 2 * d * d
    matmul_params = L * (attn + mlp) + 2 * head + mtp
    return 6.0 * matmul_params + L * 6.0 * seq_len * cfg.q_width


@dataclasses.dataclass(frozen=True)
class CompiledMemory:
    """Per-device bytes of a compiled program, as its ``memory_analysis()`` reports them."""

    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs written over donated arguments: counted once
    temp_bytes: int
    generated_code_bytes: int = 0

    @classmethod
    def of(cls, compiled: Any) -> CompiledMemory:
        mem = compiled.memory_analysis()
        return cls(int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes),
                   int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes),
                   int(getattr(mem, "generated_code_size_in_bytes", 0) or 0))

    @property
    def total_bytes(self) -> int:
        """Arguments + outputs - donated + temporaries: what the device must hold."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


@dataclasses.dataclass(frozen=True)
class Roofline:
    """``max(FLOPs / peak, bytes / bandwidth)``: a lower bound on a step's time, and which
    limit it is."""

    flops: float
    hbm_bytes: float
    compute_s: float
    memory_s: float

    @classmethod
    def of(cls, flops: float, hbm_bytes: float, peaks: dict[str, Any]) -> Roofline:
        return cls(flops, hbm_bytes, flops / peaks["peak_bf16_flops"],
                   hbm_bytes / peaks["hbm_bandwidth"])

    @property
    def bound_s(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def bound(self) -> str:
        """``compute`` (the matmul peak) or ``memory`` (the bandwidth)."""
        return "compute" if self.compute_s >= self.memory_s else "memory"


def decode_step_bytes(params, cfg: ModelConfig, batch: int, context: float, *,
                      with_mtp: bool) -> float:
    """Bytes one decode step must read: every weight once (the embedding only for the
    ``batch`` rows it gathers; the MTP module only ``with_mtp``) plus the live KV cache of
    ``context`` tokens per row.  ``batch`` x bandwidth / this is the decode roofline."""
    import jax
    import jax.numpy as jnp

    total = 0
    for path, x in jax.tree_util.tree_leaves_with_path(params):
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if keys[0] == "mtp" and not with_mtp:
            continue
        if keys[0] == "embed":
            total += batch * x.shape[-1] * x.dtype.itemsize
            continue
        total += x.size * x.dtype.itemsize
    kv_item = jnp.dtype(cfg.dtype()).itemsize
    return total + cfg.num_layers * batch * context * cfg.kv_values_per_token_per_layer * kv_item
