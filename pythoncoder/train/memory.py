"""TRAIN-07: compiled memory of the train step from abstract inputs (nothing allocated).

The step compiled here is the real one: forward and backward of one micro-batch inside
the accumulation scan, the fp32 gradient-accumulation buffer, the AdamW state and the
update, with the train state donated.  ``jax.jit(...).lower(...).compile()`` runs on the
default backend (the CPU compiler on a CPU host); the report names the compiler.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pythoncoder.model import ModelConfig, abstract_model
from pythoncoder.train.config import TrainConfig
from pythoncoder.train.optimizer import make_optimizer
from pythoncoder.train.step import TrainState, make_train_step

GIB = 1024**3


def abstract_train_state(model, tx) -> TrainState:
    params = nnx.state(model, nnx.Param)
    return jax.eval_shape(
        lambda p: TrainState(params=p, opt_state=tx.init(p), step=jnp.zeros((), jnp.int32),
                             skipped=jnp.zeros((), jnp.int32)), params)


def train_step_memory(model_cfg: ModelConfig, train_cfg: TrainConfig) -> dict[str, Any]:
    """Compile the train step abstractly and return its memory analysis in bytes."""
    model = abstract_model(model_cfg)
    graphdef, _ = nnx.split(model, nnx.Param)
    tx, _ = make_optimizer(train_cfg, total_steps=10 * train_cfg.warmup_steps + 10)
    state = abstract_train_state(model, tx)
    batch = {"tokens": jax.ShapeDtypeStruct(
        (train_cfg.accum_steps, train_cfg.micro_batch, train_cfg.seq_len + 1), jnp.int32)}
    key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
    step = jax.jit(make_train_step(graphdef, tx, mtp_weight=model_cfg.mtp_weight),
                   donate_argnums=0)
    compiled = step.lower(state, batch, key).compile()
    mem = compiled.memory_analysis()
    arg, out = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    temp, alias = int(mem.temp_size_in_bytes), int(mem.alias_size_in_bytes)
    code = int(getattr(mem, "generated_code_size_in_bytes", 0))
    total = arg + out - alias + temp
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    return {
        "preset": model_cfg.name,
        "compiler": f"{jax.default_backend()} ({jax.devices()[0].device_kind})",
        "micro_batch": train_cfg.micro_batch,
        "seq_len": train_cfg.seq_len,
        "accum_steps": train_cfg.accum_steps,
        "remat_policy": model_cfg.remat_policy,
        "compute_dtype": jnp.dtype(model_cfg.dtype()).name,
        "argument_bytes": arg,
        "output_bytes": out,
        "alias_bytes": alias,
        "temp_bytes": temp,
        "generated_code_bytes": code,
        "total_bytes": total,
        "total_gib": total / GIB,
        "train_state_bytes": int(state_bytes),
        "limit_bytes": 32 * GIB,
        "fits_32gib": total <= 32 * GIB,
    }
