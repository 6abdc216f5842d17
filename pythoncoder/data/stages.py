"""The cleaning stages of ``prepare``, in order, and their ledger (DATA-04 .. DATA-07).

1. ``read``: decode (PEP 263, BOM dropped); unreadable, binary (NUL bytes) and undecodable
   documents dropped;
2. ``exact_dedup``: the same text (sha256) as an earlier document;
3. ``quality``: :mod:`pythoncoder.data.quality`'s filters, the ``ast`` parse last;
4. ``near_dedup``: :mod:`pythoncoder.data.neardup`, the first file of a cluster kept;
5. ``decontamination``: :mod:`pythoncoder.data.decontam`.

Stages 1, 2 and every decision run in the main process in input order, so the result does
not depend on the number of workers; the per-document work of 3 and 4 (the MinHash) runs in
the worker processes, and that of 5 too, on the near-dedup survivors only, with their
tokenization.  Each stage counts documents and bytes in, dropped (by
reason) and kept; every dropped document is a line of the audit file ``removed.jsonl``:
``{"key", "stage", "reason", "bytes", "match", "method", "score"}`` (``match``: the kept
file a duplicate copies, or the benchmark item, e.g. ``humaneval:HumanEval/12``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tokenize
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from pythoncoder.data import decontam as decontam_lib
from pythoncoder.data import neardup as neardup_lib
from pythoncoder.data import quality as quality_lib
from pythoncoder.data.sources import Unreadable

STAGES = ("read", "exact_dedup", "quality", "near_dedup", "decontamination")
REASONS = {
    "read": ("unreadable", "binary", "not_utf8"),
    "exact_dedup": ("duplicate",),
    "quality": quality_lib.REASONS,
    "near_dedup": ("near_duplicate",),
    "decontamination": ("benchmark",),
}
ALL_REASONS = tuple(r for s in STAGES for r in REASONS[s])
AUDIT_FILE = "removed.jsonl"
STAGES_VERSION = 2  # bump when a stage's behaviour changes, so cached datasets are remade


@dataclasses.dataclass(frozen=True)
class Cleaning:
    """What the stages do.  ``near_dedup=None`` switches near dedup off; no
    ``benchmarks`` switches decontamination off."""

    quality: quality_lib.QualityConfig = quality_lib.QualityConfig()
    near_dedup: neardup_lib.NearDedupConfig | None = neardup_lib.NearDedupConfig()
    benchmarks: tuple[str, ...] = decontam_lib.DEFAULT_BENCHMARKS
    decontam: decontam_lib.DecontamConfig = decontam_lib.DecontamConfig()

    def describe(self) -> dict[str, Any]:
        return {"quality": dataclasses.asdict(self.quality),
                "near_dedup": None if self.near_dedup is None
                else {**dataclasses.asdict(self.near_dedup), "library": _rensa_version()},
                "decontamination": {**dataclasses.asdict(self.decontam),
                                    "benchmarks": list(self.benchmarks)}}


    def fingerprint(self) -> str:
        """Short digest of the settings (and the stages' version): keys cached datasets."""
        text = json.dumps([STAGES_VERSION, self.describe()], sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]


def _rensa_version() -> str:
    from importlib.metadata import version

    return f"rensa {version('rensa')}"


def decode_source(content: bytes) -> str | None:
    """Python source bytes as text, by the PEP 263 declaration (``None``: undecodable)."""
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(content).readline)
        return content.decode(encoding).removeprefix("\ufeff")
    except (SyntaxError, UnicodeDecodeError, LookupError):
        return None


class Ledger:
    """Per-stage counts and the audit file of removed documents."""

    def __init__(self, audit: TextIO) -> None:
        self._audit = audit
        self.counts = {s: {"documents_in": 0, "bytes_in": 0, "bytes_dropped": 0,
                           "dropped": Counter()} for s in STAGES}
        self.removed_per_benchmark: Counter = Counter()

    def enter(self, stage: str, nbytes: int) -> None:
        c = self.counts[stage]
        c["documents_in"] += 1
        c["bytes_in"] += nbytes

    def drop(self, stage: str, key: str, reason: str, nbytes: int, match: str | None = None,
             method: str | None = None, score: float | None = None) -> None:
        assert reason in REASONS[stage], (stage, reason)
        c = self.counts[stage]
        c["dropped"][reason] += 1
        c["bytes_dropped"] += nbytes
        if stage == "decontamination" and match:
            self.removed_per_benchmark[match.split(":", 1)[0]] += 1
        self._audit.write(json.dumps({"key": key, "stage": stage, "reason": reason,
                                      "bytes": nbytes, "match": match, "method": method,
                                      "score": score}) + "\n")

    def report(self) -> dict[str, Any]:
        out = {}
        for stage, c in self.counts.items():
            dropped = sum(c["dropped"].values())
            out[stage] = {"documents_in": c["documents_in"], "bytes_in": c["bytes_in"],
                          "dropped": {r: c["dropped"][r] for r in REASONS[stage]},
                          "documents_dropped": dropped, "bytes_dropped": c["bytes_dropped"],
                          "documents_kept": c["documents_in"] - dropped,
                          "bytes_kept": c["bytes_in"] - c["bytes_dropped"]}
        return out

    def dropped_by_reason(self) -> dict[str, int]:
        return {r: self.counts[s]["dropped"][r] for s in STAGES for r in REASONS[s]}


