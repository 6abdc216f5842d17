"""``throughput.estimate_hours``: the 24B-token estimate from per-core stage rates."""

from __future__ import annotations

import pytest

from pythoncoder.data import throughput


def _rows(main_rate: float, worker_rate: float) -> list[dict]:
    return [{"stage": name, "mb_per_s": main_rate if where == "main" else worker_rate}
            for name, where, _ in throughput.STAGE_ROWS]


def test_estimate_divides_worker_time_among_the_workers_and_takes_the_slower_side():
    rows = _rows(main_rate=1000.0, worker_rate=10.0)
    n_workers = sum(where == "workers" for _, where, _ in throughput.STAGE_ROWS)
    n_main = len(throughput.STAGE_ROWS) - n_workers
    est = throughput.estimate_hours(rows, tokens=1e9, bytes_per_token=4.0, kept_fraction=0.5,
                                    cores=11)
    input_mb = 1e9 * 4.0 / 0.5 / 1e6
    assert est["input_gb"] == pytest.approx(input_mb / 1e3, abs=0.05)
    workers_h = input_mb * n_workers / 10.0 / 10 / 3600
    main_h = input_mb * n_main / 1000.0 / 3600
    assert est["workers_hours"] == pytest.approx(workers_h, abs=0.01)
    assert est["main_hours"] == pytest.approx(main_h, abs=0.01)
    assert est["hours"] == pytest.approx(max(workers_h, main_h), abs=0.01)
    # A slow main process bounds the run however many cores there are.
    slow_main = throughput.estimate_hours(_rows(0.5, 10.0), 1e9, 4.0, 0.5, cores=1000)
    assert slow_main["hours"] == slow_main["main_hours"] > slow_main["workers_hours"]


def test_stage_throughput_runs_every_stage_in_order():
    docs = [(f"m{i}.py", (f"def f_{i}(x):\n    return x + {i}\n" * 5).encode()) for i in range(6)]
    docs.append(("dup.py", docs[0][1]))
    rows = throughput.stage_throughput(docs)
    assert [r["stage"] for r in rows] == [name for name, _, _ in throughput.STAGE_ROWS]
    assert rows[0]["documents"] == 7 and rows[1]["documents"] == 6  # the copy left
    assert rows[-1]["ratio_to_tokenizer"] == pytest.approx(1.0, rel=1e-9)
    assert rows[-1]["tokens"] > 0
