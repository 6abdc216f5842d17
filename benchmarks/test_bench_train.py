"""Train-step tokens/s and MFU (BENCH-01), against the matmul ceiling measured in this run.

The step is the real one (``make_train_step``: forward, backward, accumulation scan,
AdamW update, non-finite guard) with the state donated, on the default device.  The
preset is the one that fits the backend: ``1b`` at micro-batch 8 x 2048 on TPU/GPU,
``tiny`` at 4 x 256 on CPU (``--bench-preset small`` or ``PYTHONCODER_BENCH_PRESET``
for more; ``--bench-seq-len``, ``--bench-micro-batch``, ``--bench-accum`` for the shape).

MFU (model FLOPs utilisation) counts model FLOPs the MaxText way,
``pythoncoder.train.accounting.model_flops_per_token``:

    FLOPs/token = 6 * N_matmul + 6 * L * T * q_width

N_matmul is every weight matrix but the embedding lookup, with the output head counted
twice (the MTP module reuses it); the second term is causal differential attention
(two score maps and A.V, half the T x T map, forward + backward = 3 x forward).  Remat
recomputation is not counted: MFU measures useful work.  Then

    MFU = tokens/s * FLOPs/token / peak FLOP/s,

with the peak the dense-matmul rate measured in this run (``test_bench_ceilings``)
and, on TPU/GPU, also the datasheet bf16 peak of the chip
(``pythoncoder.utils.figures.DATASHEET``).  Figures are per device (one chip).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pythoncoder.model import ModelConfig, abstract_model, build_model
from pythoncoder.train.accounting import model_flops_per_token
from pythoncoder.train.config import TrainConfig
from pythoncoder.train.optimizer import make_optimizer
from pythoncoder.train.step import init_train_state, make_train_step, split_model
from pythoncoder.utils import perf
from pythoncoder.utils.figures import flops_unit

_RESULT: dict[str, float] = {}


def _shape(config: pytest.Config) -> tuple[str, int, int, int]:
    accel = jax.default_backend() != "cpu"
    preset = perf.bench_preset(config.getoption("--bench-preset"), jax.default_backend())
    seq = config.getoption("--bench-seq-len") or (2048 if accel else 256)
    # On CPU, fill one cross-entropy chunk (tiny: 4 x 256 = 1024 rows): a part-filled
    # chunk is padded and its logits computed anyway, which would count as lost MFU.
    fill = max(ModelConfig.preset(preset).loss_chunk_size // seq, 1)
    micro = config.getoption("--bench-micro-batch") or (8 if accel else fill)
    return preset, int(seq), int(micro), int(config.getoption("--bench-accum"))


@pytest.fixture(scope="module")
def setup(request):
    preset, seq, micro, accum = _shape(request.config)
    cfg = ModelConfig.preset(preset)
    tcfg = TrainConfig(seq_len=seq, micro_batch=micro, accum_steps=accum, warmup_steps=0)
    tx, _ = make_optimizer(tcfg, total_steps=1000, warmup_steps=0)
    if cfg.remat_policy == "auto":  # resolved as `pythoncoder train` resolves it
        from pythoncoder.train.memory import abstract_train_state
        from pythoncoder.train.remat import choose_remat
        from pythoncoder.train.sharding import make_mesh, state_shardings

        mesh = make_mesh(1, 1, jax.devices()[:1])
        abstract = abstract_train_state(abstract_model(cfg), tx)
        policy = choose_remat(cfg, tcfg, tx, abstract, state_shardings(abstract, mesh),
                              mesh)["policy"]
        cfg = cfg.replace(remat_policy=policy)
    model = build_model(cfg, seed=0)
    graphdef, _ = split_model(model)
    state = init_train_state(model, tx)
    del model
    step = jax.jit(make_train_step(graphdef, tx, mtp_weight=cfg.mtp_weight), donate_argnums=0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, min(cfg.vocab_size, 151_643), (accum, micro, seq + 1))
    batch = {"tokens": jnp.asarray(tokens, jnp.int32)}
    return cfg, tcfg, step, state, batch


def test_train_step(benchmark, report, ceilings, setup):
    cfg, tcfg, step, state, batch = setup
    box = {"state": state, "key": jax.random.PRNGKey(0)}

    def run():
        box["state"], metrics = step(box["state"], batch, box["key"])
        box["loss"] = jax.block_until_ready(metrics["loss"])

    run()  # compile
    rounds = 5 if jax.default_backend() != "cpu" else 2
    benchmark.pedantic(run, rounds=rounds, iterations=1)
    assert np.isfinite(float(box["loss"]))

    tokens = tcfg.tokens_per_step
    tps = tokens / benchmark.stats.stats.min
    flops_per_token = model_flops_per_token(cfg, tcfg.seq_len)
    model_flops = tps * flops_per_token
    peak = ceilings.matmul_flops
    _RESULT.update(model_flops=model_flops, tokens_per_second=tps)
    what = f"{cfg.name}, {tcfg.micro_batch}x{tcfg.seq_len}, accum {tcfg.accum_steps}"
    benchmark.extra_info.update(
        preset=cfg.name, seq_len=tcfg.seq_len, micro_batch=tcfg.micro_batch,
        accum_steps=tcfg.accum_steps, compute_dtype=jnp.dtype(cfg.dtype()).name,
        remat_policy=cfg.remat_policy, tokens_per_step=tokens,
        flops_per_token=flops_per_token, tokens_per_second=tps, mfu=model_flops / peak,
        loss=float(box["loss"]))
    report(f"train tokens/s ({what})", tps, "tokens/s", limit=peak / flops_per_token,
           limit_name="tokens/s at the measured matmul ceiling")
    scale, unit = flops_unit()
    report(f"train MFU: model FLOP/s ({what})", model_flops / scale, unit,
           limit=peak / scale, limit_name="measured dense matmul")


@pytest.mark.gpu
@pytest.mark.tpu
def test_train_mfu_vs_datasheet(report, ceilings):
    if not _RESULT:
        pytest.skip("test_train_step did not run")
    sheet = ceilings.datasheet
    if sheet is None:
        pytest.skip(f"no datasheet peak for {jax.devices()[0].device_kind!r}")
    report("train MFU: model FLOP/s vs datasheet", _RESULT["model_flops"] / 1e12, "TFLOP/s",
           limit=sheet.matmul_flops / 1e12, limit_name=f"datasheet bf16 peak, {sheet.source}")
