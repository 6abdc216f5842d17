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


def abstract_batch(train_cfg: TrainConfig, sharding: Any = None) -> dict[str, Any]:
    """The train step's batch as the loader hands it over: tokens and their segment ids,
    int32 ``(accum_steps, micro_batch, seq_len + 1)``."""
    shape = (train_cfg.accum_steps, train_cfg.micro_batch, train_cfg.seq_len + 1)
    return {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding)
            for k in ("tokens", "segment_ids")}


TOPOLOGIES = {
    # name -> get_topology_desc arguments (MaxText's accelerator_to_spec_map values)
    "v6e-1": dict(platform="tpu", topology_name="v6e:1x1", chip_config_name="default",
                  chips_per_host_bounds=(1, 1, 1), num_slices=1, wrap=(False, False, False)),
}


def topology_devices(name: str) -> list:
    """Devices of a TPU topology for ahead-of-time compilation on a host without one.

    Needs ``libtpu`` (``pip install "jax[tpu]"``); raises ``RuntimeError`` otherwise."""
    from jax.experimental import topologies

    if name not in TOPOLOGIES:
        raise ValueError(f"unknown topology {name!r}; known: {sorted(TOPOLOGIES)}")
    try:
        return list(topologies.get_topology_desc(**TOPOLOGIES[name]).devices)
    except Exception as e:  # no libtpu, or it refused the topology
        raise RuntimeError(f"cannot compile for {name}: {type(e).__name__}: {e}") from e


def compile_train_step(model_cfg: ModelConfig, train_cfg: TrainConfig, tx: Any,
                       abstract: Any, shardings: Any, mesh: Any) -> Any:
    """The real train step for ``model_cfg`` (its remat policy), compiled ahead of time
    for the training loop's inputs: the state in ``shardings`` (donated), the batch in
    ``batch_sharding``, a replicated key.  Nothing is allocated."""
    from pythoncoder.train.sharding import batch_sharding, replicated

    graphdef, _ = nnx.split(abstract_model(model_cfg), nnx.Param)
    rep = replicated(mesh)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         abstract, shardings)
    batch = abstract_batch(train_cfg, batch_sharding(mesh))
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep)
    step = jax.jit(make_train_step(graphdef, tx, mtp_weight=model_cfg.mtp_weight),
                   in_shardings=(shardings, None, rep), out_shardings=(shardings, rep),
                   donate_argnums=0)
    # Trace for the target device: ModelConfig's "auto" attention and the Pallas kernels
    # (Mosaic reads the chip generation from it) see that device (e.g. a TPU topology's),
    # not this host.
    with jax.default_device(mesh.devices.flat[0]):
        return step.lower(state, batch, key).compile()


def train_step_memory(model_cfg: ModelConfig, train_cfg: TrainConfig, *,
                      topology: str | None = None) -> dict[str, Any]:
    """Compile the train step abstractly and return its memory analysis in bytes.

    With ``topology`` (e.g. ``"v6e-1"``) the TPU compiler itself compiles for that chip,
    as MaxText's ``train_compile`` does, from a CPU-only host."""
    from pythoncoder.train.sharding import make_mesh, state_shardings

    model = abstract_model(model_cfg)
    tx, _ = make_optimizer(train_cfg, total_steps=10 * train_cfg.warmup_steps + 10)
    state = abstract_train_state(model, tx)
    devices = jax.devices()[:1] if topology is None else topology_devices(topology)
    mesh = make_mesh(1, len(devices), devices)
    compiled = compile_train_step(model_cfg, train_cfg, tx, state,
                                  state_shardings(state, mesh), mesh)
    mem = compiled.memory_analysis()
    arg, out = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    temp, alias = int(mem.temp_size_in_bytes), int(mem.alias_size_in_bytes)
    code = int(getattr(mem, "generated_code_size_in_bytes", 0))
    total = arg + out - alias + temp
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    return {
        "preset": model_cfg.name,
        "compiler": f"{devices[0].platform} ({devices[0].device_kind})"
                    + (" ahead-of-time via libtpu topology " + topology if topology else ""),
        "micro_batch": train_cfg.micro_batch,
        "seq_len": train_cfg.seq_len,
        "accum_steps": train_cfg.accum_steps,
        "remat_policy": model_cfg.built_remat_policy,
        "attention_impl": model_cfg.resolved_attention_impl(devices[0].platform),
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
