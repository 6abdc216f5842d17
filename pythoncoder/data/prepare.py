"""``pythoncoder prepare``: clean, tokenize in parallel, pack and shard (DATA-01 .. DATA-07).

Pipeline, in order for every document:

1. the cleaning stages of :mod:`pythoncoder.data.stages`: read (decode by the file's PEP
   263 declaration, a BOM dropped; unreadable, binary and undecodable documents dropped),
   exact dedup, quality filters (:mod:`~pythoncoder.data.quality`, the ``ast`` parse among
   them), near dedup (:mod:`~pythoncoder.data.neardup`) and decontamination
   (:mod:`~pythoncoder.data.decontam`), each counted in the manifest's ``stages`` and every
   removal written to the audit file ``removed.jsonl``;
2. in worker processes: tokenization, special-token strings treated as plain text;
3. the split is chosen by a hash of the document key (its path), so it is stable; dedup
   and decontamination ran before it, so the validation split holds no copy of a
   training file and no benchmark answer;
4. documents are joined with EOS, which ends every document and is a target, and cut
   into rows of exactly ``seq_len + 1`` tokens (see :mod:`pythoncoder.data.shards`).

The tail of each split's stream that does not fill a row is dropped, never padded.

The shards are built in a temporary directory beside ``out_dir`` and moved in only after
every source has been read (the manifest last), so a failing ``prepare`` leaves an
existing dataset in ``out_dir`` intact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import multiprocessing
import os
import pickle
import shutil
import sys
import time
import unicodedata
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from pythoncoder.data import shards as shards_lib
from pythoncoder.data import sources as sources_lib
from pythoncoder.data import stages as stages_lib
from pythoncoder.data.quality import parses_as_python  # noqa: F401 (public here before)
from pythoncoder.data.stages import decode_source  # noqa: F401 (public here before)
from pythoncoder.data.tokenizer import (
    EOS_ID,
    NUM_TOKENS,
    PAT_STR,
    cache_dir,
    load_ranks,
    load_tokenizer,
    tokenizer_fingerprint,
)
from pythoncoder.utils.files import atomic_write

DEFAULT_SEQ_LEN = 2048
DEFAULT_VAL_FRACTION = 0.01
DEFAULT_SHARD_TOKENS = 1 << 25  # 128 MiB of uint32 per shard
_CHUNK_CHARS = 1 << 19  # text per worker task
_CHUNK_DOCS = 256



def split_of(key: str, val_fraction: float) -> str:
    """``"val"`` for a stable ``val_fraction`` of keys (by sha256 of the key), else ``"train"``."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return "val" if h < val_fraction * 2.0**64 else "train"


# --- worker side -------------------------------------------------------------------------

_WORKER_TOKENIZER: Tokenizer | None = None
_WORKER_TIKTOKEN: Any = None
_WORKER_ANALYZER: stages_lib.Analyzer | None = None


def tiktoken_encoding() -> Any:
    """A ``tiktoken.Encoding`` over the same ``qwen.tiktoken`` ranks and regex, or ``None``
    when tiktoken is not installed.  TOK-01's conformance tests prove its ids identical to
    the built-in tokenizer's on NFC text (specials as plain text, as ``prepare`` wants);
    it is about 10x faster per process, so ``prepare`` uses it for the built-in tokenizer."""
    try:
        import tiktoken
    except ImportError:
        return None
    return tiktoken.Encoding("qwen2.5-coder-prepare", pat_str=PAT_STR,
                             mergeable_ranks=load_ranks(), special_tokens={})


def _init_worker(tokenizer_json: str, in_process: bool = False, fast: bool = False,
                 cleaning: stages_lib.Cleaning | None = None,
                 benchmarks: tuple = ()) -> None:
    global _WORKER_TOKENIZER, _WORKER_TIKTOKEN, _WORKER_ANALYZER
    if not in_process:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # parallelism comes from the processes
    _WORKER_TOKENIZER = Tokenizer.from_str(tokenizer_json)
    _WORKER_TOKENIZER.encode_special_tokens = True
    _WORKER_TIKTOKEN = tiktoken_encoding() if fast else None
    _WORKER_ANALYZER = (stages_lib.Analyzer(cleaning, benchmarks) if cleaning is not None
                        else None)


