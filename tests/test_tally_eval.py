"""tally_eval CLI on a toy TallyQA test file."""

import json

import pytest

from tasks import tally_eval
from tasks.metrics.files import MetricInputError

ANN = [
    {"image": "VG_100K_2/1.jpg", "image_id": 91, "data_source": "imported_genome",
     "question": "How many dogs?", "question_id": 10, "answer": 2, "issimple": True},
    {"image": "train2014/COCO_train2014_000000000009.jpg", "image_id": 9,
     "data_source": "amt", "question": "How many red cars?", "question_id": 11, "answer": 0,
     "issimple": False},
    {"image": "VG_100K_2/3.jpg", "image_id": 93, "data_source": "imported_genome",
     "question": "How many cats?", "question_id": 12, "answer": 4, "issimple": True},
]  # fmt: skip


def _write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(p)


def test_cli(tmp_path, capsys):
    ann = _write(tmp_path, "test.json", ANN)
    res = _write(tmp_path, "res.json", [
        {"question_id": 10, "answer": "two"}, {"question_id": 11, "answer": "no"},
        {"question_id": 12, "answer": 5},
    ])  # fmt: skip
    assert tally_eval.main(["--annotations", ann, "--results", res]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["overall"] == pytest.approx(200 / 3)
    assert out["simple"] == 50.0 and out["complex"] == 100.0
    assert out["num_simple"] == 2 and out["num_complex"] == 1 and out["num_missing"] == 0


def test_missing_and_bad_inputs(tmp_path):
    ann = _write(tmp_path, "test.json", ANN)
    res = _write(tmp_path, "res.json", [{"question_id": 10, "answer": "2"}])
    with pytest.raises(MetricInputError, match=r"question_ids \[11, 12\]"):
        tally_eval.run(ann, res)
    rep = tally_eval.run(ann, res, allow_missing=True)
    assert rep["num_missing"] == 2 and rep["overall"] == pytest.approx(100 / 3)
    assert rep["num_unparsed"] == 0
    with pytest.raises(MetricInputError, match=r"nothere\.json: file not found.*TallyQA"):
        tally_eval.run(str(tmp_path / "nothere.json"), res)
    bad = _write(tmp_path, "bad.json", '[{"question_id": 10, "answer": "2"}\n{"question_id": 11}]')
    with pytest.raises(MetricInputError, match=r"bad\.json:2:1: malformed JSON"):
        tally_eval.run(ann, bad)
    noanswer = _write(tmp_path, "noanswer.json", [dict(ANN[0], answer="2")])
    with pytest.raises(MetricInputError, match=r"question_id=10.*'answer' must be int"):
        tally_eval.run(noanswer, res)
    obj = _write(tmp_path, "obj.json", {"questions": ANN})
    with pytest.raises(MetricInputError, match="top level must be a JSON array"):
        tally_eval.run(obj, res)
