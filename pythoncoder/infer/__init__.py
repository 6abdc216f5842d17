"""Inference: KV-cache generation, sampling, MTP self-speculative decoding (INF-01..04)."""

from pythoncoder.infer.engine import DecodeState, Engine, GenerationResult, left_pad
from pythoncoder.infer.sampling import GREEDY, SamplingConfig

__all__ = ["GREEDY", "DecodeState", "Engine", "GenerationResult", "SamplingConfig", "left_pad"]
