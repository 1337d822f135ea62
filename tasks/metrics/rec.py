"""Referring expression comprehension (RefCOCO family): Acc@0.5 and mean IoU.

Boxes are normalised ``[ymin, xmin, ymax, xmax]``; predicted box text is read
with a :class:`locca.boxes.BoxCodec` (unreadable text -> wrong, IoU 0).
Acc@0.5 is the percentage of examples with IoU >= 0.5; mean IoU is a fraction
in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from locca.boxes import BoxCodec, localisation_scores, per_example_ious

__all__ = ["as_box", "rec_report", "rec_metrics", "rec_hits_per_example", "rec_accuracy"]


def as_box(value: Any, codec: BoxCodec) -> np.ndarray | None:
    """A box from text (decoded with ``codec``), a sequence of 4 numbers, or None."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        return codec.decode(value)
    if isinstance(value, Mapping):
        return as_box(value.get("box"), codec)
    box = np.asarray(value, dtype=np.float64)
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        raise ValueError(
            f"expected a box of 4 finite numbers [ymin, xmin, ymax, xmax], got {value!r}"
        )
    return box


def rec_report(pred_boxes: Sequence[np.ndarray | None], gt_boxes: Sequence[Any]) -> dict:
    """``locca.boxes.localisation_scores`` with Acc@0.5 in percent: ``acc@0.5``
    with its 95% Wilson interval ``acc@0.5_low/_high`` (%), ``mean_iou`` with
    ``mean_iou_low/_high`` ([0, 1]), ``num_examples``, ``num_unparsed`` (None
    predictions, scored IoU 0) and ``num_degenerate`` (zero-area boxes)."""
    out = localisation_scores(pred_boxes, gt_boxes)
    for k in ("acc@0.5", "acc@0.5_low", "acc@0.5_high"):
        out[k] = 100.0 * out[k]
    out["num_examples"] = int(out["num_examples"])
    return out


def rec_metrics(
    targets: Sequence[Any], predictions: Sequence[Any], *, codec: BoxCodec | None = None
) -> dict:
    """seqio metric: :func:`rec_report` without ``num_examples`` (``acc@0.5`` %,
    its interval, ``mean_iou``, ``num_unparsed``, ``num_degenerate``...).

    Targets: box text (same codec; must decode), 4 numbers, or ``{"box": ...}``.
    Predictions: box text or 4 numbers. Bind the codec with
    ``functools.partial(rec_metrics, codec=BoxCodec("loc"))``; default
    ``BoxCodec()`` (text, 500 bins).
    """
    codec = codec or BoxCodec()
    gts = []
    for i, t in enumerate(targets):
        box = as_box(t, codec)
        if box is None:
            raise ValueError(f"target #{i} is not a box: {t!r}")
        gts.append(box)
    preds = [as_box(p, codec) for p in predictions]
    rep = rec_report(preds, gts)
    del rep["num_examples"]
    return rep


def rec_hits_per_example(
    targets: Sequence[Any], predictions: Sequence[Any], *, codec: BoxCodec | None = None
) -> list[float]:
    """Each example's Acc@0.5 in percent (100: IoU >= 0.5, 0: lower or unparsed);
    the mean is :func:`rec_metrics`'s ``acc@0.5``. Targets and predictions as there."""
    codec = codec or BoxCodec()
    gts = [as_box(t, codec) for t in targets]
    if any(g is None for g in gts):
        raise ValueError(f"target #{[g is None for g in gts].index(True)} is not a box")
    preds = [as_box(p, codec) for p in predictions]
    return [100.0 * float(h) for h in per_example_ious(preds, gts) >= 0.5]


def rec_accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict:
    """seqio metric for already-decoded predictions (np [4] or None, e.g. from
    tasks.registry.rec_postprocessor_factory) and ``{"box": ...}`` targets; box
    *text* is read with the default ``BoxCodec()`` -- bind another codec with
    ``functools.partial(rec_metrics, codec=...)``."""
    return rec_metrics(targets, predictions)
