"""Benchmark harness (BENCH-01): device ceilings first, figures as ratios, a Markdown table.

* ``ceilings`` (session): the dense-matmul rate in the compute dtype and the device copy
  bandwidth, measured once per run.  ``test_bench_ceilings.py`` is moved to the front
  of the run and sets them from its own benchmarks; a benchmark run on its own measures
  them on first use.
* ``report(name, value, unit, limit=..., limit_name=..., limit_from=...)``: records one
  figure on the test and in ``benchmark.extra_info["figures"]``.  Benchmarks that do not
  use it are still read through ``pythoncoder.utils.figures.figures_from_extra_info``
  (flat ``figure``/``value``/``unit``/``limit``/``ratio`` keys, or the decode keys); a
  benchmark with no figure at all is listed with its best time.
* At the end the project writes its figures itself (whatever pytest-benchmark's version):
  ``build/benchmarks.json`` (``figures``, each benchmark's timing statistics, the
  device and the versions of the stack), ``build/benchmark-figures.json`` (the figures
  alone) and ``build/benchmarks.md`` (figure | value | limit | ratio | device).  An
  explicit ``--benchmark-json PATH`` still gets pytest-benchmark's own report, with the
  figures added under ``"figures"``.

Options (or environment variables): ``--bench-preset`` (``PYTHONCODER_BENCH_PRESET``:
``auto`` = ``1b`` on TPU/GPU, ``tiny`` on CPU), ``--bench-seq-len``,
``--bench-micro-batch``, ``--bench-accum``, ``--bench-topology`` (TPU AOT compile of the
memory figure), ``--bench-out`` (default ``build``).
A benchmark marked ``gpu`` and/or ``tpu`` runs only on those backends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import pytest

from pythoncoder.model import ModelConfig
from pythoncoder.utils import figures as figs
from pythoncoder.utils import perf
from pythoncoder.utils.figures import device_label
from pythoncoder.utils.files import atomic_write_text
from pythoncoder.utils.versions import stack_versions

FIGURES = pytest.StashKey[list]()
RUN_FIGURES = pytest.StashKey[list]()
RUN_TIMINGS = pytest.StashKey[list]()
FIRST = "test_bench_ceilings.py"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pythoncoder benchmarks")
    env = os.environ.get
    group.addoption("--bench-preset", default=env("PYTHONCODER_BENCH_PRESET", "auto"),
                    choices=("auto", "tiny", "small", "1b"),
                    help="train-step preset (auto: 1b on TPU/GPU, tiny on CPU)")
    group.addoption("--bench-seq-len", type=int, default=env("PYTHONCODER_BENCH_SEQ_LEN"),
                    help="train-step sequence length (default 2048 on TPU/GPU, 256 on CPU)")
    group.addoption("--bench-micro-batch", type=int,
                    default=env("PYTHONCODER_BENCH_MICRO_BATCH"),
                    help="train-step micro-batch (default 8 on TPU/GPU, 2 on CPU)")
    group.addoption("--bench-accum", type=int, default=env("PYTHONCODER_BENCH_ACCUM", 1),
                    help="train-step gradient-accumulation micro-steps (default 1)")
    group.addoption("--bench-topology", default=env("PYTHONCODER_BENCH_TOPOLOGY"),
                    help="compile the 1b memory figure for a TPU topology (e.g. v6e-1; "
                    "needs libtpu) instead of the local backend")
    group.addoption("--bench-out", default=env("PYTHONCODER_BENCH_OUT", "build"),
                    help="directory for benchmarks.json/.md (relative to the rootdir)")


def _out_dir(config: pytest.Config) -> Path:
    out = Path(config.getoption("--bench-out"))
    return out if out.is_absolute() else Path(config.rootpath) / out


def pytest_configure(config: pytest.Config) -> None:
    # pytest-benchmark's options are left as given: its --benchmark-json changed type
    # between releases (a file object up to 5.2, a Path from 5.3), so the project writes
    # its own report in pytest_sessionfinish instead of defaulting that option.
    config.stash[RUN_FIGURES] = []
    config.stash[RUN_TIMINGS] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    # Ceilings first: every other figure is judged against them.
    items.sort(key=lambda item: item.path.name != FIRST)


def pytest_runtest_setup(item: pytest.Item) -> None:
    wanted = {m.name for m in item.iter_markers() if m.name in ("gpu", "tpu")}
    if wanted and jax.default_backend() not in wanted:
        pytest.skip(f"needs a {'/'.join(sorted(wanted))} backend, "
                    f"running on {jax.default_backend()}")


class Ceilings:
    """Device limits measured in this run; measured on first use if nobody set them."""

    def __init__(self) -> None:
        self._matmul: float | None = None
        self._bandwidth: float | None = None

    @property
    def compute_dtype(self):
        return ModelConfig.preset("tiny").dtype()  # "auto": bf16 on TPU/GPU, fp32 on CPU

    @property
    def matmul_flops(self) -> float:
        if self._matmul is None:
            self._matmul = perf.measure_matmul_flops(self.compute_dtype)
        return self._matmul

    @matmul_flops.setter
    def matmul_flops(self, value: float) -> None:
        self._matmul = value

    @property
    def copy_bandwidth(self) -> float:
        if self._bandwidth is None:
            self._bandwidth = perf.measure_copy_bandwidth()
        return self._bandwidth

    @copy_bandwidth.setter
    def copy_bandwidth(self, value: float) -> None:
        self._bandwidth = value

    @property
    def datasheet(self) -> figs.DatasheetPeak | None:
        if jax.default_backend() == "cpu":
            return None
        return figs.datasheet_peak(jax.devices()[0].device_kind)


@pytest.fixture(scope="session")
def ceilings() -> Ceilings:
    return Ceilings()


@pytest.fixture
def report(request: pytest.FixtureRequest):
    """``report(name, value, unit, *, limit=None, limit_name=None, limit_from=None,
    device=None)`` records one figure of this benchmark."""
    bench = request.getfixturevalue("benchmark") if "benchmark" in request.fixturenames \
        else None
    stored = request.node.stash.setdefault(FIGURES, [])

    def record(name: str, value: float, unit: str, *, limit: float | None = None,
               limit_name: str | None = None, limit_from: str | None = None,
               device: str | None = None) -> None:
        row = {"name": name, "value": float(value), "unit": unit,
               "limit": None if limit is None else float(limit), "limit_name": limit_name,
               "limit_from": limit_from, "device": device or device_label()}
        stored.append(row)
        if bench is not None:
            bench.extra_info.setdefault("figures", []).append(row)

    return record


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    rep = outcome.get_result()
    if call.when != "call" or not rep.passed:
        return
    bench = getattr(item, "funcargs", {}).get("benchmark")
    timing = _timing(item.nodeid, bench)
    if timing is not None:
        item.config.stash[RUN_TIMINGS].append(timing)
    rows = item.stash.get(FIGURES, [])
    found = [figs.figure_from_dict(r, benchmark=item.nodeid, device=device_label()) for r in rows]
    if not found and bench is not None:
        found = figs.figures_from_extra_info(bench.extra_info, benchmark=item.nodeid,
                                             device=device_label())
        if not found and bench.stats is not None:
            found = [figs.Figure(f"{item.name}: best time", bench.stats.stats.min, "s",
                                 device=device_label(), benchmark=item.nodeid)]
    item.config.stash[RUN_FIGURES].extend(found)


STATS = ("min", "max", "mean", "stddev", "median", "rounds", "iterations")


def _timing(nodeid: str, bench) -> dict | None:
    """One benchmark's timing statistics (seconds), read from the fixture's attributes
    that every pytest-benchmark release since 4.0 has; None if it timed nothing."""
    stats = getattr(getattr(bench, "stats", None), "stats", None)
    if stats is None:
        return None
    row = {"benchmark": nodeid}
    for key in STATS:
        value = getattr(stats, key, None)
        if isinstance(value, int | float):
            row[key] = value
    return row


def run_figures(config: pytest.Config) -> list[figs.Figure]:
    return figs.resolve(config.stash.get(RUN_FIGURES, []))


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json) -> None:
    output_json["figures"] = [f.as_dict() for f in run_figures(config)]


def write_report(config: pytest.Config, out: Path) -> list[Path]:
    """Write this run's figures and timings into ``out``; the files written.

    ``benchmarks.json`` is skipped when ``--benchmark-json`` names that same file
    (pytest-benchmark writes it then, figures included by the hook above)."""
    found = run_figures(config)
    timings = config.stash.get(RUN_TIMINGS, [])
    if not found and not timings:
        return []
    out.mkdir(parents=True, exist_ok=True)
    written = []
    theirs = config.getoption("benchmark_json", None)
    theirs = getattr(theirs, "name", theirs)  # a file object up to pytest-benchmark 5.2
    mine = out / "benchmarks.json"
    if theirs is None or Path(theirs).resolve() != mine.resolve():
        report = {"device": device_label(), "backend": jax.default_backend(),
                  "versions": stack_versions(), "figures": [f.as_dict() for f in found],
                  "benchmarks": timings}
        atomic_write_text(mine, json.dumps(report, indent=2) + "\n")
        written.append(mine)
    if found:
        header = (f"Benchmarks on {device_label()} (JAX {jax.__version__}, backend "
                  f"{jax.default_backend()}); each limit is measured in the same run.\n\n")
        atomic_write_text(out / "benchmarks.md", header + figs.markdown_table(found))
        atomic_write_text(out / "benchmark-figures.json",
                          json.dumps([f.as_dict() for f in found], indent=2) + "\n")
        written += [out / "benchmarks.md", out / "benchmark-figures.json"]
    return written


def pytest_sessionfinish(session: pytest.Session, exitstatus) -> None:
    if not session.config.option.collectonly:
        write_report(session.config, _out_dir(session.config))


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    found = run_figures(config)
    if found:
        terminalreporter.write_sep("-", "figures (build/benchmarks.md)")
        terminalreporter.write(figs.markdown_table(found))
