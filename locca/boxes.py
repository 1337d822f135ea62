"""Bounding boxes as text: a codec between normalised boxes and decoder strings.

Conventions (DESIGN.md): a box is ``[ymin, xmin, ymax, xmax]`` normalised to
[0, 1] by the image height (y) and width (x). Every array in and out of this
module uses that "yxyx" order; ``order="xyxy"`` only changes how the four
numbers are *written* in the text.

Two encodings:

* ``"text"`` (LocCa): the quantised coordinates as decimal integers separated
  by single spaces, e.g. ``"12 40 300 499"`` for ``num_bins=500``; they are
  tokenised later as ordinary text.
* ``"loc"`` (PaliGemma): one location token per coordinate, ``<loc0012>``,
  zero-padded to 4 digits, no separator, e.g.
  ``"<loc0012><loc0040><loc0300><loc1023>"`` for ``num_bins=1024``.

Quantisation (both encodings): ``bin = round(coord * (num_bins - 1))`` so
0 -> bin 0 and 1 -> bin ``num_bins - 1``; decoding is ``bin / (num_bins - 1)``.
The round-trip error is at most half a bin width ``0.5 / (num_bins - 1)``.

``decode`` is for model outputs and never raises: it returns ``None`` for
anything it cannot read as a box.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from locca import stats

__all__ = [
    "BoxCodec",
    "location_tokens",
    "iou",
    "acc_at_05",
    "mean_iou",
    "per_example_ious",
    "localisation_scores",
    "is_degenerate",
]

_ENCODINGS = ("text", "loc")
_ORDERS = ("yxyx", "xyxy")
_DEFAULT_BINS = {"text": 500, "loc": 1024}

# A non-negative decimal number (integer or with a fractional part).
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
# A location token; any digit count is accepted when reading.
_LOC_RE = re.compile(r"<loc(\d+)>")


def location_tokens(num_bins: int = 1024) -> list[str]:
    """The location vocabulary ``["<loc0000>", ..., f"<loc{num_bins-1:04d}>"]``."""
    if int(num_bins) < 2:
        raise ValueError(f"num_bins must be >= 2, got {num_bins}")
    return [f"<loc{i:04d}>" for i in range(int(num_bins))]


class BoxCodec:
    """Encode normalised yxyx boxes to text and decode model text back to boxes.

    Args:
      encoding: ``"text"`` (space-separated integers) or ``"loc"``
        (``<locNNNN>`` tokens).
      num_bins: number of quantisation levels per coordinate; defaults to 500
        for ``"text"`` and 1024 for ``"loc"``.
      order: the order the coordinates are written in the text, ``"yxyx"``
        (default, as LocCa and PaliGemma) or ``"xyxy"``. Arrays are yxyx
        regardless.
    """

    def __init__(self, encoding: str = "text", num_bins: int | None = None, order: str = "yxyx"):
        if encoding not in _ENCODINGS:
            raise ValueError(f"encoding must be one of {_ENCODINGS}, got {encoding!r}")
        if order not in _ORDERS:
            raise ValueError(f"order must be one of {_ORDERS}, got {order!r}")
        if num_bins is None:
            num_bins = _DEFAULT_BINS[encoding]
        if int(num_bins) != num_bins or num_bins < 2:
            raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}")
        self.encoding = encoding
        self.num_bins = int(num_bins)
        self.order = order

    def __repr__(self) -> str:
        return (
            f"BoxCodec(encoding={self.encoding!r}, num_bins={self.num_bins}, order={self.order!r})"
        )

    @property
    def bin_width(self) -> float:
        """Distance between two adjacent decoded values, in normalised units."""
        return 1.0 / (self.num_bins - 1)

    def location_tokens(self) -> list[str]:
        """The location tokens this codec can emit (``"loc"`` encoding)."""
        return location_tokens(self.num_bins)

    # ---------------------------------------------------------------- encode
    def quantize(self, box) -> np.ndarray:
        """Normalised yxyx box -> int64 bins [4] (yxyx), values in [0, num_bins-1].

        Raises ValueError for a box that is not 4 finite numbers or that is
        inverted (ymin > ymax or xmin > xmax). Values are clipped to [0, 1].
        """
        b = np.asarray(box, dtype=np.float64)
        if b.shape != (4,):
            raise ValueError(f"box must have shape (4,) [ymin, xmin, ymax, xmax], got {b.shape}")
        if not np.all(np.isfinite(b)):
            raise ValueError(f"box has non-finite values: {b.tolist()}")
        if b[0] > b[2] or b[1] > b[3]:
            raise ValueError(f"box is inverted (expected ymin<=ymax, xmin<=xmax): {b.tolist()}")
        b = np.clip(b, 0.0, 1.0)
        return np.round(b * (self.num_bins - 1)).astype(np.int64)

    def encode(self, box) -> str:
        """Normalised yxyx box [4] -> text (see the module docstring)."""
        q = self.quantize(box)  # [4] yxyx
        if self.order == "xyxy":
            q = q[[1, 0, 3, 2]]
        if self.encoding == "loc":
            return "".join(f"<loc{int(v):04d}>" for v in q)
        return " ".join(str(int(v)) for v in q)

    # ---------------------------------------------------------------- decode
    def dequantize(self, bins) -> np.ndarray:
        """Bins [4] yxyx (any real values) -> float64 normalised box [4], clipped."""
        v = np.clip(np.asarray(bins, dtype=np.float64), 0.0, self.num_bins - 1)
        return v / (self.num_bins - 1)

    def decode(self, text) -> np.ndarray | None:
        """Text -> float64 normalised yxyx box [4], or None. Never raises.

        Takes the first four location tokens (``"loc"``) or the first four
        non-negative numbers (``"text"``) anywhere in the text; fewer than four
        gives None. Values are clipped to the valid bin range and each
        coordinate pair is sorted, so an inverted box is repaired.
        """
        try:
            if isinstance(text, bytes):
                text = text.decode("utf-8", errors="replace")
            if not isinstance(text, str):
                return None
            pattern = _LOC_RE if self.encoding == "loc" else _NUMBER_RE
            values = []
            for m in pattern.finditer(text):
                values.append(float(m.group(1) if self.encoding == "loc" else m.group(0)))
                if len(values) == 4:
                    break
            if len(values) < 4:
                return None
            v = np.asarray(values, dtype=np.float64)
            if not np.all(np.isfinite(v)):  # e.g. a 400-digit number parses to inf
                v = np.nan_to_num(v, nan=0.0, posinf=self.num_bins - 1)
            if self.order == "xyxy":
                v = v[[1, 0, 3, 2]]
            box = self.dequantize(v)
            y0, y1 = sorted((box[0], box[2]))
            x0, x1 = sorted((box[1], box[3]))
            return np.array([y0, x0, y1, x1], dtype=np.float64)
        except (ValueError, TypeError, OverflowError, UnicodeError):
            return None


# -------------------------------------------------------------------- metrics
def iou(a, b) -> np.ndarray:
    """Intersection over union of yxyx boxes; broadcasts over leading axes.

    a: [..., 4], b: [..., 4] -> [...] float64. Boxes with zero (or negative)
    extent have zero area; when the union is zero the IoU is 0.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape[-1:] != (4,) or b.shape[-1:] != (4,):
        raise ValueError(f"boxes must have a last axis of 4, got {a.shape} and {b.shape}")
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    ih = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iw = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ih * iw
    union = area_a + area_b - inter
    safe = np.where(union > 0, union, 1.0)
    return np.where(union > 0, inter / safe, 0.0)


