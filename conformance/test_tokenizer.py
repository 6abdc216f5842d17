"""TOK-01 / TOK-02: the Qwen2.5-Coder tokenizer.

TOK-01: "Encoding must be token-for-token identical to tiktoken over the same ranks and
regex, on any text."  The reference is a ``tiktoken.Encoding`` built from the same
``qwen.tiktoken`` ranks, the same regex and the same 22 specials; the tokenizer
normalises to NFC first, so tiktoken is given ``NFC(text)``.

TOK-02: "Ids 151,665-151,807 are never produced" (the tokenizer side; masking them at
generation is the inference engine's part).
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from pathlib import Path

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from pythoncoder.data import sources
from pythoncoder.data import tokenizer as tokmod
from pythoncoder.spec import check_values

TOK01 = check_values("TOK-01")
TOK02 = check_values("TOK-02")
REQUIREMENT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
    "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]

# Any unicode text (no lone surrogates: they are not text), and text made of the
# characters the regex treats specially, so every alternative is exercised.
any_text = st.text(st.characters(codec="utf-8"), max_size=200)
regex_edges = st.text(
    st.sampled_from(list("aZé9٣ _-.:'\"sStTdDmMlLrReEvV\t\n\r\x0b\x0c\u00a0\u2028\u3000\u0301"
                         "\u00e9\u4e2d\U0001f600(){}")),
    max_size=120,
)
text_with_specials = st.lists(
    st.one_of(any_text, regex_edges, st.sampled_from(SPECIALS)), max_size=8
).map("".join)


@pytest.fixture(scope="session")
def tok():
    return tokmod.load_tokenizer()


@pytest.fixture(scope="session")
def reference() -> tiktoken.Encoding:
    """tiktoken over the same ranks, regex and specials."""
    return tiktoken.Encoding(
        name="qwen2.5-coder-reference",
        pat_str=REQUIREMENT_REGEX,
        mergeable_ranks=tokmod.load_ranks(),
        special_tokens={t: TOK01["special_first"] + i for i, t in enumerate(SPECIALS)},
    )


def _ref_ids(reference: tiktoken.Encoding, text: str) -> list[int]:
    return reference.encode(unicodedata.normalize("NFC", text), allowed_special="all")


def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def _real_source_files(every: int) -> list[tuple[str, str]]:
    """Every ``every``-th stdlib file (sorted, so the sample is fixed) plus this repo's code."""
    files = sources.python_files(sources.stdlib_dir())[::every]
    files += sorted((Path(__file__).resolve().parents[1] / "pythoncoder").rglob("*.py"))
    out = []
    for path in files:
        try:
            out.append((str(path), path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue
    return out


@pytest.mark.req("TOK-01")
def test_vocabulary_merges_and_specials(tok):
    doc = json.loads(tok.to_str())
    assert tok.get_vocab_size(with_added_tokens=False) == TOK01["regular_tokens"]
    assert len(doc["model"]["merges"]) == TOK01["merges"]
    assert tok.get_vocab_size(with_added_tokens=True) == TOK01["total"]
    got = {a["content"]: a["id"] for a in doc["added_tokens"]}
    assert got == {t: TOK01["special_first"] + i for i, t in enumerate(SPECIALS)}
    assert max(got.values()) == TOK01["special_last"]
    assert all(a["special"] and not a["normalized"] for a in doc["added_tokens"])
    # Regular ids are exactly 0..151642: no gaps, no overlap with the specials.
    assert sorted(doc["model"]["vocab"].values()) == list(range(TOK01["regular_tokens"]))


@pytest.mark.req("TOK-01")
def test_pipeline_is_nfc_split_bytelevel(tok):
    doc = json.loads(tok.to_str())
    assert doc["normalizer"]["type"] == "NFC"
    split, byte_level = doc["pre_tokenizer"]["pretokenizers"]
    assert split["type"] == "Split"
    assert split["pattern"] == {"Regex": REQUIREMENT_REGEX}
    assert split["behavior"] == "Isolated" and split["invert"] is False
    assert byte_level["type"] == "ByteLevel"
    assert byte_level["add_prefix_space"] is False and byte_level["use_regex"] is False
    assert doc["decoder"]["type"] == "ByteLevel"
    assert doc["model"]["type"] == "BPE"


@pytest.mark.req("TOK-01")
def test_check_values(tok, reference):
    assert _ids(tok, "Hello world") == TOK01["hello_world"]
    assert _ids(tok, " Hello world") == TOK01["space_hello_world"]
    assert _ref_ids(reference, "Hello world") == TOK01["hello_world"]


@pytest.mark.req("TOK-01")
@settings(max_examples=1000)
@given(text=st.one_of(any_text, regex_edges))
def test_identical_to_tiktoken_on_any_text(tok, reference, text):
    assert _ids(tok, text) == _ref_ids(reference, text)


@pytest.mark.req("TOK-01")
@settings(max_examples=500)
@given(text=text_with_specials)
def test_identical_to_tiktoken_with_special_tokens(tok, reference, text):
    assert _ids(tok, text) == _ref_ids(reference, text)


@pytest.mark.req("TOK-01")
def test_identical_to_tiktoken_on_real_source_files(tok, reference):
    files = _real_source_files(every=40)
    assert len(files) >= 40
    texts = [text for _, text in files]
    got = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    for (name, text), ids in zip(files, got):
        assert ids == _ref_ids(reference, text), name
    assert sum(map(len, got)) > 100_000  # a real sample, not a handful of tokens


@pytest.mark.slow
@pytest.mark.req("TOK-01")
def test_identical_to_tiktoken_on_whole_stdlib(tok, reference):
    files = _real_source_files(every=1)
    got = [e.ids for e in tok.encode_batch([t for _, t in files], add_special_tokens=False)]
    mismatches = [name for (name, text), ids in zip(files, got)
                  if ids != _ref_ids(reference, text)]
    assert mismatches == []


@pytest.mark.req("TOK-01")
@pytest.mark.parametrize("special", SPECIALS)
def test_special_tokens_are_atomic(tok, special):
    sid = TOK01["special_first"] + SPECIALS.index(special)
    assert _ids(tok, special) == [sid]
    ids = _ids(tok, f"x = 1{special}def f():")
    assert ids.count(sid) == 1
    assert ids == _ids(tok, "x = 1") + [sid] + _ids(tok, "def f():")
    assert tok.decode(ids, skip_special_tokens=False) == f"x = 1{special}def f():"


@pytest.mark.req("TOK-01")
def test_special_strings_in_documents_are_plain_text(tok):
    # prepare() encodes file contents this way: a file may mention "<|endoftext|>".
    text = 'EOT = "<|endoftext|>"  # <|fim_prefix|>'
    (ids,) = tokmod.encode_documents(tok, [text])
    assert not set(ids) & set(range(TOK01["special_first"], TOK01["total"]))
    assert tok.decode(ids) == text
    assert tok.encode_special_tokens is False  # the flag is restored


@pytest.mark.req("TOK-01")
@settings(max_examples=300)
@given(text=st.one_of(any_text, text_with_specials))
def test_decode_encode_roundtrip_is_nfc(tok, text):
    ids = _ids(tok, text)
    assert tok.decode(ids, skip_special_tokens=False) == unicodedata.normalize("NFC", text)


@pytest.mark.req("TOK-01")
def test_nfc_is_applied_before_bpe(tok):
    decomposed = "cafe\u0301"  # e + combining acute
    assert _ids(tok, decomposed) == _ids(tok, "caf\u00e9")


@pytest.mark.req("TOK-01")
def test_built_tokenizer_is_cached_by_source_hash(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONCODER_CACHE", str(tmp_path))
    monkeypatch.delenv("PYTHONCODER_TOKENIZER", raising=False)
    cached = tokmod.cached_tokenizer_path()
    assert cached.parent.parent == tmp_path and not cached.exists()
    built = tokmod.load_tokenizer()  # builds from qwen.tiktoken: merges replayed
    assert cached.is_file()
    # digests: a failing == over two 4.6 MB strings makes pytest diff them for hours
    digest = tokmod.tokenizer_fingerprint
    assert digest(built) == digest(tok) == hashlib.sha256(cached.read_bytes()).hexdigest()
    # A different ranks file is a different cache entry.
    other = tmp_path / "other.tiktoken"
    other.write_bytes(tokmod.ranks_path().read_bytes() + b"\n")
    assert tokmod.cached_tokenizer_path(other) != cached


@pytest.mark.req("TOK-01")
def test_user_tokenizer_json_gives_identical_ids(tok, tmp_path):
    """A tokenizer.json of the official layout (merges as "a b" strings) loads to the same ids."""
    doc = json.loads(tok.to_str())
    doc["model"]["merges"] = [" ".join(pair) for pair in doc["model"]["merges"]]
    official_like = tmp_path / "tokenizer.json"
    official_like.write_text(json.dumps(doc), encoding="utf-8")
    user = tokmod.load_tokenizer(official_like)
    sample = "".join(text for _, text in _real_source_files(every=200)) + "".join(SPECIALS)
    assert _ids(user, sample) == _ids(tok, sample)

    # Any other vocabulary is refused, with the file named.
    doc["added_tokens"] = doc["added_tokens"][1:]
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(tokmod.TokenizerMismatchError, match="wrong.json"):
        tokmod.load_tokenizer(wrong)


@pytest.mark.req("TOK-02")
def test_padding_constants():
    assert tokmod.PADDING_IDS == range(TOK02["first_padding_id"], TOK02["last_padding_id"] + 1)
    assert len(tokmod.PADDING_IDS) == 143
    assert tokmod.NUM_TOKENS == TOK01["total"] == TOK02["first_padding_id"]
    assert tokmod.PADDED_VOCAB_SIZE == TOK02["last_padding_id"] + 1
    assert tokmod.EOS_ID == TOK01["special_first"]


@pytest.mark.req("TOK-02")
def test_padding_ids_have_no_token(tok):
    assert [tok.id_to_token(i) for i in tokmod.PADDING_IDS] == [None] * 143
    assert tok.id_to_token(TOK02["first_padding_id"] - 1) == SPECIALS[-1]


@pytest.mark.req("TOK-02")
@settings(max_examples=300)
@given(text=st.one_of(any_text, text_with_specials))
def test_padding_ids_never_produced(tok, text):
    ids = _ids(tok, text)
    assert all(0 <= i < TOK02["first_padding_id"] for i in ids)


@pytest.mark.req("TOK-02")
def test_padding_ids_never_produced_on_source_files(tok):
    texts = [text for _, text in _real_source_files(every=40)]
    ids = {i for e in tok.encode_batch(texts, add_special_tokens=False) for i in e.ids}
    assert max(ids) < TOK02["first_padding_id"]
    assert not ids & set(tokmod.PADDING_IDS)
