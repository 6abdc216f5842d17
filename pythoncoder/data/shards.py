"""Shard format, manifest and integrity checks (DATA-01, DATA-02).

A prepared directory holds ``manifest.json`` and, per split, shards
``{split}-{index:05d}.npy``: each a C-ordered ``uint32`` array of shape
``(rows, seq_len + 1)``.  Row ``i`` of a split is the packed token stream
``stream[i * seq_len : i * seq_len + seq_len + 1]``, so consecutive rows overlap by the
one token that is the last target of a row and the first input of the next, and every
token after the first is a target exactly once.

Documents in the stream each end with EOS (151643).  EOS appears nowhere else (special
token strings inside documents are encoded as plain text), so the segment ids are
kept exactly by the tokens themselves: a position's segment is 1 + the number of EOS
tokens before it in its row, and a document's closing EOS belongs to that document.

Every file is written to a temporary name and renamed, so a reader never sees half a
file; the manifest is written last and records each shard's rows, tokens, size in
bytes and sha256.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pythoncoder.data.tokenizer import EOS_ID, NUM_TOKENS
from pythoncoder.utils.files import atomic_write, atomic_write_text, file_sha256

FORMAT = "pythoncoder-shards/1"
MANIFEST = "manifest.json"
SHARD_DTYPE = np.uint32
SPLITS = ("train", "val")


class ShardError(RuntimeError):
    """A shard or manifest is missing, truncated or corrupt.  ``path`` names the file."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        super().__init__(f"{problem}: {self.path}")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.npy"


def segment_ids(tokens: np.ndarray, eos_id: int = EOS_ID) -> np.ndarray:
    """1-based document ids along the last axis; a closing EOS keeps its document's id."""
    is_eos = (tokens == eos_id).astype(np.int32)
    return (np.cumsum(is_eos, axis=-1, dtype=np.int32) - is_eos + 1).astype(np.int32)


def write_shard(path: str | Path, rows: np.ndarray) -> dict[str, Any]:
    """Atomically write ``rows`` (uint32, 2-D) as ``.npy``; return its manifest entry."""
    path = Path(path)
    rows = np.ascontiguousarray(rows, dtype=SHARD_DTYPE)
    if rows.ndim != 2:
        raise ValueError(f"shard rows must be 2-D, got shape {rows.shape}")
    entry: dict[str, Any] = {}

    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, rows, allow_pickle=False)
        entry.update(bytes=os.path.getsize(tmp), sha256=file_sha256(tmp))  # what is renamed

    atomic_write(path, save)
    return {"file": path.name, "rows": int(rows.shape[0]), "tokens": int(rows.size), **entry}


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Atomically write ``manifest.json``."""
    path = Path(out_dir) / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The manifest of a prepared directory; ``ShardError`` if missing or malformed."""
    path = Path(data_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShardError(path, "manifest missing (run `pythoncoder prepare`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardError(path, f"manifest unreadable ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ShardError(path, f"not a {FORMAT} manifest")
    return manifest


def open_shard(path: Path, entry: dict[str, Any], row_len: int, verify: str = "sha256"
               ) -> np.ndarray:
    """Memory-map one shard after checking it against its manifest ``entry``.

    ``verify="sha256"`` hashes the whole file; ``"size"`` checks size and header only.
    Raises ``ShardError`` naming the file if it is missing, truncated or corrupt.
    """
    if verify not in ("sha256", "size"):
        raise ValueError(f"verify must be 'sha256' or 'size', got {verify!r}")
    if not path.is_file():
        raise ShardError(path, "shard missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
        what = "shard truncated" if size < entry["bytes"] else "shard has the wrong size"
        raise ShardError(path, f"{what} ({size} bytes, manifest says {entry['bytes']})")
    if verify == "sha256" and file_sha256(path) != entry["sha256"]:
        raise ShardError(path, "shard checksum mismatch (sha256 differs from the manifest)")
    try:
        rows = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ShardError(path, f"shard unreadable ({e})") from None
    if rows.dtype != SHARD_DTYPE or rows.shape != (entry["rows"], row_len):
        raise ShardError(path, f"shard holds {rows.dtype}{list(rows.shape)}, manifest says "
                               f"uint32[{entry['rows']}, {row_len}]")
    return rows


def open_split(data_dir: str | Path, split: str, verify: str = "sha256"
               ) -> tuple[dict[str, Any], list[np.ndarray]]:
    """``(manifest, memory-mapped shards)`` of one split, every shard verified."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    if split not in manifest["splits"]:
        raise ValueError(f"{data_dir}: no split {split!r} (have {sorted(manifest['splits'])})")
    row_len = int(manifest["seq_len"]) + 1
    entries = manifest["splits"][split]["shards"]
    return manifest, [open_shard(data_dir / e["file"], e, row_len, verify) for e in entries]


def frequent_ids(data_dir: str | Path, rows: int) -> tuple[int, ...]:
    """The ``rows - 1`` ids the train split of prepared data uses most, sorted (ties go to
    the lower id), for ``ModelConfig.vocab_subset``; fewer when fewer ids occur."""
    if rows < 2:
        raise ValueError(f"a vocabulary subset needs at least 2 rows, got {rows}")
    _, shards = open_split(data_dir, "train")
    counts = np.zeros(NUM_TOKENS, np.int64)
    for shard in shards:
        for start in range(0, len(shard), 4096):
            counts += np.bincount(np.asarray(shard[start:start + 4096]).ravel(),
                                  minlength=NUM_TOKENS)[:NUM_TOKENS]
    order = np.argsort(-counts, kind="stable")[: rows - 1]
    order = order[counts[order] > 0]
    return tuple(int(i) for i in np.sort(order))
