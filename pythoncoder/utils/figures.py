"""Benchmark figures as ratios to limits measured in the same run (BENCH-01).

A *figure* is one number a benchmark reports, with the limit it is judged against:

    name, value, unit, limit, limit_name, ratio = value / limit, device

A benchmark stores its figures in ``benchmark.extra_info`` (pytest-benchmark), in one
of these forms, which ``figures_from_extra_info`` reads:

* ``extra_info["figures"] = [{"name", "value", "unit", "limit", "limit_name",
  "limit_from", "device"}, ...]`` (what the ``report`` fixture of ``benchmarks/`` writes);
* flat keys ``figure`` (the name), ``value``, ``unit`` and optionally ``limit``,
  ``limit_name``, ``limit_from``, ``ratio``, ``device``;
* the keys of the decode benchmark (``decode_tokens_per_second``,
  ``roofline_tokens_per_second``, ``mode``, ``batch``, ``acceptance_rate``).

``limit_from`` names another figure of the same run whose value is the limit (tiktoken
for the tokenizer, plain decode for the speculative speedup); ``resolve`` fills it in
once every benchmark has run.  ``markdown_table`` renders the result.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import jax

# Datasheet peaks per chip: dense bf16 matmul FLOP/s (no sparsity) and HBM bytes/s.
# Matched against ``jax.Device.device_kind`` in order, first hit wins (so "v5 lite"
# is tried before "v5").  Sources: NVIDIA H100 and H200 product datasheets (SXM:
# 989.4 TFLOP/s bf16 dense, 3.35 / 4.8 TB/s; H100 PCIe 756 TFLOP/s, 2.0 TB/s); NVIDIA
# A100 datasheet (312 TFLOP/s; 40GB 1.56 TB/s, 80GB 2.04 TB/s); Google Cloud TPU
# system-architecture pages (v6e 918 TFLOP/s, 1640 GB/s; v5e 197 TFLOP/s, 819 GB/s;
# v5p 459 TFLOP/s, 2765 GB/s; v4 275 TFLOP/s, 1200 GB/s).
DATASHEET: tuple[tuple[str, float, float, str], ...] = (
    ("H100 PCIe", 756e12, 2.0e12, "NVIDIA H100 PCIe datasheet"),
    ("H100", 989.4e12, 3.35e12, "NVIDIA H100 SXM datasheet"),
    ("H200", 989.4e12, 4.8e12, "NVIDIA H200 SXM datasheet"),
    ("A100-SXM4-40GB", 312e12, 1.555e12, "NVIDIA A100 40GB datasheet"),
    ("A100-PCIE-40GB", 312e12, 1.555e12, "NVIDIA A100 40GB datasheet"),
    ("A100", 312e12, 2.039e12, "NVIDIA A100 80GB datasheet"),
    ("TPU v6 lite", 918e12, 1.64e12, "Cloud TPU v6e spec"),
    ("TPU v6e", 918e12, 1.64e12, "Cloud TPU v6e spec"),
    ("TPU v5 lite", 197e12, 819e9, "Cloud TPU v5e spec"),
    ("TPU v5e", 197e12, 819e9, "Cloud TPU v5e spec"),
    ("TPU v5p", 459e12, 2.765e12, "Cloud TPU v5p spec"),
    ("TPU v5", 459e12, 2.765e12, "Cloud TPU v5p spec"),
    ("TPU v4", 275e12, 1.2e12, "Cloud TPU v4 spec"),
)


@dataclasses.dataclass(frozen=True, slots=True)
class DatasheetPeak:
    matmul_flops: float  # dense bf16 FLOP/s
    bandwidth: float  # HBM bytes/s
    source: str


def datasheet_peak(device_kind: str) -> DatasheetPeak | None:
    """The datasheet peak of a chip by its ``device_kind``, or None if not in the table."""
    kind = device_kind.lower()
    for key, flops, bandwidth, source in DATASHEET:
        if key.lower() in kind:
            return DatasheetPeak(flops, bandwidth, source)
    return None


def device_label() -> str:
    """The default JAX device in words, for the table's device column."""
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return f"CPU ({os.cpu_count()} cores)"
    return f"{dev.platform.upper()}: {dev.device_kind}"


def host_label(processes: int = 1) -> str:
    """Device column for host-side figures (tokenizer, loader)."""
    return f"host CPU, {processes} process{'es' if processes != 1 else ''}"


def flops_unit(backend: str | None = None) -> tuple[float, str]:
    """(scale, unit) for FLOP/s figures: GFLOP/s on CPU, TFLOP/s on TPU/GPU."""
    backend = backend or jax.default_backend()
    return (1e9, "GFLOP/s") if backend == "cpu" else (1e12, "TFLOP/s")


