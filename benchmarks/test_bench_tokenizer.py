"""Tokenizer throughput against tiktoken on the same files (BENCH-01: "tokenizer vs tiktoken").

The reference is tiktoken over the same ranks, regex and specials, measured in the same
run on the same documents (a fixed sample of the stdlib).  Each benchmark records
``tokens_per_second``; the ours/tiktoken ratio is recorded by the pool benchmark.
``python -m pythoncoder.data.throughput`` prints the same comparison on the whole stdlib.
"""

from __future__ import annotations

import pytest

from pythoncoder.data import prepare as prep
from pythoncoder.data import throughput
from pythoncoder.data.tokenizer import load_tokenizer
from pythoncoder.utils.figures import host_label

_RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def docs():
    return throughput.load_texts(max_files=None)[::4]


@pytest.fixture(scope="module")
def tokenizer_json():
    return load_tokenizer().to_str()


def _record(benchmark, name: str, tokens: int) -> None:
    tps = tokens / benchmark.stats.stats.mean
    _RESULTS[name] = tps
    benchmark.extra_info["tokens"] = tokens
    benchmark.extra_info["tokens_per_second"] = round(tps)


TIKTOKEN = "tokenizer tokens/s (tiktoken, 1 process)"


def test_tiktoken_one_process(benchmark, docs, report):
    enc = throughput.tiktoken_encoding()
    tokens = benchmark.pedantic(throughput.count_tiktoken, args=(docs, enc), rounds=3,
                                iterations=1)
    _record(benchmark, "tiktoken", tokens)
    report(TIKTOKEN, _RESULTS["tiktoken"], "tokens/s", device=host_label(1))


def test_ours_one_process(benchmark, docs, tokenizer_json, report):
    tokens = benchmark.pedantic(throughput.count_ours, args=(docs, 1, tokenizer_json),
                                rounds=3, iterations=1)
    _record(benchmark, "ours-1", tokens)
    report("tokenizer tokens/s (ours, 1 process)", _RESULTS["ours-1"], "tokens/s",
           limit_from=TIKTOKEN, limit_name="tiktoken, same text, 1 process",
           device=host_label(1))


def test_ours_process_pool(benchmark, docs, tokenizer_json, report):
    workers = throughput.pool_size(prep.default_num_workers(),
                                   sum(len(text) for _, text in docs))
    tokens = benchmark.pedantic(throughput.count_ours, args=(docs, workers, tokenizer_json),
                                rounds=3, iterations=1)
    _record(benchmark, "ours-pool", tokens)
    benchmark.extra_info["processes"] = workers
    report(f"tokenizer tokens/s (ours, {workers} processes)", _RESULTS["ours-pool"],
           "tokens/s", limit_from=TIKTOKEN, limit_name="tiktoken, same text, 1 process",
           device=host_label(workers))
    if "tiktoken" in _RESULTS:
        benchmark.extra_info["ratio_to_tiktoken_one_process"] = round(
            _RESULTS["ours-pool"] / _RESULTS["tiktoken"], 3)
