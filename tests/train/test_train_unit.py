"""Unit tests for the training package: sharding rules, configs, plan, CLI, plots."""

import contextlib
import io
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pythoncoder.cli import main as cli_main
from pythoncoder.train.config import TrainConfig, TrainConfigError, plan_run
from pythoncoder.train.metrics import plot_curves
from pythoncoder.train.sharding import FSDP, fsdp_spec, make_mesh


@given(shape=st.lists(st.integers(1, 64), min_size=0, max_size=4),
       n=st.sampled_from([1, 2, 4, 8]))
def test_fsdp_spec_shards_the_largest_divisible_axis(shape, n):
    spec = tuple(fsdp_spec(tuple(shape), n))
    sharded = [i for i, s in enumerate(spec) if s == FSDP]
    divisible = [i for i, d in enumerate(shape) if d % n == 0 and d >= n]
    if n == 1 or not divisible:
        assert sharded == []
    else:
        assert len(sharded) == 1
        assert shape[sharded[0]] == max(shape[i] for i in divisible)


def test_make_mesh_checks_device_count():
    import jax

    n = jax.device_count()
    assert make_mesh().shape == {"data": 1, "fsdp": n}
    with pytest.raises(ValueError, match="does not cover"):
        make_mesh(3, 3)


@pytest.mark.parametrize("field,value", [("micro_batch", 0), ("peak_lr", -1.0),
                                         ("decay_fraction", 1.5), ("clip_norm", 0.0)])
def test_train_config_errors_name_the_field(field, value):
    with pytest.raises(TrainConfigError, match=field):
        TrainConfig(**{field: value})


def test_plan_warmup_and_errors():
    cfg = TrainConfig(seq_len=16, micro_batch=2, accum_steps=1)
    short = plan_run(16 * 2 * 50, cfg)  # 50 steps: 2000 warmup cannot fit before decay
    assert short.total_steps == 200 and short.warmup_steps == 20
    long = plan_run(16 * 2 * 10_000, cfg.replace(epochs=1))
    assert long.warmup_steps == 2000 and long.decay_start == 9000
    with pytest.raises(TrainConfigError, match="fewer than one optimizer step"):
        plan_run(10, cfg)


def test_plot_curves(tmp_path):
    rows = [{"step": i, "loss": 10 - i * 0.1, "lr": 1e-3} for i in range(1, 20)]
    rows += [{"step": 0, "val_loss": 11.0}, {"step": 19, "val_loss": 8.0}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = plot_curves(path, tmp_path / "curves.png")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _cli(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(args)
    return code, out.getvalue(), err.getvalue()


def test_train_cli_missing_data_is_a_clear_error(tmp_path):
    code, _, err = _cli(["train", "--data", str(tmp_path / "nope"), "--out",
                         str(tmp_path / "run"), "--steps", "1", "--no-progress"])
    assert code == 2 and "nope" in err and "manifest missing" in err  # bad input, one line
    assert len(err.strip().splitlines()) == 1


def test_memory_cli_json_is_consistent():
    code, out, _ = _cli(["memory", "--preset", "tiny", "--micro-batch", "2", "--seq-len", "32",
                         "--accum-steps", "2", "--compute-dtype", "float32", "--json"])
    assert code == 0
    r = json.loads(out)
    assert r["total_bytes"] == r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"] \
        + r["temp_bytes"]
    assert r["argument_bytes"] >= r["train_state_bytes"] > 0
    np.testing.assert_allclose(r["total_gib"], r["total_bytes"] / 2**30, rtol=1e-12, atol=0)


def test_mfu_peak_comes_from_a_table_not_a_timed_matmul():
    from types import SimpleNamespace

    from pythoncoder.targets import device_datasheet
    from pythoncoder.train.run import mesh_peak_flops

    def peak(kind):
        sheet = device_datasheet(SimpleNamespace(device_kind=kind))
        return sheet and sheet["peak_bf16_flops"]

    assert peak("TPU v6 lite") == 918e12
    assert peak("NVIDIA H200") == 989.4e12
    assert peak("NVIDIA H100 PCIe") == 756e12  # not the SXM card's
    assert peak("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak("cpu") is None and peak("NVIDIA GeForce RTX 4090") is None
    mesh = SimpleNamespace(devices=np.array([SimpleNamespace(device_kind="TPU v6 lite")] * 4))
    assert mesh_peak_flops(mesh, None) == 4 * 918e12
    assert mesh_peak_flops(mesh, 1e12) == 4e12
    cpu = SimpleNamespace(devices=np.array([SimpleNamespace(device_kind="cpu")]))
    assert mesh_peak_flops(cpu, None) is None


def test_metrics_sink_writes_jsonl_rows_history_and_optional_tensorboard(tmp_path):
    """The sink: one JSON object per logged step (non-finite as null), validation rows, the
    summary history; a TensorBoard writer, when present, gets the same scalars."""
    from pythoncoder.train.metrics import MetricsSink

    sink = MetricsSink(tmp_path, total=3, initial=0, progress=False)

    class Board:
        def __init__(self):
            self.scalars, self.closed = [], False

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

        def close(self):
            self.closed = True

    sink.tb = board = Board()
    sink.val_loss(0, 9.5)
    for step, loss in ((1, 9.0), (2, float("nan"))):
        sink.step_loss(step, loss)
        sink.train({"step": step, "loss": loss, "lr": 1e-3, "grad_norm": 1.0,
                    "tokens_per_s": 100.0, "mfu": None, "skipped": 0})
        sink.tick()
    sink.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0] == {"step": 0, "val_loss": 9.5}
    assert [r["step"] for r in rows[1:]] == [1, 2] and rows[2]["loss"] is None
    assert rows[1]["mfu"] is None and rows[1]["lr"] == 1e-3
    assert sink.history["val_loss"] == [(0, 9.5)] and sink.history["loss"][0] == (1, 9.0)
    assert ("val/loss", 9.5, 0) in board.scalars and ("train/loss", 9.0, 1) in board.scalars
    assert not [s for s in board.scalars if s[0] == "train/mfu"] and board.closed
