"""Portable weights: a trained model as safetensors + ``config.json`` + the tokenizer.

Layout of an export directory (``pythoncoder export --run RUN --out DIR``)::

    DIR/model.safetensors   every parameter, one tensor per name (below), bf16 or fp32
    DIR/config.json         {"format": "pythoncoder-safetensors", "format_version": 1,
                             "dtype": ..., "model_config": {ModelConfig fields}}
    DIR/tokenizer.json      the Qwen2.5-Coder tokenizer (Hugging Face ``tokenizers`` format)

Tensor names are the parameter paths of :class:`pythoncoder.model.PythonCoder` joined by
dots, with the layer index after ``blocks`` (layers are stored one by one even when the
model keeps them stacked on a leading layer axis), e.g.::

    embed.embedding                 [vocab, hidden]
    blocks.{i}.attn_norm.scale      [hidden]
    blocks.{i}.attn.q_proj.kernel   [hidden, q_subheads * head_dim]
    blocks.{i}.attn.k_proj.kernel   [hidden, kv_subheads * head_dim]
    blocks.{i}.attn.v_proj.kernel   [hidden, kv_subheads * head_dim]
    blocks.{i}.attn.o_proj.kernel   [q_subheads * head_dim, hidden]
    blocks.{i}.attn.lambda_{q1,k1,q2,k2}   [head_dim]
    blocks.{i}.attn.subln.scale     [2 * head_dim]
    blocks.{i}.mlp_norm.scale       [hidden]
    blocks.{i}.mlp.{gate,up}.kernel [hidden, intermediate]
    blocks.{i}.mlp.down.kernel      [intermediate, hidden]
    final_norm.scale, lm_head.kernel [hidden, vocab]
    mtp.{emb_norm,hidden_norm,out_norm}.scale, mtp.proj.kernel [2 * hidden, hidden]

Every matrix is stored as ``[in, out]`` (the model computes ``x @ kernel``); see
``spec/requirements.md`` for the head layout inside the attention projections.

``vocab`` is ``model_config.vocab_size`` (151,808) unless ``model_config.vocab_subset``
lists token ids (the demo's trimmed vocabulary): then it is ``len(vocab_subset) + 1``,
row ``r >= 1`` is token ``vocab_subset[r - 1]`` and row 0 stands for every other token,
its probability split evenly over them (``pythoncoder/model/vocab.py``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pythoncoder.model.config import ModelConfig
from pythoncoder.utils.files import atomic_write

if TYPE_CHECKING:
    import jax

    from pythoncoder.model.transformer import PythonCoder

# JAX and Flax are imported inside the functions that use them: ``pythoncoder export``'s
# arguments are checked (``configure_export``) before JAX loads.

FORMAT = "pythoncoder-safetensors"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
DTYPES = ("bfloat16", "float32")


class ExportError(ValueError):
    """An export directory that cannot be written or loaded; the message says why."""


def _keys(path: tuple) -> list[str]:
    keys = []
    for p in path:
        key = getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))
        if key != "value":
            keys.append(str(key))
    return keys


def _flat_params(model: PythonCoder) -> dict[tuple[str, ...], jax.Array]:
    import jax
    from flax import nnx

    state = nnx.state(model, nnx.Param)
    return {tuple(_keys(path)): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def tensor_names(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every exported tensor name and its shape, for ``cfg`` (nothing is allocated)."""
    from pythoncoder.model.transformer import abstract_model

    flat = _flat_params(abstract_model(cfg))
    return {name: tuple(arr.shape) for name, arr in _unstack(cfg, flat).items()}


def _unstack(cfg: ModelConfig, flat: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    import jax

    out: dict[str, Any] = {}
    for keys, arr in flat.items():
        if keys[0] == "blocks":  # layers are stacked on a leading axis
            for i in range(cfg.num_layers):
                out[".".join(("blocks", str(i), *keys[1:]))] = (
                    jax.ShapeDtypeStruct(arr.shape[1:], arr.dtype)
                    if isinstance(arr, jax.ShapeDtypeStruct) else arr[i])
        else:
            out[".".join(keys)] = arr
    return out


def export_weights(model: PythonCoder, cfg: ModelConfig, out_dir: str | Path, *,
                   dtype: str = "bfloat16", tokenizer: Any = None) -> Path:
    """Write ``model`` under ``out_dir`` (created; files replaced atomically)."""
    import jax.numpy as jnp
    from safetensors.numpy import save_file

    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np_dtype = jnp.bfloat16 if dtype == "bfloat16" else np.float32
    tensors = {name: np.ascontiguousarray(np.asarray(jnp.asarray(arr).astype(np_dtype)))
               for name, arr in _unstack(cfg, _flat_params(model)).items()}
    bad = [n for n, a in tensors.items() if not np.isfinite(a.astype(np.float32)).all()]
    if bad:
        raise ExportError(f"refusing to export non-finite parameters: {bad[:5]}")
    atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(
        tensors, tmp, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)}))
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "dtype": dtype,
              "model_config": dataclasses.asdict(cfg)}
    atomic_write(out / CONFIG_FILE,
            lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    if tokenizer is None:
        from pythoncoder.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer()
    atomic_write(out / TOKENIZER_FILE, lambda tmp: tokenizer.save(tmp))
    return out


def read_config(weights_dir: str | Path) -> tuple[ModelConfig, str]:
    """``(ModelConfig, stored dtype)`` from an export directory's ``config.json``."""
    path = Path(weights_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"{path} is missing or not JSON: {e}") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ExportError(f"{path} is not a {FORMAT} config")
    if config.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{path}: format_version {config.get('format_version')!r}, "
                          f"this pythoncoder reads {FORMAT_VERSION}")
    try:
        return ModelConfig(**config["model_config"]), str(config.get("dtype"))
    except (KeyError, TypeError, ValueError) as e:
        raise ExportError(f"{path}: invalid model_config: {e}") from e


def load_weights(weights_dir: str | Path, cfg: ModelConfig | None = None
                 ) -> tuple[PythonCoder, ModelConfig]:
    """The model stored in ``weights_dir``; ``cfg`` (same shapes, e.g. YaRN on) overrides.

    Every tensor must be present with its exact shape and no other name may appear;
    values are cast to the config's ``param_dtype``.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from pythoncoder.model.transformer import abstract_model

    saved_cfg, _ = read_config(weights_dir)
    cfg = saved_cfg if cfg is None else cfg
    path = Path(weights_dir) / WEIGHTS_FILE
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError, ValueError) as e:
        raise ExportError(f"cannot read {path}: {e}") from e
    graphdef, state = nnx.split(abstract_model(cfg))
    expected = tensor_names(cfg)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ExportError(f"{path} does not match the config: missing {missing[:5]}, "
                          f"unexpected {extra[:5]}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ExportError(f"{path}: {name} has shape {tuple(tensors[name].shape)}, "
                              f"the config needs {shape}")

    def fill(path, leaf):
        keys = _keys(path)
        if keys[0] == "blocks":  # layers are stacked on a leading axis
            value = np.stack([tensors[".".join(("blocks", str(i), *keys[1:]))]
                              for i in range(cfg.num_layers)])
        else:
            value = tensors[".".join(keys)]
        return jnp.asarray(value, dtype=leaf.dtype)

    filled = jax.tree_util.tree_map_with_path(fill, state)
    return nnx.merge(graphdef, filled), cfg
