"""``remat_policy="auto"``: the fastest policy by the roofline whose compiled step fits.

Rematerialisation trades FLOPs for activation memory: ``none`` keeps every activation
(no recomputation, most memory and often most bytes moved), ``dots`` keeps the matmul
outputs and recomputes the cheap element-wise work, ``full`` keeps only each scanned
layer's input and recomputes the whole layer in the backward pass (least memory; on one
H100 at 1b, 8 x 2048 the step took 0.900 s with ``full`` against 0.861 s with ``none``).
Which one fits depends on the chip: the 1b preset needs ``full`` on a 32 GiB v6e, while
an 80+ GiB GPU holds more.

``choose_remat`` compiles the real train step (``jax.jit(...).lower(...).compile()`` on
abstract inputs, nothing allocated) for each policy in ``REMAT_ORDER``.  A policy fits when
its compiled memory (arguments + outputs - donated aliases + temporaries, per device) is
within ``headroom`` of the device's memory: the accelerator's ``bytes_limit``, or on a CPU
the host's available memory shared by the mesh's devices in this process.  On a device with
datasheet peaks it takes, of the policies that fit, the one with the smallest roofline bound
(FLOPs and HBM bytes of the compiled step, ``pythoncoder.hlo_cost``), since fewer kept
activations can mean fewer bytes moved; elsewhere the least recomputation that fits.  When
none fits it takes ``full`` and says so (the compiler's out-of-memory error then names the
shortfall).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import numpy as np

from pythoncoder.model import ModelConfig
from pythoncoder.targets import GIB
from pythoncoder.train.config import TrainConfig
from pythoncoder.train.memory import compile_train_step as compile_step

REMAT_ORDER = ("none", "dots", "full")  # fastest first
HEADROOM = 0.9  # of the device memory: allocator fragmentation, the data prefetch, eval


def device_memory_bytes(device: Any, sharing: int = 1) -> int | None:
    """The memory one device may use: ``bytes_limit`` of an accelerator; on a CPU the
    host's available memory (``MemAvailable``) split among the ``sharing`` devices of the
    mesh that live in this process (fake CPU devices share one host's RAM)."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if device.platform != "cpu":
        return None
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return None
    return int(avail) // max(sharing, 1)


def step_bytes(compiled: Any) -> int:
    """Per-device bytes of a compiled step: arguments + outputs - donated + temporaries."""
    from pythoncoder.train.accounting import CompiledMemory

    return CompiledMemory.of(compiled).total_bytes


def compiled_step_bytes(model_cfg: ModelConfig, train_cfg: TrainConfig, tx: Any, abstract: Any,
                        shardings: Any, mesh: Any) -> int:
    """Per-device bytes of the compiled train step for ``model_cfg``'s remat policy."""
    return step_bytes(compile_step(model_cfg, train_cfg, tx, abstract, shardings, mesh))


def is_out_of_memory(error: BaseException) -> bool:
    """An XLA compile or run that ran out of device memory (TPU: ``RESOURCE_EXHAUSTED`` at
    compile time, when the program's temporaries exceed HBM)."""
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


def device_peaks(device: Any) -> dict[str, Any] | None:
    """The datasheet peaks of a live accelerator (``targets.device_datasheet``), else
    ``None`` (a CPU, an unknown card)."""
    from pythoncoder import targets

    return targets.device_datasheet(device)


def step_roofline(compiled: Any, peaks: dict[str, Any]) -> dict[str, Any] | None:
    """FLOPs and HBM bytes of a compiled step (``pythoncoder.hlo_cost``: loop bodies per
    trip, the kernels by their declared cost) and the roofline bound they give against
    ``peaks``: ``{"flops", "hbm_bytes", "compute_s", "memory_s", "bound_s", "bound"}``,
    ``bound`` naming the limit ("compute" or "memory"); ``None`` where the compiler left a
    loop's trip count out."""
    from pythoncoder import hlo_cost

    cost = hlo_cost.analyse(compiled.as_text())
    if cost["unknown_trip_counts"]:
        return None
    from pythoncoder.train.accounting import Roofline

    roof = Roofline.of(cost["flops"], cost["bytes accessed"], peaks)
    return {**dataclasses.asdict(roof), "bound_s": roof.bound_s, "bound": roof.bound}


def step_bound(compiled: Any, peaks: dict[str, Any]) -> float | None:
    """The roofline bound of a compiled step, ``max(FLOPs / peak, HBM bytes / bandwidth)``
    (``step_roofline``), or ``None`` where a loop's trip count is unknown."""
    roofline = step_roofline(compiled, peaks)
    return None if roofline is None else roofline["bound_s"]


def choose_remat(model_cfg: ModelConfig, train_cfg: TrainConfig, tx: Any, abstract: Any,
                 shardings: Any, mesh: Any, *, budget_bytes: int | None = None,
                 limit_bytes: int | None = None, headroom: float = HEADROOM,
                 peaks: dict[str, Any] | None = None, log=print) -> dict[str, Any]:
    """Resolve ``remat_policy="auto"``: ``{"policy", "chosen_by", "budget_bytes",
    "compiled_bytes", "bound_s", "compiled"}``.

    With the device's peaks (``peaks``, else ``device_peaks`` of the mesh's first device)
    every policy is compiled and the one with the smallest roofline bound (``step_bound``)
    among those within the budget is taken (``chosen_by: "bound"``; a tie goes to the
    less recomputation): keeping every activation can move more bytes than recomputing
    them, as on an H100 at 1b (accumulation 1), where ``none`` fits but its step is bound
    at 0.174 s against 0.146 s for ``dots``.  Without peaks (a CPU) the first policy of
    ``REMAT_ORDER`` within the budget is taken (``chosen_by: "memory"``).

    ``compiled_bytes`` and ``bound_s`` hold each policy tried (``None`` for one the
    compiler refused as out of memory, or whose bound is unknown), ``compiled`` the chosen
    policy's compiled step (``compile_step``) for the loop to run instead of compiling it
    again, or ``None``.

    The one chooser: ``train`` calls it on its live mesh, ``pythoncoder memory`` on a
    one-device mesh of the local backend or of a target compiled for without it, whose
    datasheet memory and peaks it passes (a deviceless device reports none).
    ``budget_bytes`` defaults to ``headroom`` x ``limit_bytes``, else x
    ``device_memory_bytes`` of the mesh's first device; with no figure at all (an unknown
    backend) the answer is ``full``."""
    if budget_bytes is None:
        here = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
        limit = limit_bytes or device_memory_bytes(mesh.devices.flat[0], sharing=len(here))
        budget_bytes = int(limit * headroom) if limit else None
        if jax.process_count() > 1:  # every process must compile the same program
            from jax.experimental import multihost_utils

            mine = np.int64(budget_bytes if budget_bytes is not None else -1)
            every = np.asarray(multihost_utils.process_allgather(mine)).ravel()
            budget_bytes = None if (every < 0).any() else int(every.min())
    if budget_bytes is None:
        log("remat auto: the device reports no memory size; using full")
        return {"policy": "full", "chosen_by": "default", "budget_bytes": None,
                "compiled_bytes": {}, "bound_s": {}, "compiled": None}
    if peaks is None:
        peaks = device_peaks(mesh.devices.flat[0])
    if peaks is None:
        log(f"remat auto: no datasheet peaks for {mesh.devices.flat[0].device_kind}; "
            f"taking the least recomputation that fits")
    sizes: dict[str, int | None] = {}
    bounds: dict[str, float | None] = {}
    fitting: dict[str, Any] = {}  # policy -> its compiled step
    for policy in REMAT_ORDER:
        t0 = time.perf_counter()
        try:
            compiled = compile_step(model_cfg.replace(remat_policy=policy), train_cfg, tx,
                                    abstract, shardings, mesh)
            sizes[policy] = step_bytes(compiled)
        except Exception as e:  # noqa: BLE001 - XLA raises its runtime error type
            if not is_out_of_memory(e):
                raise
            # the TPU compiler refuses a program larger than HBM at compile time
            sizes[policy] = None
            log(f"remat auto: {policy} does not fit: {str(e).splitlines()[0][:300]}")
            continue
        fits = sizes[policy] <= budget_bytes
        bound = ""
        if peaks is not None:
            bounds[policy] = step_bound(compiled, peaks)
            bound = (f", bound {bounds[policy]:.3f} s/step" if bounds[policy] is not None
                     else ", bound unknown")
        log(f"remat auto: {policy} needs {sizes[policy] / GIB:.2f} GiB per device "
            f"({'fits' if fits else 'over'} {budget_bytes / GIB:.2f} GiB{bound}; compiled "
            f"in {time.perf_counter() - t0:.1f} s)")
        if fits:
            fitting[policy] = compiled
            if peaks is None:
                break  # by memory alone: the least recomputation that fits
    if fitting:
        known = [p for p in fitting if bounds.get(p) is not None]
        if peaks is not None and known:
            policy, by = min(known, key=lambda p: (bounds[p], REMAT_ORDER.index(p))), "bound"
        else:
            policy, by = next(iter(fitting)), "memory"
        if by == "bound":
            log(f"remat auto: {policy}, the smallest bound of the policies that fit")
        return {"policy": policy, "chosen_by": by, "budget_bytes": budget_bytes,
                "compiled_bytes": sizes, "bound_s": bounds, "compiled": fitting[policy]}
    log(f"remat auto: no policy fits {budget_bytes / GIB:.2f} GiB per device; using full, "
        f"the least memory (if the step does not fit, lower micro_batch or seq_len, or add "
        f"devices)")
    return {"policy": "full", "chosen_by": "memory", "budget_bytes": budget_bytes,
            "compiled_bytes": sizes, "bound_s": bounds,
            "compiled": compiled if sizes.get("full") is not None else None}
