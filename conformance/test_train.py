"""TRAIN-01..10 and DROP-01 in the real train step."""

import math
import os
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from pythoncoder.checkpoint import Checkpointer, CheckpointError, restore_model
from pythoncoder.model import ModelConfig, build_model
from pythoncoder.spec import check_values
from pythoncoder.train.config import TrainConfig, plan_run
from pythoncoder.train.loop import NonFiniteError, train
from pythoncoder.train.memory import train_step_memory
from pythoncoder.train.optimizer import decay_mask, make_optimizer
from pythoncoder.train.schedule import wsd_schedule
from pythoncoder.train.sharding import make_mesh, state_shardings
from pythoncoder.train.step import init_train_state, make_train_step, split_model

VOCAB = 151_808


def small_model_cfg(**kw) -> ModelConfig:
    """Real vocabulary (the data holds real token ids), everything else minimal."""
    base = dict(name="test", vocab_size=VOCAB, hidden_size=32, num_layers=2, head_dim=8,
                intermediate_size=64, compute_dtype="float32", remat_policy="none",
                attn_block_size=16, loss_chunk_size=64, tpu_aligned=False)
    base.update(kw)
    return ModelConfig(**base)


def one_device():
    return make_mesh(1, 1, jax.devices()[:1])


def run(model_cfg, train_cfg, data_dir, run_dir, **kw):
    """``train`` on one device, quietly."""
    kw = {"progress": False, "mesh": one_device(), "log": lambda *_: None, **kw}
    return train(model_cfg, train_cfg, data_dir, run_dir, **kw)


def micro_train_cfg(**kw) -> TrainConfig:
    base = dict(seq_len=16, micro_batch=4, accum_steps=2, epochs=1, peak_lr=1e-2,
                warmup_steps=1, steps_per_checkpoint=2, keep_checkpoints=5, eval_batches=2)
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------- TRAIN-01
@pytest.mark.req("TRAIN-01")
def test_wsd_check_values():
    c = check_values("TRAIN-01")
    s = wsd_schedule(c["peak"], c["total"], warmup_steps=2000)
    for step in (1000, 5000, 9500, 10000):
        np.testing.assert_allclose(float(s(step)), c[f"step_{step}"], rtol=1e-5, atol=0)
    np.testing.assert_allclose(float(s(0)), 0.0, rtol=0, atol=1e-12)
    # stable plateau right up to 0.9 * total, then strictly decreasing to min_lr
    np.testing.assert_allclose(float(s(9000)), c["peak"], rtol=1e-6, atol=0)
    decay = np.asarray([float(s(i)) for i in range(9000, 10001, 50)])
    assert (np.diff(decay) < 0).all()


@pytest.mark.req("TRAIN-01", "TRAIN-09")
def test_decay_is_reached_from_the_run_plan():
    cfg = TrainConfig()
    plan = plan_run(24_000_000_000, cfg)
    tx, sched = make_optimizer(cfg, plan.total_steps, plan.warmup_steps)
    np.testing.assert_allclose(float(sched(plan.total_steps)), 0.1 * cfg.peak_lr, rtol=1e-5,
                               atol=0)
    assert plan.decay_start == plan.total_steps - round(0.1 * plan.total_steps)
    np.testing.assert_allclose(float(sched(plan.decay_start)), cfg.peak_lr, rtol=1e-6, atol=0)


# ---------------------------------------------------------------- TRAIN-02 / 09
@pytest.mark.req("TRAIN-02")
def test_batch_configuration():
    c = check_values("TRAIN-02")
    cfg = TrainConfig()
    assert (cfg.micro_batch, cfg.seq_len, cfg.accum_steps) == (
        c["micro_batch"], c["seq_len"], c["accumulation"])
    assert cfg.tokens_per_step == c["tokens_per_step"] == 131_072


@pytest.mark.req("TRAIN-09")
def test_scaling_plan_check_values():
    c = check_values("TRAIN-09")
    plan = plan_run(c["tokens"], TrainConfig())
    assert plan.tokens_per_step == c["tokens_per_step"]
    assert plan.steps_per_epoch == c["steps_per_epoch"]
    assert plan.total_steps == c["total_steps"]
    assert "183,105 steps/epoch" in plan.describe() and "732,420 total steps" in plan.describe()


