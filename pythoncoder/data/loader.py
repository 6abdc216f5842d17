"""Deterministic, resumable, host-sharded grain loader over prepared shards (DATA-02, DATA-03).

Rows of a split are numbered ``0 .. num_rows-1`` across its shards.  Host ``h`` of
``n`` owns rows ``h, h+n, h+2n, ...`` (``grain`` slicing), so hosts are disjoint and
together complete.  Each epoch the host's rows are shuffled by ``grain`` with a seed
derived from ``(seed, epoch)`` and batched; the partial last batch is dropped, and
every host runs the same ``steps_per_epoch`` (from the smallest host share), so
multi-host steps stay in lockstep.

The position is ``(data_epoch, batch_in_epoch)``: ``get_state()`` returns it with the
settings it depends on, and ``set_state()`` resumes at exactly the next batch, since
batch ``k`` of epoch ``e`` is a pure function of the data, the seed, ``e`` and ``k``.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grain
import numpy as np

from pythoncoder.data.shards import open_split, segment_ids

STATE_VERSION = 1
Batch = dict[str, np.ndarray]


class RowSource:
    """Random access to the rows of memory-mapped shards, as one sequence (grain source)."""

    def __init__(self, shards: list[np.ndarray]) -> None:
        self._shards = shards
        self._starts = np.cumsum([0] + [len(s) for s in shards]).tolist()

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range [0, {len(self)})")
        shard = bisect.bisect_right(self._starts, index) - 1
        return np.array(self._shards[shard][index - self._starts[shard]])


def epoch_seed(seed: int, epoch: int) -> int:
    """The 32-bit shuffle seed of one epoch, mixed from ``(seed, epoch)``."""
    digest = hashlib.sha256(f"pythoncoder-loader:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _to_batch(rows: np.ndarray) -> Batch:
    return {"tokens": rows.astype(np.int32), "segment_ids": segment_ids(rows)}


class Loader:
    """Endless iterator of ``{"tokens", "segment_ids"}`` int32 ``(batch, seq_len + 1)`` batches.

    Use :func:`make_loader` to build one.  ``next(loader)`` advances the position;
    ``get_state()``/``set_state()`` save and restore it (JSON-serialisable).
    """

    def __init__(self, data_dir: str | Path, *, split: str, batch_size: int, seed: int,
                 shard_index: int, shard_count: int, shuffle: bool,
                 num_epochs: int | None, verify: str, num_threads: int, prefetch: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}, "
                             f"{shard_count}")
        self.data_dir = Path(data_dir)
        self.manifest, shards = open_split(self.data_dir, split, verify=verify)
        self.split = split
        self.seq_len = int(self.manifest["seq_len"])
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shard_index, self.shard_count = shard_index, shard_count
        self.shuffle = shuffle
        self.num_epochs = num_epochs
        source = RowSource(shards)
        self.num_rows = len(source)
        self._host_rows = grain.MapDataset.source(source)[shard_index::shard_count]
        # Global row numbers this host reads (rows h, h+n, h+2n, ... of the split).
        self.row_indices = np.arange(shard_index, self.num_rows, shard_count)
        # Every host runs as many steps as the smallest host share allows.
        self.steps_per_epoch = (self.num_rows // shard_count) // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{self.data_dir} {split!r}: {self.num_rows} rows over {shard_count} host(s) "
                f"do not fill one batch of {batch_size}")
        self._read_options = grain.ReadOptions(num_threads=num_threads,
                                               prefetch_buffer_size=prefetch)
        self._epoch = 0
        self._batch = 0
        self._iterator: Iterator[Batch] | None = None

    # --- position -------------------------------------------------------------------

    @property
    def data_epoch(self) -> int:
        """Epoch of the next batch (0-based): how many full passes are done."""
        return self._epoch

    @property
    def batch_in_epoch(self) -> int:
        """Index of the next batch within its epoch."""
        return self._batch

    def get_state(self) -> dict[str, Any]:
        """Position of the next batch plus the settings it is only valid with."""
        return {
            "version": STATE_VERSION,
            "split": self.split,
            "data_epoch": self._epoch,
            "batch_in_epoch": self._batch,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "shard_index": self.shard_index,
            "shard_count": self.shard_count,
            "shuffle": self.shuffle,
            "num_rows": self.num_rows,
            "steps_per_epoch": self.steps_per_epoch,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Resume at the batch ``state`` points to; the settings must be the same."""
        mine = self.get_state()
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r} != {STATE_VERSION}")
        fixed = ("split", "seed", "batch_size", "shard_index", "shard_count", "shuffle",
                 "num_rows", "steps_per_epoch")
        diff = {k: (state.get(k), mine[k]) for k in fixed if state.get(k) != mine[k]}
        if diff:
            raise ValueError("loader state does not match this loader (saved, current): "
                             + ", ".join(f"{k}={a!r}/{b!r}" for k, (a, b) in diff.items()))
        epoch, batch = int(state["data_epoch"]), int(state["batch_in_epoch"])
        if epoch < 0 or not 0 <= batch < self.steps_per_epoch:
            raise ValueError(f"loader state position ({epoch}, {batch}) out of range")
        self._epoch, self._batch = epoch, batch
        self._iterator = None

    # --- data -----------------------------------------------------------------------

    def epoch_dataset(self, epoch: int) -> grain.MapDataset:
        """The batches of one epoch as a random-access grain dataset."""
        rows = self._host_rows
        if self.shuffle:
            rows = rows.shuffle(seed=epoch_seed(self.seed, epoch))
        batches = rows.batch(self.batch_size, drop_remainder=True)[: self.steps_per_epoch]
        return batches.map(_to_batch)

    def _batches(self, epoch: int, start: int) -> Iterator[Batch]:
        dataset = self.epoch_dataset(epoch)[start:]
        return iter(dataset.to_iter_dataset(self._read_options))

    def _generate(self) -> Iterator[Batch]:
        while self.num_epochs is None or self._epoch < self.num_epochs:
            for batch in self._batches(self._epoch, self._batch):
                self._batch += 1
                if self._batch == self.steps_per_epoch:
                    self._epoch, self._batch = self._epoch + 1, 0
                yield batch

    def __iter__(self) -> Loader:
        return self

    def __next__(self) -> Batch:
        if self._iterator is None:
            self._iterator = self._generate()
        return next(self._iterator)

    def iter_epoch(self, epoch: int | None = None) -> Iterator[Batch]:
        """One epoch's batches from its start (default: the current one); the position
        is left alone.  For evaluation: ``make_loader(..., split="val").iter_epoch()``."""
        return self._batches(self._epoch if epoch is None else epoch, 0)


