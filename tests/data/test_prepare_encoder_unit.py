"""prepare's tiktoken fast path writes byte-identical shards to the tokenizers path."""

import pytest

from pythoncoder.data.prepare import prepare


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    texts = [
        "def héllo(x):\n    return 'naïve café ﬁ' + str(x)  # ünïcode\n",
        "class A:\n    s = '<|endoftext|> is text here'\n    n = 12345678901\n",
        "import os\n\n\n\nprint(os.sep,   'tabs\\tand  spaces')\n",
        "x = '\\u0041\\u030a'  # Å decomposed: NFC composes it\ny = 'Å'\n",
    ]
    for i, text in enumerate(texts * 5):
        (src / f"m{i}.py").write_text(text + f"# file {i}\n", encoding="utf-8")
    return src


@pytest.mark.parametrize("workers", [1, 2])
def test_tiktoken_encoder_gives_identical_shards(corpus, tmp_path, workers):
    a = prepare([str(corpus)], tmp_path / "tt", seq_len=8, num_workers=workers,
                encoder="tiktoken", progress=False)
    b = prepare([str(corpus)], tmp_path / "hf", seq_len=8, num_workers=workers,
                encoder="tokenizers", progress=False)
    files = sorted(p.name for p in (tmp_path / "tt").glob("*.npy"))
    assert files and files == sorted(p.name for p in (tmp_path / "hf").glob("*.npy"))
    for name in files:
        assert (tmp_path / "tt" / name).read_bytes() == (tmp_path / "hf" / name).read_bytes()
    assert a["splits"] == b["splits"]


def test_tiktoken_encoder_refuses_a_custom_tokenizer(corpus, tmp_path):
    with pytest.raises(ValueError, match="built-in tokenizer"):
        prepare([str(corpus)], tmp_path / "x", seq_len=8, encoder="tiktoken",
                tokenizer_path=tmp_path / "custom.json", progress=False)
    with pytest.raises(ValueError, match="encoder must be"):
        prepare([str(corpus)], tmp_path / "x", seq_len=8, encoder="fast", progress=False)
