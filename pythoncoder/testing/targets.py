"""Deviceless target devices for tests: a named target's (``pythoncoder.targets``) or a GPU
description's, or a pytest skip that names the missing compiler wheel."""

from __future__ import annotations

import pytest

from pythoncoder import targets


def target_device(name: str | None = None, *, target_config: str | None = None):
    """The first device of a target to compile for; skips (with the reason) when the
    target's compiler is not installed (``pip install -e '.[targets]'``)."""
    try:
        return targets.topology_devices(name, target_config=target_config)[0]
    except RuntimeError as e:
        pytest.skip(f"no compiler for {name or 'the GPU description'}: {str(e).splitlines()[0]}")
