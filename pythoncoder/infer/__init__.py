"""Inference: KV-cache generation, sampling, MTP self-speculative decoding (INF-01..04).

The names below load their module (and JAX) on first use, so the command line's argument
checks (``pythoncoder.infer.commands``) run before JAX is imported.
"""

from pythoncoder.utils.lazy import lazy_names

# name -> the module that defines it
_HOMES = {
    "DecodeState": "engine", "Engine": "engine", "GenerationResult": "engine",
    "left_pad": "engine",
    "GREEDY": "sampling", "SamplingConfig": "sampling",
}
__all__ = sorted(_HOMES)
__getattr__, __dir__ = lazy_names(__name__, _HOMES)
