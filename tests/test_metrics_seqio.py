"""The seqio metric fns with targets as tasks.registry's postprocessors produce them.

text_postprocessor targets: {"answers": [...], "question_id", "issimple", ...};
REC: predictions decoded to np [4] | None, targets {"box": [...], ...}. The
functions are looked up by module/name as registry.lazy_metric does.
"""

import importlib
import shutil

import numpy as np
import pytest


def _fn(module, name):
    return getattr(importlib.import_module(f"tasks.metrics.{module}"), name)


def test_vqa_accuracy_dict_targets():
    t = [{"answers": ["2"] * 10, "question_id": 1, "answer_type": "number"},
         {"answers": ["red"] * 3 + ["blue"] * 7, "question_id": 2}]  # fmt: skip
    out = _fn("vqa", "vqa_accuracy")(t, ["2", "Red."])
    assert out["vqa_accuracy"] == pytest.approx(100 * (1 + 0.9) / 2)
    assert out["vqa_accuracy_low"] < out["vqa_accuracy"] < out["vqa_accuracy_high"]


def test_anls_dict_targets():
    t = [{"answers": ["abcd", "zzzz"], "question_id": 1}, {"answers": ["x"]}]
    assert _fn("anls", "anls")(t, ["abc", "y"])["anls"] == pytest.approx(0.75 / 2)


def test_tally_dict_targets():
    t = [{"answers": ["2"], "issimple": True}, {"answers": ["0"], "issimple": False},
         {"answers": ["3"], "issimple": np.bool_(True)}]  # fmt: skip
    out = _fn("tally", "tally_accuracy")(t, ["two", "1", "3"])
    assert {k: out[k] for k in ("tally_accuracy", "tally_simple", "tally_complex")} == {
        "tally_accuracy": pytest.approx(200 / 3), "tally_simple": 100.0, "tally_complex": 0.0
    }  # fmt: skip
    with pytest.raises(ValueError, match="not a count"):
        _fn("tally", "tally_accuracy")([{"answers": ["many"]}], ["1"])


def test_rec_accuracy_decoded_predictions():
    t = [{"box": [0.0, 0.0, 1.0, 1.0], "expression": "left cat", "id": "1"},
         {"box": [0.0, 0.0, 0.5, 0.5], "expression": "dog", "id": "2"}]  # fmt: skip
    out = _fn("rec", "rec_accuracy")(t, [np.array([0.0, 0.0, 1.0, 0.5]), None])
    assert out["acc@0.5"] == 50.0 and out["mean_iou"] == pytest.approx(0.25)
    assert out["num_unparsed"] == 1 and out["num_degenerate"] == 0
    assert out["acc@0.5_low"] < 50.0 < out["acc@0.5_high"]  # Wilson, n = 2
    hits = _fn("rec", "rec_hits_per_example")(t, [np.array([0.0, 0.0, 1.0, 0.5]), None])
    assert hits == [100.0, 0.0]  # IoU 0.5 counts as a hit; unparsed is a miss
    texts = ["0 0 500 250", "0 0 250 249", "junk"]  # box text, 500 bins, yxyx
    gts = [{"box": [0.0, 0.0, 1.0, 0.5]}] * 3
    per = _fn("rec", "rec_hits_per_example")(gts, texts)
    assert per == [100.0, 0.0, 0.0]  # IoU 1, IoU 0.249 (< 0.5), unparsed
    assert np.mean(per) == pytest.approx(_fn("rec", "rec_metrics")(gts, texts)["acc@0.5"])


@pytest.mark.skipif(shutil.which("java") is None, reason="java not on PATH")
def test_cider_dict_targets():
    refs = [["a dog runs on grass", "a dog running"], ["two cats on a bed", "cats sleeping"],
            ["a red bus", "a bus on a street"]]  # fmt: skip
    preds = ["a dog runs", "two cats on a bed", "a red bus"]
    fn = _fn("cider", "cider")
    got = fn([{"answers": r, "id": i} for i, r in enumerate(refs)], preds)
    assert got == pytest.approx(fn(refs, preds), rel=1e-12)
    assert got["cider_low"] < got["cider"] < got["cider_high"]
    assert got["cider"] > 0
