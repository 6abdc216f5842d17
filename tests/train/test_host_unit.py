"""Unit tests for the host side of the training loop (``pythoncoder.train.host``): each
policy alone, with fakes for the checkpointer, the sink and the device metrics."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pythoncoder.checkpoint import CheckpointError
from pythoncoder.train import host


class FakeCheckpointer:
    """Saves complete when ``finish`` is called (or ``poll`` once ``ready``)."""

    directory = Path("/runs/x/checkpoints")

    def __init__(self, fail_finish: bool = False):
        self.saved: list[tuple[int, dict]] = []
        self.pending: int | None = None
        self.ready, self.released, self.fail_finish = False, False, fail_finish

    def latest_step(self):
        return self.saved[-1][0] if self.saved else None

    def save(self, step, state, meta):
        assert self.pending is None, "one save in flight at a time"
        self.saved.append((step, meta))
        self.pending = step

    def poll(self):
        return self.finish() if self.ready else None

    def finish(self):
        step, self.pending = self.pending, None
        if step is not None and self.fail_finish:
            raise CheckpointError(f"saving checkpoint step {step} failed: disk full")
        return step

    def release(self):
        self.released = True


class FakeSink:
    def __init__(self):
        self.rows, self.losses, self.vals, self.ticks = [], [], [], 0

    def train(self, record):
        self.rows.append(record)

    def step_loss(self, step, loss):
        self.losses.append((step, loss))

    def val_loss(self, step, value):
        self.vals.append((step, value))

    def tick(self):
        self.ticks += 1


def guard(limit=3, table=None, **kw):
    table = np.arange(10, dtype=np.float32) / 10 if table is None else table
    logs: list[str] = []
    g = host.NonFiniteGuard(limit, table, applied=kw.pop("applied", 0),
                            skipped=kw.pop("skipped", 0), checkpoints=FakeCheckpointer(),
                            log=logs.append)
    return g, logs


# ---------------------------------------------------------------- OneStepLate
def test_one_step_late_records_the_previous_step_on_push_and_the_held_one_on_flush():
    seen = []
    late = host.OneStepLate(lambda *a: seen.append(a))
    late.push(1, "m1", 0)
    assert seen == []  # step 1's metrics are not read while it may still run
    late.push(2, "m2", 0)
    assert seen == [(1, "m1", 0)]
    late.flush()
    late.flush()  # nothing held: nothing recorded twice
    assert seen == [(1, "m1", 0), (2, "m2", 0)]
    late.push(3, "m3", 1)
    late.flush()
    assert seen[-1] == (3, "m3", 1) and len(seen) == 3


# ---------------------------------------------------------------- NonFiniteGuard
@given(flags=st.lists(st.booleans(), max_size=30), applied=st.integers(0, 5))
def test_guard_lr_follows_applied_updates_and_counts_the_skipped(flags, applied):
    table = np.linspace(0.0, 1.0, 8).astype(np.float32)
    g, logs = guard(limit=len(flags) + 1, table=table, applied=applied, skipped=2)
    for step, finite in enumerate(flags, start=1):
        before = g.applied
        lr = g.observe(step, 1.0 if finite else float("nan"), finite)
        # the LR this step's update used: the schedule at the updates applied before it
        assert lr == float(table[min(before, len(table) - 1)])
    assert g.applied == applied + sum(flags)
    assert g.skipped == 2 + flags.count(False)
    trailing = len(flags) - len("".join("1" if f else "0" for f in flags).rstrip("0"))
    assert g.streak == trailing
    assert len(logs) == flags.count(False)


def test_guard_stops_at_the_limit_naming_the_last_good_checkpoint():
    g, logs = guard(limit=2)
    g.checkpoints.saved.append((4, {}))
    g.observe(5, float("inf"), False)
    g.observe(6, 1.0, True)  # a finite step ends the streak
    g.observe(7, float("nan"), False)
    with pytest.raises(host.NonFiniteError, match=r"2 consecutive non-finite steps ending at "
                                                  r"step 8.*checkpoints \(step 4\) is intact"):
        g.observe(8, float("nan"), False)
    assert logs[0] == ("step 5: non-finite loss/grad norm (loss=inf); update skipped "
                       "(1 in a row)")
    assert g.skipped == 3 and g.applied == 1


# ---------------------------------------------------------------- Throughput
def test_throughput_measures_the_window_since_the_last_measure():
    times = iter([10.0, 12.0, 13.0])
    meter = host.Throughput(tokens_per_step=100, flops_per_token=6.0, peak_flops=1200.0,
                            step=3, clock=lambda: next(times))
    tps, mfu = meter.measure(7)  # 4 steps in 2 s
    np.testing.assert_allclose([tps, mfu], [200.0, 1.0], rtol=1e-12, atol=0)
    tps, mfu = meter.measure(8)  # 1 step in 1 s
    np.testing.assert_allclose([tps, mfu], [100.0, 0.5], rtol=1e-12, atol=0)
    no_peak = host.Throughput(100, 6.0, None, 0, clock=iter([0.0, 1.0]).__next__)
    assert no_peak.measure(1) == (100.0, None)


# ---------------------------------------------------------------- StepRecorder
def test_step_recorder_logs_every_nth_and_the_last_step():
    g, _ = guard(limit=5)
    sink = FakeSink()
    clock = iter(float(i) for i in range(100))
    rec = host.StepRecorder(g, host.Throughput(10, 1.0, None, 0, clock=clock.__next__), sink,
                            log_every=3, last_step=7)
    for step in range(1, 8):
        finite = step != 5
        rec.record(step, {"loss": np.float32(step if finite else np.inf),
                          "finite": np.bool_(finite), "grad_norm": np.float32(0.5)},
                   data_epoch=step // 4)
    assert [s for s, _ in sink.losses] == list(range(1, 8)) and sink.ticks == 7
    assert [r["step"] for r in sink.rows] == [3, 6, 7]
    six = sink.rows[1]
    assert six["skipped"] == 1 and six["data_epoch"] == 1 and six["grad_norm"] == 0.5
    assert six["lr"] == pytest.approx(0.4, abs=1e-6)  # 4 updates applied before step 6
    assert all(isinstance(r["loss"], float) for r in sink.rows)


# ---------------------------------------------------------------- Evaluation
class FakeLoader:
    def __init__(self, batches):
        self.batches = batches

    def iter_epoch(self, epoch):
        assert epoch == 0  # always the same batches
        yield from self.batches


def test_evaluation_is_the_token_mean_over_the_first_batches():
    batches = [{"tokens": np.full((2, 3), i), "segment_ids": np.ones((2, 3))} for i in range(4)]

    def eval_fn(params, batch):  # per-batch sums and counts
        i = float(batch["tokens"][0, 0])
        return {"main_sum": params * i, "main_count": i + 1.0}

    ev = host.Evaluation(eval_fn, FakeLoader(batches), batches=3)
    assert ev.available
    np.testing.assert_allclose(ev(2.0), 2.0 * (0 + 1 + 2) / (1 + 2 + 3), rtol=1e-12, atol=0)
    none = host.Evaluation(eval_fn, None, 3)
    assert none(2.0) is None and not none.available
    assert host.Evaluation(eval_fn, FakeLoader([]), 3)(2.0) is None


# ---------------------------------------------------------------- CheckpointSaver
class State:
    params = 1.5


def saver_with(ckpt, sink, val=0.25):
    loader = type("L", (), {"data_epoch": 2, "get_state": lambda self: {"pos": 9}})()
    one_batch = [{"tokens": np.zeros((1, 2)), "segment_ids": np.zeros((1, 2))}]
    ev = host.Evaluation(lambda p, b: {"main_sum": val * 4, "main_count": 4.0},
                         FakeLoader(one_batch), 1)
    logs: list[str] = []
    return host.CheckpointSaver(ckpt, sink, ev, loader, steps_per_epoch=4, seed=7,
                                rng_key=[0, 7], log=logs.append), logs


def test_saver_logs_the_validation_loss_once_the_save_is_verified():
    ckpt, sink = FakeCheckpointer(), FakeSink()
    saver, _ = saver_with(ckpt, sink)
    assert saver.save(8, State(), skipped=1) == 0.25
    step, meta = ckpt.saved[0]
    assert step == 8 and meta == {"global_step": 8, "epoch": 2, "data_epoch": 2,
                                  "loader": {"pos": 9}, "seed": 7, "rng_key": [0, 7],
                                  "skipped": 1, "val_loss": 0.25}
    saver.poll()
    assert sink.vals == []  # still saving
    ckpt.ready = True
    saver.poll()
    assert sink.vals == [(8, 0.25)]
    saver.save(12, State(), skipped=1)
    saver.save(16, State(), skipped=1)  # waits for 12 first, which logs its row
    assert sink.vals == [(8, 0.25), (12, 0.25)]
    saver.close(failed=False)
    assert sink.vals[-1] == (16, 0.25) and ckpt.released


def test_saver_defers_a_save_during_a_non_finite_streak():
    ckpt, sink = FakeCheckpointer(), FakeSink()
    saver, logs = saver_with(ckpt, sink)
    g, _ = guard()
    saver.save_unless_streak(2, State(), g)
    g.observe(3, float("nan"), False)
    g.observe(4, float("nan"), False)
    saver.save_unless_streak(4, State(), g)
    assert [s for s, _ in ckpt.saved] == [2]
    assert logs == ["step 4: checkpoint deferred during a non-finite streak; the last good "
                    "one (step 2) stays"]
    g.observe(5, 1.0, True)
    saver.save_unless_streak(6, State(), g)
    assert [s for s, _ in ckpt.saved] == [2, 6] and ckpt.saved[1][1]["skipped"] == 2


@pytest.mark.parametrize("failed", [True, False])
def test_saver_close_after_a_failed_save(failed):
    """After the run's own error a failed save is logged (the run's error is the one
    raised); after a clean run it is raised. The checkpointer is released either way."""
    ckpt = FakeCheckpointer(fail_finish=True)
    saver, logs = saver_with(ckpt, FakeSink())
    saver.save(2, State(), skipped=0)
    if failed:
        saver.close(failed=True)
        assert logs == ["saving checkpoint step 2 failed: disk full"]
    else:
        with pytest.raises(CheckpointError, match="disk full"):
            saver.close(failed=False)
    assert ckpt.released


# ---------------------------------------------------------------- Preemption
def test_preemption_remembers_a_signal_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGINT)
    with host.Preemption() as p:
        assert not p.requested(1)
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: only remembered
        assert p.received == "SIGINT" and p.requested(2)
    assert signal.getsignal(signal.SIGINT) is before
    with host.Preemption(stop_after=3) as p:
        assert [p.requested(s) for s in (1, 2, 3, 4)] == [False, False, True, True]
        assert p.received is None


# ---------------------------------------------------------------- the loop itself
class Metrics(dict):
    """A step's device metrics; reading the loss is where the host waits for that step."""

    def __init__(self, step: int, events: list[str]):
        super().__init__(loss=np.float32(1.0 / step), finite=np.bool_(True),
                         grad_norm=np.float32(1.0))
        self.step, self.events = step, events

    def __getitem__(self, key):
        if key == "loss":
            self.events.append(f"read {self.step}")
        return super().__getitem__(key)


