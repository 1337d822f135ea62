"""Test-server submission files: VQAv2, TextVQA, ST-VQA answers and COCO captions.

Every writer takes predictions as a mapping ``{id: text}``, an iterable of
``(id, text)`` pairs, or an iterable of records already in the output format,
checks that the ids are unique integers (numpy integers accepted, bools not)
and the texts strings, optionally that the ids are exactly ``expected_ids``,
and writes the JSON array atomically (temporary file in the same folder,
fsync, ``os.replace``), so a crash never leaves a half-written submission.

Formats:
  * VQAv2 (EvalAI): ``[{"question_id": int, "answer": str}]``, named
    ``vqa_OpenEnded_mscoco_{test-dev2015|test2015}_{method}_results.json``
    (:func:`vqav2_results_filename`).
  * TextVQA (EvalAI): ``[{"question_id": int, "answer": str}]``.
  * ST-VQA task 3 (RRC): ``[{"question_id": int, "answer": str}]``.
  * COCO captions: ``[{"image_id": int, "caption": str}]``, named
    ``captions_{val2014|test2014}_{method}_results.json``.
"""

from __future__ import annotations

import json
import numbers
import os
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "ExportError",
    "write_vqa_results",
    "write_textvqa_submission",
    "write_stvqa_submission",
    "write_coco_caption_results",
    "vqav2_results_filename",
    "coco_caption_results_filename",
    "atomic_write_json",
]


class ExportError(ValueError):
    """Invalid predictions for a submission file."""


def vqav2_results_filename(split: str, method: str) -> str:
    """Name the VQA server expects: ``vqa_OpenEnded_mscoco_{split}_{method}_results.json``."""
    if split not in ("test-dev2015", "test2015", "val2014"):
        raise ExportError(f"VQAv2 split must be test-dev2015, test2015 or val2014, got {split!r}")
    return f"vqa_OpenEnded_mscoco_{split}_{method}_results.json"


def coco_caption_results_filename(split: str, method: str) -> str:
    """``captions_{split}_{method}_results.json`` as the COCO caption server expects."""
    if split not in ("val2014", "test2014"):
        raise ExportError(f"COCO caption split must be val2014 or test2014, got {split!r}")
    return f"captions_{split}_{method}_results.json"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to ``path`` atomically (same-folder temp file + fsync + rename)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(path) + ".", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _as_id(value: Any, id_field: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ExportError(f"{where}: {id_field} must be an integer, got {value!r}")
    return int(value)


def _pairs(predictions: Any, id_field: str, text_field: str) -> Iterable[tuple[Any, Any, str]]:
    items = predictions.items() if isinstance(predictions, Mapping) else predictions
    for i, item in enumerate(items):
        where = f"prediction #{i}"
        if isinstance(item, Mapping):
            for field in (id_field, text_field):
                if field not in item:
                    name = f"{id_field}={item[id_field]!r}" if id_field in item else where
                    raise ExportError(f"{name}: missing required field {field!r}")
            yield item[id_field], item[text_field], where
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            yield item[0], item[1], where
        else:
            raise ExportError(
                f"{where}: expected ({id_field}, {text_field}) or a dict, got {item!r}"
            )


def _records(
    predictions: Any, id_field: str, text_field: str, expected_ids: Iterable[int] | None
) -> list[dict]:
    out, seen, dups = [], set(), []
    for raw_id, text, where in _pairs(predictions, id_field, text_field):
        rid = _as_id(raw_id, id_field, where)
        if not isinstance(text, str):
            raise ExportError(f"{id_field}={rid}: {text_field} must be a string, got {text!r}")
        if rid in seen:
            dups.append(rid)
        seen.add(rid)
        out.append({id_field: rid, text_field: text})
    if dups:
        raise ExportError(f"duplicate {id_field}s: {sorted(set(dups))[:10]} ({len(dups)} in all)")
    if expected_ids is not None:
        expected = {_as_id(e, id_field, "expected_ids") for e in expected_ids}
        missing, extra = sorted(expected - seen), sorted(seen - expected)
        if missing or extra:
            raise ExportError(
                f"{id_field}s do not match the expected set: {len(missing)} missing "
                f"{missing[:10]}, {len(extra)} unexpected {extra[:10]}"
            )
    if not out:
        raise ExportError("no predictions to write")
    return out


def _write(path, predictions, id_field, text_field, expected_ids) -> int:
    records = _records(predictions, id_field, text_field, expected_ids)
    atomic_write_json(path, records)
    return len(records)


def write_vqa_results(path, predictions, *, expected_ids=None) -> int:
    """VQAv2 / OK-VQA results ``[{question_id, answer}]``; returns the record count."""
    return _write(path, predictions, "question_id", "answer", expected_ids)


def write_textvqa_submission(path, predictions, *, expected_ids=None) -> int:
    """TextVQA EvalAI submission ``[{question_id, answer}]``; returns the record count."""
    return _write(path, predictions, "question_id", "answer", expected_ids)


def write_stvqa_submission(path, predictions, *, expected_ids=None) -> int:
    """ST-VQA task 3 RRC submission ``[{question_id, answer}]``; returns the record count."""
    return _write(path, predictions, "question_id", "answer", expected_ids)


def write_coco_caption_results(path, predictions, *, expected_ids=None) -> int:
    """COCO caption results ``[{image_id, caption}]``; returns the record count."""
    return _write(path, predictions, "image_id", "caption", expected_ids)