def per_example_ious(pred_boxes: Sequence, gt_boxes: Sequence) -> np.ndarray:
    """Per-example IoU [N]; a None prediction scores 0."""
    if len(pred_boxes) != len(gt_boxes):
        raise ValueError(f"{len(pred_boxes)} predictions but {len(gt_boxes)} ground-truth boxes")
    if len(gt_boxes) == 0:
        raise ValueError("no boxes to score")
    out = np.zeros(len(gt_boxes), dtype=np.float64)
    for i, (p, g) in enumerate(zip(pred_boxes, gt_boxes)):
        if p is not None:
            out[i] = float(iou(p, g))
    return out


def acc_at_05(pred_boxes: Sequence, gt_boxes: Sequence) -> float:
    """Fraction of predictions with IoU >= 0.5 to their ground truth (None = wrong)."""
    return float(np.mean(per_example_ious(pred_boxes, gt_boxes) >= 0.5))


def mean_iou(pred_boxes: Sequence, gt_boxes: Sequence) -> float:
    """Mean IoU over examples (None prediction = IoU 0)."""
    return float(np.mean(per_example_ious(pred_boxes, gt_boxes)))


def is_degenerate(box) -> bool:
    """A box with zero (or negative) height or width: it covers no pixel."""
    b = np.asarray(box, dtype=np.float64)
    return bool(b[2] <= b[0] or b[3] <= b[1])


