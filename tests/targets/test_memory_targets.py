"""``pythoncoder memory`` for a target without the target: compiled memory, FLOPs and HBM
bytes per step (loop bodies per trip, Pallas kernels by their declared cost), the roofline
bound, and the by-bytes list of the step's largest HBM consumers.

The fast tests compile the tiny preset's step for a deviceless H100 (seconds); the 1b step
per named target is ``slow`` (about 20 s and 1.2 GB each).
"""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pythoncoder import hlo_cost, targets
from pythoncoder.cli import main
from pythoncoder.model import ModelConfig
from pythoncoder.model.kernels.diff_attention import gpu_configs, visible_tiles
from pythoncoder.testing.targets import target_device

FIELDS = ("attention_impl", "total_bytes", "flops_per_step", "hbm_bytes_per_step",
          "roofline_step_s", "roofline_tokens_per_s", "roofline_mfu", "hbm_top", "limit_bytes")


def _memory(capsys, *args):
    code = main(["memory", "--json", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def hand_flops(cfg: ModelConfig, B: int, T: int, limits) -> float:
    """The step's FLOPs derived by hand (remat full, accumulation 1).

    Matmuls: each token passes through the 24 blocks' projections and MLP, the MTP
    projection and the output head twice (next token and MTP): 2 FLOPs per parameter
    forward, 4 backward; remat full recomputes the blocks' forward once more (2 more), less
    the two matmuls whose outputs only feed a residual add (o_proj, the MLP's down
    projection: the backward needs their inputs, not their outputs), and the loss's backward
    recomputes the two head matmuls' logits (2 more each) unless there is only one chunk.
    Attention, per (batch row, head) and per score element the kernel visits (causal
    tiles, diagonal tiles whole): forward two passes of both maps' scores (2 x 2 x 2D) plus
    A V (2E); the dQ kernel two passes of scores and dO V^T (2 x (4D + 2E)) plus dS K for
    both maps (4D); the dK/dV kernel scores, dO V^T, dK1, dK2, dV (8D + 4E).  Remat full
    runs the forward kernel twice."""
    d, L, V = cfg.hidden_size, cfg.num_layers, cfg.model_vocab_rows
    D, E, H = cfg.head_dim, cfg.value_head_dim, cfg.num_diff_heads
    block = d * (cfg.q_width + 2 * cfg.kv_width) + H * E * d + 3 * d * cfg.intermediate_size
    tokens = B * T
    recomputed = block - H * E * d - d * cfg.intermediate_size
    # one loss chunk: the forward's logits and the backward's are one expression, computed once
    logits_again = 2 * 2 * V * d if tokens > cfg.loss_chunk_size else 0
    matmul = tokens * (6 * (L * block + 2 * d * d + 2 * V * d) + 2 * L * recomputed
                       + logits_again)
    c = {k: v for k, v in gpu_configs(D, E, 2, limits).items()}

    def elems(k):
        return visible_tiles(T, c[k].block_q, c[k].block_k) * c[k].block_q * c[k].block_k

    attention = L * B * H * (2 * elems("fwd") * (8 * D + 2 * E)
                             + elems("bwd_q") * (12 * D + 4 * E)
                             + elems("bwd_kv") * (8 * D + 4 * E))
    return matmul + attention


def test_memory_for_the_h100_reports_the_step_bound(capsys):
    """The tiny step compiled for a deviceless H100: every field, consistent with itself,
    and FLOPs within 5% above the hand count (the rest: norms, softmax over the 151,808
    logits, AdamW)."""
    device = target_device("h100")
    cfg = ModelConfig.preset("tiny", compute_dtype="bfloat16", remat_policy="full")
    B, T = 2, 256
    r = _memory(capsys, "--preset", "tiny", "--micro-batch", str(B), "--seq-len", str(T),
                "--accum-steps", "1", "--remat", "full", "--topology", "h100")
    assert all(k in r for k in FIELDS)
    assert r["attention_impl"] == "pallas" and r["target"] == "h100"
    # Triton GEMM fusions, or cuBLAS where the compiler cannot autotune them deviceless
    assert r["gemm"] in ("triton", "cublas", "triton+cublas")
    assert r["limit_bytes"] == targets.TARGETS["h100"].hbm_bytes
    assert 0 < r["total_bytes"] < r["limit_bytes"] and r["fits_device"]
    sheet = targets.datasheet("h100")
    compute_s = r["flops_per_step"] / sheet["peak_bf16_flops"]
    memory_s = r["hbm_bytes_per_step"] / sheet["hbm_bandwidth"]
    assert r["roofline_step_s"] == pytest.approx(max(compute_s, memory_s), rel=1e-9)
    assert r["roofline_bound"] == ("compute" if compute_s >= memory_s else "memory")
    assert r["roofline_tokens_per_s"] == pytest.approx(B * T / r["roofline_step_s"], rel=1e-9)
    assert 0 < r["roofline_mfu"] <= 1
    assert r["unknown_trip_counts"] == [] and any(w["trips"] == cfg.num_layers
                                                  for w in r["loops"])
    top = [row["total_bytes"] for row in r["hbm_top"]]
    assert len(top) >= 5 and top == sorted(top, reverse=True)
    hand = hand_flops(cfg, B, T, targets.gpu_limits(device))
    assert hand <= r["flops_per_step"] <= 1.05 * hand


def test_memory_rejects_a_file_that_is_no_gpu_description(capsys, tmp_path):
    bad = tmp_path / "bad.pbtxt"
    bad.write_text("gpu_device_info { core_count: 1 }")
    assert main(["memory", "--preset", "tiny", "--target-config", str(bad)]) == 2
    assert "not a gpu_target_config" in capsys.readouterr().err
    assert main(["memory", "--preset", "tiny", "--target-config", str(tmp_path / "no")]) == 2
    assert main(["memory", "--topology", "h100", "--target-config", str(bad)]) == 2


@pytest.mark.slow
def test_memory_for_a_gpu_description_file(capsys, tmp_path):
    """--target-config: a GPU that is not named, described by a gpu_target_config; peaks
    from the description."""
    target_device("l4")  # skips without the compiler wheels
    path = tmp_path / "gpu.pbtxt"
    path.write_text(targets.gpu_target_config("l4", shared_memory_per_block_optin=65536,
                                              device_kind="NVIDIA Test 64 KiB"))
    r = _memory(capsys, "--preset", "tiny", "--micro-batch", "1", "--seq-len", "256",
                "--accum-steps", "1", "--target-config", str(path))
    assert r["target"] == "NVIDIA Test 64 KiB" and r["attention_impl"] == "pallas"
    assert "description" in r["peaks_source"] and r["roofline_step_s"] > 0


def test_loop_bodies_count_once_per_trip():
    """A scan of 7 matmuls: XLA's own analysis counts the body once, ``hlo_cost`` seven
    times (the control shows the difference is real)."""
    n, trips = 64, 7

    def f(x, ws):
        return jax.lax.scan(lambda c, w: (jnp.tanh(c @ w), None), x, ws)[0]

    compiled = jax.jit(f).lower(jax.ShapeDtypeStruct((n, n), jnp.float32),
                                jax.ShapeDtypeStruct((trips, n, n), jnp.float32)).compile()
    cost = hlo_cost.analyse(compiled.as_text())
    per_trip = 2 * n**3
    np.testing.assert_allclose(cost["flops"], trips * per_trip, rtol=0.05, atol=0)
    assert cost["loops"] and cost["loops"][0]["trips"] == trips
    # libtpu writes no known_trip_count: the count comes from the loop's condition then
    bare = re.sub(r'"known_trip_count":\{"n":"\d+"\},?', "", compiled.as_text())
    assert "known_trip_count" not in bare
    assert hlo_cost.analyse(bare)["loops"][0]["trips"] == trips
    xla = compiled.cost_analysis()
    xla = xla[0] if isinstance(xla, list) else xla
    assert xla["flops"] < 2 * per_trip  # the body once


def test_a_kernel_call_counts_its_declared_cost():
    """A Pallas kernel compiled for a deviceless H100 is counted by its declared
    ``CostEstimate``, on top of the program's other instructions.  XLA's own analysis counts
    any custom call as -1 FLOPs and -1 bytes; a kernel's bytes once cancelled out with
    them (the step's HBM total then left every attention kernel out)."""
    from pythoncoder.model.kernels import diff_attention as da

    device = target_device("h100")
    S, BF = jax.ShapeDtypeStruct, jnp.bfloat16
    B, T, HQ, HK, G, D, E = 1, 512, 6, 2, 1, 64, 128
    args = (S((B, T, HQ, D), BF), S((B, T, HK, D), BF), S((B, T, G, E), BF),
            S((), jnp.float32), S((B, T), jnp.int32))

    def f(q, k, v, lam, seg):
        return da.diff_attention(q, k, v, lam, seg, gqa_ratio=HQ // HK)

    with jax.default_device(device):
        text = jax.jit(f).lower(*args).compile().as_text()
    cost = hlo_cost.analyse(text)
    kernel_rows = [r for r in cost["rows"] if "triton" in r["kind"]]
    assert len(kernel_rows) == 1
    flops, _, nbytes = next(v for (name, shapes), v in hlo_cost._KERNEL_COSTS.items()
                            if name == "diff_attention_fwd" and f"[{B},{HQ // HK},{T},{E}]"
                            in shapes)
    assert kernel_rows[0]["bytes"] == nbytes
    others = sum(r["bytes"] for r in cost["rows"] if r is not kernel_rows[0])
    np.testing.assert_allclose(cost["bytes accessed"], nbytes + others, rtol=1e-9, atol=0)
    np.testing.assert_allclose(cost["flops"], flops, rtol=1e-6, atol=0)


def test_cublas_matmuls_count_their_flops_and_not_their_workspace():
    """Matmuls compiled as cuBLAS calls (``xla_gpu_enable_triton_gemm=False``, what
    ``compile_for`` falls back to where jax cannot autotune Triton GEMMs without a
    device): 2 m n k FLOPs each, read from the call's dot dimensions, and their operands
    and product as bytes -- not the cuBLAS workspace in the call's result tuple."""
    device = target_device("h100")
    S, BF = jax.ShapeDtypeStruct, jnp.bfloat16
    b, m, k, n, p = 4, 256, 512, 128, 64

    def f(x, y, z):
        return jnp.einsum("bik,bkj->bij", x, y) @ z

    with jax.default_device(device):
        lowered = jax.jit(f).lower(S((b, m, k), BF), S((b, k, n), BF), S((n, p), BF))
        text = lowered.compile(compiler_options={"xla_gpu_enable_triton_gemm": False}).as_text()
    assert targets.gemm_backend(text) == "cublas"
    cost = hlo_cost.analyse(text)
    np.testing.assert_allclose(cost["flops"], 2 * b * m * k * n + 2 * b * m * n * p,
                               rtol=1e-9, atol=0)
    gemms = [r for r in cost["rows"] if r["kind"].startswith("__cublas$")]
    assert len(gemms) == 2
    np.testing.assert_allclose(sorted(r["bytes"] for r in gemms),
                               sorted([2 * (b * m * k + b * k * n + b * m * n),
                                       2 * (b * m * n + n * p + b * m * p)]),
                               rtol=0, atol=0)


def test_a_matmul_on_a_loop_slice_counts_inside_its_custom_fusion():
    """A loop's matmul on a dynamic slice of its operand, compiled with cuBLAS matmuls: XLA
    wraps the call in a ``dynamic_slice_fusion`` (a custom fusion reading the slice in
    place), which its analysis counts as -1 FLOPs.  The loss chunks' head matmuls of the 1b
    step are such fusions (45.8 of its 155.8 TFLOP on jax 0.12 with cuBLAS).  jax 0.12 puts
    the cuBLAS call inside the fusion (without the count: 17 FLOPs); jax 0.10 keeps it
    beside a slicing fusion, where it counts as any cuBLAS call."""
    device = target_device("h100")
    S, BF = jax.ShapeDtypeStruct, jnp.bfloat16
    trips, m, k, n = 4, 256, 512, 1024

    def f(x, w):
        def body(i, acc):
            rows = jax.lax.dynamic_slice_in_dim(x, i * m, m, 0)
            return acc + jnp.dot(rows, w, preferred_element_type=jnp.float32)
        return jax.lax.fori_loop(0, trips, body, jnp.zeros((m, n), jnp.float32))

    with jax.default_device(device):
        lowered = jax.jit(f).lower(S((trips * m, k), BF), S((k, n), BF))
        text = lowered.compile(compiler_options={"xla_gpu_enable_triton_gemm": False}).as_text()
    assert '"__custom_fusion"' in text and "__cublas$" in text
    np.testing.assert_allclose(hlo_cost.analyse(text)["flops"], trips * 2 * m * k * n,
                               rtol=1e-6, atol=0)


class _Lowered:
    """Stands for a ``jax.stages.Lowered`` whose first compile fails with ``error``."""

    def __init__(self, error):
        self.error, self.calls = error, []

    def compile(self, compiler_options=None):
        self.calls.append(compiler_options)
        if len(self.calls) == 1 and self.error:
            raise self.error
        return "compiled"


class _Device:
    def __init__(self, platform):
        self.platform = platform


def test_compile_for_falls_back_to_cublas_only_for_the_deviceless_gemm_refusal():
    refusal = RuntimeError("INTERNAL: No supported config found for HLO: %gemm_fusion_dot.1; "
                           "CublasLtBackend cannot enumerate configs in deviceless mode.")
    lowered = _Lowered(refusal)
    with pytest.warns(RuntimeWarning, match="cuBLAS"):
        assert targets.compile_for(lowered, _Device("gpu")) == "compiled"
    assert lowered.calls == [None, {"xla_gpu_enable_triton_gemm": False}]
    for error, platform in ((RuntimeError("RESOURCE_EXHAUSTED: out of memory"), "gpu"),
                            (refusal, "tpu")):
        with pytest.raises(RuntimeError) as raised:
            targets.compile_for(_Lowered(error), _Device(platform))
        assert raised.value is error
    fine = _Lowered(None)
    assert targets.compile_for(fine, _Device("gpu")) == "compiled" and fine.calls == [None]
    for kind in ("__triton_gemm", "__triton_nested_gemm_fusion"):  # jax 0.12, 0.10
        assert targets.gemm_backend(f'fusion_backend_config":{{"kind":"{kind}"}}') == "triton"
    assert targets.gemm_backend("cpu program") is None


@pytest.mark.slow
@pytest.mark.parametrize("name", targets.GPU_TARGETS)
def test_1b_step_for_each_gpu(capsys, name):
    """The 1b step at 8 x 2048, accumulation 1, remat full, for each named GPU: the fused
    kernel, within the card's memory, FLOPs within the hand count; on the H100 the roofline
    bound is at most 0.25 s."""
    device = target_device(name)
    r = _memory(capsys, "--preset", "1b", "--accum-steps", "1", "--remat", "full",
                "--topology", name)
    assert r["attention_impl"] == "pallas"
    assert r["total_bytes"] < targets.TARGETS[name].hbm_bytes
    hand = hand_flops(ModelConfig.preset("1b"), 8, 2048, targets.gpu_limits(device))
    assert hand <= r["flops_per_step"] <= 1.05 * hand
    if name == "h100":
        assert r["roofline_step_s"] <= 0.25


@pytest.mark.slow
def test_1b_step_for_v6e_uses_the_kernel(capsys):
    target_device("v6e-1")
    r = _memory(capsys, "--preset", "1b", "--accum-steps", "1", "--remat", "full",
                "--topology", "v6e-1")
    assert r["attention_impl"] == "pallas" and r["fits_device"]


def test_loss_gradient_writes_no_logit_sized_scatter():
    """The chunked cross-entropy's backward forms d(logits) in one pass (issue 25: the
    autodiff of the target gather scattered into a zero logit-sized buffer per chunk, the
    largest HBM consumer of the 1b step).  Control: plain autodiff of the same loss does
    scatter."""
    from pythoncoder.model.loss import chunked_cross_entropy

    n, d, V = 64, 16, 512
    S = jax.ShapeDtypeStruct
    args = (S((n, d), jnp.bfloat16), S((d, V), jnp.float32), S((n,), jnp.int32),
            S((n,), jnp.float32))

    def ours(x, w, y, wt):
        return chunked_cross_entropy(x, w, y, wt, 16)

    def autodiff(x, w, y, wt):
        logits = jnp.dot(x, w.astype(x.dtype), preferred_element_type=jnp.float32)
        target = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
        return jnp.sum((jax.nn.logsumexp(logits, axis=-1) - target) * wt)

    def hlo(f):
        grad = jax.grad(f, argnums=(0, 1))
        return jax.jit(grad).lower(*args).compile().as_text()

    assert " scatter(" in hlo(autodiff)
    assert " scatter(" not in hlo(ours)
