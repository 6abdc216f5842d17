"""The Pallas kernels compiled ahead of time for every named target (H100, A100, L4, TPU
v6e-1) and for GPU descriptions that are not named, by the targets' own compilers (XLA's GPU
compiler with Triton and ptxas; libtpu), at the 1b shapes.  No accelerator is needed: the
compile-only wheels come with ``pip install -e '.[targets]'``; without them these tests
skip, saying which is missing.

The negative control (the kernel's old fixed tiling, 128 x 128, 8 warps, 2 stages, refused by
the H100's compiler for want of shared memory) is the DIFF-06b conformance test in
``conformance/test_diff_kernel.py``.
"""

import dataclasses
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pythoncoder import targets
from pythoncoder.model import ModelConfig
from pythoncoder.model.attention import differential_attention
from pythoncoder.model.kernels import diff_attention as da
from pythoncoder.model.kernels.diff_decode import decode_config, decode_diff_attention
from pythoncoder.testing.targets import target_device

CFG = ModelConfig.preset("1b")
D, E, R = CFG.head_dim, CFG.value_head_dim, CFG.gqa_ratio
HQ, HK, G = CFG.num_q_subheads, CFG.num_kv_subheads, CFG.num_kv_groups
T = 2048  # the training length; the kernels' shared memory does not depend on the batch
BF = jnp.bfloat16
KERNEL_NAMES = ("diff_attention_fwd", "diff_attention_bwd_q", "diff_attention_bwd_kv")


def _train_args(B=1, seq=T):
    S = jax.ShapeDtypeStruct
    return (S((B, seq, HQ, D), BF), S((B, seq, HK, D), BF), S((B, seq, G, E), BF),
            S((), jnp.float32), S((B, seq), jnp.int32))


def _fwd_bwd(**kw):
    def f(q, k, v, lam, seg):
        def loss(q, k, v, lam):
            out = da.diff_attention(q, k, v, lam, seg, gqa_ratio=R, **kw)
            return jnp.sum(out.astype(jnp.float32))
        return jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, lam)
    return f


def _compile(fn, args, device):
    with jax.default_device(device):
        return jax.jit(fn).lower(*args).compile()


def _decode_compile(device, T_new, S=8192, B=1, config=None):
    sds = jax.ShapeDtypeStruct
    args = (sds((B, T_new, HQ, D), BF), sds((B, S, HK, D), BF), sds((B, S, G, E), BF),
            sds((), jnp.float32), sds((B, T_new), jnp.int32), sds((B, S), jnp.int32),
            sds((B, T_new), jnp.int32), sds((), jnp.int32))

    def fn(q, k, v, lam, q_slots, k_seg, q_seg, live):
        return decode_diff_attention(q, k, v, lam, q_slots, k_seg, q_seg, live, gqa_ratio=R,
                                     interpret=False, config=config)
    return _compile(fn, args, device)


@pytest.mark.parametrize("name", targets.GPU_TARGETS + ("v6e-1",))
def test_training_kernel_compiles_for_each_target(name):
    """Forward and both backward kernels, sized for the target, compile at 1b shapes."""
    device = target_device(name)
    text = _compile(_fwd_bwd(), _train_args(), device).as_text()
    for kernel in KERNEL_NAMES:
        assert kernel in text, f"{kernel} missing from the {name} program"
    if targets.TARGETS[name].platform == "cuda":
        assert text.count("__gpu$xla.gpu.triton") >= 3
        limits = targets.gpu_limits(device)
        assert limits.smem_per_block == targets.TARGETS[name].gpu["shared_memory_per_block_optin"]
        for kernel, c in da.gpu_configs(D, E, 2, limits).items():
            need = da.smem_estimate(kernel, c, D, E, 2, limits.compute_capability)
            assert need <= limits.smem_per_block


