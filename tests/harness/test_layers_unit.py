"""The package's floors: every import (at module level or inside a function) runs from a
module to one on its own floor or lower, and no two units import each other.  Read from
the source with ``ast``, so a lazy import inside a function counts as much as one at the
top."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pythoncoder

ROOT = Path(pythoncoder.__file__).parent

# Lowest first.  A unit is a sub-package or a top-level module of ``pythoncoder``.
FLOORS = [
    {"utils", "spec"},  # files, argument types, versions, measured ceilings; the spec table
    {"targets", "hlo_cost"},  # device facts; counting a compiled program's cost
    {"model"},  # the architecture, its kernels and configs
    {"data"},  # sources, cleaning, the tokenizer, shards, the loader
    {"checkpoint", "export"},  # run directories; portable weights
    {"train", "infer"},  # training; inference
    {"eval"},  # benchmarks scored in a sandbox
    {"devicecheck", "testing", "cli", "__main__"},  # entry points and test helpers
]
FLOOR = {unit: n for n, units in enumerate(FLOORS) for unit in units}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> set[str]:
    """The ``pythoncoder`` units ``path`` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "pythoncoder":
                found |= {a.name for a in node.names}
            elif node.module.startswith("pythoncoder."):
                found.add(_unit(node.module))
        elif isinstance(node, ast.Import):
            found |= {_unit(a.name) for a in node.names if a.name.startswith("pythoncoder.")}
    return found - {""}


def _graph() -> dict[str, dict[str, list[str]]]:
    """unit -> imported unit -> the files that import it."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        unit = rel.parts[0].removesuffix(".py")
        if unit == "__init__":
            continue
        for other in _imports(path) - {unit}:
            graph.setdefault(unit, {}).setdefault(other, []).append(str(rel))
    return graph


def test_every_unit_has_a_floor():
    units = {p.name.removesuffix(".py") for p in ROOT.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and any(p.glob("*.py"))))
             and p.name != "__init__.py"}
    assert units == set(FLOOR), units ^ set(FLOOR)


def test_imports_run_down_the_floors():
    upward = [f"{unit} (floor {FLOOR[unit]}) imports {other} (floor {FLOOR[other]}) in "
              f"{', '.join(files)}"
              for unit, targets in _graph().items() for other, files in targets.items()
              if FLOOR[other] > FLOOR[unit]]
    assert not upward, "\n".join(upward)


def test_no_two_units_import_each_other():
    graph = _graph()
    circles = [(a, b) for a, b in itertools.combinations(sorted(graph), 2)
               if b in graph.get(a, {}) and a in graph.get(b, {})]
    assert not circles, circles


def test_the_check_sees_a_lazy_upward_import(tmp_path):
    """The control: an import inside a function is found like one at the top."""
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from pythoncoder.train.loop import train\n"
                    "    from pythoncoder import hlo_cost\n    return train\n")
    assert _imports(path) == {"train", "hlo_cost"}
