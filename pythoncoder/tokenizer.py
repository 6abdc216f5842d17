"""The Qwen2.5-Coder tokenizer; see :mod:`pythoncoder.data.tokenizer`."""

from pythoncoder.data.tokenizer import (
    EOS_ID,
    NUM_TOKENS,
    PADDED_VOCAB_SIZE,
    PADDING_IDS,
    SPECIAL_IDS,
    SPECIAL_TOKENS,
    load_tokenizer,
)

__all__ = [
    "EOS_ID",
    "NUM_TOKENS",
    "PADDED_VOCAB_SIZE",
    "PADDING_IDS",
    "SPECIAL_IDS",
    "SPECIAL_TOKENS",
    "load_tokenizer",
]
