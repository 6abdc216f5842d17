"""``prepare``'s cleaning over many machines, on datatrove's executors (issue 33, "scale").

``pythoncoder prepare`` cleans on one machine's cores; its near dedup decides in one
process.  For a corpus that wants more machines, this module builds the same cleaning as a
`datatrove <https://github.com/huggingface/datatrove>`_ pipeline and runs it on one of its
executors -- ``local`` (processes on this machine), ``slurm`` (a job array per stage) or
``ray`` -- then ``prepare`` tokenizes the cleaned JSONL on one machine with near dedup off
(tokenizing is the cheap part: 10.7 MB/s per core here).  Four stages, each a datatrove
executor that waits for the one before:

1. ``filter`` (``tasks`` tasks over the input files): the quality filters and the
   decontamination of :mod:`pythoncoder.data.quality` / :mod:`~pythoncoder.data.decontam`
   (:class:`CleaningFilter`), the kept documents written to ``WORK/filtered``, the removed
   ones to ``WORK/removed/filter`` (with the reason), and datatrove's MinHash signatures of
   the kept ones: BigCode's identifier 5-grams (:class:`IdentifierTokenizer`, no text
   normalisation), 32 buckets x 8 hashes = 256;
2. ``buckets`` (32 tasks, one per bucket): datatrove's LSH buckets;
3. ``cluster`` (1 task): the duplicate clusters, one file of each kept;
4. ``dedup`` (``tasks`` tasks): the near duplicates (exact copies among them, Jaccard 1)
   dropped from ``WORK/filtered`` (to ``WORK/removed/near_dedup``), the rest written to
   ``OUT/*.jsonl.gz`` with their ``path``.

Which copy of a cluster is kept is datatrove's choice (by task and position), not input
order as in ``prepare``; the sets removed otherwise follow the same rules.  Command::

    python -m pythoncoder.data.distributed 'data/*.parquet' --work work/ --out clean/ \\
        --tasks 64 --executor slurm --slurm-partition cpu
    pythoncoder prepare clean/*.jsonl.gz --out data/ --no-near-dedup

Input: JSONL(.gz) or Parquet files with a ``content`` column (``--text-key``) and,
optionally, ``path``.  Needs ``pip install 'pythoncoder[distributed]'`` (datatrove).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import re
import sys
from pathlib import Path
from typing import Any

from pythoncoder.data import decontam as decontam_lib
from pythoncoder.data import quality as quality_lib
from pythoncoder.data import stages as stages_lib

_IDENT = re.compile(r"[A-Za-z0-9_]+")
EXECUTORS = ("local", "slurm", "ray")


def _datatrove():
    try:
        import datatrove  # noqa: F401
    except ImportError as e:
        raise ImportError("the distributed cleaning needs datatrove: "
                          "pip install 'pythoncoder[distributed]'") from e


def identifier_tokenizer():
    """A datatrove ``WordTokenizer`` whose words are BigCode's identifier tokens."""
    from datatrove.utils.word_tokenizers import WordTokenizer

    class IdentifierTokenizer(WordTokenizer):
        def word_tokenize(self, text: str) -> list[str]:
            return _IDENT.findall(text)

        def sent_tokenize(self, text: str) -> list[str]:
            return text.splitlines()

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [m.span() for m in _IDENT.finditer(text)]

    return IdentifierTokenizer("code")


def minhash_config(near: Any = None):
    """datatrove's ``MinhashConfig`` for :class:`~pythoncoder.data.neardup.NearDedupConfig`:
    identifier 5-grams as they are (no lowercasing, punctuation or number folding)."""
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.text import TextNormConfig

    from pythoncoder.data.neardup import NearDedupConfig

    near = near or NearDedupConfig()
    return MinhashConfig(
        n_grams=near.ngram, num_buckets=near.num_bands,
        hashes_per_bucket=near.num_perm // near.num_bands, seed=near.seed,
        norm_config=TextNormConfig(lowercase=False, norm_whitespace=False,
                                   remove_punctuation=False, norm_unicode_diacritics=False,
                                   norm_numbers=False),
        # sha1: no xxhash dependency (and xxhash 3.6 refuses the str datatrove 0.10 gives it)
        hash_config=HashConfig(precision=64, hash_fc="sha1"))


def cleaning_filter(cleaning: stages_lib.Cleaning, exclusion_writer=None):
    """A datatrove filter that drops what stages ``quality`` and ``decontamination`` drop,
    with the reason (``quality:long_line``, ``benchmark:humaneval:HumanEval/3``)."""
    from datatrove.pipeline.filters.base_filter import BaseFilter

    class CleaningFilter(BaseFilter):
        name = "pythoncoder cleaning"

        def __init__(self) -> None:
            super().__init__(exclusion_writer)
            self._decontaminator = None

        def filter(self, doc) -> bool | tuple[bool, str]:
            reason = quality_lib.check(doc.text, cleaning.quality, str(doc.id))
            if reason is not None:
                return False, f"quality:{reason}"
            if cleaning.benchmarks:
                if self._decontaminator is None:
                    self._decontaminator = decontam_lib.Decontaminator(
                        stages_lib.load_benchmarks(cleaning.benchmarks), cleaning.decontam)
                found = self._decontaminator.find(doc.text)
                if found is not None:
                    return False, f"benchmark:{found.item}"
            return True

    return CleaningFilter()


