"""``pythoncoder device-check``: one command that measures what needs a GPU or TPU.

On a machine with an accelerator (its preinstalled jax, no network) it runs, each part in
its own process with its own time budget (a crash, an out-of-memory or a timeout loses
that part only), within 8 minutes by default:

* ``env``: backend, device kind, stack versions.
* ``kernels``: the Pallas kernels compiled for the device against the float64 reference,
  forward and backward (``tests/devicecheck/test_kernels_on_device.py``, with a negative
  control), then the DIFF-06 / DIFF-06a conformance suites with the device as JAX's
  backend (their Pallas cases interpret, at tiles of 8), all with pytest.
* ``train-pallas``, ``train-reference``, ``train-cudnn``: the train step's time, tokens/s
  and MFU (``pythoncoder.train.accounting.model_flops_per_token`` over the datasheet peak) beside
  the roofline bound of the same executable (``--accum-steps 8``: the design's step), with the
  fused kernel, with the reference attention, and with the attention replaced by the
  unfloored map as four cuDNN flash calls (not the model: the speed limit a fused kernel
  could reach).
* ``decode``: greedy decode tokens/s at B=1 and B=8 against the bandwidth roofline
  (``accounting.decode_step_bytes`` at the measured copy bandwidth, as ``nox -s benchmarks``).

It writes ``device-check.json`` and ``device-check.md`` to ``--out`` (and each part's log
under ``logs/``).  ``--dry-run`` runs the same parts on the CPU backend with the tiny
preset, skips what needs a device and says so in both reports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pythoncoder.utils.argtypes import UsageError, positive_float, positive_int

TRAIN_IMPLS = ("pallas", "reference", "cudnn")
PARTS = ("env", "kernels", *(f"train-{i}" for i in TRAIN_IMPLS), "decode")
# Seconds per part; they sum to the default total of 8 minutes.  A part gets its own
# budget or what is left of the total, whichever is less.
BUDGET_S = {"env": 30, "kernels": 150, "train-pallas": 75, "train-reference": 75,
            "train-cudnn": 60, "decode": 90}
TOTAL_S = sum(BUDGET_S.values())
KERNEL_TESTS = ("tests/devicecheck/test_kernels_on_device.py",
                "conformance/test_diff_kernel.py", "conformance/test_diff_decode_kernel.py")
REPORT_JSON, REPORT_MD = "device-check.json", "device-check.md"


# ------------------------------------------------------------------ the parts (child side)
def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Sizes of the measured runs: the 1b design shape on a device, tiny ones dry."""
    if args.dry_run:
        return dict(preset=args.preset or "tiny", micro_batch=args.micro_batch or 2,
                    seq_len=args.seq_len or 64, steps=args.steps or 2, prompt=16, new=8)
    return dict(preset=args.preset or "1b", micro_batch=args.micro_batch or 8,
                seq_len=args.seq_len or 2048, steps=args.steps or 4, prompt=128, new=64)


def part_env(args: argparse.Namespace) -> dict[str, Any]:
    import jax

    from pythoncoder.utils.versions import stack_versions

    dev = jax.devices()[0]
    return {"status": "ok", "backend": jax.default_backend(), "device_kind": dev.device_kind,
            "device_count": jax.device_count(), "versions": stack_versions()}


def cudnn_unfloored_map(q, k, v, lam, q_slots, k_slots, q_seg, k_seg, *, gqa_ratio: int,
                        block: int):
    """The differential map WITHOUT the floor (and without segment masks) as four cuDNN
    flash-attention calls: (softmax(q1 k1) - lam softmax(q2 k2)) v, each value half on its
    own.  Causal, GQA.  Not the model: the speed a fused kernel could reach."""
    import jax
    import jax.numpy as jnp

    del q_slots, k_slots, q_seg, k_seg, block
    B, T, H2, D = q.shape
    G = v.shape[2]
    qs = q.reshape(B, T, G * gqa_ratio, 2, D)  # sub-head 2i+j of head i = g * ratio + r
    ks = k.reshape(B, k.shape[1], G, 2, D)

    def flash(j, vh):
        return jax.nn.dot_product_attention(qs[..., j, :], ks[..., j, :], vh, is_causal=True,
                                            implementation="cudnn")

    halves = [v[..., :D], v[..., D:]]
    out = [flash(0, vh) - lam.astype(vh.dtype) * flash(1, vh) for vh in halves]
    return jnp.concatenate(out, axis=-1).astype(v.dtype)


