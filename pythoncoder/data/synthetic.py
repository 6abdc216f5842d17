"""Moved to :mod:`pythoncoder.testing.corpus` (test fixtures live under ``testing/``)."""

from pythoncoder.testing.corpus import python_source, write_corpus  # noqa: F401
