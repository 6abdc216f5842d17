"""Moved to :mod:`pythoncoder.testing.models` (test fixtures live under ``testing/``)."""

from pythoncoder.testing.models import agreeable_model  # noqa: F401
