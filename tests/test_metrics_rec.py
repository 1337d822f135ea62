"""REC metrics: Acc@0.5 / mean IoU from box text through the codec."""

import functools

import numpy as np
import pytest

from locca.boxes import BoxCodec
from tasks.metrics.rec import rec_metrics, rec_report


def test_rec_metrics_text_codec():
    codec = BoxCodec("text", num_bins=11)
    targets = ["0 0 10 10", "0 0 10 10", [0.0, 0.0, 1.0, 1.0], {"box": [0.0, 0.0, 0.5, 0.5]}]
    preds = ["0 0 10 5", "garbage", "0 0 10 4", "0 0 5 5"]
    out = rec_metrics(targets, preds, codec=codec)
    # IoUs: 0.5 (counts), 0 (unparsed), 0.4, 1.0
    assert out["acc@0.5"] == 50.0
    assert out["mean_iou"] == pytest.approx((0.5 + 0 + 0.4 + 1) / 4)
    assert out["num_unparsed"] == 1 and out["num_degenerate"] == 0
    assert out["acc@0.5_low"] < 50.0 < out["acc@0.5_high"]  # Wilson interval, n = 4
    flat = rec_metrics(["0 0 10 10"], ["0 0 0 5"], codec=codec)  # ymin = ymax: no pixel
    assert flat["num_degenerate"] == 1 and flat["acc@0.5"] == 0.0


def test_rec_metrics_loc_codec_partial():
    codec = BoxCodec("loc")
    fn = functools.partial(rec_metrics, codec=codec)
    gt = np.array([0.1, 0.2, 0.6, 0.9])
    out = fn([codec.encode(gt)], [codec.encode(gt)])
    assert out["acc@0.5"] == 100.0 and out["mean_iou"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="target #0"):
        fn(["not a box"], ["<loc0001>"])


def test_rec_report_errors():
    with pytest.raises(ValueError, match="predictions"):
        rec_report([None], [])
    with pytest.raises(ValueError, match="no boxes"):
        rec_report([], [])
