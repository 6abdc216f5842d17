"""The installed versions of the stack PythonCoder runs on (printed by CI's sessions,
recorded in the benchmarks' report): ``python -m pythoncoder.utils.versions``."""

from __future__ import annotations

import platform
from importlib import metadata

# The distributions whose releases change what the suites and the figures see.
STACK = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy",
         "tokenizers", "pytest", "hypothesis", "pytest-benchmark")


def stack_versions(names: tuple[str, ...] = STACK) -> dict[str, str]:
    """``{"python": ..., name: version}`` for each of ``names`` that is installed."""
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def main() -> None:
    print("versions: " + ", ".join(f"{k} {v}" for k, v in stack_versions().items()))


if __name__ == "__main__":
    main()
