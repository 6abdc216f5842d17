"""A persistent XLA compilation cache for the test suites.

Many tests build the same small model and train step again (a run, then its resume; the
reference and the kernel at the same shapes), and on a 2-core CPU compiling dominates
them.  JAX's persistent cache keys each executable by its HLO, compile options, backend and
jax/jaxlib versions, so an identical program compiled again is loaded instead; it never
changes what a test computes.  Both suites (conformance and tests) share one directory
under ``build/`` so the second reuses the first's work.

Set ``PYTHONCODER_TEST_COMPILE_CACHE=0`` to compile everything afresh, or to a directory to
put the cache there.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "PYTHONCODER_TEST_COMPILE_CACHE"
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "build" / "jax-compilation-cache"
# Programs that compile faster than this are not worth a disk round trip.
MIN_COMPILE_SECONDS = 0.2


def enable_test_compilation_cache() -> Path | None:
    """Point JAX at the suites' cache directory; return it (``None`` when switched off)."""
    import jax

    setting = os.environ.get(ENV, "")
    if setting == "0":
        return None
    path = Path(setting) if setting else DEFAULT_DIR
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
