"""RUN-01..: run directories that survive misuse (issue 13).

Fast checks use the checkpoint layer directly on a tiny state; the ones that train use
the micro model of ``test_train.py``.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pythoncoder.checkpoint import (
    MANIFEST,
    Checkpointer,
    CheckpointError,
    CorruptCheckpointError,
    RunLock,
    RunLockError,
    verify_step,
    write_run_files,
)
from pythoncoder.train.step import TrainState

REPO = Path(__file__).resolve().parents[1]


def tiny_state(value: float = 1.0, step: int = 0) -> TrainState:
    params = {"w": jnp.full((64, 64), value, jnp.float32), "b": jnp.arange(8, dtype=jnp.float32)}
    opt = {"mu": jax.tree.map(jnp.zeros_like, params)}
    return TrainState(params=params, opt_state=opt, step=jnp.asarray(step, jnp.int32),
                      skipped=jnp.zeros((), jnp.int32))


def abstract(state: TrainState) -> TrainState:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def save_steps(run_dir: Path, steps, **kw) -> None:
    ckpt = Checkpointer(run_dir, keep=10, **kw)
    for s in steps:
        ckpt.save(s, tiny_state(float(s), s), {"global_step": s})
    ckpt.close()


def largest_file(step_dir: Path) -> Path:
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST]
    return max(files, key=lambda p: p.stat().st_size)


def bit_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for off in (0, len(data) // 2, len(data) - 64):
        for i in range(off, min(off + 64, len(data))):
            data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- RUN-01
@pytest.mark.req("RUN-01")
def test_inference_never_imports_train():
    """pythoncoder.infer loads with pythoncoder.train blocked (the checkpoint layer is below)."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'pythoncoder.train' or name.startswith('pythoncoder.train.'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import pythoncoder.infer, pythoncoder.infer.loading, pythoncoder.infer.api\n"
        "import pythoncoder.infer.commands, pythoncoder.checkpoint\n"
        "assert not any(m.startswith('pythoncoder.train') for m in sys.modules)\n"
        "print('ok')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.req("RUN-01")
def test_params_are_restored_alone_and_verified(tmp_path):
    save_steps(tmp_path, [1, 2])
    for step in (1, 2):
        assert (tmp_path / "checkpoints" / str(step) / MANIFEST).is_file()
        assert (tmp_path / "checkpoints" / str(step) / "params").is_dir()
    ckpt = Checkpointer(tmp_path, read_only=True)
    params, step = ckpt.restore_params(abstract(tiny_state()).params)
    assert step == 2
    np.testing.assert_array_equal(np.asarray(params["w"]), np.full((64, 64), 2.0, np.float32))
    state, meta = ckpt.restore(abstract(tiny_state()))
    assert meta["global_step"] == 2 and int(state.step) == 2
    ckpt.close()


