"""Package names that load their module on first use (PEP 562).

``pythoncoder.model`` and ``pythoncoder.infer`` offer their main names at the package
level; loading those eagerly would import JAX with any sub-module, the light ones the
command line reads to check its arguments included (``model.config``, ``infer.stops``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, homes: Mapping[str, str]
               ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``homes`` maps each name to the
    sub-module defining it; any other sub-module loads when first named too."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(f"{package}.{homes[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(homes))

    return __getattr__, __dir__
