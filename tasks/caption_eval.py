"""Score COCO-format caption results with the COCO caption toolkit (CIDEr, BLEU-4, ROUGE-L).

    python -m tasks.caption_eval --annotations captions_val2014.json --results results.json
    python -m tasks.caption_eval --annotations dataset_coco.json --split test --results r.json

Files (see ../shared/FORMATS.md):
  * annotations: COCO captions ``{"images": [...], "annotations": [{image_id, id,
    caption}]}``, or the Karpathy split file ``dataset_coco.json``
    (``{"images": [{cocoid, split, sentences: [{raw}]}]}``) together with
    ``--split`` (train/val/test/restval); the image id is then ``cocoid``.
  * results: ``[{"image_id": int, "caption": str}, ...]`` (COCO results format),
    one caption per image.

By default every image with reference captions must have a prediction
(missing ones are an error, or with ``--allow_missing`` scored with an empty
caption and counted). ``--results_images_only`` evaluates only the images in
the results file, as ``COCOEvalCap`` does with ``params['image_id'] =
cocoRes.getImgIds()`` -- use it to score a subset (e.g. Karpathy test) against
the full ``captions_val2014.json``.

Prints JSON ``{"cider", "bleu4", "rouge_l", "num_images", "num_missing"}``
(scores x100). Needs Java for the PTB tokenizer. Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys

from tasks.metrics.captions import JavaNotFoundError, caption_scores
from tasks.metrics.files import (
    MetricInputError,
    check_missing,
    index_predictions,
    load_json,
    records_list,
    require,
)

ANN_FORMAT = (
    'COCO captions JSON {"images": [...], "annotations": [{image_id, caption}]} or Karpathy '
    '{"images": [{cocoid, split, sentences: [{raw}]}]} with --split'
)
RES_FORMAT = 'COCO caption results JSON [{"image_id": int, "caption": str}]'


def load_references(path, split: str | None = None) -> dict[int, list[str]]:
    """image_id -> reference captions, in file order."""
    data = load_json(path, ANN_FORMAT)
    images = records_list(data, path, "images", ANN_FORMAT)
    karpathy = "annotations" not in data and any(
        isinstance(im, dict) and "sentences" in im for im in images
    )
    refs: dict[int, list[str]] = {}
    if karpathy:
        if split is None:
            raise MetricInputError(
                f"{path}: Karpathy-format file; pass --split (train/val/test/restval)"
            )
        for i, im in enumerate(images):
            kw = dict(id_field="cocoid", index=i)
            if require(im, "split", path, types=str, **kw) != split:
                continue
            cocoid = require(im, "cocoid", path, types=int, **kw)
            sents = require(im, "sentences", path, types=list, **kw)
            refs[cocoid] = [require(s, "raw", path, types=str, **kw) for s in sents]
        if not refs:
            raise MetricInputError(f"{path}: no images with split={split!r}")
        return refs
    if split is not None:
        raise MetricInputError(f"{path}: --split applies only to the Karpathy dataset_coco.json")
    anns = records_list(data, path, "annotations", ANN_FORMAT)
    for im in images:  # images order first, as COCO getImgIds()
        if isinstance(im, dict) and isinstance(im.get("id"), int):
            refs.setdefault(im["id"], [])
    for i, ann in enumerate(anns):
        kw = dict(id_field="id", index=i)
        image_id = require(ann, "image_id", path, types=int, **kw)
        refs.setdefault(image_id, []).append(require(ann, "caption", path, types=str, **kw))
    return {k: v for k, v in refs.items() if v}


def load_results(path) -> dict[int, str]:
    res = records_list(load_json(path, RES_FORMAT), path, None, RES_FORMAT)
    return index_predictions(res, path, id_field="image_id", value_field="caption")


def run(
    annotations: str,
    results: str,
    *,
    split: str | None = None,
    allow_missing: bool = False,
    results_images_only: bool = False,
    bleu_rouge: bool = True,
) -> dict:
    refs = load_references(annotations, split)
    preds = load_results(results)
    if results_images_only:
        unknown = sorted(set(preds) - set(refs))
        if unknown:
            raise MetricInputError(
                f"{results}: captions for image_ids without references in {annotations}: "
                f"{unknown[:10]} ({len(unknown)} in all)"
            )
        refs = {k: v for k, v in refs.items() if k in preds}
        missing = []
    else:
        missing = check_missing(
            refs, preds, results, allow_missing=allow_missing, id_name="image_id"
        )
    scores = caption_scores(refs, preds, bleu_rouge=bleu_rouge, empty_candidates=missing)
    return {**scores, "num_images": len(refs), "num_missing": len(missing)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--annotations", required=True, help="COCO captions or Karpathy JSON")
    p.add_argument("--results", required=True, help="results JSON [{image_id, caption}]")
    p.add_argument("--split", help="Karpathy split (with dataset_coco.json)")
    p.add_argument("--allow_missing", action="store_true", help="score missing images as empty")
    p.add_argument("--results_images_only", action="store_true", help="evaluate result images")
    p.add_argument("--no_bleu_rouge", action="store_true", help="CIDEr only")
    args = p.parse_args(argv)
    try:
        report = run(
            args.annotations,
            args.results,
            split=args.split,
            allow_missing=args.allow_missing,
            results_images_only=args.results_images_only,
            bleu_rouge=not args.no_bleu_rouge,
        )
    except (MetricInputError, JavaNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    from locca import cli

    sys.exit(cli.run(main))
