"""``prepare`` throughput, stage by stage, against the tokenizer alone (issue 33).

Each cleaning stage runs on one core over the stdlib (each stage on what the earlier ones
kept, as in ``prepare``), and its MB/s is reported as a ratio to the tokenizer's MB/s on
the same text in the same run (``pythoncoder.data.throughput.stage_throughput``).  The
whole ``prepare`` on every core is reported against the tokenizer alone on as many cores,
and the hours for 24B tokens on 16 cores estimated from the per-core rates
(``estimate_hours``) go into ``extra_info``.  ``python -m pythoncoder.data.throughput
--stages`` prints the same table.
"""

from __future__ import annotations

import time

import pytest

from pythoncoder.data import prepare as prep
from pythoncoder.data import sources, throughput
from pythoncoder.utils.figures import host_label

_RATES: dict[str, float] = {}


@pytest.fixture(scope="module")
def raw_docs():
    return [(k, c if isinstance(c, bytes) else c.encode("utf-8"))
            for k, c in sources.iter_documents([])
            if not isinstance(c, sources.Unreadable)]


def test_stage_throughput(benchmark, raw_docs, report):
    rows = benchmark.pedantic(throughput.stage_throughput, args=(raw_docs,), rounds=1,
                              iterations=1)
    tokenize = rows[-1]["mb_per_s"]
    _RATES["tokenize"] = tokenize
    for row in rows:
        report(f"prepare stage MB/s per core: {row['stage']}", row["mb_per_s"], "MB/s",
               limit=tokenize, limit_name="tokenizer alone, same text, 1 core",
               device=host_label(1))
    benchmark.extra_info["stages"] = rows
    benchmark.extra_info["estimate_24b_tokens_16_cores"] = throughput.estimate_hours(
        rows, 24e9, bytes_per_token=rows[-1]["bytes_per_token"], kept_fraction=0.5, cores=16)
    assert rows[0]["mb"] > 1 and all(r["mb_per_s"] > 0 for r in rows)


def test_prepare_all_cores(benchmark, raw_docs, report, tmp_path):
    workers = prep.default_num_workers()
    mb = sum(len(c) for _, c in raw_docs) / 1e6

    def run():
        start = time.perf_counter()
        m = prep.prepare([], tmp_path / "out", seq_len=2048, num_workers=workers,
                         progress=False)
        return m, time.perf_counter() - start

    m, seconds = benchmark.pedantic(run, rounds=1, iterations=1)
    tokenize = _RATES.get("tokenize")
    report(f"prepare MB/s, whole pipeline ({workers} processes)", mb / seconds, "MB/s",
           limit=None if tokenize is None else tokenize * workers,
           limit_name=f"tokenizer alone x {workers} cores", device=host_label(workers))
    benchmark.extra_info["documents_per_s"] = m["stats"]["files_seen"] / seconds
    benchmark.extra_info["tokens_per_s"] = m["stats"]["document_tokens"] / seconds
