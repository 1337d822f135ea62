"""TextVQA 0.5.1, ST-VQA task 3 and TallyQA readers (FORMATS.md).

TextVQA: TextVQA_0.5.1_{train,val,test}.json; images
  train_images/{image_id}.jpg (train, val), test_images/{image_id}.jpg (test).
ST-VQA: train_task_3.json / test_task_3.json; images
  train_images/{file_path}, test_task3_images/{file_path}. No official val:
  `validation` holds out a deterministic fraction of the train *images*
  (those whose sha1(file_path) ranks first), `train` is the rest.
TallyQA: train.json / test.json (JSON arrays); image = `image` relative to
  image_dir (never `image_id`); `issimple` optional (-1 when missing).
"""

from __future__ import annotations

import hashlib
import math
import os

from tasks.sources.common import DataFormatError, find_file, get_field, get_list, load_json

TEXTVQA_FMT = "TextVQA 0.5.1 JSON {dataset_type, dataset_name, dataset_version, data: [...]}"
STVQA_FMT = "ST-VQA task 3 JSON {..., data: [{question_id, question, file_path, answers}]}"
TALLY_FMT = "TallyQA JSON array of {image, image_id, question, question_id, answer, issimple}"

TEXTVQA_SPLITS = {"train": "train", "validation": "val", "test": "test"}
STVQA_SPLITS = ("train", "validation", "train_full", "test")
TALLY_SPLITS = ("train", "test", "test_simple", "test_complex")
STVQA_VAL_FRACTION = 0.1


def textvqa_records(split: str, data_dir: str, image_dir: str | None = None) -> list[dict]:
    image_dir = image_dir or data_dir
    if split not in TEXTVQA_SPLITS:
        raise ValueError(f"textvqa: unknown split {split!r}; splits: {list(TEXTVQA_SPLITS)}")
    s = TEXTVQA_SPLITS[split]
    path = find_file(data_dir, [f"TextVQA_0.5.1_{s}.json"], TEXTVQA_FMT)
    root = "test_images" if s == "test" else "train_images"
    out = []
    for i, r in enumerate(get_list(load_json(path, TEXTVQA_FMT), "data", path, "records")):
        qid = get_field(r, "question_id", path, f"data[{i}]", int)
        iid = get_field(r, "image_id", path, qid, str)
        answers = [] if s == "test" else get_field(r, "answers", path, qid, list)
        out.append(
            {
                "id": str(qid),
                "question_id": qid,
                "image/path": os.path.join(image_dir, root, f"{iid}.jpg"),
                "question": get_field(r, "question", path, qid, str),
                "answers": [str(a) for a in answers],
            }
        )
    return out


def _stvqa_val_images(paths: list[str], fraction: float) -> set[str]:
    uniq = sorted(set(paths), key=lambda p: hashlib.sha1(p.encode()).hexdigest())
    return set(uniq[: max(1, math.ceil(fraction * len(uniq)))]) if uniq else set()


def stvqa_records(
    split: str, data_dir: str, image_dir: str | None = None, val_fraction=STVQA_VAL_FRACTION
) -> list[dict]:
    image_dir = image_dir or data_dir
    if split not in STVQA_SPLITS:
        raise ValueError(f"stvqa: unknown split {split!r}; splits: {STVQA_SPLITS}")
    test = split == "test"
    path = find_file(data_dir, ["test_task_3.json" if test else "train_task_3.json"], STVQA_FMT)
    root = "test_task3_images" if test else "train_images"
    recs = []
    for i, r in enumerate(get_list(load_json(path, STVQA_FMT), "data", path, "records")):
        qid = get_field(r, "question_id", path, f"data[{i}]", int)
        fp = get_field(r, "file_path", path, qid, str)
        answers = [] if test else get_field(r, "answers", path, qid, list)
        recs.append(
            {
                "id": str(qid),
                "question_id": qid,
                "image/path": os.path.join(image_dir, root, fp),
                "question": get_field(r, "question", path, qid, str),
                "answers": [str(a) for a in answers],
                "_file_path": fp,
            }
        )
    if split in ("train", "validation"):
        val = _stvqa_val_images([r["_file_path"] for r in recs], val_fraction)
        recs = [r for r in recs if (r["_file_path"] in val) == (split == "validation")]
    return recs


def _is_coco(image: str) -> bool:
    """`train2014/COCO_train2014_....jpg` and the like (TallyQA's COCO part)."""
    return image.split("/", 1)[0] in ("train2014", "val2014", "test2015", "train2017", "val2017")


def tallyqa_records(
    split: str, data_dir: str, image_dir: str | None = None, coco_image_dir: str | None = None
) -> list[dict]:
    """TallyQA records; an `image` under a COCO folder (`train2014/...`) is read
    from `coco_image_dir` when given, every other image from `image_dir`."""
    image_dir = image_dir or data_dir
    if split not in TALLY_SPLITS:
        raise ValueError(f"tallyqa: unknown split {split!r}; splits: {TALLY_SPLITS}")
    name = "train.json" if split == "train" else "test.json"
    path = find_file(data_dir, [name], TALLY_FMT)
    data = load_json(path, TALLY_FMT)
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a JSON array of question records ({TALLY_FMT})")
    out = []
    for i, r in enumerate(data):
        qid = get_field(r, "question_id", path, f"[{i}]", int)
        image = get_field(r, "image", path, qid, str)
        ans = get_field(r, "answer", path, qid, int)
        simple = r.get("issimple")
        if simple is not None and not isinstance(simple, bool):
            raise DataFormatError(f"{path}: record {qid}: 'issimple' should be a bool")
        issimple = -1 if simple is None else int(simple)
        if split == "test_simple" and issimple != 1 or split == "test_complex" and issimple != 0:
            continue
        out.append(
            {
                "id": str(qid),
                "question_id": qid,
                "image/path": os.path.join(
                    coco_image_dir if coco_image_dir and _is_coco(image) else image_dir, image
                ),
                "question": get_field(r, "question", path, qid, str),
                "answers": [str(ans)],
                "issimple": issimple,
            }
        )
    return out
