"""Unit tests of sources, prepare() edge cases, the CLI and the stdlib cache."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from pythoncoder.cli import main as cli_main
from pythoncoder.data import prepare as prep
from pythoncoder.data import shards, sources
from pythoncoder.data.tokenizer import EOS_ID, encode_documents, load_tokenizer
from pythoncoder.testing import corpus as synthetic

SEQ = 16


def _rows(out: Path, split: str = "train") -> np.ndarray:
    m = shards.read_manifest(out)
    parts = [np.load(out / s["file"]) for s in m["splits"][split]["shards"]]
    return np.concatenate(parts) if parts else np.empty((0, m["row_len"]), np.uint32)


def test_jsonl_gz_and_parquet_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"content": synthetic.python_source(i), "path": f"repo/m{i}.py"} for i in range(3)]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records[:2]) + "\n\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps({"content": "x = 1\n"}) + "\n")
        f.write(json.dumps({"no_content": 1}) + "\n")
    pq.write_table(pa.table({"content": ["y = 2\n", None], "id": [1, 2]}), tmp_path / "c.parquet")
    docs = list(sources.iter_documents([jsonl, tmp_path / "b.jsonl.gz", tmp_path / "c.parquet"]))
    assert docs == [("repo/m0.py", records[0]["content"]), ("repo/m1.py", records[1]["content"]),
                    ("b.jsonl.gz:1", "x = 1\n"), ("c.parquet:1", "y = 2\n")]
    assert len(list(sources.iter_documents([jsonl, tmp_path / "c.parquet"], max_files=2))) == 2
    assert sources.count_documents([jsonl]) is None


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        list(sources.iter_documents([tmp_path / "nope"]))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported"):
        list(sources.iter_documents([tmp_path / "x.csv"]))
    assert prep.prepare.__name__ and cli_main(  # bad input, found before any work
        ["prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2


def test_directory_walk_skips_installed_packages_and_caches(tmp_path):
    for rel in ("a.py", "pkg/b.py", "site-packages/c.py", "pkg/__pycache__/d.py", "e.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    keys = [k for k, _ in sources.iter_documents([tmp_path])]
    assert keys == ["a.py", "pkg/b.py"]
    # Several directories: keys carry the directory name, so they stay distinct.
    keys = [k for k, _ in sources.iter_documents([tmp_path / "pkg", tmp_path])]
    assert keys == ["pkg/b.py", f"{tmp_path.name}/a.py", f"{tmp_path.name}/pkg/b.py"]


def test_stdlib_is_the_default_source():
    files = sources.python_files(sources.stdlib_dir())
    assert len(files) > 500
    first = next(sources.iter_documents([]))
    assert first[0] == files[0].relative_to(sources.stdlib_dir()).as_posix()
    assert sources.count_documents([], max_files=7) == 7


def test_long_document_spans_rows_and_short_corpus_is_an_error(tmp_path):
    tok = load_tokenizer()
    text = synthetic.python_source(3, min_chars=2000)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "long.py").write_text(text)
    m = prep.prepare([tmp_path / "src"], tmp_path / "out", seq_len=SEQ, val_fraction=0.0,
                     num_workers=1, shard_tokens=5 * (SEQ + 1), progress=False)
    (ids,) = encode_documents(tok, [text])
    stream = np.array([*ids, EOS_ID], dtype=np.uint32)
    rows = _rows(tmp_path / "out")
    n = (len(stream) - 1) // SEQ
    assert rows.shape == (n, SEQ + 1) and n > 20
    np.testing.assert_array_equal(rows[:, :-1].reshape(-1), stream[: n * SEQ])
    assert [s["rows"] for s in m["splits"]["train"]["shards"]] == [5] * (n // 5) + (
        [n % 5] if n % 5 else [])
    assert m["splits"]["val"] == {"rows": 0, "tokens": 0, "documents": 0,
                                  "document_tokens": 0, "dropped_tail_tokens": 0, "shards": []}

    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "t.py").write_text("x = 1\n")
    eos_joined = len(encode_documents(tok, ["x = 1\n"])[0]) + 1
    with pytest.raises(prep.PrepareError, match=f"too few tokens for one training row: "
                       f"{eos_joined} train tokens from 1 documents, a row needs 65"):
        prep.prepare([tmp_path / "tiny"], tmp_path / "out2", seq_len=64, val_fraction=0.0,
                     num_workers=1, progress=False)
    assert not (tmp_path / "out2").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_rerun_replaces_previous_output(tmp_path):
    synthetic.write_corpus(tmp_path / "src", 12, min_chars=400)
    out = tmp_path / "out"
    small = 3 * (SEQ + 1)
    first = prep.prepare([tmp_path / "src"], out, seq_len=SEQ, num_workers=1,
                         shard_tokens=small, progress=False)
    second = prep.prepare([tmp_path / "src"], out, seq_len=SEQ, num_workers=1,
                          shard_tokens=100 * small, progress=False)
    assert len(first["splits"]["train"]["shards"]) > len(second["splits"]["train"]["shards"])
    listed = {s["file"] for sp in second["splits"].values() for s in sp["shards"]}
    assert {p.name for p in out.glob("*.npy")} == listed  # stale shards are gone


def test_cli_prepare(tmp_path, capsys):
    synthetic.write_corpus(tmp_path / "src", 8, min_chars=300)
    out = tmp_path / "out"
    rc = cli_main(["prepare", str(tmp_path / "src"), "--out", str(out), "--seq-len", "32",
                   "--workers", "1", "--val-fraction", "0.25", "--no-progress"])
    assert rc == 0
    m = shards.read_manifest(out)
    assert m["seq_len"] == 32 and m["val_fraction"] == 0.25 and m["stats"]["files_kept"] == 8
    assert "8 kept" in capsys.readouterr().out
    assert cli_main(["prepare", str(tmp_path / "src"), "--no-progress"]) == 2
    # No sources: the running interpreter's stdlib, written to --out.
    rc = cli_main(["prepare", "--out", str(tmp_path / "std"), "--seq-len", "32", "--workers",
                   "1", "--max-files", "6", "--no-progress"])
    m = shards.read_manifest(tmp_path / "std")
    assert rc == 0 and m["stats"]["files_seen"] == 6 and m["sources"][0].startswith("stdlib:")


def test_prepare_removes_build_dirs_of_dead_processes_only(tmp_path, capsys):
    """A prepare killed hard leaves ``.<out>.prepare-<pid>``; the next prepare of the same
    ``--out`` deletes it, and leaves a live process's build (another prepare) alone."""
    import subprocess
    import sys

    synthetic.write_corpus(tmp_path / "src", 4, min_chars=300)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / f".out.prepare-{dead.pid}"
        busy = tmp_path / f".out.prepare-{live.pid}"
        other = tmp_path / f".other.prepare-{dead.pid}"  # another --out: not ours
        for d in (stale, busy, other):
            d.mkdir()
            (d / "train-00000.npy").write_bytes(b"half")
        prep.prepare([tmp_path / "src"], tmp_path / "out", seq_len=SEQ, num_workers=1,
                     progress=False)
        assert not stale.exists() and busy.is_dir() and other.is_dir()
        assert f"left by process {dead.pid}" in capsys.readouterr().err
        assert shards.read_manifest(tmp_path / "out")["stats"]["files_kept"] == 4
    finally:
        live.kill()
        live.wait()


