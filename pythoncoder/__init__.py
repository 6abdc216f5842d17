"""PythonCoder: a 1.08B-parameter Python code LLM (Diff-Llama-MTP) in JAX + Flax NNX."""

__version__ = "0.1.0"
