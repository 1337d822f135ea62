"""RefCOCO / RefCOCO+ / RefCOCOg reader (REFER files, FORMATS.md).

data_dir holds `refcoco/`, `refcoco+/`, `refcocog/` (each with
`instances.json` and `refs(<partition>).p`); image_dir (default data_dir)
holds COCO `train2014/`. The refs pickle is loaded with a restricted
unpickler that admits only builtin containers and scalars (dict, list,
tuple, str, bytes, int, float, bool, None): anything needing a global (a
class, a function such as os.system) is refused before it is created.
Python-2 byte strings are decoded as UTF-8 (falling back to Latin-1).

Boxes come from `instances.json` `annotations[id == ann_id].bbox`
([x, y, w, h] pixels) normalised by the image size to yxyx; images from
`images[].file_name` under `train2014/` (the refs' own file_name is not a
real file). Train: one example per ref (all its sentences; one sampled per
step); other splits: one example per sentence.
"""

from __future__ import annotations

import io
import os
import pickle

from tasks.sources.common import (
    DataFormatError,
    get_field,
    get_list,
    load_json,
    require_area,
    require_file,
    xywh_to_yxyx,
)

DATASETS = {
    # name: (folder, default partition, seqio split -> refs split)
    "refcoco": ("refcoco", "unc"),
    "refcoco_plus": ("refcoco+", "unc"),
    "refcocog": ("refcocog", "umd"),
}
PARTITION_SPLITS = {
    "unc": ("train", "val", "testA", "testB"),
    "google": ("train", "val", "test"),
    "umd": ("train", "val", "test"),
}
REFS_FMT = "REFER refs pickle: a list of {ref_id, ann_id, image_id, split, sentences: [...]}"
INSTANCES_FMT = "COCO instances JSON {images, annotations, categories} (FORMATS.md)"
_SAFE_SCALARS = (str, bytes, int, float, bool, type(None))


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something other than builtin containers/scalars."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise UnsafePickleError(
            f"refused global '{module}.{name}': only builtin containers and scalars are allowed"
        )

    def persistent_load(self, pid):
        raise UnsafePickleError("refused persistent id: only builtin containers and scalars")


def _decode(obj, path, depth=0):
    """bytes -> str (UTF-8, else Latin-1) throughout; type-checks every node."""
    if depth > 50:
        raise DataFormatError(f"{path}: nesting too deep")
    if isinstance(obj, bytes):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            return obj.decode("latin-1")
    if isinstance(obj, dict):
        return {_decode(k, path, depth + 1): _decode(v, path, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, path, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_decode(v, path, depth + 1) for v in obj)
    if isinstance(obj, _SAFE_SCALARS):
        return obj
    raise UnsafePickleError(f"{path}: unexpected object of type {type(obj).__name__}")


def load_refs(path: str) -> list[dict]:
    """Safely loads a REFER `refs(*).p` (Python 2 or 3 pickle)."""
    require_file(path, REFS_FMT)
    with open(path, "rb") as f:
        data = f.read()
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: unsafe pickle ({e}); expected {REFS_FMT}") from None
    except Exception as e:  # truncated / not a pickle
        raise DataFormatError(f"{path}: cannot read pickle ({e}); expected {REFS_FMT}") from e
    obj = _decode(obj, path)
    if not isinstance(obj, list):
        raise DataFormatError(f"{path}: expected a list of refs, got {type(obj).__name__}")
    return obj


def records(
    dataset: str,
    split: str,
    data_dir: str,
    image_dir: str | None = None,
    partition: str | None = None,
    per_sentence: bool | None = None,
) -> list[dict]:
    """Raw examples {id, image/path, expressions, box} of one split.

    split: a refs split name ("train", "val", "testA", "testB", "test"); the
    seqio name "validation" maps to "val". per_sentence: default = not train.
    """
    image_dir = image_dir or data_dir
    folder, default_part = DATASETS[dataset]
    partition = partition or default_part
    ref_split = "val" if split == "validation" else split
    if ref_split not in PARTITION_SPLITS[partition]:
        raise ValueError(
            f"{dataset} ({partition}): unknown split {split!r}; "
            f"splits: {PARTITION_SPLITS[partition]}"
        )
    if per_sentence is None:
        per_sentence = ref_split != "train"
    refs_path = os.path.join(data_dir, folder, f"refs({partition}).p")
    inst_path = os.path.join(data_dir, folder, "instances.json")
    refs = load_refs(refs_path)
    inst = load_json(inst_path, INSTANCES_FMT)
    images = {}
    for i, img in enumerate(get_list(inst, "images", inst_path, "images[]")):
        images[get_field(img, "id", inst_path, f"images[{i}]", int)] = img
    anns = {}
    for i, a in enumerate(get_list(inst, "annotations", inst_path, "instance records")):
        anns[get_field(a, "id", inst_path, f"annotations[{i}]", int)] = a
    out = []
    for i, r in enumerate(refs):
        rid = r.get("ref_id", f"[{i}]") if isinstance(r, dict) else f"[{i}]"
        if get_field(r, "split", refs_path, rid, str) != ref_split:
            continue
        ann_id = get_field(r, "ann_id", refs_path, rid, int)
        image_id = get_field(r, "image_id", refs_path, rid, int)
        if ann_id not in anns:
            raise DataFormatError(f"{inst_path}: no annotation id {ann_id} (ref {rid})")
        if image_id not in images:
            raise DataFormatError(f"{inst_path}: no image id {image_id} (ref {rid})")
        img = images[image_id]
        where = f"{inst_path}: annotation {ann_id}"
        w = get_field(img, "width", inst_path, f"image {image_id}", (int, float))
        h = get_field(img, "height", inst_path, f"image {image_id}", (int, float))
        bbox = get_field(anns[ann_id], "bbox", inst_path, ann_id, list)
        box = require_area(xywh_to_yxyx(bbox, w, h, where), bbox, w, h, where)
        fn = get_field(img, "file_name", inst_path, f"image {image_id}", str)
        base = {"image/path": os.path.join(image_dir, "train2014", fn), "box": box}
        sents = get_field(r, "sentences", refs_path, rid, list)
        texts = []
        for j, s in enumerate(sents):
            t = s.get("sent", s.get("raw")) if isinstance(s, dict) else None
            if not isinstance(t, str):
                raise DataFormatError(
                    f"{refs_path}: ref {rid}: sentences[{j}] needs a 'sent' or 'raw' string"
                )
            texts.append((s.get("sent_id", j), t))
        if per_sentence:
            for sid, t in texts:
                out.append(dict(base, id=f"{rid}/{sid}", expressions=[t]))
        else:
            out.append(dict(base, id=str(rid), expressions=[t for _, t in texts]))
    return out


def pretrain_records(
    dataset: str, split: str, data_dir: str, image_dir: str | None = None, partition=None
):
    """Per image: regions = (ref box, each sentence); captions = the image's
    expressions (RefCOCO has no captions)."""
    by_image: dict[str, dict] = {}
    for r in records(dataset, split, data_dir, image_dir, partition, per_sentence=False):
        rec = by_image.setdefault(
            r["image/path"],
            {"id": r["image/path"], "image/path": r["image/path"], "captions": [],
             "region_boxes": [], "region_texts": []},
        )  # fmt: skip
        for t in r["expressions"]:
            rec["captions"].append(t)
            rec["region_boxes"].append(r["box"])
            rec["region_texts"].append(t)
    return list(by_image.values())
