"""Small synthetic Python corpora for tests: valid, distinct, deterministic files."""

from __future__ import annotations

import random
from pathlib import Path

_WORDS = ("alpha", "beta", "gamma", "delta", "total", "count", "items", "value", "key",
          "index", "result", "buffer", "node", "left", "right", "name", "size", "scale")
_OPS = ("+", "-", "*", "//", "%")


def _function(rng: random.Random, name: str) -> str:
    args = rng.sample(_WORDS, rng.randint(1, 3))
    lines = [f"def {name}({', '.join(args)}):", f'    """Compute {name} from {args[0]}."""']
    acc = args[0]
    for _ in range(rng.randint(1, 5)):
        var = rng.choice(_WORDS) + str(rng.randint(0, 99))
        lines.append(f"    {var} = {acc} {rng.choice(_OPS)} {rng.randint(1, 999)}")
        acc = var
    if rng.random() < 0.5:
        lines += [f"    for i in range({rng.randint(2, 9)}):", f"        {acc} += i"]
    lines.append(f"    return {acc}")
    return "\n".join(lines)


def python_source(seed: int, min_chars: int = 200) -> str:
    """A syntactically valid module, different for every seed."""
    rng = random.Random(seed)
    parts = [f'"""Synthetic module {seed}."""', "", "import math", ""]
    n = 0
    while sum(map(len, parts)) < min_chars or n == 0:
        parts += ["", _function(rng, f"f_{seed}_{n}"), ""]
        n += 1
    parts.append(f"CONSTANT_{seed} = {rng.randint(0, 10**6)}  # {rng.choice(_WORDS)}\n")
    return "\n".join(parts)


def write_corpus(root: str | Path, num_files: int, *, seed: int = 0, min_chars: int = 200,
                 subdirs: int = 2) -> list[Path]:
    """Write ``num_files`` distinct valid ``.py`` files under ``root`` (some in sub-folders)."""
    root = Path(root)
    paths = []
    for i in range(num_files):
        group = i % (subdirs + 1)
        folder = root / f"pkg{group}" if group else root
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"mod_{i:04d}.py"
        path.write_text(python_source(seed * 1_000_003 + i, min_chars), encoding="utf-8")
        paths.append(path)
    return paths