@pytest.mark.parametrize("name", targets.GPU_TARGETS)
def test_decode_kernel_compiles_for_each_gpu_target(name):
    """The decode kernel (decode T=1, verification T=2) against an 8192-slot cache.  On TPU
    the model never calls it (attention.py), so only the GPUs are compiled for."""
    device = target_device(name)
    for T_new in (1, 2):
        assert "diff_attention_decode" in _decode_compile(device, T_new).as_text()


def _requested_smem(device, kernel, c, D=D, E=E):
    """Shared memory the compiler asks for to run one kernel at ``c``, read from its refusal
    on a description with 1 KiB per block."""
    st = da._Static(ratio=R, configs=dict.fromkeys(da.KERNELS, c), scale=0.1, floor=True,
                    causal=True, interpret=False, platform="gpu")
    S = jax.ShapeDtypeStruct
    q, k, v = S((1, 2 * R, T, D), BF), S((1, 2, T, D), BF), S((1, 2, T, E), BF)
    stat = S((1, 2 * R, T, 1), jnp.float32)
    common = (q, q, k, k, v, S((1, T, 1), jnp.int32), S((1, 1, T), jnp.int32),
              S((1, 1), jnp.float32))
    fn, args = {
        "fwd": (da._forward, common),
        "bwd_q": (da._backward_q, common + (stat, stat, S((1, 2 * R, T, E), BF))),
        "bwd_kv": (da._backward_kv, common + (stat, stat, S((1, 2 * R, T, E), BF), stat, stat)),
    }[kernel]
    return _refused_request(lambda: _compile(lambda *a: fn(st, *a), args, device))


def _refused_request(compile_it) -> int:
    with pytest.raises(Exception, match="Shared memory size limit exceeded") as err:
        compile_it()
    return int(re.search(r"requested (\d+)", str(err.value)).group(1))


def _probe(cc):
    return target_device(target_config=targets.gpu_target_config(
        "h100", shared_memory_per_block_optin=1024, cc=cc,
        device_kind=f"NVIDIA Probe sm_{cc[0]}{cc[1]}"))


# Every compute-capability family the sizing tells apart (``da.mma_family``: by the major
# version; Triton asks the same of sm_80, sm_86 and sm_89), and sm_120, which is mma again.
FAMILIES = [(8, 0), (9, 0), (10, 0), (12, 0)]


# Hopper (the H100 the project is checked on) by default; the other families (~15 s of
# compiles each) with -m slow.
@pytest.mark.parametrize("cc", [cc if cc == (9, 0) else pytest.param(cc, marks=pytest.mark.slow)
                                for cc in FAMILIES], ids=lambda cc: f"sm_{cc[0]}{cc[1]}")
def test_shared_memory_estimate_matches_the_compiler(cc):
    """For every candidate tiling of every kernel (not only the ones a named card gets),
    the estimate the sizing relies on is never below what Triton asks for, and at the 1b
    shapes not far above it (so it wastes no card's memory): Hopper's wgmma, Blackwell's
    tcgen05 and the older mma stage different tiles.  What Triton asks for is read from its
    refusal on a description of the family with 1 KiB of shared memory per block."""
    probe = _probe(cc)
    for kernel in da.KERNELS:
        for c in da.GPU_CANDIDATES:
            measured = _requested_smem(probe, kernel, c)
            estimate = da.smem_estimate(kernel, c, D, E, 2, cc)
            assert measured <= estimate <= 1.2 * measured + 4096, (kernel, c, measured,
                                                                   estimate)
    if cc >= (10, 0):
        # the decode program's other fusions go through XLA's own LLVM, which at the oldest
        # supported jaxlib writes PTX 8.5, too old for sm_100/sm_120: the compile aborts the
        # process instead of raising (training kernels compile alone, through Triton only)
        return
    for c in _decode_candidates():
        measured = _refused_request(lambda c=c: _decode_compile(probe, 1, config=c))
        assert measured <= da.smem_estimate("decode", c, D, E, 2, cc) <= measured + 4096, c