# ---------------------------------------------------------------- TRAIN-03 / 04 / 08 (step)
def _step_setup(accum, micro_b, model_cfg=None, train_cfg=None, seed=0):
    model_cfg = model_cfg or small_model_cfg(vocab_size=512, dropout_rate=0.0)
    train_cfg = train_cfg or TrainConfig(warmup_steps=0, peak_lr=1e-2)
    model = build_model(model_cfg, seed=seed)
    tx, _ = make_optimizer(train_cfg, total_steps=100, warmup_steps=0)
    graphdef, _ = split_model(model)
    state = init_train_state(model, tx)
    step = jax.jit(make_train_step(graphdef, tx, mtp_weight=0.1))
    return state, step, tx


def _tokens(accum, micro_b, t=17, vocab=512, seed=0):
    return jax.random.randint(jax.random.PRNGKey(seed), (accum, micro_b, t), 0, vocab)


@pytest.mark.req("TRAIN-03")
def test_one_update_per_accumulation_cycle():
    state, step, _ = _step_setup(8, 2)
    batch = {"tokens": _tokens(8, 2)}
    for expected in (1, 2, 3):
        state, m = step(state, batch, jax.random.PRNGKey(0))
        assert int(state.step) == expected
        adam = state.opt_state[1][0]  # chain(clip, adamw) -> adamw's ScaleByAdamState
        assert int(adam.count) == expected


@pytest.mark.req("TRAIN-03")
def test_accumulated_update_equals_full_batch_update():
    """Accumulating 8 micro-batches of 2 gives the update of one batch of 16.

    Compared through SGD(lr=1), whose update *is* the (negated) gradient: AdamW's first
    step is invariant to the gradient's scale, so a sum-instead-of-mean bug would pass a
    comparison of AdamW updates."""
    tokens = _tokens(8, 2)  # 16 sequences
    cfg = small_model_cfg(vocab_size=512, dropout_rate=0.0)
    graphdef, _ = split_model(build_model(cfg, seed=0))
    sgd = optax.sgd(1.0)
    state = init_train_state(build_model(cfg, seed=0), sgd)
    step = jax.jit(make_train_step(graphdef, sgd, mtp_weight=0.1))
    new_a, ma = step(state, {"tokens": tokens}, jax.random.PRNGKey(0))
    new_b, mb = step(state, {"tokens": tokens.reshape(1, 16, -1)}, jax.random.PRNGKey(0))
    np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(float(ma["grad_norm"]), float(mb["grad_norm"]), rtol=1e-5,
                               atol=1e-7)
    # NUM-02: accumulation sums the gradient in another order than one big batch does, so
    # the updates agree to fp32 accumulation error relative to each tensor's size, plus
    # the rounding of p - lr*g in fp32 (a few ulps of p).
    ulp = float(np.finfo(np.float32).eps)
    for a, b, p in zip(jax.tree.leaves(new_a.params), jax.tree.leaves(new_b.params),
                       jax.tree.leaves(state.params), strict=True):
        da, db = np.asarray(a - p), np.asarray(b - p)
        tol = 1e-5 * float(np.abs(db).max()) + 4 * ulp * float(np.abs(np.asarray(p)).max())
        np.testing.assert_allclose(da, db, rtol=1e-4, atol=tol)
    # the real AdamW step agrees too, and advances once
    state_a, step_a, _ = _step_setup(8, 2)
    state_b, step_b, _ = _step_setup(1, 16)
    adam_a, _ = step_a(state_a, {"tokens": tokens}, jax.random.PRNGKey(0))
    adam_b, _ = step_b(state_b, {"tokens": tokens.reshape(1, 16, -1)}, jax.random.PRNGKey(0))
    assert int(adam_a.step) == int(adam_b.step) == 1
    for a, b in zip(jax.tree.leaves(adam_a.params), jax.tree.leaves(adam_b.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-4)
    # an eager loop that updates per micro-batch (the design doc's bug) differs
    state_c = state
    for i in range(8):
        state_c, _ = step(state_c, {"tokens": tokens[i:i + 1]}, jax.random.PRNGKey(0))
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves(new_a.params), jax.tree.leaves(state_c.params), strict=True))
    assert diff > 1e-3


