"""Unit tests share the conformance suite's precision and determinism policy (NUM-02)."""

from pythoncoder.testing.precision import apply_test_policy

POLICY = apply_test_policy()
