"""Decode tokens/s, plain and MTP-speculative, at batch 1 and 8, vs the bandwidth roofline.

BENCH-01 ("decode tokens/s vs bandwidth roofline; speculative speedup and acceptance").
A decode step must read every weight it uses once (the embedding only for the B rows it
gathers) plus the KV cache of the live context, so at best

    roofline tokens/s = B * bandwidth / (param bytes + KV bytes per step),

with ``bandwidth`` the device copy bandwidth measured in the same run (a jitted,
in-place ``x + 1`` over 256 MiB: read + write).  KV bytes use the mean live context, layers x B x
context x 1024 values for the 1b layout (the model's ``kv_values_per_token_per_layer``).
The same plain-decode roofline is used for the speculative runs, so a ratio above 1
means the drafts paid for themselves.

Default (``auto``): the ``1b`` preset on TPU/GPU, ``tiny`` on CPU, random weights (so MTP
drafts are almost never accepted: speculation's worst case), plus an "agreeable" random
model whose MTP head agrees often (``pythoncoder.testing.models``).
``PYTHONCODER_BENCH_DECODE_PRESET=tiny|small|1b`` selects another preset;
``PYTHONCODER_BENCH_DECODE_NEW`` and ``..._PROMPT`` set the lengths.

Issue 14 adds: the on-device chunked loop against the one-dispatch-per-step host loop
(both vs the roofline), prefill tokens/s, and (``test_bench_speculative_trained.py``)
speculation on a trained model.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pythoncoder.infer.engine import Engine, left_pad
from pythoncoder.model import ModelConfig, build_model
from pythoncoder.testing.models import agreeable_model
from pythoncoder.train.accounting import decode_step_bytes
from pythoncoder.utils import perf

PRESET = os.environ.get("PYTHONCODER_BENCH_DECODE_PRESET", "auto")
NEW = int(os.environ.get("PYTHONCODER_BENCH_DECODE_NEW", "64"))
PROMPT = int(os.environ.get("PYTHONCODER_BENCH_DECODE_PROMPT", "128"))
COPY_BYTES = 256 * 2**20


def copy_bandwidth() -> float:
    """Bytes/s of a jitted in-place ``x + 1`` over COPY_BYTES (best of 5; read + write).

    The input is donated, so the pass streams through one buffer; without donation each
    call would allocate 256 MiB afresh and on CPU time the page faults, not the memory.
    """
    f = jax.jit(lambda a: a + 1.0, donate_argnums=0)
    x = f(jnp.zeros((COPY_BYTES // 4,), jnp.float32)).block_until_ready()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        x = f(x).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * COPY_BYTES / best


@pytest.fixture(scope="module")
def bandwidth() -> float:
    return copy_bandwidth()


@pytest.fixture(scope="module")
def cfg() -> ModelConfig:
    return ModelConfig.preset(perf.bench_preset(PRESET, jax.default_backend()))


@pytest.fixture(scope="module")
def engines(cfg):
    out = {"random": Engine(build_model(cfg, seed=0)),
           "agreeable": Engine(agreeable_model(cfg, seed=0, trunk_scale=0.01, mtp_noise=0.3))}
    if jax.default_backend() == "gpu":  # the Pallas decode kernel (DIFF-06a), same weights
        out["kernel"] = Engine(build_model(cfg.replace(attention_impl="pallas"), seed=0))
    return out


def step_bytes(engine: Engine, batch: int, context: float, *, with_mtp: bool) -> float:
    """Bytes one decode step must read: weights (embedding rows only) + live KV cache."""
    return decode_step_bytes(engine.params, engine.cfg, batch, context,
                                  with_mtp=with_mtp)


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("mode", ["plain", "speculative", "speculative-agreeable",
                                  "plain-decode-kernel"])
def test_decode_tokens_per_second(benchmark, engines, bandwidth, batch, mode):
    if mode == "plain-decode-kernel" and "kernel" not in engines:
        pytest.skip("the Pallas decode kernel is timed on GPU only (interpret mode on CPU "
                    "is not a speed figure; TPU decodes through the XLA live-prefix path)")
    engine = engines["agreeable" if mode.endswith("agreeable") else
                     "kernel" if mode.endswith("kernel") else "random"]
    speculative = mode.startswith("speculative")
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 151_643 if engine.cfg.vocab_size > 151_643
                            else engine.cfg.vocab_size, PROMPT).tolist() for _ in range(batch)]

    def run():
        return engine.generate(prompts, max_new_tokens=NEW, eos_id=None,
                               speculative=speculative)

    run()  # compile
    results = []
    benchmark.pedantic(lambda: results.append(run()), rounds=2, iterations=1)
    best = max(results, key=lambda r: r.stats["decode_tokens_per_second"])
    tps = best.stats["decode_tokens_per_second"]
    context = PROMPT + NEW / 2
    roofline = batch * bandwidth / step_bytes(engine, batch, context, with_mtp=False)
    plain_like = step_bytes(engine, batch, context, with_mtp=False)
    benchmark.extra_info.update(
        device=str(jax.devices()[0].device_kind), preset=engine.cfg.name, batch=batch,
        mode=mode, prompt_tokens=PROMPT, new_tokens=NEW,
        decode_tokens_per_second=round(tps, 1),
        copy_bandwidth_gb_s=round(bandwidth / 1e9, 2),
        step_bytes_mb=round(plain_like / 1e6, 2),
        roofline_tokens_per_second=round(roofline, 1),
        roofline_ratio=round(tps / roofline, 3),
        acceptance_rate=(round(best.stats["acceptance_rate"], 3) if speculative else None),
        tokens_per_step=round((best.stats["generated_tokens"] - batch)
                              / max(best.stats["steps"], 1) / batch, 3),
    )
    print(f"\n[decode] {engine.cfg.name} {mode} B={batch}: {tps:.1f} tok/s, roofline "
          f"{roofline:.1f} tok/s (ratio {tps / roofline:.3f}), bandwidth "
          f"{bandwidth / 1e9:.1f} GB/s, acceptance {benchmark.extra_info['acceptance_rate']}")


# ---- issue 14: the on-device loop against the host loop, prefill, a trained model --------
@pytest.mark.parametrize("batch", [1, 8])
def test_device_loop_vs_host_loop(benchmark, report, engines, bandwidth, batch):
    """Plain greedy decode, the compiled chunked loop vs one dispatch per step (same run,
    same prompts; both as ratios to the bandwidth roofline)."""
    engine = engines["random"]
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, min(engine.cfg.vocab_size, 151_643), PROMPT).tolist()
               for _ in range(batch)]
    best = {}
    for name, kw in (("host loop", dict(device_loop=False)), ("device loop", {})):
        def run(kw=kw):
            return engine.generate(prompts, max_new_tokens=NEW, eos_id=None, **kw)

        run()  # compile
        best[name] = max(run().stats["decode_tokens_per_second"] for _ in range(3))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    roofline = batch * bandwidth / step_bytes(engine, batch, PROMPT + NEW / 2,
                                              with_mtp=False)
    where = f"{engine.cfg.name}, B={batch}"
    for name, tps in best.items():
        report(f"decode tokens/s ({name}, {where})", tps, "tokens/s", limit=roofline,
               limit_name="bandwidth roofline")
    report(f"device-loop speedup over host loop ({where})", best["device loop"], "tokens/s",
           limit_from=f"decode tokens/s (host loop, {where})", limit_name="host loop")
    print(f"\n[decode] {where}: device loop {best['device loop']:.1f}, host loop "
          f"{best['host loop']:.1f} tok/s; roofline {roofline:.1f}")


def test_decode_cost_does_not_grow_with_the_cache_length(benchmark, report, engines):
    """Plain greedy at B=8 with the same prompts and live length, once with the smallest
    cache that holds them and once with a cache 16x longer: a step reads only the live
    bucket and writes its new slots in place (INF-06), so the ratio should be about 1
    (before the in-place cache it was 0.25 on the tiny preset at 4096 slots)."""
    engine = engines["random"]
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, min(engine.cfg.vocab_size, 151_643), PROMPT).tolist()
               for _ in range(8)]
    short = engine.cache_len_for(PROMPT, NEW, 8, speculative=False)
    best = {}
    for name, cache_len in (("short", short), ("long", 16 * short)):
        def run(cache_len=cache_len):
            return engine.generate(prompts, max_new_tokens=NEW, eos_id=None,
                                   cache_len=cache_len)

        run()  # compile
        best[name] = max(run().stats["decode_tokens_per_second"] for _ in range(3))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    where = f"{engine.cfg.name}, B=8, cache {short} -> {16 * short} slots"
    report(f"decode tokens/s with a 16x longer cache ({where})", best["long"], "tokens/s",
           limit=best["short"], limit_name="the same decode with the short cache")
    print(f"\n[decode] {where}: {best['short']:.1f} -> {best['long']:.1f} tok/s")


def matmul_params_per_token(engine: Engine) -> int:
    """Weights every prompt token multiplies through: the blocks' matrices (not the
    embedding gather, not the MTP module, not the head: prefill applies it to the last
    position only)."""
    total = 0
    for path, x in jax.tree_util.tree_leaves_with_path(engine.params):
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if keys[0] == "blocks" and "kernel" in keys:
            total += x.size
    return total


@pytest.mark.parametrize("batch", [1, 8])
def test_prefill_tokens_per_second(benchmark, report, engines, ceilings, batch):
    """Prefill of ``PROMPT`` tokens per row (logits of the last position only), against
    the compute roofline 2 x block matmul parameters FLOPs per token at the measured
    matmul rate (attention and the one head row per prompt left out)."""
    engine = engines["random"]
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, min(engine.cfg.vocab_size, 151_643), PROMPT).tolist()
               for _ in range(batch)]
    tokens, pads = left_pad(prompts)
    cache_len = engine.cache_len_for(PROMPT, NEW, batch, False)

    def run():
        state, out, _ = engine.prefill(tokens, pads, cache_len=cache_len,
                                       key=jax.random.PRNGKey(0))
        return jax.block_until_ready(out.tokens_BK)

    run()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    benchmark.pedantic(run, rounds=1, iterations=1)
    tps = batch * PROMPT / min(times)
    limit = ceilings.matmul_flops / (2 * matmul_params_per_token(engine))
    report(f"prefill tokens/s ({engine.cfg.name}, B={batch}, {PROMPT}-token prompt)", tps,
           "tokens/s", limit=limit, limit_name="matmul roofline (2 x block params FLOP/token)")
    print(f"\n[prefill] {engine.cfg.name} B={batch}: {tps:.0f} tok/s (limit {limit:.0f})")