def cudnn_self_attention(q, k, v, lam, segment_ids_BT, *, gqa_ratio: int, block: int):
    """``cudnn_unfloored_map`` with the registry's self-attention signature."""
    return cudnn_unfloored_map(q, k, v, lam, None, None, None, None, gqa_ratio=gqa_ratio,
                               block=block)


def part_train(args: argparse.Namespace, impl: str) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from pythoncoder.model import ModelConfig, attention, build_model
    from pythoncoder.train.config import TrainConfig
    from pythoncoder.train.optimizer import make_optimizer
    from pythoncoder.train.step import init_train_state, make_train_step, split_model

    s = _settings(args)
    backend = jax.default_backend()
    if impl == "cudnn":
        if backend != "gpu":
            return {"status": "skipped", "reason": f"cuDNN flash attention needs an NVIDIA "
                    f"GPU (backend here: {backend})"}
    cfg = ModelConfig.preset(s["preset"], remat_policy=args.remat,
                             attention_impl="pallas" if impl == "pallas" else "reference",
                             compute_dtype="auto" if backend == "cpu" else "bfloat16")
    B, T = s["micro_batch"], s["seq_len"]
    A = args.accum_steps
    tcfg = TrainConfig(seq_len=T, micro_batch=B, accum_steps=A, warmup_steps=0)
    model = build_model(cfg, seed=0)
    tx, _ = make_optimizer(tcfg, total_steps=1000, warmup_steps=0)
    graphdef, _ = split_model(model)
    state = init_train_state(model, tx)
    del model
    step = jax.jit(make_train_step(graphdef, tx, mtp_weight=cfg.mtp_weight), donate_argnums=0)
    rows = np.random.default_rng(0).integers(0, min(cfg.vocab_size, 151_643), (A, B, T + 1))
    batch = {"tokens": jnp.asarray(rows, jnp.int32)}
    key = jax.random.PRNGKey(0)
    # the cuDNN probe runs in the reference's place while the step is traced
    probe = (attention.substituted("reference", cudnn_self_attention) if impl == "cudnn"
             else contextlib.nullcontext())
    t0 = time.perf_counter()
    with probe:
        compiled = step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, batch, key)  # the first run: allocation, autotuning
    jax.block_until_ready(m["loss"])
    times = []
    for _ in range(s["steps"]):
        t0 = time.perf_counter()
        state, m = compiled(state, batch, key)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t0)
    step_s = min(times)
    tokens = A * B * T
    # the roofline bound of this very executable (what `pythoncoder memory --topology`
    # reports for the chip without it), beside the time it took
    from pythoncoder.train.remat import device_peaks, step_roofline

    peaks = device_peaks(jax.devices()[0])
    roofline = step_roofline(compiled, peaks) if peaks else None
    from pythoncoder.train.accounting import model_flops_per_token

    fpt = model_flops_per_token(cfg, T)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else (
        peaks["peak_bf16_flops"] if peaks else None)
    tps = tokens / step_s
    stats = jax.devices()[0].memory_stats() or {}
    out = {"status": "ok", "attention": impl, "preset": cfg.name, "micro_batch": B,
           "seq_len": T, "accum_steps": A, "remat": args.remat,
           "compute_dtype": jnp.dtype(cfg.dtype()).name, "compile_s": compile_s,
           "step_times_s": times, "step_s": step_s, "tokens_per_step": tokens,
           "tokens_per_s": tps, "flops_per_token": fpt, "model_flops_per_s": tps * fpt,
           "peak_flops": peak, "mfu": tps * fpt / peak if peak else None,
           "loss": float(m["loss"]), "finite": bool(m["finite"]),
           "peak_memory_bytes": stats.get("peak_bytes_in_use"),
           "roofline": roofline,
           "step_over_bound": step_s / roofline["bound_s"] if roofline else None}
    if impl == "cudnn":
        out["note"] = "unfloored map, no segment masks: a speed limit, not the model"
    if backend == "cpu" and impl == "pallas":
        out["note"] = "the Pallas kernel interprets on CPU: not a speed figure"
    return out


