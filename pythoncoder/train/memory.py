"""TRAIN-07: compiled memory of the train step from abstract inputs (nothing allocated).

The step compiled here is the real one: forward and backward of one micro-batch inside
the accumulation scan, the fp32 gradient-accumulation buffer, the AdamW state and the
update, with the train state donated.  ``jax.jit(...).lower(...).compile()`` runs on the
default backend (the CPU compiler on a CPU host); the report names the compiler.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pythoncoder.model import ModelConfig, abstract_model
from pythoncoder.model.kernels import registry as kernel_registry
from pythoncoder.targets import GIB
from pythoncoder.train.accounting import CompiledMemory, Roofline, model_flops_per_token
from pythoncoder.train.config import TrainConfig
from pythoncoder.train.optimizer import make_optimizer
from pythoncoder.train.step import TrainState, make_train_step


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
    from pythoncoder.targets import compile_for

    with jax.default_device(mesh.devices.flat[0]):
        return compile_for(step.lower(state, batch, key), mesh.devices.flat[0])


@dataclasses.dataclass(frozen=True)
class StepTarget:
    """What the train step is compiled for: the optimizer, the abstract state and its
    shardings on a one-device mesh of the local backend or of a target without the
    target (``topology`` / ``target_config``), and the device's datasheet (``sheet``:
    the target's, the local accelerator's, ``None`` for a CPU)."""

    tx: Any
    state: Any
    shardings: Any
    mesh: Any
    topology: str | None = None
    target_config: str | None = None
    sheet: dict[str, Any] | None = None

    @property
    def aot(self) -> bool:
        return self.topology is not None or self.target_config is not None

    def limit_bytes(self) -> int | None:
        """The target's memory by its datasheet (a deviceless device reports none)."""
        return int(self.sheet["hbm_bytes"]) if self.aot else None

    def peaks(self) -> dict[str, Any] | None:
        """The target's datasheet peaks (``None`` for the local backend: the chooser then
        reads the live device's)."""
        return self.sheet if self.aot else None


def step_target(model_cfg: ModelConfig, train_cfg: TrainConfig, *,
                topology: str | None = None, target_config: str | None = None) -> StepTarget:
    """The inputs ``compile_train_step`` compiles for: ``topology`` (one of
    ``targets.COMPILE_TARGETS``) or ``target_config`` (a GPU's gpu_target_config text proto)
    through the target's own compiler, else the local backend's first device."""
    from pythoncoder import targets
    from pythoncoder.train.sharding import make_mesh, state_shardings

    tx, _ = make_optimizer(train_cfg, total_steps=10 * train_cfg.warmup_steps + 10)
    state = abstract_train_state(abstract_model(model_cfg), tx)
    aot = topology is not None or target_config is not None
    devices = (targets.topology_devices(topology, target_config=target_config) if aot
               else jax.devices()[:1])
    mesh = make_mesh(1, len(devices), devices)
    sheet = (targets.datasheet(topology, target_config=target_config) if aot
             else targets.device_datasheet(devices[0]))
    return StepTarget(tx, state, state_shardings(state, mesh), mesh, topology, target_config,
                      sheet)


def train_step_memory(model_cfg: ModelConfig, train_cfg: TrainConfig, *,
                      topology: str | None = None, target_config: str | None = None,
                      costs: bool = True, top: int = 12) -> MemoryReport:
    """Compile the train step abstractly and return its memory analysis in bytes.

    With ``topology`` or ``target_config`` (``step_target``) the target's own compiler
    (libtpu; XLA's GPU compiler with Triton and ptxas) compiles for it from a host without
    it; ``memory_report`` says what the report holds."""
    target = step_target(model_cfg, train_cfg, topology=topology, target_config=target_config)
    compiled = compile_train_step(model_cfg, train_cfg, target.tx, target.state,
                                  target.shardings, target.mesh)
    return memory_report(compiled, model_cfg, train_cfg, target, costs=costs, top=top)


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """What ``pythoncoder memory`` reports: the compiled train step's memory per device
    against the memory it must fit and, for a target, its FLOPs, HBM bytes and roofline
    bound (``step_cost``: ``step_roofline``'s fields).  ``to_json`` is the flat form the
    command prints with ``--json``."""

    preset: str
    target: str | None  # the target compiled for; None: the local backend
    compiler: str
    micro_batch: int
    seq_len: int
    accum_steps: int
    remat_policy: str
    attention_impl: str  # what the compiled program runs (auto may fall back)
    gemm: str | None  # GPU matmul code: Triton GEMM fusions or cuBLAS; None off GPUs
    compute_dtype: str
    memory: CompiledMemory
    train_state_bytes: int
    limit_bytes: int  # the memory it must fit ...
    limit_of: str  # ... whose: the target's, the local accelerator's, or the design chip's
    step_cost: dict[str, Any] | None = None
    remat_auto: dict[str, Any] | None = None

    @property
    def total_bytes(self) -> int:
        return self.memory.total_bytes

    @property
    def fits_device(self) -> bool:
        return self.total_bytes <= self.limit_bytes

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("memory", "step_cost", "remat_auto")}
        out.update(dataclasses.asdict(self.memory), total_bytes=self.total_bytes,
                   total_gib=self.total_bytes / GIB, fits_device=self.fits_device)
        out.update(self.step_cost or {})
        if self.remat_auto is not None:
            out["remat_auto"] = self.remat_auto
        return out