def _decode_candidates(rows=16):
    from pythoncoder.model.kernels.diff_decode import DECODE_CANDIDATES
    return [dataclasses.replace(c, block_q=rows) for c in DECODE_CANDIDATES]


@pytest.mark.slow  # ~33 s of compiles; the 1b head shape's test above runs by default
@pytest.mark.parametrize("cc", [(8, 0), (9, 0), (10, 0)], ids=lambda cc: f"sm_{cc[0]}{cc[1]}")
def test_shared_memory_estimate_is_never_below_the_compiler_at_other_head_shapes(cc):
    """The estimate holds beyond the 1b shapes (head dim 64, value dim 128: a smaller
    model): never below the compiler's request for any candidate tiling."""
    probe = _probe(cc)
    for kernel in da.KERNELS:
        for c in da.GPU_CANDIDATES:
            measured = _requested_smem(probe, kernel, c, D=64, E=128)
            assert measured <= da.smem_estimate(kernel, c, 64, 128, 2, cc), (kernel, c)


def test_first_fit_takes_a_tiling_whose_estimate_equals_the_limit():
    """The fit is inclusive: a card with exactly a tiling's estimate gets that tiling; one
    byte less gets the next candidate that fits."""
    first, second = da.GPU_CANDIDATES[:2]
    for kernel in da.KERNELS:
        need = da.smem_estimate(kernel, first, D, E, 2, (9, 0))
        exact = targets.GpuLimits((9, 0), need, "exact")
        assert da.first_fit(kernel, da.GPU_CANDIDATES, D, E, 2, exact) == first
        short = targets.GpuLimits((9, 0), need - 1, "short")
        assert da.first_fit(kernel, da.GPU_CANDIDATES, D, E, 2, short) != first
        assert da.smem_estimate(kernel, second, D, E, 2, (9, 0)) < need
    smallest = min(da.smem_estimate(k, da.GPU_CANDIDATES[-1], D, E, 2, (9, 0))
                   for k in da.KERNELS)
    with pytest.raises(da.KernelDoesNotFit, match="no tiling of diff_attention_"):
        da.gpu_configs(D, E, 2, targets.GpuLimits((9, 0), smallest - 1, "tiny"))


def _limits(name):
    t = targets.TARGETS[name]
    return targets.GpuLimits(t.gpu["cc"], t.gpu["shared_memory_per_block_optin"], name)


def test_named_gpus_get_tilings_that_fit_them():
    """Each card gets the biggest candidate tiling its shared memory takes: the H100 bigger
    tiles than the A100, the A100 bigger than the 99 KiB cards; the A100's backward kernels
    pipeline (two stages), which the mma family's estimate lets them."""
    area = {n: sum(c.block_q * c.block_k for c in da.gpu_configs(D, E, 2, _limits(n)).values())
            for n in targets.GPU_TARGETS}
    assert area["h100"] > area["a100"] > area["l4"]
    a100 = da.gpu_configs(D, E, 2, _limits("a100"))
    assert a100["bwd_q"].num_stages == a100["bwd_kv"].num_stages == 2
    assert decode_config(16, D, E, 2, _limits("l4")).block_k * 2 <= \
        decode_config(16, D, E, 2, _limits("h100")).block_k * decode_config(
            16, D, E, 2, _limits("h100")).num_stages


@pytest.mark.parametrize("smem,cc", [(65536, (8, 6))])
def test_sizing_follows_an_unnamed_gpu_description(smem, cc):
    """A GPU that is none of the named ones (another shared memory size and compute
    capability), described by a gpu_target_config: the kernels are sized from its limits and
    its compiler takes them."""
    text = targets.gpu_target_config("h100", shared_memory_per_block_optin=smem,
                                     shared_memory_per_core=smem + 1024, cc=cc,
                                     device_kind=f"NVIDIA Test {smem // 1024} KiB")
    device = target_device(target_config=text)
    limits = targets.gpu_limits(device)
    assert (limits.smem_per_block, limits.compute_capability) == (smem, cc)
    configs = da.gpu_configs(D, E, 2, limits)
    assert configs != da.gpu_configs(D, E, 2, _limits("h100"))
    text = _compile(_fwd_bwd(), _train_args(), device).as_text()
    assert all(k in text for k in KERNEL_NAMES)
    assert "diff_attention_decode" in _decode_compile(device, 1).as_text()


