"""Export the shapes world in the official on-disk formats (../shared/FORMATS.md).

``export(format, out_dir, num_images, seed, split)`` writes one split of one
dataset: its annotation files with the official names, fields and quirks, and
JPEG images in the dataset's folder layout and file naming. Every file is
written atomically (temporary file, then rename).

Identifiers are shared by all formats: the image of scene ``k`` has COCO id
``k``, and a split draws its scenes from its own id range
(``SPLIT_BASE[split] + 1, + 2, ...``), so the same (seed, split) gives the
same image and annotations under the same id in every format. Formats whose
datasets only contain images with that kind of annotation (TextVQA, ST-VQA,
OK-VQA, TallyQA, RefCOCO*) skip scenes without it; ``num_images`` always
counts the images written. Derived ids:

- caption / instance annotation / region id: ``image_id * 10 + k``;
- question id: ``image_id * 1000 + k`` (VQAv2 style); ref id and sentence id:
  ``image_id * 100 + k``;
- TextVQA image id: ``format(image_id, "016x")``; Visual Genome / TallyQA VG
  image id: ``image_id`` (TallyQA ``image_id`` field: ``int("9" + str(id))``,
  the extra leading digit of the real files).

RefCOCO-family exports write the whole dataset (all its splits, assigned per
image) in one call, as the public files hold every split; ``split`` then only
selects which id range the scenes come from.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Iterator

from PIL import Image

from locca.data.render import COLOUR_NAMES, SHAPES
from locca.data.shapes import Scene, ShapesWorld

SPLIT_BASE = {"train": 0, "val": 500_000, "test": 900_000}
# COCO's 80 category ids run 1..90 with these gaps; our 30 (colour, shape)
# categories take the first 30 valid ids, so the gaps show up.
COCO_GAPS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
_VALID_IDS = [i for i in range(1, 91) if i not in COCO_GAPS]
CATEGORIES = [
    {"id": _VALID_IDS[k], "name": f"{colour} {shape}", "supercategory": shape}
    for k, (shape, colour) in enumerate((s, c) for s in SHAPES for c in COLOUR_NAMES)
]
CATEGORY_ID = {c["name"]: c["id"] for c in CATEGORIES}

_INFO = {
    "description": "locca shapes world (synthetic)",
    "url": "",
    "version": "1.0",
    "year": 2026,
    "contributor": "locca",
    "date_created": "2026-01-01 00:00:00",
}
_LICENSES = [{"url": "", "id": 1, "name": "synthetic, no restrictions"}]
_VQA_LICENSE = {"url": "", "name": "synthetic, no restrictions"}


# --------------------------------------------------------------------------- io helpers


def _atomic_write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_json(path: str, obj) -> None:
    _atomic_write(path, json.dumps(obj).encode("utf-8"))


def _write_jpeg(path: str, scene: Scene, quality: int = 95) -> None:
    buf = io.BytesIO()
    Image.fromarray(scene.image).save(buf, format="JPEG", quality=quality)
    _atomic_write(path, buf.getvalue())


def _sentence(text: str) -> str:
    """COCO-style raw caption: capitalised, with a final period."""
    return text[0].upper() + text[1:] + "."


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


class _Exporter:
    def __init__(self, out_dir, num_images, seed, split, resolution, year):
        if split not in SPLIT_BASE:
            raise ValueError(f"split must be one of {sorted(SPLIT_BASE)}, got {split!r}")
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        self.out = str(out_dir)
        self.n = int(num_images)
        self.split = split
        self.year = int(year)
        self.world = ShapesWorld(resolution=resolution, seed=seed)
        self.R = int(resolution)
        self.written: list[str] = []

    def scenes(self, keep: Callable[[Scene], bool] = lambda s: True) -> Iterator[Scene]:
        """The split's scenes (image_id == scene index) that pass ``keep``; n of them."""
        found, k = 0, SPLIT_BASE[self.split] + 1
        limit = k + 200 * self.n + 1000
        while found < self.n:
            if k >= limit:
                raise RuntimeError(f"only {found} of {self.n} scenes have the needed annotations")
            s = self.world.scene(k)
            if keep(s):
                found += 1
                yield s
            k += 1

    def path(self, *parts) -> str:
        return os.path.join(self.out, *parts)

    def json(self, rel: str, obj) -> None:
        _write_json(self.path(rel), obj)
        self.written.append(rel)

    def jpeg(self, rel: str, scene: Scene) -> None:
        _write_jpeg(self.path(rel), scene)

    # COCO naming ----------------------------------------------------------
    def coco_folder(self, split: str | None = None, year: int | None = None) -> str:
        split = split or self.split
        year = year or self.year
        return f"{split}{year}"

    def coco_file_name(self, image_id: int, folder: str | None = None) -> str:
        folder = folder or self.coco_folder()
        if folder.endswith("2017"):
            return f"{image_id:012d}.jpg"
        return f"COCO_{folder}_{image_id:012d}.jpg"

    def coco_image(self, s: Scene, folder: str) -> dict:
        fn = self.coco_file_name(s.index, folder)
        return {
            "license": 1,
            "file_name": fn,
            "coco_url": f"http://images.cocodataset.org/{folder}/{fn}",
            "height": self.R,
            "width": self.R,
            "date_captured": "2026-01-01 00:00:00",
            "flickr_url": "",
            "id": s.index,
        }

    def instance_annotations(self, s: Scene) -> list[dict]:
        out = []
        for k, o in enumerate(s.objects):
            x, y, w, h = o.bbox_px
            out.append(
                {
                    "segmentation": [list(o.polygon)],
                    "area": float(o.area_px),
                    "iscrowd": 0,
                    "image_id": s.index,
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "category_id": CATEGORY_ID[f"{o.colour} {o.shape}"],
                    "id": s.index * 10 + k,
                }
            )
        return out


