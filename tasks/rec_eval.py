"""Score referring-expression box predictions: Acc@0.5 and mean IoU, per split.

    python -m tasks.rec_eval --predictions preds.jsonl --encoding loc --num_bins 1024 \\
        [--order yxyx] [--allow_missing]

Input: JSON lines (or one JSON array) of records, one per referring expression:

    {"id": "refcoco_unc/val/12345",             # required, unique (str or int)
     "split": "refcoco_unc_val",                # optional: scores per split too
     "gt_box": [ymin, xmin, ymax, xmax],        # normalised to [0, 1], or instead
     "bbox": [x, y, w, h], "width": W, "height": H,   # COCO pixel box + image size
     "prediction": "<loc0012><loc0040>..."      # model text, decoded with the codec
     # or "pred_box": [ymin, xmin, ymax, xmax] | null (already decoded)
    }

A record with neither ``prediction`` nor ``pred_box`` is missing: an error
naming the ids, unless ``--allow_missing`` (scored wrong and counted).
Unreadable prediction text scores IoU 0 and is counted in ``num_unparsed``.

Prints JSON ``{"acc@0.5" (%), "mean_iou" ([0, 1]), "num_examples",
"num_unparsed", "num_missing"[, "per_split": {split: {...}}]}``. Exit 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from locca.boxes import BoxCodec
from tasks.metrics.files import MetricInputError, load_json, load_jsonl, require
from tasks.metrics.rec import rec_report

FORMAT = (
    'REC JSONL {"id", "gt_box": [ymin, xmin, ymax, xmax] | "bbox"+"width"+"height", '
    '"prediction": str | "pred_box": [4]}'
)


def load_records(path) -> list:
    """JSONL records, or a JSON array when the file starts with '['."""
    path = os.fspath(path)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            head = f.read(4096).lstrip()
        if head.startswith("["):
            data = load_json(path, FORMAT)
            return data
    return load_jsonl(path, FORMAT)


def _numbers(value, n, where, field):
    ok = (
        isinstance(value, list)
        and len(value) == n
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and all(math.isfinite(v) for v in value)
    )
    if not ok:
        raise MetricInputError(
            f"{where}: field {field!r} must be {n} finite numbers, got {value!r}"
        )
    return [float(v) for v in value]


def _gt_box(rec, where):
    if "gt_box" in rec:
        y0, x0, y1, x1 = _numbers(rec["gt_box"], 4, where, "gt_box")
    elif "bbox" in rec:
        x, y, w, h = _numbers(rec["bbox"], 4, where, "bbox")
        if "width" not in rec or "height" not in rec:
            raise MetricInputError(f"{where}: 'bbox' (pixels) needs 'width' and 'height'")
        (width, height) = _numbers([rec["width"], rec["height"]], 2, where, "width/height")
        if width <= 0 or height <= 0:
            raise MetricInputError(f"{where}: image size must be positive, got {width}x{height}")
        y0, x0, y1, x1 = y / height, x / width, (y + h) / height, (x + w) / width
    else:
        raise MetricInputError(f"{where}: missing required field 'gt_box' (or 'bbox' + size)")
    eps = 1e-6
    if not (-eps <= y0 <= y1 <= 1 + eps and -eps <= x0 <= x1 <= 1 + eps):
        raise MetricInputError(
            f"{where}: ground-truth box {[y0, x0, y1, x1]} is not a normalised "
            "[ymin, xmin, ymax, xmax] inside [0, 1]"
        )
    return [y0, x0, y1, x1]


def run(predictions: str, codec: BoxCodec, *, allow_missing: bool = False) -> dict:
    recs = load_records(predictions)
    if not recs:
        raise MetricInputError(f"{predictions}: no records (expected {FORMAT})")
    seen, missing = set(), []
    rows = []  # (split, pred_box | None, gt_box)
    unparsed = 0
    for i, rec in enumerate(recs):
        rid = require(rec, "id", predictions, index=i, types=(str, int))
        where = f"{predictions}: record with id={rid!r}"
        if rid in seen:
            raise MetricInputError(f"{predictions}: duplicate id {rid!r}")
        seen.add(rid)
        gt = _gt_box(rec, where)
        split = rec.get("split")
        if split is not None and not isinstance(split, str):
            raise MetricInputError(f"{where}: 'split' must be a string, got {split!r}")
        if "pred_box" in rec and "prediction" in rec:
            raise MetricInputError(f"{where}: give either 'prediction' or 'pred_box', not both")
        if "pred_box" in rec:
            pred = (
                None if rec["pred_box"] is None else _numbers(rec["pred_box"], 4, where, "pred_box")
            )
        elif "prediction" in rec:
            text = require(rec, "prediction", predictions, types=str, id_field="id")
            pred = codec.decode(text)
            unparsed += pred is None
        else:
            missing.append(rid)
            pred = None
        rows.append((split, pred, gt))
    if missing and not allow_missing:
        shown = ", ".join(repr(m) for m in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise MetricInputError(
            f"{predictions}: no 'prediction'/'pred_box' for ids [{shown}] "
            f"({len(missing)} in all); pass --allow_missing to score them as wrong"
        )
    out = rec_report([r[1] for r in rows], [r[2] for r in rows])
    out.update(num_unparsed=unparsed, num_missing=len(missing), codec=repr(codec))
    splits = sorted({r[0] for r in rows if r[0] is not None})
    if splits:
        out["per_split"] = {
            s: rec_report([r[1] for r in rows if r[0] == s], [r[2] for r in rows if r[0] == s])
            for s in splits
        }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--predictions", required=True, help="JSONL records (see above)")
    p.add_argument("--encoding", default="text", choices=["text", "loc"], help="box text codec")
    p.add_argument("--num_bins", type=int, default=None, help="default 500 text / 1024 loc")
    p.add_argument("--order", default="yxyx", choices=["yxyx", "xyxy"], help="order in the text")
    p.add_argument("--allow_missing", action="store_true", help="score missing as wrong")
    args = p.parse_args(argv)
    codec = BoxCodec(args.encoding, num_bins=args.num_bins, order=args.order)
    try:
        report = run(args.predictions, codec, allow_missing=args.allow_missing)
    except MetricInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