# ---------------------------------------------------------------- RUN-02
@pytest.mark.req("RUN-02")
@pytest.mark.parametrize("damage", ["bit_flip", "truncate", "no_manifest", "missing_file"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    save_steps(tmp_path, [1, 2])
    step_dir = tmp_path / "checkpoints" / "2"
    target = largest_file(step_dir)
    if damage == "bit_flip":
        bit_flip(target)
    elif damage == "truncate":
        with target.open("r+b") as f:
            f.truncate(target.stat().st_size // 2)
    elif damage == "no_manifest":  # killed after Orbax finalised, before the manifest
        (step_dir / MANIFEST).unlink()
    else:
        target.unlink()
    ckpt = Checkpointer(tmp_path, read_only=True)
    logs = []
    state, meta = ckpt.restore(abstract(tiny_state()), log=logs.append)
    assert meta["global_step"] == 1  # the previous, verified one: never the damaged one
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
    assert len(logs) == 1 and "checkpoint step 2 is corrupt or partial" in logs[0]
    with pytest.raises(CorruptCheckpointError, match="step 2"):  # inference refuses it
        ckpt.restore_params(abstract(tiny_state()).params)
    ckpt.close()


@pytest.mark.req("RUN-02")
def test_nonfinite_parameters_are_rejected(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=5)
    ckpt.save(1, tiny_state(1.0), {"global_step": 1})
    ckpt.save(2, tiny_state(float("nan")), {"global_step": 2})
    ckpt.close()
    ckpt = Checkpointer(tmp_path, read_only=True)
    _, meta = ckpt.restore(abstract(tiny_state()))
    assert meta["global_step"] == 1
    with pytest.raises(CorruptCheckpointError, match="non-finite"):
        ckpt.restore_params(abstract(tiny_state()).params, 2)
    ckpt.close()


@pytest.mark.req("RUN-02")
def test_generate_refuses_a_corrupt_checkpoint(tmp_path):
    from pythoncoder.infer.loading import RunDirError, load_for_inference
    from pythoncoder.model import ModelConfig, build_model
    from pythoncoder.train.config import TrainConfig
    from pythoncoder.train.optimizer import make_optimizer
    from pythoncoder.train.step import init_train_state

    cfg = ModelConfig(name="t", vocab_size=64, hidden_size=16, num_layers=1, head_dim=8,
                      intermediate_size=32, compute_dtype="float32", remat_policy="none",
                      attn_block_size=8, loss_chunk_size=32, tpu_aligned=False)
    tx, _ = make_optimizer(TrainConfig(seq_len=16, micro_batch=1, accum_steps=1), 10, 1)
    state = init_train_state(build_model(cfg), tx)
    write_run_files(tmp_path, cfg, {}, {})
    ckpt = Checkpointer(tmp_path)
    ckpt.save(3, state, {"global_step": 3})
    ckpt.close()
    model, _ = load_for_inference(tmp_path)  # the good one loads
    np.testing.assert_array_equal(np.asarray(model.lm_head.kernel[...]),
                                  np.asarray(state.params["lm_head"]["kernel"][...]))
    bit_flip(largest_file(tmp_path / "checkpoints" / "3"))
    with pytest.raises(RunDirError, match="checkpoint step 3 is corrupt"):
        load_for_inference(tmp_path)


# ---------------------------------------------------------------- RUN-03
@pytest.mark.req("RUN-03")
def test_a_second_owner_is_refused_naming_pid_and_host(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLockError) as e:
            RunLock(tmp_path).acquire()
    msg = str(e.value)
    assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg
    RunLock(tmp_path).acquire().release()  # released with its owner


@pytest.mark.req("RUN-03")
def test_a_stale_lock_is_taken_over_with_a_message(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run.lock").write_text(json.dumps({"pid": dead.pid,
                                                   "host": socket.gethostname()}))
    logs = []
    lock = RunLock(tmp_path, log=logs.append).acquire()
    lock.release()
    assert len(logs) == 1 and "stale lock" in logs[0] and str(dead.pid) in logs[0]
    assert "no longer running" in logs[0]


@pytest.mark.req("RUN-03")
def test_a_second_trainer_process_is_refused(tmp_path, data_dir):
    """Another process holds the directory: `train` exits 1 naming it, nothing rewritten."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pythoncoder.checkpoint import RunLock; "
         f"RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        out = subprocess.run(
            [sys.executable, "-m", "pythoncoder", "train", "--out", str(tmp_path), "--data",
             str(data_dir), "--seq-len", "16", "--no-progress"], capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 1, out.stderr[-2000:]
    assert f"pid {holder.pid}" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run.json").exists()


def micro_cfgs(**train_kw):
    from pythoncoder.model import ModelConfig
    from pythoncoder.train.config import TrainConfig

    mcfg = ModelConfig(name="test", vocab_size=151_808, hidden_size=32, num_layers=2,
                       head_dim=8, intermediate_size=64, compute_dtype="float32",
                       remat_policy="none", attn_block_size=16, loss_chunk_size=64,
                       tpu_aligned=False)
    base = dict(seq_len=16, micro_batch=4, accum_steps=2, epochs=1, peak_lr=1e-2,
                warmup_steps=1, steps_per_checkpoint=2, keep_checkpoints=5, eval_batches=2)
    base.update(train_kw)
    return mcfg, TrainConfig(**base)


def quiet_train(mcfg, tcfg, data_dir, run_dir, **kw):
    from pythoncoder.train.loop import train
    from pythoncoder.train.sharding import make_mesh

    kw = {"progress": False, "mesh": make_mesh(1, 1, jax.devices()[:1]),
          "log": lambda *_: None, **kw}
    return train(mcfg, tcfg, data_dir, run_dir, **kw)


@pytest.mark.req("RUN-03")
def test_fresh_train_into_a_run_with_checkpoints_refuses(tmp_path, data_dir):
    mcfg, tcfg = micro_cfgs()
    (tmp_path / "checkpoints" / "4").mkdir(parents=True)
    (tmp_path / "run.json").write_text('{"sentinel": 1}')
    with pytest.raises(CheckpointError, match=r"already holds checkpoints \(steps \[4\]\).*"
                                              "--resume"):
        quiet_train(mcfg, tcfg, data_dir, tmp_path, total_steps=2)
    assert json.loads((tmp_path / "run.json").read_text()) == {"sentinel": 1}  # untouched


# ---------------------------------------------------------------- RUN-04
@pytest.mark.req("RUN-04")
@pytest.mark.parametrize("field", ["preset", "seq_len", "micro_batch", "model", "data"])
def test_resume_checks_what_it_resumes(tmp_path, data_dir, field):
    from pythoncoder.train.run import data_fingerprint

    mcfg, tcfg = micro_cfgs()
    saved_m, saved_t = mcfg, tcfg
    fingerprint = data_fingerprint(data_dir)
    if field == "preset":
        saved_m = mcfg.replace(name="small")
    elif field == "seq_len":
        saved_t = micro_cfgs(seq_len=32)[1]
    elif field == "micro_batch":
        saved_t = micro_cfgs(micro_batch=2)[1]
    elif field == "model":
        saved_m = mcfg.replace(num_layers=3)
    else:
        fingerprint = "0" * 64
    write_run_files(tmp_path, saved_m, saved_t, {}, data_manifest_sha256=fingerprint)
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    before = (tmp_path / "run.json").read_text()
    expect = {"preset": "preset differs.*'small'.*'test'",
              "seq_len": "train.seq_len differs.*32.*16",
              "micro_batch": "train.micro_batch differs.*2.*4",
              "model": "model.num_layers differs.*3.*2",
              "data": "data manifest sha256 differs"}[field]
    with pytest.raises(CheckpointError, match=expect) as e:
        quiet_train(mcfg, tcfg, data_dir, tmp_path, total_steps=4, resume=True)
    assert "\n" not in str(e.value)
    assert (tmp_path / "run.json").read_text() == before


# ---------------------------------------------------------------- RUN-05
BAD_INPUTS = {
    "steps 0": ["train", "--steps", "0"],
    "micro-batch 0": ["train", "--micro-batch", "0"],
    "accum-steps 0": ["train", "--accum-steps", "0"],
    "seq-len 0": ["train", "--seq-len", "0"],
    "peak-lr -1": ["train", "--peak-lr", "-1"],
    "peak-lr 0": ["train", "--peak-lr", "0"],
    "mesh abc": ["train", "--mesh", "abc"],
    "mesh 3x3": ["train", "--mesh", "3x3"],
    "seq-len 9000": ["train", "--seq-len", "9000"],
    "seq-len not the data's": ["train", "--seq-len", "32", "--data", "{data}"],
    "empty prepared dir": ["train", "--seq-len", "16", "--data", "{empty}"],
    "read-only out": ["train", "--seq-len", "16", "--data", "{data}", "--out",
                      "/proc/pythoncoder-run"],
    "tokens below one step": ["train", "--seq-len", "16", "--data", "{data}", "--tokens", "10"],
    "temperature -1": ["generate", "--prompt", "x", "--temperature", "-1"],
    "top-p 0": ["generate", "--prompt", "x", "--top-p", "0"],
    "top-p 1.5": ["generate", "--prompt", "x", "--top-p", "1.5"],
    "max-new-tokens -1": ["generate", "--prompt", "x", "--max-new-tokens", "-1"],
    "eval timeout 0": ["eval", "humaneval", "--samples", "s.jsonl", "--timeout", "0"],
    "eval timeout -1": ["eval", "humaneval", "--samples", "s.jsonl", "--timeout", "-1"],
}


@pytest.mark.req("RUN-05")
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_cli_input_is_exit_2_and_one_line(case, tmp_path, data_dir, capsys):
    from pythoncoder.cli import main

    (tmp_path / "empty").mkdir()
    argv = [a.format(data=data_dir, empty=tmp_path / "empty") for a in BAD_INPUTS[case]]
    if argv[0] == "train" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "run"), "--no-progress"]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "\n" not in err and "Traceback" not in err and "error:" in err, err
    assert not (tmp_path / "run").exists()  # nothing started


# ---------------------------------------------------------------- RUN-02/04 in the trainer
def _signal_after(run_dir, records, signum):
    """Send ``signum`` to this process once the loop has logged ``records`` train rows."""
    import threading
    import time

    def watch():
        path = run_dir / "metrics.jsonl"
        while True:
            if path.exists() and sum('"loss"' in line for line in
                                     path.read_text().splitlines()) >= records:
                os.kill(os.getpid(), signum)
                return
            time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()


@pytest.mark.slow  # three short runs: about a minute uncontended
@pytest.mark.req("RUN-02", "RUN-04")
def test_sigint_then_corrupt_latest_then_resume(tmp_path, data_dir):
    """SIGINT saves; a bit-flipped latest step is rejected by step and resume continues
    from the one before (never NaN); --steps below it refuses; metrics hold each step once."""
    import signal

    mcfg, tcfg = micro_cfgs(steps_per_checkpoint=2)
    run_dir = tmp_path / "run"
    _signal_after(run_dir, 3, signal.SIGINT)
    part = quiet_train(mcfg, tcfg, data_dir, run_dir, total_steps=8)
    k = part["steps_done"]
    assert part["interrupted"] == "SIGINT" and 3 <= k < 8
    ckpt = Checkpointer(run_dir, read_only=True)
    steps = ckpt.all_steps()
    ckpt.close()
    assert steps[-1] == k and len(steps) >= 2
    previous = steps[-2]
    with (run_dir / "metrics.jsonl").open("a") as f:  # rows of steps lost by a kill
        f.write(json.dumps({"step": k + 1, "loss": 1.0}) + "\n" + '{"step": ')
    bit_flip(largest_file(run_dir / "checkpoints" / str(k)))

    with pytest.raises(CheckpointError, match=f"below the restored step {previous}"):
        quiet_train(mcfg, tcfg, data_dir, run_dir, total_steps=1, resume=True)
    logs = []
    rest = quiet_train(mcfg, tcfg, data_dir, run_dir, total_steps=8, resume=True,
                       log=logs.append)
    assert any(f"checkpoint step {k} is corrupt or partial" in line for line in logs), logs
    assert any(f"resuming from step {previous}" in line for line in logs), logs
    assert len(rest["losses"]) == 8 - previous
    assert all(np.isfinite(rest["losses"]))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if "loss" in r]
    assert train_steps == list(range(1, 9))  # each step once, nothing duplicated
    val_steps = [r["step"] for r in rows if "val_loss" in r]
    assert val_steps == sorted(set(val_steps))
    assert list((run_dir / "rejected_checkpoints").iterdir())  # set aside, not deleted
    ckpt = Checkpointer(run_dir, read_only=True)
    for s in ckpt.all_steps():  # every checkpoint left verifies
        ckpt.verify(s)
    ckpt.close()


# ---------------------------------------------------------------- RUN-06
def _tmpfs(where: Path, size: str):
    where.mkdir()
    try:
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e})")
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip()})")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


@pytest.fixture
def small_tmpfs(tmp_path):
    yield from _tmpfs(tmp_path / "tmpfs", "1200k")


@pytest.fixture
def run_tmpfs(tmp_path):
    yield from _tmpfs(tmp_path / "runfs", "200m")


@pytest.mark.req("RUN-06")
@pytest.mark.parametrize("async_save", [True, False])
def test_disk_full_during_a_save_is_one_clear_error(small_tmpfs, async_save):
    """About 320 KB of random (incompressible) floats a step on a 1.2 MB tmpfs."""
    def big(step):
        s = tiny_state(float(step), step)
        w = np.random.default_rng(step).standard_normal((256, 256)).astype(np.float32)
        return s.replace(params={"w": jnp.asarray(w), "b": s.params["b"]},
                         opt_state={"mu": {"w": jnp.zeros((128, 128), jnp.float32),
                                           "b": s.params["b"]}})

    ckpt = Checkpointer(small_tmpfs, keep=5, async_save=async_save)
    saved = []
    with pytest.raises(CheckpointError) as e:
        for step in range(1, 10):
            ckpt.save(step, big(step), {"global_step": step})
            assert ckpt.finish() == step
            saved.append(step)
    msg = str(e.value)
    assert "\n" not in msg and "No space left on device" in msg, msg
    assert f"step {len(saved) + 1}" in msg and "earlier checkpoints are untouched" in msg
    assert saved, "the tmpfs should hold at least one checkpoint"
    ckpt.manager.close()
    ckpt = Checkpointer(small_tmpfs, read_only=True)
    abstract_big = abstract(big(1))
    state, meta = ckpt.restore(abstract_big)
    assert meta["global_step"] == saved[-1]
    np.testing.assert_array_equal(np.asarray(state.params["w"]),
                                  np.asarray(big(saved[-1]).params["w"]))
    ckpt.close()


# ---------------------------------------------------------------- RUN-07
@pytest.mark.req("RUN-07")
@pytest.mark.parametrize("failure", ["malformed_jsonl", "row_not_an_object", "missing_source"])
def test_failing_prepare_leaves_the_existing_dataset_intact(tmp_path, failure):
    from pythoncoder.data.prepare import prepare

    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"m{i}.py").write_text(f"def f{i}(a):\n    return a * {i} + {i}\n" * 4)
    out = tmp_path / "data"
    prepare([str(src)], out, seq_len=16, val_fraction=0.0, num_workers=1, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad.jsonl"
    good_row = json.dumps({"content": "def g():\n    return 1\n" * 4})
    bad_row = {"malformed_jsonl": '{"content": "x"', "row_not_an_object": "[1, 2]",
               "missing_source": good_row}[failure]
    bad.write_text(good_row + "\n" + bad_row + "\n")
    sources = [str(src), str(bad)] if failure != "missing_source" else \
        [str(src), str(tmp_path / "nope")]
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        prepare(sources, out, seq_len=16, val_fraction=0.0, num_workers=1, progress=False)
    if failure != "missing_source":
        assert "line 2" in str(e.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.req("RUN-07")
def test_sources_are_decoded_by_their_coding_declaration(tmp_path):
    from pythoncoder.data.prepare import decode_source

    text = "# -*- coding: latin-1 -*-\nname = 'caf\u00e9'\n" + "x = 1\n" * 20
    assert decode_source(text.encode("latin-1")) == text
    assert decode_source("\ufeffs = 'caf\u00e9'\n".encode("utf-8")) == "s = 'caf\u00e9'\n"
    assert decode_source(b"s = '\xff'\n") is None  # undeclared and not UTF-8


# ---------------------------------------------------------------- RUN-08
KILL_DRIVER = """
import sys, json
from pathlib import Path
import jax
from pythoncoder.model import ModelConfig
from pythoncoder.train.config import TrainConfig
from pythoncoder.train.loop import train
from pythoncoder.train.sharding import make_mesh

data, out, total = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
mcfg = ModelConfig(name="test", vocab_size=151_808, hidden_size=32, num_layers=2, head_dim=8,
                   intermediate_size=64, compute_dtype="float32", remat_policy="none",
                   attn_block_size=16, loss_chunk_size=64, tpu_aligned=False)
tcfg = TrainConfig(seq_len=16, micro_batch=4, accum_steps=2, epochs=1, peak_lr=1e-2,
                   warmup_steps=1, steps_per_checkpoint=1, keep_checkpoints=3, eval_batches=1)
ckpts = out / "checkpoints"
resume = ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())
train(mcfg, tcfg, data, out, total_steps=total, resume=resume, progress=False,
      mesh=make_mesh(1, 1, jax.devices()[:1]), log=lambda m: print(m, flush=True))
