"""SPMD scale-out with JAX's own machinery: a (data, fsdp) ``Mesh``, FSDP-style parameter
and optimizer-state shardings, a sharded batch, and ``jax.distributed`` for multi-host.

* Every parameter (and its Adam moments) is split along its largest axis that the
  ``fsdp`` axis size divides; anything else is replicated.
* The batch's row axis is split over ``("data", "fsdp")`` together: FSDP (ZeRO-3) is data
  parallel across its shards too, so each device computes a distinct slice of rows.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA, FSDP = "data", "fsdp"
_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")


def maybe_initialize_distributed() -> bool:
    """Call ``jax.distributed.initialize()`` when multi-host environment variables are set.

    Recognised: ``JAX_COORDINATOR_ADDRESS``/``COORDINATOR_ADDRESS`` with
    ``JAX_NUM_PROCESSES``/``NUM_PROCESSES`` and ``JAX_PROCESS_ID``/``PROCESS_ID``, or
    ``PYTHONCODER_DISTRIBUTED=1`` to let JAX auto-detect (Cloud TPU, SLURM).
    """
    addr = next((os.environ[k] for k in _DISTRIBUTED_ENV if os.environ.get(k)), None)
    if addr is None and os.environ.get("PYTHONCODER_DISTRIBUTED") != "1":
        return False
    if jax.distributed.is_initialized():
        return True
    kwargs: dict[str, Any] = {}
    if addr is not None:
        kwargs["coordinator_address"] = addr
        n = os.environ.get("JAX_NUM_PROCESSES") or os.environ.get("NUM_PROCESSES")
        pid = os.environ.get("JAX_PROCESS_ID") or os.environ.get("PROCESS_ID")
        if n is not None:
            kwargs["num_processes"] = int(n)
        if pid is not None:
            kwargs["process_id"] = int(pid)
    jax.distributed.initialize(**kwargs)
    return True


def make_mesh(data: int | None = None, fsdp: int | None = None,
              devices: list | None = None) -> Mesh:
    """A 2-D mesh (data, fsdp). By default all devices go on the fsdp axis."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data is None and fsdp is None:
        data, fsdp = 1, n
    elif data is None:
        data = n // fsdp
    elif fsdp is None:
        fsdp = n // data
    if data * fsdp != n:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} does not cover the {n} devices")
    return Mesh(np.asarray(devices).reshape(data, fsdp), (DATA, FSDP))


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
    """Shard the largest axis divisible by ``fsdp_size``; replicate otherwise."""
    if fsdp_size <= 1 or not shape:
        return P()
    order = sorted(range(len(shape)), key=lambda i: -shape[i])
    for axis in order:
        if shape[axis] % fsdp_size == 0 and shape[axis] >= fsdp_size:
            spec = [None] * len(shape)
            spec[axis] = FSDP
            return P(*spec)
    return P()


def state_shardings(abstract_tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a pytree of arrays (train state, params) under FSDP."""
    size = mesh.shape[FSDP]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), size)),
                        abstract_tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """(accum, rows, seq) batches: rows split over data and fsdp."""
    return NamedSharding(mesh, P(None, (DATA, FSDP), None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble each host's local rows into globally sharded arrays."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
