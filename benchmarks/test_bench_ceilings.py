"""Device ceilings, measured first (BENCH-01): dense matmul rate and copy bandwidth.

Every later figure is judged against these, measured on the same device in the same
run.  The matmul is square, ``n x n @ n x n`` in the compute dtype (fp32 on CPU, bf16
on TPU/GPU; ``2 n^3`` FLOPs).  The copy is a jitted, donated, in-place ``x + 1`` over a
large fp32 array: it reads and writes every byte once, so bandwidth = 2 x bytes / time.
Donation matters on CPU, where a fresh output buffer per call would time page faults.
On TPU/GPU each ceiling is also compared with the chip's datasheet peak.
The best round is used: a ceiling is what the device *can* do.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pythoncoder.utils.figures import flops_unit


def _on_accelerator() -> bool:
    return jax.default_backend() != "cpu"


def test_matmul_ceiling(benchmark, ceilings, report):
    dtype = ceilings.compute_dtype
    n = 8192 if _on_accelerator() else 1024
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
    b = jnp.asarray(np.random.default_rng(1).standard_normal((n, n)), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    reps = 20 if _on_accelerator() else 3  # several matmuls per round: launch cost hidden

    def run():
        for _ in range(reps):
            out = f(a, b)
        out.block_until_ready()

    benchmark.pedantic(run, rounds=8, iterations=1, warmup_rounds=1)
    flops = reps * 2 * n**3 / benchmark.stats.stats.min
    ceilings.matmul_flops = flops
    sheet = ceilings.datasheet
    benchmark.extra_info.update(n=n, dtype=jnp.dtype(dtype).name, flops=flops)
    scale, unit = flops_unit()
    report(f"dense matmul ({jnp.dtype(dtype).name}, n={n})", flops / scale, unit,
           limit=None if sheet is None else sheet.matmul_flops / scale,
           limit_name=None if sheet is None else f"datasheet peak, {sheet.source}")


def test_copy_bandwidth(benchmark, ceilings, report):
    nbytes = (2 << 30) if _on_accelerator() else (256 << 20)
    f = jax.jit(lambda x: x + 1.0, donate_argnums=0)
    box = [f(jnp.zeros((nbytes // 4,), jnp.float32)).block_until_ready()]

    def run():
        box[0] = f(box[0]).block_until_ready()

    benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=1)
    bandwidth = 2 * nbytes / benchmark.stats.stats.min
    ceilings.copy_bandwidth = bandwidth
    sheet = ceilings.datasheet
    benchmark.extra_info.update(bytes=nbytes, bandwidth=bandwidth)
    report(f"copy bandwidth (x + 1 in place, {nbytes >> 20} MiB fp32)", bandwidth / 1e9, "GB/s",
           limit=None if sheet is None else sheet.bandwidth / 1e9,
           limit_name=None if sheet is None else f"datasheet HBM, {sheet.source}")
