"""Answers too large to cross the wire: the candidate's digest (``_wire.digest``) and the
judge's rule for when a digest may stand for the expected answer (``_judge``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pythoncoder.eval.sandbox import _judge, _wire
from pythoncoder.eval.sandbox._sandbox_child import _digest_reply

PAIRS = [("ab", "cd")] * 3


def _agrees(exp, out, atol=0.0):
    """The judge's verdict on the candidate's digest reply for ``out``."""
    return _judge._digest_agrees(_judge._digest_record(exp),
                                 _digest_reply(_wire.digest, out, []), atol)


def test_hashes_stand_only_for_str_leaves():
    assert _wire.digest(PAIRS)[0] == _wire.digest(["ab", "cd"])[0] == "hash"
    assert _judge._digest_record(PAIRS)[0] == "hash"
    # why not ints: their hashes are not keyed, and collide for an off-by-one answer
    assert hash(-1) == hash(-2) and hash((1, -1)) == hash((1, -2))
    assert hash(1) == hash(2**61) and hash(0.5) == hash(2**60)  # modulo 2**61 - 1
    assert hash(b"ab") == hash("ab")  # nor bytes: a bytes answer would pass for a str one
    for exp in ([(1, -1)] * 3, [(0.5, 1.5)] * 3, [("ab", 1)] * 3, [(b"ab", b"cd")] * 3,
                [("ab", None)] * 3, [("ab", ("cd",))] * 3, [1, 2, 3]):
        assert _wire.digest(exp)[0] == "exact"
        assert _judge._digest_record(exp)[0] == "exact"
        assert not _wire.str_items(exp, exact=True)
    # so the off-by-one answer fails: its exact bytes differ, though its hashes agree
    assert _agrees([(1, -1)] * 3, [(1, -1)] * 3) is True
    assert _agrees([(1, -1)] * 3, [(1, -1)] * 2 + [(1, -2)]) is False
    assert _wire.digest([(1, -1)], "hash") == _wire.digest([(1, -2)], "hash")
    assert _agrees([(1, -1)], [(1, -1)]) is True  # the hash kind is refused for ints:
    reply = ("digest", *_wire.digest([(1, -2)], "hash"), [])
    forged = ("digest", reply[1], "list", 1, reply[2], [])
    assert _judge._digest_agrees(_judge._digest_record([(1, -1)]), forged, 0) is False


def test_no_digest_stands_for_nan_sets_dicts_or_tolerance():
    for exp in ([(float("nan"), 1.0)], [frozenset({"a"})], [{"a": 1}], [("a", {1})],
                [0.5, 1.5],  # a flat list of floats: EvalPlus's tolerance applies
                "abc", 7, None):
        assert _judge._digest_record(exp) is None, exp
        assert _agrees(exp, exp) is None
    assert _agrees([(0.5, 1.0)], [(0.5, 1.0)], atol=1e-3) is None  # within a tolerance
    assert _agrees(PAIRS, PAIRS, atol=1e-3) is True  # strings: no tolerance to honour


def test_equal_values_made_differently_agree():
    fresh = [("".join(["a", "b"]), "c" + "d".lower()) for _ in range(3)]
    assert fresh == PAIRS and fresh[0][0] is not PAIRS[0][0]
    assert _agrees(PAIRS, fresh) is True
    assert _agrees(tuple(PAIRS), tuple(fresh)) is True
    ints = [(10**30 + 1, 2.5, None, True, b"x", "y")] * 2
    assert _agrees(ints, [(int("1" + "0" * 29 + "1"), 5 / 2, None, 1 == 1, b"xy"[:1],
                           "yz"[0]) for _ in range(2)]) is True


def test_a_different_item_length_or_type_disagrees():
    assert _agrees(PAIRS, PAIRS[:2] + [("ab", "cX")]) is False
    assert _agrees(PAIRS, [*PAIRS, ("ab", "cd")]) is False
    assert _agrees(PAIRS, tuple(PAIRS)) is False
    assert _agrees(PAIRS, [list(p) for p in PAIRS]) is False
    assert _agrees(PAIRS, [p[::-1] for p in PAIRS]) is False
    assert _agrees(PAIRS, [(b"ab", b"cd")] * 3) is False  # bytes for str: hash(b) == hash(s)
    assert _agrees([(1, 2)], [(1.0, 2)]) is False  # stricter than ==: never more lenient
    assert _agrees([(True, 2)], [(1, 2)]) is False


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "ab", ""]),
                          st.sampled_from(["a", "b", "ab", ""])), max_size=6),
       st.lists(st.tuples(st.sampled_from(["a", "b", "ab", ""]),
                          st.sampled_from(["a", "b", "ab", ""])), max_size=6))
def test_str_tuple_digests_agree_iff_equal(exp, out):
    out = [tuple("".join(list(s)) for s in item) for item in out]  # fresh str objects
    assert _agrees(exp, out) is (exp == out)


def test_past_caps_is_told_without_encoding():
    n = _wire.MAX_ITEMS // 4
    assert _wire.past_caps([("a", "b", "c", "d")] * n)  # 5n + 1 items
    assert not _wire.past_caps([("a", "b", "c")] * (n - 1))  # 4n - 3 items: it may cross
    assert not _wire.past_caps([["a", "b", "c", "d"]] * n)  # lists: not told, encoded
    assert not _wire.past_caps("a" * _wire.MAX_ITEMS)
    assert _wire.past_caps([0] * _wire.MAX_ITEMS)


def test_the_judge_takes_hash_digests_of_exact_str_only():
    class Name(str):
        pass

    subclassed = [(Name("a"), "b")] * 3
    assert _wire.str_items(subclassed) and not _wire.str_items(subclassed, exact=True)
    for value in ([("a", "b")] * 3, ["a", "b"]):
        assert _wire.str_items(value) and _wire.str_items(value, exact=True)
    for value in ([("a", b"b")], [("a", 1)], [["a"]], [("a",), "b"]):
        assert not _wire.str_items(value) and not _wire.str_items(value, exact=True)
