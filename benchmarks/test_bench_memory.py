"""Compiled memory of the ``1b`` micro-step (BENCH-01, TRAIN-07), against 32 GiB.

``pythoncoder.train.memory.train_step_memory`` compiles the real train step from
abstract inputs (nothing is allocated) at micro-batch 8 x 2048, bf16 compute, with the
design's accumulation, and reads ``memory_analysis()``: arguments + outputs - aliased +
temporaries.  The figure comes from the default backend's compiler, or with
``--bench-topology v6e-1`` from the TPU compiler ahead of time (needs ``libtpu``); the
compiler is named in the figure and in ``extra_info["compiler"]``.
"""

from __future__ import annotations

from pythoncoder.model import ModelConfig
from pythoncoder.targets import GIB
from pythoncoder.train.config import TrainConfig
from pythoncoder.train.memory import train_step_memory


def test_train_step_memory_1b(benchmark, report, request):
    result = {}
    topology = request.config.getoption("--bench-topology")

    def run():
        result.update(train_step_memory(ModelConfig.preset("1b", compute_dtype="bfloat16"),
                                        TrainConfig(), topology=topology).to_json())

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update({k: v for k, v in result.items()
                                 if isinstance(v, int | float | str | bool)})
    report(f"1b train step compiled memory ({result['micro_batch']}x{result['seq_len']}, "
           f"accum {result['accum_steps']}, {result['compiler'].split()[0]} compiler)",
           result["total_bytes"] / GIB, "GiB", limit=result["limit_bytes"] / GIB,
           limit_name="TRAIN-07 budget")
