"""``pythoncoder device-check --dry-run``: the device check's own command on the CPU backend
(tiny preset), each part in its own process; the reports' structure, what is skipped and
why, and that the figures in the JSON are what they claim to be.  (The ``kernels`` part
runs ``test_kernels_on_device.py``, which this suite runs anyway; its report is checked
from pytest output below.)"""

import json
import math

import pytest

from pythoncoder.cli import main
from pythoncoder.devicecheck import PARTS, markdown, parse_pytest
from pythoncoder.model import ModelConfig
from pythoncoder.train.accounting import model_flops_per_token

PEAK_TFLOPS = 0.001  # a stated peak, so MFU is defined on the CPU
SEQ, BATCH, STEPS, ACCUM = 32, 2, 2, 2


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("devicecheck")
    rc = main(["device-check", "--dry-run", "--out", str(out), "--seq-len", str(SEQ),
               "--micro-batch", str(BATCH), "--steps", str(STEPS), "--accum-steps", str(ACCUM),
               "--peak-tflops", str(PEAK_TFLOPS),
               "--parts", "env,train-reference,train-cudnn,decode"])
    report = json.loads((out / "device-check.json").read_text())
    return rc, report, (out / "device-check.md").read_text()


def test_dry_run_reports_every_part_and_says_what_it_skipped(dry_run):
    rc, report, md = dry_run
    assert rc == 0, json.dumps(report, indent=1)[:4000]
    assert report["dry_run"] is True and report["backend"] == "cpu"
    # the kernels part is tests/devicecheck/test_kernels_on_device.py, run by this suite
    assert list(report["parts"]) == ["env", "train-reference", "train-cudnn", "decode"]
    assert set(report["parts"]) <= set(PARTS)
    for name, part in report["parts"].items():
        assert part["status"] in ("ok", "skipped"), (name, part)
        assert part["budget_s"] > 0
    cudnn = report["parts"]["train-cudnn"]
    assert cudnn["status"] == "skipped" and "NVIDIA GPU" in cudnn["reason"]
    # the markdown says the same: dry run, the skip and its reason, the tables
    assert "DRY RUN" in md and "| train-cudnn | skipped |" in md and cudnn["reason"] in md
    assert "## Train step" in md and "## Decode" in md


def test_train_figures_follow_from_the_measured_times(dry_run):
    _, report, md = dry_run
    r = report["parts"]["train-reference"]
    assert r["status"] == "ok" and r["finite"] and math.isfinite(r["loss"])
    assert (r["micro_batch"], r["seq_len"], r["preset"]) == (BATCH, SEQ, "tiny")
    assert len(r["step_times_s"]) == STEPS and r["step_s"] == min(r["step_times_s"])
    assert r["accum_steps"] == ACCUM and r["tokens_per_step"] == ACCUM * BATCH * SEQ
    assert r["tokens_per_s"] == pytest.approx(ACCUM * BATCH * SEQ / r["step_s"], rel=1e-12)
    # a CPU has no datasheet peaks: no roofline bound beside the time, and the table says so
    assert r["roofline"] is None and r["step_over_bound"] is None
    fpt = model_flops_per_token(ModelConfig.preset("tiny"), SEQ)
    assert r["flops_per_token"] == pytest.approx(fpt, rel=1e-12)
    assert r["peak_flops"] == pytest.approx(PEAK_TFLOPS * 1e12, rel=1e-12)
    assert r["mfu"] == pytest.approx(r["tokens_per_s"] * fpt / r["peak_flops"], rel=1e-12)
    assert f"{r['step_s']:.4f}" in md and f"{100 * r['mfu']:.1f}%" in md


def test_decode_figures_follow_from_the_measured_times(dry_run):
    _, report, _ = dry_run
    d = report["parts"]["decode"]
    assert d["status"] == "ok" and [r["batch"] for r in d["runs"]] == [1, 8]
    for r in d["runs"]:
        b = r["batch"]
        # the engine's rate: tokens after each row's first, over the decode time
        assert r["decode_tokens_per_s"] == pytest.approx(
            (r["generated_tokens"] - b) / r["decode_seconds"], rel=1e-9)
        assert r["roofline_tokens_per_s"] == pytest.approx(
            b * d["copy_bandwidth_bytes_per_s"] / r["step_bytes"], rel=1e-12)
        assert r["roofline_ratio"] == pytest.approx(
            r["decode_tokens_per_s"] / r["roofline_tokens_per_s"], rel=1e-12)
    # more rows read the same weights once per step: the roofline grows with B
    assert d["runs"][1]["roofline_tokens_per_s"] > d["runs"][0]["roofline_tokens_per_s"]


