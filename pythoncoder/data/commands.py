"""``pythoncoder prepare SOURCES... --out DIR``: the data command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pythoncoder.data import prepare as prepare_lib


def configure_prepare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources", nargs="*", metavar="SOURCE",
        help="directories of .py files, .py files, JSONL files with a 'content' field, or "
             "Parquet files; none: the running interpreter's standard library")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: the user cache entry for the stdlib "
                             "corpus, as `pythoncoder train` uses it; required with SOURCES)")
    parser.add_argument("--seq-len", type=int, default=prepare_lib.DEFAULT_SEQ_LEN,
                        help="tokens per training sequence; rows hold seq_len + 1 "
                             "(default %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=prepare_lib.DEFAULT_VAL_FRACTION,
                        help="share of files (by path hash) in the val split "
                             "(default %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="tokenizer processes (default: all available CPUs)")
    parser.add_argument("--max-files", type=int, default=None,
                        help="read at most this many documents")
    parser.add_argument("--max-bytes", type=int, default=prepare_lib.DEFAULT_MAX_BYTES,
                        help="drop files larger than this (default %(default)s)")
    parser.add_argument("--min-chars", type=int, default=prepare_lib.DEFAULT_MIN_CHARS,
                        help="drop files with fewer non-blank characters (default %(default)s)")
    parser.add_argument("--shard-tokens", type=int, default=prepare_lib.DEFAULT_SHARD_TOKENS,
                        help="tokens per shard, at most (default %(default)s)")
    parser.add_argument("--tokenizer", default=None, metavar="TOKENIZER_JSON",
                        help="use this tokenizer.json (e.g. the official Qwen one) instead of "
                             "building it from qwen.tiktoken")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    if args.out is None:
        if args.sources:
            print("pythoncoder prepare: --out DIR is required with SOURCES", file=sys.stderr)
            return 2
        if args.tokenizer or args.max_bytes != prepare_lib.DEFAULT_MAX_BYTES or \
                args.min_chars != prepare_lib.DEFAULT_MIN_CHARS:
            print("pythoncoder prepare: filter and tokenizer options need --out DIR",
                  file=sys.stderr)
            return 2
        out = prepare_lib.ensure_stdlib_data(
            args.seq_len, max_files=args.max_files, num_workers=args.workers,
            val_fraction=args.val_fraction, progress=progress)
        print(prepare_lib.summary(prepare_lib.shards_lib.read_manifest(out)))
        print(f"out: {out}")
        return 0
    try:
        manifest = prepare_lib.prepare(
            args.sources, args.out, seq_len=args.seq_len, val_fraction=args.val_fraction,
            num_workers=args.workers, max_files=args.max_files, max_bytes=args.max_bytes,
            min_chars=args.min_chars, shard_tokens=args.shard_tokens,
            tokenizer_path=args.tokenizer, progress=progress)
    except (FileNotFoundError, ValueError) as e:
        print(f"pythoncoder prepare: {e}", file=sys.stderr)
        return 1
    print(prepare_lib.summary(manifest))
    print(f"out: {args.out}")
    return 0
