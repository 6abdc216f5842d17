"""Tokenizer throughput on the same files: ours (1 and N processes) against tiktoken.

``python -m pythoncoder.data.throughput [--workers N] [--max-files K] [SOURCES...]``
(default: the stdlib) prints tokens/s of each; ``benchmarks/test_bench_tokenizer.py``
records the same figures with pytest-benchmark.  tiktoken is built from the same
``qwen.tiktoken`` ranks, regex and specials, and is given NFC text, as in TOK-01.
"""

from __future__ import annotations

import argparse
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

from pythoncoder.data import prepare as prep
from pythoncoder.data import sources as sources_lib
from pythoncoder.data import tokenizer as tokmod


def load_texts(sources: list[str | Path] | None = None, max_files: int | None = None
               ) -> list[tuple[str, str]]:
    """``(key, text)`` of the UTF-8 documents of ``sources`` (default: the stdlib)."""
    out = []
    for key, content in sources_lib.iter_documents(list(sources or []), max_files=max_files):
        if isinstance(content, bytes):
            try:
                content = content.decode("utf-8-sig")
            except UnicodeDecodeError:
                continue
        out.append((key, content))
    return out


def tiktoken_encoding():
    """tiktoken over the qwen.tiktoken ranks with the Qwen regex and specials."""
    import tiktoken

    return tiktoken.Encoding(name="qwen2.5-coder", pat_str=tokmod.PAT_STR,
                             mergeable_ranks=tokmod.load_ranks(),
                             special_tokens=dict(tokmod.SPECIAL_IDS))


def count_tiktoken(docs: list[tuple[str, str]], encoding=None) -> int:
    enc = encoding or tiktoken_encoding()
    return sum(len(enc.encode_ordinary(unicodedata.normalize("NFC", t))) for _, t in docs)


# Starting a worker costs about 2 s on this project's machines (spawn, imports, and
# ``Tokenizer.from_str`` of the 4.6 MB tokenizer), so a worker needs about that much work to
# pay for itself: ~2 MB of source, which the tokenizer encodes in ~3 s on one core.
MIN_CHARS_PER_WORKER = 2_000_000


def pool_size(requested: int, total_chars: int,
              min_chars_per_worker: int = MIN_CHARS_PER_WORKER) -> int:
    """Workers worth starting for ``total_chars`` of text: at most ``requested``, at least 1,
    and no more than one per ``min_chars_per_worker`` (a pool of 16 over a few MB of text
    was measured slower than one process: 79.6k vs 183.7k tokens/s)."""
    if requested < 1:
        raise ValueError(f"requested={requested}: need at least 1 worker")
    return max(1, min(requested, total_chars // min_chars_per_worker))


def count_ours(docs: list[tuple[str, str]], num_workers: int, tokenizer_json: str | None = None
               ) -> int:
    """Tokens (EOS excluded) from our tokenizer in ``num_workers`` processes, as prepare runs it.

    With ``num_workers=1`` it runs in this process on one thread.
    """
    import os

    tokenizer_json = tokenizer_json or tokmod.load_tokenizer().to_str()
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        total = 0
        for _, encoded in prep._run_tasks(prep._chunks(docs), tokenizer_json, num_workers,
                                          task=prep._encode_only):
            total += sum(len(ids) - 1 for ids in encoded)
        return total
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def _timed(fn: Callable[[], int]) -> tuple[int, float]:
    start = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*")
    parser.add_argument("--workers", type=int, default=prep.default_num_workers())
    parser.add_argument("--max-files", type=int, default=None)
    args = parser.parse_args(argv)
    docs = load_texts(args.sources, args.max_files)
    mb = sum(len(t.encode("utf-8")) for _, t in docs) / 1e6
    print(f"{len(docs)} files, {mb:.1f} MB")
    tokenizer_json = tokmod.load_tokenizer().to_str()
    enc = tiktoken_encoding()
    rows = [
        ("tiktoken, 1 process", lambda: count_tiktoken(docs, enc)),
        ("pythoncoder, 1 process", lambda: count_ours(docs, 1, tokenizer_json)),
    ]
    workers = pool_size(args.workers, sum(len(t) for _, t in docs))
    if workers != args.workers:
        print(f"{args.workers} workers asked, {workers} worth starting for {mb:.1f} MB")
    args.workers = workers
    if args.workers > 1:
        rows.append((f"pythoncoder, {args.workers} processes",
                     lambda: count_ours(docs, args.workers, tokenizer_json)))
    counts = set()
    for name, fn in rows:
        n, seconds = _timed(fn)
        counts.add(n)
        print(f"{name:28s} {n:>12,} tokens {seconds:8.2f} s {n / seconds:>12,.0f} tokens/s")
    if len(counts) != 1:
        print(f"token counts differ: {sorted(counts)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