def memory_report(compiled: Any, model_cfg: ModelConfig, train_cfg: TrainConfig,
                  target: StepTarget, *, costs: bool = True, top: int = 12) -> MemoryReport:
    """The memory analysis of the train step ``compiled`` for ``target``, in bytes.  With
    ``costs`` (for a target) the report adds the step's FLOPs and HBM bytes (loop bodies
    per trip, Pallas kernels by their declared cost: ``pythoncoder.hlo_cost``), the
    roofline bound they give against the target's peaks, and the ``top`` instructions by
    HBM bytes (``hbm_top``)."""
    from pythoncoder import targets

    devices = list(target.mesh.devices.flat)
    topology, target_config, aot = target.topology, target.target_config, target.aot
    text = compiled.as_text()
    name = topology or (devices[0].device_kind if target_config else None)
    # the memory it must fit: the target's, the local accelerator's, else (a CPU) the chip
    # the design is sized for
    sheet = target.sheet
    limit_of = name if aot else (devices[0].device_kind if sheet else targets.DESIGN_TARGET)
    return MemoryReport(
        preset=model_cfg.name,
        target=name,
        compiler=f"{devices[0].platform} ({devices[0].device_kind})"
                 + (f" ahead-of-time for {name}" if aot else ""),
        micro_batch=train_cfg.micro_batch,
        seq_len=train_cfg.seq_len,
        accum_steps=train_cfg.accum_steps,
        remat_policy=model_cfg.built_remat_policy,
        attention_impl=kernel_registry.found_in_program("attention", text) or "reference",
        gemm=targets.gemm_backend(text),
        compute_dtype=jnp.dtype(model_cfg.dtype()).name,
        memory=CompiledMemory.of(compiled),
        train_state_bytes=int(sum(x.size * x.dtype.itemsize
                                  for x in jax.tree.leaves(target.state))),
        limit_bytes=int((sheet or targets.datasheet(targets.DESIGN_TARGET))["hbm_bytes"]),
        limit_of=limit_of,
        step_cost=(step_roofline(text, sheet, model_cfg, train_cfg, top=top)
                   if aot and costs else None),
    )


def step_roofline(hlo_text: str, sheet: dict[str, Any], model_cfg: ModelConfig,
                  train_cfg: TrainConfig, *, top: int = 12) -> dict[str, Any]:
    """FLOPs and HBM bytes per step from the optimized HLO, and the roofline bound:
    ``max(FLOPs / peak, bytes / bandwidth)`` -- a lower bound on the step time of this
    (untuned) compile, not a prediction.  MFU ceiling: the model's own FLOPs
    (``model_flops_per_token``, no recomputation) over the peak, at the bound."""
    from pythoncoder import hlo_cost

    cost = hlo_cost.analyse(hlo_text)
    loops = [{"body": w["body"], "trips": w["trips"]} for w in cost["loops"]]
    if cost["unknown_trip_counts"]:  # a per-step figure would count those bodies once
        return {"flops_per_step": None, "hbm_bytes_per_step": None, "roofline_step_s": None,
                "roofline_bound": None,
                "roofline_tokens_per_s": None, "roofline_mfu": None, "loops": loops,
                "unknown_trip_counts": cost["unknown_trip_counts"],
                "cost_note": "the compiler left loop trip counts out of the optimized HLO; "
                             "no per-step FLOPs or bytes",
                "hbm_top": cost["rows"][:top]}
    flops, nbytes = cost["flops"], cost["bytes accessed"]
    roof = Roofline.of(flops, nbytes, sheet)
    step_s = roof.bound_s
    tokens = train_cfg.micro_batch * train_cfg.seq_len * train_cfg.accum_steps
    model_flops = model_flops_per_token(model_cfg, train_cfg.seq_len) * tokens
    return {
        "flops_per_step": flops,
        "transcendentals_per_step": cost["transcendentals"],
        "hbm_bytes_per_step": nbytes,
        "model_flops_per_step": model_flops,
        "peak_bf16_flops": sheet["peak_bf16_flops"],
        "hbm_bandwidth": sheet["hbm_bandwidth"],
        "peaks_source": sheet["source"],
        "roofline_compute_s": roof.compute_s,
        "roofline_memory_s": roof.memory_s,
        "roofline_step_s": step_s,
        # which limit the bound is: the matmul peak or the memory bandwidth
        "roofline_bound": roof.bound,
        "roofline_tokens_per_s": tokens / step_s if step_s else None,
        "roofline_mfu": model_flops / sheet["peak_bf16_flops"] / step_s if step_s else None,
        "loops": loops,
        "unknown_trip_counts": [],
        # Pallas calls with no declared cost: their FLOPs are missing from the figures
        "uncosted_kernels": cost["uncosted_kernels"],
        "hbm_top": cost["rows"][:top],
    }
