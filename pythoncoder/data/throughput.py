"""Tokenizer and ``prepare`` throughput on the same files.

``python -m pythoncoder.data.throughput [--workers N] [--max-files K] [SOURCES...]``
(default: the stdlib) prints tokens/s of ours (1 and N processes) against tiktoken;
``--stages`` prints instead each cleaning stage's MB/s and documents/s on one core, as a
ratio to the tokenizer alone on the same text in the same run, the whole ``prepare`` on
N processes, and what that makes for 24B tokens on 16 cores (:func:`stage_throughput`,
:func:`estimate_hours`).  ``benchmarks/test_bench_tokenizer.py`` and
``benchmarks/test_bench_prepare.py`` record the same figures with pytest-benchmark.
tiktoken is built from the same ``qwen.tiktoken`` ranks, regex and specials, and is given
NFC text, as in TOK-01.
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


# The per-document stages: (name, runs in, what it does), in pipeline order.
STAGE_ROWS = (
    ("read + exact dedup", "main", "decode, NUL check, sha256 of the text"),
    ("quality filters", "workers", "line lengths, alphanumerics, encoded data, header, ast"),
    ("near dedup: MinHash", "workers", "identifier 5-grams, rensa RMinHash (256)"),
    ("near dedup: LSH decisions", "main", "rensa RMinHashLSH query + insert, in order"),
    ("decontamination", "workers", "Aho-Corasick substrings + 10-gram streams"),
    ("tokenize", "workers", "the tokenizer alone (as prepare encodes)"),
)


def stage_throughput(docs: list[tuple[str, bytes]], cleaning=None) -> list[dict]:
    """Seconds, MB/s and documents/s of each stage of :data:`STAGE_ROWS` on one core,
    over the same ``(key, raw bytes)`` documents; each stage sees what the earlier ones
    kept, as in ``prepare``.  ``ratio_to_tokenizer``: the stage's MB/s over the tokenizer's
    on the same run (below 1: slower than tokenizing)."""
    import io

    from pythoncoder.data import neardup, quality, stages

    cleaning = cleaning or stages.Cleaning()
    benchmarks = stages.load_benchmarks(cleaning.benchmarks)
    ledger = stages.Ledger(io.StringIO())
    rows = []

    def run(name, items, fn):
        start = time.perf_counter()
        out = [x for x in items if fn(x)]
        seconds = time.perf_counter() - start
        mb = sum(len(t.encode("utf-8")) if isinstance(t, str) else len(t)
                 for _, t in items) / 1e6
        rows.append({"stage": name, "documents": len(items), "mb": round(mb, 3),
                     "seconds": round(seconds, 4), "mb_per_s": mb / seconds,
                     "documents_per_s": len(items) / seconds})
        return out

    admit = stages.ReadAndExact(ledger)
    texts: list[tuple[str, str]] = []
    run("read + exact dedup", docs,
        lambda d: (t := admit.admit(*d)) is not None and texts.append((d[0], t)) is None)
    texts = run("quality filters", texts,
                lambda d: quality.check(d[1], cleaning.quality, d[0]) is None)
    sketches = {}
    run("near dedup: MinHash", texts,
        lambda d: sketches.__setitem__(d[0], neardup.sketch(d[1], cleaning.near_dedup)) or True)
    index = neardup.NearDedup(cleaning.near_dedup)
    texts = run("near dedup: LSH decisions", texts,
                lambda d: index.add(d[0], sketches[d[0]]) is None)
    finder = stages.decontam_lib.Decontaminator(benchmarks, cleaning.decontam)
    texts = run("decontamination", texts, lambda d: finder.find(d[1]) is None)
    prep._init_worker(tokmod.load_tokenizer().to_str(), True,
                      prep.tiktoken_encoding() is not None)
    tokens = []
    run("tokenize", texts, lambda d: tokens.append(len(prep._encode_eos([d[1]])[0]) - 1) is None)
    rows[-1]["tokens"] = sum(tokens)
    rows[-1]["bytes_per_token"] = rows[-1]["mb"] * 1e6 / max(1, sum(tokens))
    token_rate = rows[-1]["mb_per_s"]
    for row in rows:
        row["ratio_to_tokenizer"] = row["mb_per_s"] / token_rate
    return rows


def estimate_hours(rows: list[dict], tokens: float, bytes_per_token: float,
                   kept_fraction: float, cores: int) -> dict:
    """Hours ``prepare`` would take to produce ``tokens`` on ``cores`` from the per-core
    rates of :func:`stage_throughput`: the worker stages' seconds per input byte divided
    among ``cores - 1`` workers, against the main process's serial stages on one core
    (the slower of the two bounds the run).  Every stage is charged the whole input: an
    upper bound where earlier stages remove files.  ``kept_fraction``: output bytes per input
    byte (the stdlib keeps ~0.92; BigCode's near dedup removed ~0.47 of one language)."""
    input_mb = tokens * bytes_per_token / kept_fraction / 1e6
    by_where = {"main": 0.0, "workers": 0.0}
    for row, (_, where, _) in zip(rows, STAGE_ROWS):
        by_where[where] += 1.0 / row["mb_per_s"]  # seconds per MB of that stage's input
    workers_s = input_mb * by_where["workers"] / max(1, cores - 1)
    main_s = input_mb * by_where["main"]
    return {"input_gb": round(input_mb / 1e3, 1), "workers_hours": round(workers_s / 3600, 2),
            "main_hours": round(main_s / 3600, 2),
            "hours": round(max(workers_s, main_s) / 3600, 2), "cores": cores}


def _stages_report(args) -> int:
    raw = [(k, c if isinstance(c, bytes) else c.encode("utf-8"))
           for k, c in sources_lib.iter_documents(list(args.sources), args.max_files)
           if not isinstance(c, sources_lib.Unreadable)]
    mb = sum(len(c) for _, c in raw) / 1e6
    print(f"{len(raw)} files, {mb:.1f} MB; one core per stage, each on what the earlier kept")
    rows = stage_throughput(raw)
    for row, (_, where, what) in zip(rows, STAGE_ROWS):
        print(f"{row['stage']:27s} {row['documents']:>6} docs {row['mb_per_s']:8.2f} MB/s "
              f"{row['documents_per_s']:9.0f} docs/s  x{row['ratio_to_tokenizer']:.2f} of "
              f"tokenize  [{where}: {what}]")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        m = prep.prepare(list(args.sources), Path(tmp) / "out", num_workers=args.workers,
                         max_files=args.max_files, progress=False, seq_len=2048)
        wall = time.perf_counter() - start
    kept = m["stages"]["decontamination"]["bytes_kept"] / m["stages"]["read"]["bytes_in"]
    tokens = m["stats"]["document_tokens"]
    print(f"prepare, {args.workers} processes: {mb / wall:.2f} MB/s, {len(raw) / wall:.0f} "
          f"docs/s, {tokens / wall:,.0f} tokens/s in {wall:.1f} s; kept {kept:.1%} of bytes")
    bpt = m["stages"]["decontamination"]["bytes_kept"] / tokens
    for frac in (kept, 0.5):
        est = estimate_hours(rows, 24e9, bpt, frac, 16)
        print(f"24B tokens on 16 cores, keeping {frac:.0%} of the input ({est['input_gb']} GB "
              f"in): {est['hours']} h (workers {est['workers_hours']} h, main process "
              f"{est['main_hours']} h)")
    return 0


def _timed(fn: Callable[[], int]) -> tuple[int, float]:
    start = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*")
    parser.add_argument("--workers", type=int, default=prep.default_num_workers())
    parser.add_argument("--max-files", type=int, default=None)
    parser.add_argument("--stages", action="store_true",
                        help="each cleaning stage's throughput and the whole prepare instead")
    args = parser.parse_args(argv)
    if args.stages:
        return _stages_report(args)
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
