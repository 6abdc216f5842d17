"""The train driver's policies, checked through its public outputs (issue 28).

Each test runs ``train`` on the micro model of ``test_train.py`` and reads what a user
sees: the checkpoints on disk, ``metrics.jsonl``, the summary.  A step is made
non-finite from the data it trains on, not from the driver's internals: the loss
function the train step calls (``pythoncoder.train.step.lm_loss``) adds ``inf`` when the
micro-batch holds a row of one of the chosen steps' batches, which the test reads with
the public loader in the order a run consumes them.

- TRAIN-08 at a checkpoint step: the step that went non-finite is itself a checkpoint
  step, so its own flag (not the previous step's) decides whether to save.
- TRAIN-01 with skipped steps: the LR of the n-th applied update is the WSD value at n,
  computed here from the requirement's formula (not from the code's schedule); the
  first applied update (LR 0 in warmup) leaves the initial parameters as they were.
- RUN-02/RUN-04: resume with a corrupt newest step sets it aside, saves that step again
  and repeats the first run's steps after the step it restored.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pythoncoder.checkpoint import MANIFEST, Checkpointer, restore_model
from pythoncoder.model import ModelConfig, build_model
from pythoncoder.train.config import TrainConfig

VOCAB = 151_808


@functools.lru_cache
def _rows(data_dir: str) -> tuple[int, ...]:
    from pythoncoder.data.shards import frequent_ids

    return frequent_ids(data_dir, 512)


def model_cfg(data_dir) -> ModelConfig:
    """The real vocabulary's ids (the data holds them) on at most 512 model rows (the ids
    the data uses, and "other"), so checkpoints are small; everything else minimal."""
    return ModelConfig(name="test", vocab_size=VOCAB, hidden_size=32, num_layers=2,
                       head_dim=8, intermediate_size=64, compute_dtype="float32",
                       remat_policy="none", attn_block_size=16, loss_chunk_size=64,
                       tpu_aligned=False, vocab_subset=_rows(str(data_dir)))


def train_cfg(**kw) -> TrainConfig:
    base = dict(seq_len=16, micro_batch=4, accum_steps=2, epochs=1, peak_lr=1e-2,
                warmup_steps=1, steps_per_checkpoint=2, keep_checkpoints=10, eval_batches=1)
    base.update(kw)
    return TrainConfig(**base)


def run(tcfg: TrainConfig, data_dir, run_dir, **kw):
    from pythoncoder.train.loop import train
    from pythoncoder.train.sharding import make_mesh

    kw = {"progress": False, "mesh": make_mesh(1, 1, jax.devices()[:1]),
          "log": lambda *_: None, **kw}
    return train(model_cfg(data_dir), tcfg, data_dir, run_dir, **kw)


def step_batches(data_dir, tcfg: TrainConfig, steps: int) -> list[np.ndarray]:
    """The token rows of steps 1..steps, read as a run reads them (public loader, seed)."""
    from pythoncoder.data.loader import make_loader

    loader = make_loader(data_dir, split="train",
                         batch_size=tcfg.micro_batch * tcfg.accum_steps, seed=tcfg.seed)
    return [np.asarray(next(loader)["tokens"]) for _ in range(steps)]


def poison_steps(monkeypatch, data_dir, tcfg: TrainConfig, bad: set[int], total: int) -> None:
    """Make steps ``bad`` (1-based) non-finite: their loss is +inf, their update skipped."""
    import pythoncoder.train.step as step_mod

    batches = step_batches(data_dir, tcfg, total)
    rows = np.concatenate([batches[s - 1][:, :-1] for s in sorted(bad)])
    others = [batches[s - 1][:, :-1] for s in range(1, total + 1) if s not in bad]
    for good in others:  # the marker is unambiguous: no good step trains on a marked row
        assert not (good[:, None, :] == rows[None]).all(-1).any()
    marked = jnp.asarray(rows)
    real = step_mod.lm_loss

    def lm_loss(model, inputs_BT, labels_BT, **kw):
        parts = real(model, inputs_BT, labels_BT, **kw)
        hit = (inputs_BT[:, None, :] == marked[None]).all(-1).any()
        return parts._replace(main_sum=parts.main_sum + jnp.where(hit, jnp.inf, 0.0))

    monkeypatch.setattr(step_mod, "lm_loss", lm_loss)


def steps_on_disk(run_dir: Path) -> list[int]:
    ckpt = Checkpointer(run_dir, read_only=True)
    try:
        return ckpt.all_steps()
    finally:
        ckpt.close()


def metric_rows(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def params_of(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


# ---------------------------------------------------------------- TRAIN-01 + TRAIN-08
def wsd(n: int, *, peak: float, warmup: int, total: int, decay_fraction: float,
        min_ratio: float) -> float:
    """TRAIN-01 as written: linear 0 -> peak over ``warmup`` updates, constant peak until
    ``(1 - decay_fraction) * total``, cosine decay to ``min_ratio * peak`` at ``total``."""
    decay_start = total - round(decay_fraction * total)
    if n < warmup:
        return peak * n / warmup
    if n < decay_start:
        return peak
    t = min(n - decay_start, total - decay_start) / max(total - decay_start, 1)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


@pytest.mark.req("TRAIN-01", "TRAIN-08")
def test_checkpoints_and_lr_follow_the_steps_that_applied_an_update(data_dir, tmp_path,
                                                                    monkeypatch):
    """Steps 1-3 and 6 are non-finite (checkpoints every 2 steps, 10 steps).

    - A checkpoint step is judged by its own flag: 2 and 6 went non-finite and are not
      saved; 4 follows the non-finite step 3 but is finite itself and is saved; so are 8
      and 10.
    - The update of step 4 is the run's first (n = 0: LR 0 in warmup), so the parameters
      saved at step 4 are the initial ones, bit for bit; later updates move them.
    - Each logged LR is the WSD value at the number of updates applied before that step.
    """
    total, bad = 10, {1, 2, 3, 6}
    sched = dict(peak=1e-2, warmup=4, total=total, decay_fraction=0.6, min_ratio=0.1)
    tcfg = train_cfg(peak_lr=sched["peak"], warmup_steps=sched["warmup"],
                     decay_fraction=sched["decay_fraction"], min_lr_ratio=sched["min_ratio"],
                     steps_per_checkpoint=2, max_consecutive_nonfinite=4)
    poison_steps(monkeypatch, data_dir, tcfg, bad, total=total)
    run_dir = tmp_path / "r"
    out = run(tcfg, data_dir, run_dir, total_steps=total)
    assert out["plan"].warmup_steps == 4 and out["skipped"] == len(bad)
    assert steps_on_disk(run_dir) == [4, 8, 10]

    rows = metric_rows(run_dir)
    assert [r["step"] for r in rows] == list(range(1, total + 1))
    assert [r["loss"] is None for r in rows] == [r["step"] in bad for r in rows]
    assert [r["skipped"] for r in rows] == [sum(s <= r["step"] for s in bad) for r in rows]
    applied_before = [sum(s not in bad for s in range(1, r["step"])) for r in rows]
    want = [wsd(n, **sched) for n in applied_before]
    assert want[:4] == [0.0] * 4 and want[-1] < sched["peak"]  # warmup start, decay reached
    np.testing.assert_allclose([r["lr"] for r in rows], want, rtol=1e-6, atol=1e-12)

    # what each checkpoint carries: the optimizer's own step counts (the ones its LR
    # schedule reads) are the updates applied so far, the skipped ones are counted apart
    from pythoncoder.train.memory import abstract_train_state
    from pythoncoder.train.optimizer import make_optimizer

    tx, _ = make_optimizer(tcfg, total, out["plan"].warmup_steps)
    abstract = abstract_train_state(build_model(model_cfg(data_dir), seed=tcfg.seed), tx)
    ckpt = Checkpointer(run_dir, read_only=True)
    for s in (4, 10):
        state, meta = ckpt.restore(abstract, s)
        applied = sum(k not in bad for k in range(1, s + 1))
        assert int(state.step) == applied and int(state.skipped) == s - applied
        assert meta["skipped"] == s - applied
        counts = [int(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(
            state.opt_state) if "count" in jax.tree_util.keystr(path)]
        assert counts and all(c == applied for c in counts), (s, counts)
    ckpt.close()

    initial = params_of(build_model(model_cfg(data_dir), seed=tcfg.seed))
    first = params_of(restore_model(run_dir, 4))
    for a, b in zip(first, initial, strict=True):  # update 0 had LR 0: nothing moved
        np.testing.assert_array_equal(a, b)
    final = [np.asarray(x) for x in jax.tree.leaves(out["final_params"])]
    assert any(not np.array_equal(a, b) for a, b in zip(final, initial, strict=True))


# ---------------------------------------------------------------- RUN-02 / RUN-04
def flip_one_bit(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.req("RUN-02", "RUN-04")
def test_resume_sets_aside_a_corrupt_newest_step_and_ends_as_an_uninterrupted_run(
        data_dir, tmp_path):
    """A run stopped at step 4 (checkpoints 2 and 4); one bit of step 4's largest file
    flipped; resume starts from 2, moves 4 aside (kept, not deleted), saves 4 and 6 again,
    and its steps 3 and 4 repeat the first run's losses exactly (the same state, data
    and dropout keys: it restored step 2, not the damaged step 4)."""
    tcfg, total = train_cfg(), 6
    run_dir = tmp_path / "run"
    part = run(tcfg, data_dir, run_dir, total_steps=total, stop_after=4)
    assert part["steps_done"] == 4 and steps_on_disk(run_dir) == [2, 4]
    step4 = run_dir / "checkpoints" / "4"
    files = [p for p in step4.rglob("*") if p.is_file() and p.name != MANIFEST]
    flip_one_bit(max(files, key=lambda p: p.stat().st_size))
    logs: list[str] = []
    rest = run(tcfg, data_dir, run_dir, total_steps=total, resume=True, log=logs.append)
    assert any("checkpoint step 4 is corrupt or partial" in line for line in logs), logs
    assert any("resuming from step 2" in line for line in logs), logs
    assert len(rest["losses"]) == total - 2
    rejected = list((run_dir / "rejected_checkpoints").iterdir())
    assert [p.name.split("-")[0] for p in rejected] == ["4"]
    assert steps_on_disk(run_dir) == [2, 4, 6]
    ckpt = Checkpointer(run_dir, read_only=True)
    for s in ckpt.all_steps():  # every checkpoint left verifies
        ckpt.verify(s)
    ckpt.close()
    assert [r["step"] for r in metric_rows(run_dir)] == list(range(1, total + 1))
    np.testing.assert_array_equal(rest["losses"][:2], part["losses"][2:4])
    assert all(np.isfinite(rest["losses"]))
