"""Text stop sequences: find, truncate, and hold back text that may still become a stop."""

from __future__ import annotations

from collections.abc import Callable, Sequence

# HumanEval-style stops (Chen et al. 2021): a completion ends where top-level code resumes.
HUMANEVAL_STOPS: tuple[str, ...] = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest occurrence of any stop sequence in ``text``, or None."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def truncate_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to (not including) the first stop sequence."""
    i = find_stop(text, stops)
    return text if i is None else text[:i]


def stable_prefix(text: str, stops: Sequence[str]) -> str:
    """The part of ``text`` that is final while streaming: cut at a stop sequence, and hold
    back a trailing piece that could still grow into one (or an incomplete UTF-8 char)."""
    text = truncate_at_stop(text, stops)
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    out = text[:len(text) - hold]
    return out.rstrip("\ufffd")


class TextStopper:
    """An ``Engine.generate`` stop callback: decode the row's tokens, look for a stop."""

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str]) -> None:
        self.decode = decode
        self.stops = tuple(s for s in stops if s)

    def __call__(self, row: int, generated: list[int]) -> bool:
        if not self.stops:
            return False
        return find_stop(self.decode(generated), self.stops) is not None
