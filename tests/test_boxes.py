"""Tests for locca.boxes: codec round trips, robust decoding, IoU and Acc@0.5."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from locca.boxes import BoxCodec, acc_at_05, baseline_scores, iou, location_tokens, mean_iou

CODECS = [
    BoxCodec("text"),
    BoxCodec("text", num_bins=1000, order="xyxy"),
    BoxCodec("loc"),
    BoxCodec("loc", num_bins=1024, order="xyxy"),
    BoxCodec("loc", num_bins=7),
]

unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@st.composite
def boxes(draw):
    y = sorted([draw(unit), draw(unit)])
    x = sorted([draw(unit), draw(unit)])
    return np.array([y[0], x[0], y[1], x[1]])


# ------------------------------------------------------------------ encoding
def test_text_encoding_example():
    c = BoxCodec("text", num_bins=500)
    assert c.encode([0.0, 0.5, 0.25, 1.0]) == "0 250 125 499"
    # 12/499 etc. are exact bins
    assert c.encode(np.array([12, 40, 300, 499]) / 499) == "12 40 300 499"


def test_loc_encoding_example():
    c = BoxCodec("loc")
    assert c.num_bins == 1024
    assert c.encode(np.array([12, 40, 300, 1023]) / 1023) == "<loc0012><loc0040><loc0300><loc1023>"
    # value = round(coord * (num_bins - 1))
    assert c.encode([0.1, 0.2, 0.3, 0.4]) == "".join(
        f"<loc{round(v * 1023):04d}>" for v in (0.1, 0.2, 0.3, 0.4)
    )


def test_xyxy_order_writes_x_first_and_decodes_back_to_yxyx():
    c = BoxCodec("text", num_bins=11, order="xyxy")
    box = np.array([0.1, 0.2, 0.5, 0.9])  # yxyx
    assert c.encode(box) == "2 1 9 5"
    np.testing.assert_allclose(c.decode("2 1 9 5"), box, atol=1e-12)


def test_default_bins_and_bad_config():
    assert BoxCodec().num_bins == 500 and BoxCodec().encoding == "text"
    with pytest.raises(ValueError, match="encoding"):
        BoxCodec("pixels")
    with pytest.raises(ValueError, match="order"):
        BoxCodec(order="xxyy")
    with pytest.raises(ValueError, match="num_bins"):
        BoxCodec(num_bins=1)


def test_encode_rejects_bad_boxes():
    c = BoxCodec()
    with pytest.raises(ValueError, match="shape"):
        c.encode([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="non-finite"):
        c.encode([0.1, float("nan"), 0.3, 0.4])
    with pytest.raises(ValueError, match="inverted"):
        c.encode([0.5, 0.2, 0.3, 0.4])
    # slightly outside [0, 1] is clipped, not an error
    assert c.encode([-1e-9, 0.0, 1.0 + 1e-9, 1.0]) == "0 0 499 499"


def test_location_tokens():
    toks = location_tokens(1024)
    assert len(toks) == 1024 and len(set(toks)) == 1024
    assert toks[0] == "<loc0000>" and toks[1023] == "<loc1023>" and toks[12] == "<loc0012>"
    assert BoxCodec("loc", num_bins=500).location_tokens() == location_tokens(500)
    # every token the codec emits is in the vocabulary
    c = BoxCodec("loc")
    assert set(c.encode([0, 0, 1, 1]).replace(">", "> ").split()) <= set(toks)


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@settings(max_examples=200, deadline=None)
@given(box=boxes())
def test_round_trip_within_one_bin(codec, box):
    text = codec.encode(box)
    out = codec.decode(text)
    assert out is not None and out.shape == (4,)
    assert np.max(np.abs(out - box)) <= 0.5 * codec.bin_width + 1e-12
    # decoding then re-encoding is the identity on text
    assert codec.encode(out) == text


# ------------------------------------------------------------------ decoding
@pytest.mark.parametrize(
    "text",
    ["", "12 40 300", "hello", "<loc0001><loc0002>", None, 12, ["1", "2", "3", "4"], "1 2 3"],
)
def test_decode_malformed_is_none(text):
    assert BoxCodec("text").decode(text) is None
    assert BoxCodec("loc").decode(text) is None


def test_decode_tolerates_surrounding_text_and_takes_first_four():
    c = BoxCodec("text", num_bins=11)
    np.testing.assert_allclose(c.decode("box: 1 2 3 4 5 6 tail"), [0.1, 0.2, 0.3, 0.4])
    c = BoxCodec("loc", num_bins=11)
    np.testing.assert_allclose(
        c.decode("a cat <loc0001> <loc0002><loc0003>x<loc0004><loc0009>"), [0.1, 0.2, 0.3, 0.4]
    )
    # text numbers are ignored by the loc codec, loc tokens are numbers for the text codec
    assert c.decode("1 2 3 4") is None


def test_decode_repairs_inverted_and_clips():
    c = BoxCodec("text", num_bins=11)
    np.testing.assert_allclose(c.decode("8 9 2 1"), [0.2, 0.1, 0.8, 0.9])
    np.testing.assert_allclose(c.decode("3 4 99999 12"), [0.3, 0.4, 1.0, 1.0])
    np.testing.assert_allclose(c.decode("3 4 " + "9" * 500 + " 5"), [0.3, 0.4, 1.0, 0.5])
    c = BoxCodec("loc", num_bins=1024)
    np.testing.assert_allclose(c.decode("<loc5000><loc0000><loc0000><loc1023>"), [0, 0, 1, 1])


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_decode_never_raises_on_arbitrary_text(text):
    for codec in CODECS:
        out = codec.decode(text)
        if out is not None:
            assert out.shape == (4,) and np.all((out >= 0) & (out <= 1))
            assert out[0] <= out[2] and out[1] <= out[3]


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(
        st.one_of(
            st.integers(-(10**30), 10**30).map(str),
            st.integers(0, 99999).map(lambda i: f"<loc{i:04d}>"),
            st.sampled_from(["<loc", ">", " ", ".", "-", "<loc-1>", "<locxyz>", "\n", "1.5"]),
        ),
        max_size=12,
    )
)
def test_decode_never_raises_on_box_like_text(parts):
    text = "".join(parts)
    for codec in CODECS:
        out = codec.decode(text)
        if out is not None:
            assert out.shape == (4,) and np.all((out >= 0) & (out <= 1))
            assert out[0] <= out[2] and out[1] <= out[3]


# ------------------------------------------------------------------ IoU
def test_iou_hand_cases():
    unit_box = [0.0, 0.0, 1.0, 1.0]
    assert iou(unit_box, unit_box) == 1.0
    assert iou(unit_box, [0.0, 0.0, 1.0, 0.5]) == 0.5  # exactly half
    assert iou([0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 1.0]) == 0.5
    assert iou([0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]) == 0.0  # touching corners
    # two 1x1 squares overlapping in 1x0.5: 0.5 / 1.5
    assert iou([0, 0, 1, 1], [0, 0.5, 1, 1.5]) == pytest.approx(1 / 3)
    assert iou([0.2, 0.2, 0.2, 0.6], [0.0, 0.0, 1.0, 1.0]) == 0.0  # zero area
    assert iou([0.2, 0.2, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2]) == 0.0  # both zero area: no NaN


def test_iou_vectorised_and_symmetric():
    rng = np.random.default_rng(0)
    a = np.sort(rng.random((5, 3, 2, 2)), axis=-2).transpose(0, 1, 3, 2).reshape(5, 3, 4)
    a = a[..., [0, 2, 1, 3]]  # [y0 y1 x0 x1] -> yxyx
    b = a[::-1]
    out = iou(a, b)
    assert out.shape == (5, 3)
    np.testing.assert_allclose(out, iou(b, a))
    for i in range(5):
        for j in range(3):
            assert out[i, j] == pytest.approx(float(iou(a[i, j], b[i, j])))
    assert np.all((out >= 0) & (out <= 1))
    np.testing.assert_allclose(iou(a, a), 1.0)
    # broadcast one box against many
    assert iou(a[0, 0], a).shape == (5, 3)


def test_acc_at_05_and_mean_iou():
    gt = [[0, 0, 1, 1]] * 4
    preds = [
        np.array([0, 0, 1, 0.5]),  # IoU exactly 0.5: counts
        np.array([0, 0, 1, 0.49]),  # just under: wrong
        None,  # unreadable prediction: wrong, IoU 0
        np.array([0, 0, 1, 1]),
    ]
    assert acc_at_05(preds, gt) == 0.5
    assert mean_iou(preds, gt) == pytest.approx((0.5 + 0.49 + 0 + 1) / 4)
    with pytest.raises(ValueError, match="predictions"):
        acc_at_05(preds[:3], gt)
    with pytest.raises(ValueError, match="no boxes"):
        acc_at_05([], [])


def test_baseline_scores_by_hand():
    """Two examples, worked out by hand: the largest region ties go to the first,
    a random region hits with the fraction of regions at IoU >= 0.5."""
    gts = [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]
    regions = [
        np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]),  # equal areas: the first
        np.array([[0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 1.0, 1.0], [0.55, 0.5, 1.0, 1.0]]),
    ]
    got = baseline_scores(gts, train_mean_box=np.array([0.0, 0.0, 0.5, 0.5]), regions=regions)
    assert got["whole_image"]["acc@0.5"] == 0.0  # IoU 0.25 with each
    assert got["whole_image"]["mean_iou"] == pytest.approx(0.25)
    assert got["mean_box"]["acc@0.5"] == 0.5 and got["mean_box"]["mean_iou"] == 0.5
    assert got["largest_region"]["acc@0.5"] == 1.0  # first: itself; second: the 0.25 box
    assert got["random_region"]["acc@0.5"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert "mean_iou" not in got["random_region"]
    assert set(baseline_scores(gts)) == {"whole_image"}
    with pytest.raises(ValueError, match="2 region lists for 1"):
        baseline_scores(gts[:1], regions=regions)
