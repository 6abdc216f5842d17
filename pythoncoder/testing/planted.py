"""Realistic test corpora with planted copies, to prove every data-cleaning stage of ``prepare``.

The cleaning stages (exact dedup, quality filters, near dedup, decontamination) are only as
well tested as the corpus they run on.  This module builds one from *real* Python (files of
the running interpreter's standard library) and plants, next to it, the kinds of files each
stage must catch:

==================  ==========================================================================
category            what the file is
==================  ==========================================================================
``genuine``         a real stdlib file that passes every filter (:func:`genuine_files`)
``exact_duplicate`` a byte copy of a genuine file
``near_duplicate``  a fork's copy of a genuine file, 1-3 lines changed (:func:`near_duplicate`)
``minified``        a genuine file squeezed onto few, very long lines (:func:`minified`)
``base64``          a module embedding a large base64 string (:func:`base64_blob`)
``hex``             a module with a large table of ``0x..`` byte literals (:func:`hex_blob`)
``generated``       protoc / gRPC / Django / pyuic5 / SWIG / "AUTO-GENERATED" output
                    (:func:`generated_file`)
``benchmark``       a HumanEval or MBPP solution inside a solutions-repo file, verbatim,
                    reformatted or renamed (:func:`benchmark_copy`)
==================  ==========================================================================

:func:`plant_corpus` writes all of them under one root and returns ``{path: category}``.
Deduplication keeps the *first* copy in key order, so every planted copy's path sorts after
its original: genuine files live under ``a_genuine/`` and every plant under ``z_planted/``.

Everything is pure standard library and deterministic: the same seed on the same interpreter
(the genuine files come from its standard library) gives byte-identical output.  Every
generated file parses with :func:`ast.parse`.

The near-duplicate measure used here (and by :func:`identifier_jaccard`) is the Jaccard
similarity of the sets of 5-grams of identifiers (``[A-Za-z_][A-Za-z0-9_]*`` over the raw
text), the shingles of BigCode's MinHash near dedup; ``alnum=True`` uses BigCode's exact
tokens (runs of ``[A-Za-z0-9_]``) instead.
"""

from __future__ import annotations

import ast
import base64
import builtins
import gzip
import inspect
import io
import keyword
import random
import re
import sysconfig
import tokenize
import warnings
import zlib
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

__all__ = [
    "CATEGORIES", "BENCHMARK_KINDS", "GENERATED_KINDS",
    "genuine_files", "reformat", "rename_identifiers", "near_duplicate", "minified",
    "base64_blob", "hex_blob", "generated_file", "benchmark_copy", "plant_corpus",
    "benchmark_stem", "identifier_jaccard", "same_program",
]

CATEGORIES = ("genuine", "exact_duplicate", "near_duplicate", "minified", "base64", "hex",
              "generated", "benchmark")
BENCHMARK_KINDS = ("verbatim", "reformatted", "renamed")
GENERATED_KINDS = ("protobuf", "grpc", "django_migration", "pyqt5_ui", "swig",
                   "auto_generated")

GENUINE_DIR = "a_genuine"
PLANTED_DIR = "z_planted"

# --------------------------------------------------------------------------------------------
# Small helpers


def _parse(src: str) -> ast.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SyntaxWarnings (invalid escapes) of valid code
        return ast.parse(src)


def _parses(src: str) -> bool:
    try:
        _parse(src)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def _docstring_constants(tree: ast.AST) -> Iterator[ast.Constant]:
    """The docstring nodes of the module, classes and functions in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                yield first.value


def _normalized_dump(src: str) -> str:
    tree = _parse(src)
    for const in _docstring_constants(tree):
        const.value = _normalized_doc(const.value)
    return ast.dump(tree)


def _normalized_doc(doc: str) -> str:
    return "\n".join(line.rstrip() for line in inspect.cleandoc(doc).split("\n")).strip()


def same_program(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` parse to the same AST; docstrings are compared after
    ``inspect.cleandoc`` and stripping trailing whitespace (re-indentation moves them)."""
    try:
        return _normalized_dump(a) == _normalized_dump(b)
    except (SyntaxError, ValueError, RecursionError):
        return False


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ALNUM_TOKEN = re.compile(r"[A-Za-z0-9_]+")


def _shingles(text: str, n: int = 5, alnum: bool = False) -> set[tuple[str, ...]]:
    tokens = (_ALNUM_TOKEN if alnum else _IDENT).findall(text)
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def _set_jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    if min(len(a), len(b)) < 0.5 * max(len(a), len(b)):  # cannot reach 0.5
        return min(len(a), len(b)) / max(len(a), len(b))
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def identifier_jaccard(a: str, b: str, n: int = 5, *, alnum: bool = False) -> float:
    """Jaccard similarity of the identifier ``n``-gram sets of two texts (module docstring)."""
    return _set_jaccard(_shingles(a, n, alnum), _shingles(b, n, alnum))


def _min_jaccard(a: str, b: str) -> float:
    return min(identifier_jaccard(a, b), identifier_jaccard(a, b, alnum=True))


def _indent_of(line: str) -> str:
    return line[:len(line) - len(line.lstrip(" \t"))]


def _replace_spans(text: str, spans: list[tuple[int, int, int, str]]) -> str:
    """Replace ``(lineno, col_start, col_end, new)`` spans; columns are UTF-8 byte offsets
    as in ``ast`` positions, line numbers 1-based, all spans on one line each."""
    lines = text.split("\n")
    for lineno, start, end, new in sorted(spans, reverse=True):
        raw = lines[lineno - 1].encode("utf-8")
        lines[lineno - 1] = (raw[:start] + new.encode("utf-8") + raw[end:]).decode("utf-8")
    return "\n".join(lines)


_BUILTINS = frozenset(dir(builtins))
_RESERVED = frozenset(keyword.kwlist) | frozenset(getattr(keyword, "softkwlist", ())) | {
    "self", "cls", "_", "__class__", "print", "exec"}

# --------------------------------------------------------------------------------------------
# Genuine files

_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "encodings", "site-packages",
                        "dist-packages", "__pycache__", "lib-dynload"})
