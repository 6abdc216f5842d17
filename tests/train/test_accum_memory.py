"""Gradient accumulation costs one fp32 gradient-sized buffer, not two (issue 25, item 6).

The accumulation scan carries the fp32 sum of the micro-batch gradients; each micro-step
adds a fresh gradient to it.  So accumulating (accum_steps >= 2) may cost at most about one
more gradient-sized buffer than one micro-step alone.  The step compiled for a TPU v6e
(libtpu 0.0.42.1, ahead of time: nothing is allocated) needs more: on the 1b preset at
8x2048, remat full, the temporaries are 10.17 GB at accumulation 1 and 20.72 GB at 2 and
at 8, 2.45 fp32 gradients (4.30 GB each) more, where one is the accumulator.  Compiled on
a small model, the difference between accumulation 2 and 1 is checked against the
gradient's size.  Skips where libtpu is missing.

What the compiled 1b program holds (XLA buffer assignment, ``--xla_dump_to``): at
accumulation 1 a 7.40 GB heap of fp32 gradients (4.30 GB), bf16 copies of the weights
(about 2.2 GB: embedding and head 0.47 GB each, MLP 0.86 GB), the remat-saved residual
stream (bf16[24,8,2048,1536], 1.2 GB), loss-chunk logits and dropout bits; at
accumulation 2 the scan carries the fp32 accumulator (started from an uninitialised
``AllocateBuffer``; the first micro-step selects its own gradient) and the bf16 weight
copies, hoisted out of the loop, beside each micro-step's fresh gradients.  The compiled
``memory_analysis().temp_size_in_bytes`` exceeds that heap (2.77 GB at accumulation 1,
7.24 GB at 2, before the loss change), so part of the excess is outside XLA's buffer
assignment.  Tried without effect at 1b (temporaries at accumulation 2 or 8, bytes):
keeping the casts in the loop (an optimization barrier on the params and the micro index)
20,722,125,600; an opaque zero accumulator (no ``AllocateBuffer``) 20,723,075,424; the
first micro-step peeled out of the scan 22,318,580,640 (worse), against 20,722,093,344.
"""

import importlib.metadata
import re

import pytest

from pythoncoder.model import ModelConfig
from pythoncoder.train.config import TrainConfig
from pythoncoder.train.memory import train_step_memory

CFG = ModelConfig(name="micro", vocab_size=8192, hidden_size=256, num_layers=4, head_dim=64,
                  intermediate_size=1024, compute_dtype="bfloat16", remat_policy="full",
                  attention_impl="reference", attn_block_size=128, loss_chunk_size=256)


def _memory(accum: int) -> dict:
    try:
        return train_step_memory(CFG, TrainConfig(micro_batch=2, seq_len=256,
                                                  accum_steps=accum), topology="v6e-1").to_json()
    except RuntimeError as e:  # no libtpu: nothing to compile for
        if "cannot compile" in str(e) or "libtpu" in str(e).lower():
            pytest.skip(f"v6e-1 compile unavailable: {str(e).splitlines()[0]}")
        raise


def _libtpu() -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in re.findall(r"\d+", importlib.metadata.version("libtpu")))
    except importlib.metadata.PackageNotFoundError:
        return ()


@pytest.mark.slow  # two v6e compiles, about 2 minutes on the shared 2-core host
# Passes with libtpu 0.0.50.1 (the newest end, jax 0.12); the releases between it and
# 0.0.42.1 were not tried.
@pytest.mark.xfail(_libtpu() < (0, 0, 50), strict=True, reason=(
    "on v6e-1 with libtpu < 0.0.50 accumulating costs more than 1.25 gradients on this "
    "micro config; at "
    "1b the loop copies (step.loop_copy) brought the temporaries at accumulation 8 from "
    "20.72 GB to 17.42 GB (design defaults 88.2% of 32 GiB, checked by the test below); "
    "a further fix flips this to a pass, and strict=True then asks for the marker to go"))
def test_accumulation_costs_at_most_one_more_gradient_on_v6e():
    one, two = _memory(1), _memory(2)
    grad_bytes = one["train_state_bytes"] / 3  # fp32 params, Adam mu and nu, same shapes
    extra = two["temp_bytes"] - one["temp_bytes"]
    assert extra <= 1.25 * grad_bytes, (
        f"accumulation adds {extra / grad_bytes:.2f} gradients of temporaries "
        f"({one['temp_bytes']} -> {two['temp_bytes']} bytes; gradient {grad_bytes:.0f})")


@pytest.mark.slow  # one 1b v6e compile, 2-8 minutes on a 2-core host
def test_design_defaults_fit_90_percent_of_a_v6e():
    """Issue 25 item 6: the 1b step at the design defaults (8x2048, accumulation 8, remat
    full) compiles for a v6e-1 within the 90% budget that remat ``auto`` applies."""
    cfg = ModelConfig.preset("1b", remat_policy="full", compute_dtype="bfloat16")
    try:
        r = train_step_memory(cfg, TrainConfig(), topology="v6e-1")
    except RuntimeError as e:
        pytest.skip(f"v6e-1 compile unavailable: {str(e).splitlines()[0]}")
    assert r.total_bytes <= 0.9 * 32 * 2**30, r.total_bytes