# The decayed leaves of the model, written out by hand (not derived from the code under
# test): every Linear kernel and the embedding; no norm scale, no lambda vector.
DECAYED = {
    "blocks/attn/q_proj/kernel", "blocks/attn/k_proj/kernel", "blocks/attn/v_proj/kernel",
    "blocks/attn/o_proj/kernel", "blocks/mlp/gate/kernel", "blocks/mlp/up/kernel",
    "blocks/mlp/down/kernel", "embed/embedding", "lm_head/kernel", "mtp/proj/kernel",
}
NOT_DECAYED = {
    "blocks/attn/lambda_q1", "blocks/attn/lambda_k1", "blocks/attn/lambda_q2",
    "blocks/attn/lambda_k2", "blocks/attn/subln/scale", "blocks/attn_norm/scale",
    "blocks/mlp_norm/scale", "final_norm/scale", "mtp/emb_norm/scale",
    "mtp/hidden_norm/scale", "mtp/out_norm/scale",
}


def _flat_by_name(tree) -> dict:
    """{'blocks/attn/q_proj/kernel': leaf, ...} from an nnx.State or a tree shaped like one."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        names = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
        out["/".join(names)] = leaf
    return out


def _ref_adamw_step(p, g, lr, decayed, *, b1=0.9, b2=0.95, eps=1e-8, wd=0.1):
    """First AdamW update in float64, straight from Loshchilov & Hutter (decoupled decay)."""
    m = (1 - b1) * g
    v = (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1), v / (1 - b2)
    return -lr * (m_hat / (np.sqrt(v_hat) + eps) + (wd * p if decayed else 0.0))


@pytest.mark.req("TRAIN-04")
def test_decay_mask_names_every_matrix_and_nothing_else():
    model = build_model(small_model_cfg(vocab_size=512), seed=0)
    mask = _flat_by_name(decay_mask(nnx.state(model, nnx.Param)))
    assert set(mask) == DECAYED | NOT_DECAYED  # the model has exactly these leaves
    assert {k for k, v in mask.items() if v} == DECAYED
    # a parameter the mask does not know is an error, never a silent "no decay"
    with pytest.raises(ValueError, match="neither a matrix"):
        decay_mask({"blocks": {"bias": jnp.zeros(3)}})


@pytest.mark.req("TRAIN-04")
def test_weight_decay_reaches_every_matrix_with_zero_gradients():
    """With zero gradients AdamW's update is exactly -lr * wd * p on matrices, 0 elsewhere."""
    cfg = TrainConfig(warmup_steps=0, peak_lr=1e-2)
    params = nnx.state(build_model(small_model_cfg(vocab_size=512), seed=0), nnx.Param)
    tx, sched = make_optimizer(cfg, total_steps=100, warmup_steps=0)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    lr = float(sched(0))
    got, p = _flat_by_name(updates), _flat_by_name(params)
    for name in DECAYED:
        np.testing.assert_allclose(np.asarray(got[name]), -lr * 0.1 * np.asarray(p[name]),
                                   rtol=1e-6, atol=0, err_msg=name)
        assert np.abs(np.asarray(got[name])).max() > 0, name
    for name in NOT_DECAYED:
        np.testing.assert_array_equal(np.asarray(got[name]), 0.0, err_msg=name)


@pytest.mark.req("TRAIN-04")
def test_adamw_hyperparameters_and_clipping_against_float64():
    c = check_values("TRAIN-04")
    cfg = TrainConfig()
    assert (cfg.b1, cfg.b2, cfg.weight_decay, cfg.clip_norm, cfg.peak_lr) == (
        c["b1"], c["b2"], c["weight_decay"], c["clip_norm"], c["peak_lr"])
    params = nnx.state(build_model(small_model_cfg(vocab_size=512), seed=0), nnx.Param)
    # One step against a float64 AdamW reference with global-norm clipping at 1.0.
    tx, sched = make_optimizer(cfg.replace(warmup_steps=0), total_steps=100, warmup_steps=0)
    rng = np.random.default_rng(0)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 3, jnp.float32),
                         params)
    updates, _ = tx.update(grads, tx.init(params), params)
    g64 = {k: np.asarray(v, np.float64) for k, v in _flat_by_name(grads).items()}
    norm = math.sqrt(sum(float(np.sum(x ** 2)) for x in g64.values()))
    assert norm > 1.0  # clipping is active
    lr = float(sched(0))
    p64 = {k: np.asarray(v, np.float64) for k, v in _flat_by_name(params).items()}
    for name, u in _flat_by_name(updates).items():
        want = _ref_adamw_step(p64[name], g64[name] / norm, lr, name in DECAYED)
        np.testing.assert_allclose(np.asarray(u), want, rtol=1e-4, atol=1e-9, err_msg=name)


