"""Unit tests for the run setup (``pythoncoder.train.run``): each check ``build_run``
makes before the first step, and the run it builds."""

from __future__ import annotations

import json
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from pythoncoder.checkpoint import CheckpointError
from pythoncoder.model import ModelConfig
from pythoncoder.train import run as R
from pythoncoder.train.config import TrainConfig, TrainConfigError
from pythoncoder.train.optimizer import make_optimizer
from pythoncoder.train.sharding import make_mesh


def model_cfg() -> ModelConfig:  # no step runs here: a small vocabulary will do
    return ModelConfig(name="test", vocab_size=512, hidden_size=32, num_layers=2,
                       head_dim=8, intermediate_size=64, compute_dtype="float32",
                       remat_policy="none", attn_block_size=16, loss_chunk_size=64,
                       tpu_aligned=False)


def train_cfg(**kw) -> TrainConfig:
    base = dict(seq_len=16, micro_batch=4, accum_steps=2, epochs=1, warmup_steps=2,
                steps_per_checkpoint=2, eval_batches=1)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from pythoncoder.data.prepare import prepare
    from pythoncoder.testing.corpus import write_corpus

    src = tmp_path_factory.mktemp("src")
    write_corpus(src, 30)
    out = tmp_path_factory.mktemp("data")
    prepare([str(src)], out, seq_len=16, val_fraction=0.1, num_workers=1, progress=False)
    return out


def test_resolve_mesh_keeps_a_given_mesh_else_splits_a_micro_batch():
    given = make_mesh(1, 1, jax.devices()[:1])
    assert R.resolve_mesh(given, train_cfg()) is given
    n = jax.device_count()
    for rows in (1, 3, 4, 6):
        mesh = R.resolve_mesh(None, train_cfg(micro_batch=rows))
        assert mesh.shape == {"data": 1, "fsdp": int(np.gcd(n, rows))}


def test_lr_per_update_is_the_schedule_at_every_update_count():
    cfg = train_cfg(warmup_steps=4, decay_fraction=0.25, min_lr_ratio=0.1, peak_lr=1e-2)
    _, schedule = make_optimizer(cfg, 16, 4)
    table = R.lr_per_update(schedule, 16)
    assert table.shape == (17,) and isinstance(table, np.ndarray)
    expect = [float(schedule(n)) for n in range(17)]
    np.testing.assert_allclose(table, expect, rtol=1e-6, atol=0)
    np.testing.assert_allclose(table[[0, 4, 12, 16]], [0.0, 1e-2, 1e-2, 1e-3],
                               rtol=1e-6, atol=1e-12)


def test_check_run_dir_refuses_old_checkpoints_and_needs_one_to_resume(tmp_path):
    R.check_run_dir(tmp_path, model_cfg(), train_cfg(), None, resume=False)  # empty: fine
    with pytest.raises(CheckpointError, match="--resume: no checkpoint in"):
        R.check_run_dir(tmp_path, model_cfg(), train_cfg(), None, resume=True)
    for step in ("4", "12", "tmp.orbax-checkpoint-tmp-1"):
        (tmp_path / "checkpoints" / step).mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"already holds checkpoints \(steps \[4, 12\]\)"):
        R.check_run_dir(tmp_path, model_cfg(), train_cfg(), None, resume=False)


def test_mesh_peak_flops_is_per_device_times_devices():
    mesh = SimpleNamespace(devices=np.array([SimpleNamespace(device_kind="cpu")] * 4))
    assert R.mesh_peak_flops(mesh, None) is None
    assert R.mesh_peak_flops(mesh, 2e12) == 8e12
    tpu = SimpleNamespace(devices=np.array([SimpleNamespace(device_kind="TPU v6 lite")] * 2))
    assert R.mesh_peak_flops(tpu, None) == 2 * 918e12


def test_truncate_metrics_drops_rows_after_the_step_and_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 0, "val_loss": 9.0}] + [{"step": s, "loss": 1.0} for s in (1, 2, 3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')
    R._truncate_metrics(path, 2)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:3]
    R._truncate_metrics(tmp_path / "absent.jsonl", 2)  # no file: nothing to do
    assert not (tmp_path / "absent.jsonl").exists()


def test_build_run_builds_a_fresh_run_and_checks_the_data(data, tmp_path):
    lines: list[str] = []
    mesh = make_mesh(1, 1, jax.devices()[:1])
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    run = R.build_run(model_cfg(), train_cfg(), data, tmp_path / "r", total_steps=6,
                      resume=False, mesh=mesh, progress=False, log=lines.append,
                      peak_flops=None)
    try:
        assert run.start == 0 and run.skipped == 0 and int(run.state.step) == 0
        assert run.plan.total_steps == 6 and run.lr_table.shape == (7,)
        assert run.evaluation.available and run.remat is None and run.peak_flops is None
        assert run.loader.seq_len == 16 and run.mesh is mesh
        assert lines[0] == run.plan.describe()
        assert not (tmp_path / "r" / "metrics.jsonl").exists()  # a fresh run's metrics
        info = json.loads((tmp_path / "r" / "run.json").read_text())
        assert info["data_manifest_sha256"] == R.data_fingerprint(data)
        assert info["train"]["seq_len"] == 16
    finally:
        run.sink.close()
        run.ckpt.release()
    with pytest.raises(TrainConfigError, match="packed at seq_len=16, but seq_len=32"):
        R.build_run(model_cfg(), train_cfg(seq_len=32), data, tmp_path / "s", total_steps=6,
                    resume=False, mesh=mesh, progress=False, log=lines.append,
                    peak_flops=None)


def test_throughput_and_mfu_after_a_resume_count_the_steps_run_since(data, tmp_path,
                                                                       monkeypatch):
    """A run to step 4, then resumed to step 8, logging every 2 steps, on a clock that
    advances one second per reading: every logged row covers the 2 steps actually run since
    the previous row (or since the start or the restore), so tokens/s is 2 steps' tokens per
    second right after the resume too, and MFU is those tokens' FLOPs over the given peak."""
    import itertools

    from pythoncoder.train import host, loop
    from pythoncoder.train.accounting import model_flops_per_token

    seconds = itertools.count()
    monkeypatch.setattr(loop, "Throughput", lambda *a, **k: host.Throughput(
        *a, clock=lambda: float(next(seconds)), **k))
    mcfg = model_cfg().replace(vocab_size=151_808)
    tcfg = train_cfg(log_every=2, steps_per_checkpoint=4)
    mesh = make_mesh(1, 1, jax.devices()[:1])
    peak = 1e9
    for total, resume in ((4, False), (8, True)):
        loop.train(mcfg, tcfg, data, tmp_path, total_steps=total, resume=resume, mesh=mesh,
                   progress=False, log=lambda *_: None, peak_flops=peak)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "tokens_per_s" in r]
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    tokens = 2 * tcfg.tokens_per_step  # two steps per logged row, one second between readings
    flops = model_flops_per_token(mcfg, tcfg.seq_len)
    for r in rows:
        np.testing.assert_allclose(r["tokens_per_s"], tokens, rtol=1e-12, atol=0,
                                   err_msg=str(r))
        np.testing.assert_allclose(r["mfu"], tokens * flops / peak, rtol=1e-12, atol=0,
                                   err_msg=str(r))
