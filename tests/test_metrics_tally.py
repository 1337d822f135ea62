"""TallyQA count parsing and accuracy."""

import pytest

from tasks.metrics.tally import parse_count, tally_accuracy, tally_report


@pytest.mark.parametrize(
    "pred, count",
    [
        ("2", 2), ("two", 2), (" Two. ", 2), ("02", 2), (3, 3), ("zero", 0), ("none", 0),
        ("no", 0), ("0", 0), ("fifteen", 15), ("twenty", 20), ("2 dogs", None), ("", None),
        ("many", None), ("2.5", None), ("-1", None), (-1, None), (True, None), (None, None),
        ("yes", None),
    ],
)  # fmt: skip
def test_parse_count(pred, count):
    assert parse_count(pred) == count


def test_report_overall_simple_complex():
    answers = [2, 0, 5, 1]
    preds = ["two", "none", "4", "banana"]
    simple = [True, True, False, None]
    rep = tally_report(answers, preds, simple)
    assert rep["overall"] == 50.0
    assert rep["simple"] == 100.0 and rep["num_simple"] == 2
    assert rep["complex"] == 0.0 and rep["num_complex"] == 1
    assert rep["num_unparsed"] == 1 and rep["num_questions"] == 4
    assert "simple" not in tally_report([1], ["1"])


def test_seqio_metric():
    out = tally_accuracy([{"answer": 3, "issimple": False}, {"answer": 1, "issimple": True}],
                         ["three", "2"])  # fmt: skip
    assert out == {"tally_accuracy": 50.0, "tally_simple": 0.0, "tally_complex": 100.0}
    assert tally_accuracy([3, "4"], ["3", "four"]) == {"tally_accuracy": 100.0}
    with pytest.raises(ValueError, match="answers"):
        tally_accuracy([1, 2], ["1"])
