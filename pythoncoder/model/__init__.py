"""Diff-Llama-MTP model: config presets, layers, attention, loss, parameter counting."""

from pythoncoder.model.attention import KVCache
from pythoncoder.model.config import PRESETS, ConfigError, ModelConfig, lambda_init
from pythoncoder.model.loss import LossParts, lm_loss
from pythoncoder.model.params import model_info, param_breakdown, param_count
from pythoncoder.model.transformer import PythonCoder, abstract_model, build_model

__all__ = [
    "PRESETS", "ConfigError", "KVCache", "LossParts", "ModelConfig", "PythonCoder",
    "abstract_model", "build_model", "lambda_init", "lm_loss", "model_info", "param_breakdown",
    "param_count",
]