# Mirrors of the quality rules (StarCoder / Codex), applied with margins so that a near
# duplicate (one edited line, one extra comment) of a genuine file still passes them.
_GENUINE_MAX_LINE = 500          # rule: 1000
_GENUINE_MAX_MEAN_LINE = 80.0    # rule: 100
_GENUINE_MIN_ALNUM = 0.35        # rule: 0.25
_GENUINE_MAX_ENCODED = 512       # rule: 1024 characters or half the file
_GENUINE_MIN_LINES = 30
_NEAR_COPY_JACCARD = 0.5         # genuine files are at most this similar to one another
_GENERATED_MARKERS = (
    "auto-generated", "autogenerated", "automatically generated", "generated automatically",
    "generated by", "do not edit", "this file is generated", "code generator",
    "generated from", "don't edit", "do not modify",
)
_ENCODED = re.compile(
    r"[A-Za-z0-9+/\n=]{64,}"                                  # base64
    r"|(?:\b(?:0x|\\x)?[0-9a-fA-F]{2}(?:,|\b\s*)){8,}"         # hex bytes
    r"|(?:\\u[0-9a-fA-F]{4}){8,}"                             # unicode escapes
)
_ALNUM_RUN = re.compile(r"[^\W_]+")
_CODING = re.compile(r"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")
_ODD_BREAKS = ("\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@lru_cache(maxsize=8)
def _stdlib_candidates(min_bytes: int, max_bytes: int) -> tuple[str, ...]:
    root = _stdlib_root()
    found = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if any(part in _SKIP_DIRS or part.startswith("config-") for part in rel.parts[:-1]):
            continue
        try:
            if not path.is_file() or not min_bytes <= path.stat().st_size <= max_bytes:
                continue
        except OSError:
            continue
        found.append(rel.as_posix())
    return tuple(sorted(found))


def _clean_genuine(raw: bytes) -> str | None:
    """The text of a stdlib file if it is a clean, typical source file, else ``None``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(ch in text for ch in _ODD_BREAKS) or "\x00" in text or text.startswith("\ufeff"):
        return None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) < _GENUINE_MIN_LINES:
        return None
    for line in lines[:2]:
        m = _CODING.match(line)
        if m and m.group(1).lower().replace("_", "-") not in ("utf-8", "utf8"):
            return None
    if max(map(len, lines)) > _GENUINE_MAX_LINE:
        return None
    if len(text) / len(lines) > _GENUINE_MAX_MEAN_LINE:
        return None
    if sum(map(len, _ALNUM_RUN.findall(text))) < _GENUINE_MIN_ALNUM * len(text):
        return None
    head = "\n".join(lines[:10]).lower()
    if any(marker in head for marker in _GENERATED_MARKERS):
        return None
    encoded = sum(m.end() - m.start() for m in _ENCODED.finditer(text))
    if encoded > _GENUINE_MAX_ENCODED or encoded > 0.25 * len(text):
        return None
    if not _parses(text):
        return None
    return text


def genuine_files(n: int, seed: int = 0, min_bytes: int = 800,
                  max_bytes: int = 60_000) -> dict[str, str]:
    """``n`` real Python files from the running interpreter's standard library.

    Returns ``{relative posix path: text}`` (e.g. ``"json/decoder.py"``), sorted by path.
    The candidates are the ``.py`` files of ``sysconfig.get_paths()["stdlib"]`` of
    ``min_bytes``..``max_bytes`` bytes, outside ``site-packages``, ``encodings/`` (the
    near-identical ``cp*.py`` codecs) and every ``test/``, ``tests/`` or ``idle_test/``
    folder; a file is kept only if it is UTF-8 (no other coding cookie, no ``\\r`` or form
    feeds), has at least 30 lines, parses, has no auto-generated header, and passes the
    quality rules with margins (longest line <= 500, mean line length <= 80, alphanumeric
    fraction >= 0.35, at most 512 characters of base64/hex/unicode-escape runs).

    The sorted candidates are shuffled with ``random.Random(seed)`` and taken in that
    order, skipping a file whose identifier 5-gram Jaccard with an already taken one is
    0.5 or more (the stdlib has near copies), until ``n`` are taken; so the files of a
    smaller ``n`` are a subset of those of a larger one with the same seed.  Raises
    ``ValueError`` when fewer than ``n`` qualify.
    """
    root = _stdlib_root()
    order = list(_stdlib_candidates(min_bytes, max_bytes))
    random.Random(seed).shuffle(order)
    chosen: dict[str, str] = {}
    taken: list[set] = []
    for rel in order:
        if len(chosen) >= n:
            break
        try:
            text = _clean_genuine((root / rel).read_bytes())
        except OSError:
            continue
        if text is None:
            continue
        shingles = _shingles(text)
        if any(_set_jaccard(shingles, other) >= _NEAR_COPY_JACCARD for other in taken):
            continue
        chosen[rel] = text
        taken.append(shingles)
    if len(chosen) < n:
        raise ValueError(f"only {len(chosen)} stdlib files qualify, {n} requested")
    return dict(sorted(chosen.items()))


# --------------------------------------------------------------------------------------------
# reformat


def _string_rows(text: str) -> tuple[set[int], list[tuple[int, int]]]:
    """Rows (1-based) inside multi-line string tokens (not their first row), and the
    (first, last) rows of those tokens."""
    interior: set[int] = set()
    spans = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
            interior.update(range(tok.start[0] + 1, tok.end[0] + 1))
            spans.append((tok.start[0], tok.end[0]))
    return interior, spans


def _param_parts(args: ast.arguments) -> list[str]:
    def one(a: ast.arg, default: ast.expr | None, prefix: str = "") -> str:
        part = prefix + a.arg
        if a.annotation is not None:
            part += f": {ast.unparse(a.annotation)}"
            if default is not None:
                part += f" = {ast.unparse(default)}"
        elif default is not None:
            part += f"={ast.unparse(default)}"
        return part

    positional = args.posonlyargs + args.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += list(args.defaults)
    parts = [one(a, d) for a, d in zip(positional, defaults)]
    if args.posonlyargs:
        parts.insert(len(args.posonlyargs), "/")
    if args.vararg is not None:
        parts.append(one(args.vararg, None, "*"))
    elif args.kwonlyargs:
        parts.append("*")
    parts += [one(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    if args.kwarg is not None:
        parts.append(one(args.kwarg, None, "**"))
    return parts


def _simple_callee(func: ast.expr) -> bool:
    while isinstance(func, ast.Attribute):
        func = func.value
    return isinstance(func, ast.Name)


_EXPLODE_WIDTH = 79


def _explode_lists(text: str) -> str:
    """One argument per line, with a trailing comma, for long or many-parameter ``def``
    headers and long call statements (input: ``ast.unparse`` output)."""
    tree = _parse(text)
    lines = text.split("\n")
    new_rows: dict[int, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if getattr(node, "type_params", None):
                continue
            line = lines[node.lineno - 1]
            parts = _param_parts(node.args)
            if not parts or (len(line) <= _EXPLODE_WIDTH and len(parts) < 3):
                continue
            indent = _indent_of(line)
            head = ("async " if isinstance(node, ast.AsyncFunctionDef) else "") + "def "
            tail = ")" + (f" -> {ast.unparse(node.returns)}" if node.returns else "") + ":"
            new_rows[node.lineno - 1] = ([f"{indent}{head}{node.name}("]
                                         + [f"{indent}    {p}," for p in parts]
                                         + [indent + tail])
        elif (isinstance(node, (ast.Expr, ast.Assign, ast.Return))
              and node.lineno == node.end_lineno and isinstance(node.value, ast.Call)):
            call = node.value
            line = lines[node.lineno - 1]
            parts = [ast.unparse(a) for a in call.args] + [
                f"{k.arg}={ast.unparse(k.value)}" if k.arg else f"**{ast.unparse(k.value)}"
                for k in call.keywords]
            if len(line) <= _EXPLODE_WIDTH or len(parts) < 2 or not _simple_callee(call.func):
                continue
            if isinstance(node, ast.Assign):
                if getattr(node, "type_comment", None):
                    continue
                prefix = "".join(ast.unparse(t) + " = " for t in node.targets)
            else:
                prefix = "return " if isinstance(node, ast.Return) else ""
            indent = _indent_of(line)
            new_rows[node.lineno - 1] = ([f"{indent}{prefix}{ast.unparse(call.func)}("]
                                         + [f"{indent}    {p}," for p in parts]
                                         + [indent + ")"])
    out: list[str] = []
    for i, line in enumerate(lines):
        out.extend(new_rows.get(i, [line]))
    return "\n".join(out)


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _black_blank_lines(text: str) -> str:
    """Blank lines as black puts them: two around top-level defs and classes, one around
    nested ones, after the module docstring and after the imports; none elsewhere."""
    tree = _parse(text)
    interior, _ = _string_rows(text)
    before: dict[int, int] = {}  # 1-based row -> blank lines before it

    def start(stmt: ast.stmt) -> int:
        return min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])

    def mark(body: list[ast.stmt], level: int) -> None:
        gap = 2 if level == 0 else 1
        for i, stmt in enumerate(body):
            if i > 0:
                prev = body[i - 1]
                if isinstance(stmt, _DEFS) or isinstance(prev, _DEFS):
                    before[start(stmt)] = gap
                elif (level == 0 and i == 1 and isinstance(prev, ast.Expr)
                      and isinstance(prev.value, ast.Constant)
                      and isinstance(prev.value.value, str)):
                    before[start(stmt)] = 1
                elif (isinstance(prev, (ast.Import, ast.ImportFrom))
                      and not isinstance(stmt, (ast.Import, ast.ImportFrom))):
                    before[start(stmt)] = 1
            for field in ("body", "orelse", "finalbody"):
                inner = getattr(stmt, field, None)
                if isinstance(inner, list) and inner and isinstance(inner[0], ast.stmt):
                    mark(inner, level + 1)
            for handler in getattr(stmt, "handlers", []):
                mark(handler.body, level + 1)
            for case in getattr(stmt, "cases", []):
                mark(case.body, level + 1)

    mark(tree.body, 0)
    out: list[str] = []
    for row, line in enumerate(text.split("\n"), start=1):
        if not line.strip() and row not in interior:
            continue
        out.extend([""] * before.get(row, 0))
        out.append(line)
    return "\n".join(out) + "\n"


def _flip_quotes(text: str) -> str:
    """Switch the quotes of one-line string literals that contain no quote character."""
    spans = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type != tokenize.STRING or tok.start[0] != tok.end[0]:
            continue
        s = tok.string
        prefix = s[:len(s) - len(s.lstrip("rRbBuUfF"))]
        body = s[len(prefix):]
        if len(body) < 2 or body[:3] in ('"""', "'''") or body[0] != body[-1]:
            continue
        inner = body[1:-1]
        if "'" in inner or '"' in inner:
            continue
        quote = '"' if body[0] == "'" else "'"
        spans.append((tok.start[0], tok.start[1], tok.end[1], prefix + quote + inner + quote))
    lines = text.split("\n")
    for row, start, end, new in sorted(spans, reverse=True):  # str columns, not bytes
        lines[row - 1] = lines[row - 1][:start] + new + lines[row - 1][end:]
    return "\n".join(lines)


def _reindent_two(text: str) -> str:
    """Re-indent 4-space code with 2 spaces (docstrings shifted along, other strings kept)."""
    tree = _parse(text)
    interior, _ = _string_rows(text)
    lines = text.split("\n")
    doc_shift: dict[int, int] = {}  # interior row of a docstring -> spaces to remove
    for const in _docstring_constants(tree):
        if const.end_lineno is None or const.end_lineno == const.lineno:
            continue
        indent = _indent_of(lines[const.lineno - 1])
        if "\t" in indent:
            raise ValueError("tabs")
        rows = range(const.lineno + 1, const.end_lineno + 1)
        shift = len(indent) // 2
        if all(not lines[r - 1].strip() or lines[r - 1][:shift] == " " * shift for r in rows):
            doc_shift.update((r, shift) for r in rows)  # else that docstring stays as it is
    out = []
    for row, line in enumerate(lines, start=1):
        indent = _indent_of(line)
        if row in interior:
            shift = doc_shift.get(row, 0)
            spaces = len(line) - len(line.lstrip(" "))
            out.append(line[min(shift, spaces):])
            continue
        if "\t" in indent or len(indent) % 2:
            raise ValueError("indentation is not in spaces")
        out.append(" " * (len(indent) // 2) + line[len(indent):])
    return "\n".join(out)


def _triple_quoted(value: str) -> str | None:
    if any(not (ch.isprintable() or ch in "\n\t") for ch in value):
        return None
    body = value.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if body.endswith('"'):
        body = body[:-1] + '\\"'
    return '"""' + body + '"""'


def _unparse(tree: ast.Module) -> str:
    """``ast.unparse``, except that a multi-line string statement that is not a docstring
    (e.g. one after an ``import`` at the top of a function) keeps its triple-quoted
    layout instead of becoming one long ``'...\\n...'`` line.  Ends with a newline."""
    plain = ast.unparse(tree) + "\n"
    docs = {id(c) for c in _docstring_constants(tree)}
    literals: dict[str, str] = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str) and "\n" in node.value.value
                and id(node.value) not in docs):
            literal = _triple_quoted(node.value.value)
            if literal is not None:
                key = f"__planted_literal_{len(literals)}__"
                literals[key] = literal
                node.value = ast.Name(id=key, ctx=ast.Load())
    if not literals:
        return plain
    text = ast.unparse(tree) + "\n"
    for key, literal in literals.items():
        text = text.replace(key, literal, 1)
    return text if _parses(text) and ast.dump(_parse(text)) == ast.dump(_parse(plain)) else plain


def _reformat_steps(src: str, steps: Sequence) -> str:
    text = src
    try:
        unparsed = _unparse(_parse(src))
        if same_program(unparsed, src):
            text = unparsed
    except (SyntaxError, ValueError, RecursionError):
        pass
    for step in steps:
        try:
            candidate = step(text)
        except (SyntaxError, ValueError, RecursionError, IndentationError, tokenize.TokenError):
            continue
        if same_program(candidate, src):
            text = candidate
    return text if text.endswith("\n") else text + "\n"


def reformat(src: str) -> str:
    """The same program in another layout, as a formatter run over a copy would leave it.

    ``ast.unparse`` round trip (comments go, one statement a line), then, black-like:
    one parameter / argument per line with a trailing comma for ``def`` headers of 3+
    parameters and lines over 79 characters, black's blank lines (2 around top-level defs,
    1 around methods and after imports), string quotes switched where the literal holds no
    quote, and 2-space indentation (docstrings shifted along).  Each step is kept only if
    the result still parses to the same AST (:func:`same_program`); a step that fails is
    skipped.  If ``src`` already has that layout, the quotes or the indentation are left
    as ``ast.unparse`` writes them, so that the result differs from ``src`` when it can.
    """
    full = (_explode_lists, _black_blank_lines, _flip_quotes, _reindent_two)
    text = _reformat_steps(src, full)
    for skip in (_flip_quotes, _reindent_two, _explode_lists):
        if text.rstrip("\n") != src.rstrip("\n"):
            break
        text = _reformat_steps(src, [step for step in full if step is not skip])
    return text


# --------------------------------------------------------------------------------------------
# rename_identifiers

_VAR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "numbers": ("values", "nums", "num_list", "seq"), "nums": ("numbers", "values", "arr"),
    "arr": ("array", "nums", "items", "data"), "array": ("arr", "items", "values"),
    "lst": ("items", "values", "elements", "data"), "l": ("items", "seq", "vals"),
    "list1": ("first", "xs", "seq_a"), "list2": ("second", "ys", "seq_b"),
    "a": ("x", "first", "p"), "b": ("y", "second", "q"), "c": ("z", "third", "r"),
    "s": ("text", "string", "word"), "string": ("text", "s", "word"),
    "text": ("s", "string", "content"), "word": ("token", "term", "w"),
    "words": ("tokens", "terms", "parts"), "n": ("num", "count", "k", "size"),
    "m": ("rows", "num2", "width"), "k": ("n", "kk", "limit"), "i": ("idx", "pos", "ii"),
    "j": ("jdx", "inner", "jj"), "x": ("val", "item", "v", "elem"),
    "y": ("other", "w", "second"), "z": ("third", "zz"),
    "result": ("res", "out", "answer", "ret"), "res": ("result", "ans", "output"),
    "ans": ("res", "result", "answer"), "count": ("cnt", "total", "counter"),
    "cnt": ("count", "tally"), "total": ("acc", "running", "sum_"),
    "num": ("value", "number", "val"), "number": ("num", "value"),
    "value": ("val", "v", "item"), "val": ("value", "item"), "key": ("k", "name"),
    "idx": ("i", "index", "pos"), "index": ("idx", "pos"), "char": ("ch", "letter"),
    "ch": ("char", "symbol"), "temp": ("tmp", "aux"), "tmp": ("temp", "buf"),
    "dp": ("table", "memo"), "d": ("mapping", "table", "dct"), "dic": ("mapping", "table"),
    "test_tup": ("tup", "data"), "test_tup1": ("tup_a", "first"),
    "test_tup2": ("tup_b", "second"), "test_list": ("items", "lst"),
    "str1": ("text", "s1"), "str2": ("other", "s2"), "nums1": ("first", "xs"),
    "nums2": ("second", "ys"), "matrix": ("grid", "mat"), "grid": ("matrix", "board"),
    "row": ("line", "r"), "col": ("column", "c"), "stack": ("stk", "pending"),
    "queue": ("q", "todo"), "left": ("lo", "start"), "right": ("hi", "end"),
    "low": ("lo", "left"), "high": ("hi", "right"), "start": ("begin", "lo"),
    "end": ("stop", "hi"), "mid": ("middle", "pivot"), "prev": ("last", "before"),
    "curr": ("cur", "now"), "node": ("item", "cur"), "seen": ("visited", "known"),
    "freq": ("counts", "hist"), "counts": ("freq", "tally"), "paren_string": ("parens",),
    "threshold": ("limit", "tol"), "delimiter": ("sep",), "substring": ("needle", "part"),
    "strings": ("texts", "words"), "operations": ("ops",), "balance": ("acc", "total"),
    "mean": ("avg", "average"), "elem": ("item", "e"), "item": ("elem", "entry"),
    "data": ("values", "payload"), "sorted_numbers": ("ordered", "sorted_values"),
    "max_val": ("biggest", "top"), "min_val": ("smallest", "bottom"),
}
_WORD_SYNONYMS: dict[str, tuple[str, ...]] = {
    "find": ("get", "search", "locate"), "get": ("find", "fetch", "compute"),
    "check": ("verify", "test", "validate"), "is": ("check", "test"),
    "count": ("num", "tally"), "sum": ("total", "add"), "max": ("largest", "biggest"),
    "min": ("smallest", "lowest"), "largest": ("max", "biggest"),
    "smallest": ("min", "lowest"), "list": ("seq", "array"), "string": ("text", "str"),
    "str": ("text", "string"), "elements": ("items", "values"),
    "element": ("item", "value"), "numbers": ("nums", "values"), "number": ("num", "value"),
    "num": ("number", "val"), "remove": ("drop", "delete", "strip"),
    "sort": ("order", "arrange"), "sorted": ("ordered",), "make": ("build", "create"),
    "reverse": ("flip", "invert"), "parse": ("read", "decode"),
    "convert": ("transform", "change"), "unique": ("distinct",), "common": ("shared",),
    "first": ("initial", "leading"), "last": ("final", "trailing"),
    "words": ("tokens", "terms"), "word": ("token", "term"),
    "char": ("character", "letter"), "chars": ("characters", "letters"),
    "length": ("len", "size"), "len": ("length", "size"), "array": ("arr", "list"),
    "arr": ("array", "list"), "tuple": ("tup", "pair"), "tuples": ("tups", "pairs"),
    "dict": ("mapping", "map"), "all": ("every",), "any": ("some",),
    "digits": ("figures",), "digit": ("figure",), "distance": ("dist",),
    "values": ("items", "vals"), "value": ("val", "item"), "add": ("plus", "append"),
    "split": ("divide", "break"), "filter": ("select", "keep"),
    "encode": ("encrypt", "pack"), "decode": ("decrypt", "unpack"),
    "match": ("fit", "compare"), "close": ("near",), "below": ("under",),
    "above": ("over",), "zero": ("nil",), "prime": ("primal",), "even": ("paired",),
    "odd": ("unpaired",), "vowels": ("vowel_chars",), "palindrome": ("mirror",),
}
_GENERIC_NAMES = ("value", "item", "elem", "acc", "cur", "tmp", "buf", "entry", "part",
                  "piece", "token", "record", "flag", "pos", "step", "width", "slot")
