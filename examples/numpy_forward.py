"""Run an exported PythonCoder with NumPy alone: what another framework needs to know.

``pythoncoder export --run RUN --out DIR`` writes ``DIR/model.safetensors`` and
``DIR/config.json``.  This file reads them by the names and layouts the README documents
("Portable weights") and computes the logits in float64, with no JAX, Flax or pythoncoder
import: if it disagrees with pythoncoder's own forward pass, the README (or the export)
is wrong.  ``tests/export/test_numpy_reader_unit.py`` checks that it agrees.

    python examples/numpy_forward.py DIR 1 2 3 4      # next-token argmax after each token

The safetensors file is parsed here too (8-byte little-endian header length, a JSON
header of ``{name: {dtype, shape, data_offsets}}``, then the raw little-endian data), so
bf16 needs no extension: its 16 bits are the top half of a float32.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I32": np.int32,
           "I64": np.int64}


def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``({name: float64/int array}, metadata)`` of a safetensors file."""
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {}) or {}
    data = memoryview(raw)[8 + n:]
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        buf = data[begin:end]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(buf, "<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        else:
            arr = np.frombuffer(buf, np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<"))
        arr = arr.reshape(info["shape"])
        out[name] = arr.astype(np.float64) if arr.dtype.kind == "f" else arr
    return out, meta


def load_export(export_dir: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """The tensors and ``config.json``'s ``model_config`` of an export directory."""
    export_dir = Path(export_dir)
    config = json.loads((export_dir / "config.json").read_text())
    if config.get("format") != "pythoncoder-safetensors" or config.get("format_version") != 1:
        raise ValueError(f"{export_dir}/config.json is not a pythoncoder-safetensors v1 export")
    tensors, _ = read_safetensors(export_dir / "model.safetensors")
    return tensors, config["model_config"]


# ---------------------------------------------------------------- the architecture
def rms_norm(x: np.ndarray, scale: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def rope_tables(positions: np.ndarray, cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin ``[T, head_dim]`` for rotate-half RoPE, with YaRN when ``cfg["yarn"]``.

    YaRN (as Hugging Face's ``_compute_yarn_parameters``): each frequency is blended
    between ``theta_i`` and ``theta_i / factor`` by a ramp linear in the pair index between
    the correction dims of ``beta_fast`` and ``beta_slow``, and cos and sin are both
    multiplied by ``0.1 ln(factor) + 1``."""
    d, base = cfg["head_dim"], cfg["rope_theta"]
    theta = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    m = 1.0
    if cfg["yarn"] and cfg["yarn_factor"] > 1.0:
        s, original = cfg["yarn_factor"], cfg["yarn_original_max_position"]

        def dim(rotations: float) -> float:
            return d * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(dim(cfg["yarn_beta_fast"])), 0)
        high = min(math.ceil(dim(cfg["yarn_beta_slow"])), d - 1)
        high = high + 0.001 if low == high else high
        ramp = np.clip((np.arange(d // 2) - low) / (high - low), 0.0, 1.0)
        theta = theta * (1 - ramp) + theta / s * ramp
        m = 0.1 * math.log(s) + 1.0
    angles = positions[:, None].astype(np.float64) * theta[None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles) * m, np.sin(angles) * m


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x ``[T, n, d]``: x cos + rotate_half(x) sin, rotate_half(x) = [-x2, x1]."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def lambda_init(layer: int) -> float:
    return 0.8 - 0.6 * math.exp(-0.3 * layer)


def differential_attention(x: np.ndarray, p: dict, layer: int, cos, sin, cfg: dict):
    """One layer's attention on ``x`` ``[T, hidden]`` (already normed), causal."""
    T, d = x.shape[0], cfg["head_dim"]
    nq, nkv = cfg["num_q_subheads"], cfg["num_kv_subheads"]
    heads, groups = nq // 2, nkv // 2
    q = rotate((x @ p["attn.q_proj.kernel"]).reshape(T, nq, d), cos, sin)
    k = rotate((x @ p["attn.k_proj.kernel"]).reshape(T, nkv, d), cos, sin)
    v = (x @ p["attn.v_proj.kernel"]).reshape(T, groups, 2 * d)
    dot = lambda a, b: np.clip(np.dot(a, b), -10.0, 10.0)  # noqa: E731
    lam0 = lambda_init(layer)
    lam = np.clip(np.exp(dot(p["attn.lambda_q1"], p["attn.lambda_k1"]))
                  - np.exp(dot(p["attn.lambda_q2"], p["attn.lambda_k2"])) + lam0, 0.0, 1.0)
    causal = np.tril(np.ones((T, T), bool))
    outs = []
    for i in range(heads):
        g = i // (heads // groups)  # the KV group of differential head i
        maps = []
        for j in (0, 1):  # Q1 K1 and Q2 K2: sub-heads 2i+j and 2g+j
            s = q[:, 2 * i + j] @ k[:, 2 * g + j].T / math.sqrt(d)
            maps.append(softmax(np.where(causal, s, -np.inf)))
        a = np.maximum(maps[0] - lam * maps[1], 0.0)  # the floored differential map
        o = a @ v[:, g]
        outs.append(rms_norm(o, p["attn.subln.scale"], cfg["subln_eps"]) * (1.0 - lam0))
    return np.concatenate(outs, axis=-1) @ p["attn.o_proj.kernel"]


def rows_of(tokens: np.ndarray, cfg: dict) -> np.ndarray:
    """Tokenizer ids -> embedding/head rows: ``vocab_subset[r - 1]`` is row ``r``, every
    other id is row 0 ("other").  Without a subset, the id itself."""
    subset = np.asarray(cfg.get("vocab_subset") or [], np.int64)
    if not subset.size:
        return tokens
    pos = np.searchsorted(subset, tokens)
    hit = subset[np.minimum(pos, subset.size - 1)] == tokens
    return np.where(hit, pos + 1, 0)


def full_vocab(logits_rows: np.ndarray, cfg: dict) -> np.ndarray:
    """Row logits -> logits over all ``vocab_size`` ids: a subset's ids take their row's,
    every other id row 0's minus ``log(vocab_size - len(subset))`` (its even share)."""
    subset = np.asarray(cfg.get("vocab_subset") or [], np.int64)
    if not subset.size:
        return logits_rows
    other = logits_rows[..., :1] - math.log(cfg["vocab_size"] - subset.size)
    out = np.repeat(other, cfg["vocab_size"], axis=-1)
    out[..., subset] = logits_rows[..., 1:]
    return out


def forward(tensors: dict[str, np.ndarray], cfg: dict, tokens) -> dict[str, np.ndarray]:
    """``{"logits": [T, vocab], "mtp_logits": [T - 1, vocab], "hidden": [T, hidden]}`` for
    one sequence of tokenizer ids at positions 0..T-1.  ``mtp_logits[t]`` predicts token
    ``t + 2`` from the last block's output at ``t`` and the embedding of token ``t + 1``."""
    tokens = np.asarray(tokens, np.int64)
    T = tokens.shape[0]
    emb = tensors["embed.embedding"]
    x = emb[rows_of(tokens, cfg)]
    cos, sin = rope_tables(np.arange(T), cfg)
    eps = cfg["rms_eps"]
    for layer in range(cfg["num_layers"]):
        p = {name[len(f"blocks.{layer}."):]: t for name, t in tensors.items()
             if name.startswith(f"blocks.{layer}.")}
        x = x + differential_attention(rms_norm(x, p["attn_norm.scale"], eps), p, layer,
                                       cos, sin, cfg)
        h = rms_norm(x, p["mlp_norm.scale"], eps)
        x = x + (silu(h @ p["mlp.gate.kernel"]) * (h @ p["mlp.up.kernel"])) @ p["mlp.down.kernel"]
    head = tensors["lm_head.kernel"]  # [hidden, rows]: shared by the main and MTP heads
    logits = rms_norm(x, tensors["final_norm.scale"], eps) @ head
    nxt = emb[rows_of(tokens[1:], cfg)]
    cat = np.concatenate([rms_norm(nxt, tensors["mtp.emb_norm.scale"], eps),
                          rms_norm(x[:-1], tensors["mtp.hidden_norm.scale"], eps)], axis=-1)
    mtp = rms_norm(cat @ tensors["mtp.proj.kernel"], tensors["mtp.out_norm.scale"], eps)
    return {"logits": full_vocab(logits, cfg), "mtp_logits": full_vocab(mtp @ head, cfg),
            "hidden": x}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: numpy_forward.py EXPORT_DIR TOKEN_ID [TOKEN_ID ...]", file=sys.stderr)
        return 2
    tensors, cfg = load_export(argv[0])
    out = forward(tensors, cfg, [int(t) for t in argv[1:]])
    print(" ".join(str(int(i)) for i in out["logits"].argmax(-1)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
