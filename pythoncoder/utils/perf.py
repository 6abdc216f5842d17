"""Device ceilings measured in-process (matmul rate, copy bandwidth).  Datasheet
peaks: ``pythoncoder.targets``; model FLOPs and the bytes a decode step must read:
``pythoncoder.train.accounting``."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


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


def bench_preset(name: str, backend: str) -> str:
    """The preset a benchmark runs: ``auto`` is ``1b`` on an accelerator (what users train
    and serve there; a tiny model measures dispatch, not the device) and ``tiny`` on CPU."""
    if name == "auto":
        return "tiny" if backend == "cpu" else "1b"
    return name
