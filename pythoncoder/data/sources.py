"""Raw documents for ``prepare``: directories of ``.py`` files, JSONL, Parquet, the stdlib,
Hugging Face datasets (``hf://datasets/OWNER/NAME[@REVISION][/PATH]``, see ``hub``).

Every document is a ``(key, content)`` pair.  The key is a stable path-like name: the
path relative to the source directory, the record's ``path`` field, or
``file:line``/``file:row``.  The train/validation split hashes the key, so it does not
depend on where the corpus sits on disk or in which order sources are given.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from pythoncoder.utils.jsonl import iter_objects

# A record's own path names it when present (The Stack style datasets).
PATH_FIELDS = ("path", "max_stars_repo_path", "filepath", "file_path")
CONTENT_FIELD = "content"
HF_SCHEME = "hf://"
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", ".git"}


@dataclasses.dataclass(frozen=True)
class Unreadable:
    """A document that could not be read (an I/O error, a broken Parquet file):
    ``prepare`` counts it under ``reason`` and names it in its audit file."""

    reason: str
    detail: str


Document = tuple[str, "bytes | str | Unreadable"]


def stdlib_dir() -> Path:
    """Directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def python_files(root: str | Path) -> list[Path]:
    """``.py`` files under ``root`` in sorted order, skipping installed packages and caches."""
    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        out += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py")]
    return out


def _iter_directory(root: Path, prefix: str, max_files: int | None) -> Iterator[Document]:
    for path in python_files(root)[:max_files]:
        try:
            data = path.read_bytes()
        except OSError as e:  # counted and named by prepare, not silently skipped
            data = Unreadable("unreadable", f"{type(e).__name__}: {e.strerror or e}")
        yield prefix + path.relative_to(root).as_posix(), data


def _record_key(record: dict, fallback: str) -> str:
    for field in PATH_FIELDS:
        value = record.get(field)
        if isinstance(value, str) and value:
            return value
    return fallback


def _iter_jsonl(path: Path) -> Iterator[Document]:
    expected = f"a JSON object with a {CONTENT_FIELD!r} field"
    for lineno, record in iter_objects(path, expected=expected):
        content = record.get(CONTENT_FIELD)
        if isinstance(content, str):
            yield _record_key(record, f"{path.name}:{lineno}"), content


def iter_parquet(path: str | Path, label: str | None = None, column: str = CONTENT_FIELD,
                 ) -> Iterator[Document]:
    """``(key, text)`` of each row of a Parquet file whose ``column`` is a string.

    The key is the row's own path field (:data:`PATH_FIELDS`) or ``label:row`` (1-based;
    ``label`` defaults to the file name).  A file without ``column`` is a ``ValueError``
    (the user named the wrong column); a file pyarrow cannot read, whole or from some
    batch on, yields one ``(label, Unreadable)`` after the rows it did read, so prepare
    counts and names it instead of stopping or losing it silently.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    label = label or Path(path).name

    def unreadable(e: Exception) -> Document:
        return label, Unreadable("unreadable", f"cannot read the Parquet file: {e}")

    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
    except (pa.ArrowException, OSError) as e:
        yield unreadable(e)
        return
    if column not in names:
        raise ValueError(f"{label}: no {column!r} column; its columns: {', '.join(names)}")
    columns = [column] + [f for f in PATH_FIELDS if f in names and f != column]
    batches = pf.iter_batches(columns=columns, batch_size=1024)
    row = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            yield unreadable(e)
            return
        for record in batch.to_pylist():
            row += 1
            text = record.get(column)
            if isinstance(text, str):
                yield _record_key(record, f"{label}:{row}"), text


def is_remote(source: str | Path) -> bool:
    """True for a source that is not a local path: an ``hf://`` Hugging Face dataset."""
    return isinstance(source, str) and source.startswith(HF_SCHEME)


def iter_documents(sources: list[str | Path], max_files: int | None = None, *,
                   hf_split: str = "train", hf_column: str = "content") -> Iterator[Document]:
    """Documents of every source in order; ``max_files`` caps the total count.

    No sources means the running interpreter's standard library.  A source is a
    directory (its ``.py`` files), a ``.py`` file, a ``.jsonl``/``.jsonl.gz`` file whose
    records have a ``content`` field, a ``.parquet`` file with a ``content`` column, or an
    ``hf://datasets/OWNER/NAME[@REVISION][/PATH]`` string: that Hugging Face dataset's
    Parquet files for ``hf_split``, text from column ``hf_column`` (needs huggingface_hub).
    """
    def all_docs() -> Iterator[Document]:
        if not sources:
            yield from _iter_directory(stdlib_dir(), "", max_files)
            return
        for source in sources:
            if is_remote(source):
                from pythoncoder.data import hub

                for label, local in hub.fetch_parquet(source, split=hf_split):
                    yield from iter_parquet(local, label, hf_column)
                continue
            path = Path(source)
            name = path.name.lower()
            if path.is_dir():
                yield from _iter_directory(path, "" if len(sources) == 1 else f"{path.name}/",
                                           max_files)
            elif not path.exists():
                raise FileNotFoundError(f"source not found: {path}")
            elif name.endswith(".py"):
                yield path.name, path.read_bytes()
            elif name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
                yield from _iter_jsonl(path)
            elif name.endswith(".parquet"):
                yield from iter_parquet(path)
            else:
                raise ValueError(f"unsupported source {path}: expected a directory, .py, "
                                 ".jsonl[.gz] or .parquet")

    for n, doc in enumerate(all_docs()):
        if max_files is not None and n >= max_files:
            return
        yield doc


def count_documents(sources: list[str | Path], max_files: int | None = None) -> int | None:
    """Document count when it is cheap to know (directories, .py files), else ``None``
    (also for ``hf://`` sources)."""
    if not sources:
        n = len(python_files(stdlib_dir()))
        return n if max_files is None else min(n, max_files)
    total = 0
    for source in sources:
        if is_remote(source):
            return None
        path = Path(source)
        if path.is_dir():
            total += len(python_files(path))
        elif path.name.endswith(".py"):
            total += 1
        else:
            return None
    return total if max_files is None else min(total, max_files)


def python_version_tag() -> str:
    """``cpython-3.11.7``: names the stdlib corpus of this interpreter."""
    v = sys.version_info
    return f"{sys.implementation.name}-{v.major}.{v.minor}.{v.micro}"