print("DONE", flush=True)
"""


@pytest.mark.slow  # about six short training processes
@pytest.mark.req("RUN-08")
def test_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path, data_dir):
    import random
    import time

    from pythoncoder.checkpoint import restore_model

    script = tmp_path / "driver.py"
    script.write_text(KILL_DRIVER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    total = 10

    def launch(out):
        return subprocess.Popen([sys.executable, str(script), str(data_dir), str(out),
                                 str(total)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env)

    full = launch(tmp_path / "full")
    log, _ = full.communicate(timeout=600)
    assert full.returncode == 0 and "DONE" in log, log[-3000:]

    rng = random.Random(13)
    run_dir = tmp_path / "killed"
    kills = 0
    for _ in range(4):
        proc = launch(run_dir)
        metrics = run_dir / "metrics.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:  # wait for training to start
            if metrics.exists() and '"loss"' in metrics.read_text():
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            proc.kill()  # SIGKILL: no handler runs
            kills += 1
        proc.communicate(timeout=60)
    assert kills >= 2
    last = launch(run_dir)
    log, _ = last.communicate(timeout=600)
    assert last.returncode == 0 and "DONE" in log, log[-3000:]

    ckpt = Checkpointer(run_dir, read_only=True)
    assert ckpt.latest_step() == total
    for s in ckpt.all_steps():  # no broken checkpoint left among the steps
        ckpt.verify(s)
    ckpt.close()
    assert not list((run_dir / "checkpoints").glob("*orbax-checkpoint-tmp*"))
    a, b = restore_model(run_dir), restore_model(tmp_path / "full")
    from flax import nnx

    for x, y in zip(jax.tree.leaves(nnx.state(a, nnx.Param)),
                    jax.tree.leaves(nnx.state(b, nnx.Param)), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, total + 1))


@pytest.mark.req("RUN-08")
def test_a_fresh_run_drops_the_temporary_of_a_killed_first_save(tmp_path, data_dir):
    """A run killed during its first save leaves only an Orbax temporary: a fresh ``train``
    into that directory (nothing to resume) starts, and the temporary is gone."""
    mcfg, tcfg = micro_cfgs()
    tmp = tmp_path / "run" / "checkpoints" / "2.orbax-checkpoint-tmp-1234567"
    (tmp / "params").mkdir(parents=True)
    out = quiet_train(mcfg, tcfg, data_dir, tmp_path / "run", total_steps=2)
    assert out["steps_done"] == 2 and not tmp.exists()
    assert Checkpointer(tmp_path / "run", read_only=True).all_steps() == [2]


@pytest.mark.req("RUN-08")
def test_what_a_kill_leaves_is_cleaned_and_the_step_saved_again(tmp_path):
    """The states SIGKILL can leave: an Orbax temporary, a finalised step with no manifest."""
    save_steps(tmp_path, [1, 2, 3])
    (tmp_path / "checkpoints" / "3" / MANIFEST).unlink()  # killed before the manifest
    tmp = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1234567"  # killed mid-save
    (tmp / "params").mkdir(parents=True)
    ckpt = Checkpointer(tmp_path, keep=10)
    ckpt.remove_partial_saves()
    logs = []
    assert ckpt.newest_verified(log=logs.append) == 2
    assert "checkpoint step 3 is corrupt or partial" in logs[0]
    ckpt.set_aside([3])
    assert ckpt.all_steps() == [1, 2] and not tmp.exists()
    ckpt.save(3, tiny_state(3.0, 3), {"global_step": 3})  # the step is redone and saved
    assert ckpt.finish() == 3
    ckpt.verify(3)
    ckpt.close()


@pytest.mark.slow  # one short training run
@pytest.mark.req("RUN-06")
def test_disk_full_in_the_trainer_stops_with_one_line_and_no_metric(run_tmpfs, data_dir):
    """Tens of MB a checkpoint (parameters and AdamW state) on a 200 MB tmpfs: a few saves
    fit, then one fails; the run stops naming it, logging no metric for it."""
    import re

    mcfg, tcfg = micro_cfgs(steps_per_checkpoint=2)
    run_dir = run_tmpfs / "run"
    with pytest.raises(CheckpointError) as e:
        quiet_train(mcfg, tcfg, data_dir, run_dir, total_steps=40)
    msg = str(e.value)
    assert "\n" not in msg and "No space left on device" in msg, msg
    failed = int(re.search(r"saving checkpoint step (\d+)", msg)[1])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val_steps = [r["step"] for r in rows if "val_loss" in r]
    assert failed not in val_steps and val_steps[-1] == failed - 2  # none for the lost one
    assert max(r["step"] for r in rows if "loss" in r) <= failed + 2  # stopped at once
    ckpt = Checkpointer(run_dir, read_only=True)
    assert ckpt.newest_verified() == failed - 2  # the earlier ones are intact
    ckpt.close()


@pytest.mark.req("RUN-06")
def test_a_failed_background_save_is_one_line_without_tmpfs(tmp_path, monkeypatch):
    """Where no tmpfs can be mounted: Orbax's background failure, as it arrives."""
    ckpt = Checkpointer(tmp_path, keep=5)
    ckpt.save(1, tiny_state(1.0, 1), {"global_step": 1})
    assert ckpt.finish() == 1
    ckpt.save(2, tiny_state(2.0, 2), {"global_step": 2})

    def fail():
        raise ValueError('RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database\n'
                         "Failed to write 262144 bytes: No space left on device [os_error 28]")

    monkeypatch.setattr(ckpt.manager, "wait_until_finished", fail)
    with pytest.raises(CheckpointError) as e:
        ckpt.finish()
    assert str(e.value).count("\n") == 0 and "step 2" in str(e.value)
    assert "No space left on device" in str(e.value)
    monkeypatch.undo()
    ckpt.manager.wait_until_finished()
    ckpt.manager.close()
    ckpt = Checkpointer(tmp_path, read_only=True)
    assert ckpt.newest_verified() == 1  # step 2 never got its manifest
    ckpt.close()


