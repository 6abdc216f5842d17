"""Ranges, not pins (issue 26): pyproject.toml's lower bounds and constraints-oldest.txt
(what `nox -s "ends(oldest)"` installs) name the same versions, and the versions helper
reports what is imported."""

from __future__ import annotations

import platform
import re
import tomllib
from pathlib import Path

import jax
import pytest
from packaging.version import Version

from pythoncoder.utils.versions import stack_versions

ROOT = Path(__file__).resolve().parents[2]
REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements() -> list[tuple[str, str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    out = []
    for req in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        name, _, spec = REQ.match(req.split(";")[0]).groups()
        out.append((_norm(name), spec.strip()))
    return out


def _oldest() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints-oldest.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[_norm(name)] = version.strip()
    return pins


def test_every_dependency_is_a_range_with_a_lower_bound():
    reqs = _requirements()
    assert len(reqs) >= 20
    for name, spec in reqs:
        assert "==" not in spec and "~=" not in spec, f"{name} is pinned: {spec}"
        assert re.fullmatch(r">=[0-9][0-9a-z.]*", spec), f"{name}: want '>=LOWEST', got {spec!r}"


def test_oldest_constraints_pin_each_dependency_at_its_lower_bound():
    pins = _oldest()
    for name, spec in _requirements():
        lower = spec.removeprefix(">=")
        assert name in pins, f"constraints-oldest.txt misses {name}"
        assert Version(pins[name]) == Version(lower), \
            f"{name}: lower bound {lower}, oldest pin {pins[name]} (remake the file)"


def test_oldest_constraints_are_all_exact():
    pins = _oldest()
    assert len(pins) > 50  # the whole environment, not just the direct dependencies
    assert all(re.fullmatch(r"[0-9][0-9a-z.+]*", v) for v in pins.values()), pins


@pytest.mark.parametrize("name", ["jax", "python"])
def test_versions_report_what_is_running(name):
    want = {"jax": jax.__version__, "python": platform.python_version()}[name]
    assert stack_versions()[name] == want
