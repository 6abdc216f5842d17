"""``remat_policy="auto"``: the trainer compiles the step per policy and takes the least
recomputation whose compiled memory fits the device (``pythoncoder.train.remat``)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx

from pythoncoder.model import ModelConfig, abstract_model, build_model
from pythoncoder.model.config import ConfigError
from pythoncoder.train import remat as remat_mod
from pythoncoder.train.config import TrainConfig
from pythoncoder.train.memory import abstract_train_state
from pythoncoder.train.optimizer import make_optimizer
from pythoncoder.train.sharding import make_mesh, state_shardings


def _cfg(**kw) -> ModelConfig:
    base = dict(name="test", vocab_size=512, hidden_size=64, num_layers=2, head_dim=16,
                intermediate_size=128, compute_dtype="float32", remat_policy="auto",
                attn_block_size=64, loss_chunk_size=256, tpu_aligned=False)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def setup():
    cfg = _cfg()
    tcfg = TrainConfig(seq_len=128, micro_batch=4, accum_steps=1, warmup_steps=1)
    tx, _ = make_optimizer(tcfg, total_steps=10)
    mesh = make_mesh(1, 1, jax.devices()[:1])
    abstract = abstract_train_state(abstract_model(cfg.replace(remat_policy="none")), tx)
    shardings = state_shardings(abstract, mesh)
    sizes = {p: remat_mod.compiled_step_bytes(cfg.replace(remat_policy=p), tcfg, tx, abstract,
                                              shardings, mesh)
             for p in remat_mod.REMAT_ORDER}
    return cfg, tcfg, tx, abstract, shardings, mesh, sizes


def test_keeping_activations_costs_compiled_memory(setup):
    *_, sizes = setup
    assert sizes["none"] > sizes["full"] > 0
    assert sizes["dots"] >= sizes["full"]


@pytest.mark.parametrize("budget", ["huge", "none-1", "full", "tiny"])
def test_choose_takes_the_first_policy_that_fits(setup, budget):
    cfg, tcfg, tx, abstract, shardings, mesh, sizes = setup
    bytes_ = {"huge": 10 * sizes["none"], "none-1": sizes["none"] - 1, "full": sizes["full"],
              "tiny": 1}[budget]
    lines: list[str] = []
    got = remat_mod.choose_remat(cfg, tcfg, tx, abstract, shardings, mesh,
                                 budget_bytes=bytes_, log=lines.append)
    fitting = [p for p in remat_mod.REMAT_ORDER if sizes[p] <= bytes_]
    want = fitting[0] if fitting else "full"
    assert got["policy"] == want
    assert got["compiled_bytes"] == {p: sizes[p] for p in got["compiled_bytes"]}
    # it stops compiling at the first fit, and says why each rejected policy was rejected
    assert list(got["compiled_bytes"]) == list(
        remat_mod.REMAT_ORDER[:remat_mod.REMAT_ORDER.index(want) + 1] if fitting
        else remat_mod.REMAT_ORDER)
    # a CPU has no datasheet peaks: the chooser says it goes by memory alone
    assert got["chosen_by"] == "memory" and "no datasheet peaks" in lines[0]
    if budget == "huge":
        assert want == "none" and len(lines) == 2
    if budget == "none-1":
        assert want != "none" and "none needs" in lines[1] and "over" in lines[1]
    if budget == "tiny":
        assert "no policy fits" in lines[-1]


def test_a_policy_the_compiler_refuses_as_out_of_memory_is_skipped(setup, monkeypatch):
    """The TPU compiler raises RESOURCE_EXHAUSTED for a step larger than HBM: that policy
    is "does not fit", not a crash; other compile errors still propagate."""
    cfg, tcfg, tx, abstract, shardings, mesh, sizes = setup
    real = remat_mod.compile_step

    def refuse_none(model_cfg, *a, **kw):
        if model_cfg.remat_policy == "none":
            raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total "
                               "memory required for HLO temporaries (60.67G) exceeds "
                               "available HBM (31.25G).")
        return real(model_cfg, *a, **kw)

    monkeypatch.setattr(remat_mod, "compile_step", refuse_none)
    lines: list[str] = []
    got = remat_mod.choose_remat(cfg, tcfg, tx, abstract, shardings, mesh,
                                 budget_bytes=10 * sizes["none"], log=lines.append)
    assert got["policy"] == "dots" and got["compiled_bytes"]["none"] is None
    assert lines[1].startswith("remat auto: none does not fit: RESOURCE_EXHAUSTED")

    def broken(model_cfg, *a, **kw):
        raise RuntimeError("INTERNAL: something else")

    monkeypatch.setattr(remat_mod, "compile_step", broken)
    with pytest.raises(RuntimeError, match="INTERNAL"):
        remat_mod.choose_remat(cfg, tcfg, tx, abstract, shardings, mesh, budget_bytes=1)


BOUNDS = {"none": 0.265, "dots": 0.2, "full": 0.158}  # s/step, an H100-like ordering


@pytest.mark.parametrize("budget", ["huge", "dots", "full", "tiny"])
def test_with_peaks_the_fastest_bound_that_fits_is_taken(setup, monkeypatch, budget):
    """On a device with datasheet peaks every policy is compiled and, of those within the
    budget, the smallest roofline bound wins, even where keeping every activation fits
    (the H100 at 1b: ``none`` fits but moves more bytes than ``full``).  The bounds and
    sizes are fed in, so each budget has one right answer."""
    cfg, tcfg, tx, abstract, shardings, mesh, _ = setup
    sizes = {"none": 9 * 2**30, "dots": 6 * 2**30, "full": 4 * 2**30}
    monkeypatch.setattr(remat_mod, "compile_step",
                        lambda model_cfg, *a, **kw: _FakeCompiled(sizes[model_cfg.remat_policy],
                                                                  model_cfg.remat_policy))
    # with budget "dots", none (which does not fit) is made the fastest and full the
    # slowest: dots, the fastest that fits, wins
    bounds = dict(BOUNDS, none=0.1, full=0.3) if budget == "dots" else BOUNDS
    monkeypatch.setattr(remat_mod, "step_bound", lambda compiled, peaks: bounds[compiled.policy])
    budget_bytes = {"huge": 100 * 2**30, "dots": 6 * 2**30, "full": 5 * 2**30, "tiny": 1}[budget]
    lines: list[str] = []
    got = remat_mod.choose_remat(cfg, tcfg, tx, abstract, shardings, mesh,
                                 budget_bytes=budget_bytes, peaks={"peak_bf16_flops": 1.0,
                                                                   "hbm_bandwidth": 1.0},
                                 log=lines.append)
    fitting = [p for p in remat_mod.REMAT_ORDER if sizes[p] <= budget_bytes]
    want = min(fitting, key=lambda p: bounds[p]) if fitting else "full"
    assert got["policy"] == want == {"huge": "full", "dots": "dots", "full": "full",
                                     "tiny": "full"}[budget]
    assert got["chosen_by"] == ("bound" if fitting else "memory")
    # every policy compiled, each one's memory and bound logged and returned
    assert got["compiled_bytes"] == sizes
    assert got["bound_s"] == bounds
    for p in remat_mod.REMAT_ORDER:
        line = next(x for x in lines if x.startswith(f"remat auto: {p} needs"))
        assert f"bound {bounds[p]:.3f} s/step" in line


def test_the_bound_is_the_compiled_steps_roofline(setup):
    """``step_bound`` is max(FLOPs / peak, bytes / bandwidth) of the compiled step, as
    ``pythoncoder.hlo_cost`` counts them: a compute peak so low that FLOPs decide, then a
    bandwidth so low that bytes do."""
    from pythoncoder import hlo_cost

    cfg, tcfg, tx, abstract, shardings, mesh, _ = setup
    compiled = remat_mod.compile_step(cfg.replace(remat_policy="full"), tcfg, tx, abstract,
                                      shardings, mesh)
    cost = hlo_cost.analyse(compiled.as_text())
    assert cost["flops"] > 0 and cost["bytes accessed"] > 0
    slow_math = {"peak_bf16_flops": 1.0, "hbm_bandwidth": 1e30}
    slow_memory = {"peak_bf16_flops": 1e30, "hbm_bandwidth": 1.0}
    np.testing.assert_allclose(remat_mod.step_bound(compiled, slow_math), cost["flops"],
                               rtol=1e-9, atol=0)
    np.testing.assert_allclose(remat_mod.step_bound(compiled, slow_memory),
                               cost["bytes accessed"], rtol=1e-9, atol=0)


def test_live_accelerators_are_matched_to_their_datasheet():
    class Device:
        def __init__(self, kind):
            self.device_kind = kind

    assert remat_mod.device_peaks(Device("TPU v6 lite"))["hbm_bandwidth"] == 1.64e12
    assert remat_mod.device_peaks(Device("NVIDIA H100 80GB HBM3"))["peak_bf16_flops"] == 989.4e12
    assert remat_mod.device_peaks(Device("cpu")) is None
    assert remat_mod.device_peaks(Device("NVIDIA GeForce RTX 4090")) is None


def test_cpu_budget_is_the_hosts_available_memory_shared_by_the_mesh_devices():
    dev = jax.devices("cpu")[0]
    one, four = remat_mod.device_memory_bytes(dev), remat_mod.device_memory_bytes(dev, 4)
    with open("/proc/meminfo") as f:
        avail = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable"))
    # MemAvailable moves while the suite runs
    assert 0.8 * avail * 1024 < one < 1.25 * avail * 1024
    assert 0.8 * one / 4 < four < 1.25 * one / 4

    class Accelerator:
        platform = "gpu"

        def memory_stats(self):
            return {"bytes_limit": 80 * 2**30, "bytes_in_use": 0}

    assert remat_mod.device_memory_bytes(Accelerator(), 8) == 80 * 2**30


def test_auto_is_valid_builds_as_full_and_is_the_large_presets_default():
    assert ModelConfig.preset("1b").remat_policy == "auto"
    assert ModelConfig.preset("small").remat_policy == "auto"
    assert ModelConfig.preset("tiny").remat_policy == "none"
    assert _cfg().built_remat_policy == "full"
    assert _cfg(remat_policy="dots").built_remat_policy == "dots"
    with pytest.raises(ConfigError, match="remat_policy"):
        _cfg(remat_policy="sometimes")
    # a model built with "auto" computes exactly what "full" computes
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, 512)
    a = build_model(_cfg(), seed=3)(tokens)
    b = build_model(_cfg(remat_policy="full"), seed=3)(tokens)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=0)


def test_train_resolves_auto_records_it_and_uses_it(tmp_path, monkeypatch):
    """The loop picks by the device budget, trains with the chosen policy's graph, and
    records the choice in run.json while the model config keeps ``auto`` (resume)."""
    from pythoncoder.data.prepare import prepare
    from pythoncoder.train import loop
    from pythoncoder.train import run as run_setup  # where the run's step is built

    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        body = "\n".join(f"    x{j} = {i} * {j} + len('{i}{j}')" for j in range(12))
        (src / f"mod_{i}.py").write_text(f"def function_{i}(a, b):\n{body}\n    return a\n")
    prepare([str(src)], tmp_path / "data", seq_len=16, val_fraction=0.1, num_workers=1,
            progress=False)
    cfg = _cfg(vocab_size=151_808, loss_chunk_size=64, attn_block_size=16)
    tcfg = TrainConfig(seq_len=16, micro_batch=2, accum_steps=1, epochs=1, warmup_steps=1,
                       steps_per_checkpoint=3, eval_batches=1)
    mesh = make_mesh(1, 1, jax.devices()[:1])
    tx, _ = make_optimizer(tcfg, total_steps=10)
    abstract = abstract_train_state(abstract_model(cfg.replace(remat_policy="none")), tx)
    shardings = state_shardings(abstract, mesh)
    none_bytes = remat_mod.compiled_step_bytes(cfg.replace(remat_policy="none"), tcfg, tx,
                                               abstract, shardings, mesh)
    # a device whose 90% holds a byte less than "none" needs (dots and full need less)
    limit = int((none_bytes - 0.5) / remat_mod.HEADROOM)
    monkeypatch.setattr(remat_mod, "device_memory_bytes", lambda d, sharing=1: limit)
    # and datasheet peaks, so the chooser goes by the roofline bound
    peaks = {"peak_bf16_flops": 1e12, "hbm_bandwidth": 1e11}
    monkeypatch.setattr(remat_mod, "device_peaks", lambda device: peaks)
    compiled_for, jitted = [], []

    def spy(into, real):
        def make(graphdef, *a, **kw):
            into.append(nnx.merge(graphdef, nnx.state(abstract_model(cfg), nnx.Param)).cfg)
            return real(graphdef, *a, **kw)
        return make

    from pythoncoder.train import memory

    monkeypatch.setattr(memory, "make_train_step", spy(compiled_for, memory.make_train_step))
    monkeypatch.setattr(run_setup, "make_train_step", spy(jitted, run_setup.make_train_step))
    lines: list[str] = []
    out = loop.train(cfg, tcfg, tmp_path / "data", tmp_path / "run", total_steps=3,
                     mesh=mesh, progress=False, log=lines.append)
    chosen = out["remat"]["policy"]
    assert chosen in ("dots", "full") and out["remat"]["compiled_bytes"]["none"] == none_bytes
    assert out["remat"]["compiled_bytes"]["dots"] <= out["remat"]["budget_bytes"] < none_bytes
    # every policy compiled once, the smallest bound of those that fit taken; the loop
    # runs that executable
    assert [c.remat_policy for c in compiled_for] == list(remat_mod.REMAT_ORDER)
    assert jitted == []
    bounds = out["remat"]["bound_s"]
    assert set(bounds) == set(remat_mod.REMAT_ORDER) and out["remat"]["chosen_by"] == "bound"
    assert chosen == min(("dots", "full"), key=lambda p: (bounds[p],
                                                          remat_mod.REMAT_ORDER.index(p)))
    assert any(line.startswith("remat auto: none needs") and "bound" in line for line in lines)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["model"]["remat_policy"] == "auto" and info["remat"]["policy"] == chosen
    assert info["remat"]["bound_s"] == bounds and info["remat"]["chosen_by"] == "bound"
    assert "compiled" not in info["remat"]
    # the same run with the policy named: the jitted step, the same losses
    same = loop.train(cfg.replace(remat_policy=chosen), tcfg, tmp_path / "data",
                      tmp_path / "named", total_steps=3, mesh=mesh, progress=False,
                      log=lines.append)
    assert [c.remat_policy for c in jitted] == [chosen]
    assert np.isfinite(out["losses"]).all()
    np.testing.assert_allclose(out["losses"], same["losses"], rtol=1e-6, atol=0)


def test_memory_cli_auto_reports_each_policy_it_compiled(capsys, monkeypatch):
    """``pythoncoder memory --remat auto``: stops at the first policy within the budget;
    a policy the (TPU) compiler refuses as out of memory is reported and skipped."""
    from pythoncoder.cli import main as cli_main

    args = ["memory", "--preset", "tiny", "--seq-len", "64", "--micro-batch", "1",
            "--accum-steps", "1", "--remat", "auto", "--json"]
    assert cli_main(args) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["remat_policy"] == "none" and report["remat_auto"]["chosen"] == "none"
    assert list(report["remat_auto"]["compiled_bytes"]) == ["none"]
    assert "remat auto: none needs" in out.err and "fits" in out.err

    real = remat_mod.compile_step

    def hbm(model_cfg, *a, **kw):
        if model_cfg.remat_policy != "full":
            raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM")
        return real(model_cfg, *a, **kw)

    monkeypatch.setattr(remat_mod, "compile_step", hbm)
    assert cli_main(args) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["remat_auto"]["compiled_bytes"] == {
        "none": None, "dots": None, "full": report["total_bytes"]}
    assert out.err.count("does not fit: RESOURCE_EXHAUSTED") == 2

    # every policy refused: no report, exit 1
    monkeypatch.setattr(remat_mod, "compile_step", lambda *a, **kw: hbm(
        ModelConfig.preset("tiny", remat_policy="none")))
    assert cli_main(args) == 1
    assert capsys.readouterr().err.count("does not fit: RESOURCE_EXHAUSTED") == 3


class _FakeCompiled:
    """A compiled step whose memory analysis reports a chosen total (all temporaries)."""

    def __init__(self, total: int, policy: str | None = None):
        self.total, self.policy = total, policy

    def memory_analysis(self):
        class Mem:
            argument_size_in_bytes = output_size_in_bytes = alias_size_in_bytes = 0
            temp_size_in_bytes = self.total
        return Mem()

    def as_text(self) -> str:
        return ""


SIZES = {"none": 9 * 2**30, "dots": 6 * 2**30, "full": 4 * 2**30}


@pytest.mark.parametrize("device_gib", [20, 9, 7, 5, 4, 3])
def test_memory_and_train_choose_the_same_policy_for_the_same_device(
        setup, capsys, monkeypatch, device_gib):
    """``pythoncoder memory --remat auto`` and train's auto (``choose_remat`` on the run's
    mesh) make the same choice, having compiled the same policies, for the same device
    memory: a fake compile reports the chosen sizes to both (each module's compile entry
    point patched, so a chooser of its own in either would be fed the same sizes)."""
    from pythoncoder.cli import main as cli_main
    from pythoncoder.train import memory

    cfg, tcfg, tx, abstract, shardings, mesh, _ = setup

    def fake(model_cfg, *a, **kw):
        return _FakeCompiled(SIZES[model_cfg.remat_policy])

    monkeypatch.setattr(remat_mod, "compile_step", fake)
    monkeypatch.setattr(memory, "compile_train_step", fake)
    monkeypatch.setattr(remat_mod, "device_memory_bytes",
                        lambda d, sharing=1: device_gib * 2**30)
    train = remat_mod.choose_remat(cfg, tcfg, tx, abstract, shardings, mesh,
                                   log=lambda *_: None)
    assert cli_main(["memory", "--preset", "tiny", "--seq-len", "64", "--micro-batch", "1",
                     "--accum-steps", "1", "--remat", "auto", "--json"]) == 0
    mem = json.loads(capsys.readouterr().out)
    assert mem["remat_auto"]["chosen"] == mem["remat_policy"] == train["policy"]
    assert mem["remat_auto"]["budget_bytes"] == train["budget_bytes"]
    assert mem["remat_auto"]["compiled_bytes"] == train["compiled_bytes"]
    # and that choice is the first policy within 90% of the device (else full)
    fitting = [p for p in remat_mod.REMAT_ORDER
               if SIZES[p] <= int(remat_mod.HEADROOM * device_gib * 2**30)]
    assert train["policy"] == (fitting[0] if fitting else "full")


_TWO_PROCESS_SCRIPT = r'''
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address="127.0.0.1:" + sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
from pythoncoder.model import ModelConfig, abstract_model
from pythoncoder.train import remat as R
from pythoncoder.train.config import TrainConfig
from pythoncoder.train.memory import abstract_train_state
from pythoncoder.train.optimizer import make_optimizer
from pythoncoder.train.sharding import make_mesh, state_shardings

cfg = ModelConfig(name="t", vocab_size=512, hidden_size=64, num_layers=2, head_dim=16,
                  intermediate_size=128, compute_dtype="float32", remat_policy="auto",
                  attn_block_size=64, loss_chunk_size=256, tpu_aligned=False)
tcfg = TrainConfig(seq_len=128, micro_batch=4, accum_steps=1, warmup_steps=1)
tx, _ = make_optimizer(tcfg, total_steps=10)
mesh = make_mesh(1, jax.device_count(), jax.devices())
abstract = abstract_train_state(abstract_model(cfg.replace(remat_policy="none")), tx)
shardings = state_shardings(abstract, mesh)
none = R.compiled_step_bytes(cfg.replace(remat_policy="none"), tcfg, tx, abstract, shardings,
                             mesh)
# process 0 has room for everything; process 1 not for "none" (budget 0.9 x none)
R.device_memory_bytes = lambda d, sharing=1: 10 * none if jax.process_index() == 0 else none
got = R.choose_remat(cfg, tcfg, tx, abstract, shardings, mesh, log=lambda *_: None)
print(json.dumps({"policy": got["policy"], "budget": got["budget_bytes"], "none": none}))
'''


@pytest.mark.slow  # two JAX processes compiling the step (~29 s)
def test_processes_agree_on_the_policy(tmp_path):
    """Every process must compile the same program: with two processes whose devices
    report different memory, both take the smallest budget and so the same policy."""
    import os
    import socket
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(_TWO_PROCESS_SCRIPT)
    with socket.socket() as sock:  # a free port for the coordinator
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, str(script), port, str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert outs[0]["policy"] == outs[1]["policy"] != "none"
    assert outs[0]["budget"] == outs[1]["budget"] == int(0.9 * outs[1]["none"])