_FUNC_AFFIXES = ("{}_impl", "my_{}", "{}_v2", "compute_{}", "do_{}", "solve_{}")


def _new_name(name: str, is_func: bool, rng: random.Random, taken: set[str]) -> str:
    def free(cand: str) -> bool:
        return (cand != name and cand.isidentifier() and not keyword.iskeyword(cand)
                and cand not in taken and cand not in _BUILTINS and cand not in _RESERVED)

    candidates: list[str] = []
    if not is_func and name in _VAR_SYNONYMS:
        candidates += rng.sample(_VAR_SYNONYMS[name], len(_VAR_SYNONYMS[name]))
    words = name.split("_")
    if len(words) > 1 or is_func or name not in _VAR_SYNONYMS:
        swapped = [rng.choice(_WORD_SYNONYMS[w]) if w in _WORD_SYNONYMS else w for w in words]
        candidates.append("_".join(swapped))
    if is_func:
        candidates += [f.format(name) for f in rng.sample(_FUNC_AFFIXES, 3)]
    else:
        candidates += rng.sample(_GENERIC_NAMES, 3)
    for cand in candidates:
        if free(cand):
            return cand
    k = rng.randint(0, 9)
    stem = "func" if is_func else "var"
    while not free(f"{stem}_{k}"):
        k += 1
    return f"{stem}_{k}"


def _arg_nodes(args: ast.arguments) -> list[ast.arg]:
    out = args.posonlyargs + args.args + args.kwonlyargs
    out += [a for a in (args.vararg, args.kwarg) if a is not None]
    return out