def _encode_eos(texts: list[str]) -> list[np.ndarray]:
    assert _WORKER_TOKENIZER is not None
    if _WORKER_TIKTOKEN is not None:
        batches = _WORKER_TIKTOKEN.encode_ordinary_batch(
            [unicodedata.normalize("NFC", t) for t in texts], num_threads=1)
    else:
        batches = [e.ids for e in
                   _WORKER_TOKENIZER.encode_batch_fast(texts, add_special_tokens=False)]
    out = []
    for enc in batches:
        ids = np.empty(len(enc) + 1, dtype=np.uint32)
        ids[:-1] = enc
        ids[-1] = EOS_ID
        out.append(ids)
    return out


def _analyze(chunk: list[tuple[str, str]]) -> list[stages_lib.Verdict]:
    """Stages 3-4's findings on each document (:class:`stages.Analyzer`)."""
    assert _WORKER_ANALYZER is not None
    return [_WORKER_ANALYZER(key, text) for key, text in chunk]


def _finish(docs: list[tuple[str, str]]) -> list[tuple[Any, np.ndarray | None]]:
    """Stage 5's finding on each near-dedup survivor, and its token ids unless it is
    contaminated (``(match, None)``)."""
    assert _WORKER_ANALYZER is not None
    found = [_WORKER_ANALYZER.contamination(text) for _, text in docs]
    ids = iter(_encode_eos([text for (_, text), m in zip(docs, found) if m is None]))
    return [(m, None if m is not None else next(ids)) for m in found]


def _encode_only(chunk: list[tuple[str, str]]) -> list[np.ndarray]:
    """Token ids (uint32, EOS appended) of each document."""
    return _encode_eos([text for _, text in chunk])


# --- main side ---------------------------------------------------------------------------


class _Packer:
    """Packs one split's EOS-terminated documents into rows and writes shards."""

    def __init__(self, out_dir: Path, split: str, seq_len: int, shard_rows: int) -> None:
        self.out_dir, self.split = out_dir, split
        self.seq_len, self.row_len, self.shard_rows = seq_len, seq_len + 1, shard_rows
        self.pending: list[np.ndarray] = []
        self.pending_tokens = 0
        self.carry = np.empty(0, dtype=np.uint32)
        self.rows: list[np.ndarray] = []
        self.num_rows_buffered = 0
        self.shards: list[dict[str, Any]] = []
        self.documents = 0
        self.doc_tokens = 0
        self.flush_tokens = max(self.row_len, min(shard_rows * seq_len, 1 << 20))

    def add(self, ids: np.ndarray) -> None:
        self.pending.append(ids)
        self.pending_tokens += len(ids)
        self.documents += 1
        self.doc_tokens += len(ids)
        if self.pending_tokens >= self.flush_tokens:
            self._cut_rows()

    def _cut_rows(self) -> None:
        stream = np.concatenate([self.carry, *self.pending])
        self.pending, self.pending_tokens = [], 0
        n = (len(stream) - 1) // self.seq_len if len(stream) >= self.row_len else 0
        if n:
            windows = np.lib.stride_tricks.sliding_window_view(stream, self.row_len)
            self.rows.append(np.array(windows[:: self.seq_len][:n]))
            self.num_rows_buffered += n
        self.carry = stream[n * self.seq_len :].copy()
        while self.num_rows_buffered >= self.shard_rows:
            self._write(self.shard_rows)

    def _write(self, n: int) -> None:
        block = np.concatenate(self.rows) if len(self.rows) > 1 else self.rows[0]
        path = self.out_dir / shards_lib.shard_name(self.split, len(self.shards))
        self.shards.append(shards_lib.write_shard(path, block[:n]))
        rest = block[n:]
        self.rows = [rest] if len(rest) else []
        self.num_rows_buffered = len(rest)

    def finish(self) -> dict[str, Any]:
        self._cut_rows()
        if self.num_rows_buffered:
            self._write(self.num_rows_buffered)
        rows = sum(s["rows"] for s in self.shards)
        # Tokens of the stream that are no row's target: the unfilled tail.
        dropped = len(self.carry) - (1 if rows else 0)
        return {
            "rows": rows,
            "tokens": rows * self.row_len,
            "documents": self.documents,
            "document_tokens": self.doc_tokens,
            "dropped_tail_tokens": int(dropped),
            "shards": self.shards,
        }