def gather_index(num_rows: int, steps: int, batch: int, rng: np.random.Generator
                 ) -> np.ndarray:
    """``(steps, batch)`` row indices visiting rows as the loader does: each epoch a fresh
    permutation, epochs back to back, so there may be fewer rows than ``steps * batch``
    (a small split, or a machine whose prepare gave fewer rows)."""
    if num_rows < 1:
        raise ValueError("no rows to gather from")
    need = steps * batch
    epochs = -(-need // num_rows)
    return np.concatenate([rng.permutation(num_rows) for _ in range(epochs)])[:need].reshape(
        steps, batch)


def make_loader(
    data_dir: str | Path,
    *,
    split: str = "train",
    batch_size: int,
    seed: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    shuffle: bool | None = None,
    num_epochs: int | None = None,
    verify: str = "sha256",
    num_threads: int = 2,
    prefetch: int = 4,
) -> Loader:
    """A :class:`Loader` over ``data_dir`` (a ``pythoncoder prepare`` output).

    ``shard_index``/``shard_count`` default to ``jax.process_index()`` and
    ``jax.process_count()``.  ``shuffle`` defaults to on for ``train``, off otherwise.
    ``num_epochs=None`` repeats forever.  Every shard is checked against the manifest
    first (``verify="sha256"``, or ``"size"`` for size and header only); a missing,
    truncated or corrupt one raises :class:`~pythoncoder.data.shards.ShardError`
    naming the file.
    """
    if shard_index is None or shard_count is None:
        import jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    return Loader(
        data_dir, split=split, batch_size=batch_size, seed=seed, shard_index=shard_index,
        shard_count=shard_count, shuffle=split == "train" if shuffle is None else shuffle,
        num_epochs=num_epochs, verify=verify, num_threads=num_threads, prefetch=prefetch,
    )
