"""Unit tests of hf:// dataset sources (pythoncoder.data.hub), with no network.

A fake Hugging Face cache is built in tmp_path in the library's own layout
(``datasets--OWNER--NAME/{refs,blobs,snapshots}``) and huggingface_hub is put offline.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import huggingface_hub  # noqa: E402
from huggingface_hub import constants  # noqa: E402

from pythoncoder.data import hub, sources  # noqa: E402

COMMIT = "a" * 40
REPO = "acme/code"
URL = "hf://datasets/acme/code"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty hub cache, offline.  huggingface_hub reads its environment into constants at
    import, so the constants are patched as well as the environment."""
    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    return root


def _parquet_bytes(table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def add_repo(cache: Path, files: dict[str, bytes], repo: str = REPO, commit: str = COMMIT,
             ref: str = "main") -> Path:
    """Put ``files`` (repo path -> bytes) in the cache as huggingface_hub lays out a download."""
    storage = cache / ("datasets--" + repo.replace("/", "--"))
    (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
    (storage / "refs" / ref).write_text(commit)
    snapshot = storage / "snapshots" / commit
    for name, data in files.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def _table(texts, paths=None, column="content"):
    cols = {column: texts, "stars": list(range(len(texts)))}
    if paths is not None:
        cols["max_stars_repo_path"] = paths
    return pa.table(cols)


TRAIN0 = _table(["a = 0\n", None, "a = 2\n"])
TRAIN1 = _table(["b = 0\n"], paths=["pkg/b.py"])
VALID = _table(["v = 0\n"])


@pytest.fixture
def dataset(cache):
    add_repo(cache, {
        "README.md": b"# code\n",
        "data/train-00000-of-00002.parquet": _parquet_bytes(TRAIN0),
        "data/train-00001-of-00002.parquet": _parquet_bytes(TRAIN1),
        "data/validation-00000-of-00001.parquet": _parquet_bytes(VALID),
    })
    return cache


# --- URLs -------------------------------------------------------------------------------

@pytest.mark.parametrize("url, want", [
    ("hf://datasets/acme/code", hub.HfSource("acme/code", "", None)),
    ("hf://datasets/acme/code/", hub.HfSource("acme/code", "", None)),
    ("hf://datasets/acme/code/data/python", hub.HfSource("acme/code", "data/python", None)),
    ("hf://datasets/acme/code@v1.0/data/x.parquet",
     hub.HfSource("acme/code", "data/x.parquet", "v1.0")),
    ("hf://datasets/acme/code@refs/convert/parquet/default/train",
     hub.HfSource("acme/code", "default/train", "refs/convert/parquet")),
    ("hf://datasets/acme/code@refs%2Fconvert%2Fparquet",
     hub.HfSource("acme/code", "", "refs/convert/parquet")),
    ("hf://datasets/acme/code@refs/pr/7", hub.HfSource("acme/code", "", "refs/pr/7")),
])
def test_parse_hf_url(url, want):
    assert hub.parse_hf_url(url) == want


@pytest.mark.parametrize("url, why", [
    ("hf://models/acme/code", "only dataset repos"),
    ("hf://acme/code", "only dataset repos"),
    ("hf://datasets/acme", "missing dataset owner or name"),
    ("hf://datasets/", "missing dataset owner or name"),
    ("hf://datasets/acme@main", "missing dataset name"),
    ("hf://datasets/acme/code@/data", "empty revision"),
    ("hf://datasets/acme/code/data/../x", "'..'"),
    ("/data/acme/code", "does not start with hf://"),
])
def test_parse_hf_url_rejects(url, why):
    with pytest.raises(ValueError) as e:
        hub.parse_hf_url(url)
    assert repr(url) in str(e.value)
    assert why in str(e.value)


def test_is_remote():
    assert sources.is_remote("hf://datasets/acme/code") is True
    assert sources.is_remote("data/code") is False
    assert sources.is_remote(Path("hf://datasets/acme/code")) is False  # a Path is local


# --- split selection --------------------------------------------------------------------

def _select(files, split="train", url=URL):
    return hub.select_parquet(hub.parse_hf_url(url), files, split)


def test_split_in_file_name():
    files = ["README.md", "data/train-00001-of-00002.parquet", "data/train-00000-of-00002.parquet",
             "data/test-00000-of-00001.parquet", "data/validation-00000-of-00001.parquet"]
    assert _select(files) == ["data/train-00000-of-00002.parquet",
                              "data/train-00001-of-00002.parquet"]
    assert _select(files, "test") == ["data/test-00000-of-00001.parquet"]
    assert _select(files, "validation") == ["data/validation-00000-of-00001.parquet"]


def test_split_as_folder():
    files = ["train/b.parquet", "train/a.parquet", "test/a.parquet", "data/valid/x.parquet",
             "data/train/y.parquet", "train.csv"]
    assert _select(files) == ["data/train/y.parquet", "train/a.parquet", "train/b.parquet"]
    assert _select(files, "valid") == ["data/valid/x.parquet"]


def test_datasets_server_layout():
    files = ["default/train/0000.parquet", "default/train/0001.parquet",
             "default/test/0000.parquet", "python/partial-train/0000.parquet",
             "python/test/0000.parquet"]
    assert _select(files) == ["default/train/0000.parquet", "default/train/0001.parquet",
                              "python/partial-train/0000.parquet"]
    assert _select(files, url=URL + "@refs/convert/parquet/python") == [
        "python/partial-train/0000.parquet"]
    assert _select(files, "test", url=URL + "/default") == ["default/test/0000.parquet"]


def test_split_must_be_a_whole_word():
    files = ["data/validation-0.parquet", "data/trainer-0.parquet", "data/train_0.parquet",
             "data/train.parquet"]
    assert _select(files) == ["data/train.parquet", "data/train_0.parquet"]
    with pytest.raises(ValueError, match="no Parquet file for split 'valid'"):
        _select(files, "valid")


def test_no_split_named_uses_every_parquet_file():
    files = ["data/python-00001.parquet", "data/python-00000.parquet", "README.md"]
    assert _select(files) == ["data/python-00000.parquet", "data/python-00001.parquet"]
    assert _select(files, "validation") == ["data/python-00000.parquet",
                                            "data/python-00001.parquet"]


def test_path_restricts_and_a_file_path_is_used_as_is():
    files = ["a/train-0.parquet", "ab/train-0.parquet", "a/test-0.parquet"]
    assert _select(files, url=URL + "/a") == ["a/train-0.parquet"]
    assert _select(files, url=URL + "/a/test-0.parquet") == ["a/test-0.parquet"]
    with pytest.raises(ValueError, match=r"a/notes\.txt is not a \.parquet file"):
        _select(files + ["a/notes.txt"], url=URL + "/a/notes.txt")


def test_no_match_lists_the_files_found_and_the_split():
    files = [f"data/test-{i}.parquet" for i in range(7)]
    with pytest.raises(ValueError) as e:
        _select(files)
    assert str(e.value) == (
        "hf://datasets/acme/code: no Parquet file for split 'train'; Parquet files found: "
        "data/test-0.parquet, data/test-1.parquet, data/test-2.parquet, data/test-3.parquet, "
        "data/test-4.parquet, ... (2 more)")
    with pytest.raises(ValueError) as e:
        _select(["README.md"], url=URL + "/data")
    assert str(e.value) == ("hf://datasets/acme/code/data: no Parquet file for split 'train' "
                            "under 'data'; files found: README.md")


def test_parquet_files_lists_the_cached_snapshot(dataset):
    assert hub.parquet_files(URL, "train") == ["data/train-00000-of-00002.parquet",
                                               "data/train-00001-of-00002.parquet"]
    assert hub.parquet_files(hub.parse_hf_url(URL), "validation") == [
        "data/validation-00000-of-00001.parquet"]


# --- documents --------------------------------------------------------------------------

def test_documents_and_keys(dataset):
    assert list(_hf_docs(URL)) == [
        ("acme/code/data/train-00000-of-00002.parquet:1", "a = 0\n"),
        ("acme/code/data/train-00000-of-00002.parquet:3", "a = 2\n"),  # row 2 is null
        ("pkg/b.py", "b = 0\n"),  # the record's own path field
    ]
    assert list(_hf_docs(URL, split="validation")) == [
        ("acme/code/data/validation-00000-of-00001.parquet:1", "v = 0\n")]


def test_column_choice_and_missing_column(cache):
    add_repo(cache, {"train.parquet": _parquet_bytes(pa.table({"text": ["x = 1\n", "y\n"],
                                                               "n": [1, 2]}))})
    assert list(_hf_docs(URL, column="text")) == [
        ("acme/code/train.parquet:1", "x = 1\n"), ("acme/code/train.parquet:2", "y\n")]
    with pytest.raises(ValueError) as e:
        list(_hf_docs(URL))
    assert str(e.value) == "acme/code/train.parquet: no 'content' column; its columns: text, n"


def test_non_string_rows_are_skipped(cache):
    add_repo(cache, {"train.parquet": _parquet_bytes(pa.table({"content": [b"x", b"y"]}))})
    assert list(_hf_docs(URL)) == []


def _hf_docs(url, split="train", column="content"):
    """The documents of an hf:// source, as prepare reads them."""
    return iter(sources.iter_documents([url], hf_split=split, hf_column=column))


def _unreadable(docs, label):
    """The one Unreadable marker at the end of ``docs``, named ``label``."""
    *rest, (key, marker) = docs
    assert key == label and isinstance(marker, sources.Unreadable)
    assert marker.reason == "unreadable"
    assert marker.detail.startswith("cannot read the Parquet file: ")
    assert not any(isinstance(c, sources.Unreadable) for _, c in rest)
    return rest


def test_corrupt_parquet_is_named_and_the_next_file_still_read(cache):
    good = _parquet_bytes(TRAIN0)
    add_repo(cache, {"data/train-0.parquet": good,
                     "data/train-1.parquet": b"PAR1 this is not a parquet file",
                     "data/train-2.parquet": good})
    docs = list(_hf_docs(URL))
    assert docs[:2] == [("acme/code/data/train-0.parquet:1", "a = 0\n"),
                        ("acme/code/data/train-0.parquet:3", "a = 2\n")]
    _unreadable(docs[:3], "acme/code/data/train-1.parquet")
    assert docs[3:] == [("acme/code/data/train-2.parquet:1", "a = 0\n"),
                        ("acme/code/data/train-2.parquet:3", "a = 2\n")]


def test_truncated_parquet_names_the_file(cache):
    add_repo(cache, {"train.parquet": _parquet_bytes(TRAIN0)[:-20]})
    assert _unreadable(list(_hf_docs(URL)), "acme/code/train.parquet") == []


def test_corrupt_data_page_names_the_file(cache):
    """A file whose footer is fine but whose data is not fails while streaming, named too."""
    table = pa.table({"content": [f"x = {i}\n" * 20 for i in range(200)]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", use_dictionary=False)
    data = bytearray(sink.getvalue().to_pybytes())
    chunk = pq.ParquetFile(pa.BufferReader(bytes(data))).metadata.row_group(0).column(0)
    mid = chunk.data_page_offset + chunk.total_compressed_size // 2
    data[mid:mid + 16] = b"\xff" * 16
    assert pq.ParquetFile(pa.BufferReader(bytes(data))).metadata.num_rows == 200  # opens
    add_repo(cache, {"train.parquet": bytes(data)})
    _unreadable(list(_hf_docs(URL)), "acme/code/train.parquet")


def test_not_cached_offline(cache):
    with pytest.raises(ValueError) as e:
        list(_hf_docs("hf://datasets/acme/missing"))
    msg = str(e.value)
    assert msg == (f"hf://datasets/acme/missing: dataset acme/missing is not in the Hugging Face "
                   f"cache ({cache}) and HF_HUB_OFFLINE is set; unset it to download")
    assert "\n" not in msg


def test_revision_resolves_through_refs(cache):
    add_repo(cache, {"train.parquet": _parquet_bytes(VALID)}, commit="b" * 40, ref="v1")
    assert list(_hf_docs(URL + "@v1")) == [("acme/code/train.parquet:1", "v = 0\n")]
    assert list(_hf_docs(URL + "@" + "b" * 40)) == [
        ("acme/code/train.parquet:1", "v = 0\n")]
    with pytest.raises(ValueError, match="not in the Hugging Face cache"):
        list(_hf_docs(URL))  # no refs/main


def test_iter_documents_mixes_hub_and_local(dataset, tmp_path):
    local = tmp_path / "src"
    local.mkdir()
    (local / "m.py").write_text("m = 1\n")
    docs = list(sources.iter_documents([URL, local], hf_split="validation"))
    assert docs == [("acme/code/data/validation-00000-of-00001.parquet:1", "v = 0\n"),
                    ("src/m.py", b"m = 1\n")]
    assert [k for k, _ in sources.iter_documents([URL], 2)] == [
        "acme/code/data/train-00000-of-00002.parquet:1",
        "acme/code/data/train-00000-of-00002.parquet:3"]
    assert sources.count_documents([local]) == 1
    assert sources.count_documents([local, URL]) is None


def test_iter_documents_column(cache):
    add_repo(cache, {"data/train-0.parquet": _parquet_bytes(_table(["t\n"], column="text"))})
    assert list(sources.iter_documents([URL], hf_column="text")) == [
        ("acme/code/data/train-0.parquet:1", "t\n")]


def test_each_file_is_requested_once_and_listed_once_per_run(dataset, monkeypatch):
    downloads, listings = [], []
    real_download = huggingface_hub.hf_hub_download
    real_snapshot = huggingface_hub.snapshot_download

    def download(repo_id, filename, **kw):
        downloads.append((repo_id, filename, kw["repo_type"], kw["revision"],
                          kw["local_files_only"]))
        return real_download(repo_id, filename, **kw)

    def snapshot(repo_id, **kw):
        listings.append(repo_id)
        return real_snapshot(repo_id, **kw)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    first = list(_hf_docs(URL))
    second = list(_hf_docs(URL))
    assert first == second and len(first) == 3
    once = [(REPO, "data/train-00000-of-00002.parquet", "dataset", None, True),
            (REPO, "data/train-00001-of-00002.parquet", "dataset", None, True)]
    assert downloads == once + once
    assert listings == [REPO, REPO]


def test_online_lists_with_the_api_and_downloads_each_file(tmp_path, monkeypatch):
    """Not offline: the file list comes from HfApi, downloads may use the network."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    local = tmp_path / "t.parquet"
    pq.write_table(TRAIN1, local)
    calls = []

    class FakeApi:
        def list_repo_files(self, repo_id, *, repo_type=None, revision=None, token=None):
            calls.append(("list", repo_id, repo_type, revision))
            return ["train/1.parquet", "train/0.parquet", "test/0.parquet"]

    def download(repo_id, filename, **kw):
        calls.append(("get", filename, kw["revision"], kw["local_files_only"]))
        return str(local)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    docs = list(_hf_docs(URL + "@v2"))
    assert docs == [("pkg/b.py", "b = 0\n"), ("pkg/b.py", "b = 0\n")]
    assert calls == [("list", REPO, "dataset", "v2"),
                     ("get", "train/0.parquet", "v2", False),
                     ("get", "train/1.parquet", "v2", False)]


def test_an_unreachable_hub_is_one_clear_line_and_other_errors_pass_through(monkeypatch):
    """No network (DNS failure, timeout) is a ValueError naming the URL and the offline
    way out, whichever HTTP client this huggingface_hub uses; anything else is raised."""
    src = hub.parse_hf_url("hf://datasets/owner/name")
    connect = type("ConnectError", (Exception,), {"__module__": "httpx2._exceptions"})
    old_style = type("ConnectionError", (OSError,), {"__module__": "requests.exceptions"})
    for error in (connect("[Errno -2] Name or service not known"), old_style("refused")):
        got = hub._unreachable(src, error)
        assert isinstance(got, ValueError) and "\n" not in str(got)
        assert str(got).startswith("hf://datasets/owner/name: cannot reach the Hugging Face Hub")
        assert "HF_HUB_OFFLINE=1" in str(got)
    assert hub._unreachable(src, RuntimeError("a bug")) is None
    assert hub._unreachable(src, type("ConnectError", (Exception,), {})("ours")) is None

    def no_network(*_a, **_k):
        raise connect("[Errno -2] Name or service not known")

    monkeypatch.setattr(hub, "_offline", lambda: False)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", no_network)
    with pytest.raises(ValueError, match="cannot reach the Hugging Face Hub"):
        hub.parquet_files(src)
