"""Text stop sequences and the streaming hold-back."""

from hypothesis import given
from hypothesis import strategies as st

from pythoncoder.infer.stops import (
    HUMANEVAL_STOPS,
    TextStopper,
    find_stop,
    stable_prefix,
    truncate_at_stop,
)


def test_humaneval_stops_are_the_standard_five():
    assert HUMANEVAL_STOPS == ("\ndef", "\nclass", "\nif", "\nprint", "\n#")


def test_earliest_stop_wins():
    text = "    return x\n# done\ndef g():"
    assert find_stop(text, HUMANEVAL_STOPS) == text.index("\n#")
    assert truncate_at_stop(text, HUMANEVAL_STOPS) == "    return x"
    assert truncate_at_stop("no stop here", HUMANEVAL_STOPS) == "no stop here"
    assert find_stop("abc", ["", "zz"]) is None  # empty stops are ignored


def test_indented_code_is_not_a_stop():
    body = "    if x:\n        print(x)\n    # comment\n"
    assert find_stop(body, HUMANEVAL_STOPS) is None


def test_stable_prefix_holds_back_a_possible_stop():
    assert stable_prefix("x = 1\n", HUMANEVAL_STOPS) == "x = 1"
    assert stable_prefix("x = 1\nde", HUMANEVAL_STOPS) == "x = 1"
    assert stable_prefix("x = 1\ndef f", HUMANEVAL_STOPS) == "x = 1"
    assert stable_prefix("x = 1\n    y", HUMANEVAL_STOPS) == "x = 1\n    y"
    assert stable_prefix("caf\ufffd", []) == "caf"  # an incomplete UTF-8 character


@given(st.text(alphabet="\nabcdefi#lsprnt ", max_size=40))
def test_streamed_text_is_always_a_prefix_of_the_final_text(text):
    final = truncate_at_stop(text, HUMANEVAL_STOPS)
    for k in range(len(text) + 1):
        assert final.startswith(stable_prefix(text[:k], HUMANEVAL_STOPS))
    assert stable_prefix(text, HUMANEVAL_STOPS) == final or final.endswith(
        tuple(s[:i] for s in HUMANEVAL_STOPS for i in range(1, len(s))))


def test_text_stopper_decodes_the_row():
    pieces = {1: "x", 2: "\n", 3: "def"}
    stopper = TextStopper(lambda ids: "".join(pieces[i] for i in ids), HUMANEVAL_STOPS)
    assert not stopper(0, [1, 2])
    assert stopper(0, [1, 2, 3])
    assert not TextStopper(lambda ids: "\ndef", [])(0, [1])