class _RenamePlan(ast.NodeVisitor):
    """Which names of a module can be renamed without changing what it does."""

    def __init__(self) -> None:
        self.order: dict[str, None] = {}     # candidates in first-seen order
        self.funcs: set[str] = set()         # functions not directly in a class body
        self.methods: set[str] = set()
        self.func_params: dict[str, set[str]] = {}
        self.func_has_kwargs: set[str] = set()
        self.blocked: set[str] = set()
        self.calls: list[tuple[str | None, str]] = []  # (callee name, keyword)
        self.scope = ["module"]

    def _define(self, name: str) -> None:
        if self.scope[-1] == "function":
            self.order.setdefault(name, None)
        elif self.scope[-1] == "class":
            self.blocked.add(name)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.blocked.add(alias.asname or alias.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            self.blocked.add(alias.asname or alias.name)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        if not isinstance(node, ast.Lambda):
            if self.scope[-1] == "class":
                self.methods.add(node.name)
            else:
                self.funcs.add(node.name)
                self.order.setdefault(node.name, None)
                params = self.func_params.setdefault(node.name, set())
                params.update(a.arg for a in _arg_nodes(node.args))
                if node.args.kwarg is not None:
                    self.func_has_kwargs.add(node.name)
            for dec in node.decorator_list:
                self.visit(dec)
            if node.returns is not None:
                self.visit(node.returns)
        for a in _arg_nodes(node.args):
            self.order.setdefault(a.arg, None)
            if a.annotation is not None:
                self.visit(a.annotation)
        for d in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
            self.visit(d)
        self.scope.append("function")
        for stmt in (node.body if isinstance(node.body, list) else [node.body]):
            self.visit(stmt)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.blocked.add(node.name)
        for expr in node.decorator_list + node.bases + [k.value for k in node.keywords]:
            self.visit(expr)
        self.scope.append("class")
        for stmt in node.body:
            self.visit(stmt)
        self.scope.pop()

    def visit_Name(self, node: ast.Name) -> None:
        if not isinstance(node.ctx, ast.Load):
            self._define(node.id)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self._define(node.name)
        self.generic_visit(node)

    def visit_MatchAs(self, node: ast.AST) -> None:
        if getattr(node, "name", None):
            self._define(node.name)
        self.generic_visit(node)

    visit_MatchStar = visit_MatchAs

    def visit_MatchMapping(self, node: ast.AST) -> None:
        if getattr(node, "rest", None):
            self._define(node.rest)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        callee = node.func.id if isinstance(node.func, ast.Name) else None
        for kw in node.keywords:
            if kw.arg:
                self.calls.append((callee, kw.arg))
        self.generic_visit(node)

    def renamable(self) -> list[str]:
        blocked = set(self.blocked) | self.methods | _BUILTINS | _RESERVED
        local = self.funcs - blocked
        for callee, kw in self.calls:
            if (callee not in local or kw not in self.func_params.get(callee, ())
                    or callee in self.func_has_kwargs):
                blocked.add(kw)
        return [name for name in self.order
                if name not in blocked and not (name.startswith("__") and name.endswith("__"))]


class _Renamer(ast.NodeTransformer):
    def __init__(self, mapping: dict[str, str], funcs: set[str]) -> None:
        self.mapping = mapping
        self.funcs = funcs

    def _get(self, name: str | None) -> str | None:
        return self.mapping.get(name, name) if name else name

    def visit_Name(self, node: ast.Name) -> ast.Name:
        node.id = self._get(node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.arg = self._get(node.arg)
        self.generic_visit(node)
        return node

    def _function(self, node: ast.AST) -> ast.AST:
        node.name = self._get(node.name)  # method names are never in the mapping
        self.generic_visit(node)
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_Call(self, node: ast.Call) -> ast.Call:
        if isinstance(node.func, ast.Name) and node.func.id in self.funcs:
            for kw in node.keywords:
                kw.arg = self._get(kw.arg)
        self.generic_visit(node)
        return node

    def visit_Global(self, node: ast.Global) -> ast.Global:
        node.names = [self._get(n) for n in node.names]
        return node

    visit_Nonlocal = visit_Global

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.ExceptHandler:
        node.name = self._get(node.name)
        self.generic_visit(node)
        return node

    def visit_MatchAs(self, node: ast.AST) -> ast.AST:
        node.name = self._get(node.name)
        self.generic_visit(node)
        return node

    visit_MatchStar = visit_MatchAs

    def visit_MatchMapping(self, node: ast.AST) -> ast.AST:
        node.rest = self._get(node.rest)
        self.generic_visit(node)
        return node


def _rename_in_docstring(doc: str, mapping: dict[str, str]) -> str:
    """Rename in doctest lines (``>>>`` / ``...``) every renamed name; in prose only names
    of 4+ characters or with an underscore (so that "a" or "n" in English stay)."""
    if not mapping:
        return doc

    def pattern(names: list[str]) -> re.Pattern | None:
        names = sorted(names, key=len, reverse=True)
        if not names:
            return None
        return re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, names)) + r")(?!\w)")

    every = pattern(list(mapping))
    prose = pattern([n for n in mapping if len(n) >= 4 or "_" in n])
    out = []
    for line in doc.split("\n"):
        stripped = line.lstrip()
        pat = every if stripped.startswith((">>>", "...")) else prose
        out.append(pat.sub(lambda m: mapping[m.group(1)], line) if pat else line)
    return "\n".join(out)


def _rename_tree(tree: ast.Module, seed: int, taken: set[str]) -> dict[str, str]:
    plan = _RenamePlan()
    plan.visit(tree)
    rng = random.Random(seed)
    taken = set(taken)
    mapping: dict[str, str] = {}
    for name in plan.renamable():
        mapping[name] = _new_name(name, name in plan.funcs, rng, taken)
        taken.add(mapping[name])
    renamed_funcs = plan.funcs - plan.methods
    _Renamer(mapping, renamed_funcs).visit(tree)
    for const in _docstring_constants(tree):
        const.value = _rename_in_docstring(const.value, mapping)
    return mapping


def rename_identifiers(src: str, seed: int = 0) -> str:
    """``src`` with its function, parameter and local variable names consistently renamed.

    Renamed: names of functions (not methods: they are called as attributes), parameters
    (of functions, methods and lambdas) and names bound inside functions.  Never renamed:
    builtins, imported names, attributes, names bound in class bodies, dunders,
    ``self``/``cls``, and any parameter name also passed as a keyword to a function not
    defined in ``src``.  Keywords of calls to the renamed functions follow them.  New names
    are plausible synonyms (``numbers`` -> ``values``, ``find_max`` -> ``get_largest``) or
    ``var_<k>``, chosen with ``random.Random(seed)`` among names not in ``src``.  The same
    names are renamed in the docstrings: in doctest lines all of them, in prose those of 4+
    characters or with an underscore (whole words, not after a dot).  The result is
    ``ast.unparse`` output (comments are lost), ending with a newline.
    """
    tree = _parse(src)
    _rename_tree(tree, seed, set(_IDENT.findall(src)))
    return _unparse(tree)


# --------------------------------------------------------------------------------------------
# near_duplicate

_FORK_COMMENTS = (
    "# TODO: revisit this for the fork", "# NOTE: patched locally, see issue #{n}",
    "# FIXME: this is slow for large inputs", "# backported from upstream (r{n})",
    "# XXX keep in sync with upstream", "# local change: tolerate missing values",
    "# HACK: work around a platform quirk", "# changed in our fork, PR {n}",
)
_STRING_DEFAULTS = {"utf-8": "utf8", "strict": "replace", "r": "rb", "w": "wb", "": " ",
                    "ascii": "latin-1", "\n": "\r\n", " ": "\t", ",": ";"}


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _in_fstring(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.JoinedStr):
            return True
    return False


def _edit_comment(text: str, rng: random.Random) -> str | None:
    tree = _parse(text)
    lines = text.split("\n")
    rows = sorted({s.lineno for s in ast.walk(tree) if isinstance(s, ast.stmt)
                   and s.col_offset == len(_indent_of(lines[s.lineno - 1]).encode())})
    if not rows:
        return None
    row = rng.choice(rows)
    comment = rng.choice(_FORK_COMMENTS).format(n=rng.randint(10, 9999))
    lines.insert(row - 1, _indent_of(lines[row - 1]) + comment)
    return "\n".join(lines)


def _edit_literal(text: str, rng: random.Random) -> str | None:
    tree = _parse(text)
    parents = _parents(tree)
    lines = text.split("\n")
    ints, strs = [], []
    for node in ast.walk(tree):
        if (not isinstance(node, ast.Constant) or node.lineno != node.end_lineno
                or _in_fstring(node, parents)):
            continue
        seg = lines[node.lineno - 1].encode()[node.col_offset:node.end_col_offset].decode()
        if type(node.value) is int and re.fullmatch(r"[0-9]+", seg):
            ints.append((node, seg))
        elif (isinstance(node.value, str) and not isinstance(parents.get(node), ast.Expr)
              and re.fullmatch(r"'\w+ [\w .,:;!-]+'|\"\w+ [\w .,:;!-]+\"", seg)):  # messages
            strs.append((node, seg))
    if ints:
        node, seg = rng.choice(ints)
        value = node.value
        new = str(rng.choice([value + 1, value * 2, value + 10]) if value else 1)
    elif strs:
        node, seg = rng.choice(strs)
        new = seg[:-1] + rng.choice(["!", ".", " (fork)", "?"]) + seg[-1]
    else:
        return None
    return _replace_spans(text, [(node.lineno, node.col_offset, node.end_col_offset, new)])


def _edit_default(text: str, rng: random.Random) -> str | None:
    tree = _parse(text)
    parents = _parents(tree)
    options = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for d in fn.args.defaults + [d for d in fn.args.kw_defaults if d is not None]:
            if (not isinstance(d, ast.Constant) or d.lineno != d.end_lineno
                    or _in_fstring(d, parents)):
                continue
            v = d.value
            if isinstance(v, bool):
                options.append((d, repr(not v)))
            elif type(v) is int:
                options.append((d, str(v * 2 if v else 1)))
            elif isinstance(v, float):
                options.append((d, repr(v * 2 if v else 0.5)))
            elif isinstance(v, str) and v in _STRING_DEFAULTS:
                options.append((d, repr(_STRING_DEFAULTS[v])))
    if not options:
        return None
    node, new = rng.choice(options)
    return _replace_spans(text, [(node.lineno, node.col_offset, node.end_col_offset, new)])


def _edit_rename_local(text: str, rng: random.Random) -> str | None:
    tree = _parse(text)
    parents = _parents(tree)
    options = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        params = {a.arg for a in ast.walk(fn) if isinstance(a, ast.arg)}
        declared = {n for s in ast.walk(fn) if isinstance(s, (ast.Global, ast.Nonlocal))
                    for n in s.names}
        names: dict[str, list[ast.Name]] = {}
        stored: set[str] = set()
        for node in ast.walk(fn):
            if isinstance(node, ast.Name):
                names.setdefault(node.id, []).append(node)
                if isinstance(node.ctx, ast.Store):
                    stored.add(node.id)
        for name in sorted(stored - params - declared - _BUILTINS - _RESERVED):
            nodes = names[name]
            if 2 <= len(nodes) <= 4 and not any(_in_fstring(n, parents) for n in nodes):
                options.append((name, nodes))
    if not options:
        return None
    name, nodes = rng.choice(options)
    new = _new_name(name, False, rng, set(_IDENT.findall(text)))
    return _replace_spans(text, [(n.lineno, n.col_offset, n.end_col_offset, new) for n in nodes])


