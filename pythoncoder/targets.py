"""Accelerator targets the project compiles for without having one attached.

One place for what the compilers and the roofline need to know about each named target:

* NVIDIA GPUs (``h100``, ``a100``, ``l4``) as XLA ``gpu_target_config`` text protos, built
  from one template and each card's values.  ``topology_devices("h100")`` (or any other
  description, ``--target-config FILE``) gives a deviceless GPU device that ``jax.jit``
  compiles for with XLA's own GPU compiler (Triton and ptxas from the ``jax-cuda12-plugin``
  and ``nvidia-cuda-nvcc-cu12`` wheels; no GPU, no driver).
* TPU ``v6e-1`` through libtpu's topology (``jax[tpu]``).
* Datasheet peaks (dense bf16 FLOP/s, HBM bandwidth and size) for the roofline bound of
  ``pythoncoder memory``.
* ``gpu_limits(device)``: the limits the Pallas kernels are sized from (shared memory per
  block, opt-in, and compute capability), from a description registered here (by its
  device kind) or else from a table keyed by compute capability.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from typing import Any


@dataclasses.dataclass(frozen=True)
class GpuLimits:
    """What kernel sizing reads: compute capability and shared memory per block (opt-in)."""

    compute_capability: tuple[int, int]
    smem_per_block: int
    device_kind: str = ""


@dataclasses.dataclass(frozen=True)
class Target:
    """A device the project knows: its datasheet figures and, for a target it compiles
    for without the device, how (``gpu``: the card's gpu_target_config values;
    ``tpu_topology``: libtpu's topology arguments).  The one home of device facts: peaks,
    bandwidth and memory here; shared memory and compute capability in ``gpu``."""

    name: str
    platform: str  # "cuda" or "tpu"
    device_kind: str  # as jax reports it; a live device matches it or starts with it
    peak_bf16_flops: float  # dense, per chip
    hbm_bandwidth: float  # bytes/s
    hbm_bytes: int
    gpu: dict[str, Any] | None = None  # the per-card values of the gpu_target_config
    tpu_topology: dict[str, Any] | None = None  # jax.experimental.topologies arguments

    @property
    def compiles(self) -> bool:
        """Whether ``topology_devices`` can compile for it without the device."""
        return self.gpu is not None or self.tpu_topology is not None


# Per-card values of the gpu_target_config template (CUDA device attributes as
# cudaGetDeviceProperties reports them for the card; bandwidth and peaks from the datasheets).
_H100 = dict(core_count=132, fpus_per_core=128, threads_per_core_limit=2048,
             shared_memory_per_core=233472, shared_memory_per_block_optin=232448,
             memory_bandwidth=3352320000000, l2_cache_size=52428800, clock_rate_ghz=1.98,
             device_memory_size=84929347584, cc=(9, 0))
_A100 = dict(core_count=108, fpus_per_core=64, threads_per_core_limit=2048,
             shared_memory_per_core=167936, shared_memory_per_block_optin=166912,
             memory_bandwidth=2039000000000, l2_cache_size=41943040, clock_rate_ghz=1.41,
             device_memory_size=85198045184, cc=(8, 0))
_L4 = dict(core_count=58, fpus_per_core=128, threads_per_core_limit=1536,
           shared_memory_per_core=102400, shared_memory_per_block_optin=101376,
           memory_bandwidth=300000000000, l2_cache_size=50331648, clock_rate_ghz=2.04,
           device_memory_size=24152899584, cc=(8, 9))
GIB = 1024**3

TARGETS: dict[str, Target] = {t.name: t for t in (
    # compiled for ahead of time (``--topology``)
    Target("h100", "cuda", "NVIDIA H100 80GB HBM3", 989.4e12, 3.35e12,
           _H100["device_memory_size"], gpu=_H100),
    Target("a100", "cuda", "NVIDIA A100-SXM4-80GB", 312e12, 2.039e12,
           _A100["device_memory_size"], gpu=_A100),
    Target("l4", "cuda", "NVIDIA L4", 121e12, 300e9, _L4["device_memory_size"], gpu=_L4),
    # libtpu topology arguments: MaxText's accelerator_to_spec_map values
    Target("v6e-1", "tpu", "TPU v6 lite", 918e12, 1.64e12, 32 * GIB,
           tpu_topology=dict(platform="tpu", topology_name="v6e:1x1",
                             chip_config_name="default", chips_per_host_bounds=(1, 1, 1),
                             num_slices=1, wrap=(False, False, False))),
    # datasheet only: the roofline and MFU of a run on one of them
    Target("h200", "cuda", "NVIDIA H200", 989.4e12, 4.8e12, 141 * 10**9),
    Target("h100-pcie", "cuda", "NVIDIA H100 PCIe", 756e12, 2.0e12, 80 * GIB),
    Target("a100-40gb", "cuda", "NVIDIA A100-SXM4-40GB", 312e12, 1.555e12, 40 * GIB),
    Target("v5p", "tpu", "TPU v5p", 459e12, 2.765e12, 95 * GIB),
    Target("v5e", "tpu", "TPU v5 lite", 197e12, 819e9, 16 * GIB),
    Target("v4", "tpu", "TPU v4", 275e12, 1.2e12, 32 * GIB),
)}
# what the CLI's --topology offers, and the GPUs among them
COMPILE_TARGETS = tuple(n for n, t in TARGETS.items() if t.compiles)
GPU_TARGETS = tuple(n for n in COMPILE_TARGETS if TARGETS[n].gpu is not None)
# the chip the design is sized for (32 GB of HBM)
DESIGN_TARGET = "v6e-1"

# Shared memory per block (opt-in) by compute capability, for a live GPU (whose device object
# gives its compute capability, not its limits) or a description not registered here; the
# named cards' own values for their capabilities.
SMEM_BY_CC = {(7, 0): 98304, (7, 5): 65536, (8, 6): 101376, (8, 7): 166912, (10, 0): 232448,
              (12, 0): 101376, **{t.gpu["cc"]: t.gpu["shared_memory_per_block_optin"]
                                  for t in TARGETS.values() if t.gpu is not None}}
# Dense bf16 tensor-core FLOPs (fp32 accumulation) per SM per clock, for the peak of an
# unnamed description, by the data-centre datasheets: A100 312 TF = 108 SMs x 1.41 GHz x
# 2048; A10 125 TF = 72 x 1.695 x 1024 (sm_86); L4 121 TF = 58 x 2.04 x 1024 (sm_89); H100
# SXM 989.4 TF = 132 x 1.83 x 4096.  GeForce cards of the same compute capability run
# fp32-accumulating dots at half their rate.
BF16_FLOPS_PER_SM_CLOCK = {7: 1024, 8: 2048, (8, 6): 1024, (8, 9): 1024, 9: 4096, 10: 8192,
                           12: 1024}

_TEMPLATE = """gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {shared_memory_per_core}
  threads_per_core_limit: {threads_per_core_limit}
  core_count: {core_count}
  fpus_per_core: {fpus_per_core}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {memory_bandwidth}
  l2_cache_size: {l2_cache_size}
  clock_rate_ghz: {clock_rate_ghz}
  device_memory_size: {device_memory_size}
  shared_memory_per_block_optin: {shared_memory_per_block_optin}
  cuda_compute_capability {{
    major: {major}
    minor: {minor}
  }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
runtime_version {{
  major: 12
  minor: 8
  patch: 0
}}
platform_name: "CUDA"
dnn_version_info {{
  major: 9
  minor: 7
}}
device_description_str: "{device_kind}"
"""


def gpu_target_config(name: str, **overrides: Any) -> str:
    """The XLA ``gpu_target_config`` text proto of a named GPU target; ``overrides``
    replace template values (e.g. ``shared_memory_per_block_optin``, ``cc``,
    ``device_kind``) to describe another card."""
    t = TARGETS[name]
    if t.gpu is None:
        raise ValueError(f"{name} is not a GPU target")
    values = {**t.gpu, "device_kind": t.device_kind, **overrides}
    major, minor = values.pop("cc")
    return _TEMPLATE.format(major=major, minor=minor, **values)


def _field(text: str, name: str, cast=int, default=None):
    m = re.search(rf"\b{name}\s*:\s*\"?([^\s\"]+)\"?", text)
    return cast(m.group(1)) if m else default


def parse_target_config(text: str) -> dict[str, Any]:
    """The fields of a ``gpu_target_config`` text proto that sizing and the roofline read.
    Raises ``ValueError`` naming what is missing."""
    cc = re.search(r"cuda_compute_capability\s*\{([^}]*)\}", text)
    kind = re.search(r'device_description_str\s*:\s*"([^"]*)"', text)
    smem = _field(text, "shared_memory_per_block_optin")
    if cc is None or smem is None or kind is None:
        raise ValueError("not a gpu_target_config: needs gpu_device_info { "
                         "shared_memory_per_block_optin, cuda_compute_capability } and "
                         "device_description_str")
    return {
        "device_kind": kind.group(1),
        "compute_capability": (_field(cc.group(1), "major", default=0),
                               _field(cc.group(1), "minor", default=0)),
        "smem_per_block": smem,
        "core_count": _field(text, "core_count"),
        "clock_rate_ghz": _field(text, "clock_rate_ghz", float),
        "memory_bandwidth": _field(text, "memory_bandwidth", float),
        "device_memory_size": _field(text, "device_memory_size"),
    }


# device kind -> limits of the descriptions topology_devices() compiled for
_REGISTERED: dict[str, GpuLimits] = {}


def _cuda_topology(config_text: str):
    """A deviceless CUDA topology of one device from a ``gpu_target_config``.

    The CUDA plugin registers its topology only if it passes its driver check at start-up,
    which fails on a host without a GPU unless JAX_PLATFORMS=cpu is set.  If it did not
    register, it is registered here for compilation only (the driver check skipped)."""
    from jax._src import xla_bridge
    from jax.experimental import topologies

    def make():
        return topologies.get_topology_desc("gpu", "cuda", target_config=config_text,
                                            topology="1x1x1")

    try:
        return make()
    except NotImplementedError:
        pass
    try:
        import jax_plugins.xla_cuda12 as plugin
    except ImportError as e:
        raise RuntimeError("compiling for a GPU target needs the CUDA plugin and ptxas: "
                           "pip install -e '.[targets]' (jax-cuda12-plugin, "
                           "jax-cuda12-pjrt matching jax, nvidia-cuda-nvcc-cu12)") from e
    if "cuda" not in xla_bridge._backend_factories:
        saved = os.environ.get("JAX_SKIP_CUDA_CONSTRAINTS_CHECK")
        os.environ["JAX_SKIP_CUDA_CONSTRAINTS_CHECK"] = "1"
        try:
            plugin.initialize()
        except Exception as e:  # noqa: BLE001 -- reported below with the caveat
            raise RuntimeError(
                f"the CUDA topology is not registered ({type(e).__name__}: {e}); on a host "
                "without a GPU run with JAX_PLATFORMS=cpu so the CUDA plugin's failed "
                "driver check does not keep it from registering") from e
        finally:
            if saved is None:
                os.environ.pop("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", None)
            else:
                os.environ["JAX_SKIP_CUDA_CONSTRAINTS_CHECK"] = saved
    try:
        return make()
    except NotImplementedError as e:
        raise RuntimeError(
            "the CUDA topology is not registered; on a host without a GPU run with "
            "JAX_PLATFORMS=cpu so the CUDA plugin's failed driver check does not keep it "
            "from registering") from e


def topology_devices(name: str | None = None, *, target_config: str | None = None) -> list:
    """Devices to compile for ahead of time on a host without them: a named target
    (``TARGETS``) or a GPU described by ``target_config`` (a gpu_target_config text proto).
    Raises ``ValueError`` for an unknown name or a bad description, ``RuntimeError`` when
    the compiler wheels are missing."""
    if target_config is None:
        if name not in TARGETS:
            raise ValueError(f"unknown topology {name!r}; known: {sorted(COMPILE_TARGETS)}")
        if not TARGETS[name].compiles:
            raise ValueError(f"{name} is a datasheet entry only: nothing describes how to "
                             f"compile for it; known: {sorted(COMPILE_TARGETS)}")
        if TARGETS[name].tpu_topology is not None:
            from jax.experimental import topologies

            # compiling touches no chip: let libtpu load beside another process's libtpu
            os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

            try:
                return list(topologies.get_topology_desc(**TARGETS[name].tpu_topology).devices)
            except Exception as e:  # no libtpu, or it refused the topology
                raise RuntimeError(f"cannot compile for {name} (needs libtpu: pip install "
                                   f"-e '.[targets]'): {type(e).__name__}: {e}") from e
        target_config = gpu_target_config(name)
    info = parse_target_config(target_config)
    devices = list(_cuda_topology(target_config).devices)
    _REGISTERED[devices[0].device_kind] = GpuLimits(info["compute_capability"],
                                                    info["smem_per_block"],
                                                    devices[0].device_kind)
    return devices


# What XLA's GPU autotuner says when it cannot pick a Triton GEMM tiling without a device
# (jax >= 0.11: the deviceless autotuner has no default config for Triton GEMM fusions).
_DEVICELESS_GEMM_REFUSALS = ("No supported config found",
                             "cannot enumerate configs in deviceless mode")


def compile_for(lowered, device):
    """``lowered.compile()`` for ``device``, a real or a deviceless one.

    A deviceless GPU compile on jax >= 0.11 can fail where XLA would autotune a Triton GEMM
    fusion on the device ("No supported config found ... deviceless mode").  There the
    matmuls are compiled as cuBLAS calls instead (``xla_gpu_enable_triton_gemm=False``),
    with a warning: the same matmuls (the same FLOPs), but memory and the fusions around
    them are those of the cuBLAS program, which may differ from what the device would
    autotune.  ``gemm_backend`` reads which one a compiled program uses.  Any other error
    is raised as is."""
    try:
        return lowered.compile()
    except Exception as e:  # noqa: BLE001 -- re-raised unless it is the refusal above
        if getattr(device, "platform", "") not in ("gpu", "cuda") or not any(
                s in str(e) for s in _DEVICELESS_GEMM_REFUSALS):
            raise
    import jax

    warnings.warn("XLA cannot autotune Triton GEMM fusions without a device (jax "
                  f"{jax.__version__}): compiled the matmuls as cuBLAS calls instead",
                  RuntimeWarning, stacklevel=2)
    return lowered.compile(compiler_options={"xla_gpu_enable_triton_gemm": False})


def gemm_backend(hlo_text: str) -> str | None:
    """Which GPU matmul code a compiled program calls: ``triton``, ``cublas``, both
    (``triton+cublas``), or None (no GPU matmul: a TPU or CPU program)."""
    marks = (("triton", r'"kind":"__triton_(?:nested_)?gemm'), ("cublas", r"__cublas\$"))
    found = [name for name, mark in marks if re.search(mark, hlo_text)]
    return "+".join(found) or None


def _compute_capability(device) -> tuple[int, int] | None:
    cc = getattr(device, "compute_capability", None)
    if not cc:
        return None
    major, _, minor = str(cc).partition(".")
    return int(major), int(minor or 0)


# What a GPU program is sized for when no GPU device is in sight (lowering for "cuda" on a
# CPU host): the smallest of the named cards, so it compiles on all of them.
FALLBACK_GPU = GpuLimits((8, 0), 101376, "unknown GPU (sized for 99 KiB)")


def gpu_limits(device=None) -> GpuLimits:
    """The sizing limits of ``device`` (default: the ``jax.default_device`` in force, else
    the first local device): a description compiled through ``topology_devices`` by its
    device kind, else ``SMEM_BY_CC`` by compute capability, else ``FALLBACK_GPU``."""
    import jax

    if device is None:
        device = jax.config.jax_default_device
        if device is None or isinstance(device, str):
            device = jax.devices()[0]
    if getattr(device, "platform", None) != "gpu":
        return FALLBACK_GPU
    kind = getattr(device, "device_kind", "")
    if kind in _REGISTERED:
        return _REGISTERED[kind]
    cc = _compute_capability(device)
    if cc in SMEM_BY_CC:
        return GpuLimits(cc, SMEM_BY_CC[cc], kind)
    if cc is not None:  # an unlisted minor: the closest lower one of the same major
        same = sorted(k for k in SMEM_BY_CC if k[0] == cc[0] and k <= cc)
        if same:
            return GpuLimits(cc, SMEM_BY_CC[same[-1]], kind)
    return FALLBACK_GPU


def datasheet(name: str | None = None, *, target_config: str | None = None) -> dict[str, Any]:
    """Peak dense bf16 FLOP/s, HBM bandwidth and bytes of a named target, or estimated from
    a description (SMs x clock x the per-SM rate of its compute capability; its own
    memory bandwidth and size)."""
    if target_config is None:
        t = TARGETS[name]
        return {"peak_bf16_flops": t.peak_bf16_flops, "hbm_bandwidth": t.hbm_bandwidth,
                "hbm_bytes": t.hbm_bytes, "source": f"{t.device_kind} datasheet"}
    info = parse_target_config(target_config)
    cc = info["compute_capability"]
    rate = BF16_FLOPS_PER_SM_CLOCK.get(cc, BF16_FLOPS_PER_SM_CLOCK.get(cc[0]))
    missing = [k for k in ("core_count", "clock_rate_ghz", "memory_bandwidth",
                           "device_memory_size") if info[k] is None]
    if missing or rate is None:
        raise ValueError(f"{info['device_kind']}: the description lacks "
                         f"{', '.join(missing) or 'a known compute capability'} for a peak")
    return {"peak_bf16_flops": info["core_count"] * info["clock_rate_ghz"] * 1e9 * rate,
            "hbm_bandwidth": info["memory_bandwidth"], "hbm_bytes": info["device_memory_size"],
            "source": f"{info['device_kind']} description (SMs x clock x sm_{cc[0]}{cc[1]} "
                      "tensor rate)"}


def device_datasheet(device: Any) -> dict[str, Any] | None:
    """The datasheet figures (``datasheet``) of a live device whose kind is one of
    ``TARGETS`` (equal to it or starting with it), else ``None`` (a CPU, an unknown card)."""
    kind = getattr(device, "device_kind", "") or ""
    for t in TARGETS.values():
        if kind and (kind == t.device_kind or kind.startswith(t.device_kind)):
            return datasheet(t.name)
    return None
