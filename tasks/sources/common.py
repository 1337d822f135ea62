"""Shared machinery of the official-format readers.

A reader parses annotation files into a list of plain-dict records (once per
process, cached by path and modification time) and a `RecordSource` turns
them into a seqio DataSource whose tf.data pipeline yields the raw schema of
tasks/preprocessors.py. Images are not read here: a record carries
`image/path`, read lazily inside tf.data by `preprocessors.load_image`.

Errors name the file and the record and say what was expected. Missing,
non-image and truncated image files raise by default; with
`skip_missing_images=True` (or `$LOCCA_SKIP_MISSING_IMAGES=1`, set by every
entry point's `--skip_missing_images` flag) they are skipped, counted per
source and reason and logged (`skip_counts()` returns the counters so an
evaluation can write them beside its metrics).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

log = logging.getLogger(__name__)


class DataFormatError(ValueError):
    """Input data does not match the documented official format."""


# ------------------------------------------------------------------ files


def require_file(path: str, expected: str) -> str:
    """`path` if it is a file, else FileNotFoundError naming it and its format."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: file not found (expected {expected})")
    return path


def find_file(data_dir: str, names: Sequence[str], expected: str, subdirs=("", "annotations")):
    """The first existing `data_dir/{subdir}/{name}`; error listing what was tried."""
    tried = []
    for name in names:
        for sub in subdirs:
            p = os.path.join(data_dir, sub, name) if sub else os.path.join(data_dir, name)
            tried.append(p)
            if os.path.isfile(p):
                return p
    raise FileNotFoundError(
        f"{tried[0]}: file not found (expected {expected}); tried: {', '.join(tried)}"
    )


# Parsed files, most recent last; a few are kept so that repeated passes (epochs,
# splits of one file) do not re-parse, without holding every large file.
_JSON_CACHE: collections.OrderedDict[tuple[str, float, int], Any] = collections.OrderedDict()
_JSON_CACHE_SIZE = 4
_JSON_LOCK = threading.Lock()


def load_json(path: str, expected: str) -> Any:
    """Parses a JSON file (cached per process by path, mtime and size).

    Errors: FileNotFoundError naming the path and expected format;
    DataFormatError naming the file, line, column and character offset.
    """
    require_file(path, expected)
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_mtime, st.st_size)
    with _JSON_LOCK:
        if key in _JSON_CACHE:
            _JSON_CACHE.move_to_end(key)
            return _JSON_CACHE[key]
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataFormatError(
            f"{path}: malformed JSON at line {e.lineno} column {e.colno} (char {e.pos}): "
            f"{e.msg} (expected {expected})"
        ) from e
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not UTF-8 text at byte {e.start} ({expected})") from e
    with _JSON_LOCK:
        _JSON_CACHE[key] = data
        while len(_JSON_CACHE) > _JSON_CACHE_SIZE:
            _JSON_CACHE.popitem(last=False)
    return data


def get_field(rec: Mapping, field: str, path: str, rec_id: Any, types=None):
    """rec[field]; a missing field or wrong type -> DataFormatError naming the
    file, the record id and the field."""
    if not isinstance(rec, Mapping):
        raise DataFormatError(f"{path}: record {rec_id}: expected a JSON object, got {rec!r:.80}")
    if field not in rec:
        raise DataFormatError(f"{path}: record {rec_id}: missing required field '{field}'")
    v = rec[field]
    if types is not None and not isinstance(v, types):
        names = "/".join(t.__name__ for t in types) if isinstance(types, tuple) else types.__name__
        raise DataFormatError(
            f"{path}: record {rec_id}: field '{field}' should be {names}, got {type(v).__name__}"
        )
    return v


def get_list(container: Mapping, key: str, path: str, what: str) -> list:
    """A top-level list field (e.g. `annotations`), with a clear error."""
    if not isinstance(container, Mapping) or key not in container:
        raise DataFormatError(f"{path}: missing top-level '{key}' ({what})")
    v = container[key]
    if not isinstance(v, list):
        raise DataFormatError(f"{path}: top-level '{key}' should be a list ({what})")
    return v


