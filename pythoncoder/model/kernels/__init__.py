"""Fused kernels behind the seams in ``pythoncoder.model`` (the references stay there)."""
