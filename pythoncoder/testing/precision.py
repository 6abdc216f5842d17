"""The test suite's precision and determinism policy (spec: NUM-02).

1. **Reference checks compare fp32 with float64 at full fp32 matmul precision.**  JAX's
   default matmul precision is backend-dependent: exact fp32 on CPU, TF32 (10-bit mantissa,
   ~1e-3 relative) on Ampere/Hopper GPUs, bf16 passes on TPU.  A tolerance that is right for
   fp32 rounding is then wrong by 100x on a GPU.  The suites set
   ``jax_default_matmul_precision = "highest"`` so that a reference check means the same on
   every backend; the bf16 production path is checked separately with bf16 tolerances
   (NUM-01), which do not depend on this setting.
2. **Exactness the design promises holds on every backend.**  Bitwise resume (TRAIN-05) and
   the other exact checks need deterministic reductions; XLA on GPU uses atomics unless asked
   not to, so the suites add XLA's deterministic-ops flag when a CUDA backend is installed.
   Comparisons that reorder fp32 sums by design (remat vs none, accumulated vs one big batch)
   are not exact anywhere and use a tolerance relative to each tensor's size.

``apply_test_policy()`` is called by ``conformance/conftest.py`` and ``tests/conftest.py``
before any backend starts.  Benchmarks do not call it: they measure the default precision.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import subprocess
import sys

REFERENCE_PRECISION = "highest"
# Tried in order; the first that this jaxlib's XLA accepts is used (an unknown flag in
# XLA_FLAGS aborts the process, so each is probed in a subprocess first).
GPU_DETERMINISM_FLAGS = ("--xla_gpu_deterministic_ops=true",
                         "--xla_gpu_exclude_nondeterministic_ops=true")


def cuda_backend_installed() -> bool:
    """True when a jax CUDA plugin is installed (without starting any backend)."""
    names = {(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()}
    return any(n.startswith(("jax-cuda", "jax_cuda")) for n in names)


@functools.cache
def accepted_xla_flag(candidates: tuple[str, ...] = GPU_DETERMINISM_FLAGS) -> str | None:
    """The first flag of ``candidates`` that XLA accepts in this environment, or None."""
    for flag in candidates:
        env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()}
        probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                               capture_output=True, timeout=300)
        if probe.returncode == 0:
            return flag
    return None


def apply_test_policy() -> dict[str, str | None]:
    """Set the suite's policy for this process; returns what was set (for the report)."""
    import jax

    jax.config.update("jax_default_matmul_precision", REFERENCE_PRECISION)
    flag = None
    if cuda_backend_installed():
        current = os.environ.get("XLA_FLAGS", "")
        flag = next((f for f in GPU_DETERMINISM_FLAGS if f.split("=")[0] in current), None)
        if flag is None:
            flag = accepted_xla_flag()
            if flag is not None:
                os.environ["XLA_FLAGS"] = f"{current} {flag}".strip()
    return {"matmul_precision": REFERENCE_PRECISION, "gpu_determinism_flag": flag}
