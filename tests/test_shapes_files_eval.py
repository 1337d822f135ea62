"""The evaluators read the shapes-world exports (same formats as the official files).

Oracle predictions taken from the annotations must score perfectly; one wrong
answer must cost exactly its share.
"""

import collections
import json

import pytest

from locca.data.export import export
from tasks import anls_eval, tally_eval, vqa_eval

N = 3


def _export(tmp_path, fmt, split):
    files = export(fmt, tmp_path / fmt, num_images=N, seed=1, split=split)
    return {f.split("/")[-1]: str(tmp_path / fmt / f) for f in files}


def _dump(tmp_path, name, recs):
    p = tmp_path / name
    p.write_text(json.dumps(recs))
    return str(p)


VQA_FILES = [
    ("vqav2", "v2_mscoco_val2014_annotations.json", "v2_OpenEnded_mscoco_val2014_questions.json"),
    ("okvqa", "mscoco_val2014_annotations.json", "OpenEnded_mscoco_val2014_questions.json"),
]


def _majority(answers):
    return collections.Counter(x["answer"] for x in answers).most_common(1)[0][0]


@pytest.mark.parametrize("fmt, ann_name, ques_name", VQA_FILES)
def test_vqa_style_exports(tmp_path, fmt, ann_name, ques_name):
    files = _export(tmp_path, fmt, "val")
    anns = json.load(open(files[ann_name]))["annotations"]
    majority = {a["question_id"]: _majority(a["answers"]) for a in anns}
    res = _dump(tmp_path, "r.json", [{"question_id": q, "answer": a} for q, a in majority.items()])
    rep = vqa_eval.run(files[ann_name], res, files[ques_name], per_question=True)
    assert rep["num_questions"] == len(anns) > 0
    for a in anns:  # the majority answer always gets leave-one-out credit
        assert rep["perQuestion"][str(a["question_id"])] > 0
    wrong = [{"question_id": q, "answer": "zzz-not-an-answer"} for q in majority]
    rep = vqa_eval.run(files[ann_name], _dump(tmp_path, "w.json", wrong), files[ques_name])
    assert rep["overall"] == 0.0 and set(rep["perAnswerType"].values()) == {0.0}


def test_textvqa_export(tmp_path):
    files = _export(tmp_path, "textvqa", "val")
    data = json.load(open(files["TextVQA_0.5.1_val.json"]))["data"]
    res = [{"question_id": d["question_id"], "answer": "zzz-not-an-answer"} for d in data]
    rep = vqa_eval.run(files["TextVQA_0.5.1_val.json"], _dump(tmp_path, "r.json", res))
    assert rep["overall"] == 0.0 and rep["num_questions"] == len(data) > 0


def test_stvqa_export(tmp_path):
    files = _export(tmp_path, "stvqa", "train")
    data = json.load(open(files["train_task_3.json"]))["data"]
    res = [{"question_id": d["question_id"], "answer": d["answers"][0].upper()} for d in data]
    rep = anls_eval.run(files["train_task_3.json"], _dump(tmp_path, "r.json", res))
    assert rep["anls"] == 1.0 and rep["num_questions"] == len(data) > 0


def test_tallyqa_export(tmp_path):
    files = _export(tmp_path, "tallyqa", "test")
    recs = json.load(open(files["test.json"]))
    res = [{"question_id": r["question_id"], "answer": str(r["answer"])} for r in recs]
    res[0]["answer"] = str(recs[0]["answer"] + 1)
    rep = tally_eval.run(files["test.json"], _dump(tmp_path, "r.json", res))
    assert rep["overall"] == pytest.approx(100.0 * (len(recs) - 1) / len(recs))
    assert rep["num_questions"] == len(recs)