# --------------------------------------------------------------------------- formats


def _coco_captions(e: _Exporter) -> None:
    folder = e.coco_folder()
    images, anns = [], []
    for s in e.scenes():
        images.append(e.coco_image(s, folder))
        e.jpeg(os.path.join(folder, images[-1]["file_name"]), s)
        for k, c in enumerate(s.captions):
            anns.append({"image_id": s.index, "id": s.index * 10 + k, "caption": _sentence(c)})
    if e.split == "test":  # test splits only have image lists
        e.json(
            f"annotations/image_info_{folder}.json",
            {"info": _INFO, "images": images, "licenses": _LICENSES, "categories": CATEGORIES},
        )
        return
    e.json(
        f"annotations/captions_{folder}.json",
        {"info": _INFO, "images": images, "licenses": _LICENSES, "annotations": anns},
    )


def _coco_instances(e: _Exporter) -> None:
    folder = e.coco_folder()
    images, anns = [], []
    for s in e.scenes():
        images.append(e.coco_image(s, folder))
        e.jpeg(os.path.join(folder, images[-1]["file_name"]), s)
        anns += e.instance_annotations(s)
    if e.split == "test":
        e.json(
            f"annotations/image_info_{folder}.json",
            {"info": _INFO, "images": images, "licenses": _LICENSES, "categories": CATEGORIES},
        )
        return
    e.json(
        f"annotations/instances_{folder}.json",
        {
            "info": _INFO,
            "licenses": _LICENSES,
            "images": images,
            "annotations": anns,
            "categories": CATEGORIES,
        },
    )


def _karpathy(e: _Exporter) -> None:
    images = []
    for imgid, s in enumerate(e.scenes()):
        # Karpathy's test/val/restval images all live in COCO val2014.
        split = e.split
        if split == "train" and s.index % 8 == 7:
            split = "restval"
        folder = "train2014" if split == "train" else "val2014"
        fn = e.coco_file_name(s.index, folder)
        e.jpeg(os.path.join(folder, fn), s)
        sents = []
        for k, c in enumerate(s.captions):
            raw = _sentence(c) + (" " if k == 1 else "")  # raw may end with spaces
            sents.append(
                {"tokens": _tokens(c), "raw": raw, "imgid": imgid, "sentid": s.index * 10 + k}
            )
        images.append(
            {
                "filepath": folder,
                "sentids": [x["sentid"] for x in sents],
                "filename": fn,
                "imgid": imgid,
                "split": split,
                "sentences": sents,
                "cocoid": s.index,
            }
        )
    e.json("dataset_coco.json", {"images": images, "dataset": "coco"})


