"""Data: the Qwen2.5-Coder tokenizer, ``prepare`` (filter, tokenize, pack, shard) and the
grain loader.

Import the sub-modules directly: ``pythoncoder.data.tokenizer`` (no JAX),
``pythoncoder.data.prepare`` (no JAX) and ``pythoncoder.data.loader`` (grain).
"""
