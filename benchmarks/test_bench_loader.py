"""Loader throughput (BENCH-01: "loader throughput"): batches and tokens per second.

Runs on the stdlib corpus at seq_len 2048, prepared once into the user cache by
``ensure_stdlib_data`` (the default corpus of ``pythoncoder train``).  The limit it
is compared with is a plain ``numpy`` gather of the same rows measured in the same run.
"""

from __future__ import annotations

import numpy as np
import pytest

from pythoncoder.data import shards
from pythoncoder.data.loader import gather_index, make_loader
from pythoncoder.data.prepare import ensure_stdlib_data
from pythoncoder.utils.figures import host_label

BATCH = 16
STEPS = 100
GATHER = f"numpy gather batches/s ({BATCH}x2049, same rows)"


@pytest.fixture(scope="module")
def data_dir():
    return ensure_stdlib_data(2048, progress=False)


def test_loader_batches(benchmark, data_dir, report):
    loader = make_loader(data_dir, batch_size=BATCH, seed=0, shard_index=0, shard_count=1)

    def run():
        for _ in range(STEPS):
            next(loader)

    benchmark.pedantic(run, rounds=3, iterations=1)
    tps = STEPS * BATCH * (loader.seq_len + 1) / benchmark.stats.stats.mean
    benchmark.extra_info["tokens_per_second"] = round(tps)
    benchmark.extra_info["batches_per_second"] = round(STEPS / benchmark.stats.stats.mean, 1)
    report(f"loader batches/s ({BATCH}x{loader.seq_len + 1})", STEPS / benchmark.stats.stats.mean,
           "batches/s", limit_from=GATHER, limit_name="numpy gather", device=host_label())


def test_numpy_gather_limit(benchmark, data_dir, report):
    _, arrays = shards.open_split(data_dir, "train", verify="size")
    rows = np.concatenate(arrays)
    rng = np.random.default_rng(0)
    index = gather_index(len(rows), STEPS, BATCH, rng)

    def run():
        for idx in index:
            batch = rows[np.sort(idx)].astype(np.int32)
            shards.segment_ids(batch)

    benchmark.pedantic(run, rounds=3, iterations=1)
    tps = STEPS * BATCH * rows.shape[1] / benchmark.stats.stats.mean
    benchmark.extra_info["tokens_per_second"] = round(tps)
    report(GATHER, STEPS / benchmark.stats.stats.mean, "batches/s", device=host_label())
