"""Every fused kernel of the model, declared once, without importing JAX.

An entry says what the rest of the project needs to know about a kernel family: the name a
config selects it by, the seam it replaces (``attention``: ``ModelConfig.attention_impl``;
``loss``: the loss statistics' ``stats``), the platforms ``auto`` takes it on, and the names
its ``pallas_call`` s carry (each declares its cost under that name, which is how
``pythoncoder.hlo_cost`` counts it, and what a compiled program shows).
The config's choices, the dispatch's ``auto``, the memory report's "which attention ran" and
the kernels' own call names all read it.  Adding a kernel is its module, one entry here
and, for attention, its callables in ``model/attention.ATTENTION_REGISTRY`` under the
same name (a unit test holds the two equal).
"""

from __future__ import annotations

import dataclasses

GPU_PLATFORMS = ("gpu", "cuda", "rocm")


@dataclasses.dataclass(frozen=True)
class KernelEntry:
    name: str  # what a config selects it by
    seam: str  # "attention" or "loss"
    auto_on: tuple[str, ...]  # platforms where "auto" takes it
    calls: tuple[str, ...]  # its pallas_calls' names, as compiled programs carry them


KERNELS: tuple[KernelEntry, ...] = (
    KernelEntry("pallas", "attention", GPU_PLATFORMS + ("tpu",),  # kernels/diff_*.py
                ("diff_attention_fwd", "diff_attention_bwd_q", "diff_attention_bwd_kv",
                 "diff_attention_decode")),
    KernelEntry("pallas", "loss", ("tpu",), ("ce_stats",)),  # kernels/ce_stats.py
)


def entries(seam: str) -> tuple[KernelEntry, ...]:
    return tuple(k for k in KERNELS if k.seam == seam)


def entry(seam: str, name: str) -> KernelEntry:
    for k in entries(seam):
        if k.name == name:
            return k
    raise KeyError(f"no {seam} kernel named {name!r}")


def auto_choice(seam: str, platform: str) -> str | None:
    """The kernel ``auto`` takes for ``seam`` on ``platform``, else ``None`` (the reference
    / the XLA path)."""
    return next((k.name for k in entries(seam) if platform in k.auto_on), None)


def found_in_program(seam: str, hlo_text: str) -> str | None:
    """The kernel of ``seam`` whose calls a compiled program holds, else ``None``."""
    return next((k.name for k in entries(seam) if any(c in hlo_text for c in k.calls)), None)
