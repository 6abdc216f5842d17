"""MTP self-speculation on a trained model: acceptance rate and speedup over plain greedy.

Random weights draft almost nothing right (acceptance ~1/vocab), so the decode benchmark's
speculative figures only bound the cost of drafting.  Here the model has learned something:

* ``PYTHONCODER_BENCH_TRAINED_RUN=DIR`` uses a training run directory (``pythoncoder
  train --out DIR``), e.g. the README demo's ``runs/tiny``;
* otherwise the setup trains one into a temporary directory with the CLI on the stdlib
  corpus: ``PYTHONCODER_BENCH_TRAIN_PRESET`` (default ``tiny`` on CPU, ``small`` on an
  accelerator) for ``PYTHONCODER_BENCH_TRAIN_STEPS`` steps (default 40 on CPU, about two
  minutes on 2 idle cores after the corpus is cached; 400 on an accelerator).

Prompts are ``PROMPT`` tokens of stdlib source (greedy, ``NEW`` new tokens, no EOS stop),
B = 1 and 8.  The stdlib is the training corpus, so the prompts are not held out; a short
run sees ~1% of it, so little is memorised.  Speedup = speculative tokens/s over plain
greedy tokens/s in the same run, both through the on-device loop.  A figure below 1 means
drafting does not pay at that batch size; the benchmark reports it and does not fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from pythoncoder.infer.engine import Engine
from pythoncoder.infer.loading import load_for_inference

PROMPT = int(os.environ.get("PYTHONCODER_BENCH_DECODE_PROMPT", "128"))
NEW = int(os.environ.get("PYTHONCODER_BENCH_DECODE_NEW", "64"))
ON_CPU = jax.default_backend() == "cpu"
PRESET = os.environ.get("PYTHONCODER_BENCH_TRAIN_PRESET", "tiny" if ON_CPU else "small")
STEPS = int(os.environ.get("PYTHONCODER_BENCH_TRAIN_STEPS", "40" if ON_CPU else "400"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    given = os.environ.get("PYTHONCODER_BENCH_TRAINED_RUN")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("trained") / PRESET
    cmd = [sys.executable, "-m", "pythoncoder", "train", "--preset", PRESET, "--steps",
           str(STEPS), "--steps-per-checkpoint", str(STEPS), "--out", str(out),
           "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        pytest.fail(f"training for the benchmark failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return out


@pytest.fixture(scope="module")
def trained(trained_run):
    model, _ = load_for_inference(trained_run)
    return Engine(model)


@pytest.fixture(scope="module")
def stdlib_prompts(trained) -> list[list[int]]:
    """Eight ``PROMPT``-token windows of stdlib source (varied modules)."""
    import importlib

    from pythoncoder.data.tokenizer import load_tokenizer

    tok = load_tokenizer()
    out = []
    for name in ("argparse", "textwrap", "typing", "os", "subprocess", "dataclasses",
                 "json.decoder", "functools"):
        src = Path(importlib.import_module(name).__file__)
        ids = tok.encode(src.read_text(), add_special_tokens=False).ids
        start = len(ids) // 3
        out.append(ids[start:start + PROMPT])
    assert all(len(p) == PROMPT for p in out)
    return out


@pytest.mark.parametrize("batch", [1, 8])
def test_speculation_on_a_trained_model(benchmark, report, trained, trained_run,
                                        stdlib_prompts, batch):
    prompts = stdlib_prompts[:batch]
    best, results = {}, {}
    for mode in ("plain", "speculative"):
        def run(mode=mode):
            return trained.generate(prompts, max_new_tokens=NEW, eos_id=None,
                                    speculative=mode == "speculative")

        run()  # compile
        runs = [run() for _ in range(3)]
        results[mode] = max(runs, key=lambda r: r.stats["decode_tokens_per_second"])
        best[mode] = results[mode].stats["decode_tokens_per_second"]
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    spec = results["speculative"]
    where = f"trained {trained.cfg.name}, B={batch}"
    same = sum(a == b for a, b in zip(spec.tokens, results["plain"].tokens)) / batch
    report(f"decode tokens/s (plain greedy, {where})", best["plain"], "tokens/s")
    report(f"speculative speedup over plain greedy ({where})", best["speculative"],
           "tokens/s", limit_from=f"decode tokens/s (plain greedy, {where})",
           limit_name="plain greedy")
    report(f"MTP acceptance rate ({where})", spec.stats["acceptance_rate"], "", limit=1.0,
           limit_name="every draft accepted")
    benchmark.extra_info.update(run_dir=str(trained_run), rows_identical_to_greedy=same,
                                tokens_per_step=round((spec.stats["generated_tokens"] - batch)
                                                      / max(spec.stats["steps"], 1) / batch, 3))
    print(f"\n[speculative, {where}] plain {best['plain']:.1f} tok/s, speculative "
          f"{best['speculative']:.1f} tok/s (speedup {best['speculative'] / best['plain']:.2f}x),"
          f" acceptance {spec.stats['acceptance_rate']:.3f}, rows identical to greedy {same:.2f}")
