"""Model configuration: a frozen dataclass and its named presets.

``1b`` is exactly the design doc's model (1,075,150,848 parameters). ``tiny`` keeps the
real 151,808-token vocabulary with a few million non-embedding parameters, for CPU tests
and the demo run. ``small`` is a 256-aligned middle size.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pythoncoder.model.kernels import registry as kernel_registry

# JAX is imported where it is used, not here: the command line reads the presets and the
# policy names to check its arguments before JAX loads (a typo answers in well under a
# second).
PRESETS = ("tiny", "small", "1b")
REMAT_POLICIES = ("none", "full", "dots", "names", "auto")
# "auto": the fused Pallas kernel on GPU/TPU, the reference (the definition of correctness)
# on CPU, where Pallas only interprets.
ATTENTION_IMPLS = ("auto", "reference", *(k.name for k in kernel_registry.entries("attention")))
# PRNG for dropout masks.  JAX's default threefry is costly on GPU (it dominates the mask
# generation); "rbg" uses the backend's bit generator (as MaxText does).  "auto" = rbg on
# GPU/TPU and threefry on CPU.  Masks depend on the choice, never on anything else.
DROPOUT_RNGS = ("auto", "threefry", "rbg", "unsafe_rbg")
DTYPES = ("bfloat16", "float16", "float32")  # jax.numpy names: ModelConfig.dtype()
TPU_ALIGNMENT = 256


class ConfigError(ValueError):
    """A model configuration is invalid; the message names the offending field."""


@dataclasses.dataclass(frozen=True, slots=True)
class ModelConfig:
    """Diff-Llama-MTP hyper-parameters.

    Attention is described in *sub-heads* of width ``head_dim``: differential head ``i``
    uses query sub-heads ``2i, 2i+1`` and, in KV group ``g = i // gqa_ratio``, key
    sub-heads ``2g, 2g+1`` and a value head of width ``2 * head_dim``.
    """

    name: str = "custom"
    vocab_size: int = 151_808
    hidden_size: int = 1536
    num_layers: int = 24
    head_dim: int = 128
    num_q_subheads: int = 12
    num_kv_subheads: int = 4
    intermediate_size: int = 4096
    max_position_embeddings: int = 8192
    rms_eps: float = 1e-6
    subln_eps: float = 1e-5
    rope_theta: float = 500_000.0
    # YaRN: off for training at 2048, switched on (factor 4) for 8192-token inference.
    yarn: bool = False
    yarn_factor: float = 4.0
    yarn_original_max_position: int = 2048
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    lambda_init_std: float = 0.01
    dropout_rate: float = 0.1
    mtp_weight: float = 0.1
    init_std: float = 0.02
    # Numerics: fp32 master params; compute dtype "auto" = bf16 on TPU/GPU, fp32 on CPU.
    param_dtype: str = "float32"
    compute_dtype: str = "auto"
    # Memory/compile: scanned layers, named remat policy, blocked attention, chunked CE.
    scan_layers: bool = True
    remat_policy: str = "full"
    attn_block_size: int = 512
    attention_impl: str = "auto"
    dropout_rng: str = "auto"
    loss_chunk_size: int = 2048
    # ARCH-02: TPU-targeted configs must be 256-aligned; small CPU presets opt out.
    tpu_aligned: bool = True
    # Vocabulary subset (the CPU demo's speed-up): empty = the full ``vocab_size`` rows.
    # Otherwise the sorted tokenizer ids the model has rows for; embedding and head get
    # ``len(vocab_subset) + 1`` rows, row 0 standing for every other id ("other"), whose
    # probability the full-vocabulary view spreads evenly over those ids (see
    # ``pythoncoder/model/vocab.py``).  Token ids in and out stay the tokenizer's.
    vocab_subset: tuple[int, ...] = dataclasses.field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.vocab_subset, tuple):  # a JSON list from run.json/config.json
            try:
                subset = tuple(int(i) for i in self.vocab_subset)
            except (TypeError, ValueError):
                raise ConfigError(f"ModelConfig.vocab_subset: must be a sequence of token "
                                  f"ids, got {type(self.vocab_subset).__name__}") from None
            object.__setattr__(self, "vocab_subset", subset)
        self.validate()

    # ---- derived dimensions -------------------------------------------------------
    @property
    def num_diff_heads(self) -> int:
        return self.num_q_subheads // 2

    @property
    def num_kv_groups(self) -> int:
        return self.num_kv_subheads // 2

    @property
    def gqa_ratio(self) -> int:
        return self.num_diff_heads // self.num_kv_groups

    @property
    def value_head_dim(self) -> int:
        return 2 * self.head_dim

    @property
    def q_width(self) -> int:
        return self.num_q_subheads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_kv_subheads * self.head_dim

    @property
    def model_vocab_rows(self) -> int:
        """Rows of the embedding and the output head: the vocabulary, or subset + other."""
        return len(self.vocab_subset) + 1 if self.vocab_subset else self.vocab_size

    @property
    def kv_values_per_token_per_layer(self) -> int:
        """Cached values per token per layer: keys (sub-heads x head_dim) + values."""
        return self.kv_width + self.num_kv_groups * self.value_head_dim

    def dtype(self) -> Any:
        """The resolved compute dtype."""
        import jax
        import jax.numpy as jnp

        if self.compute_dtype == "auto":
            return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
        return getattr(jnp, self.compute_dtype)

    def resolved_attention_impl(self, backend: str | None = None) -> str:
        """``reference`` or ``pallas``: ``auto`` is the fused kernel on GPU/TPU only."""
        if self.attention_impl != "auto":
            return self.attention_impl
        return kernel_registry.auto_choice("attention",
                                           backend or target_platform()) or "reference"

    @property
    def built_remat_policy(self) -> str:
        """The policy a built model applies: ``auto`` is resolved by the trainer
        (``pythoncoder.train.remat.choose_remat``, by compiled memory and roofline bound)
        and means ``full`` in a model built without that step (inference does not
        differentiate, so it does not matter there)."""
        return "full" if self.remat_policy == "auto" else self.remat_policy

    def resolved_dropout_rng(self, backend: str | None = None) -> str:
        """The dropout PRNG implementation: ``auto`` is rbg on GPU/TPU, threefry on CPU."""
        if self.dropout_rng != "auto":
            return self.dropout_rng
        return "threefry" if (backend or target_platform()) == "cpu" else "rbg"

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def with_yarn(self, factor: float = 4.0) -> ModelConfig:
        """The inference config: YaRN on with ``factor`` (4 gives 8192 from 2048)."""
        return self.replace(yarn=True, yarn_factor=factor)

    # ---- validation ---------------------------------------------------------------
    def validate(self) -> None:
        def need(cond: bool, field: str, why: str) -> None:
            if not cond:
                raise ConfigError(f"ModelConfig.{field}={getattr(self, field)!r}: {why}")

        for f in ("vocab_size", "hidden_size", "num_layers", "head_dim", "num_q_subheads",
                  "num_kv_subheads", "intermediate_size", "max_position_embeddings",
                  "attn_block_size", "loss_chunk_size"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) > 0, f,
                 "must be a positive integer")
        need(self.head_dim % 2 == 0, "head_dim", "must be even for rotate-half RoPE")
        need(self.num_q_subheads % 2 == 0, "num_q_subheads",
             "must be even (two query sub-heads per differential head)")
        need(self.num_kv_subheads % 2 == 0, "num_kv_subheads",
             "must be even (two key sub-heads per KV group)")
        need(self.num_diff_heads % max(self.num_kv_groups, 1) == 0, "num_kv_subheads",
             f"KV groups ({self.num_kv_groups}) must divide the {self.num_diff_heads} "
             "differential heads")
        need(0.0 <= self.dropout_rate < 1.0, "dropout_rate", "must be in [0, 1)")
        need(self.mtp_weight >= 0.0, "mtp_weight", "must be >= 0")
        need(self.rope_theta > 1.0, "rope_theta", "must be > 1")
        need(self.rms_eps > 0 and self.subln_eps > 0, "rms_eps", "epsilons must be > 0")
        need(self.yarn_factor >= 1.0, "yarn_factor", "must be >= 1")
        need(self.yarn_beta_fast > self.yarn_beta_slow > 0, "yarn_beta_fast",
             "need beta_fast > beta_slow > 0")
        need(self.param_dtype in DTYPES, "param_dtype", f"must be one of {sorted(DTYPES)}")
        need(self.compute_dtype == "auto" or self.compute_dtype in DTYPES, "compute_dtype",
             f"must be 'auto' or one of {sorted(DTYPES)}")
        need(self.remat_policy in REMAT_POLICIES, "remat_policy",
             f"must be one of {REMAT_POLICIES}")
        need(self.attention_impl in ATTENTION_IMPLS, "attention_impl",
             f"must be one of {ATTENTION_IMPLS}")
        need(self.dropout_rng in DROPOUT_RNGS, "dropout_rng", f"must be one of {DROPOUT_RNGS}")
        if self.vocab_subset:
            sub = self.vocab_subset
            if len(sub) >= self.vocab_size:
                raise ConfigError(f"ModelConfig.vocab_subset: {len(sub)} ids leave no 'other' "
                                  f"id of the {self.vocab_size}; use () for the full vocabulary")
            if not all(0 <= a < b for a, b in zip(sub, sub[1:])) or not 0 <= sub[-1] < (
                    self.vocab_size):
                raise ConfigError(f"ModelConfig.vocab_subset: ids must be distinct, sorted "
                                  f"ascending and in [0, {self.vocab_size})")
        if self.tpu_aligned:
            widths = {
                "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size,
                "vocab_size": self.model_vocab_rows,
                "num_q_subheads": self.q_width,
                "num_kv_subheads": self.kv_width,
            }
            what = {"num_q_subheads": "q-projection width num_q_subheads*head_dim ",
                    "num_kv_subheads": "k/v-projection width num_kv_subheads*head_dim ",
                    "vocab_size": "model vocabulary rows (vocab_subset + 1) " if
                    self.vocab_subset else ""}
            for field, width in widths.items():
                need(width % TPU_ALIGNMENT == 0, field,
                     f"{what.get(field, '')}{width} is not a multiple of {TPU_ALIGNMENT} "
                     "(the v6e MXU is 256x256); fix it, or set tpu_aligned=False for a "
                     "CPU-only config")

    # ---- presets -------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named preset (``tiny``, ``small``, ``1b``) with optional field overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {PRESETS}")
        base: dict[str, Any] = dict(_PRESET_FIELDS[name])
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown ModelConfig field(s) {sorted(unknown)}")
        base.update(overrides)
        return cls(**base)


_PRESET_FIELDS: dict[str, dict[str, Any]] = {
    "1b": dict(name="1b", remat_policy="auto"),
    "small": dict(
        name="small", remat_policy="auto", hidden_size=768, num_layers=12, head_dim=64,
        intermediate_size=2048,
    ),
    "tiny": dict(
        name="tiny", hidden_size=128, num_layers=6, head_dim=16, intermediate_size=1024,
        max_position_embeddings=8192, attn_block_size=256, loss_chunk_size=1024,
        remat_policy="none", tpu_aligned=False,
    ),
}


def target_platform() -> str:
    """The platform code is traced for: the ``jax.default_device`` in force (set while
    compiling ahead of time for a TPU topology from a CPU host), else the default backend."""
    import jax

    device = jax.config.jax_default_device
    if device is None:
        return jax.default_backend()
    return device if isinstance(device, str) else device.platform


def lambda_init(layer_index: Any) -> Any:
    """DIFF-01: lambda_init(l) = 0.8 - 0.6 exp(-0.3 l), l the 0-based layer index."""
    if isinstance(layer_index, int | float):
        return 0.8 - 0.6 * math.exp(-0.3 * layer_index)
    import jax.numpy as jnp

    return 0.8 - 0.6 * jnp.exp(-0.3 * jnp.asarray(layer_index, jnp.float32))
