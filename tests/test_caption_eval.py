"""caption_eval CLI on toy COCO / Karpathy files."""

import json
import shutil

import pytest

from tasks import caption_eval
from tasks.metrics import captions
from tasks.metrics.files import MetricInputError

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="java not on PATH")

COCO = {
    "info": {},
    "licenses": [],
    "images": [{"id": 42, "file_name": "a.jpg"}, {"id": 7, "file_name": "b.jpg"},
               {"id": 3, "file_name": "c.jpg"}, {"id": 5, "file_name": "no_captions.jpg"}],
    "annotations": [
        {"image_id": 42, "id": 1, "caption": "A dog runs across the grass."},
        {"image_id": 7, "id": 2, "caption": "Two cats sleep on a red bed."},
        {"image_id": 42, "id": 3, "caption": "a brown dog running on a lawn"},
        {"image_id": 7, "id": 4, "caption": "cats sleeping on a bed"},
        {"image_id": 3, "id": 5, "caption": "a red bus on a street"},
    ],
}  # fmt: skip
RESULTS = [
    {"image_id": 7, "caption": "two cats on a bed"},
    {"image_id": 42, "caption": "a dog running on the grass"},
    {"image_id": 3, "caption": "a bus on the street"},
]


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "ann.json").write_text(json.dumps(COCO))
    (tmp_path / "res.json").write_text(json.dumps(RESULTS))
    return str(tmp_path / "ann.json"), str(tmp_path / "res.json")


@needs_java
def test_cli_matches_metric(files, capsys):
    ann, res = files
    assert caption_eval.main(["--annotations", ann, "--results", res]) == 0
    out = json.loads(capsys.readouterr().out)
    want = captions.caption_scores(
        {42: [COCO["annotations"][0]["caption"], COCO["annotations"][2]["caption"]],
         7: [COCO["annotations"][1]["caption"], COCO["annotations"][3]["caption"]],
         3: [COCO["annotations"][4]["caption"]]},
        {42: RESULTS[1]["caption"], 7: RESULTS[0]["caption"], 3: RESULTS[2]["caption"]},
    )  # fmt: skip
    assert out["cider"] == pytest.approx(want["cider"], rel=1e-12)
    assert out["bleu4"] == pytest.approx(want["bleu4"], rel=1e-12)
    assert out["num_images"] == 3 and out["num_missing"] == 0  # image 5 has no captions


@needs_java
def test_missing_and_subset(files, tmp_path):
    ann, _ = files
    part = tmp_path / "part.json"
    part.write_text(json.dumps([RESULTS[0], RESULTS[2]]))
    with pytest.raises(MetricInputError, match=r"image_ids \[42\]"):
        caption_eval.run(ann, str(part))
    counted = caption_eval.run(ann, str(part), allow_missing=True)
    assert counted["num_missing"] == 1 and counted["num_images"] == 3
    subset = caption_eval.run(ann, str(part), results_images_only=True)
    assert subset["num_images"] == 2 and subset["num_missing"] == 0
    full = caption_eval.run(ann, files[1])
    assert counted["cider"] < full["cider"]
    assert counted["cider"] != subset["cider"]
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps(RESULTS + [{"image_id": 5, "caption": "x"}]))
    with pytest.raises(MetricInputError, match=r"\[5\]"):
        caption_eval.run(ann, str(unknown))


@needs_java
def test_karpathy_format(tmp_path):
    kar = {
        "dataset": "coco",
        "images": [
            {"filepath": "val2014", "filename": "x.jpg", "imgid": 0, "cocoid": 42,
             "split": "test", "sentids": [0, 1],
             "sentences": [{"raw": "A dog runs across the grass. ", "tokens": []},
                           {"raw": "a brown dog running on a lawn", "tokens": []}]},
            {"filepath": "val2014", "filename": "y.jpg", "imgid": 1, "cocoid": 7,
             "split": "val", "sentids": [2], "sentences": [{"raw": "cats", "tokens": []}]},
        ],
    }  # fmt: skip
    (tmp_path / "k.json").write_text(json.dumps(kar))
    (tmp_path / "r.json").write_text(json.dumps(RESULTS[1:2]))
    rep = caption_eval.run(str(tmp_path / "k.json"), str(tmp_path / "r.json"), split="test")
    assert rep["num_images"] == 1 and rep["cider"] >= 0
    with pytest.raises(MetricInputError, match="--split"):
        caption_eval.run(str(tmp_path / "k.json"), str(tmp_path / "r.json"))


def test_bad_inputs(files, tmp_path, capsys):
    ann, res = files
    with pytest.raises(MetricInputError, match=r"nope\.json: file not found.*image_id"):
        caption_eval.run(ann, str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": 42, "caption": "x"},\n {"image_id": 7 "caption": "y"}]')
    with pytest.raises(MetricInputError, match=r"bad\.json:2:17: malformed JSON"):
        caption_eval.run(ann, str(bad))
    (tmp_path / "nocap.json").write_text(json.dumps([{"image_id": 42, "text": "x"}]))
    with pytest.raises(MetricInputError, match=r"image_id=42.*'caption'"):
        caption_eval.run(ann, str(tmp_path / "nocap.json"))
    (tmp_path / "strid.json").write_text(json.dumps([{"image_id": "42", "caption": "x"}]))
    with pytest.raises(MetricInputError, match="must be int"):
        caption_eval.run(ann, str(tmp_path / "strid.json"))
    broken_ann = dict(COCO, annotations=[{"image_id": 42, "id": 9}])
    (tmp_path / "a2.json").write_text(json.dumps(broken_ann))
    with pytest.raises(MetricInputError, match=r"id=9.*'caption'"):
        caption_eval.run(str(tmp_path / "a2.json"), res)
    assert caption_eval.main(["--annotations", ann, "--results", str(bad)]) == 2
    assert "bad.json:2:17" in capsys.readouterr().err
