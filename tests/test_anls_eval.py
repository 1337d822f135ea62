"""anls_eval CLI on a toy ST-VQA file."""

import json

import pytest

from tasks import anls_eval
from tasks.metrics.files import MetricInputError

ANN = {
    "dataset_name": "ST-VQA",
    "data": [
        {"question_id": 1, "question": "q", "file_path": "coco-text/a.jpg", "dataset": "coco-text",
         "file_name": "a.jpg", "set_name": "train", "answers": ["Stop", "stop sign"]},
        {"question_id": 2, "question": "q", "file_path": "coco-text/b.jpg", "dataset": "coco-text",
         "file_name": "b.jpg", "set_name": "train", "answers": ["abcd"]},
    ],
}  # fmt: skip


@pytest.fixture()
def ann(tmp_path):
    p = tmp_path / "train_task_3.json"
    p.write_text(json.dumps(ANN))
    return str(p)


def _res(tmp_path, recs, name="res.json"):
    p = tmp_path / name
    p.write_text(json.dumps(recs))
    return str(p)


def test_cli(ann, tmp_path, capsys):
    res = _res(
        tmp_path, [{"question_id": 2, "answer": "abc"}, {"question_id": 1, "answer": "STOP"}]
    )
    assert anls_eval.main(["--annotations", ann, "--results", res, "--per_question"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["anls"] == pytest.approx((1.0 + 0.75) / 2)
    assert out["perQuestion"] == {"1": 1.0, "2": 0.75}
    assert out["num_missing"] == 0 and out["num_questions"] == 2


def test_missing(ann, tmp_path):
    res = _res(tmp_path, [{"question_id": 1, "answer": "stop"}])
    with pytest.raises(MetricInputError, match=r"question_ids \[2\]"):
        anls_eval.run(ann, res)
    out = anls_eval.run(ann, res, allow_missing=True)
    assert out == {"anls": 0.5, "num_questions": 2, "num_missing": 1}


def test_bad_inputs(ann, tmp_path):
    test_file = tmp_path / "test_task_3.json"
    test_file.write_text(json.dumps({"data": [{"question_id": 5, "question": "q"}]}))
    res = _res(tmp_path, [{"question_id": 5, "answer": "x"}])
    with pytest.raises(MetricInputError, match=r"question_id=5.*'answers'.*server"):
        anls_eval.run(str(test_file), res)
    with pytest.raises(MetricInputError, match=r"missing\.json: file not found.*ST-VQA"):
        anls_eval.run(str(tmp_path / "missing.json"), res)
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [\n\n  {"question_id": 1,, }]}')
    with pytest.raises(MetricInputError, match=r"bad\.json:3:21: malformed JSON"):
        anls_eval.run(str(bad), res)
    noans = _res(tmp_path, [{"question_id": 1, "answer": "x"}, {"question_id": 2}], "n.json")
    with pytest.raises(MetricInputError, match=r"question_id=2.*'answer'"):
        anls_eval.run(ann, noans)
    assert anls_eval.main(["--annotations", ann, "--results", noans]) == 2
