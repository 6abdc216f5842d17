"""First contact with the command line (issue 36): arguments are checked before JAX is
imported; bad input is one line, exit 2, and leaves nothing behind; no command prints the
CUDA plugin's driver lines (with the ``targets`` extra) or library warnings (Orbax) on a
CPU host; a resumed run's summary says what happened."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pythoncoder.cli import COMMANDS
from pythoncoder.cli import main as cli_main
from pythoncoder.utils.platforms import accelerator_nodes, is_driver_noise

REPO = Path(__file__).resolve().parents[2]
SAMPLE = {"task_id": "HumanEval/0", "completion": "    return False\n"}


def _env() -> dict[str, str]:
    """The test's environment as a user's shell would have it: on a CPU host, no
    ``JAX_PLATFORMS`` (the command line sets it), and this checkout importable."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if not accelerator_nodes():
        env.pop("JAX_PLATFORMS", None)
    return env


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ------------------------------------------------- arguments checked before JAX is imported
# per command: (--help, an unknown option, an invalid value); exit codes 0, 2, 2
PARSE_CASES = {
    "info": ["info", "--preset", "nope"],
    "prepare": ["prepare", "src", "--out", "d", "--seq-len", "0"],
    "train": ["train", "--micro-batch", "0"],
    "memory": ["memory", "--accum-steps", "0"],
    "generate": ["generate", "--prompt", "x", "--max-new-tokens", "0"],
    "eval": ["eval", "humaneval", "--samples", "s.jsonl", "--limit", "0"],
    "export": ["export", "--run", "r", "--out", "w", "--step", "-1"],
    "device-check": ["device-check", "--out", "d", "--budget-s", "0"],
}


def test_every_command_has_a_parse_case():
    assert set(PARSE_CASES) == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(PARSE_CASES))
def test_help_and_bad_arguments_answer_without_importing_jax(name, tmp_path):
    cases = [[name, "--help"], [name, "--preet", "tiny"], PARSE_CASES[name]]
    script = (
        "import contextlib, io, json, sys\n"
        "from pythoncoder.cli import main\n"
        "out = []\n"
        f"for argv in {cases!r}:\n"
        "    err = io.StringIO()\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(io.StringIO()), "
        "contextlib.redirect_stderr(err):\n"
        "            code = main(argv)\n"
        "    except SystemExit as e:\n"
        "        code = e.code\n"
        "    out.append([code, err.getvalue(), 'jax' in sys.modules])\n"
        "print(json.dumps(out))\n")
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    (help_code, _, jax_help), (typo, typo_err, jax_typo), (bad, bad_err, jax_bad) = (
        json.loads(run.stdout))
    assert (help_code, typo, bad) == (0, 2, 2), (typo_err, bad_err)
    assert not (jax_help or jax_typo or jax_bad), "JAX was imported to check arguments"
    for err in (typo_err, bad_err):
        assert len(err.strip().splitlines()) == 1 and err.startswith("pythoncoder"), err