def _chunks(docs: Iterable[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    chunk: list[tuple[str, str]] = []
    chars = 0
    for doc in docs:
        chunk.append(doc)
        chars += len(doc[1])
        if chars >= _CHUNK_CHARS or len(chunk) >= _CHUNK_DOCS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _run_tasks(chunks: Iterable[list[tuple[str, str]]], tokenizer_json: str, num_workers: int,
               task=_encode_only, fast: bool = False,
               ) -> Iterator[tuple[list[tuple[str, str]], list[np.ndarray]]]:
    """``(chunk, task(chunk))`` in input order, with at most a few chunks in flight
    (tokenizer throughput measurements)."""
    if num_workers <= 1:
        _init_worker(tokenizer_json, in_process=True, fast=fast)
        for chunk in chunks:
            yield chunk, task(chunk)
        return
    with _pool(num_workers, (tokenizer_json, False, fast)) as pool:
        in_flight: deque = deque()
        for chunk in chunks:
            in_flight.append((chunk, pool.apply_async(task, (chunk,))))
            if len(in_flight) >= 2 * num_workers + 1:
                done_chunk, result = in_flight.popleft()
                yield done_chunk, result.get()
        while in_flight:
            done_chunk, result = in_flight.popleft()
            yield done_chunk, result.get()


def _pool(num_workers: int, initargs: tuple):
    ctx = multiprocessing.get_context(_start_method())
    return ctx.Pool(num_workers, initializer=_init_worker, initargs=initargs)


class ChunkCache:
    """Finished chunks' worker results (stage findings, token ids), content-addressed, so a
    ``prepare`` run again after an interruption analyses and tokenizes only the chunks it
    had not finished.  A chunk's key hashes the settings (``salt``: cleaning, tokenizer) and
    its documents' keys and texts; an entry is written whole (a temporary file renamed) or
    not at all, and a run that completes deletes the entries it used.  Lives in the user
    cache (``$PYTHONCODER_CACHE/prepare-chunks``), not beside ``--out``, so an interrupted
    run still leaves nothing there (RUN-07)."""

    def __init__(self, root: Path, salt: str) -> None:
        self.root, self.salt = Path(root), salt.encode("utf-8")
        self.used: list[Path] = []
        self.hits = 0

    def key(self, chunk: list[tuple[str, str]]) -> str:
        h = hashlib.sha256(self.salt)
        for key, text in chunk:
            h.update(key.encode("utf-8") + b"\0")
            h.update(hashlib.sha256(text.encode("utf-8")).digest())
        return h.hexdigest()

    def load(self, key: str) -> tuple[list, dict[int, tuple]] | None:
        path = self.root / f"{key}.pkl"
        self.used.append(path)
        try:
            with open(path, "rb") as f:
                verdicts, ids = pickle.load(f)
        except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError):
            return None
        self.hits += 1
        return verdicts, ids

    def store(self, key: str, verdicts: list, ids: dict[int, tuple]) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                pickle.dump((verdicts, ids), f, protocol=pickle.HIGHEST_PROTOCOL)

        atomic_write(self.root / f"{key}.pkl", write)

    def clear(self) -> None:
        for path in self.used:
            path.unlink(missing_ok=True)


def _run_stages(chunks: Iterable[list[tuple[str, str]]], decide, num_workers: int,
                initargs: tuple, cache: ChunkCache,
                ) -> Iterator[tuple[list[tuple[str, str]], list[np.ndarray]]]:
    """Each chunk analysed by the workers (stages 3-4: :func:`_analyze`), judged in order by
    ``decide.passes_near_dedup`` in this process; the survivors checked for benchmark
    copies and tokenized by the workers (:func:`_finish`), judged by ``decide.clean``:
    ``(kept, ids)`` in input order, with a bounded number of tasks in flight.  Chunks
    ``cache`` holds are not analysed again, nor are their survivors it has findings for;
    finished chunks are stored in it."""

    def survivors(chunk, verdicts) -> list[int]:
        return [i for i, ((key, _), v) in enumerate(zip(chunk, verdicts))
                if decide.passes_near_dedup(key, v)]

    def finish(chunk, key, verdicts, hit, at, cached, missing, new):
        found = {**cached, **dict(zip(missing, new))}
        if hit is None or missing:
            cache.store(key, verdicts, found)
        kept = [i for i in at if decide.clean(chunk[i][0], verdicts[i].nbytes, found[i][0])]
        return [chunk[i] for i in kept], [found[i][1] for i in kept]

    if num_workers <= 1:
        _init_worker(initargs[0], True, *initargs[2:])  # in this process
        for chunk in chunks:
            key = cache.key(chunk)
            hit = cache.load(key)
            verdicts, cached = hit if hit is not None else (_analyze(chunk), {})
            at = survivors(chunk, verdicts)
            missing = [i for i in at if i not in cached]
            new = _finish([chunk[i] for i in missing]) if missing else []
            kept, ids = finish(chunk, key, verdicts, hit, at, cached, missing, new)
            if kept:
                yield kept, ids
        return
    limit = 2 * num_workers + 1
    with _pool(num_workers, initargs) as pool:
        analysing: deque = deque()
        finishing: deque = deque()

        def judge_first() -> None:
            chunk, key, hit, result = analysing.popleft()
            verdicts, cached = hit if hit is not None else (result.get(), {})
            at = survivors(chunk, verdicts)
            missing = [i for i in at if i not in cached]
            pending = (pool.apply_async(_finish, ([chunk[i] for i in missing],))
                       if missing else None)
            finishing.append((chunk, key, verdicts, hit, at, cached, missing, pending))

        def finished_first():
            *head, pending = finishing.popleft()
            return finish(*head, pending.get() if pending is not None else [])

        for chunk in chunks:
            key = cache.key(chunk)
            hit = cache.load(key)
            result = pool.apply_async(_analyze, (chunk,)) if hit is None else None
            analysing.append((chunk, key, hit, result))
            if len(analysing) >= limit:
                judge_first()
            while len(finishing) >= limit:
                kept, ids = finished_first()
                if kept:
                    yield kept, ids
        while analysing:
            judge_first()
        while finishing:
            kept, ids = finished_first()
            if kept:
                yield kept, ids


def _start_method() -> str:
    """``fork`` (fast, works from any ``__main__``) unless a multithreaded runtime is loaded.

    JAX and grain start threads on import, and forking a multithreaded process can
    deadlock; then the workers are spawned instead.
    """
    threaded = any(m in sys.modules for m in ("jax", "grain", "torch", "tensorflow"))
    if threaded or "fork" not in multiprocessing.get_all_start_methods():
        return "spawn"
    return "fork"


def default_num_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _shard_files(out_dir: Path) -> list[Path]:
    return [p for split in shards_lib.SPLITS
            for p in out_dir.glob(f"{split}-[0-9][0-9][0-9][0-9][0-9].npy")]


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace the dataset in ``out_dir`` by the one built in ``tmp`` (manifest last).

    The old manifest goes first, so an interruption in between never looks complete;
    other files in ``out_dir`` are left alone."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / shards_lib.MANIFEST).unlink(missing_ok=True)
    for old in _shard_files(out_dir):
        old.unlink()
    for new in [*_shard_files(tmp), tmp / stages_lib.AUDIT_FILE]:
        os.replace(new, out_dir / new.name)
    os.replace(tmp / shards_lib.MANIFEST, out_dir / shards_lib.MANIFEST)
    shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_builds(out_dir: Path) -> None:
    """Delete ``.<out>.prepare-<pid>`` build directories whose process no longer runs on
    this host (a prepare killed by SIGKILL or an untrapped signal leaves its half-built
    shards there); a live one, another prepare in progress, is left alone."""
    for old in out_dir.parent.glob(f".{out_dir.name}.prepare-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and old.is_dir()) or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive (or not ours to signal, which also means alive)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        print(f"prepare: removing {old}, left by process {pid} that no longer runs",
              file=sys.stderr)
        shutil.rmtree(old, ignore_errors=True)


def _make_parents(out_dir: Path) -> list[Path]:
    """Create ``out_dir``'s missing parent directories; return them, innermost first (a
    failed prepare removes them again).  ``PrepareError`` if one of them is a file."""
    missing = []
    parent = out_dir.absolute().parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    if not parent.is_dir():
        raise PrepareError(f"--out {out_dir}: {parent} is not a directory")
    try:
        out_dir.absolute().parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PrepareError(f"--out {out_dir}: cannot create its directory ({e.strerror})"
                           ) from None
    return missing


class PrepareError(ValueError):
    """Input the user must change (exit 2): no documents left after cleaning, too few
    tokens for one row, an output path that is a file, a source that does not exist."""


class SourceNotFoundError(PrepareError, FileNotFoundError):
    """A local source path that does not exist (found before anything is built)."""


def prepare(
    sources: list[str | Path],
    out_dir: str | Path,
    *,
    seq_len: int = DEFAULT_SEQ_LEN,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    num_workers: int | None = None,
    max_files: int | None = None,
    max_bytes: int | None = None,
    min_chars: int | None = None,
    cleaning: stages_lib.Cleaning | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    tokenizer_path: str | Path | None = None,
    progress: bool = True,
    encoder: str = "auto",
    hf_split: str = "train",
    hf_column: str = "content",
) -> dict[str, Any]:
    """Prepare ``sources`` (none: the stdlib) into shards under ``out_dir``; return the manifest.

    ``cleaning`` sets the stages (default: all on, :class:`stages.Cleaning`); ``max_bytes``
    and ``min_chars``, when given, override its size limits.
    ``shard_tokens`` bounds the tokens per shard (whole rows; at least one row).
    ``max_files`` caps the number of documents read, for quick runs.
    ``encoder``: ``"tokenizers"`` encodes with the loaded tokenizer; ``"tiktoken"`` with
    the identical, faster ``tiktoken_encoding()`` (built-in ranks only); ``"auto"`` picks
    tiktoken when it is installed and no custom tokenizer is given.
    ``hf_split``/``hf_column``: the split and text column of ``hf://`` sources.
    Raises :class:`PrepareError` when nothing is left to train on; ``out_dir`` is then
    left as it was.
    """
    if encoder not in ("auto", "tiktoken", "tokenizers"):
        raise ValueError(f"encoder must be auto, tiktoken or tokenizers, got {encoder!r}")
    custom = tokenizer_path is not None or bool(os.environ.get("PYTHONCODER_TOKENIZER"))
    if encoder == "tiktoken" and (custom or tiktoken_encoding() is None):
        raise ValueError("encoder='tiktoken' needs tiktoken installed and the built-in "
                         "tokenizer (no tokenizer_path / PYTHONCODER_TOKENIZER)")
    fast = encoder == "tiktoken" or (encoder == "auto" and not custom
                                     and importlib.util.find_spec("tiktoken") is not None)
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    cleaning = cleaning or stages_lib.Cleaning()
    limits = {k: v for k, v in (("max_bytes", max_bytes), ("min_chars", min_chars))
              if v is not None}
    if limits:
        cleaning = dataclasses.replace(
            cleaning, quality=dataclasses.replace(cleaning.quality, **limits))

    for source in sources:  # before anything is built or replaced
        if not sources_lib.is_remote(source) and not Path(source).exists():
            raise SourceNotFoundError(f"source not found: {source}")
    benchmarks = stages_lib.load_benchmarks(cleaning.benchmarks)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PrepareError(f"--out must be a directory, and {out_dir} is a file")
    created = _make_parents(out_dir)
    _remove_stale_builds(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.prepare-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        try:
            tmp.mkdir()
        except OSError as e:
            raise PrepareError(f"--out {out_dir}: cannot write in {tmp.parent} "
                               f"({e.strerror})") from None
        manifest = _prepare_into(tmp, sources, seq_len=seq_len, val_fraction=val_fraction,
                                 num_workers=num_workers, max_files=max_files,
                                 cleaning=cleaning, benchmarks=benchmarks,
                                 shard_tokens=shard_tokens, tokenizer_path=tokenizer_path,
                                 progress=progress, fast=fast,
                                 hf={"hf_split": hf_split, "hf_column": hf_column})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in created:  # the directories made for the output, innermost first
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
    _swap_in(tmp, out_dir)
    return manifest


def _prepare_into(out_dir: Path, sources, *, seq_len, val_fraction, num_workers, max_files,
                  cleaning, benchmarks, shard_tokens, tokenizer_path, progress, fast,
                  hf) -> dict[str, Any]:
    from tqdm.auto import tqdm

    start = time.perf_counter()
    tok = load_tokenizer(tokenizer_path)
    tok_sha256 = tokenizer_fingerprint(tok)
    num_workers = default_num_workers() if num_workers is None else max(1, num_workers)
    shard_rows = max(1, shard_tokens // (seq_len + 1))
    packers = {s: _Packer(out_dir, s, seq_len, shard_rows) for s in shards_lib.SPLITS}

    with open(out_dir / stages_lib.AUDIT_FILE, "w", encoding="utf-8") as audit:
        ledger = stages_lib.Ledger(audit)
        admit = stages_lib.ReadAndExact(ledger)
        decide = stages_lib.Decide(ledger, cleaning)

        def admitted() -> Iterator[tuple[str, str]]:
            for key, content in sources_lib.iter_documents(list(sources), max_files, **hf):
                text = admit.admit(key, content)
                if text is not None:
                    yield key, text

        bar = tqdm(total=sources_lib.count_documents(list(sources), max_files), unit="file",
                   desc="prepare", disable=not progress, dynamic_ncols=True)
        tokens = 0
        initargs = (tok.to_str(), False, fast, cleaning, benchmarks)
        cache = ChunkCache(cache_dir() / "prepare-chunks", json.dumps(
            [cleaning.fingerprint(), [b.sha256 for b in benchmarks],
             tok_sha256, fast]))
        with bar:
            for kept, encoded in _run_stages(_chunks(admitted()), decide, num_workers,
                                             initargs, cache):
                for (key, _), ids in zip(kept, encoded):
                    packers[split_of(key, val_fraction)].add(ids)
                    tokens += len(ids)
                # The bar counts files read so far, including the dropped ones.
                bar.update(ledger.counts["read"]["documents_in"] - bar.n)
                bar.set_postfix(tokens=f"{tokens / 1e6:.1f}M", refresh=False)
            bar.update(ledger.counts["read"]["documents_in"] - bar.n)

    splits = {name: packer.finish() for name, packer in packers.items()}
    cache.clear()
    if cache.hits and progress:
        print(f"prepare: {cache.hits} chunk(s) of an interrupted run reused, not analysed "
              "or tokenized again", file=sys.stderr)
    elapsed = time.perf_counter() - start
    report = ledger.report()
    seen = report["read"]["documents_in"]
    kept = sum(s["documents"] for s in splits.values())
    dropped = ledger.dropped_by_reason()
    if kept == 0:
        reasons = ", ".join(f"{k} {v}" for k, v in dropped.items() if v) or "none"
        raise PrepareError(f"no documents left: {seen} read from {_describe(sources)}, "
                           f"dropped: {reasons}")
    if splits["train"]["rows"] == 0:
        raise PrepareError(
            f"too few tokens for one training row: {splits['train']['document_tokens']:,} "
            f"train tokens from {kept} documents, a row needs {seq_len + 1:,} "
            "(give more data or a smaller --seq-len)")
    manifest = {
        "format": shards_lib.FORMAT,
        "tokenizer_sha256": tok_sha256,
        "vocab_size": NUM_TOKENS,
        "eos_id": EOS_ID,
        "seq_len": seq_len,
        "row_len": seq_len + 1,
        "row_stride": seq_len,
        "dtype": "uint32",
        "segment_ids": "1 + number of EOS tokens before the position in its row",
        "val_fraction": val_fraction,
        "sources": [str(s) for s in sources] or [f"stdlib:{sources_lib.stdlib_dir()}"],
        "python": sources_lib.python_version_tag(),
        "filter": {"max_files": max_files, **cleaning.describe()},
        "decontamination": {
            b.name: {**b.describe(), "removed": ledger.removed_per_benchmark[b.name]}
            for b in benchmarks},
        "stages": report,
        "audit": stages_lib.AUDIT_FILE,
        "stats": {
            "files_seen": seen,
            "files_kept": kept,
            "dropped": dropped,
            "document_tokens": tokens,
            "seconds": round(elapsed, 3),
            "tokens_per_second": round(tokens / elapsed) if elapsed > 0 else None,
            "num_workers": num_workers,
            "chunks_resumed": cache.hits,
        },
        "splits": splits,
    }
    shards_lib.write_manifest(out_dir, manifest)
    return manifest


def _describe(sources) -> str:
    return ", ".join(map(str, sources)) if sources else "the stdlib"


def summary(manifest: dict[str, Any]) -> str:
    """A few human-readable lines about a prepared directory."""
    st = manifest["stats"]
    dropped = ", ".join(f"{k} {v}" for k, v in st["dropped"].items() if v) or "none"
    lines = [
        f"files: {st['files_seen']} read, {st['files_kept']} kept; dropped: {dropped}",
        f"tokens: {st['document_tokens']:,} in {st['seconds']:.1f}s "
        f"({st['tokens_per_second'] or 0:,} tokens/s, {st['num_workers']} processes)",
    ]
    if "stages" in manifest:  # manifests written before the cleaning stages have none
        kept = ", ".join(f"{stage} {manifest['stages'][stage]['documents_kept']}"
                         for stage in stages_lib.STAGES if stage in manifest["stages"])
        lines.append(f"kept after each stage: {kept}; every removal, with its reason, in "
                     f"{manifest['audit']}")
    for name, sp in manifest["splits"].items():
        lines.append(f"{name}: {sp['documents']} documents, {sp['rows']} rows of "
                     f"{manifest['row_len']} tokens in {len(sp['shards'])} shard(s), "
                     f"{sp['dropped_tail_tokens']} tail tokens dropped")
    return "\n".join(lines)


def stdlib_cache_dir(seq_len: int, fingerprint: str, max_files: int | None = None,
                     root: str | Path | None = None,
                     val_fraction: float = DEFAULT_VAL_FRACTION) -> Path:
    """Cache location of the prepared stdlib: tokenizer hash, seq_len, Python version and
    the cleaning stages' settings (their defaults)."""
    root = Path(root) if root is not None else cache_dir() / "data"
    extra = "" if max_files is None else f"-n{max_files}"
    extra += "" if val_fraction == DEFAULT_VAL_FRACTION else f"-v{val_fraction:g}"
    extra += f"-c{stages_lib.Cleaning().fingerprint()}"
    name = f"stdlib-{sources_lib.python_version_tag()}-L{seq_len}{extra}-{fingerprint[:12]}"
    return root / name


def ensure_stdlib_data(seq_len: int, cache_dir: str | Path | None = None, *,
                       max_files: int | None = None, num_workers: int | None = None,
                       val_fraction: float = DEFAULT_VAL_FRACTION,
                       progress: bool = True) -> Path:
    """Prepare the interpreter's stdlib once into the user cache; return its directory.

    The directory is keyed by tokenizer hash, ``seq_len``, Python version (and
    ``max_files``); it is built under a temporary name and renamed, so concurrent
    callers never see a partial one.  The default corpus of ``pythoncoder train``.
    """
    fingerprint = tokenizer_fingerprint(load_tokenizer())
    target = stdlib_cache_dir(seq_len, fingerprint, max_files, cache_dir, val_fraction)
    if _complete(target, seq_len, fingerprint):
        return target
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    prepare([], tmp, seq_len=seq_len, val_fraction=val_fraction, num_workers=num_workers,
            max_files=max_files, progress=progress)
    if target.exists() and not _complete(target, seq_len, fingerprint):
        shutil.rmtree(target, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:
        if not _complete(target, seq_len, fingerprint):  # lost a race to a broken entry
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        print(f"prepared stdlib corpus in {target}", file=sys.stderr)
    return target


def _complete(path: Path, seq_len: int, fingerprint: str) -> bool:
    try:
        manifest = shards_lib.read_manifest(path)
    except shards_lib.ShardError:
        return False
    return manifest.get("seq_len") == seq_len and manifest.get("tokenizer_sha256") == fingerprint
