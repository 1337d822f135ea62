"""Unit tests of the official VQA accuracy quirks, each computed by hand."""

import numpy as np
import pytest

from tasks.metrics.vqa import (
    normalize_answer,
    process_digit_article,
    process_punctuation,
    question_accuracy,
    vqa_accuracy,
    vqa_per_example,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,000", "1000"),  # comma between digits: every punctuation symbol is deleted
        ("1,000 red/white", "1000 redwhite"),
        ("red,white", "red white"),  # otherwise replaced by a space...
        ("red, white", "red white"),  # ...unless next to a space: deleted
        ("red/white", "red white"),
        ("red-white", "red white"),
        ("t-shirt", "t shirt"),
        ("st. louis", "st louis"),  # period not followed by a digit: deleted
        ("st.louis", "stlouis"),
        ("10.5", "10.5"),  # period followed by a digit: kept
        ("Dog.", "Dog"),
        ("3:30", "3:30"),  # ':' is not in the punctuation list
        ("don't", "don't"),  # neither is the apostrophe
        ("what?!", "what  "),
        ("(yes)", " yes "),
    ],
)
def test_process_punctuation(text, expected):
    assert process_punctuation(text) == expected


def test_period_strip_count_quirk():
    # upstream passes re.UNICODE (32) as re.sub's count: only 32 periods go
    assert process_punctuation("." * 40) == "." * 8


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Two dogs", "2 dogs"),
        ("a frisbee", "frisbee"),
        ("none", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),
        ("dont know", "don't know"),
        ("Im here", "im here"),  # capitalised keys never match after lower()
        ("  an   apple ", "apple"),
    ],
)
def test_process_digit_article(text, expected):
    assert process_digit_article(text) == expected


def test_normalize_answer_order():
    assert normalize_answer("\tThe  Two\ndogs. ") == "2 dogs"


def _acc(answers, pred):
    return question_accuracy(answers, pred)


def test_leave_one_out_values():
    others = [f"x{i}" for i in range(10)]
    for k, want in [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]:
        answers = ["cat"] * k + others[k:]
        assert _acc(answers, "cat") == pytest.approx(want), k


def test_no_normalisation_when_all_answers_identical():
    assert _acc(["yes"] * 10, "yes") == 1.0
    assert _acc(["yes"] * 10, " yes\n") == 1.0  # whitespace is always cleaned
    assert _acc(["yes"] * 10, "Yes") == 0.0  # ...but nothing else
    assert _acc(["ten"] * 10, "10") == 0.0
    assert _acc(["ten"] * 10, "ten") == 1.0
    # one differing answer switches normalisation on for all of them and the prediction
    assert _acc(["ten"] * 9 + ["dog"], "10") == 1.0
    assert _acc(["ten"] * 9 + ["dog"], "Ten.") == 1.0
    # trailing whitespace does not count as a difference
    assert _acc(["yes"] * 9 + ["yes "], "Yes") == 0.0


def test_identical_answer_records_exclude_each_other():
    # The official code compares whole answer dicts: two identical records are both
    # "self" for each other.
    rec = {"answer": "cat", "answer_confidence": "yes", "answer_id": 1}
    answers = [rec, dict(rec), dict(rec)] + [
        {"answer": "dog", "answer_confidence": "yes", "answer_id": i} for i in range(4, 11)
    ]
    # each "cat" record: 0 others match; each "dog" record: 3 match -> 7/10
    assert _acc(answers, "cat") == pytest.approx(0.7)
    # with distinct ids it is the usual 0.9
    distinct = [dict(rec, answer_id=i) for i in (1, 2, 3)] + answers[3:]
    assert _acc(distinct, "cat") == pytest.approx(0.9)


def test_seqio_metric():
    targets = [["cat"] * 10, {"answers": ["dog"] * 3 + ["x"] * 7}, ["a"] * 10]
    out = vqa_accuracy(targets, ["cat", "dog", "b"])
    per = [100.0, 90.0, 0.0]
    assert vqa_per_example(targets, ["cat", "dog", "b"]) == pytest.approx(per)
    half = 1.959963984540054 * float(np.std(per, ddof=1)) / np.sqrt(3)
    mean = 100 * (1 + 0.9 + 0) / 3
    assert out == {
        "vqa_accuracy": pytest.approx(mean),
        "vqa_accuracy_low": pytest.approx(mean - half),
        "vqa_accuracy_high": pytest.approx(mean + half),
    }
    with pytest.raises(ValueError, match="targets"):
        vqa_accuracy(targets, ["cat"])
