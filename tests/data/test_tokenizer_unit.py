"""Unit tests of the tokenizer builder: byte alphabet, merge recovery, cache handling."""

from __future__ import annotations

import pytest

from pythoncoder.data import tokenizer as tokmod


def test_byte_alphabet_is_a_printable_bijection():
    table = tokmod.byte_to_unicode()
    assert len(table) == len(set(table)) == 256
    assert all(len(c) == 1 and c.isprintable() and not c.isspace() for c in table)
    assert table[ord("A")] == "A" and table[ord(" ")] == "\u0120"  # the familiar "Ġ"
    assert table[ord("\n")] == "\u010a"


def _toy_ranks(tokens: list[bytes]) -> dict[bytes, int]:
    singles = [bytes([b]) for b in range(256)]
    return {t: i for i, t in enumerate(singles + tokens)}


def test_recover_merges_replays_bpe():
    ranks = _toy_ranks([b"ab", b"bc", b"abc", b"cd", b"abcd"])
    assert tokmod.recover_merges(ranks) == [
        (b"a", b"b"), (b"b", b"c"), (b"ab", b"c"), (b"c", b"d"), (b"abc", b"d"),
    ]
    # With "bc" ranked before "ab", "abc" is reached as a + bc.
    ranks = _toy_ranks([b"bc", b"ab", b"abc"])
    assert tokmod.recover_merges(ranks)[-1] == (b"a", b"bc")


def test_unreachable_token_is_an_error():
    # "abc" needs "ab" or "bc" first, and neither exists.
    with pytest.raises(ValueError, match="not reachable"):
        tokmod.recover_merges(_toy_ranks([b"abc"]))


def test_ranks_with_gaps_are_refused():
    ranks = _toy_ranks([b"ab"])
    ranks[b"ab"] = 300
    with pytest.raises(ValueError, match="without gaps"):
        tokmod.build_tokenizer(ranks)


def test_real_merges_count_and_order():
    ranks = tokmod.load_ranks()
    merges = tokmod.recover_merges(ranks)
    assert len(ranks) == tokmod.NUM_REGULAR_TOKENS and len(merges) == tokmod.NUM_MERGES
    merged = [ranks[a + b] for a, b in merges]
    assert merged == sorted(merged)  # merge priority is the rank of the merged token
    assert all(ranks[a] < ranks[a + b] and ranks[b] < ranks[a + b] for a, b in merges[:5000])


def test_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONCODER_CACHE", str(tmp_path / "pc"))
    assert tokmod.cache_dir() == tmp_path / "pc"
    monkeypatch.delenv("PYTHONCODER_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tokmod.cache_dir() == tmp_path / "xdg" / "pythoncoder"


def test_corrupt_cache_entry_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONCODER_CACHE", str(tmp_path))
    monkeypatch.delenv("PYTHONCODER_TOKENIZER", raising=False)
    cached = tokmod.cached_tokenizer_path()
    cached.parent.mkdir(parents=True)
    cached.write_text("{ truncated")
    tok = tokmod.load_tokenizer()
    assert tok.encode("Hello world").ids == [9707, 1879]
    assert cached.read_text(encoding="utf-8") == tok.to_str()
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temp files


def test_tokenizer_path_from_environment(monkeypatch, tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(tokmod.load_tokenizer().to_str(), encoding="utf-8")
    monkeypatch.setenv("PYTHONCODER_TOKENIZER", str(path))
    monkeypatch.setenv("PYTHONCODER_CACHE", str(tmp_path / "empty-cache"))
    tok = tokmod.load_tokenizer()
    assert tok.encode(" Hello world").ids == [21927, 1879]
    assert not (tmp_path / "empty-cache").exists()  # nothing was built


def test_another_tokenizers_version_neither_reads_nor_overwrites_this_versions_entry(
        monkeypatch, tmp_path):
    """The cache entry is keyed by the ``tokenizers`` version that built it: under another
    version, an entry written by this one (here a marker file that would fail to load) is
    neither loaded nor replaced; the other version builds and keeps its own."""
    import tokenizers

    monkeypatch.setenv("PYTHONCODER_CACHE", str(tmp_path))
    monkeypatch.delenv("PYTHONCODER_TOKENIZER", raising=False)
    this = tokmod.cached_tokenizer_path()
    this.parent.mkdir(parents=True)
    this.write_text("written by this version")
    monkeypatch.setattr(tokenizers, "__version__", tokenizers.__version__ + ".post999")
    other = tokmod.cached_tokenizer_path()
    assert other != this and other.parent == this.parent
    tok = tokmod.load_tokenizer()
    assert tok.encode("Hello world").ids == [9707, 1879]
    assert this.read_text() == "written by this version"
    assert other.read_text(encoding="utf-8") == tok.to_str()