@pytest.mark.req("TRAIN-08")
def test_nonfinite_step_leaves_state_untouched():
    state, step, _ = _step_setup(2, 2)
    batch = {"tokens": _tokens(2, 2)}
    state, _ = step(state, batch, jax.random.PRNGKey(0))  # one good step
    poisoned = jax.tree.map(lambda x: x, state.params)
    poisoned["lm_head"]["kernel"][...] = state.params["lm_head"]["kernel"][...].at[0, 0].set(
        jnp.inf)
    bad = state.replace(params=poisoned)
    new, m = step(bad, batch, jax.random.PRNGKey(1))
    assert not bool(m["finite"])
    assert int(new.step) == int(state.step) and int(new.skipped) == 1
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(bad.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(new.opt_state), jax.tree.leaves(bad.opt_state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@jax.custom_jvp
def _zero_with_inf_gradient(x):
    """0 forward; an infinite derivative backward (a finite loss, a non-finite gradient)."""
    return jnp.zeros_like(x)


@_zero_with_inf_gradient.defjvp
def _zero_with_inf_gradient_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return jnp.zeros_like(x), jnp.inf * t


@pytest.mark.req("TRAIN-08")
def test_finite_loss_with_nonfinite_gradient_is_skipped(monkeypatch):
    """The guard reads the gradient norm too, not only the loss."""
    import pythoncoder.train.step as step_mod

    real = step_mod.lm_loss

    def loss_with_bad_gradient(model, *a, **kw):
        parts = real(model, *a, **kw)
        bomb = jnp.sum(_zero_with_inf_gradient(model.final_norm.scale[...]))
        return parts._replace(main_sum=parts.main_sum + bomb)

    monkeypatch.setattr(step_mod, "lm_loss", loss_with_bad_gradient)
    state, step, _ = _step_setup(2, 2)
    new, m = step(state, {"tokens": _tokens(2, 2)}, jax.random.PRNGKey(0))
    assert np.isfinite(float(m["loss"])) and not np.isfinite(float(m["grad_norm"]))
    assert not bool(m["finite"])
    assert int(new.step) == 0 and int(new.skipped) == 1
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(new.opt_state), jax.tree.leaves(state.opt_state),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.req("DROP-01")
def test_dropout_active_in_the_train_step():
    cfg = small_model_cfg(vocab_size=512)  # dropout_rate 0.1 (the default)
    assert cfg.dropout_rate == 0.1
    state, step, _ = _step_setup(2, 2, model_cfg=cfg)
    batch = {"tokens": _tokens(2, 2)}
    _, m1 = step(state, batch, jax.random.PRNGKey(1))
    _, m2 = step(state, batch, jax.random.PRNGKey(2))
    _, m1b = step(state, batch, jax.random.PRNGKey(1))
    assert float(m1["loss"]) != float(m2["loss"])
    assert float(m1["loss"]) == float(m1b["loss"])
    from pythoncoder.train.step import make_eval_step

    graphdef, _ = split_model(build_model(cfg, seed=0))
    ev = jax.jit(make_eval_step(graphdef, 0.1))
    micro = {"tokens": batch["tokens"][0]}
    a, b = ev(state.params, micro), ev(state.params, micro)
    assert float(a["main_sum"]) == float(b["main_sum"])


# ---------------------------------------------------------------- TRAIN-10 mesh
@pytest.mark.req("TRAIN-10")
def test_sharded_step_equals_single_device():
    """On the devices present (NUM-02): a 2x4 data x fsdp mesh on 8 (CI's fake CPU devices),
    a 1x1 mesh on a single accelerator, which still runs the sharded code path."""
    n = jax.device_count()
    data, fsdp = (2, 4) if n >= 8 else (1, 1)
    tokens = _tokens(2, 8)
    state, step, tx = _step_setup(2, 8)
    _, m_single = step(state, {"tokens": tokens}, jax.random.PRNGKey(0))
    mesh = make_mesh(data, fsdp, jax.devices()[:data * fsdp])
    model_cfg = small_model_cfg(vocab_size=512, dropout_rate=0.0)
    graphdef, _ = split_model(build_model(model_cfg, seed=0))
    shardings = state_shardings(state, mesh)
    sharded_state = jax.device_put(state, shardings)
    emb = sharded_state.params["embed"]["embedding"][...]
    # fsdp shards the embedding's rows; on a 1x1 mesh there is nothing to shard over
    want_spec = ("fsdp", None) if fsdp > 1 else ()
    assert emb.sharding.spec == jax.sharding.PartitionSpec(*want_spec)
    assert len(emb.addressable_shards) == data * fsdp
    assert emb.addressable_shards[0].data.shape[0] == 512 // fsdp
    from pythoncoder.train.sharding import batch_sharding, replicated

    sstep = jax.jit(make_train_step(graphdef, tx, mtp_weight=0.1),
                    in_shardings=(shardings, batch_sharding(mesh), replicated(mesh)),
                    out_shardings=(shardings, replicated(mesh)))
    new, m = sstep(sharded_state, {"tokens": tokens}, jax.random.PRNGKey(0))
    np.testing.assert_allclose(float(m["loss"]), float(m_single["loss"]), rtol=1e-6, atol=1e-6)
    assert new.params["embed"]["embedding"][...].sharding.spec == emb.sharding.spec


@pytest.mark.req("TRAIN-10")
def test_distributed_initialize_only_with_env(monkeypatch):
    from pythoncoder.train import sharding

    calls = []
    monkeypatch.setattr(sharding.jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(sharding.jax.distributed, "is_initialized", lambda: False)
    for k in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "PYTHONCODER_DISTRIBUTED"):
        monkeypatch.delenv(k, raising=False)
    assert sharding.maybe_initialize_distributed() is False and calls == []
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "2")
    assert sharding.maybe_initialize_distributed() is True
    assert calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                      "process_id": 2}]