def near_duplicate(src: str, seed: int = 0) -> str:
    """A fork's copy of ``src``: 1-3 small edits, everything else byte-identical.

    The edits, drawn with ``random.Random(seed)``: change an int literal (or, if there is
    none, a message string of 2+ words), add a comment line, rename one local variable used
    2-4 times, change a default argument.
    An edit is kept only if the file still parses and its identifier 5-gram Jaccard with
    ``src`` (both tokenizations, see :func:`identifier_jaccard`) stays >= 0.85.  If none
    applies, a comment line is added.
    """
    rng = random.Random(seed)
    edits = [_edit_literal, _edit_comment, _edit_rename_local, _edit_default]
    want = rng.randint(1, 3)
    text, done = src, 0
    for edit in rng.sample(edits, len(edits)):
        if done >= want:
            break
        try:
            candidate = edit(text, rng)
        except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError):
            continue
        if (candidate is None or candidate == text or not _parses(candidate)
                or _min_jaccard(src, candidate) < 0.85):
            continue
        text, done = candidate, done + 1
    if text == src:
        lines = src.split("\n")
        lines.insert(0, rng.choice(_FORK_COMMENTS).format(n=rng.randint(10, 9999)))
        text = "\n".join(lines)
    return text


# --------------------------------------------------------------------------------------------
# minified


def _strip_docstrings(tree: ast.Module) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                node.body = node.body[1:] or [ast.Pass()]


def _word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_" or ord(ch) > 127


_BRACKETS = set("()[]{},;")


def _join_tokens(tokens: list[tokenize.TokenInfo]) -> str:
    out: list[str] = []
    prev = None
    for tok in tokens:
        s = tok.string
        if prev is not None:
            p = prev.string
            if ((_word_char(p[-1]) and _word_char(s[0]))
                    or (prev.type == tokenize.NUMBER and s[0] == ".")
                    or (prev.type == tokenize.OP and tok.type == tokenize.OP
                        and p not in _BRACKETS and s not in _BRACKETS)):
                out.append(" ")
        out.append(s)
        prev = tok
    return "".join(out)


def _minify_layout(text: str) -> str:
    """Minimal spaces, 1-space indents, simple statements joined with ``;`` and one-line
    bodies lifted onto their header (input: ``ast.unparse`` output without docstrings)."""
    entries: list[tuple[int, str]] = []
    depth, cur = 0, []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.INDENT:
            depth += 1
        elif tok.type == tokenize.DEDENT:
            depth -= 1
        elif tok.type == tokenize.NEWLINE:
            entries.append((depth, _join_tokens(cur)))
            cur = []
        elif tok.type in (tokenize.NL, tokenize.COMMENT, tokenize.ENCODING):
            continue
        elif tok.type == tokenize.ENDMARKER:
            break
        else:
            if tok.start[0] != tok.end[0]:
                raise ValueError("multi-line token")
            cur.append(tok)
    # block tree: [depth, text, children]
    root: list = []
    stack: list[tuple[int, list]] = [(-1, root)]
    for d, line in entries:
        while stack[-1][0] >= d:
            stack.pop()
        node = [d, line, []]
        stack[-1][1].append(node)
        stack.append((d, node[2]))

    def emit(nodes: list, d: int) -> list[list]:  # [depth, text, joinable]
        out: list[list] = []
        for _, line, children in nodes:
            if children:
                body = emit(children, d + 1)
                if len(body) == 1 and body[0][2]:
                    out.append([d, line + body[0][1], False])
                else:
                    out.append([d, line, False])
                    out.extend(body)
            elif line.startswith("@"):
                out.append([d, line, False])
            elif out and out[-1][2] and out[-1][0] == d:
                out[-1][1] += ";" + line
            else:
                out.append([d, line, True])
        return out

    return "\n".join(" " * d + line for d, line, _ in emit(root, 0)) + "\n"


def minified(src: str) -> str:
    """A "minified" variant of ``src`` that still parses: docstrings dropped, minimal
    spaces, 1-space indentation, simple statements joined with ``;``, one-line bodies on
    their header line, plus (when no line is over 1000 characters yet) a trailing
    ``_T = [...]`` table of numbers on one line of over 1200 characters.  The numbers have
    3+ digits, so the line does not look like hex-encoded data."""
    tree = _parse(src)
    _strip_docstrings(tree)
    plain = ast.unparse(tree) + "\n"
    try:
        text = _minify_layout(plain)
        if not same_program(text, plain):
            text = plain
    except (SyntaxError, ValueError, tokenize.TokenError, IndentationError):
        text = plain
    if max(map(len, text.split("\n"))) <= 1000:
        rng = random.Random(zlib.crc32(src.encode("utf-8")))
        used = set(_IDENT.findall(text))
        name = "_T"
        while name in used:
            name += "_"
        numbers: list[str] = []
        while sum(map(len, numbers)) + len(numbers) < 1250:
            numbers.append(str(rng.randint(100, 99_999)))
        text += f"{name}=[{','.join(numbers)}]\n"
    return text


# --------------------------------------------------------------------------------------------
# Encoded-data modules

_BLOB_THEMES = (
    ("ICON_PNG", "icon", "Embedded application icon (PNG), so the tool ships as one file."),
    ("FONT_DATA", "font", "Bundled bitmap font used by the terminal renderer."),
    ("CERT_BUNDLE", "certs", "CA certificates pinned for the update server."),
    ("MODEL_BLOB", "model", "Serialized weights of the tiny fallback model."),
    ("SPLASH_JPEG", "splash", "Splash screen image shown while loading."),
    ("FIRMWARE", "firmware", "Firmware image flashed onto the device on first connect."),
)


def base64_blob(seed: int = 0) -> str:
    """A module embedding 6-12 KiB of random bytes as a base64 string: ``NAME = (`` then
    lines of 76 base64 characters in quotes, ``)``, with a docstring and two helpers."""
    rng = random.Random(seed)
    name, stem, doc = rng.choice(_BLOB_THEMES)
    data = rng.randbytes(rng.randint(6, 12) * 1024)
    encoded = base64.b64encode(data).decode("ascii")
    chunks = [encoded[i:i + 76] for i in range(0, len(encoded), 76)]
    digest = zlib.crc32(data)
    lines = [
        f'"""{doc}', "",
        "Generated once with ``base64.b64encode``; kept inline so that no package data",
        'files are needed at runtime.', '"""', "",
        "import base64", "import hashlib", "import zlib", "",
        f"{name}_CRC32 = {digest:#010x}", f"{name} = (",
        *[f'    "{c}"' for c in chunks],
        ")", "", "",
        f"def load_{stem}() -> bytes:",
        f'    """Return the decoded {stem} bytes, checking their CRC-32."""',
        f"    raw = base64.b64decode({name})",
        f"    if zlib.crc32(raw) != {name}_CRC32:",
        f'        raise ValueError("corrupt embedded {stem}")',
        "    return raw", "", "",
        f"def {stem}_sha256() -> str:",
        f'    """Hex SHA-256 of the {stem}, for cache keys."""',
        f"    return hashlib.sha256(load_{stem}()).hexdigest()", "",
    ]
    return "\n".join(lines)


_HEX_THEMES = (
    ("GZIP_SAMPLE", "A gzip stream used as a test vector by the decompressor tests."),
    ("GLYPHS", "Glyph bitmaps of the 8x16 console font."),
    ("BOOTLOADER", "Bootloader image written to flash before the application."),
    ("SBOX_TABLE", "Substitution table of the legacy cipher."),
    ("EDID_BLOCKS", "EDID blocks of the supported monitors, concatenated."),
)