def fake_run(tmp_path, total: int, every: int, events: list[str]):
    """A ``Run`` whose step only says when it is dispatched (real sink and mesh)."""
    from types import SimpleNamespace

    import jax

    from pythoncoder.train.config import TrainConfig
    from pythoncoder.train.metrics import MetricsSink
    from pythoncoder.train.run import Run
    from pythoncoder.train.sharding import make_mesh

    class Loader:
        data_epoch = 0

        def __next__(self):
            rows = np.zeros((2, 4), np.int32)
            return {"tokens": rows, "segment_ids": rows + 1}

        def get_state(self):
            return {}

    def step_fn(state, batch, key):
        events.append(f"dispatch {state.step + 1}")
        return SimpleNamespace(step=state.step + 1, params=None), Metrics(state.step + 1, events)

    tcfg = TrainConfig(seq_len=4, micro_batch=2, accum_steps=1, steps_per_checkpoint=every)
    return Run(model_cfg=None, train_cfg=tcfg, run_dir=tmp_path,
               mesh=make_mesh(1, 1, jax.devices()[:1]), loader=Loader(),
               plan=SimpleNamespace(total_steps=total, steps_per_epoch=100),
               lr_table=np.zeros(total + 1), state=SimpleNamespace(step=0, params=None),
               start=0, skipped=0, step_fn=step_fn, evaluation=host.Evaluation(None, None, 1),
               ckpt=FakeCheckpointer(),
               sink=MetricsSink(tmp_path, total=total, initial=0, progress=False),
               base_key=jax.random.PRNGKey(0), flops_per_token=1.0, peak_flops=None, remat=None)


