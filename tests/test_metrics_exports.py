"""Test-server export files: formats, validation, atomic writes."""

import json
import os

import numpy as np
import pytest

from tasks import exports
from tasks.exports import ExportError

WRITERS = [
    (exports.write_vqa_results, "question_id", "answer"),
    (exports.write_textvqa_submission, "question_id", "answer"),
    (exports.write_stvqa_submission, "question_id", "answer"),
    (exports.write_coco_caption_results, "image_id", "caption"),
]


@pytest.mark.parametrize("write, id_field, text_field", WRITERS)
def test_round_trip_all_input_forms(tmp_path, write, id_field, text_field):
    want = [{id_field: 3, text_field: "two"}, {id_field: 1, text_field: "a dog é"}]
    for i, preds in enumerate(
        [
            {3: "two", 1: "a dog é"},
            [(np.int64(3), "two"), (1, "a dog é")],
            [{id_field: 3, text_field: "two", "extra": 1}, {id_field: 1, text_field: "a dog é"}],
        ]
    ):
        path = tmp_path / f"out{i}.json"
        assert write(path, preds, expected_ids=[1, 3]) == 2
        got = json.loads(path.read_text(encoding="utf-8"))
        assert got == want
        assert all(type(r[id_field]) is int for r in got)
    assert sorted(os.listdir(tmp_path)) == ["out0.json", "out1.json", "out2.json"]  # no temps


@pytest.mark.parametrize("write, id_field, text_field", WRITERS)
def test_validation(tmp_path, write, id_field, text_field):
    path = tmp_path / "sub.json"
    path.write_text("previous")
    with pytest.raises(ExportError, match=f"duplicate {id_field}s: \\[1\\]"):
        write(path, [(1, "a"), (1, "b")])
    with pytest.raises(ExportError, match=f"{id_field} must be an integer, got '1'"):
        write(path, [("1", "a")])
    with pytest.raises(ExportError, match="must be an integer, got True"):
        write(path, [(True, "a")])
    with pytest.raises(ExportError, match=f"{id_field}=2: {text_field} must be a string"):
        write(path, {2: 5})
    with pytest.raises(ExportError, match=f"{id_field}=4: missing required field '{text_field}'"):
        write(path, [{id_field: 4}])
    with pytest.raises(ExportError, match=r"1 missing \[2\], 1 unexpected \[3\]"):
        write(path, {1: "a", 3: "c"}, expected_ids=[1, 2])
    with pytest.raises(ExportError, match="no predictions"):
        write(path, {})
    assert path.read_text() == "previous"  # a failed export leaves the old file alone
    assert os.listdir(tmp_path) == ["sub.json"]


def test_atomic_write_cleans_up_on_failure(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        exports.atomic_write_json(path, {"a": object()})
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["x.json"]
    exports.atomic_write_json(tmp_path / "sub" / "y.json", [1])
    assert json.loads((tmp_path / "sub" / "y.json").read_text()) == [1]


def test_filenames():
    assert (
        exports.vqav2_results_filename("test-dev2015", "locca")
        == "vqa_OpenEnded_mscoco_test-dev2015_locca_results.json"
    )
    assert (
        exports.coco_caption_results_filename("test2014", "m") == "captions_test2014_m_results.json"
    )
    with pytest.raises(ExportError):
        exports.vqav2_results_filename("test", "m")


def test_exported_vqa_results_score_with_vqa_eval(tmp_path):
    from tasks import vqa_eval

    answers = [{"answer": "two", "answer_confidence": "yes", "answer_id": i} for i in range(10)]
    ann = {"annotations": [{"question_id": 9, "question_type": "how many",
                            "answer_type": "number", "answers": answers}]}  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    exports.write_vqa_results(tmp_path / "res.json", {9: "two"})
    assert vqa_eval.run(str(tmp_path / "ann.json"), str(tmp_path / "res.json"))["overall"] == 100.0