# ---------------------------------------------------------------- TRAIN-07 memory
@pytest.mark.req("TRAIN-07")
def test_1b_train_step_fits_32_gib():
    report = train_step_memory(ModelConfig.preset("1b", compute_dtype="bfloat16"),
                               TrainConfig())
    assert (report.micro_batch, report.seq_len, report.accum_steps) == (8, 2048, 8)
    # params + two Adam moments, fp32: the state really is in the analysis
    assert report.train_state_bytes >= 3 * 4 * 1_075_150_848
    assert report.memory.argument_bytes >= report.train_state_bytes
    # gradients + accumulation buffer (fp32) live in temporaries
    assert report.memory.temp_bytes >= 2 * 4 * 1_075_150_848
    assert report.total_bytes <= check_values("TRAIN-07")["limit_bytes"]


# ---------------------------------------------------------------- TRAIN-05/06/08 loop
def _sigterm_after(run_dir, step):
    """Send SIGTERM to this process once the loop has logged ``step`` train records."""
    def watch():
        path = run_dir / "metrics.jsonl"
        while True:
            if path.exists() and sum('"loss"' in l for l in path.read_text().splitlines()) >= step:
                os.kill(os.getpid(), 15)
                return
            time.sleep(0.01)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.mark.req("TRAIN-05", "TRAIN-06")
