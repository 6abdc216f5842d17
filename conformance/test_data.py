"""DATA-01 packing, DATA-02 shards and manifest, DATA-03 the loader.

DATA-01: "Documents joined with EOS (151643), which is a training target, never masked;
sequences exactly 2048 tokens, no padding in training shards; segment ids keep
attention inside its document."
DATA-02: "a missing, truncated or corrupt shard raises an error that names the file."
DATA-03: "The loader is deterministic, resumable from a saved position and shardable
across hosts."

Everything runs on a small generated corpus with ``seq_len = 64``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pythoncoder.data import shards, sources, stages
from pythoncoder.data.loader import make_loader
from pythoncoder.data.prepare import prepare, split_of
from pythoncoder.data.tokenizer import (
    EOS_ID,
    NUM_TOKENS,
    encode_documents,
    load_tokenizer,
    tokenizer_fingerprint,
)
from pythoncoder.spec import check_values
from pythoncoder.testing import corpus as synthetic

SEQ_LEN = 64
VAL_FRACTION = 0.2
MAX_BYTES = 4000
SHARD_TOKENS = 10 * (SEQ_LEN + 1)  # ten rows per shard: several shards per split
DATA01 = check_values("DATA-01")

# Files prepare() must drop, by reason.  "zz_" sorts after the original it duplicates.
BAD_FILES = {
    "bad_syntax.py": ("syntax_error", b"def broken(:\n    return 1\n"),
    "python2.py": ("syntax_error", b"print 'hello'\n"),
    "empty.py": ("too_small", b""),
    "blank.py": ("too_small", b"   \n\t\n"),
    "latin1.py": ("not_utf8", b"# caf\xe9\nx = 1\n"),
    "huge.py": ("too_large", b"x = 1\n" * 1000),
}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    paths = synthetic.write_corpus(root, 60, seed=1, min_chars=300)
    for name, (_, data) in BAD_FILES.items():
        (root / name).write_bytes(data)
    (root / "zz_duplicate.py").write_bytes(paths[0].read_bytes())
    (root / "mentions_eos.py").write_text('EOT = "<|endoftext|>"  # <|fim_pad|>\n')
    (root / "bom.py").write_bytes(b"\xef\xbb\xbfy = 2\n")
    (root / "README.md").write_text("not python\n")
    return root


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare([corpus], out, seq_len=SEQ_LEN, val_fraction=VAL_FRACTION, num_workers=1,
            max_bytes=MAX_BYTES, shard_tokens=SHARD_TOKENS, progress=False)
    return out


def _manifest(data_dir: Path) -> dict:
    return json.loads((data_dir / "manifest.json").read_text())


def _split_rows(data_dir: Path, split: str) -> np.ndarray:
    m = _manifest(data_dir)
    return np.concatenate([np.load(data_dir / s["file"]) for s in m["splits"][split]["shards"]])


def _kept_documents(corpus: Path) -> list[tuple[str, str]]:
    """(key, text) of the files prepare() keeps, in its reading order, by construction."""
    dropped = set(BAD_FILES) | {"zz_duplicate.py", "README.md"}
    out = []
    for path in sources.python_files(corpus):
        key = path.relative_to(corpus).as_posix()
        if key not in dropped:
            out.append((key, path.read_bytes().decode("utf-8-sig")))
    return out


def _expected_stream(tok, corpus: Path, split: str) -> np.ndarray:
    docs = [text for key, text in _kept_documents(corpus) if split_of(key, VAL_FRACTION) == split]
    return np.array([t for ids in encode_documents(tok, docs) for t in [*ids, EOS_ID]],
                    dtype=np.uint32)


def _segment_ids_reference(row: np.ndarray) -> list[int]:
    """Naive: a new document starts right after each EOS."""
    out, seg = [], 1
    for token in row:
        out.append(seg)
        if token == EOS_ID:
            seg += 1
    return out


def _row_index(data_dir: Path, split: str = "train") -> dict[bytes, int]:
    rows = _split_rows(data_dir, split)
    index = {r.astype(np.int32).tobytes(): i for i, r in enumerate(rows)}
    assert len(index) == len(rows)  # rows are distinct, so a row names its index
    return index


def _rows_of(batches: list[dict], index: dict[bytes, int]) -> list[int]:
    return [index[r.tobytes()] for b in batches for r in b["tokens"]]


def _take(loader, n: int) -> list[dict]:
    return [next(loader) for _ in range(n)]


# --- DATA-01 ---------------------------------------------------------------------------


@pytest.mark.req("DATA-01")
@pytest.mark.parametrize("split", ["train", "val"])
def test_rows_are_the_eos_joined_stream_without_padding(tok, corpus, prepared, split):
    stream = _expected_stream(tok, corpus, split)
    rows = _split_rows(prepared, split)
    n = (len(stream) - 1) // SEQ_LEN
    assert rows.dtype == np.uint32 and rows.shape == (n, SEQ_LEN + 1)
    assert n >= 10
    # Row i is stream[i*L : i*L + L + 1]: consecutive rows share one token, nothing is
    # padded, nothing but the unfilled tail (< one row) is left out.
    expected = np.stack([stream[i * SEQ_LEN : i * SEQ_LEN + SEQ_LEN + 1] for i in range(n)])
    np.testing.assert_array_equal(rows, expected)
    assert len(stream) - (n * SEQ_LEN + 1) < SEQ_LEN
    m = _manifest(prepared)["splits"][split]
    assert m["dropped_tail_tokens"] == len(stream) - (n * SEQ_LEN + 1)
    assert rows.max() < NUM_TOKENS


@pytest.mark.req("DATA-01")
def test_eos_ends_every_document_and_is_a_target(tok, corpus, prepared):
    docs = [t for k, t in _kept_documents(corpus) if split_of(k, VAL_FRACTION) == "train"]
    stream = _expected_stream(tok, corpus, "train")
    assert stream[-1] == EOS_ID and int((stream == EOS_ID).sum()) == len(docs)
    rows = _split_rows(prepared, "train")
    targets = rows[:, 1:]
    covered = stream[1 : len(rows) * SEQ_LEN + 1]
    # Every token after the first is the target of exactly one position; EOS included.
    np.testing.assert_array_equal(targets.reshape(-1), covered)
    assert int((targets == EOS_ID).sum()) == int((covered == EOS_ID).sum()) > 10


@pytest.mark.req("DATA-01")
def test_special_strings_in_files_do_not_become_eos(prepared, corpus, tok):
    stream = _expected_stream(tok, corpus, split_of("mentions_eos.py", VAL_FRACTION))
    text = (corpus / "mentions_eos.py").read_text()
    (ids,) = encode_documents(tok, [text])
    assert EOS_ID not in ids and len(ids) > 5
    assert tok.decode(ids) == text
    assert int((stream == EOS_ID).sum()) == sum(
        split_of(k, VAL_FRACTION) == split_of("mentions_eos.py", VAL_FRACTION)
        for k, _ in _kept_documents(corpus))


@pytest.mark.req("DATA-01")
def test_segment_ids_keep_documents_apart(prepared):
    loader = make_loader(prepared, batch_size=4, shard_index=0, shard_count=1)
    checked_boundaries = 0
    for batch in _take(loader, loader.steps_per_epoch):
        tokens, seg = batch["tokens"], batch["segment_ids"]
        assert tokens.dtype == seg.dtype == np.int32
        assert tokens.shape == seg.shape == (4, SEQ_LEN + 1)
        for row, row_seg in zip(tokens, seg):
            assert row_seg.tolist() == _segment_ids_reference(row)
            eos = np.flatnonzero(row == EOS_ID)
            for j in eos[eos > 0]:
                # The EOS target stays in its document: same segment as the token before.
                assert row_seg[j] == row_seg[j - 1]
                checked_boundaries += 1
            # One segment per document piece: segments change only right after EOS.
            changes = np.flatnonzero(np.diff(row_seg)) + 1
            np.testing.assert_array_equal(changes, eos[eos < SEQ_LEN] + 1)
    assert checked_boundaries > 10


@pytest.mark.req("DATA-01")
def test_default_sequence_length(tmp_path):
    from pythoncoder.cli import build_parser

    assert inspect.signature(prepare).parameters["seq_len"].default == DATA01["seq_len"]
    args = build_parser("prepare").parse_args(["prepare", "--out", str(tmp_path)])
    assert args.seq_len == DATA01["seq_len"]
    assert EOS_ID == DATA01["eos"]


@pytest.mark.req("DATA-01")
def test_filtering_counts_and_stable_path_split(corpus, prepared):
    m = _manifest(prepared)
    expected = {reason: 0 for reason in stages.ALL_REASONS}
    for reason, _ in BAD_FILES.values():
        expected[reason] += 1
    expected["duplicate"] += 1
    assert m["stats"]["dropped"] == expected
    kept = _kept_documents(corpus)
    assert m["stats"]["files_kept"] == len(kept)
    assert m["stats"]["files_seen"] == len(kept) + len(BAD_FILES) + 1  # README.md is not read
    n_val = sum(split_of(k, VAL_FRACTION) == "val" for k, _ in kept)
    assert m["splits"]["val"]["documents"] == n_val
    assert m["splits"]["train"]["documents"] == len(kept) - n_val
    assert 0 < n_val < len(kept)


@pytest.mark.req("DATA-01")
def test_split_depends_only_on_the_path(corpus, prepared, tmp_path):
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(corpus, moved)
    (moved / "extra_new_file.py").write_text("z = 3\n")
    out = tmp_path / "out"
    prepare([moved], out, seq_len=SEQ_LEN, val_fraction=VAL_FRACTION, num_workers=1,
            max_bytes=MAX_BYTES, shard_tokens=SHARD_TOKENS, progress=False)
    # The same files land in the same split wherever the corpus lives; the new file only
    # adds to one split.
    before, after = _manifest(prepared)["splits"], _manifest(out)["splits"]
    new_split = split_of("extra_new_file.py", VAL_FRACTION)
    for split in ("train", "val"):
        assert after[split]["documents"] == before[split]["documents"] + (split == new_split)
    old = {"train", "val"} - {new_split}
    for split in old:
        np.testing.assert_array_equal(_split_rows(out, split), _split_rows(prepared, split))
    fractions = np.mean([split_of(f"pkg/file_{i}.py", 0.25) == "val" for i in range(4000)])
    np.testing.assert_allclose(fractions, 0.25, atol=0.03)


@pytest.mark.req("DATA-01")
def test_parallel_workers_give_identical_shards(corpus, prepared, tmp_path):
    out = tmp_path / "parallel"
    prepare([corpus], out, seq_len=SEQ_LEN, val_fraction=VAL_FRACTION, num_workers=2,
            max_bytes=MAX_BYTES, shard_tokens=SHARD_TOKENS, progress=False)
    a, b = _manifest(prepared), _manifest(out)
    assert b["stats"]["num_workers"] == 2
    assert a["splits"] == b["splits"]  # same shards, same sha256


# --- DATA-02 ---------------------------------------------------------------------------


@pytest.mark.req("DATA-02")
def test_manifest_records_counts_and_checksums(tok, prepared):
    m = _manifest(prepared)
    assert m["tokenizer_sha256"] == tokenizer_fingerprint(tok)
    assert m["seq_len"] == SEQ_LEN and m["row_len"] == SEQ_LEN + 1 and m["eos_id"] == EOS_ID
    for split in ("train", "val"):
        entries = m["splits"][split]["shards"]
        assert len(entries) >= 2 if split == "train" else len(entries) >= 1
        for e in entries:
            path = prepared / e["file"]
            rows = np.load(path)
            assert e["rows"] == rows.shape[0] and e["tokens"] == rows.size == e["rows"] * 65
            assert e["bytes"] == path.stat().st_size
            assert e["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert m["splits"][split]["rows"] == sum(e["rows"] for e in entries)
    assert not [p for p in prepared.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.fixture
def damaged(prepared, tmp_path) -> tuple[Path, Path]:
    """A copy of the prepared directory and the path of its second train shard."""
    copy = tmp_path / "data"
    shutil.copytree(prepared, copy)
    return copy, copy / _manifest(copy)["splits"]["train"]["shards"][1]["file"]


@pytest.mark.req("DATA-02")
def test_missing_shard_names_the_file(damaged):
    data, shard = damaged
    shard.unlink()
    with pytest.raises(shards.ShardError, match="missing") as err:
        make_loader(data, batch_size=2, shard_index=0, shard_count=1)
    assert str(shard) in str(err.value) and err.value.path == shard


@pytest.mark.req("DATA-02")
@pytest.mark.parametrize("verify", ["sha256", "size"])
def test_truncated_shard_names_the_file(damaged, verify):
    data, shard = damaged
    shard.write_bytes(shard.read_bytes()[:-7])
    with pytest.raises(shards.ShardError, match="truncated") as err:
        make_loader(data, batch_size=2, shard_index=0, shard_count=1, verify=verify)
    assert str(shard) in str(err.value)


@pytest.mark.req("DATA-02")
def test_corrupt_shard_names_the_file(damaged):
    data, shard = damaged
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 0x01  # one bit of one token; size unchanged
    shard.write_bytes(bytes(raw))
    with pytest.raises(shards.ShardError, match="checksum mismatch") as err:
        make_loader(data, batch_size=2, shard_index=0, shard_count=1)
    assert str(shard) in str(err.value)


@pytest.mark.req("DATA-02")
def test_missing_or_bad_manifest_names_the_file(damaged):
    data, _ = damaged
    manifest = data / "manifest.json"
    manifest.write_text("{ not json")
    with pytest.raises(shards.ShardError, match="manifest") as err:
        make_loader(data, batch_size=2, shard_index=0, shard_count=1)
    assert str(manifest) in str(err.value)
    manifest.unlink()
    with pytest.raises(shards.ShardError, match="manifest missing") as err:
        make_loader(data, batch_size=2, shard_index=0, shard_count=1)
    assert str(manifest) in str(err.value)


@pytest.mark.req("DATA-02")
def test_shard_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "train-00000.npy"

    def crash(f, array, allow_pickle):
        f.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        shards.write_shard(target, np.zeros((2, 5), dtype=np.uint32))
    assert list(tmp_path.iterdir()) == []  # neither the shard nor a temp file


# --- DATA-03 ---------------------------------------------------------------------------


def _loader(prepared, **kw):
    kw = {"batch_size": 4, "seed": 7, "shard_index": 0, "shard_count": 1} | kw
    return make_loader(prepared, **kw)


@pytest.mark.req("DATA-03")
def test_resume_yields_the_identical_next_batches(prepared):
    a = _loader(prepared)
    steps = a.steps_per_epoch
    _take(a, steps - 2)
    state = json.loads(json.dumps(a.get_state()))  # as a checkpoint stores it
    expected = _take(a, 5)  # crosses into the second epoch
    assert a.data_epoch == 1 and state["data_epoch"] == 0

    b = _loader(prepared)
    b.set_state(state)
    got = _take(b, 5)
    for x, y in zip(expected, got):
        np.testing.assert_array_equal(x["tokens"], y["tokens"])
        np.testing.assert_array_equal(x["segment_ids"], y["segment_ids"])
    assert b.get_state() == a.get_state()


@pytest.mark.req("DATA-03")
def test_epochs_cover_the_same_rows_in_different_order(prepared):
    index = _row_index(prepared)
    loader = _loader(prepared, batch_size=1)
    n = loader.steps_per_epoch
    assert n == len(index)
    epoch0 = _rows_of(_take(loader, n), index)
    assert loader.data_epoch == 1 and loader.get_state()["data_epoch"] == 1
    epoch1 = _rows_of(_take(loader, n), index)
    assert loader.data_epoch == 2
    assert sorted(epoch0) == sorted(epoch1) == list(range(n))
    assert epoch0 != epoch1


@pytest.mark.req("DATA-03")
def test_drop_remainder_per_epoch(prepared):
    index = _row_index(prepared)
    loader = _loader(prepared, batch_size=7)
    n = loader.steps_per_epoch
    assert n == len(index) // 7
    per_epoch = [_rows_of(_take(loader, n), index) for _ in range(2)]
    for rows in per_epoch:
        assert len(rows) == len(set(rows)) == 7 * n  # no row twice within an epoch


@pytest.mark.req("DATA-03")
def test_order_is_a_function_of_the_seed(prepared):
    index = _row_index(prepared)
    runs = {seed: [_rows_of(_take(_loader(prepared, seed=seed), 6), index) for _ in range(2)]
            for seed in (7, 8)}
    assert runs[7][0] == runs[7][1]
    assert runs[8][0] == runs[8][1]
    assert runs[7][0] != runs[8][0]


@pytest.mark.req("DATA-03")
def test_host_shards_are_disjoint_and_complete(prepared):
    index = _row_index(prepared)
    hosts = [_loader(prepared, batch_size=1, shard_index=h, shard_count=3) for h in range(3)]
    assignments = [set(h.row_indices.tolist()) for h in hosts]
    assert set().union(*assignments) == set(range(len(index)))
    assert sum(map(len, assignments)) == len(index)
    # Every host runs the same number of steps and reads only its own rows.
    assert len({h.steps_per_epoch for h in hosts}) == 1
    read = [set(_rows_of(_take(h, h.steps_per_epoch), index)) for h in hosts]
    for own, seen in zip(assignments, read):
        assert seen <= own and len(seen) == hosts[0].steps_per_epoch
    assert sum(map(len, read)) == len(set().union(*read)) > len(index) - 3


@pytest.mark.req("DATA-03")
def test_default_host_shard_is_the_jax_process(prepared):
    import jax

    loader = make_loader(prepared, batch_size=2)
    assert (loader.shard_index, loader.shard_count) == (jax.process_index(), jax.process_count())


@pytest.mark.req("DATA-03")
def test_state_from_another_configuration_is_refused(prepared):
    state = _loader(prepared).get_state()
    for other in (_loader(prepared, seed=8), _loader(prepared, batch_size=2),
                  _loader(prepared, shard_index=1, shard_count=2)):
        with pytest.raises(ValueError, match="does not match"):
            other.set_state(state)


@pytest.mark.req("DATA-03")
def test_validation_epoch_in_order_once(prepared):
    rows = _split_rows(prepared, "val").astype(np.int32)
    val = make_loader(prepared, split="val", batch_size=2, shard_index=0, shard_count=1)
    batches = list(val.iter_epoch())
    assert len(batches) == val.steps_per_epoch == len(rows) // 2
    np.testing.assert_array_equal(np.concatenate([b["tokens"] for b in batches]),
                                  rows[: 2 * len(batches)])
    assert val.get_state()["batch_in_epoch"] == 0 and val.data_epoch == 0
