"""Unit tests of the loader: row source, epochs, limits and state validation."""

from __future__ import annotations

import numpy as np
import pytest

from pythoncoder.data import loader as loader_lib
from pythoncoder.data import shards
from pythoncoder.data.prepare import prepare
from pythoncoder.testing.corpus import write_corpus

SEQ = 16


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    write_corpus(root / "src", 20, min_chars=300)
    prepare([root / "src"], root / "out", seq_len=SEQ, val_fraction=0.2, num_workers=1,
            shard_tokens=7 * (SEQ + 1), progress=False)
    return root / "out"


def _make(data, **kw):
    kw = {"batch_size": 3, "seed": 1, "shard_index": 0, "shard_count": 1} | kw
    return loader_lib.make_loader(data, **kw)


def test_row_source_spans_shards(data):
    _, arrays = shards.open_split(data, "train")
    src = loader_lib.RowSource(arrays)
    flat = np.concatenate(arrays)
    assert len(src) == len(flat) and len(arrays) > 2
    for i in (0, 6, 7, len(flat) - 1):
        np.testing.assert_array_equal(src[i], flat[i])
    with pytest.raises(IndexError):
        src[len(flat)]


def test_epoch_seeds_differ():
    seeds = {loader_lib.epoch_seed(0, e) for e in range(100)}
    assert len(seeds) == 100 and all(0 <= s < 2**32 for s in seeds)
    assert loader_lib.epoch_seed(1, 0) != loader_lib.epoch_seed(0, 1)


def test_iter_epoch_equals_the_iterated_epoch(data):
    a = _make(data)
    first = [next(a) for _ in range(a.steps_per_epoch)]
    second = [next(a) for _ in range(a.steps_per_epoch)]
    b = _make(data)
    for got, want in ((list(b.iter_epoch(1)), second), (list(b.iter_epoch()), first)):
        assert len(got) == len(want)
        for x, y in zip(got, want):
            np.testing.assert_array_equal(x["tokens"], y["tokens"])


def test_num_epochs_stops(data):
    one = _make(data, num_epochs=1)
    assert len(list(one)) == one.steps_per_epoch
    assert one.data_epoch == 1


def test_batch_larger_than_host_share_is_an_error(data):
    rows = _make(data).num_rows
    with pytest.raises(ValueError, match="do not fill one batch"):
        _make(data, batch_size=rows // 2 + 1, shard_index=1, shard_count=2)


def test_bad_arguments_and_states(data):
    with pytest.raises(ValueError, match="shard_index"):
        _make(data, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="no split"):
        _make(data, split="test")
    ld = _make(data)
    state = ld.get_state()
    with pytest.raises(ValueError, match="out of range"):
        ld.set_state(state | {"batch_in_epoch": ld.steps_per_epoch})
    with pytest.raises(ValueError, match="version"):
        ld.set_state(state | {"version": 99})


def test_set_state_restarts_a_running_iterator(data):
    ld = _make(data)
    start = ld.get_state()
    first = next(ld)
    next(ld)
    ld.set_state(start)
    np.testing.assert_array_equal(next(ld)["tokens"], first["tokens"])


def test_shuffle_off_reads_rows_in_order(data):
    _, arrays = shards.open_split(data, "train")
    flat = np.concatenate(arrays).astype(np.int32)
    ld = _make(data, shuffle=False, batch_size=2, shard_index=1, shard_count=2)
    batch = next(ld)
    np.testing.assert_array_equal(batch["tokens"], flat[[1, 3]])