def test_resume_after_sigterm_is_exact(data_dir, tmp_path):
    mcfg, tcfg = small_model_cfg(), micro_train_cfg(steps_per_checkpoint=100)
    total = 6
    full = run(mcfg, tcfg, data_dir, tmp_path / "full", total_steps=total)
    assert len(full["losses"]) == total
    # each logged LR is the schedule's value for the update that step applied
    import json

    plan = json.loads((tmp_path / "full" / "run.json").read_text())["plan"]
    _, schedule = make_optimizer(tcfg, plan["total_steps"], plan["warmup_steps"])
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text()
            .splitlines() if '"lr"' in line]
    assert [r["step"] for r in rows] == list(range(1, total + 1))
    np.testing.assert_allclose([r["lr"] for r in rows],
                               [float(schedule(r["step"] - 1)) for r in rows], rtol=1e-6, atol=0)
    part_dir = tmp_path / "part"
    _sigterm_after(part_dir, 2)
    part = run(mcfg, tcfg, data_dir, part_dir, total_steps=total)
    k = len(part["losses"])
    assert 2 <= k < total  # stopped by SIGTERM, with a checkpoint at step k
    ckpt = Checkpointer(part_dir)
    assert ckpt.latest_step() == k
    ckpt.close()
    rest = run(mcfg, tcfg, data_dir, part_dir, total_steps=total, resume=True)
    np.testing.assert_array_equal(np.asarray(part["losses"] + rest["losses"]),
                                  np.asarray(full["losses"]))
    for a, b in zip(jax.tree.leaves(rest["final_params"]), jax.tree.leaves(full["final_params"]),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the restored model for inference is the final one
    model = restore_model(part_dir)
    np.testing.assert_array_equal(np.asarray(model.lm_head.kernel[...]),
                                  np.asarray(full["final_params"]["lm_head"]["kernel"][...]))


@pytest.mark.req("TRAIN-05", "TRAIN-06")
def test_checkpoint_contents_epochs_and_retention(data_dir, tmp_path):
    mcfg = small_model_cfg()
    tcfg = micro_train_cfg(keep_checkpoints=2, steps_per_checkpoint=2, micro_batch=64,
                           accum_steps=2)
    assert TrainConfig().steps_per_checkpoint == check_values("TRAIN-05")["steps_per_epoch"]
    assert TrainConfig().epochs == check_values("TRAIN-06")["epochs"]
    logs = []
    out = run(mcfg, tcfg, data_dir, tmp_path / "r", total_steps=7,
                log=logs.append)
    assert logs[0].startswith("run plan:")  # TRAIN-09: printed before training
    spe = out["plan"].steps_per_epoch
    assert 1 <= spe < 7  # the run crosses epochs
    ckpt = Checkpointer(tmp_path / "r")
    assert ckpt.all_steps() == [6, 7]  # keep the last 2
    from pythoncoder.train.memory import abstract_train_state

    model = build_model(mcfg)
    tx, _ = make_optimizer(tcfg, out["plan"].total_steps, out["plan"].warmup_steps)
    _, meta = ckpt.restore(abstract_train_state(model, tx), 7)
    ckpt.close()
    assert meta["global_step"] == 7 and meta["epoch"] == 7 // spe
    assert meta["data_epoch"] == 7 // spe and meta["loader"]["data_epoch"] == 7 // spe
    assert meta["loader"]["batch_in_epoch"] == 7 % spe
    assert meta["seed"] == tcfg.seed and len(meta["rng_key"]) == 2
    assert not list((tmp_path / "r" / "checkpoints").glob("*tmp*"))  # atomic: no leftovers
    assert (tmp_path / "r" / "curves.png").stat().st_size > 0


@pytest.mark.req("TRAIN-05")
def test_resume_without_checkpoint_is_a_clear_error(data_dir, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run(small_model_cfg(), micro_train_cfg(), data_dir, tmp_path / "none",
              total_steps=2, resume=True,  )


@pytest.mark.req("TRAIN-08")
def test_consecutive_nonfinite_steps_stop_with_checkpoint_intact(data_dir, tmp_path,
                                                                 monkeypatch):
    import pythoncoder.train.run as setup  # where the run's step is built

    real = setup.make_train_step

    def poisoned_step(graphdef, tx, **kw):
        inner = real(graphdef, tx, **kw)

        def step(state, batch, key):  # from update 2 on, the head holds an inf
            k = state.params["lm_head"]["kernel"][...]
            bad = jnp.where(state.step >= 2, k.at[0, 0].set(jnp.inf), k)
            params = jax.tree.map(lambda x: x, state.params)
            params["lm_head"]["kernel"][...] = bad
            return inner(state.replace(params=params), batch, key)

        return step

    monkeypatch.setattr(setup, "make_train_step", poisoned_step)
    logs = []
    with pytest.raises(NonFiniteError, match="3 consecutive non-finite steps"):
        run(small_model_cfg(), micro_train_cfg(max_consecutive_nonfinite=3), data_dir,
              tmp_path / "nan", total_steps=10, log=logs.append)
    assert sum("update skipped" in l for l in logs) == 3
    ckpt = Checkpointer(tmp_path / "nan")
    assert ckpt.all_steps() == [2]  # the last good checkpoint is intact
    from pythoncoder.train.memory import abstract_train_state

    model = build_model(small_model_cfg())
    tx, _ = make_optimizer(micro_train_cfg(), 10, 1)
    state, _ = ckpt.restore(abstract_train_state(model, tx))
    ckpt.close()
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def _step_that(monkeypatch, *, poison_from=None, signal_at=None):
    """From update ``poison_from`` on the head holds an inf (inside the jitted step), and
    SIGINT reaches this process while the host prepares step ``signal_at`` (1-based)."""
    import signal

    import pythoncoder.train.loop as loop
    import pythoncoder.train.run as setup  # where the run's step is built

    if poison_from is not None:
        real = setup.make_train_step

        def poisoned(graphdef, tx, **kw):
            inner = real(graphdef, tx, **kw)

            def step(state, batch, key):
                k = state.params["lm_head"]["kernel"][...]
                params = jax.tree.map(lambda x: x, state.params)
                params["lm_head"]["kernel"][...] = jnp.where(
                    state.step >= poison_from, k.at[0, 0].set(jnp.inf), k)
                return inner(state.replace(params=params), batch, key)

            return step

        monkeypatch.setattr(setup, "make_train_step", poisoned)
    if signal_at is not None:
        reshape, calls = loop._reshape_batch, [0]

        def reshape_then_signal(batch, accum):  # called once per step, on the host
            calls[0] += 1
            if calls[0] == signal_at:
                os.kill(os.getpid(), signal.SIGINT)
            return reshape(batch, accum)

        monkeypatch.setattr(loop, "_reshape_batch", reshape_then_signal)


@pytest.mark.req("TRAIN-08", "RUN-05")
def test_signal_during_a_nonfinite_streak_reports_the_last_good_checkpoint(
        data_dir, tmp_path, monkeypatch, capsys):
    """SIGINT at step 4 of a streak that began at step 3: no checkpoint is written at step 4,
    the summary (and the CLI's line) name step 2 as where resume starts, not 'saved'."""
    from pythoncoder.train import commands

    _step_that(monkeypatch, poison_from=2, signal_at=4)
    logs = []
    summary = run(small_model_cfg(), micro_train_cfg(max_consecutive_nonfinite=5), data_dir,
                  tmp_path / "streak", total_steps=10, log=logs.append)
    assert summary["interrupted"] == "SIGINT" and summary["steps_done"] == 4
    assert summary["resume_step"] == 2 and summary["skipped"] == 2
    ckpt = Checkpointer(tmp_path / "streak", read_only=True)
    assert ckpt.all_steps() == [2]
    ckpt.close()
    assert any("no checkpoint at this step; resume starts from step 2" in l for l in logs)
    assert not any("checkpoint saved" in l for l in logs)

    monkeypatch.setattr(commands, "_train_config", lambda *a: micro_train_cfg())
    monkeypatch.setattr(commands, "validate_train_args", lambda *a: None)
    monkeypatch.setattr("pythoncoder.train.loop.train", lambda *a, **k: summary)
    args = commands.argparse.Namespace(
        preset="tiny", compute_dtype=None, remat=None, steps=10, tokens=None, epochs=None,
        data=str(data_dir), mesh=None, out=str(tmp_path / "streak"), resume=False,
        no_progress=True, peak_tflops=None, dropout=None, vocab_rows=None)
    assert commands.run_train(args) == 75
    err = capsys.readouterr().err
    assert "no checkpoint at this step (a non-finite streak); resume starts from step 2" in err
    assert "checkpoint saved" not in err


@pytest.mark.req("RUN-05")
def test_signal_during_the_last_step_ends_a_complete_run(data_dir, tmp_path, monkeypatch):
    """The last step's checkpoint is written whatever arrives meanwhile: the run is complete
    (exit 0 from the CLI), not interrupted."""
    _step_that(monkeypatch, signal_at=3)
    summary = run(small_model_cfg(), micro_train_cfg(), data_dir, tmp_path / "last",
                  total_steps=3)
    assert summary["signal"] == "SIGINT"  # it did arrive, during the last step
    assert summary["interrupted"] is None and summary["steps_done"] == 3
    ckpt = Checkpointer(tmp_path / "last", read_only=True)
    assert ckpt.latest_step() == 3
    ckpt.close()