def hex_blob(seed: int = 0) -> str:
    """A module with a table of 2-4 KiB as ``0x..`` byte literals, 12 a line (e.g. a gzip
    stream starting ``0x1f, 0x8b``), with a docstring and a small accessor."""
    rng = random.Random(seed)
    name, doc = rng.choice(_HEX_THEMES)
    size = rng.randint(2048, 4096)
    if name == "GZIP_SAMPLE":
        words = [rng.choice(("alpha", "beta", "gamma", "delta", "omega", "sigma"))
                 for _ in range(size)]
        payload = gzip.compress(" ".join(words).encode(), mtime=0) + rng.randbytes(size)
        data = payload[:size]
    else:
        data = rng.randbytes(size)
    rows = [", ".join(f"0x{b:02x}" for b in data[i:i + 12]) + ","
            for i in range(0, len(data), 12)]
    lines = [
        f'"""{doc}"""', "", "import struct", "",
        f"{name} = bytes((",
        *[f"    {r}" for r in rows],
        "))", "",
        f"{name}_SIZE = {len(data)}", "", "",
        "def word_at(offset: int) -> int:",
        f'    """The little-endian 32-bit word at ``offset`` of :data:`{name}`."""',
        f"    return struct.unpack_from('<I', {name}, offset)[0]", "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Auto-generated files

_NOUNS = ("user", "order", "invoice", "device", "session", "article", "comment", "payment",
          "shipment", "sensor", "ticket", "project", "account", "message", "profile", "tag",
          "review", "booking", "asset", "report")
_FIELD_NAMES = ("name", "title", "email", "created_at", "updated_at", "status", "amount",
                "currency", "description", "slug", "is_active", "priority", "count", "url",
                "body", "owner_id", "quantity", "score", "due_date", "notes", "code")


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb_field(num: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return _varint(num << 3) + _varint(payload)
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _gen_protobuf(rng: random.Random) -> str:
    package = rng.choice(("acme.api", "billing.v1", "telemetry", "shop.orders", "iot.v2"))
    proto = rng.choice(_NOUNS) + "s"
    module = f"{proto}_pb2"
    messages = []
    for noun in rng.sample(_NOUNS, rng.randint(3, 4)):
        fields = rng.sample(_FIELD_NAMES, rng.randint(2, 4))
        messages.append((_camel(noun), fields))
    types = [rng.choice((3, 5, 8, 9)) for _ in range(sum(len(f) for _, f in messages))]

    def serialize(messages: list) -> tuple[bytes, list[tuple[int, int]]]:
        """A genuine FileDescriptorProto encoding, with each message's byte span."""
        body = _pb_field(1, f"{proto}.proto".encode()) + _pb_field(2, package.encode())
        offsets, kinds = [], iter(types)
        for name, fields in messages:
            fbytes = b"".join(
                _pb_field(2, _pb_field(1, f.encode()) + _pb_field(3, i + 1) + _pb_field(4, 1)
                          + _pb_field(5, next(kinds))
                          + _pb_field(10, (_camel(f)[0].lower() + _camel(f)[1:]).encode()))
                for i, f in enumerate(fields))
            msg = _pb_field(4, _pb_field(1, name.encode()) + fbytes)
            offsets.append((len(body) + 2, len(body) + len(msg)))
            body += msg
        return body + _pb_field(12, b"proto3"), offsets

    body, offsets = serialize(messages)
    while len(repr(body)) > 700 and len(messages) > 1:  # keep the line well under 1000
        messages.pop()
        body, offsets = serialize(messages)
    lines = [
        "# -*- coding: utf-8 -*-",
        "# Generated by the protocol buffer compiler.  DO NOT EDIT!",
        f"# source: {proto}.proto",
        '"""Generated protocol buffer code."""',
        "from google.protobuf import descriptor as _descriptor",
        "from google.protobuf import descriptor_pool as _descriptor_pool",
        "from google.protobuf import message as _message",
        "from google.protobuf import reflection as _reflection",
        "from google.protobuf import symbol_database as _symbol_database",
        "# @@protoc_insertion_point(imports)", "",
        "_sym_db = _symbol_database.Default()", "", "", "", "",
        f"DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile({body!r})", "", "", "",
    ]
    for name, _ in messages:
        lines.append(f"_{name.upper()} = DESCRIPTOR.message_types_by_name['{name}']")
    for name, _ in messages:
        lines += [
            f"{name} = _reflection.GeneratedProtocolMessageType('{name}', "
            "(_message.Message,), {",
            f"  'DESCRIPTOR' : _{name.upper()},",
            f"  '__module__' : '{module}'",
            f"  # @@protoc_insertion_point(class_scope:{package}.{name})",
            "  })",
            f"_sym_db.RegisterMessage({name})", "",
        ]
    lines += ["if _descriptor._USE_C_DESCRIPTORS == False:", "", "  DESCRIPTOR._options = None"]
    for (name, _), (start, end) in zip(messages, offsets):
        lines += [f"  _{name.upper()}._serialized_start={start}",
                  f"  _{name.upper()}._serialized_end={end}"]
    lines += ["# @@protoc_insertion_point(module_scope)", ""]
    return "\n".join(lines)


def _gen_grpc(rng: random.Random) -> str:
    pkg = rng.choice(("acme", "billing", "telemetry", "inventory", "chat"))
    noun = rng.choice(_NOUNS)
    svc = _camel(noun) + "Service"
    alias = f"{pkg}_dot_{noun}__pb2"
    methods = [(verb + _camel(noun), _camel(verb) + "Request", _camel(verb) + "Reply")
               for verb in rng.sample(("Get", "List", "Create", "Update", "Delete", "Watch"),
                                      rng.randint(2, 4))]
    lines = [
        "# Generated by the gRPC Python protocol compiler plugin. DO NOT EDIT!",
        '"""Client and server classes corresponding to protobuf-defined services."""',
        "import grpc", "", f"from {pkg} import {noun}_pb2 as {alias}", "", "",
        f"class {svc}Stub(object):",
        '    """Missing associated documentation comment in .proto file."""', "",
        "    def __init__(self, channel):",
        '        """Constructor.', "", "        Args:", "            channel: A grpc.Channel.",
        '        """',
    ]
    for m, req, rep in methods:
        lines += [
            f"        self.{m} = channel.unary_unary(",
            f"                '/{pkg}.{svc}/{m}',",
            f"                request_serializer={alias}.{req}.SerializeToString,",
            f"                response_deserializer={alias}.{rep}.FromString,",
            "                )",
        ]
    lines += ["", "", f"class {svc}Servicer(object):",
              '    """Missing associated documentation comment in .proto file."""', ""]
    for m, _, _ in methods:
        lines += [
            f"    def {m}(self, request, context):",
            '        """Missing associated documentation comment in .proto file."""',
            "        context.set_code(grpc.StatusCode.UNIMPLEMENTED)",
            "        context.set_details('Method not implemented!')",
            "        raise NotImplementedError('Method not implemented!')", "",
        ]
    lines += ["", f"def add_{svc}Servicer_to_server(servicer, server):",
              "    rpc_method_handlers = {"]
    for m, req, rep in methods:
        lines += [
            f"            '{m}': grpc.unary_unary_rpc_method_handler(",
            f"                    servicer.{m},",
            f"                    request_deserializer={alias}.{req}.FromString,",
            f"                    response_serializer={alias}.{rep}.SerializeToString,",
            "            ),",
        ]
    lines += [
        "    }", "    generic_handler = grpc.method_handlers_generic_handler(",
        f"            '{pkg}.{svc}', rpc_method_handlers)",
        "    server.add_generic_rpc_handlers((generic_handler,))", "", "",
        " # This class is part of an EXPERIMENTAL API.", f"class {svc}(object):",
        '    """Missing associated documentation comment in .proto file."""', "",
    ]
    for m, req, rep in methods:
        lines += [
            "    @staticmethod", f"    def {m}(request,", "            target,",
            "            options=(),", "            channel_credentials=None,",
            "            call_credentials=None,", "            insecure=False,",
            "            compression=None,", "            wait_for_ready=None,",
            "            timeout=None,", "            metadata=None):",
            f"        return grpc.experimental.unary_unary(request, target, '/{pkg}.{svc}/{m}',",
            f"            {alias}.{req}.SerializeToString,",
            f"            {alias}.{rep}.FromString,",
            "            options, channel_credentials,",
            "            insecure, call_credentials, compression, wait_for_ready, timeout, "
            "metadata)", "",
        ]
    return "\n".join(lines)


_DJANGO_FIELDS = (
    ("name", "models.CharField(max_length={n})"), ("title", "models.CharField(max_length={n})"),
    ("email", "models.EmailField(max_length=254, unique=True)"),
    ("created_at", "models.DateTimeField(auto_now_add=True)"),
    ("updated_at", "models.DateTimeField(auto_now=True)"),
    ("status", "models.CharField(choices=[('draft', 'Draft'), ('published', 'Published')], "
               "default='draft', max_length=16)"),
    ("amount", "models.DecimalField(decimal_places=2, max_digits={n})"),
    ("description", "models.TextField(blank=True)"), ("slug", "models.SlugField(unique=True)"),
    ("is_active", "models.BooleanField(default=True)"),
    ("priority", "models.PositiveSmallIntegerField(default=0)"),
    ("url", "models.URLField(blank=True)"), ("quantity", "models.IntegerField(default=1)"),
    ("due_date", "models.DateField(blank=True, null=True)"),
)


def _gen_django(rng: random.Random) -> str:
    version = rng.choice(("3.2.19", "4.1.7", "4.2", "4.2.1", "4.2.7", "5.0.3"))
    date = (f"{rng.randint(2021, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}")
    app = rng.choice(("shop", "blog", "crm", "inventory", "accounts"))
    models_ = rng.sample(_NOUNS, rng.randint(3, 4))
    number = rng.randint(1, 40)
    lines = [
        f"# Generated by Django {version} on {date}", "",
        "from django.conf import settings", "from django.db import migrations, models",
        "import django.db.models.deletion", "", "",
        "class Migration(migrations.Migration):", "",
    ]
    if number == 1:
        lines += ["    initial = True", ""]
    lines += ["    dependencies = [",
              "        migrations.swappable_dependency(settings.AUTH_USER_MODEL),"]
    if number > 1:
        lines.append(f"        ('{app}', '{number - 1:04d}_auto_{date[:10].replace('-', '')}'),")
    lines += ["    ]", "", "    operations = ["]
    for i, model in enumerate(models_):
        lines += [
            "        migrations.CreateModel(", f"            name='{_camel(model)}',",
            "            fields=[",
            "                ('id', models.BigAutoField(auto_created=True, primary_key=True, "
            "serialize=False, verbose_name='ID')),",
        ]
        for fname, ftype in rng.sample(_DJANGO_FIELDS, rng.randint(3, 6)):
            lines.append(f"                ('{fname}', "
                         f"{ftype.format(n=rng.choice((32, 64, 120, 200, 255)))}),")
        if i:
            other = _camel(models_[i - 1])
            lines.append(f"                ('{models_[i - 1]}', models.ForeignKey("
                         f"on_delete=django.db.models.deletion.CASCADE, "
                         f"related_name='{model}s', to='{app}.{other.lower()}')),")
        else:
            lines.append("                ('owner', models.ForeignKey("
                         "on_delete=django.db.models.deletion.CASCADE, "
                         "to=settings.AUTH_USER_MODEL)),")
        lines += ["            ],", "            options={",
                  f"                'ordering': ['-{rng.choice(('id', 'created_at', 'name'))}'],",
                  "            },", "        ),"]
    lines += ["    ]", ""]
    return "\n".join(lines)


_QT_WIDGETS = (("QLabel", "label"), ("QLineEdit", "lineEdit"), ("QPushButton", "pushButton"),
               ("QCheckBox", "checkBox"), ("QComboBox", "comboBox"), ("QSpinBox", "spinBox"),
               ("QTextEdit", "textEdit"), ("QProgressBar", "progressBar"))


def _gen_pyqt(rng: random.Random) -> str:
    ui = rng.choice(("mainwindow", "settings_dialog", "login", "export_wizard", "about"))
    old = rng.random() < 0.5
    version = rng.choice(("5.9.2", "5.11.3", "5.13.0")) if old else rng.choice(
        ("5.15.2", "5.15.4", "5.15.9"))
    lines = [
        "# -*- coding: utf-8 -*-", "",
        f"# Form implementation generated from reading ui file '{ui}.ui'", "#",
        f"# Created by: PyQt5 UI code generator {version}", "#",
    ]
    if old:
        lines += ["# WARNING! All changes made in this file will be lost!"]
    else:
        lines += ["# WARNING: Any manual changes made to this file will be lost when pyuic5 is",
                  "# run again.  Do not edit this file unless you know what you are doing."]
    lines += ["", "", "from PyQt5 import QtCore, QtGui, QtWidgets", "", "",
              "class Ui_MainWindow(object):", "    def setupUi(self, MainWindow):",
              '        MainWindow.setObjectName("MainWindow")',
              f"        MainWindow.resize({rng.choice((640, 800, 1024))}, "
              f"{rng.choice((480, 600, 768))})",
              "        self.centralwidget = QtWidgets.QWidget(MainWindow)",
              '        self.centralwidget.setObjectName("centralwidget")',
              "        self.verticalLayout = QtWidgets.QVBoxLayout(self.centralwidget)",
              '        self.verticalLayout.setObjectName("verticalLayout")']
    widgets = []
    counts: dict[str, int] = {}
    for _ in range(rng.randint(5, 9)):
        cls, base = rng.choice(_QT_WIDGETS)
        k = counts.get(base, 0)
        counts[base] = k + 1
        obj = base if k == 0 else f"{base}_{k + 1}"
        widgets.append((cls, obj, rng.choice(_FIELD_NAMES).replace("_", " ").capitalize()))
        lines += [f"        self.{obj} = QtWidgets.{cls}(self.centralwidget)",
                  f'        self.{obj}.setObjectName("{obj}")',
                  f"        self.verticalLayout.addWidget(self.{obj})"]
    lines += ["        MainWindow.setCentralWidget(self.centralwidget)",
              "        self.menubar = QtWidgets.QMenuBar(MainWindow)",
              "        self.menubar.setGeometry(QtCore.QRect(0, 0, 800, 22))",
              '        self.menubar.setObjectName("menubar")',
              "        MainWindow.setMenuBar(self.menubar)",
              "        self.statusbar = QtWidgets.QStatusBar(MainWindow)",
              '        self.statusbar.setObjectName("statusbar")',
              "        MainWindow.setStatusBar(self.statusbar)", "",
              "        self.retranslateUi(MainWindow)",
              "        QtCore.QMetaObject.connectSlotsByName(MainWindow)", "",
              "    def retranslateUi(self, MainWindow):",
              "        _translate = QtCore.QCoreApplication.translate",
              f'        MainWindow.setWindowTitle(_translate("MainWindow", "{_camel(ui)}"))']
    for cls, obj, label in widgets:
        if cls in ("QLabel", "QPushButton", "QCheckBox"):
            lines.append(f'        self.{obj}.setText(_translate("MainWindow", "{label}"))')
        elif cls == "QLineEdit":
            lines.append(f'        self.{obj}.setPlaceholderText(_translate("MainWindow", '
                         f'"{label}"))')
        else:
            lines.append(f'        self.{obj}.setToolTip(_translate("MainWindow", "{label}"))')
    lines.append("")
    return "\n".join(lines)


def _gen_swig(rng: random.Random) -> str:
    mod = rng.choice(("geomcore", "fastmath", "imgproc", "sensorlib", "pycrc"))
    version = rng.choice(("4.0.2", "4.1.1", "4.2.0"))
    lines = [
        "# This file was automatically generated by SWIG (https://www.swig.org).",
        f"# Version {version}", "#",
        "# Do not make changes to this file unless you know what you are doing - modify",
        "# the SWIG interface file instead.", "",
        "from sys import version_info as _swig_python_version_info",
        "# Import the low-level C/C++ module",
        'if __package__ or "." in __name__:', f"    from . import _{mod}", "else:",
        f"    import _{mod}", "", "try:", "    import builtins as __builtin__",
        "except ImportError:", "    import __builtin__", "",
        "def _swig_repr(self):", "    try:",
        '        strthis = "proxy of " + self.this.__repr__()',
        "    except __builtin__.Exception:", '        strthis = ""',
        '    return "<%s.%s; %s >" % (self.__class__.__module__, self.__class__.__name__, '
        "strthis,)", "", "",
        "def _swig_setattr_nondynamic_instance_variable(set):",
        "    def set_instance_attr(self, name, value):", '        if name == "this":',
        "            set(self, name, value)", '        elif name == "thisown":',
        "            self.this.own(value)",
        "        elif hasattr(self, name) and isinstance(getattr(type(self), name), property):",
        "            set(self, name, value)", "        else:",
        '            raise AttributeError("You cannot add instance attributes to %s" % self)',
        "    return set_instance_attr", "", "",
        "def _swig_setattr_nondynamic_class_variable(set):",
        "    def set_class_attr(cls, name, value):",
        "        if hasattr(cls, name) and not isinstance(getattr(cls, name), property):",
        "            set(cls, name, value)", "        else:",
        '            raise AttributeError("You cannot add class attributes to %s" % cls)',
        "    return set_class_attr", "", "",
        "class _SwigNonDynamicMeta(type):",
        '    """Meta class to enforce nondynamic attributes (no new attributes) for a class"""',
        "    __setattr__ = _swig_setattr_nondynamic_class_variable(type.__setattr__)", "", "",
    ]
    for fn in rng.sample(("add", "scale", "norm", "checksum", "clamp", "resize", "blend",
                          "crc32", "dot", "cross"), rng.randint(3, 5)):
        lines += [f"def {fn}(*args):", f"    return _{mod}.{fn}(*args)", ""]
    for noun in rng.sample(("Vector", "Matrix", "Image", "Buffer", "Sensor"), 2):
        lines += [
            "", f"class {noun}(object):",
            '    thisown = property(lambda x: x.this.own(), lambda x, v: x.this.own(v), '
            'doc="The membership flag")',
            "    __repr__ = _swig_repr", "",
            "    def __init__(self, *args):",
            f"        _{mod}.{noun}_swiginit(self, _{mod}.new_{noun}(*args))",
        ]
        for meth in rng.sample(("size", "data", "fill", "copy", "reset", "at"), 3):
            lines += ["", f"    def {meth}(self, *args):",
                      f"        return _{mod}.{noun}_{meth}(self, *args)"]
        lines += [f"    __swig_destroy__ = _{mod}.delete_{noun}", "",
                  f"# Register {noun} in _{mod}:", f"_{mod}.{noun}_swigregister({noun})", ""]
    return "\n".join(lines)


_ERROR_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED", "QUOTA_EXCEEDED",
                "RATE_LIMITED", "TIMEOUT", "CONFLICT", "PAYLOAD_TOO_LARGE", "BAD_GATEWAY",
                "MAINTENANCE", "DEPRECATED", "TOO_MANY_REQUESTS", "CHECKSUM_MISMATCH",
                "VERSION_MISMATCH", "LOCKED", "EXPIRED")


def _gen_constants(rng: random.Random) -> str:
    service = _camel(rng.choice(_NOUNS)) + rng.choice(("Store", "Gateway", "Hub", "Registry"))
    enum = rng.choice(("ErrorCode", "StatusCode", "ResultCode"))
    schema = rng.choice(("errors", "status_codes", "api_errors"))
    names = ["OK"] + rng.sample(_ERROR_NAMES[1:], rng.randint(16, 24))
    codes = [0] + sorted(rng.sample(range(1, 999), len(names) - 1))
    lines = [
        "# AUTO-GENERATED FILE, DO NOT EDIT",
        f"# Generated from schema/{schema}.json by tools/gen_{schema}.py",
        f'"""{enum} values of the {service} API."""', "",
        "from enum import IntEnum", "",
        f'__all__ = ["{enum}", "MESSAGES", "lookup"]', "", "",
        f"class {enum}(IntEnum):",
    ]
    lines += [f"    {n} = {c}" for n, c in zip(names, codes)]
    lines += ["", "", "MESSAGES = {"]
    lines += [f'    {enum}.{n}: "{n.lower().replace("_", " ")}",' for n in names]
    lines += ["}", "", "",
              "def lookup(code):", '    """Return the message of ``code``."""',
              "    try:", f"        return MESSAGES[{enum}(code)]",
              "    except ValueError:", '        return "unknown error"', ""]
    return "\n".join(lines)


_GENERATORS = (_gen_protobuf, _gen_grpc, _gen_django, _gen_pyqt, _gen_swig, _gen_constants)


def generated_file(seed: int = 0) -> str:
    """An auto-generated module with a real header, 40+ lines: kind
    ``GENERATED_KINDS[seed % 6]`` (protoc ``*_pb2.py`` with a genuinely encoded descriptor,
    gRPC ``*_pb2_grpc.py``, a Django migration, pyuic5 output, a SWIG wrapper, an
    "AUTO-GENERATED FILE, DO NOT EDIT" constants table), names drawn from ``seed``.  Each
    header phrase sits in the first 5 lines."""
    return _GENERATORS[seed % len(_GENERATORS)](random.Random(seed))


# --------------------------------------------------------------------------------------------
# Benchmark plants

_HEADERS = (
    ("# leetcode-style practice",),
    ("# Daily coding practice - day {n}", "# (my own solutions, feel free to reuse)"),
    ("# solutions/{stem}.py",),
    ("#!/usr/bin/env python3", "# -*- coding: utf-8 -*-", "# Author: {author}",
     "# Date: {date}"),
    ("# Interview prep: warm-up problem {n}",),
    ('"""Practice problem {n}.', "", "Solved while preparing for interviews.", '"""'),
)
_AUTHORS = ("jdoe", "a.kumar", "mlopez", "chen.wei", "s.novak", "tkowalski", "r.ahmed")
_IMPORTS = (("import sys",), ("import math",), ("import os",), ("import re",),
            ("import itertools",), ("import functools",), ("import time",),
            ("from collections import defaultdict",), ("from typing import List, Optional",),
            ("from collections import Counter",))
_HELPERS = (
    ("read_ints", ("def read_ints(line):", "    return [int(tok) for tok in line.split()]")),
    ("chunked", ("def chunked(seq, size):",
                 "    return [seq[i:i + size] for i in range(0, len(seq), size)]")),
    ("clamp", ("def clamp(value, low, high):", "    return max(low, min(high, value))")),
    ("flatten", ("def flatten(rows):", "    out = []", "    for row in rows:",
                 "        out.extend(row)", "    return out")),
    ("is_even", ("def is_even(n):", "    return n % 2 == 0")),
    ("timed", ("def timed(func):", "    import time", "", "    def wrapper(*args, **kwargs):",
               "        start = time.perf_counter()", "        out = func(*args, **kwargs)",
               "        print(f'{func.__name__}: {time.perf_counter() - start:.6f}s')",
               "        return out", "", "    return wrapper")),
    ("memo", ("def memo(func):", "    cache = {}", "", "    def inner(*args):",
              "        if args not in cache:", "            cache[args] = func(*args)",
              "        return cache[args]", "", "    return inner")),
    ("print_rows", ("def print_rows(rows, sep=' | '):", "    for row in rows:",
                    "        print(sep.join(str(cell) for cell in row))")),
)


def _literal_args(call: ast.Call) -> bool:
    try:
        for value in call.args + [k.value for k in call.keywords]:
            ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return False
    return True


def _benchmark_parts(item: dict) -> tuple[str, str, str | None]:
    """(solution text, file stem, an example call or None) of a HumanEval or MBPP item."""
    task = item.get("task_id")
    if "canonical_solution" in item and "prompt" in item:
        solution = item["prompt"] + item["canonical_solution"]
        call = None
        entry = item.get("entry_point")
        if entry and item.get("test"):
            try:
                for node in ast.walk(_parse(item["test"])):
                    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                            and node.func.id == "candidate" and _literal_args(node)):
                        node.func.id = entry
                        call = ast.unparse(node)
                        break
            except SyntaxError:
                pass
    elif "code" in item:
        solution = item["code"]
        call = None
        for test in item.get("test_list", ()):
            try:
                stmt = _parse(test).body[0]
            except (SyntaxError, IndexError):
                continue
            if isinstance(stmt, ast.Assert):
                expr = stmt.test
                if isinstance(expr, ast.Compare):
                    expr = expr.left
                if isinstance(expr, ast.Call) and _literal_args(expr):
                    call = ast.unparse(expr)
                    break
    else:
        raise ValueError("item has neither HumanEval (prompt, canonical_solution) "
                         "nor MBPP (code) fields")
    solution = solution.replace("\r\n", "\n").replace("\r", "\n")
    if not solution.endswith("\n"):
        solution += "\n"
    if isinstance(task, int):
        stem = f"mbpp_{task:04d}"
    else:
        prefix, _, num = str(task).rpartition("/")
        stem = (f"{prefix.lower()}_{int(num):04d}" if num.isdigit()
                else re.sub(r"\W+", "_", str(task)).strip("_").lower())
    if call is not None and len(call) > 200:
        call = None
    return solution, stem, call