@pytest.mark.req("RUN-02")
def test_the_manifest_is_hashed_off_the_training_thread(tmp_path, monkeypatch):
    """``poll`` hands the hashing to a background thread and returns at once while it runs
    (at 1b a step is gigabytes); the step is reported once its manifest is written, and a
    failed manifest write surfaces as one CheckpointError from ``poll``."""
    import threading
    import time

    import pythoncoder.checkpoint as ckpt_mod

    release, hashing = threading.Event(), threading.Event()
    real = ckpt_mod.write_manifest

    def slow_manifest(step_dir, step):
        hashing.set()
        assert release.wait(60)
        if step == 2:
            raise OSError(28, "No space left on device")
        return real(step_dir, step)

    monkeypatch.setattr(ckpt_mod, "write_manifest", slow_manifest)
    ckpt = Checkpointer(tmp_path, keep=5)
    ckpt.save(1, tiny_state(1.0, 1), {"global_step": 1})
    ckpt.manager.wait_until_finished()
    assert ckpt.poll() is None and hashing.wait(60)  # hashing started, poll did not wait
    assert ckpt.poll() is None and not (ckpt.step_dir(1) / MANIFEST).exists()
    release.set()
    assert ckpt.finish() == 1
    verify_step(ckpt.step_dir(1), 1)
    assert ckpt.poll() is None and ckpt.finish() is None  # nothing pending

    ckpt.save(2, tiny_state(2.0, 2), {"global_step": 2})
    ckpt.manager.wait_until_finished()
    with pytest.raises(CheckpointError) as e:
        while ckpt.poll() is None:
            time.sleep(0.01)
    assert str(e.value).count("\n") == 0 and "manifest of checkpoint step 2" in str(e.value)
    assert "No space left on device" in str(e.value)
    ckpt.close()
    ckpt = Checkpointer(tmp_path, read_only=True)
    assert ckpt.newest_verified() == 1
    ckpt.close()