def _reader(inputs: str, text_key: str):
    from datatrove.pipeline.readers import JsonlReader, ParquetReader

    folder, _, pattern = inputs.rpartition("/")
    folder = folder or "."
    cls = ParquetReader if pattern.endswith(".parquet") else JsonlReader
    return cls(folder, glob_pattern=pattern, text_key=text_key, id_key="path")


def _writer(folder: Path):
    from datatrove.pipeline.writers import JsonlWriter

    return JsonlWriter(str(folder), output_filename="${rank}.jsonl.gz",
                       adapter=lambda self, doc: {"content": doc.text, "path": doc.id,
                                                  **doc.metadata})


@dataclasses.dataclass
class Plan:
    """The four stages' pipelines and task counts (module docstring)."""

    stages: list[tuple[str, list, int]]
    work: Path
    out: Path


def plan(inputs: str, work: str | Path, out: str | Path, *, tasks: int,
         cleaning: stages_lib.Cleaning | None = None, text_key: str = "content") -> Plan:
    _datatrove()
    from datatrove.pipeline.dedup.minhash import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader

    cleaning = cleaning or stages_lib.Cleaning()
    if cleaning.near_dedup is None:
        raise ValueError("the distributed cleaning's dedup is its MinHash stage: near dedup "
                         "cannot be off")
    if "://" not in inputs and not glob.glob(inputs):
        raise FileNotFoundError(f"no input file matches {inputs}")
    stages_lib.load_benchmarks(cleaning.benchmarks)  # a missing benchmark file fails here
    work, out = Path(work), Path(out)
    config = minhash_config(cleaning.near_dedup)
    sigs, buckets, remove = work / "signatures", work / "buckets", work / "remove_ids"
    filtered = work / "filtered"
    return Plan([
        ("filter", [_reader(inputs, text_key),
                    cleaning_filter(cleaning, _writer(work / "removed" / "filter")),
                    _writer(filtered),
                    MinhashDedupSignature(str(sigs), config=config,
                                          language=identifier_tokenizer())], tasks),
        ("buckets", [MinhashDedupBuckets(str(sigs), str(buckets), config=config)],
         config.num_buckets),
        ("cluster", [MinhashDedupCluster(str(buckets), str(remove), config=config)], 1),
        ("dedup", [JsonlReader(str(filtered), text_key="content", id_key="path"),
                   MinhashDedupFilter(str(remove),
                                      exclusion_writer=_writer(work / "removed" / "near_dedup")),
                   _writer(out)], tasks),
    ], work, out)


def executors(p: Plan, executor: str = "local", *, workers: int = -1,
              slurm: dict[str, Any] | None = None) -> list:
    """One datatrove executor per stage, each depending on the one before."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    out, previous = [], None
    for name, pipeline, tasks in p.stages:
        logs = str(p.work / "logs" / name)
        if executor == "local":
            from datatrove.executor import LocalPipelineExecutor

            ex = LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers,
                                       logging_dir=logs, depends=previous)
        elif executor == "slurm":
            from datatrove.executor import SlurmPipelineExecutor

            ex = SlurmPipelineExecutor(pipeline=pipeline, tasks=tasks, logging_dir=logs,
                                       job_name=f"pythoncoder-{name}", depends=previous,
                                       **(slurm or {}))
        else:
            from datatrove.executor import RayPipelineExecutor

            ex = RayPipelineExecutor(pipeline, tasks=tasks, logging_dir=logs, depends=previous)
        out.append(ex)
        previous = ex
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pythoncoder.data.distributed",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("inputs", help="a glob of input files: DIR/*.parquet or DIR/*.jsonl.gz")
    parser.add_argument("--work", required=True, type=Path, help="intermediate files, logs")
    parser.add_argument("--out", required=True, type=Path, help="cleaned JSONL(.gz) files")
    parser.add_argument("--tasks", type=int, default=4, help="tasks of stages 1 and 4")
    parser.add_argument("--workers", type=int, default=-1, help="local: processes at once")
    parser.add_argument("--executor", choices=EXECUTORS, default="local")
    parser.add_argument("--slurm-partition", default=None)
    parser.add_argument("--slurm-time", default="24:00:00")
    parser.add_argument("--text-key", default="content")
    parser.add_argument("--decontaminate", action="append", default=None, metavar="BENCHMARK")
    args = parser.parse_args(argv)
    if args.tasks < 1:
        parser.error("--tasks must be positive")
    cleaning = stages_lib.Cleaning(
        benchmarks=tuple(args.decontaminate or decontam_lib.DEFAULT_BENCHMARKS))
    try:
        p = plan(args.inputs, args.work, args.out, tasks=args.tasks, cleaning=cleaning,
                 text_key=args.text_key)
        slurm = {"partition": args.slurm_partition, "time": args.slurm_time}
        chain = executors(p, args.executor, workers=args.workers, slurm=slurm)
    except (ImportError, ValueError, FileNotFoundError) as e:
        print(f"pythoncoder.data.distributed: {e}", file=sys.stderr)
        return 2
    chain[-1].run()  # datatrove runs each stage's dependencies first
    print(f"cleaned: {p.out}; removed: {p.work / 'removed'}; next: pythoncoder prepare "
          f"{p.out}/*.jsonl.gz --out DATA --no-near-dedup")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
