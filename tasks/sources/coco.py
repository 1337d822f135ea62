"""COCO captions (2014/2017 annotation files, Karpathy split) and instances.

Layouts (../shared/FORMATS.md), relative to `data_dir` (annotations) and
`image_dir` (default: data_dir):
  annotations/captions_{train,val}{2014,2017}.json, image_info_test*.json
  annotations/instances_{train,val}{2014,2017}.json
  dataset_coco.json  (Karpathy; images `{filepath}/{filename}`)
  images: `{split}{year}/{file_name}` under image_dir.
"""

from __future__ import annotations

import os
from collections import defaultdict

from tasks.sources.common import (
    DataFormatError,
    find_file,
    get_field,
    get_list,
    load_json,
    xywh_to_yxyx,
)

CAPTIONS_FMT = "COCO captions JSON {info, images, licenses, annotations} (FORMATS.md)"
INSTANCES_FMT = "COCO instances JSON {info, images, annotations, categories} (FORMATS.md)"
KARPATHY_FMT = 'Karpathy split JSON {"images": [...], "dataset": "coco"} (FORMATS.md)'

# seqio split -> Karpathy `split` values
KARPATHY_SPLITS = {
    "train": ("train", "restval"),
    "validation": ("val",),
    "test": ("test",),
    "restval": ("restval",),
    "train_only": ("train",),
}
# seqio split -> COCO folder stem
ANNOTATION_SPLITS = {"train": "train", "validation": "val", "test": "test"}


def _images_by_id(data, path) -> dict[int, dict]:
    out = {}
    for i, img in enumerate(get_list(data, "images", path, "COCO images[]")):
        iid = get_field(img, "id", path, f"images[{i}]", int)
        get_field(img, "file_name", path, f"image {iid}", str)
        out[iid] = img
    return out


def caption_records(split: str, data_dir: str, image_dir: str | None = None, year: int = 2014):
    """One record per image: {id, image/path, captions} from COCO annotation
    files. The test split (image_info_test{year}.json) has no captions."""
    image_dir = image_dir or data_dir
    stem = ANNOTATION_SPLITS.get(split)
    if stem is None:
        raise ValueError(
            f"coco captions: unknown split {split!r}; splits: {list(ANNOTATION_SPLITS)}"
        )
    folder = f"{stem}{year}" if stem != "test" else f"test{2015 if year == 2014 else year}"
    if stem == "test":
        names = [f"image_info_test{year}.json", f"image_info_{folder}.json"]
        path = find_file(data_dir, names, "COCO image_info JSON {images}")
    else:
        path = find_file(data_dir, [f"captions_{folder}.json"], CAPTIONS_FMT)
    data = load_json(path, CAPTIONS_FMT)
    images = _images_by_id(data, path)
    caps: dict[int, list[str]] = defaultdict(list)
    if stem != "test":
        for i, a in enumerate(get_list(data, "annotations", path, "caption records")):
            rid = a.get("id", f"annotations[{i}]") if isinstance(a, dict) else f"annotations[{i}]"
            iid = get_field(a, "image_id", path, rid, int)
            caps[iid].append(get_field(a, "caption", path, rid, str).strip())
            if iid not in images:
                raise DataFormatError(f"{path}: caption {rid}: image_id {iid} not in images[]")
    img_folder = folder if stem != "test" else _test_folder(image_dir, year)
    return [
        {
            "id": str(iid),
            "image/path": os.path.join(image_dir, img_folder, img["file_name"]),
            "captions": caps.get(iid, []),
        }
        for iid, img in images.items()
    ]


def _test_folder(image_dir, year):
    for f in (f"test{year}", "test2015", "test2014"):
        if os.path.isdir(os.path.join(image_dir, f)):
            return f
    return f"test{year}"


def karpathy_records(split: str, data_dir: str, image_dir: str | None = None):
    """One record per image of the Karpathy split (train = train + restval)."""
    image_dir = image_dir or data_dir
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"karpathy: unknown split {split!r}; splits: {list(KARPATHY_SPLITS)}")
    path = find_file(data_dir, ["dataset_coco.json"], KARPATHY_FMT)
    data = load_json(path, KARPATHY_FMT)
    want = KARPATHY_SPLITS[split]
    out = []
    for i, img in enumerate(get_list(data, "images", path, "Karpathy images[]")):
        rid = img.get("cocoid", f"images[{i}]") if isinstance(img, dict) else f"images[{i}]"
        s = get_field(img, "split", path, rid, str)
        if s not in want:
            continue
        sents = get_field(img, "sentences", path, rid, list)
        caps = [get_field(x, "raw", path, f"{rid} sentence", str).strip() for x in sents]
        fp = get_field(img, "filepath", path, rid, str)
        fn = get_field(img, "filename", path, rid, str)
        out.append(
            {
                "id": str(get_field(img, "cocoid", path, rid, int)),
                "image/path": os.path.join(image_dir, fp, fn),
                "captions": caps,
            }
        )
    return out


def instances(split_folder: str, data_dir: str):
    """(images_by_id, annotations_by_image_id, categories_by_id) of
    annotations/instances_{split_folder}.json."""
    path = find_file(data_dir, [f"instances_{split_folder}.json"], INSTANCES_FMT)
    data = load_json(path, INSTANCES_FMT)
    images = _images_by_id(data, path)
    cats = {}
    for i, c in enumerate(get_list(data, "categories", path, "categories[]")):
        cid = get_field(c, "id", path, f"categories[{i}]", int)
        cats[cid] = get_field(c, "name", path, f"category {cid}", str)
    anns: dict[int, list] = defaultdict(list)
    for i, a in enumerate(get_list(data, "annotations", path, "instance records")):
        rid = a.get("id", f"annotations[{i}]") if isinstance(a, dict) else f"annotations[{i}]"
        get_field(a, "bbox", path, rid, list)
        anns[get_field(a, "image_id", path, rid, int)].append(a)
    return path, images, anns, cats


def pretrain_records(split: str, data_dir: str, image_dir: str | None = None, year: int = 2014):
    """COCO for LocCa: captions from captions_*.json, regions = instance boxes
    (normalised yxyx) with their category names as region text."""
    image_dir = image_dir or data_dir
    stem = ANNOTATION_SPLITS[split]
    folder = f"{stem}{year}"
    caps = {r["id"]: r for r in caption_records(split, data_dir, image_dir, year)}
    path, images, anns, cats = instances(folder, data_dir)
    out = []
    for iid, img in images.items():
        w = float(get_field(img, "width", path, f"image {iid}", (int, float)))
        h = float(get_field(img, "height", path, f"image {iid}", (int, float)))
        boxes, texts = [], []
        for a in anns.get(iid, []):
            if a.get("iscrowd", 0):
                continue
            where = f"{path}: annotation {a.get('id')}"
            boxes.append(xywh_to_yxyx(a["bbox"], w, h, where))
            cid = get_field(a, "category_id", path, a.get("id"), int)
            if cid not in cats:
                raise DataFormatError(f"{where}: category_id {cid} not in categories[]")
            texts.append(cats[cid])
        rec = caps.get(str(iid))
        out.append(
            {
                "id": str(iid),
                "image/path": os.path.join(image_dir, folder, img["file_name"]),
                "captions": rec["captions"] if rec else [],
                "region_boxes": boxes,
                "region_texts": texts,
            }
        )
    return out
