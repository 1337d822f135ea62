"""Score referring-expression box predictions: Acc@0.5 and mean IoU, per split.

Two ways to give the ground truth:

1. In the predictions file (any REC-style data):

    python -m tasks.rec_eval --predictions preds.jsonl --encoding loc --num_bins 1024 \\
        [--order yxyx] [--allow_missing]

   JSON lines (or one JSON array) of records, one per referring expression:

    {"id": "refcoco_unc/val/12345",             # required, unique (str or int)
     "split": "refcoco_unc_val",                # optional: scores per split too
     "gt_box": [ymin, xmin, ymax, xmax],        # normalised to [0, 1], or instead
     "bbox": [x, y, w, h], "width": W, "height": H,   # COCO pixel box + image size
     "prediction": "<loc0012><loc0040>..."      # model text, decoded with the codec
     # or "pred_box": [ymin, xmin, ymax, xmax] | null (already decoded)
    }

2. From the official REFER files (refs(*).p + instances.json, FORMATS.md):

    python -m tasks.rec_eval --refcoco_dir DATA --dataset refcoco --split testA \\
        [--partition unc] --predictions preds.jsonl --encoding loc

   DATA holds refcoco/, refcoco+/, refcocog/. Every sentence of the split is
   one example with id ``"{ref_id}/{sent_id}"``; prediction records carry only
   ``id`` and ``prediction`` / ``pred_box`` (no ground-truth fields). Read by
   tasks/sources/refcoco.py (restricted unpickler).

A ground-truth example without a prediction is missing: an error naming the
ids, unless ``--allow_missing`` (scored wrong and counted). Unreadable
prediction text scores IoU 0 and is counted in ``num_unparsed``.

Prints JSON ``{"acc@0.5" (%), "mean_iou" ([0, 1]), "num_examples",
"num_unparsed", "num_missing", "codec"[, "per_split": {split: {...}}]}``.
Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from locca.boxes import BoxCodec
from tasks.metrics.files import MetricInputError, load_json, load_jsonl, require
from tasks.metrics.rec import rec_report

FORMAT = (
    'REC JSONL {"id", "gt_box": [ymin, xmin, ymax, xmax] | "bbox"+"width"+"height", '
    '"prediction": str | "pred_box": [4]}'
)
_GT_FIELDS = ("gt_box", "bbox", "width", "height")


def load_records(path) -> list:
    """JSONL records, or a JSON array when the file starts with '['."""
    path = os.fspath(path)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            head = f.read(4096).lstrip()
        if head.startswith("["):
            data = load_json(path, FORMAT)
            if not isinstance(data, list):
                raise MetricInputError(f"{path}: expected a JSON array of records ({FORMAT})")
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
            f"{where}: field {field!r} must be {n} finite numbers, not {value!r}"
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


def _prediction(rec, where, path, codec) -> tuple[bool, Any, bool]:
    """(has_prediction, box or None, unparsed text) of one record."""
    if "pred_box" in rec and "prediction" in rec:
        raise MetricInputError(f"{where}: give either 'prediction' or 'pred_box', not both")
    if "pred_box" in rec:
        box = rec["pred_box"]
        return True, None if box is None else _numbers(box, 4, where, "pred_box"), False
    if "prediction" in rec:
        box = codec.decode(require(rec, "prediction", path, types=str, id_field="id"))
        return True, box, box is None
    return False, None, False


def _read(path, codec, *, with_gt: bool) -> list[dict]:
    """Validated records {id, split, has_pred, pred, gt}."""
    recs = load_records(path)
    if not recs:
        raise MetricInputError(f"{path}: no records (expected {FORMAT})")
    out, seen = [], set()
    for i, rec in enumerate(recs):
        rid = require(rec, "id", path, index=i, types=(str, int))
        where = f"{path}: record with id={rid!r}"
        if rid in seen:
            raise MetricInputError(f"{path}: duplicate id {rid!r}")
        seen.add(rid)
        split = rec.get("split")
        if split is not None and not isinstance(split, str):
            raise MetricInputError(f"{where}: 'split' must be a string, got {split!r}")
        if with_gt:
            gt = _gt_box(rec, where)
        else:
            extra = [f for f in _GT_FIELDS if f in rec]
            if extra:
                raise MetricInputError(
                    f"{where}: has ground-truth fields {extra}, but the ground truth comes from "
                    "--refcoco_dir; drop them"
                )
            gt = None
        has_pred, pred, bad = _prediction(rec, where, path, codec)
        out.append(dict(id=rid, split=split, has_pred=has_pred, pred=pred, gt=gt, unparsed=bad))
    return out


def _report(rows: list[dict], path, codec, allow_missing: bool) -> dict:
    missing = [r["id"] for r in rows if not r["has_pred"]]
    if missing and not allow_missing:
        shown = ", ".join(repr(m) for m in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise MetricInputError(
            f"{path}: no 'prediction'/'pred_box' for ids [{shown}] "
            f"({len(missing)} in all); pass --allow_missing to score them as wrong"
        )
    out = rec_report([r["pred"] for r in rows], [r["gt"] for r in rows])
    out.update(
        num_unparsed=sum(r["unparsed"] for r in rows),
        num_missing=len(missing),
        codec=repr(codec),
    )
    splits = sorted({r["split"] for r in rows if r["split"] is not None})
    if splits:
        out["per_split"] = {
            s: rec_report(
                [r["pred"] for r in rows if r["split"] == s],
                [r["gt"] for r in rows if r["split"] == s],
            )
            for s in splits
        }
    return out


def run(predictions: str, codec: BoxCodec, *, allow_missing: bool = False) -> dict:
    """Mode 1: ground truth inside the predictions file."""
    return _report(_read(predictions, codec, with_gt=True), predictions, codec, allow_missing)


def run_refcoco(
    predictions: str,
    codec: BoxCodec,
    *,
    refcoco_dir: str,
    dataset: str,
    split: str,
    partition: str | None = None,
    allow_missing: bool = False,
) -> dict:
    """Mode 2: ground truth from the official REFER files, one example per sentence."""
    from tasks.sources import refcoco

    gts = refcoco.records(dataset, split, refcoco_dir, partition=partition, per_sentence=True)
    preds = {str(r["id"]): r for r in _read(predictions, codec, with_gt=False)}
    gt_ids = {g["id"] for g in gts}
    unknown = sorted(set(preds) - gt_ids)
    if unknown:
        raise MetricInputError(
            f"{predictions}: ids not in {dataset} {split} ({refcoco_dir}): {unknown[:10]} "
            f"({len(unknown)} in all); ids are 'ref_id/sent_id'"
        )
    if not gts:
        raise MetricInputError(f"{refcoco_dir}: {dataset} has no examples in split {split!r}")
    rows = []
    for g in gts:
        p = preds.get(g["id"], {"has_pred": False, "pred": None, "unparsed": False})
        rows.append(dict(p, id=g["id"], split=None, gt=g["box"]))
    out = _report(rows, predictions, codec, allow_missing)
    out.update(dataset=dataset, split=split)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--predictions", required=True, help="JSONL records (see above)")
    p.add_argument("--encoding", default="text", choices=["text", "loc"], help="box text codec")
    p.add_argument("--num_bins", type=int, default=None, help="default 500 text / 1024 loc")
    p.add_argument("--order", default="yxyx", choices=["yxyx", "xyxy"], help="order in the text")
    p.add_argument("--allow_missing", action="store_true", help="score missing as wrong")
    p.add_argument("--refcoco_dir", help="folder with refcoco/, refcoco+/, refcocog/ (mode 2)")
    p.add_argument("--dataset", default="refcoco", choices=["refcoco", "refcoco_plus", "refcocog"])
    p.add_argument("--split", help="refs split (mode 2): val, testA, testB, test")
    p.add_argument("--partition", help="unc / google / umd (default unc; umd for refcocog)")
    args = p.parse_args(argv)
    codec = BoxCodec(args.encoding, num_bins=args.num_bins, order=args.order)
    try:
        if args.refcoco_dir:
            if not args.split:
                p.error("--split is required with --refcoco_dir")
            report = run_refcoco(
                args.predictions,
                codec,
                refcoco_dir=args.refcoco_dir,
                dataset=args.dataset,
                split=args.split,
                partition=args.partition,
                allow_missing=args.allow_missing,
            )
        else:
            report = run(args.predictions, codec, allow_missing=args.allow_missing)
    except (MetricInputError, ValueError) as e:  # the REFER reader raises ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    from locca import cli

    sys.exit(cli.run(main))
