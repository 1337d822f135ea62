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
    assert {k: out[k] for k in ("tally_accuracy", "tally_simple", "tally_complex")} == {
        "tally_accuracy": 50.0, "tally_simple": 0.0, "tally_complex": 100.0}  # fmt: skip
    # Wilson intervals (%): 1 of 2, 0 of 1, 1 of 1
    assert (out["tally_accuracy_low"], out["tally_accuracy_high"]) == pytest.approx(
        (100 * 0.0945312, 100 * 0.9054688), abs=1e-4
    )
    assert out["tally_simple_low"] == 0.0 and out["tally_simple_high"] == pytest.approx(
        79.3451, abs=1e-3
    )
    assert out["tally_complex_high"] == 100.0 and out["tally_complex_low"] == pytest.approx(
        20.6549, abs=1e-3
    )
    all_right = tally_accuracy([3, "4"], ["3", "four"])
    assert all_right["tally_accuracy"] == 100.0 and all_right["tally_accuracy_high"] == 100.0
    assert all_right["tally_accuracy_low"] == pytest.approx(34.2380, abs=1e-3)
    with pytest.raises(ValueError, match="answers"):
        tally_accuracy([1, 2], ["1"])
