"""Reading annotation/result files for the evaluators, with errors that say what is wrong.

Every problem raises :class:`MetricInputError` (a ``ValueError``) whose message
names the file, the record (by its id when it has one) and what was expected.
Standard library only (no numpy, no project imports).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "MetricInputError",
    "load_json",
    "load_jsonl",
    "require",
    "records_list",
    "index_predictions",
    "check_missing",
]


class MetricInputError(ValueError):
    """Bad evaluator input: a missing/malformed file, a bad record, missing ids."""


def _open_text(path: str | os.PathLike, expected: str) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MetricInputError(f"{path}: file not found (expected {expected})")
    if os.path.isdir(path):
        raise MetricInputError(f"{path}: is a directory (expected a file: {expected})")
    with open(path, encoding="utf-8") as f:
        return f.read()


def load_json(path: str | os.PathLike, expected: str) -> Any:
    """Parse a JSON file; ``expected`` describes the format for error messages."""
    text = _open_text(path, expected)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise MetricInputError(
            f"{os.fspath(path)}:{e.lineno}:{e.colno}: malformed JSON ({e.msg}); expected {expected}"
        ) from e


def load_jsonl(path: str | os.PathLike, expected: str) -> list[Any]:
    """Parse a JSON-lines file (blank lines skipped); errors name the line."""
    text = _open_text(path, expected)
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise MetricInputError(
                f"{os.fspath(path)}:{lineno}:{e.colno}: malformed JSON line ({e.msg}); "
                f"expected {expected}"
            ) from e
    return out


def _describe(record: Any, id_field: str | None, index: int | None) -> str:
    if id_field and isinstance(record, Mapping) and id_field in record:
        return f"record with {id_field}={record[id_field]!r}"
    if index is not None:
        return f"record #{index}"
    return "record"


def _type_ok(value: Any, types: type | tuple[type, ...]) -> bool:
    tt = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in tt:  # JSON true is not an id or a count
        return False
    return isinstance(value, tt)


def require(
    record: Any,
    field: str,
    path: str | os.PathLike,
    *,
    id_field: str | None = None,
    index: int | None = None,
    types: type | tuple[type, ...] | None = None,
) -> Any:
    """``record[field]``, or an error naming the file, the record and the field."""
    where = f"{os.fspath(path)}: {_describe(record, id_field, index)}"
    if not isinstance(record, Mapping):
        raise MetricInputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if field not in record:
        raise MetricInputError(f"{where}: missing required field {field!r}")
    value = record[field]
    if types is not None and not _type_ok(value, types):
        tt = types if isinstance(types, tuple) else (types,)
        names = "/".join(t.__name__ for t in tt)
        raise MetricInputError(
            f"{where}: field {field!r} must be {names}, got {type(value).__name__} {value!r}"
        )
    return value


def records_list(data: Any, path: str | os.PathLike, key: str | None, expected: str) -> list:
    """The list of records of a file: ``data`` itself (key None) or ``data[key]``."""
    if key is None:
        if not isinstance(data, list):
            raise MetricInputError(
                f"{os.fspath(path)}: top level must be a JSON array, got "
                f"{type(data).__name__}; expected {expected}"
            )
        return data
    if not isinstance(data, Mapping) or key not in data:
        raise MetricInputError(
            f"{os.fspath(path)}: expected a JSON object with key {key!r} ({expected})"
        )
    if not isinstance(data[key], list):
        raise MetricInputError(f"{os.fspath(path)}: {key!r} must be a JSON array")
    return data[key]


def index_predictions(
    results: Sequence[Any],
    path: str | os.PathLike,
    *,
    id_field: str,
    value_field: str,
    value_types: type | tuple[type, ...] = str,
) -> dict:
    """Results records -> {id: value}; ids must be ints (not bools) and unique."""
    out: dict = {}
    dups = []
    for i, rec in enumerate(results):
        qid = require(rec, id_field, path, id_field=id_field, index=i, types=int)
        value = require(rec, value_field, path, id_field=id_field, index=i, types=value_types)
        if qid in out:
            dups.append(qid)
        out[qid] = value
    if dups:
        raise MetricInputError(
            f"{os.fspath(path)}: duplicate {id_field} values {_head(sorted(set(dups)))}"
        )
    return out


def _head(ids: Sequence, n: int = 10) -> str:
    ids = list(ids)
    shown = ", ".join(str(i) for i in ids[:n])
    return f"[{shown}{', ...' if len(ids) > n else ''}] ({len(ids)} in all)"


def check_missing(
    gt_ids: Iterable,
    pred_ids: Iterable,
    results_path: str | os.PathLike,
    *,
    allow_missing: bool,
    id_name: str = "question_id",
) -> list:
    """Validate prediction ids against ground-truth ids; returns the missing ids.

    Predictions for ids not in the ground truth are always an error (as in the
    official VQA API). Missing predictions are an error unless
    ``allow_missing`` (then the caller scores them as wrong and reports the count).
    """
    gt = list(gt_ids)
    gt_set = set(gt)
    pred_set = set(pred_ids)
    extra = sorted(pred_set - gt_set, key=str)
    if extra:
        raise MetricInputError(
            f"{os.fspath(results_path)}: predictions for {id_name}s not in the annotations: "
            f"{_head(extra)}"
        )
    missing = [i for i in gt if i not in pred_set]
    if missing and not allow_missing:
        raise MetricInputError(
            f"{os.fspath(results_path)}: no prediction for {id_name}s {_head(missing)}; "
            "pass --allow_missing to score them as wrong"
        )
    return missing