def _wrap_benchmark(item: dict, seed: int) -> tuple[str, str, str]:
    """(header comment, code with the verbatim solution, stem) — the same for every kind."""
    solution, stem, call = _benchmark_parts(item)
    rng = random.Random(zlib.crc32(f"{stem}:{seed}".encode()))
    used = set(_IDENT.findall(solution))
    header = "\n".join(rng.choice(_HEADERS)).format(
        n=rng.randint(1, 365), stem=stem, author=rng.choice(_AUTHORS),
        date=f"{rng.randint(2019, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}")
    imports = [imp[0] for imp in rng.sample(_IMPORTS, rng.randint(1, 3))
               if not (set(_IDENT.findall(imp[0])) - {"import", "from"}) & used
               or imp[0] in solution]
    helpers = [body for name, body in rng.sample(_HELPERS, rng.randint(0, 2))
               if name not in used]
    before = helpers[:rng.randint(0, len(helpers))]
    after = helpers[len(before):]
    parts = []
    if imports:
        parts.append("\n".join(imports) + "\n")
    parts += ["\n".join(h) + "\n" for h in before]
    parts.append(solution)
    parts += ["\n".join(h) + "\n" for h in after]
    if call is not None and rng.random() < 0.7:
        parts.append(f'if __name__ == "__main__":\n    print({call})\n')
    code = "\n\n".join(parts)
    if not _parses(code):  # e.g. a helper's layout clashing with odd solution text
        code = solution
    return header + "\n", code, stem


