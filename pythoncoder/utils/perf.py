"""Device ceilings measured in-process, and model FLOP accounting for MFU."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from pythoncoder.model import ModelConfig


def _time(fn, *args, min_time: float = 0.3, max_iters: int = 200) -> float:
    """Fastest single call, over calls repeated for at least ``min_time`` seconds.

    A ceiling is the best the device does: the minimum is robust to other processes
    stealing time now and then, where a mean would understate the peak."""
    jax.block_until_ready(fn(*args))  # compile and warm up
    best, iters, start = float("inf"), 0, time.perf_counter()
    while True:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
        iters += 1
        if time.perf_counter() - start >= min_time or iters >= max_iters:
            return best


# Nominal dense bf16 peak per chip (TFLOP/s, vendor datasheets), by device_kind prefix;
# MFU in the training log uses --peak-tflops, else this table, else none (never a matmul
# timed at every start; `nox -s benchmarks` measures the achievable rate).
NOMINAL_PEAK_TFLOPS = {
    "TPU v6": 918.0, "TPU v5p": 459.0, "TPU v5": 197.0, "TPU v4": 275.0,
    "NVIDIA H200": 989.0, "NVIDIA H100": 989.0, "NVIDIA A100": 312.0,
}


def nominal_peak_flops(device=None) -> float | None:
    """The datasheet bf16 peak (FLOP/s) of ``device`` (default: the first), or ``None``."""
    kind = (device or jax.devices()[0]).device_kind
    for prefix, tflops in NOMINAL_PEAK_TFLOPS.items():
        if kind.startswith(prefix):
            return tflops * 1e12
    return None


def measure_matmul_flops(dtype=None, n: int | None = None, min_time: float = 0.3) -> float:
    """Dense square-matmul rate (FLOP/s) in ``dtype`` on the default device."""
    dtype = dtype or (jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)
    n = n or (1024 if jax.default_backend() == "cpu" else 8192)
    a = jnp.ones((n, n), dtype)
    b = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    return 2 * n**3 / _time(f, a, b, min_time=min_time)


def measure_copy_bandwidth(nbytes: int | None = None, min_time: float = 0.3) -> float:
    """Device memory bandwidth (bytes/s) of ``x + 1`` over a large array: one read and
    one write per element.  The input is donated and the output fed back, so the buffer
    is updated in place: no fresh allocation (page faults on CPU) enters the figure."""
    nbytes = nbytes or (256 << 20 if jax.default_backend() == "cpu" else 2 << 30)
    f = jax.jit(lambda v: v + 1.0, donate_argnums=0)
    x = jax.block_until_ready(f(jnp.ones((nbytes // 4,), jnp.float32)))
    best, iters, start = float("inf"), 0, time.perf_counter()
    while time.perf_counter() - start < min_time and iters < 200:
        t0 = time.perf_counter()
        x = jax.block_until_ready(f(x))
        best = min(best, time.perf_counter() - t0)
        iters += 1
    return 2 * nbytes / best


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Model FLOPs per trained token, MaxText-style: 6 x matmul parameters + attention.

    * matmul parameters: every weight matrix except the embedding lookup; the output
      head counts twice because the MTP module reuses it (main + MTP logits).
    * attention (causal, so half the full T x T map), forward + backward = 3 x forward:
      per layer the two differential score maps cost 2*T*q_width and A.V costs
      2*T*(heads*2*head_dim) = 2*T*q_width, so 3 * 0.5 * 4 * T * q_width = 6*T*q_width.
    """
    d, L = cfg.hidden_size, cfg.num_layers
    attn = d * cfg.q_width + 2 * d * cfg.kv_width + cfg.num_diff_heads * cfg.value_head_dim * d
    mlp = 3 * d * cfg.intermediate_size
    head = d * cfg.model_vocab_rows
    mtp = 2 * d * d
    matmul_params = L * (attn + mlp) + 2 * head + mtp
    return 6.0 * matmul_params + L * 6.0 * seq_len * cfg.q_width


def decode_step_bytes(params, cfg: ModelConfig, batch: int, context: float, *,
                      with_mtp: bool) -> float:
    """Bytes one decode step must read: every weight once (the embedding only for the
    ``batch`` rows it gathers; the MTP module only ``with_mtp``) plus the live KV cache of
    ``context`` tokens per row.  ``batch`` x bandwidth / this is the decode roofline."""
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


def bench_preset(name: str, backend: str) -> str:
    """The preset a benchmark runs: ``auto`` is ``1b`` on an accelerator (what users train
    and serve there; a tiny model measures dispatch, not the device) and ``tiny`` on CPU."""
    if name == "auto":
        return "tiny" if backend == "cpu" else "1b"
    return name
