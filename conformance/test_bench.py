"""BENCH-01: the benchmark harness, checked cheaply (no benchmark is run here).

* figures become rows ``value | limit | ratio`` with the ratio value / limit, limits
  named by another figure are filled from the same run, and gaps show as gaps;
* the suite collects a benchmark for every required figure;
* the MFU numerator (model FLOPs per token) equals an independent count over the
  ``1b`` model's own weight shapes, and the documented figure in ``spec/bench.toml``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from flax import nnx

from pythoncoder.model import ModelConfig, abstract_model
from pythoncoder.spec import check_values
from pythoncoder.train.accounting import model_flops_per_token
from pythoncoder.utils import figures as figs

ROOT = Path(__file__).resolve().parents[1]


def _rows(table: str) -> list[list[str]]:
    lines = table.strip().splitlines()[2:]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]


@pytest.mark.req("BENCH-01")
def test_figures_become_rows_with_ratio_to_a_limit_of_the_same_run():
    measured = [
        figs.Figure("matmul", 100.0, "GFLOP/s", device="CPU"),
        figs.Figure("train tokens/s", 60.0, "tokens/s", limit=400.0,
                    limit_name="matmul ceiling", device="CPU"),
        figs.Figure("tiktoken", 2_000_000.0, "tokens/s", device="host"),
        figs.Figure("ours", 500_000.0, "tokens/s", limit_from="tiktoken",
                    limit_name="tiktoken, 1 process", device="host"),
        figs.Figure("orphan", 3.0, "batches/s", limit_from="never measured", device="host"),
        figs.Figure("wrong unit", 3.0, "batches/s", limit_from="tiktoken", device="host"),
    ]
    resolved = figs.resolve(measured)
    assert [f.ratio for f in resolved] == [None, 0.15, None, 0.25, None, None]
    assert resolved[3].limit == 2_000_000.0
    assert "not measured" in resolved[4].limit_name
    assert "unit" in resolved[5].limit_name

    rows = _rows(figs.markdown_table(resolved))
    assert rows[0] == ["matmul", "100 GFLOP/s", "—", "—", "CPU"]
    assert rows[1] == ["train tokens/s", "60 tokens/s", "400 tokens/s (matmul ceiling)",
                       "0.150", "CPU"]
    assert rows[3] == ["ours", "500,000 tokens/s",
                       "2,000,000 tokens/s (tiktoken, 1 process)", "0.250", "host"]
    assert rows[4][2].startswith("— (never measured")
    assert len(rows) == len(measured)


@pytest.mark.req("BENCH-01")
def test_figures_are_read_from_benchmark_extra_info():
    """The conventions other benchmarks use to land in the table (see figures.py)."""
    listed = figs.figures_from_extra_info(
        {"figures": [{"name": "a", "value": 2, "unit": "x", "limit": 8.0}]})
    assert [(f.name, f.ratio) for f in listed] == [("a", 0.25)]
    flat = figs.figures_from_extra_info({"figure": "b", "value": 3.0, "unit": "x",
                                         "ratio": 0.5})
    assert flat[0].limit == pytest.approx(6.0)
    decode = {"preset": "tiny", "batch": 8, "decode_tokens_per_second": 90.0,
              "roofline_tokens_per_second": 300.0}
    plain = figs.figures_from_extra_info({**decode, "mode": "plain"})
    spec = figs.figures_from_extra_info({**decode, "mode": "speculative",
                                         "decode_tokens_per_second": 135.0,
                                         "acceptance_rate": 0.4})
    table = {f.name: f for f in figs.resolve(plain + spec)}
    assert table["decode tokens/s (plain, tiny, B=8)"].ratio == pytest.approx(0.3)
    assert table["speculative speedup (speculative, tiny, B=8)"].ratio == pytest.approx(1.5)
    assert table["MTP acceptance rate (speculative, tiny, B=8)"].ratio == pytest.approx(0.4)
    assert figs.figures_from_extra_info({"tokens_per_second": 5}) == []


@pytest.mark.req("BENCH-01")
def test_datasheet_peaks_match_device_kinds():
    assert figs.datasheet_peak("NVIDIA H100 80GB HBM3").matmul_flops == 989.4e12
    assert figs.datasheet_peak("NVIDIA H100 PCIe").matmul_flops == 756e12
    assert figs.datasheet_peak("NVIDIA H200").matmul_flops == 989.4e12
    assert figs.datasheet_peak("TPU v6 lite").matmul_flops == 918e12
    assert figs.datasheet_peak("TPU v5 lite").matmul_flops == 197e12
    assert figs.datasheet_peak("TPU v5").matmul_flops == 459e12
    assert figs.datasheet_peak("cpu") is None


@pytest.mark.req("BENCH-01")
def test_suite_collects_a_benchmark_for_every_required_figure():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "--collect-only", "-q",
         "-p", "no:randomly", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    collected = {line.strip().removeprefix("benchmarks/") for line in proc.stdout.splitlines()}
    missing = [b for b in check_values("BENCH-01")["benchmarks"] if b not in collected]
    assert not missing, f"benchmarks not collected: {missing}"


def _hand_count_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """6 x (every weight matrix the model multiplies by) + causal attention, by shapes."""
    params = nnx.state(abstract_model(cfg), nnx.Param)
    matmul = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        keys = [str(getattr(k, "key", k)) for k in path]
        if "kernel" in keys:
            uses = 2 if keys[0] == "lm_head" else 1  # main logits and MTP logits
            matmul += uses * leaf.size
    # per layer and token, forward: 2 score maps of 2*d_sub*T/2 per query sub-head and
    # A.V of 2*d_v*T/2 per differential head (causal: half the keys on average).
    fwd = (cfg.num_q_subheads * 2 * cfg.head_dim * seq_len // 2
           + cfg.num_diff_heads * 2 * 2 * cfg.head_dim * seq_len // 2)
    return 6 * matmul + cfg.num_layers * 3 * fwd


@pytest.mark.req("BENCH-01")
def test_mfu_flops_per_token_is_6n_plus_attention():
    cfg = ModelConfig.preset("1b")
    expected = check_values("BENCH-01")["flops_per_token_1b_2048"]
    assert _hand_count_flops_per_token(cfg, 2048) == expected
    assert model_flops_per_token(cfg, 2048) == expected
    tiny = ModelConfig.preset("tiny")
    assert model_flops_per_token(tiny, 256) == _hand_count_flops_per_token(tiny, 256)