def test_ensure_stdlib_data_prepares_once(tmp_path, monkeypatch):
    path = prep.ensure_stdlib_data(SEQ, tmp_path, max_files=25, num_workers=1, progress=False)
    m = shards.read_manifest(path)
    assert path.parent == tmp_path and f"L{SEQ}" in path.name and "-n25-" in path.name
    assert m["stats"]["files_seen"] == 25 and m["seq_len"] == SEQ
    assert m["sources"][0].startswith("stdlib:")

    def fail(*args, **kwargs):
        raise AssertionError("prepared twice")

    monkeypatch.setattr(prep, "prepare", fail)
    assert prep.ensure_stdlib_data(SEQ, tmp_path, max_files=25, progress=False) == path
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp directories left


def test_split_of_is_deterministic_and_bounded():
    assert prep.split_of("a/b.py", 0.0) == "train" and prep.split_of("a/b.py", 1.0) == "val"
    keys = [f"k{i}" for i in range(500)]
    small = {k for k in keys if prep.split_of(k, 0.1) == "val"}
    large = {k for k in keys if prep.split_of(k, 0.3) == "val"}
    assert small < large  # growing the fraction only moves files into val


def test_parses_as_python():
    assert prep.parses_as_python("x = '\\d'\n")  # a SyntaxWarning is not an error
    assert not prep.parses_as_python("print 'x'\n")
    assert not prep.parses_as_python("x = 1\0\n")
