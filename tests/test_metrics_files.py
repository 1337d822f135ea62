"""Input helpers shared by the evaluators: error messages name file, record, field."""

import pytest

from tasks.metrics.files import (
    MetricInputError,
    check_missing,
    index_predictions,
    load_json,
    load_jsonl,
    records_list,
    require,
)


def test_load_json_errors(tmp_path):
    with pytest.raises(MetricInputError, match=r"absent\.json: file not found \(expected FMT\)"):
        load_json(tmp_path / "absent.json", "FMT")
    with pytest.raises(MetricInputError, match="is a directory"):
        load_json(tmp_path, "FMT")
    p = tmp_path / "x.json"
    p.write_text('{\n  "a": [1, 2,\n  ]\n}')
    with pytest.raises(MetricInputError, match=r"x\.json:3:3: malformed JSON .*expected FMT"):
        load_json(p, "FMT")
    p.write_text('{"a": 1}')
    assert load_json(p, "FMT") == {"a": 1}


def test_load_jsonl(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2}\n{"a": }\n')
    with pytest.raises(MetricInputError, match=r"x\.jsonl:4:7: malformed JSON line"):
        load_jsonl(p, "FMT")
    p.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert load_jsonl(p, "FMT") == [{"a": 1}, {"a": 2}]


def test_require_and_records_list():
    rec = {"question_id": 5, "answer": 3, "flag": True}
    assert require(rec, "answer", "f.json", types=int) == 3
    with pytest.raises(MetricInputError, match=r"f\.json: record with question_id=5: missing"):
        require(rec, "nope", "f.json", id_field="question_id")
    with pytest.raises(MetricInputError, match=r"record #7: missing required field 'x'"):
        require({}, "x", "f.json", id_field="question_id", index=7)
    with pytest.raises(MetricInputError, match="must be int, got bool"):
        require(rec, "flag", "f.json", types=int)
    with pytest.raises(MetricInputError, match="must be str/int, got float"):
        require({"v": 1.5}, "v", "f.json", types=(str, int))
    with pytest.raises(MetricInputError, match="expected a JSON object, got list"):
        require([1], "v", "f.json")
    assert records_list({"data": [1]}, "f.json", "data", "FMT") == [1]
    with pytest.raises(MetricInputError, match="key 'data'"):
        records_list([1], "f.json", "data", "FMT")
    with pytest.raises(MetricInputError, match="top level must be a JSON array"):
        records_list({"data": [1]}, "f.json", None, "FMT")


def test_index_predictions_and_missing():
    res = [{"question_id": 1, "answer": "a"}, {"question_id": 2, "answer": "b"}]
    preds = index_predictions(res, "r.json", id_field="question_id", value_field="answer")
    assert preds == {1: "a", 2: "b"}
    with pytest.raises(MetricInputError, match=r"duplicate question_id values \[1\]"):
        index_predictions(res + res[:1], "r.json", id_field="question_id", value_field="answer")
    assert check_missing([1, 2], preds, "r.json", allow_missing=False) == []
    assert check_missing([1, 2, 3, 4], preds, "r.json", allow_missing=True) == [3, 4]
    with pytest.raises(MetricInputError, match=r"no prediction for question_ids \[3, 4\]"):
        check_missing([1, 2, 3, 4], preds, "r.json", allow_missing=False)
    with pytest.raises(MetricInputError, match=r"not in the annotations: \[2\]"):
        check_missing([1], preds, "r.json", allow_missing=True)
    many = list(range(100, 125))
    with pytest.raises(MetricInputError, match=r"\[100, .*, 109, \.\.\.\] \(25 in all\)"):
        check_missing([1, 2, *many], preds, "r.json", allow_missing=False)