def xywh_to_yxyx(bbox, width: float, height: float, where: str) -> list[float]:
    """COCO [x, y, w, h] pixels (top-left) -> normalised [ymin, xmin, ymax, xmax]."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError) as e:
        raise DataFormatError(f"{where}: bbox should be [x, y, w, h] numbers, got {bbox!r}") from e
    if not (width > 0 and height > 0):
        raise DataFormatError(f"{where}: image width/height must be > 0, got {width}x{height}")
    if w < 0 or h < 0:
        raise DataFormatError(f"{where}: bbox has negative width/height: {bbox!r}")
    box = [y / height, x / width, (y + h) / height, (x + w) / width]
    return [min(1.0, max(0.0, v)) for v in box]


def require_area(box: Sequence[float], bbox, width: float, height: float, where: str) -> list:
    """``box`` (normalised yxyx, clipped) if it covers some of the image, else
    DataFormatError: a zero-size box or one entirely outside the image."""
    if not (box[2] > box[0] and box[3] > box[1]):
        raise DataFormatError(
            f"{where}: bbox {bbox!r} [x, y, w, h] covers no part of the {width:g}x{height:g} "
            "image (zero width/height, or entirely outside it)"
        )
    return list(box)


# ------------------------------------------------------------------ images

SKIP_ENV = "LOCCA_SKIP_MISSING_IMAGES"
SKIP_HINT = (
    "to skip and count such records: the --skip_missing_images flag, "
    f"{SKIP_ENV}=1, or skip_missing_images=True in the task factory"
)
_MAGIC = {  # leading bytes of the formats tf.io.decode_image reads
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
}


def image_problem(path: str) -> tuple[str, str] | None:
    """None for a plausible image file, else (reason, description): reason
    ``missing_image``, ``not_an_image`` (no JPEG/PNG/GIF/BMP signature) or
    ``truncated_image`` (a JPEG without its end marker, a PNG without IEND).
    Reads the first and last bytes only (no decode)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4096))
            tail = f.read()
    except FileNotFoundError:
        return "missing_image", "file not found"
    except OSError as e:
        return "missing_image", f"cannot be read ({e.strerror or e})"
    kind = next((k for m, k in _MAGIC.items() if head.startswith(m)), None)
    if kind is None:
        return "not_an_image", (
            f"not a JPEG/PNG/GIF/BMP file ({size} bytes, starts with {head[:8]!r})"
        )
    if kind == "JPEG" and b"\xff\xd9" not in tail:
        return "truncated_image", f"truncated JPEG ({size} bytes, no end-of-image marker)"
    if kind == "PNG" and b"IEND" not in tail:
        return "truncated_image", f"truncated PNG ({size} bytes, no IEND chunk)"
    return None


# ------------------------------------------------------------------ skip counters


