"""rec_eval CLI on toy JSONL predictions."""

import json

import pytest

from tasks import rec_eval
from tasks.metrics.files import MetricInputError

LOC = "--encoding loc --num_bins 11".split()


def _jsonl(tmp_path, recs, name="p.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return str(p)


RECS = [
    {"id": "a", "split": "val", "gt_box": [0, 0, 1, 1],
     "prediction": "ref: <loc0000><loc0000><loc0010><loc0005>"},  # IoU 0.5
    {"id": "b", "split": "val", "gt_box": [0, 0, 1, 1], "prediction": "no box"},
    {"id": 3, "split": "testA", "bbox": [0, 0, 50, 100], "width": 100, "height": 200,
     "pred_box": [0, 0, 0.5, 0.5]},  # gt normalised [0, 0, .5, .5]: IoU 1
    {"id": "d", "split": "testA", "gt_box": [0, 0, 0.5, 0.5], "pred_box": None},
]  # fmt: skip


def test_cli_per_split(tmp_path, capsys):
    path = _jsonl(tmp_path, RECS)
    assert rec_eval.main(["--predictions", path, *LOC]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["acc@0.5"] == 50.0 and out["mean_iou"] == pytest.approx(1.5 / 4)
    assert out["num_examples"] == 4 and out["num_unparsed"] == 1 and out["num_missing"] == 0
    val = out["per_split"]["val"]
    assert val["acc@0.5"] == 50.0 and val["mean_iou"] == 0.25 and val["num_examples"] == 2
    assert val["num_unparsed"] == 1 and val["num_degenerate"] == 0
    assert 0.0 == val["mean_iou_low"] < 0.25 < val["mean_iou_high"] <= 1.0  # clipped to [0, 1]
    assert out["per_split"]["testA"]["acc@0.5"] == 50.0


def test_json_array_and_xyxy_text(tmp_path):
    p = tmp_path / "p.json"
    p.write_text(json.dumps([{"id": 1, "gt_box": [0.1, 0.2, 0.5, 0.9], "prediction": "2 1 9 5"}]))
    from locca.boxes import BoxCodec

    rep = rec_eval.run(str(p), BoxCodec("text", num_bins=11, order="xyxy"))
    assert rep["acc@0.5"] == 100.0 and rep["mean_iou"] == pytest.approx(1.0)
    rep = rec_eval.run(str(p), BoxCodec("text", num_bins=11))  # wrong order: low IoU
    assert rep["mean_iou"] < 0.5


def test_missing_and_bad_records(tmp_path, capsys):
    from locca.boxes import BoxCodec

    codec = BoxCodec("loc", num_bins=11)
    recs = RECS + [{"id": "e", "gt_box": [0, 0, 1, 1]}]
    path = _jsonl(tmp_path, recs)
    with pytest.raises(MetricInputError, match=r"ids \['e'\]"):
        rec_eval.run(path, codec)
    rep = rec_eval.run(path, codec, allow_missing=True)
    assert rep["num_missing"] == 1 and rep["acc@0.5"] == 40.0
    bad = _jsonl(tmp_path, [{"id": "x", "gt_box": [0, 0, 2, 1], "pred_box": None}], "b.jsonl")
    with pytest.raises(MetricInputError, match=r"id='x'.*not a normalised"):
        rec_eval.run(bad, codec)
    nogt = _jsonl(tmp_path, [{"id": "y", "prediction": "1 2 3 4"}], "c.jsonl")
    with pytest.raises(MetricInputError, match=r"id='y'.*'gt_box'"):
        rec_eval.run(nogt, codec)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(RECS[0]) + "\n" + '{"id": "z", "gt_box": [0, 0, 1, 1}\n')
    with pytest.raises(MetricInputError, match=r"broken\.jsonl:2:34: malformed JSON"):
        rec_eval.run(str(broken), codec)
    with pytest.raises(MetricInputError, match=r"absent\.jsonl: file not found.*gt_box"):
        rec_eval.run(str(tmp_path / "absent.jsonl"), codec)
    dup = _jsonl(tmp_path, [RECS[0], RECS[0]], "d.jsonl")
    with pytest.raises(MetricInputError, match="duplicate id 'a'"):
        rec_eval.run(dup, codec)
    assert rec_eval.main(["--predictions", str(broken), *LOC]) == 2
    assert "broken.jsonl:2:34" in capsys.readouterr().err


def test_refcoco_official_files(tmp_path, capsys):
    refcoco = pytest.importorskip("tasks.sources.refcoco")
    from locca.boxes import BoxCodec
    from locca.data.export import export

    export("refcoco", tmp_path / "data", num_images=3, seed=2, split="val")
    gts = refcoco.records("refcoco", "val", str(tmp_path / "data"), per_sentence=True)
    assert len(gts) >= 2
    codec = BoxCodec("loc", num_bins=1024)
    recs = [{"id": g["id"], "prediction": codec.encode(g["box"])} for g in gts]
    recs[0] = {"id": gts[0]["id"], "prediction": "no box here"}
    path = _jsonl(tmp_path, recs)
    args = ["--predictions", path, "--encoding", "loc", "--refcoco_dir", str(tmp_path / "data"),
            "--dataset", "refcoco", "--split", "val"]  # fmt: skip
    assert rec_eval.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["acc@0.5"] == pytest.approx(100.0 * (len(gts) - 1) / len(gts))
    assert out["num_examples"] == len(gts) and out["num_unparsed"] == 1
    # missing and unknown ids, ground-truth fields where the files give it
    short = _jsonl(tmp_path, recs[1:], "short.jsonl")
    with pytest.raises(MetricInputError, match=repr(gts[0]["id"])):
        rec_eval.run_refcoco(short, codec, refcoco_dir=str(tmp_path / "data"),
                             dataset="refcoco", split="val")  # fmt: skip
    extra = _jsonl(tmp_path, recs + [{"id": "999999/1", "prediction": "x"}], "extra.jsonl")
    with pytest.raises(MetricInputError, match="999999/1"):
        rec_eval.run_refcoco(extra, codec, refcoco_dir=str(tmp_path / "data"),
                             dataset="refcoco", split="val")  # fmt: skip
    withgt = _jsonl(tmp_path, [dict(recs[1], gt_box=[0, 0, 1, 1])], "gt.jsonl")
    with pytest.raises(MetricInputError, match="ground-truth fields"):
        rec_eval.run_refcoco(withgt, codec, refcoco_dir=str(tmp_path / "data"),
                             dataset="refcoco", split="val")  # fmt: skip
