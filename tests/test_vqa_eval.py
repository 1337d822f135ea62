"""VQA evaluator CLI: parity with the official evaluator's output on the shared fixture."""

import json

import pytest

from tasks import vqa_eval
from tasks.metrics.files import MetricInputError

FIX = "vqa_official_eval"


@pytest.fixture()
def paths(shared_fixtures):
    d = shared_fixtures / FIX
    return {
        "questions": str(d / "v2_OpenEnded_mscoco_val2014_questions.json"),
        "annotations": str(d / "v2_mscoco_val2014_annotations.json"),
        "results": str(d / "results.json"),
        "expected": d / "expected_official_scores.json",
    }


def test_cli_reproduces_official_scores_exactly(paths, capsys):
    rc = vqa_eval.main(
        [
            "--questions", paths["questions"],
            "--annotations", paths["annotations"],
            "--results", paths["results"],
            "--per_question",
        ]
    )  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    expected = json.loads(paths["expected"].read_text())
    assert out["overall"] == expected["accuracy"]["overall"]
    assert out["perAnswerType"] == expected["accuracy"]["perAnswerType"]
    assert out["perQuestionType"] == expected["accuracy"]["perQuestionType"]
    assert out["perQuestion"] == expected["per_question"]  # every question, same keys
    assert out["num_questions"] == len(expected["per_question"]) and out["num_missing"] == 0


def test_without_per_question_flag(paths):
    report = vqa_eval.run(paths["annotations"], paths["results"], paths["questions"])
    assert set(report) == {
        "overall", "perAnswerType", "perQuestionType", "num_questions", "num_missing"
    }  # fmt: skip


def test_missing_predictions_error_or_counted(paths, tmp_path):
    res = json.loads(open(paths["results"]).read())
    dropped = [r["question_id"] for r in res[:3]]
    short = tmp_path / "res.json"
    short.write_text(json.dumps(res[3:]))
    with pytest.raises(MetricInputError, match=str(dropped[0])):
        vqa_eval.run(paths["annotations"], str(short))
    report = vqa_eval.run(paths["annotations"], str(short), allow_missing=True, per_question=True)
    assert report["num_missing"] == 3
    assert all(report["perQuestion"][str(q)] == 0.0 for q in dropped)
    full = vqa_eval.run(paths["annotations"], paths["results"], per_question=True)
    assert report["overall"] < full["overall"]  # the first question scores 100 in full
    assert full["perQuestion"][str(dropped[0])] == 100.0


def test_unknown_and_duplicate_ids_are_errors(paths, tmp_path):
    res = json.loads(open(paths["results"]).read())
    bad = tmp_path / "extra.json"
    bad.write_text(json.dumps(res + [{"question_id": 99999999, "answer": "x"}]))
    with pytest.raises(MetricInputError, match="99999999"):
        vqa_eval.run(paths["annotations"], str(bad))
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps(res + [res[0]]))
    with pytest.raises(MetricInputError, match="duplicate"):
        vqa_eval.run(paths["annotations"], str(dup))


def test_bad_files(paths, tmp_path, capsys):
    missing = tmp_path / "nope.json"
    with pytest.raises(MetricInputError, match=r"nope\.json.*not found.*question_id"):
        vqa_eval.run(paths["annotations"], str(missing))
    broken = tmp_path / "broken.json"
    broken.write_text('[\n {"question_id": 1000,\n  "answer": }\n]')
    with pytest.raises(MetricInputError, match=r"broken\.json:3:13: malformed JSON"):
        vqa_eval.run(paths["annotations"], str(broken))
    nofield = tmp_path / "nofield.json"
    nofield.write_text(json.dumps([{"question_id": 1000, "answr": "x"}]))
    with pytest.raises(MetricInputError, match=r"question_id=1000.*'answer'"):
        vqa_eval.run(paths["annotations"], str(nofield))
    badann = tmp_path / "ann.json"
    badann.write_text(json.dumps({"annotations": [{"question_id": 7, "answers": []}]}))
    with pytest.raises(MetricInputError, match=r"question_id=7.*'question_type'"):
        vqa_eval.run(str(badann), paths["results"])
    # the CLI reports the error and exits 2
    assert vqa_eval.main(["--annotations", paths["annotations"], "--results", str(broken)]) == 2
    assert "broken.json:3:13" in capsys.readouterr().err


def test_okvqa_annotations(tmp_path):
    # OK-VQA: answers carry raw_answer and answer; only `answer` is scored.
    answers = [
        {"answer_id": i + 1, "raw_answer": "Racing Bikes", "answer_confidence": "yes",
         "answer": "race"}
        for i in range(10)
    ]  # fmt: skip
    ann = {
        "annotations": [
            {"image_id": 1, "question_id": 5, "question_type": "one", "answer_type": "other",
             "confidence": 3, "answers": answers}
        ]
    }  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    (tmp_path / "res.json").write_text(json.dumps([{"question_id": 5, "answer": "race"}]))
    rep = vqa_eval.run(str(tmp_path / "ann.json"), str(tmp_path / "res.json"))
    assert rep["overall"] == 100.0 and rep["perQuestionType"] == {"one": 100.0}
    (tmp_path / "res.json").write_text(json.dumps([{"question_id": 5, "answer": "Racing Bikes"}]))
    assert vqa_eval.run(str(tmp_path / "ann.json"), str(tmp_path / "res.json"))["overall"] == 0.0


def test_textvqa_files(tmp_path):
    data = {
        "dataset_name": "textvqa",
        "data": [
            {"question_id": 3, "image_id": "00000000000000aa", "question": "what brand?",
             "answers": ["Nokia"] * 2 + ["nokia"] * 8},
            {"question_id": 4, "image_id": "00000000000000ab", "question": "what word?",
             "answers": ["stop"] * 10},
        ],
    }  # fmt: skip
    (tmp_path / "TextVQA_0.5.1_val.json").write_text(json.dumps(data))
    res = [{"question_id": 3, "answer": "NOKIA"}, {"question_id": 4, "answer": "Stop"}]
    (tmp_path / "r.json").write_text(json.dumps(res))
    rep = vqa_eval.run(str(tmp_path / "TextVQA_0.5.1_val.json"), str(tmp_path / "r.json"),
                       per_question=True)  # fmt: skip
    # q3: answers differ -> normalised, all ten match; q4: all identical -> exact, "Stop" fails
    assert rep["perQuestion"] == {"3": 100.0, "4": 0.0}
    assert rep["overall"] == 50.0 and rep["perQuestionType"] == {} and rep["perAnswerType"] == {}
    del data["data"][1]["answers"]
    (tmp_path / "TextVQA_0.5.1_test.json").write_text(json.dumps(data))
    with pytest.raises(MetricInputError, match=r"question_id=4.*'answers'.*server"):
        vqa_eval.run(str(tmp_path / "TextVQA_0.5.1_test.json"), str(tmp_path / "r.json"))