class ReadAndExact:
    """Stages 1 and 2, in the main process: ``admit(key, content)`` -> text or ``None``."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._seen: dict[bytes, str] = {}

    def admit(self, key: str, content: bytes | str | Unreadable) -> str | None:
        led = self.ledger
        if isinstance(content, Unreadable):
            led.enter("read", 0)
            led.drop("read", key, content.reason, 0, method=content.detail)
            return None
        size = len(content) if isinstance(content, bytes) else len(content.encode("utf-8"))
        led.enter("read", size)
        if isinstance(content, bytes):
            if b"\0" in content:
                led.drop("read", key, "binary", size)
                return None
            text = decode_source(content)
            if text is None:
                led.drop("read", key, "not_utf8", size)
                return None
        else:
            if "\0" in content:
                led.drop("read", key, "binary", size)
                return None
            text = content.removeprefix("\ufeff")
        encoded = text.encode("utf-8")
        nbytes = len(encoded)
        led.enter("exact_dedup", nbytes)
        digest = hashlib.sha256(encoded).digest()
        first = self._seen.get(digest)
        if first is not None:
            led.drop("exact_dedup", key, "duplicate", nbytes, match=first, method="sha256")
            return None
        self._seen[digest] = key
        return text


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A worker's findings on one document for stages 3 and 4."""

    nbytes: int  # of the UTF-8 text
    quality: str | None
    sketch: Any  # rensa.RMinHash | None


class Analyzer:
    """The per-document work of stages 3-5, built once per worker process: ``__call__``
    (quality, MinHash) on every document, ``contamination`` on the near-dedup survivors."""

    def __init__(self, cleaning: Cleaning, benchmarks: tuple[decontam_lib.Benchmark, ...]
                 ) -> None:
        self.cleaning = cleaning
        self.decontaminator = (decontam_lib.Decontaminator(benchmarks, cleaning.decontam)
                               if benchmarks else None)

    def __call__(self, key: str, text: str) -> Verdict:
        nbytes = len(text.encode("utf-8"))
        reason = quality_lib.check(text, self.cleaning.quality, key)
        if reason is not None:
            return Verdict(nbytes, reason, None)
        near = self.cleaning.near_dedup
        return Verdict(nbytes, None, neardup_lib.sketch(text, near) if near else None)

    def contamination(self, text: str) -> decontam_lib.Match | None:
        return self.decontaminator.find(text) if self.decontaminator is not None else None


class Decide:
    """Stages 3-5's decisions, in the main process, in input order."""

    def __init__(self, ledger: Ledger, cleaning: Cleaning) -> None:
        self.ledger = ledger
        self.near = (neardup_lib.NearDedup(cleaning.near_dedup)
                     if cleaning.near_dedup is not None else None)

    def passes_near_dedup(self, key: str, verdict: Verdict) -> bool:
        """Stages 3 and 4."""
        led = self.ledger
        nbytes = verdict.nbytes
        led.enter("quality", nbytes)
        if verdict.quality is not None:
            led.drop("quality", key, verdict.quality, nbytes)
            return False
        led.enter("near_dedup", nbytes)
        if self.near is not None:
            found = self.near.add(key, verdict.sketch)
            if found is not None:
                led.drop("near_dedup", key, "near_duplicate", nbytes, match=found[0],
                         method="minhash", score=round(found[1], 4))
                return False
        return True

    def clean(self, key: str, nbytes: int, m: decontam_lib.Match | None) -> bool:
        """Stage 5, for a document that passed stages 3 and 4."""
        led = self.ledger
        led.enter("decontamination", nbytes)
        if m is not None:
            led.drop("decontamination", key, "benchmark", nbytes, match=m.item,
                     method=m.method, score=m.score)
            return False
        return True


def load_benchmarks(specs: tuple[str, ...]) -> tuple[decontam_lib.Benchmark, ...]:
    return tuple(decontam_lib.load_benchmark(s) for s in specs)


def read_audit(path: str | Path) -> list[dict[str, Any]]:
    """The rows of an audit file (``removed.jsonl``)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