def test_without_an_accelerator_and_without_dry_run_it_is_a_usage_error(tmp_path, capsys):
    rc = main(["device-check", "--out", str(tmp_path), "--parts", "env"])
    assert rc == 2
    assert "no accelerator" in capsys.readouterr().err


def test_a_failed_or_timed_out_part_is_reported_not_lost():
    """The report of a run where one part broke: the others stay, the broken one shows
    its status and log tail, and pytest's partial output is still counted."""
    log = ("tests/devicecheck/test_kernels_on_device.py::test_a[0.2] PASSED   [ 20%]\n"
           "conformance/test_diff_kernel.py::test_b[pallas] FAILED   [ 40%]\n"
           "SKIPPED [1] tests/x.py:3: needs a GPU\n")
    parsed = parse_pytest(log)
    assert parsed["counts"] == {"passed": 1, "failed": 1}
    assert parsed["failed"] == ["conformance/test_diff_kernel.py::test_b[pallas]"]
    assert parsed["skip_reasons"] == ["tests/x.py:3: needs a GPU"]
    report = {"dry_run": False, "budget_s": 480, "seconds": 100.0, "backend": "gpu",
              "device_kind": "NVIDIA H100 80GB HBM3",
              "parts": {"kernels": {"status": "timeout", "seconds": 150.0,
                                    "reason": "stopped after 150 s", "files": ["a.py"],
                                    **parsed},
                        "train-pallas": {"status": "error", "seconds": 3.0,
                                         "error": "RuntimeError: boom"}}}
    md = markdown(report)
    assert "| kernels | timeout |" in md and "stopped after 150 s" in md
    assert "| train-pallas | error |" in md and "RuntimeError: boom" in md
    assert "FAILED conformance/test_diff_kernel.py::test_b[pallas]" in md


def test_the_train_table_sets_the_step_beside_its_roofline_bound():
    """On a device the train part carries the roofline of the executable it timed; the
    table shows the bound, which limit it is, and the measured step over it."""
    roofline = {"flops": 1.2e15, "hbm_bytes": 2.4e12, "compute_s": 1.36, "memory_s": 1.47,
                "bound_s": 1.47, "bound": "memory"}
    train = {"status": "ok", "seconds": 60.0, "attention": "pallas", "accum_steps": 8,
             "micro_batch": 8, "seq_len": 2048, "step_s": 2.205, "tokens_per_s": 59443.0,
             "model_flops_per_s": 4.1e14, "mfu": 0.447, "peak_flops": 918e12,
             "roofline": roofline, "step_over_bound": 2.205 / 1.47}
    report = {"dry_run": False, "budget_s": 480, "seconds": 100.0, "backend": "tpu",
              "device_kind": "TPU v6 lite", "parts": {"train-pallas": train}}
    md = markdown(report)
    assert "| pallas | ok | 8 x 8 x 2048 | 2.2050 | 1.4700 (memory) | 1.50 |" in md


def test_the_train_part_bounds_the_executable_it_timed(monkeypatch):
    """With datasheet peaks (faked here: a CPU has none) the train part reports the roofline
    of the compiled step it timed, and the time over that bound."""
    import argparse

    from pythoncoder import devicecheck
    from pythoncoder.train import remat

    peaks = {"peak_bf16_flops": 1e9, "hbm_bandwidth": 1e8}
    monkeypatch.setattr(remat, "device_peaks", lambda device: peaks)
    args = argparse.Namespace(dry_run=True, preset=None, micro_batch=BATCH, seq_len=SEQ,
                              steps=STEPS, remat="full", peak_tflops=PEAK_TFLOPS,
                              accum_steps=ACCUM)
    r = devicecheck.part_train(args, "reference")
    roof = r["roofline"]
    assert roof["bound_s"] == max(roof["flops"] / 1e9, roof["hbm_bytes"] / 1e8) > 0
    assert roof["bound"] == ("compute" if roof["compute_s"] >= roof["memory_s"] else "memory")
    assert r["step_over_bound"] == pytest.approx(r["step_s"] / roof["bound_s"], rel=1e-12)