@dataclasses.dataclass(frozen=True, slots=True)
class Figure:
    """One reported number and the limit it is judged against."""

    name: str
    value: float
    unit: str
    limit: float | None = None
    limit_name: str | None = None
    limit_from: str | None = None  # name of another figure whose value is the limit
    device: str = ""
    benchmark: str = ""  # the pytest node id that measured it

    @property
    def ratio(self) -> float | None:
        if self.limit is None or not self.limit or not math.isfinite(self.limit):
            return None
        return self.value / self.limit

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ratio": self.ratio}


_FIELDS = ("name", "value", "unit", "limit", "limit_name", "limit_from", "device")


def figure_from_dict(raw: Mapping[str, Any], *, benchmark: str = "", device: str = ""
                     ) -> Figure:
    """A Figure from a dict with the keys of ``Figure`` (``ratio`` alone implies the limit)."""
    kw = {k: raw[k] for k in _FIELDS if raw.get(k) is not None}
    kw.setdefault("device", device)
    kw["value"] = float(kw["value"])
    if "limit" in kw:
        kw["limit"] = float(kw["limit"])
    elif raw.get("ratio") and "limit_from" not in kw:
        kw["limit"] = kw["value"] / float(raw["ratio"])  # only the ratio was given
    return Figure(benchmark=benchmark, **kw)


def _decode_figures(info: Mapping[str, Any], *, benchmark: str, device: str) -> list[Figure]:
    """Figures from the decode benchmark's own keys (``benchmarks/test_bench_decode.py``)."""
    where = f"{info.get('preset', '?')}, B={info.get('batch', '?')}"
    mode = str(info.get("mode", "plain"))
    name = f"decode tokens/s ({mode}, {where})"
    out = [Figure(name, float(info["decode_tokens_per_second"]), "tokens/s",
                  limit=float(info["roofline_tokens_per_second"]),
                  limit_name="bandwidth roofline", device=device, benchmark=benchmark)]
    if mode != "plain":
        out.append(Figure(f"speculative speedup ({mode}, {where})",
                          float(info["decode_tokens_per_second"]), "tokens/s",
                          limit_from=f"decode tokens/s (plain, {where})",
                          limit_name="plain decode", device=device, benchmark=benchmark))
        if info.get("acceptance_rate") is not None:
            out.append(Figure(f"MTP acceptance rate ({mode}, {where})",
                              float(info["acceptance_rate"]), "", limit=1.0,
                              limit_name="every draft accepted", device=device,
                              benchmark=benchmark))
    return out


def figures_from_extra_info(info: Mapping[str, Any], *, benchmark: str = "",
                            device: str = "") -> list[Figure]:
    """The figures a benchmark stored in its ``extra_info`` (see the module docstring)."""
    where = {"benchmark": benchmark, "device": device}
    if info.get("figures"):
        return [figure_from_dict(f, **where) for f in info["figures"]]
    if info.get("figure") is not None and info.get("value") is not None:
        return [figure_from_dict({**info, "name": info["figure"]}, **where)]
    if {"decode_tokens_per_second", "roofline_tokens_per_second"} <= set(info):
        return _decode_figures(info, **where)
    return []


def resolve(figures: Iterable[Figure]) -> list[Figure]:
    """Fill each ``limit_from`` with the named figure's value (same run, same unit).

    A missing or unit-mismatched reference leaves the limit empty and says why in
    ``limit_name``, so the table shows the gap instead of a wrong ratio.
    """
    figures = list(figures)
    by_name = {f.name: f for f in figures}
    out = []
    for f in figures:
        if f.limit_from is not None and f.limit is None:
            ref = by_name.get(f.limit_from)
            if ref is None:
                f = dataclasses.replace(f, limit_name=f"{f.limit_from} (not measured)")
            elif ref.unit != f.unit:
                f = dataclasses.replace(
                    f, limit_name=f"{f.limit_from} (unit {ref.unit!r} != {f.unit!r})")
            else:
                f = dataclasses.replace(f, limit=ref.value,
                                        limit_name=f.limit_name or f.limit_from)
        out.append(f)
    return out


def format_number(x: float) -> str:
    """Readable fixed-width-ish numbers: 12,345 / 123.4 / 0.1234 / 1.2e-05."""
    if x == 0 or not math.isfinite(x):
        return str(x)
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 1e-3:
        return f"{x:.4g}"
    return f"{x:.2e}"


def _with_unit(x: float, unit: str) -> str:
    return f"{format_number(x)} {unit}".rstrip()


def markdown_table(figures: Iterable[Figure]) -> str:
    """figure | value | limit (measured in the same run) | ratio | device."""
    lines = ["| figure | value | limit (measured in the same run) | ratio | device |",
             "|---|---|---|---|---|"]
    for f in figures:
        if f.limit is not None:
            limit = _with_unit(f.limit, f.unit)
            limit += f" ({f.limit_name})" if f.limit_name else ""
        else:
            limit = f"— ({f.limit_name})" if f.limit_name else "—"
        ratio = "—" if f.ratio is None else f"{f.ratio:.3f}"
        cells = [f.name, _with_unit(f.value, f.unit), limit, ratio, f.device]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