def part_decode(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import numpy as np

    from pythoncoder.infer.engine import Engine
    from pythoncoder.model import ModelConfig, build_model
    from pythoncoder.train.accounting import decode_step_bytes
    from pythoncoder.utils import perf

    s = _settings(args)
    cfg = ModelConfig.preset(s["preset"])
    engine = Engine(build_model(cfg, seed=0))
    small = jax.default_backend() == "cpu"
    bandwidth = perf.measure_copy_bandwidth(nbytes=(32 << 20) if small else None)
    rng = np.random.default_rng(0)
    context = s["prompt"] + s["new"] / 2  # mean live context over the generation
    runs = []
    for batch in (1, 8):
        prompts = [rng.integers(0, min(cfg.vocab_size, 151_643), s["prompt"]).tolist()
                   for _ in range(batch)]

        def run(prompts=prompts):
            return engine.generate(prompts, max_new_tokens=s["new"], eos_id=None)

        run()  # compile
        best = max((run() for _ in range(2)),
                   key=lambda r: r.stats["decode_tokens_per_second"])
        step_bytes = decode_step_bytes(engine.params, cfg, batch, context,
                                            with_mtp=False)
        roofline = batch * bandwidth / step_bytes
        tps = best.stats["decode_tokens_per_second"]
        runs.append({"batch": batch, "prompt_tokens": s["prompt"], "new_tokens": s["new"],
                     "generated_tokens": best.stats["generated_tokens"],
                     "decode_seconds": best.stats["decode_seconds"],
                     "decode_tokens_per_s": tps, "step_bytes": step_bytes,
                     "roofline_tokens_per_s": roofline, "roofline_ratio": tps / roofline})
    return {"status": "ok", "preset": cfg.name,
            "attention": cfg.resolved_attention_impl(jax.default_backend()),
            "copy_bandwidth_bytes_per_s": bandwidth, "runs": runs}


def run_part(args: argparse.Namespace) -> int:
    """Child process: one part, its result as JSON to ``--part-out``."""
    name = args.part
    try:
        if name == "env":
            result = part_env(args)
        elif name == "decode":
            result = part_decode(args)
        else:
            result = part_train(args, name.removeprefix("train-"))
    except Exception as e:  # the report says what failed; the parent goes on
        result = {"status": "error", "error": f"{type(e).__name__}: {str(e)[:2000]}"}
    Path(args.part_out).write_text(json.dumps(result, indent=1, default=float))
    return 0 if result["status"] in ("ok", "skipped") else 1


# ------------------------------------------------------------------ the parent
def repo_root() -> Path | None:
    """The checkout this package runs from (an editable install), if its tests are there."""
    root = Path(__file__).resolve().parent.parent
    return root if all((root / t).is_file() for t in KERNEL_TESTS) else None


PYTEST_LINE = re.compile(r"^(\S+\.py::\S+?)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
PYTEST_SKIP = re.compile(r"^SKIPPED \[\d+\] (.+)$")


def parse_pytest(log: str) -> dict[str, Any]:
    """Outcome counts, failed test ids and skip reasons from ``pytest -v -rs`` output
    (as far as it got, if it was stopped)."""
    counts: dict[str, int] = {}
    failed = []
    for line in log.splitlines():
        m = PYTEST_LINE.match(line)
        if m:
            counts[m[2].lower()] = counts.get(m[2].lower(), 0) + 1
            if m[2] in ("FAILED", "ERROR"):
                failed.append(m[1])
    skips = sorted({m[1] for m in map(PYTEST_SKIP.match, log.splitlines()) if m})
    return {"counts": counts, "failed": failed, "skip_reasons": skips}


def _child_env(dry_run: bool) -> dict[str, str]:
    env = dict(os.environ)
    if dry_run:
        env["JAX_PLATFORMS"] = "cpu"
    return env


def _run(cmd: list[str], log: Path, timeout: float, env: dict[str, str], cwd=None):
    """Run ``cmd`` with its output in ``log``; (returncode or None on timeout, seconds)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the part and anything it started
            proc.wait()
            rc = None
    return rc, time.perf_counter() - t0


def _tail(log: Path, n: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def check_kernels(args, out: Path, timeout: float, env) -> dict[str, Any]:
    root = repo_root()
    if root is None:
        return {"status": "skipped", "reason": "the kernel tests are not next to the package "
                "(install it with `pip install --no-deps -e .` from a checkout)"}
    files = list(KERNEL_TESTS[:1]) if args.dry_run else list(KERNEL_TESTS)
    log = out / "logs" / "kernels.log"
    rc, secs = _run([sys.executable, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider",
                     *files], log, timeout, env, cwd=root)
    result = {"files": files, "seconds": secs, **parse_pytest(log.read_text(errors="replace"))}
    if args.dry_run:
        result["not_run"] = ("the DIFF-06 / DIFF-06a conformance suites (the CPU test "
                             "command already runs them, in interpret mode)")
    if rc is None:
        return {**result, "status": "timeout", "reason": f"stopped after {timeout:.0f} s",
                "log_tail": _tail(log)}
    if rc == 0:
        return {**result, "status": "ok"}
    return {**result, "status": "failed", "log_tail": _tail(log)}


def check_part(name: str, args, out: Path, timeout: float, env) -> dict[str, Any]:
    part_out = out / "parts" / f"{name}.json"
    part_out.unlink(missing_ok=True)
    log = out / "logs" / f"{name}.log"
    cmd = [sys.executable, "-m", "pythoncoder.devicecheck", "--part", name,
           "--part-out", str(part_out), "--remat", args.remat,
           "--accum-steps", str(args.accum_steps)]
    for flag, value in (("--preset", args.preset), ("--micro-batch", args.micro_batch),
                        ("--seq-len", args.seq_len), ("--steps", args.steps),
                        ("--peak-tflops", args.peak_tflops)):
        if value:
            cmd += [flag, str(value)]
    if args.dry_run:
        cmd.append("--dry-run")
    rc, secs = _run(cmd, log, timeout, env)
    if part_out.is_file():
        result = json.loads(part_out.read_text())
    elif rc is None:
        result = {"status": "timeout", "reason": f"stopped after {timeout:.0f} s"}
    else:
        result = {"status": "error", "error": f"exit code {rc}, no result"}
    if result["status"] not in ("ok", "skipped"):
        result["log_tail"] = _tail(log)
    result["seconds"] = secs
    return result


def device_check(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    for sub in ("logs", "parts"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    env = _child_env(args.dry_run)
    scale = args.budget_s / TOTAL_S
    start = time.perf_counter()
    report: dict[str, Any] = {"dry_run": args.dry_run, "budget_s": args.budget_s,
                              "parts": {}}
    for name in args.parts:
        left = args.budget_s - (time.perf_counter() - start)
        timeout = min(BUDGET_S[name] * scale, left)
        if timeout < 5:
            result = {"status": "skipped", "reason": "the total time budget was spent"}
        elif name == "kernels":
            result = check_kernels(args, out, timeout, env)
        elif name == "train-cudnn" and args.dry_run:
            result = {"status": "skipped", "reason": "dry run: cuDNN flash attention needs "
                      "an NVIDIA GPU"}
        else:
            result = check_part(name, args, out, timeout, env)
        result["budget_s"] = round(timeout, 1)
        report["parts"][name] = result
        print(f"device-check: {name}: {result['status']}"
              + (f" ({result.get('reason') or result.get('error')})"
                 if result["status"] not in ("ok",) else ""), file=sys.stderr, flush=True)
        if name == "env" and result["status"] == "ok":
            report["backend"], report["device_kind"] = (result["backend"],
                                                        result["device_kind"])
            if result["backend"] == "cpu" and not args.dry_run:
                raise UsageError("no accelerator here (jax backend: cpu); run with "
                                 "--dry-run to check the command on the CPU")
    report["seconds"] = time.perf_counter() - start
    (out / REPORT_JSON).write_text(json.dumps(report, indent=1, default=float))
    (out / REPORT_MD).write_text(markdown(report))
    return report


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        return f"{x:,.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def markdown(report: dict[str, Any]) -> str:
    parts = report["parts"]
    lines = ["# Device check", ""]
    dry = "; DRY RUN on the CPU backend" if report["dry_run"] else ""
    lines.append(f"Device: {report.get('device_kind', '?')} (backend "
                 f"{report.get('backend', '?')}){dry}. Total {report['seconds']:.0f} s of a "
                 f"{report['budget_s']:.0f} s budget.")
    lines += ["", "| part | status | seconds | note |", "|---|---|---|---|"]
    for name, r in parts.items():
        note = r.get("reason") or r.get("error") or r.get("note") or ""
        lines.append(f"| {name} | {r['status']} | {_fmt(r.get('seconds'))} | {note} |")
    k = parts.get("kernels")
    if k and "counts" in k:
        lines += ["", "## Kernels against the float64 reference", "",
                  f"Files: {', '.join(k['files'])}. Outcomes: "
                  + ", ".join(f"{n} {c}" for n, c in sorted(k["counts"].items())) + "."]
        lines += [f"- FAILED {t}" for t in k["failed"]]
        lines += [f"- skipped: {s}" for s in k["skip_reasons"]]
        if k.get("not_run"):
            lines.append(f"- not run: {k['not_run']}")
    trains = {n: r for n, r in parts.items() if n.startswith("train-")}
    if trains:
        lines += ["", "## Train step", "",
                  "| attention | status | A x B x T | step s | roofline bound s | step / bound "
                  "| tokens/s | model TFLOP/s | MFU |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for n, r in trains.items():
            if r["status"] != "ok":
                lines.append(f"| {n[6:]} | {r['status']} | | | | | | | |")
                continue
            mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            roof = r.get("roofline")
            bound = f"{roof['bound_s']:.4f} ({roof['bound']})" if roof else "-"
            ratio = f"{r['step_over_bound']:.2f}" if r.get("step_over_bound") else "-"
            lines.append(f"| {r['attention']} | ok | {r.get('accum_steps', 1)} x "
                         f"{r['micro_batch']} x {r['seq_len']} | {r['step_s']:.4f} | {bound} | "
                         f"{ratio} | {_fmt(r['tokens_per_s'])} | "
                         f"{r['model_flops_per_s'] / 1e12:.3g} | {mfu} |")
        peak = next((r["peak_flops"] for r in trains.values() if r.get("peak_flops")), None)
        lines.append("")
        lines.append(f"MFU against {_fmt(peak / 1e12) + ' TFLOP/s' if peak else 'no'} "
                     "datasheet peak; FLOPs per token from `accounting.model_flops_per_token`. "
                     "The roofline bound is that of the same executable "
                     "(`pythoncoder.hlo_cost` against the datasheet peaks, as `pythoncoder "
                     "memory --topology` reports it without the device).")
    d = parts.get("decode")
    if d and d["status"] == "ok":
        lines += ["", "## Decode", "",
                  f"Copy bandwidth {d['copy_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s; "
                  f"attention {d['attention']}.", "",
                  "| B | tokens/s | roofline tokens/s | ratio |", "|---|---|---|---|"]
        for r in d["runs"]:
            lines.append(f"| {r['batch']} | {_fmt(r['decode_tokens_per_s'])} | "
                         f"{_fmt(r['roofline_tokens_per_s'])} | {r['roofline_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ command line
def _parts(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in PARTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown part(s) {bad}; choose from {list(PARTS)}")
    return names


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, choices=["tiny", "small", "1b"],
                   help="model for the train and decode parts (default: 1b; tiny with "
                        "--dry-run)")
    p.add_argument("--micro-batch", type=positive_int, default=None,
                   help="train batch rows (default 8; 2 with --dry-run)")
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="train sequence length (default 2048; 64 with --dry-run)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="timed train steps after the first (default 4; 2 with --dry-run)")
    p.add_argument("--remat", default="full", choices=["none", "full", "dots"])
    p.add_argument("--accum-steps", type=positive_int, default=1,
                   help="micro-steps per train step (the design's default is 8; 1 keeps the "
                        "train parts within their time budget)")
    p.add_argument("--peak-tflops", type=positive_float, default=None,
                   help="peak for MFU (default: the device's datasheet bf16 peak)")
    p.add_argument("--dry-run", action="store_true",
                   help="on the CPU backend, tiny preset; skip what needs a device, saying so")


def configure_device_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="directory for device-check.json / .md")
    p.add_argument("--parts", type=_parts, default=list(PARTS),
                   help=f"comma-separated subset of {','.join(PARTS)} (default: all)")
    p.add_argument("--budget-s", type=positive_float, default=TOTAL_S,
                   help=f"total seconds, shared by the parts (default {TOTAL_S})")
    _add_options(p)
    p.set_defaults(func=run_device_check, starts_jax=False)  # the parts start it


def run_device_check(args: argparse.Namespace) -> int:
    out = Path(args.out)
    made = out.absolute()  # the outermost directory this command creates, if any
    while not made.parent.exists() and made.parent != made.parent.parent:
        made = made.parent
    made = None if made.exists() else made
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {args.out}: {e.strerror}") from None
    try:
        report = device_check(args)
    except UsageError:  # refused (no accelerator): nothing left behind
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise
    print(f"device-check: wrote {out / REPORT_JSON} and {out / REPORT_MD}")
    bad = [n for n, r in report["parts"].items() if r["status"] not in ("ok", "skipped")]
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pythoncoder.devicecheck",
                                description="one part of the device check (internal)")
    p.add_argument("--part", required=True, choices=[n for n in PARTS if n != "kernels"])
    p.add_argument("--part-out", required=True)
    _add_options(p)
    return run_part(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