# ------------------------------------------------------ bad input: one line, exit 2, no trace
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Prepared at the tiny preset's seq_len 256: ``ok`` fills a step of 4 rows, ``few``
    does not; ``src`` a small corpus, ``small_src`` one file with too few tokens for a row."""
    from pythoncoder.data.prepare import prepare
    from pythoncoder.testing.corpus import write_corpus

    root = tmp_path_factory.mktemp("first-contact")
    write_corpus(root / "src", 8, min_chars=1500)
    write_corpus(root / "few_src", 1, min_chars=1200, seed=7)
    write_corpus(root / "small_src", 1, min_chars=10, seed=3)
    kw = dict(seq_len=256, val_fraction=0.0, num_workers=1, progress=False)
    prepare([root / "src"], root / "ok", **kw)
    prepare([root / "few_src"], root / "few", **kw)
    rows = {d: json.loads((root / d / "manifest.json").read_text())["splits"]["train"]["rows"]
            for d in ("ok", "few")}
    assert rows["ok"] >= 4 > rows["few"] >= 1, rows
    (root / "samples.jsonl").write_text(json.dumps(SAMPLE) + "\n")
    return root


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = cli_main(argv)
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


# case -> argv, from the prepared data ``d`` and the test's empty directory ``t``
BAD_INPUTS = {
    "memory micro-batch 0": lambda d, t: ["memory", "--preset", "tiny", "--micro-batch", "0"],
    "memory accum-steps 0": lambda d, t: ["memory", "--preset", "tiny", "--accum-steps", "0"],
    "memory seq-len above the positions": lambda d, t: ["memory", "--preset", "tiny",
                                                        "--seq-len", "9000"],
    "prepare --out a file": lambda d, t: ["prepare", str(d / "src"), "--out", str(t / "afile"),
                                          "--workers", "1", "--no-progress"],
    "prepare --out inside a file": lambda d, t: ["prepare", str(d / "src"), "--out",
                                                 str(t / "afile" / "data"), "--no-progress"],
    "prepare too few tokens, new parents": lambda d, t: [
        "prepare", str(d / "small_src"), "--out", str(t / "new" / "data"), "--seq-len", "256",
        "--workers", "1", "--no-progress"],
    "prepare a missing source": lambda d, t: ["prepare", str(t / "nope"), "--out",
                                              str(t / "d"), "--no-progress"],
    "prepare val-fraction 2": lambda d, t: ["prepare", str(d / "src"), "--out", str(t / "d"),
                                            "--val-fraction", "2"],
    "train too few rows for a step": lambda d, t: ["train", "--data", str(d / "few"), "--out",
                                                   str(t / "run"), "--no-progress"],
    "train --resume without a checkpoint": lambda d, t: [
        "train", "--data", str(d / "ok"), "--out", str(t / "run"), "--resume", "--no-progress"],
    "train fresh into checkpoints": lambda d, t: ["train", "--data", str(d / "ok"), "--out",
                                                  str(t / "held"), "--no-progress"],
    "train --out inside a file": lambda d, t: ["train", "--data", str(d / "ok"), "--out",
                                               str(t / "afile" / "run"), "--no-progress"],
    "train steps 0": lambda d, t: ["train", "--data", str(d / "ok"), "--steps", "0"],
    "generate a missing run": lambda d, t: ["generate", "--run", str(t / "nope"), "--prompt",
                                            "x"],
    "generate top-k -1": lambda d, t: ["generate", "--prompt", "x", "--top-k", "-1"],
    "export --out a file": lambda d, t: ["export", "--run", str(t / "nope"), "--out",
                                         str(t / "afile")],
    "export a missing run": lambda d, t: ["export", "--run", str(t / "nope"), "--out",
                                          str(t / "w")],
    "eval no samples": lambda d, t: ["eval", "humaneval", "--samples", str(t / "empty.jsonl"),
                                     "--no-progress"],
    "eval --out inside a file": lambda d, t: ["eval", "humaneval", "--samples",
                                              str(d / "samples.jsonl"), "--out",
                                              str(t / "afile" / "r.jsonl"), "--no-progress"],
    "eval k 0": lambda d, t: ["eval", "humaneval", "--samples", str(d / "samples.jsonl"),
                              "--k", "0"],
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, data, tmp_path):
    (tmp_path / "afile").write_text("")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "held" / "checkpoints" / "40").mkdir(parents=True)  # a run with checkpoints
    argv = BAD_INPUTS[case](data, tmp_path)
    before, data_before = _tree(tmp_path), _tree(data)
    code, err = _cli(argv)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"pythoncoder {argv[0]}"), err
    assert "Traceback" not in err
    assert _tree(tmp_path) == before  # no run.lock, run directory, build folder, results
    assert _tree(data) == data_before


@pytest.mark.skipif(bool(accelerator_nodes()), reason="refuses only without an accelerator")
def test_device_check_refusal_leaves_no_output_directory(tmp_path):
    code, err = _cli(["device-check", "--out", str(tmp_path / "new" / "dc")])
    assert code == 2 and "no accelerator here" in err.splitlines()[-1], err
    assert _tree(tmp_path) == set()


# ------------------------------------------- no driver noise, no library warnings (stderr)
HAS_CUDA_PLUGIN = importlib.util.find_spec("jax_cuda12_plugin") is not None or (
    importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    if importlib.util.find_spec("jax_plugins") else False)
LIBRARY_WARNING = re.compile(r"^WARNING:absl:|\.py:\d+: \w*Warning: |^\s*warnings\.warn\(")
NOISE_SUBSTRINGS = ("cudart_stub", "absl::InitializeLog", "Unable to load cuDNN",
                    "Jax plugin configuration error", "InitGoogle", "TPU_ACCELERATOR_TYPE",
                    "TPU_WORKER_HOSTNAMES", "libtpu_init_utils")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A checkpointed run of a 2-layer tiny model (step 3), as `train` leaves one."""
    import jax.numpy as jnp
    from flax import nnx

    from pythoncoder.checkpoint import Checkpointer, write_run_files
    from pythoncoder.model import ModelConfig, build_model
    from pythoncoder.train.step import TrainState

    cfg = ModelConfig.preset("tiny", num_layers=2)
    run = tmp_path_factory.mktemp("first-contact-run") / "run"
    write_run_files(run, cfg, {}, {})
    ckpt = Checkpointer(run, async_save=False)
    state = TrainState(params=nnx.state(build_model(cfg, 1), nnx.Param), opt_state={},
                       step=jnp.asarray(3, jnp.int32), skipped=jnp.zeros((), jnp.int32))
    ckpt.save(3, state, {"global_step": 3})
    ckpt.close()
    return run