def test_where_no_tiling_fits_auto_takes_the_reference_and_pallas_fails():
    """An sm_75 GPU (no bf16 tensor-core dots for Triton): ``auto`` traces the reference
    attention with a one-line warning; ``pallas`` named explicitly raises before anything
    runs."""
    device = target_device(target_config=targets.gpu_target_config(
        "l4", cc=(7, 5), shared_memory_per_block_optin=65536, device_kind="NVIDIA Test sm_75"))
    cfg = ModelConfig.preset("tiny", compute_dtype="bfloat16")
    q, k, v, lam, seg = _train_args(B=1, seq=64)
    q = jax.ShapeDtypeStruct((1, 64, cfg.num_q_subheads, cfg.head_dim), BF)
    k = jax.ShapeDtypeStruct((1, 64, cfg.num_kv_subheads, cfg.head_dim), BF)
    v = jax.ShapeDtypeStruct((1, 64, cfg.num_kv_groups, cfg.value_head_dim), BF)

    def attend(c, device=device):
        def f(q, k, v, lam, seg):
            slots = jnp.arange(seg.shape[1], dtype=jnp.int32)
            return differential_attention(q, k, v, lam, slots[None], slots, seg, seg, cfg=c,
                                          self_attention=True)
        with jax.default_device(device):
            return str(jax.make_jaxpr(f)(q, k, v, lam, seg))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jaxpr = attend(cfg)
    assert "pallas_call" not in jaxpr
    assert len(caught) == 1 and "reference" in str(caught[0].message)
    assert "compute capability" in str(caught[0].message)
    with pytest.raises(da.KernelDoesNotFit, match="attention_impl='pallas'.*sm_75"):
        attend(cfg.replace(attention_impl="pallas"))
    # the control: on an sm_80 card the same trace takes the kernel
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "pallas_call" in attend(cfg, target_device("a100"))


