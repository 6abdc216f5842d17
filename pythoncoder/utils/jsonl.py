"""JSON Lines reading with errors that name the file and the line."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def iter_objects(path: str | Path, *, max_line_chars: int | None = None,
                 expected: str = "a JSON object") -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a ``.jsonl`` / ``.jsonl.gz`` file.

    Raises ``ValueError`` naming the file and 1-based line for a line that is not JSON, is
    not a JSON object (``expected`` says what was wanted), or is longer than
    ``max_line_chars`` (never holding more than that much of it).
    """
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    limit = -1 if max_line_chars is None else max_line_chars + 1
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(iter(lambda: f.readline(limit), ""), start=1):
            if max_line_chars is not None and len(line) > max_line_chars:
                raise ValueError(f"{path}, line {lineno}: longer than {max_line_chars:,} "
                                 "characters")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}, line {lineno}: not valid JSON ({e})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {lineno}: expected {expected}, got "
                                 f"{type(record).__name__}")
            yield lineno, record
