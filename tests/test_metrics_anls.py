"""ANLS: hand-computed cases around the 0.5 threshold, normalisation, edit distance."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.metrics.anls import anls, anls_score, levenshtein, normalize


@pytest.mark.parametrize(
    "pred, ref, expected",
    [
        ("abcd", "abcd", 1.0),
        ("abc", "abcd", 0.75),  # NL 1/4
        ("ab", "abcd", 0.0),  # NL exactly 0.5 -> 0
        ("ax", "ab", 0.0),  # NL 1/2 -> 0
        ("abcdxyz", "abcdefg", 1 - 3 / 7),  # NL 3/7 < 0.5
        ("abcxyz", "abcdef", 0.0),  # NL 3/6
        ("kitten", "sitting", 1 - 3 / 7),
        ("", "", 1.0),  # both empty: NL 0
        ("   ", "", 1.0),  # empty after normalisation
        ("x", "", 0.0),
        ("  Hello \t  World\n", "hello world", 1.0),  # strip, lower, collapse whitespace
        ("HELLO", "hello", 1.0),
    ],
)
def test_anls_hand_cases(pred, ref, expected):
    assert anls_score(pred, [ref]) == pytest.approx(expected, abs=1e-12)


def test_max_over_references_and_mean():
    assert anls_score("abd", ["xyz", "abc"]) == pytest.approx(2 / 3)
    out = anls([["abc"], ["xyz", "abcd"], ["q"]], ["abc", "abc", "zz"])
    assert out["anls"] == pytest.approx((1 + 0.75 + 0) / 3)
    half = 1.959963984540054 * float(np.std([1, 0.75, 0], ddof=1)) / np.sqrt(3)
    assert out["anls_low"] == pytest.approx(out["anls"] - half)
    assert out["anls_high"] == pytest.approx(out["anls"] + half)
    with pytest.raises(ValueError, match="no reference"):
        anls_score("a", [])


def test_normalize():
    assert normalize("  A  b\tC \n") == "a b c"


@settings(max_examples=200, deadline=None)
@given(a=st.text(max_size=12), b=st.text(max_size=12), c=st.text(max_size=12))
def test_levenshtein_is_a_metric(a, b, c):
    d = levenshtein(a, b)
    assert d == levenshtein(b, a)
    assert abs(len(a) - len(b)) <= d <= max(len(a), len(b))
    assert (d == 0) == (a == b)
    assert levenshtein(a, c) <= d + levenshtein(b, c)
    assert levenshtein(a + c, b + c) <= d


def test_levenshtein_known_values():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("flaw", "lawn") == 2
    assert levenshtein("", "abc") == 3