def test_loss_statistics_kernel_compiles_for_the_tpu_and_counts_its_declared_cost():
    """The fused head matmul + log-sum-exp (``ce_stats``) that the loss forward runs on TPU,
    compiled by Mosaic at one micro-step's rows of the 1b model (8 x 2048, the head's
    151,808 columns): the step's cost counts it by its declared cost, which reads the head
    once per row block and never the logits."""
    from pythoncoder import hlo_cost
    from pythoncoder.model.kernels import ce_stats as ce

    device = target_device("v6e-1")
    S = jax.ShapeDtypeStruct
    n, d, v = 8 * T, CFG.hidden_size, CFG.model_vocab_rows
    text = _compile(lambda x, w, y: ce.ce_stats(x, w, y), (S((n, d), BF), S((d, v), BF),
                                                          S((n,), jnp.int32)), device).as_text()
    assert "ce_stats" in text
    cost = hlo_cost.analyse(text)
    rows = [r for r in cost["rows"] if r["kind"] == "tpu_custom_call"]
    assert len(rows) == 1
    v_pad = -(-v // ce.BLOCK_VOCAB) * ce.BLOCK_VOCAB
    declared = ce.cost_estimate(n, d, v_pad, block_rows=ce.BLOCK_ROWS)
    assert rows[0]["bytes"] == declared.bytes_accessed
    assert declared.bytes_accessed < n * v * 4  # less than the fp32 logits it never writes
    assert declared.flops <= cost["flops"] <= 1.01 * declared.flops


def test_a_new_kernel_is_counted_by_the_cost_it_declares_under_its_own_name():
    """A toy Pallas kernel named like no kernel of the project (a scaled copy declaring
    1e9 FLOPs), compiled by Mosaic for the v6e: the step's cost counts its declared FLOPs and
    bytes, found by the name it was declared under; the same kernel called without declaring
    its cost is listed as uncosted instead of being counted silently at zero."""
    from jax.experimental import pallas as pl

    from pythoncoder import hlo_cost

    device = target_device("v6e-1")
    S = jax.ShapeDtypeStruct
    x = S((256, 256), jnp.float32)

    def kernel(x_ref, o_ref):
        o_ref[...] = x_ref[...] * 3.0

    declared = pl.CostEstimate(flops=10**9, transcendentals=7, bytes_accessed=123_456)

    def declared_call(x):
        return da.pallas_call(kernel, name="toy_triple_kernel", out_shape=x,
                              cost_estimate=declared)(x)

    def undeclared_call(x):
        return pl.pallas_call(kernel, name="toy_undeclared_kernel", out_shape=x)(x)

    cost = hlo_cost.analyse(_compile(declared_call, (x,), device).as_text())
    rows = [r for r in cost["rows"] if r["kind"] == "tpu_custom_call"]
    assert len(rows) == 1 and rows[0]["bytes"] == 123_456
    assert 10**9 <= cost["flops"] <= 10**9 + 10**6 and cost["uncosted_kernels"] == []
    cost = hlo_cost.analyse(_compile(undeclared_call, (x,), device).as_text())
    assert len(cost["uncosted_kernels"]) == 1 and cost["flops"] < 10**6


@pytest.mark.parametrize("seq", [64, 200])
def test_training_kernel_compiles_for_the_tpu_below_and_between_tiles(seq):
    """Sequences shorter than a 128-lane tile, or not a multiple of one, compile by Mosaic
    (tiles padded to whole lanes; at 64 the capped 64-wide tile used to be refused: 'cannot
    statically prove that index in dimension 2 is a multiple of 128')."""
    cfg = ModelConfig.preset("tiny")
    device = target_device("v6e-1")
    S = jax.ShapeDtypeStruct
    args = (S((1, seq, cfg.num_q_subheads, cfg.head_dim), BF),
            S((1, seq, cfg.num_kv_subheads, cfg.head_dim), BF),
            S((1, seq, cfg.num_kv_groups, cfg.value_head_dim), BF),
            S((), jnp.float32), S((1, seq), jnp.int32))

    def f(q, k, v, lam, seg):
        def loss(q, k, v, lam):
            out = da.diff_attention(q, k, v, lam, seg, gqa_ratio=cfg.gqa_ratio,
                                    platform="tpu", interpret=False)
            return jnp.sum(out.astype(jnp.float32))
        return jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, lam)

    text = _compile(f, args, device).as_text()
    assert all(k in text for k in KERNEL_NAMES)
    assert {c.block_q for c in da.kernel_configs(seq, 8, 16, platform="tpu").values()} == {128}


@pytest.mark.parametrize("seq", [64, 200])
def test_the_tpu_tiling_of_a_short_sequence_gives_the_same_attention(seq):
    """The TPU's lane-padded tiling (interpreted) equals the CPU's 8-row one, bitwise: the
    padded keys are masked, the padded queries dropped."""
    keys = jax.random.split(jax.random.key(seq), 3)
    q = jax.random.normal(keys[0], (1, seq, 12, 16))
    k = jax.random.normal(keys[1], (1, seq, 4, 16))
    v = jax.random.normal(keys[2], (1, seq, 2, 32))
    seg = jnp.ones((1, seq), jnp.int32).at[:, seq // 2:].set(2)
    cpu = da.diff_attention(q, k, v, 0.3, seg, gqa_ratio=3, platform="cpu")
    tpu = da.diff_attention(q, k, v, 0.3, seg, gqa_ratio=3, platform="tpu", interpret=True)
    np.testing.assert_allclose(np.asarray(tpu), np.asarray(cpu), rtol=0, atol=0)
