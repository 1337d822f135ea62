"""Region-text sources for LocCa pretraining: Visual Genome and user JSONL.

Visual Genome (FORMATS.md), in data_dir:
  region_descriptions.json  [{"regions": [{region_id|id, x, y, width, height,
                              image_id, phrase}], "id": image_id}, ...]
  image_data.json           [{image_id|id, width, height, url, ...}, ...]
  images: the last two components of `url` (VG_100K/ or VG_100K_2/) under
  image_dir. VG has no captions: `captions` = the image's region phrases.

JSONL (users' own data), one JSON object per line:
  {"image": "path/to/img.jpg",            # relative to the JSONL file's folder
   "captions": ["a caption", ...],
   "regions": [{"box": [ymin, xmin, ymax, xmax],   # normalised to [0, 1]
                "text": "region text", "score": 0.87}, ...]}
  `score` is optional (default 1.0); regions with score < min_score (0.3, the
  paper's OWL-ViT threshold) are dropped. Files: `{split}.jsonl` in data_dir.
"""

from __future__ import annotations

import json
import math
import os

from tasks.sources.common import (
    DataFormatError,
    find_file,
    get_field,
    load_json,
    require_file,
)

VG_REGIONS_FMT = 'VG region_descriptions.json: [{"regions": [...], "id": image_id}]'
VG_IMAGES_FMT = "VG image_data.json: [{image_id, width, height, url}]"
JSONL_FMT = 'JSONL lines {"image", "captions": [...], "regions": [{"box", "text", "score"}]}'


def vg_records(split: str, data_dir: str, image_dir: str | None = None) -> list[dict]:
    """All of VG is one `train` split."""
    image_dir = image_dir or data_dir
    if split != "train":
        raise ValueError(f"vg: unknown split {split!r}; splits: ('train',)")
    rpath = find_file(data_dir, ["region_descriptions.json"], VG_REGIONS_FMT)
    ipath = find_file(data_dir, ["image_data.json"], VG_IMAGES_FMT)
    regions = load_json(rpath, VG_REGIONS_FMT)
    imdata = load_json(ipath, VG_IMAGES_FMT)
    for p, d in ((rpath, regions), (ipath, imdata)):
        if not isinstance(d, list):
            raise DataFormatError(f"{p}: expected a JSON array")
    info = {}
    for i, im in enumerate(imdata):
        iid = im.get("image_id", im.get("id")) if isinstance(im, dict) else None
        if not isinstance(iid, int):
            raise DataFormatError(f"{ipath}: record [{i}]: missing required field 'image_id'")
        info[iid] = im
    out = []
    for i, entry in enumerate(regions):
        iid = get_field(entry, "id", rpath, f"[{i}]", int)
        if iid not in info:
            raise DataFormatError(f"{ipath}: no image record for image_id {iid} ({rpath})")
        im = info[iid]
        w = float(get_field(im, "width", ipath, iid, (int, float)))
        h = float(get_field(im, "height", ipath, iid, (int, float)))
        url = get_field(im, "url", ipath, iid, str)
        rel = "/".join(url.rstrip("/").split("/")[-2:])
        boxes, texts = [], []
        for j, r in enumerate(get_field(entry, "regions", rpath, iid, list)):
            rid = f"{iid} region {r.get('region_id', r.get('id', j))}"
            x, y = (float(get_field(r, k, rpath, rid, (int, float))) for k in ("x", "y"))
            rw = float(get_field(r, "width", rpath, rid, (int, float)))
            rh = float(get_field(r, "height", rpath, rid, (int, float)))
            phrase = get_field(r, "phrase", rpath, rid, str).strip()
            if not phrase or rw <= 0 or rh <= 0:
                continue
            box = [y / h, x / w, (y + rh) / h, (x + rw) / w]
            boxes.append([min(1.0, max(0.0, v)) for v in box])
            texts.append(phrase)
        out.append(
            {
                "id": str(iid),
                "image/path": os.path.join(image_dir, rel),
                "captions": list(texts),
                "region_boxes": boxes,
                "region_texts": texts,
            }
        )
    return out


def jsonl_records(split: str, data_dir: str, min_score: float = 0.3) -> list[dict]:
    path = os.path.join(data_dir, f"{split}.jsonl")
    require_file(path, JSONL_FMT)
    base = os.path.dirname(os.path.abspath(path))
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"line {lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(
                    f"{path}: malformed JSON at line {lineno} column {e.colno}: {e.msg} "
                    f"(expected {JSONL_FMT})"
                ) from e
            image = get_field(rec, "image", path, where, str)
            caps = rec.get("captions", [])
            if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
                raise DataFormatError(f"{path}: {where}: 'captions' should be a list of strings")
            boxes, texts = [], []
            for j, r in enumerate(rec.get("regions", [])):
                rw = f"{where} regions[{j}]"
                box = get_field(r, "box", path, rw, list)
                text = get_field(r, "text", path, rw, str)
                score = r.get("score", 1.0)
                if not isinstance(score, (int, float)):
                    raise DataFormatError(f"{path}: {rw}: 'score' should be a number")
                ok = len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
                if ok:
                    ok = all(math.isfinite(v) and -1e-6 <= v <= 1 + 1e-6 for v in box)
                if not ok or box[0] > box[2] or box[1] > box[3]:
                    raise DataFormatError(
                        f"{path}: {rw}: 'box' should be [ymin, xmin, ymax, xmax] in [0, 1], "
                        f"got {box!r}"
                    )
                if score < min_score:
                    continue
                boxes.append([min(1.0, max(0.0, float(v))) for v in box])
                texts.append(text)
            out.append(
                {
                    "id": f"{split}:{lineno}",
                    "image/path": image if os.path.isabs(image) else os.path.join(base, image),
                    "captions": caps,
                    "region_boxes": boxes,
                    "region_texts": texts,
                }
            )
    return out