def test_the_loop_reads_a_steps_metrics_after_the_next_step_is_dispatched(tmp_path):
    """The host reads step n's metrics only once step n+1 is on its way, except at a
    checkpoint (its own non-finite flag decides), then saves; the run ends finished."""
    from pythoncoder.train.loop import run_steps

    events: list[str] = []
    run = fake_run(tmp_path, total=5, every=3, events=events)
    out = run_steps(run, log=events.append)
    assert events == ["dispatch 1", "dispatch 2", "read 1", "dispatch 3", "read 2", "read 3",
                      "dispatch 4", "dispatch 5", "read 4", "read 5"]
    assert [s for s, _ in run.ckpt.saved] == [3, 5] and run.ckpt.released
    assert out.stop is None and out.skipped == 0 and out.first_val_loss is None
    assert [s for s, _ in run.sink.history["loss"]] == [1, 2, 3, 4, 5]


def test_the_loop_stops_after_a_save_when_asked(tmp_path):
    from pythoncoder.train.loop import Stop, run_steps

    events: list[str] = []
    run = fake_run(tmp_path, total=10, every=2, events=events)
    out = run_steps(run, stop_after=3, log=events.append)
    assert events[:-1] == ["dispatch 1", "dispatch 2", "read 1", "read 2", "dispatch 3",
                           "read 3"]
    assert events[-1] == f"stopping at step 3 (stop); checkpoint saved in {run.ckpt.directory}"
    assert out.stop == Stop(step=3, by=None, resume_step=3)
    assert [s for s, _ in run.ckpt.saved] == [2, 3] and run.state.step == 3
