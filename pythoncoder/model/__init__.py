"""Diff-Llama-MTP model: config presets, layers, attention, loss, parameter counting.

The names below load their module (and JAX) on first use, so importing
``pythoncoder.model.config`` alone, as the command line does to check its arguments,
does not import JAX.
"""

from pythoncoder.utils.lazy import lazy_names

# name -> the module that defines it
_HOMES = {
    "KVCache": "attention",
    "PRESETS": "config", "ConfigError": "config", "ModelConfig": "config",
    "lambda_init": "config",
    "LossParts": "loss", "lm_loss": "loss",
    "model_info": "params", "param_breakdown": "params", "param_count": "params",
    "PythonCoder": "transformer", "abstract_model": "transformer", "build_model": "transformer",
}
__all__ = sorted(_HOMES)
__getattr__, __dir__ = lazy_names(__name__, _HOMES)