def _command(name: str, data: Path, run: Path, tmp: Path) -> tuple[list[str], int]:
    return {
        "info": (["info", "--preset", "tiny"], 0),
        "memory": (["memory", "--preset", "tiny", "--seq-len", "9000"], 2),  # JAX started
        "train": (["train", "--data", str(data / "few"), "--out", str(tmp / "r")], 2),
        "prepare": (["prepare", str(data / "src"), "--out", str(tmp / "p"), "--seq-len", "64",
                     "--workers", "1", "--no-progress"], 0),
        "eval --samples": (["eval", "humaneval", "--samples", str(data / "samples.jsonl"),
                            "--out", str(tmp / "res.jsonl"), "--limit", "1", "--workers", "1",
                            "--no-progress"], 0),
        "device-check --dry-run": (["device-check", "--dry-run", "--parts", "env", "--out",
                                    str(tmp / "dc")], 0),
        "memory --topology v6e-1": (["memory", "--preset", "tiny", "--micro-batch", "1",
                                     "--seq-len", "256", "--accum-steps", "1", "--topology",
                                     "v6e-1"], 0),
        # these restore a checkpoint: Orbax's warnings, with or without the CUDA plugin
        "generate": (["generate", "--run", str(run), "--prompt", "def f(x):",
                      "--max-new-tokens", "2"], 0),
        "export": (["export", "--run", str(run), "--out", str(tmp / "w")], 0),
        "eval --run": (["eval", "humaneval", "--run", str(run), "--limit", "1", "--n", "1",
                        "--max-new-tokens", "2", "--workers", "1", "--no-progress"], 0),
    }[name]


RESTORES = ("generate", "export", "eval --run")


@pytest.mark.parametrize("name", [
    "info", "memory", "train", "prepare", "eval --samples", "device-check --dry-run",
    *RESTORES, pytest.param("memory --topology v6e-1", marks=pytest.mark.slow)])  # 15 s
def test_no_driver_noise_or_library_warnings_on_stderr(name, data, run_dir, tmp_path):
    if name not in RESTORES and not HAS_CUDA_PLUGIN:
        pytest.skip("the driver lines come from the targets extra's CUDA plugin, which is "
                    "not installed (pip install -e '.[targets]')")
    if "v6e-1" in name and importlib.util.find_spec("libtpu") is None:
        pytest.skip("needs libtpu (pip install -e '.[targets]')")
    if accelerator_nodes():
        pytest.skip("a host with an accelerator: its driver is there")
    argv, want = _command(name, data, run_dir, tmp_path)
    run = subprocess.run([sys.executable, "-m", "pythoncoder", *argv], cwd=tmp_path,
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == want, run.stderr[-3000:]
    lines = run.stderr.splitlines()
    noise = [ln for ln in lines if is_driver_noise(ln) or any(s in ln for s in NOISE_SUBSTRINGS)]
    assert not noise, run.stderr
    warned = [ln for ln in lines if LIBRARY_WARNING.search(ln)]
    assert not warned, run.stderr
    assert "Traceback" not in run.stderr
    if want == 2:
        assert len(lines) == 1, run.stderr


def test_the_filter_is_needed_where_the_noise_test_runs():
    """The control: with the CUDA plugin, a bare JAX start does print the driver lines
    (else the test above proves nothing about them)."""
    if not HAS_CUDA_PLUGIN or accelerator_nodes():
        pytest.skip("needs the targets extra's CUDA plugin on a CPU host")
    env = {**_env(), "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                         capture_output=True, text=True, timeout=120)
    if not any(is_driver_noise(ln) for ln in run.stderr.splitlines()):
        pytest.skip("this CUDA plugin prints no driver lines on this host")


# ----------------------------------------------------------- the resumed run's summary line
def test_the_validation_line_covers_the_whole_run(tmp_path):
    from pythoncoder.train.commands import val_loss_line

    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": 0, "val_loss": 9.89}, {"step": 1, "loss": 9.9},
            {"step": 40, "val_loss": 7.7296}, {"step": 41, "loss": 7.6},
            {"step": 80, "val_loss": 6.5}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # resumed at 40, this process measured step 80 only: the run's first -> last
    assert val_loss_line([(80, 6.5)], metrics) == ("validation loss: 9.8900 (step 0) -> "
                                                   "6.5000 (step 80)")
    # a resume of a finished run measures nothing: the run's own line still
    assert val_loss_line([], metrics) == "validation loss: 9.8900 (step 0) -> 6.5000 (step 80)"
    # one measurement is printed once, not as "x (step 40) -> x (step 40)"
    metrics.write_text(json.dumps({"step": 40, "val_loss": 7.7296}) + "\n")
    assert val_loss_line([(40, 7.7296)], metrics) == "validation loss: 7.7296 (step 40)"
    # without a readable metrics file: this process's measurements
    assert val_loss_line([(0, 9.0), (2, 8.0)], tmp_path / "nope") == (
        "validation loss: 9.0000 (step 0) -> 8.0000 (step 2)")
    assert val_loss_line([], tmp_path / "nope") is None
