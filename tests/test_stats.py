"""Confidence intervals (locca.stats) against scipy, and the localisation scores."""

import numpy as np
import pytest
from scipy import stats as sps

from locca import boxes, stats


@pytest.mark.parametrize("k,n", [(0, 10), (5, 10), (10, 10), (37, 1000), (512, 1024)])
def test_wilson_interval_equals_scipy(k, n):
    want = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    np.testing.assert_allclose(stats.proportion_ci(k, n), (want.low, want.high), rtol=1e-9)


def test_mean_interval_equals_scipy_normal():
    x = np.random.default_rng(0).uniform(size=400)
    m, lo, hi = stats.mean_ci(x)
    want = sps.norm.interval(0.95, loc=x.mean(), scale=x.std(ddof=1) / np.sqrt(x.size))
    np.testing.assert_allclose((lo, hi), want, rtol=1e-9)
    assert m == pytest.approx(x.mean())


def test_difference_interval_covers_truth_at_the_nominal_rate():
    rng = np.random.default_rng(1)
    n, p1, p2, covered = 500, 0.6, 0.4, 0
    for _ in range(400):
        a, b = rng.binomial(n, p1) / n, rng.binomial(n, p2) / n
        lo, hi = stats.difference_ci(a, n, b, n)
        covered += lo <= p1 - p2 <= hi
    assert 0.92 <= covered / 400 <= 0.98


def test_localisation_scores_counts_and_interval():
    gt = [np.array([0.1, 0.1, 0.5, 0.5])] * 4
    preds = [
        np.array([0.1, 0.1, 0.5, 0.5]),  # IoU 1
        np.array([0.1, 0.1, 0.1, 0.5]),  # zero height: degenerate, IoU 0
        None,  # unparsed
        np.array([0.6, 0.6, 0.9, 0.9]),  # disjoint
    ]
    s = boxes.localisation_scores(preds, gt)
    assert s["acc@0.5"] == 0.25 and s["num_examples"] == 4
    assert s["num_unparsed"] == 1 and s["num_degenerate"] == 1
    assert s["acc@0.5_low"] < 0.25 < s["acc@0.5_high"]
    assert s["mean_iou"] == pytest.approx(0.25)
    assert s["mean_iou_low"] < 0.25 < s["mean_iou_high"]
