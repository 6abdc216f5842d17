"""The attention op alone, forward + backward (issue 11), and its TPU compile.

* On GPU: the fused floored differential-attention kernel (``attention_impl="pallas"``,
  Pallas/Triton) and the blocked reference, against the limit: cuDNN flash attention
  (``jax.nn.dot_product_attention(implementation="cudnn")``), two *unfloored* calls over
  the same shapes (Q1/K1 and Q2/K2 with the 256-wide values).  That pair computes a
  different, cheaper function (no floor, no shared normalisation), so it is a floor on
  the time, not a competitor.
* On TPU: kernel against the reference (no cuDNN).
* On CPU the kernel only runs in Pallas interpret mode, so a time would measure the
  interpreter: the op benchmark is skipped there, saying so.
* With ``libtpu`` installed (``pip install 'jax[tpu]'``), on any host: the kernel's forward
  and backward compiled ahead of time for a v6e-1 topology at the 1b attention shapes
  (batch 8 x 2048, 12 query / 4 key sub-heads of 128, values 256); skipped without libtpu.
"""

from __future__ import annotations

import importlib.util
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pythoncoder.model import ModelConfig
from pythoncoder.model.attention import ATTENTION_KERNELS
from pythoncoder.model.kernels.diff_attention import diff_attention
from pythoncoder.targets import GIB, topology_devices

CFG = ModelConfig.preset("1b")
B, T = 8, 2048


def _shapes(dtype):
    H2, K2, D = CFG.num_q_subheads, CFG.num_kv_subheads, CFG.head_dim
    return (jax.ShapeDtypeStruct((B, T, H2, D), dtype), jax.ShapeDtypeStruct((B, T, K2, D), dtype),
            jax.ShapeDtypeStruct((B, T, CFG.num_kv_groups, CFG.value_head_dim), dtype))


def _inputs(dtype):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    return [jax.random.normal(k, s.shape, dtype) for k, s in zip(keys, _shapes(dtype),
                                                                 strict=True)]


def _fwd_bwd(attend):
    """jit(loss, grads) of sum(attend(q, k, v) ** 2) w.r.t. q, k, v."""
    return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(
        attend(q, k, v).astype(jnp.float32) ** 2), argnums=(0, 1, 2)))


def _time(fn, args, reps=10):
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def _diff(name):
    impl = ATTENTION_KERNELS[name]
    return lambda q, k, v: impl(q, k, v, jnp.float32(0.5), None, gqa_ratio=CFG.gqa_ratio,
                                block=CFG.attn_block_size)


def _cudnn_pair(q, k, v):
    """Two unfloored cuDNN flash calls over the same shapes (Q1K1 and Q2K2, values v)."""
    Bq, Tq, H2, D = q.shape
    q = q.reshape(Bq, Tq, H2 // 2, 2, D)
    k = k.reshape(Bq, Tq, k.shape[2] // 2, 2, D)
    outs = [jax.nn.dot_product_attention(q[:, :, :, j], k[:, :, :, j], v, is_causal=True,
                                         implementation="cudnn") for j in (0, 1)]
    return outs[0] - 0.5 * outs[1]


def test_attention_op_fwd_bwd(benchmark, report):
    backend = jax.default_backend()
    if backend == "cpu":
        pytest.skip("the Pallas kernel runs interpreted on CPU: a time would measure the "
                    "interpreter, not the kernel (correctness is DIFF-06 in conformance/)")
    args = _inputs(jnp.bfloat16)
    kernel = _fwd_bwd(_diff("pallas"))
    t_kernel = _time(kernel, args)
    t_ref = _time(_fwd_bwd(_diff("reference")), args)
    benchmark.pedantic(lambda: jax.block_until_ready(kernel(*args)), rounds=3, iterations=1)
    info = dict(kernel_s=t_kernel, reference_s=t_ref, batch=B, seq_len=T)
    report(f"diff attention fwd+bwd, Pallas kernel ({B}x{T}, 1b heads)", t_kernel * 1e3, "ms",
           limit=t_ref * 1e3, limit_name="blocked reference")
    if backend == "gpu":
        t_cudnn = _time(_fwd_bwd(_cudnn_pair), args)
        info["cudnn_pair_s"] = t_cudnn
        report(f"diff attention fwd+bwd vs cuDNN flash pair ({B}x{T})", t_kernel * 1e3, "ms",
               limit=t_cudnn * 1e3, limit_name="2 unfloored cuDNN flash calls")
    benchmark.extra_info.update(info)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu not installed (pip install 'jax[tpu]'): no TPU compiler")
def test_attention_kernel_compiles_for_v6e(benchmark, report):
    """Mosaic lowering + the TPU compiler, ahead of time, for one v6e chip."""
    try:
        device = topology_devices("v6e-1")[0]
    except RuntimeError as e:  # libtpu present but unusable here (e.g. another process holds it)
        pytest.skip(str(e))
    seg = jax.ShapeDtypeStruct((B, T), jnp.int32)
    lam = jax.ShapeDtypeStruct((), jnp.float32)

    def fwd_bwd(q, k, v, lam, seg):
        out, vjp = jax.vjp(lambda q, k, v, lam: diff_attention(
            q, k, v, lam, seg, gqa_ratio=CFG.gqa_ratio, interpret=False), q, k, v, lam)
        return out, vjp(out)

    result = {}

    def compile_it():
        sharding = jax.sharding.SingleDeviceSharding(device)
        with jax.default_device(device):
            lowered = jax.jit(fwd_bwd, in_shardings=sharding, out_shardings=sharding).lower(
                *_shapes(jnp.bfloat16), lam, seg)
        result["compiled"] = lowered.compile()
        result["hlo"] = lowered.as_text()

    benchmark.pedantic(compile_it, rounds=1, iterations=1)
    assert "tpu_custom_call" in result["hlo"]  # the Mosaic kernels, not a fallback
    mem = result["compiled"].memory_analysis()
    temp = int(mem.temp_size_in_bytes)
    benchmark.extra_info.update(device_kind=device.device_kind, temp_bytes=temp,
                                argument_bytes=int(mem.argument_size_in_bytes),
                                output_bytes=int(mem.output_size_in_bytes))
    report(f"diff attention kernel fwd+bwd, v6e-1 AOT temp memory ({B}x{T})", temp / GIB,
           "GiB")
    # no T x S score tensor: one fp32 (B, heads, T, T) map alone would be this large
    assert temp < B * CFG.num_diff_heads * T * T * 4
    np.testing.assert_equal(device.platform, "tpu")
