"""VQAv2 and OK-VQA readers (questions + annotations JSON, COCO images).

VQAv2 files (FORMATS.md) in data_dir:
  v2_OpenEnded_mscoco_{train2014,val2014,test2015,test-dev2015}_questions.json
  v2_mscoco_{train2014,val2014}_annotations.json
OK-VQA: OpenEnded_mscoco_{train,val}2014_questions.json,
        mscoco_{train,val}2014_annotations.json
Images under image_dir (default data_dir): `{folder}/COCO_{folder}_%012d.jpg`.

seqio splits: train, validation, minival (the last 10,240 validation
questions, file order), train+val-minival, val-minival, test, test-dev.
Answers: the ten `answer` strings (never `raw_answer`).
"""

from __future__ import annotations

import os

from tasks.sources.common import DataFormatError, find_file, get_field, get_list, load_json

MINIVAL_SIZE = 10_240
NUM_ANSWERS = 10  # VQAv2 and OK-VQA: ten human answers per question
VQA_Q_FMT = "VQA questions JSON {info, task_type, data_type, data_subtype, questions} (FORMATS.md)"
VQA_A_FMT = "VQA annotations JSON {..., annotations: [{question_id, answers[10], ...}]}"

VQAV2_SPLITS = ("train", "validation", "minival", "val-minival", "train+val-minival", "test",
                "test-dev")  # fmt: skip
OKVQA_SPLITS = ("train", "validation")


def coco_image_path(image_dir: str, folder: str, image_id: int) -> str:
    return os.path.join(image_dir, folder, f"COCO_{folder}_{image_id:012d}.jpg")


def _nonempty(text: str, path: str, qid) -> str:
    if not text.strip():
        raise DataFormatError(f"{path}: question_id {qid}: empty question text")
    return text


def _read(data_dir, image_dir, q_name, a_name, folder, img_folder, name):
    """Records of one official (questions, annotations) pair, in file order."""
    q_path = find_file(data_dir, [q_name], VQA_Q_FMT)
    qs = get_list(load_json(q_path, VQA_Q_FMT), "questions", q_path, "question records")
    anns = {}
    a_path = None
    if a_name is not None:
        a_path = find_file(data_dir, [a_name], VQA_A_FMT)
        for i, a in enumerate(get_list(load_json(a_path, VQA_A_FMT), "annotations", a_path, "")):
            qid = get_field(a, "question_id", a_path, f"annotations[{i}]", int)
            anns[qid] = a
    out = []
    for i, q in enumerate(qs):
        qid = get_field(q, "question_id", q_path, f"questions[{i}]", int)
        iid = get_field(q, "image_id", q_path, qid, int)
        rec = {
            "id": str(qid),
            "question_id": qid,
            "image/path": coco_image_path(image_dir, img_folder, iid),
            "question": _nonempty(get_field(q, "question", q_path, qid, str), q_path, qid),
            "answers": [],
            "question_type": "",
            "answer_type": "",
        }
        if a_name is not None:
            if qid not in anns:
                raise DataFormatError(f"{a_path}: no annotation for question_id {qid} of {q_path}")
            a = anns[qid]
            answers = get_field(a, "answers", a_path, qid, list)
            if len(answers) != NUM_ANSWERS:
                raise DataFormatError(
                    f"{a_path}: question_id {qid}: expected {NUM_ANSWERS} answers "
                    f"(the VQA accuracy needs all ten), got {len(answers)}"
                )
            rec["answers"] = [
                get_field(x, "answer", a_path, f"{qid} answers[{j}]", str)
                for j, x in enumerate(answers)
            ]
            rec["question_type"] = str(a.get("question_type", ""))
            rec["answer_type"] = str(get_field(a, "answer_type", a_path, qid, str))
        out.append(rec)
    return out


def vqav2_records(split: str, data_dir: str, image_dir: str | None = None) -> list[dict]:
    image_dir = image_dir or data_dir
    if split not in VQAV2_SPLITS:
        raise ValueError(f"vqav2: unknown split {split!r}; splits: {VQAV2_SPLITS}")

    def part(folder, with_ann=True, img_folder=None):
        return _read(
            data_dir, image_dir,
            f"v2_OpenEnded_mscoco_{folder}_questions.json",
            f"v2_mscoco_{folder}_annotations.json" if with_ann else None,
            folder, img_folder or folder, "vqav2",
        )  # fmt: skip

    if split == "train":
        return part("train2014")
    if split == "test":
        return part("test2015", with_ann=False)
    if split == "test-dev":
        return part("test-dev2015", with_ann=False, img_folder="test2015")
    val = part("val2014")
    cut = max(0, len(val) - MINIVAL_SIZE)
    if split == "validation":
        return val
    if split == "minival":
        return val[cut:]
    if split == "val-minival":
        return val[:cut]
    return part("train2014") + val[:cut]  # train+val-minival


def okvqa_records(split: str, data_dir: str, image_dir: str | None = None) -> list[dict]:
    image_dir = image_dir or data_dir
    if split not in OKVQA_SPLITS:
        raise ValueError(f"okvqa: unknown split {split!r}; splits: {OKVQA_SPLITS}")
    folder = "train2014" if split == "train" else "val2014"
    return _read(
        data_dir, image_dir,
        f"OpenEnded_mscoco_{folder}_questions.json", f"mscoco_{folder}_annotations.json",
        folder, folder, "okvqa",
    )  # fmt: skip
