"""Unit tests share the conformance suite's precision and determinism policy (NUM-02)."""

from pythoncoder.testing.compile_cache import enable_test_compilation_cache
from pythoncoder.testing.precision import apply_test_policy

POLICY = apply_test_policy()
COMPILE_CACHE = enable_test_compilation_cache()