@dataclasses.dataclass
class SkipCounter:
    """Counts records a source skipped in its latest pass, by reason."""

    name: str
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: list = dataclasses.field(default_factory=list)  # up to 10 offending paths

    def reset(self):
        self.counts = collections.Counter()
        self.examples = []

    def add(self, reason: str, detail: str):
        self.counts[reason] += 1
        if len(self.examples) < 10:
            self.examples.append(detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        return {"source": self.name, "skipped": dict(self.counts), "examples": list(self.examples)}


_COUNTERS: dict[str, SkipCounter] = {}


def skip_counter(name: str) -> SkipCounter:
    if name not in _COUNTERS:
        _COUNTERS[name] = SkipCounter(name)
    return _COUNTERS[name]


def skip_counts() -> dict[str, dict]:
    """Skip counters of every source that skipped something (for eval output)."""
    return {k: c.as_dict() for k, c in _COUNTERS.items() if c.total}


# ------------------------------------------------------------------ tf.data


# Raw-schema signatures (see tasks/preprocessors.py).
_STR = tf.TensorSpec([], tf.string)
_STRS = tf.TensorSpec([None], tf.string)
SIGNATURES: dict[str, tf.TensorSpec] = {
    "id": _STR,
    "image/path": _STR,
    "image": tf.TensorSpec([None, None, 3], tf.uint8),
    "captions": _STRS,
    "question": _STR,
    "answers": _STRS,
    "question_id": tf.TensorSpec([], tf.int64),
    "question_type": _STR,
    "answer_type": _STR,
    "issimple": tf.TensorSpec([], tf.int32),  # 1 simple, 0 complex, -1 unknown
    "expressions": _STRS,
    "box": tf.TensorSpec([4], tf.float64),
    "region_boxes": tf.TensorSpec([None, 4], tf.float64),
    "region_texts": _STRS,
}


def to_tensors(rec: Mapping[str, Any], keys: Sequence[str]) -> dict:
    """A record dict -> numpy values matching SIGNATURES."""
    out = {}
    for k in keys:
        v = rec[k]
        spec = SIGNATURES[k]
        if spec.dtype == tf.string:
            out[k] = np.asarray(v, dtype=object) if spec.shape.rank else str(v)
            if spec.shape.rank and out[k].shape == (0,):
                out[k] = np.zeros([0], dtype=object)
        elif k == "region_boxes":
            out[k] = np.asarray(v, dtype=np.float64).reshape(-1, 4)
        else:
            out[k] = np.asarray(v, dtype=spec.dtype.as_numpy_dtype)
    return out


class RecordSource(seqio.DataSource):
    """seqio DataSource over parsed records, yielding the raw schema.

    Args:
      name: source name (used for skip counters and logs).
      records_fn: `split -> list[dict]`, called lazily (when the dataset is
        requested, never at registration).
      splits: split names.
      keys: which raw features records carry (keys of SIGNATURES).
      skip_missing_images: skip (and count, by reason) records whose
        `image/path` is missing, not an image or truncated, instead of
        raising; None (default) = `$LOCCA_SKIP_MISSING_IMAGES`.
    """

    def __init__(
        self,
        name: str,
        records_fn: Callable[[str], list[dict]],
        splits: Sequence[str],
        keys: Sequence[str],
        skip_missing_images: bool | None = None,
    ):
        self._name = name
        self._records_fn = records_fn
        self._keys = tuple(keys)
        self.skip_missing_images = skip_missing_images
        super().__init__(splits=tuple(splits), num_input_examples=None)

    @property
    def skip(self) -> bool:
        """``skip_missing_images``; None = ``$LOCCA_SKIP_MISSING_IMAGES`` (the
        entry points' ``--skip_missing_images`` flag sets it)."""
        if self.skip_missing_images is not None:
            return bool(self.skip_missing_images)
        return os.environ.get(SKIP_ENV, "").strip().lower() in ("1", "true", "yes", "on")

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True  # records are dealt round-robin to shards

    def list_shards(self, split: str) -> Sequence[str]:
        return [split]

    def counter(self, split: str) -> SkipCounter:
        return skip_counter(f"{self._name}:{split}")

    def records(self, split: str) -> list[dict]:
        if split not in self.splits:
            raise ValueError(f"{self._name}: unknown split {split!r}; splits: {self.splits}")
        return self._records_fn(split)

    def _generate(
        self, split: str, shuffle: bool, seed: int | None, shard_index: int, num_shards: int
    ) -> Iterator[dict]:
        recs = self.records(split)
        order = np.arange(len(recs))
        if shuffle:
            np.random.default_rng(seed).shuffle(order)
        counter = self.counter(split)
        counter.reset()
        for j in order[shard_index::num_shards]:
            rec = recs[int(j)]
            path = rec.get("image/path")
            problem = None if path is None else image_problem(path)
            if problem is not None:
                reason, what = problem
                if not self.skip:
                    rid = rec.get("id")
                    if reason == "missing_image":
                        raise FileNotFoundError(
                            f"{self._name}: record {rid}: image not found: {path} "
                            f"({what}; {SKIP_HINT})"
                        )
                    raise DataFormatError(
                        f"{self._name}: record {rid}: image {path}: {what} ({SKIP_HINT})"
                    )
                counter.add(reason, path)
                continue
            yield to_tensors(rec, self._keys)
        if counter.total:
            log.warning(
                "%s (%s): skipped %d records: %s",
                self._name,
                split,
                counter.total,
                counter.as_dict(),
            )

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length=None,
        use_cached: bool = False,
        num_epochs: int | None = 1,
    ) -> tf.data.Dataset:
        del sequence_length, use_cached
        idx, n = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
        sig = {k: SIGNATURES[k] for k in self._keys}
        ds = tf.data.Dataset.from_generator(
            lambda: self._generate(split, shuffle, seed, idx, n), output_signature=sig
        )
        if num_epochs != 1:
            ds = ds.repeat(num_epochs)
        return ds