WHOLE_IMAGE = np.array([0.0, 0.0, 1.0, 1.0])


def mean_box(box_list: Sequence[np.ndarray]) -> np.ndarray:
    """Coordinate-wise mean of yxyx boxes [N, 4] -> [4]."""
    if not len(box_list):
        raise ValueError("mean_box: no boxes")
    return np.mean(np.stack([np.asarray(b, np.float64) for b in box_list]), axis=0)


def largest_region(regions: np.ndarray) -> np.ndarray:
    """The largest-area yxyx box of [R, 4] (the whole image when R = 0)."""
    regions = np.asarray(regions, np.float64).reshape(-1, 4)
    if not len(regions):
        return WHOLE_IMAGE
    area = (regions[:, 2] - regions[:, 0]) * (regions[:, 3] - regions[:, 1])
    return regions[int(np.argmax(area))]


def random_region_hit(regions: np.ndarray, gt) -> float:
    """Expected Acc@0.5 hit of a uniformly random region of [R, 4] against ``gt``
    [4] (0 when R = 0)."""
    regions = np.asarray(regions, np.float64).reshape(-1, 4)
    if not len(regions):
        return 0.0
    return float(np.mean(iou(regions, np.asarray(gt, np.float64)[None, :]) >= 0.5))


def baseline_scores(
    gt_boxes: Sequence,
    *,
    train_mean_box: np.ndarray | None = None,
    regions: Sequence[np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """The trivial localisation baselines on ``gt_boxes`` (yxyx in [0, 1]).

    ``whole_image`` (always), ``mean_box`` (the constant ``train_mean_box``,
    when given) and, when ``regions`` gives each example's candidate boxes
    [R_i, 4] (its image's objects: a perfect detector without grounding),
    ``largest_region`` and ``random_region`` (the expected hit of a uniformly
    random region; its interval treats each example's expectation as one
    observation, and it has no mean IoU).

    Returns ``{name: scores}``; scores as :func:`localisation_scores`
    (``acc@0.5``, ``acc@0.5_low/_high``, ``mean_iou``...; fractions).
    """
    n = len(gt_boxes)
    out = {"whole_image": localisation_scores([WHOLE_IMAGE] * n, gt_boxes)}
    if train_mean_box is not None:
        out["mean_box"] = localisation_scores([train_mean_box] * n, gt_boxes)
    if regions is not None:
        if len(regions) != n:
            raise ValueError(f"{len(regions)} region lists for {n} ground-truth boxes")
        out["largest_region"] = localisation_scores([largest_region(r) for r in regions], gt_boxes)
        m, lo, hi = stats.mean_ci([random_region_hit(r, g) for r, g in zip(regions, gt_boxes)])
        out["random_region"] = {"acc@0.5": m, "acc@0.5_low": lo, "acc@0.5_high": hi}
    return out


def localisation_scores(pred_boxes: Sequence, gt_boxes: Sequence) -> dict[str, float]:
    """Acc@0.5 and mean IoU with 95% intervals, and the counts behind them.

    ``pred_boxes``: yxyx boxes in [0, 1] or None (unparsed output, scored as
    IoU 0). Returns ``acc@0.5`` with ``acc@0.5_low/_high`` (Wilson),
    ``mean_iou`` with ``mean_iou_low/_high`` (normal), ``num_examples``,
    ``num_unparsed`` (None predictions) and ``num_degenerate`` (parsed boxes
    of zero area). Fractions, not percent.
    """
    ious = per_example_ious(pred_boxes, gt_boxes)
    n = len(ious)
    hits = int(np.sum(ious >= 0.5))
    lo, hi = stats.proportion_ci(hits, n)
    m, mlo, mhi = stats.mean_ci(ious)
    mlo, mhi = max(mlo, 0.0), min(mhi, 1.0)  # a normal interval, clipped to IoU's range
    return {
        "acc@0.5": hits / n,
        "acc@0.5_low": lo,
        "acc@0.5_high": hi,
        "mean_iou": m,
        "mean_iou_low": mlo,
        "mean_iou_high": mhi,
        "num_examples": float(n),
        "num_unparsed": float(sum(p is None for p in pred_boxes)),
        "num_degenerate": float(sum(p is not None and is_degenerate(p) for p in pred_boxes)),
    }