def _vqav2(e: _Exporter) -> None:
    folder = {"train": "train2014", "val": "val2014", "test": "test2015"}[e.split]
    questions, anns = [], []
    for s in e.scenes(lambda s: bool(s.vqa)):
        e.jpeg(os.path.join(folder, e.coco_file_name(s.index, folder)), s)
        for k, q in enumerate(s.vqa):
            qid = s.index * 1000 + k
            questions.append({"image_id": s.index, "question": q.question, "question_id": qid})
            anns.append(
                {
                    "question_type": q.question_type,
                    "multiple_choice_answer": q.multiple_choice_answer,
                    "answers": [
                        {"answer": a, "answer_confidence": c, "answer_id": j + 1}
                        for j, (a, c) in enumerate(zip(q.answers, q.answer_confidences))
                    ],
                    "image_id": s.index,
                    "answer_type": q.answer_type,
                    "question_id": qid,
                }
            )

    def qfile(subtype, qs):
        return {
            "info": _INFO,
            "task_type": "Open-Ended",
            "data_type": "mscoco",
            "data_subtype": subtype,
            "questions": qs,
            "license": _VQA_LICENSE,
        }

    e.json(f"v2_OpenEnded_mscoco_{folder}_questions.json", qfile(folder, questions))
    if e.split == "test":
        # test-dev2015 is a subset of test2015 (same image folder).
        dev_images = sorted({q["image_id"] for q in questions})[: max(1, e.n // 2)]
        dev = [q for q in questions if q["image_id"] in set(dev_images)]
        e.json("v2_OpenEnded_mscoco_test-dev2015_questions.json", qfile("test-dev2015", dev))
        return
    e.json(
        f"v2_mscoco_{folder}_annotations.json",
        {
            "info": _INFO,
            "license": _VQA_LICENSE,
            "data_subtype": folder,
            "annotations": anns,
            "data_type": "mscoco",
        },
    )


def _okvqa(e: _Exporter) -> None:
    if e.split == "test":
        raise ValueError("OK-VQA has only train and val splits (val2014 is its test set)")
    folder = f"{e.split}2014"
    questions, anns = [], []
    for s in e.scenes(lambda s: bool(s.knowledge)):
        e.jpeg(os.path.join(folder, e.coco_file_name(s.index, folder)), s)
        for k, q in enumerate(s.knowledge):
            qid = s.index * 1000 + 500 + k
            questions.append({"image_id": s.index, "question": q.question, "question_id": qid})
            answers = []
            for j, a in enumerate(q.answers):
                raw = a.capitalize() if (qid + j) % 4 == 0 else a
                answers.append(
                    {
                        "answer_id": j + 1,
                        "raw_answer": raw,
                        "answer_confidence": "yes" if (qid + j) % 7 else "no",
                        "answer": a,
                    }
                )
            anns.append(
                {
                    "image_id": s.index,
                    "answer_type": q.answer_type,
                    "question_type": q.question_type,
                    "question_id": qid,
                    "answers": answers,
                    "confidence": 2 + qid % 2,
                }
            )
    e.json(
        f"OpenEnded_mscoco_{folder}_questions.json",
        {
            "info": _INFO,
            "task_type": "Open-Ended",
            "data_type": "mscoco",
            "data_subtype": folder,
            "questions": questions,
            "license": _VQA_LICENSE,
        },
    )
    e.json(
        f"mscoco_{folder}_annotations.json",
        {
            "info": _INFO,
            "license": _VQA_LICENSE,
            "data_subtype": folder,
            "annotations": anns,
            "data_type": "mscoco",
        },
    )


def textvqa_image_id(image_id: int) -> str:
    """The 16-hex-character (OpenImages-style) id of our image ``image_id``."""
    return format(image_id, "016x")


def _textvqa(e: _Exporter) -> None:
    root = "test_images" if e.split == "test" else "train_images"
    data = []
    for s in e.scenes(lambda s: bool(s.text_questions)):
        hid = textvqa_image_id(s.index)
        e.jpeg(f"{root}/{hid}.jpg", s)
        for k, q in enumerate(s.text_questions):
            rec = {
                "question": q.question,
                "image_id": hid,
                "image_classes": sorted({o.shape.capitalize() for o in s.objects}),
                "flickr_original_url": f"https://farm.example.invalid/{hid}_o.jpg",
                "flickr_300k_url": f"https://farm.example.invalid/{hid}_z.jpg",
                "image_width": e.R,
                "image_height": e.R,
                "answers": list(q.answers),
                "question_tokens": _tokens(q.question),
                "question_id": s.index * 1000 + 700 + k,
                "set_name": e.split,
            }
            if e.split == "test":
                del rec["answers"]
            data.append(rec)
    e.json(
        f"TextVQA_0.5.1_{e.split}.json",
        {
            "dataset_type": e.split,
            "dataset_name": "textvqa",
            "dataset_version": "0.5.1",
            "data": data,
        },
    )


_STVQA_SOURCES = ("coco-text", "visual_genome", "icdar", "imageNet")


def _stvqa(e: _Exporter) -> None:
    if e.split == "val":
        raise ValueError("ST-VQA has no official val split: export train and hold out by image")
    root = "test_task3_images" if e.split == "test" else "train_images"
    data = []
    for s in e.scenes(lambda s: bool(s.text_questions)):
        dataset = _STVQA_SOURCES[s.index % len(_STVQA_SOURCES)]
        if dataset == "coco-text":
            fn = f"COCO_train2014_{s.index:012d}.jpg"
        elif dataset == "icdar":
            fn = f"img_{s.index}.jpg"
        else:
            fn = f"{s.index}.jpg"
        e.jpeg(f"{root}/{dataset}/{fn}", s)
        for k, q in enumerate(s.text_questions):
            rec = {
                "question_id": s.index * 1000 + 800 + k,
                "question": q.question,
                "file_path": f"{dataset}/{fn}",
                "dataset": dataset,
                "file_name": fn,
                "set_name": e.split,
                "answers": list(q.short_answers),
            }
            if e.split == "test":
                del rec["answers"]
            data.append(rec)
    name = "test_task_3.json" if e.split == "test" else "train_task_3.json"
    e.json(name, {"dataset_name": "ST-VQA", "version": "1.0", "task": 3, "data": data})


def tallyqa_vg_image_id(image_id: int) -> int:
    """TallyQA's ``image_id`` for a VG image: the id with an extra leading digit (9)."""
    return int(f"9{image_id}")


def _tallyqa(e: _Exporter) -> None:
    if e.split == "val":
        raise ValueError("TallyQA has only train.json and test.json")
    coco_folder = "train2014" if e.split == "train" else "val2014"
    records = []
    for s in e.scenes(lambda s: bool(s.counting)):
        if s.index % 2:
            image = f"VG_100K_2/{s.index}.jpg"
            image_id, source = tallyqa_vg_image_id(s.index), "imported_genome"
        else:
            image = f"{coco_folder}/{e.coco_file_name(s.index, coco_folder)}"
            image_id, source = s.index, "amt" if e.split == "train" else "imported_vqa"
        e.jpeg(image, s)
        for k, c in enumerate(s.counting):
            rec = {
                "image": image,
                "answer": int(c.answer),
                "data_source": source,
                "question": c.question,
                "image_id": image_id,
                "question_id": s.index * 1000 + 900 + k,
                "issimple": bool(c.issimple),
            }
            if e.split == "train" and s.index % 5 == 0:
                del rec["issimple"]  # missing for some train records, as in the real file
            records.append(rec)
    e.json(f"{e.split}.json", records)


_REF_SPLITS = {
    "unc": ("train",) * 6 + ("val", "testA", "testB"),
    "google": ("train",) * 7 + ("val", "test"),
    "umd": ("train",) * 7 + ("val", "test"),
}
_REF_SPLITS_GOOGLE_G = ("train",) * 8 + ("val",)  # RefCOCOg (google): train/val only


def _refs(e: _Exporter, dataset: str) -> None:
    folder = {"refcoco": "refcoco", "refcoco_plus": "refcoco+", "refcocog": "refcocog"}[dataset]
    partitions = {
        "refcoco": ("unc", "google"),
        "refcoco_plus": ("unc",),
        "refcocog": ("umd", "google"),
    }[dataset]
    # RefCOCO+ forbids absolute location words; RefCOCOg prefers long expressions.
    kinds = ("attribute", "word") if dataset == "refcoco_plus" else None

    def refexps(s):
        return [r for r in s.refexps if kinds is None or r.kind in kinds]

    images, anns, scenes = [], [], []
    for s in e.scenes(lambda s: bool(refexps(s))):
        img = e.coco_image(s, "train2014")  # all RefCOCO images are COCO train2014
        images.append(img)
        e.jpeg(os.path.join("train2014", img["file_name"]), s)
        anns += e.instance_annotations(s)
        scenes.append(s)
    e.json(
        f"{folder}/instances.json",
        {
            "info": _INFO,
            "licenses": _LICENSES,
            "images": images,
            "annotations": anns,
            "categories": CATEGORIES,
        },
    )
    for part in partitions:
        table = (
            _REF_SPLITS_GOOGLE_G if (dataset, part) == ("refcocog", "google") else _REF_SPLITS[part]
        )
        refs = []
        for s in scenes:
            split = table[s.index % len(table)]
            by_obj: dict[int, list] = {}
            for k, r in enumerate(s.refexps):
                if kinds is None or r.kind in kinds:
                    by_obj.setdefault(r.object_index, []).append((k, r))
            for obj_index, rs in by_obj.items():
                o = s.objects[obj_index]
                ann_id = s.index * 10 + obj_index
                sents = []
                for k, r in rs:
                    raw = r.text[0].upper() + r.text[1:] if k % 3 == 1 else r.text
                    sents.append(
                        {
                            "tokens": _tokens(r.text),
                            "raw": raw,
                            "sent_id": s.index * 100 + k,
                            "sent": " ".join(_tokens(r.text)),
                        }
                    )
                refs.append(
                    {
                        "sent_ids": [x["sent_id"] for x in sents],
                        "file_name": f"COCO_train2014_{s.index:012d}_{ann_id}.jpg",
                        "ann_id": ann_id,
                        "ref_id": s.index * 100 + obj_index,
                        "image_id": s.index,
                        "split": split,
                        "sentences": sents,
                        "category_id": CATEGORY_ID[f"{o.colour} {o.shape}"],
                    }
                )
        rel = f"{folder}/refs({part}).p"
        _atomic_write(e.path(rel), pickle.dumps(refs, protocol=2))
        e.written.append(rel)


def _vg(e: _Exporter) -> None:
    regions_out, image_data = [], []
    for s in e.scenes():
        folder = "VG_100K_2" if s.index % 2 else "VG_100K"
        e.jpeg(f"{folder}/{s.index}.jpg", s)
        regions = []
        phrases = [(k, o.description, k) for k, o in enumerate(s.objects)]
        phrases += [
            (len(s.objects) + k, r.text[4:], r.object_index) for k, r in enumerate(s.refexps)
        ]
        for rid, phrase, obj_index in phrases:
            x, y, w, h = s.objects[obj_index].bbox_px
            regions.append(
                {
                    "region_id": s.index * 100 + rid,
                    "width": w,
                    "height": h,
                    "image_id": s.index,
                    "phrase": phrase,
                    "y": y,
                    "x": x,
                }
            )
        regions_out.append({"regions": regions, "id": s.index})
        image_data.append(
            {
                "width": e.R,
                "url": f"https://cs.stanford.edu/people/rak248/{folder}/{s.index}.jpg",
                "height": e.R,
                "image_id": s.index,
                "coco_id": s.index if s.index % 3 == 0 else None,
                "flickr_id": None,
            }
        )
    e.json("region_descriptions.json", regions_out)
    e.json("image_data.json", image_data)


FORMATS: dict[str, Callable[[_Exporter], None]] = {
    "coco_captions": _coco_captions,
    "karpathy": _karpathy,
    "coco_instances": _coco_instances,
    "vqav2": _vqav2,
    "okvqa": _okvqa,
    "textvqa": _textvqa,
    "stvqa": _stvqa,
    "tallyqa": _tallyqa,
    "refcoco": lambda e: _refs(e, "refcoco"),
    "refcoco_plus": lambda e: _refs(e, "refcoco_plus"),
    "refcocog": lambda e: _refs(e, "refcocog"),
    "vg": _vg,
}


def export(
    format: str,
    out_dir: str | os.PathLike,
    num_images: int,
    seed: int = 0,
    split: str = "train",
    *,
    resolution: int = 64,
    year: int = 2014,
) -> list[str]:
    """Write ``num_images`` images of ``split`` in ``format`` under ``out_dir``.

    Returns the annotation files written (paths relative to ``out_dir``).
    ``year`` (2014 or 2017) selects COCO folder and file naming for
    ``coco_captions`` and ``coco_instances``.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {sorted(FORMATS)}")
    if year not in (2014, 2017):
        raise ValueError(f"year must be 2014 or 2017, got {year}")
    e = _Exporter(out_dir, num_images, seed, split, resolution, year)
    FORMATS[format](e)
    return e.written
