"""Load and validate the machine-readable requirements in ``spec/*.toml``."""

from __future__ import annotations

import dataclasses
import os
import sys
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

STATUSES = ("implemented", "planned")
REQUIRED_FIELDS = ("id", "title", "text", "source", "status", "issue")


def find_spec_dir() -> Path:
    """``spec/``: ``$PYTHONCODER_SPEC_DIR``, else beside the package (a source checkout or
    an editable install), else ``<prefix>/share/pythoncoder/spec`` (a wheel install: the
    TOML files ship as data files)."""
    env = os.environ.get("PYTHONCODER_SPEC_DIR")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parent.parent / "spec",
                   Path(sys.prefix) / "share" / "pythoncoder" / "spec",
                   Path(sysconfig.get_path("data")) / "share" / "pythoncoder" / "spec"]
    for c in candidates:
        if any(c.glob("*.toml")):
            return c
    return candidates[0]


DEFAULT_SPEC_DIR = find_spec_dir()


class SpecError(ValueError):
    """A spec file is malformed (missing field, duplicate ID, bad status)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Requirement:
    id: str
    title: str
    text: str
    source: str
    status: str
    issue: int
    file: str
    check: dict[str, Any] = dataclasses.field(default_factory=dict)


def load_spec(spec_dir: str | Path = DEFAULT_SPEC_DIR) -> dict[str, Requirement]:
    """Return ``{id: Requirement}`` for every ``[[requirement]]`` in ``spec_dir/*.toml``."""
    spec_dir = Path(spec_dir)
    files = sorted(spec_dir.glob("*.toml"))
    if not files:
        raise SpecError(f"no *.toml requirement files in {spec_dir}")
    out: dict[str, Requirement] = {}
    for path in files:
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise SpecError(f"{path}: invalid TOML: {e}") from e
        for i, entry in enumerate(doc.get("requirement", [])):
            missing = [f for f in REQUIRED_FIELDS if f not in entry]
            if missing:
                raise SpecError(f"{path}: requirement #{i} lacks field(s) {missing}")
            rid = entry["id"]
            if rid in out:
                raise SpecError(
                    f"{path}: duplicate requirement id {rid!r} (also in {out[rid].file})")
            if entry["status"] not in STATUSES:
                raise SpecError(f"{path}: {rid}: status {entry['status']!r} not in {STATUSES}")
            unknown = set(entry) - set(REQUIRED_FIELDS) - {"check"}
            if unknown:
                raise SpecError(f"{path}: {rid}: unknown field(s) {sorted(unknown)}")
            out[rid] = Requirement(
                id=rid,
                title=entry["title"],
                text=entry["text"],
                source=entry["source"],
                status=entry["status"],
                issue=int(entry["issue"]),
                file=path.name,
                check=dict(entry.get("check", {})),
            )
    return out


def check_values(req_id: str, spec_dir: str | Path = DEFAULT_SPEC_DIR) -> dict[str, Any]:
    """The ``check`` table of one requirement (what its conformance tests assert)."""
    return load_spec(spec_dir)[req_id].check