def benchmark_copy(item: dict, kind: str, seed: int = 0) -> str:
    """A benchmark solution planted in a realistic solutions-repo file.

    ``item`` has HumanEval fields (``task_id``, ``prompt``, ``canonical_solution``; the
    solution is ``prompt + canonical_solution``, and ``test``/``entry_point`` give an
    example call) or MBPP fields (``task_id``, ``text``, ``code``; ``test_list`` gives the
    example call); line endings are normalized to ``\\n``.  The file: a header comment
    ("# leetcode-style practice", "# solutions/humaneval_0012.py", an author and date...),
    1-3 imports, 0-2 short unrelated helpers before and/or after the solution, and often an
    ``if __name__ == "__main__": print(<example call>)`` block; all drawn from
    ``(task_id, seed)``, so the three kinds of one item share them.  ``kind``:
    ``"verbatim"`` holds the solution text byte for byte, ``"reformatted"`` is the code run
    through :func:`reformat`, ``"renamed"`` through :func:`rename_identifiers` (header
    comments kept in both).
    """
    header, code, _ = _wrap_benchmark(item, seed)
    if kind == "verbatim":
        return header + "\n" + code
    if kind == "reformatted":
        return header + "\n" + reformat(code)
    if kind == "renamed":
        return header + "\n" + rename_identifiers(code, seed)
    raise ValueError(f"kind must be one of {BENCHMARK_KINDS}, got {kind!r}")


def benchmark_stem(item: dict) -> str:
    """The file stem of a benchmark item: ``humaneval_0012``, ``mbpp_0002``."""
    return _benchmark_parts(item)[1]


# --------------------------------------------------------------------------------------------
# The corpus


def plant_corpus(root: str | Path, *, n_genuine: int = 300, humaneval: Sequence[dict],
                 mbpp: Sequence[dict], seed: int = 0, n_exact: int = 10, n_near: int = 10,
                 n_minified: int = 5, n_base64: int = 5, n_hex: int = 5,
                 n_generated: int = 6, origins: dict[str, str] | None = None,
                 ) -> dict[str, str]:
    """Write a test corpus under ``root``; return ``{relative posix path: category}`` for
    every file written (categories: :data:`CATEGORIES`), sorted by path.

    * ``a_genuine/<stdlib path>``: ``n_genuine`` files of :func:`genuine_files` (``seed``).
    * ``z_planted/exact_duplicate/NNN_<flat path>``: byte copies of ``n_exact`` genuine files.
    * ``z_planted/near_duplicate/NNN_<flat path>``: :func:`near_duplicate` of ``n_near``
      other genuine files.
    * ``z_planted/minified/NNN_<flat path>``: :func:`minified` of ``n_minified`` others.
    * ``z_planted/base64/blob_NNN.py``, ``z_planted/hex/table_NNN.py``,
      ``z_planted/generated/NNN_<kind>.py``: :func:`base64_blob`, :func:`hex_blob`,
      :func:`generated_file` (``n_generated >= 6`` covers every generator).
    * ``z_planted/benchmark/<stem>_<kind>.py``: :func:`benchmark_copy` of every item of
      ``humaneval`` and ``mbpp``, once per kind of :data:`BENCHMARK_KINDS`.

    Dedup keeps the first copy in key order: every genuine file is under ``a_genuine/`` and
    every plant under ``z_planted/``, so each planted duplicate's path sorts after its
    original's.  Note that the three copies of a benchmark item are near duplicates of one
    another, and a minified file can be one of its source.  The sources of exact and near
    duplicates and minified files are distinct genuine files while ``n_genuine`` allows.
    If ``origins`` is given, it receives ``{planted path: original path}`` for copies of
    genuine files and ``{planted path: task_id}`` for benchmark copies.  Files are written
    as UTF-8 bytes (no newline translation).
    """
    root = Path(root)
    written: dict[str, str] = {}

    def write(rel: str, text: str, category: str, origin: str | None = None) -> None:
        if rel in written:
            raise ValueError(f"two files at {rel}")
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
        written[rel] = category
        if origins is not None and origin is not None:
            origins[rel] = origin

    genuine = genuine_files(n_genuine, seed=seed)
    for rel, text in genuine.items():
        write(f"{GENUINE_DIR}/{rel}", text, "genuine")

    rng = random.Random(seed)
    keys = sorted(genuine)
    need = n_exact + n_near + n_minified
    sources = rng.sample(keys, min(need, len(keys)))
    while len(sources) < need and keys:
        sources.append(keys[len(sources) % len(keys)])

    def flat(rel: str) -> str:
        return rel.replace("/", "__")

    for i, rel in enumerate(sources[:n_exact]):
        write(f"{PLANTED_DIR}/exact_duplicate/{i:03d}_{flat(rel)}", genuine[rel],
              "exact_duplicate", f"{GENUINE_DIR}/{rel}")
    for i, rel in enumerate(sources[n_exact:n_exact + n_near]):
        write(f"{PLANTED_DIR}/near_duplicate/{i:03d}_{flat(rel)}",
              near_duplicate(genuine[rel], seed * 1000 + i), "near_duplicate",
              f"{GENUINE_DIR}/{rel}")
    for i, rel in enumerate(sources[n_exact + n_near:need]):
        write(f"{PLANTED_DIR}/minified/{i:03d}_{flat(rel)}", minified(genuine[rel]),
              "minified", f"{GENUINE_DIR}/{rel}")
    for i in range(n_base64):
        write(f"{PLANTED_DIR}/base64/blob_{i:03d}.py", base64_blob(seed * 1000 + i), "base64")
    for i in range(n_hex):
        write(f"{PLANTED_DIR}/hex/table_{i:03d}.py", hex_blob(seed * 1000 + i), "hex")
    for i in range(n_generated):
        s = seed * 1000 + i
        write(f"{PLANTED_DIR}/generated/{i:03d}_{GENERATED_KINDS[s % len(GENERATED_KINDS)]}.py",
              generated_file(s), "generated")
    for item in list(humaneval) + list(mbpp):
        stem = benchmark_stem(item)
        for kind in BENCHMARK_KINDS:
            write(f"{PLANTED_DIR}/benchmark/{stem}_{kind}.py", benchmark_copy(item, kind, seed),
                  "benchmark", str(item.get("task_id")))
    return dict(sorted(written.items()))
