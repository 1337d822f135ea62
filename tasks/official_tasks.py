"""Tasks over the official dataset files (read as downloaded; FORMATS.md).

Registered (data dir key in parentheses; default `$LOCCA_DATA_DIR/<key>`):
  coco_captions        Karpathy split: train (= train+restval), validation, test   (coco)
  coco_captions_2014   annotation files: train, validation, test                   (coco)
  coco_captions_2017                                                               (coco)
  vqav2   train, validation, minival, val-minival, train+val-minival, test, test-dev (vqav2)
  okvqa   train, validation                                                        (okvqa)
  textvqa train, validation, test                                                  (textvqa)
  stvqa   train, validation (held out by image), train_full, test                  (stvqa)
  tallyqa train, test, test_simple, test_complex                                   (tallyqa)
  refcoco / refcoco_plus (unc: train, validation, testA, testB),
  refcocog (umd: train, validation, test)                                          (refcoco)
  refcoco_all          mixture of the three
  coco_captions_tfds, refcoco_tfds  TFDS alternatives (tfds data dir key: tfds)
Pretraining: coco_pretrain (coco), vg_pretrain (vg), refcoco_pretrain
(refcoco), jsonl_pretrain (jsonl).

Each `make_*_task` factory registers a variant under another name with an
explicit data_dir / image_dir / image_size / skip_missing_images (entry points
bind these with gin). Image folders default to the data dir; override with
`image_dir=` or `set_data_dir("<key>_images", path)`. Datasets over COCO
images (VQAv2, OK-VQA, RefCOCO/+/g, TallyQA's COCO part, refcoco_pretrain)
find them under `$LOCCA_DATA_DIR/coco/{train2014,val2014,...}` (or a `coco/`
folder beside their own) unless their own folder holds COCO folders; per
dataset: `coco_image_dir=` (see `coco_image_root`). skip_missing_images
defaults to `$LOCCA_SKIP_MISSING_IMAGES` (the entry points' --skip_missing_images).
"""

from __future__ import annotations

import functools
import os

from tasks import registry
from tasks.pretrain_tasks import make_pretrain_task
from tasks.shapes_tasks import _METRICS, format_for, postprocessor_for
from tasks.sources import coco, refcoco, regions, text_count, tfds_sources, vqa
from tasks.sources.common import RecordSource

DEFAULT_IMAGE_SIZE = 224

_TEXT_KEYS = ("id", "image/path")
KEYS = {
    "caption": _TEXT_KEYS + ("captions",),
    "vqa": _TEXT_KEYS + ("question", "answers", "question_id", "question_type", "answer_type"),
    "textvqa": _TEXT_KEYS + ("question", "answers", "question_id"),
    "tally": _TEXT_KEYS + ("question", "answers", "question_id", "issimple"),
    "refexp": _TEXT_KEYS + ("expressions", "box"),
    "pretrain": _TEXT_KEYS + ("captions", "region_boxes", "region_texts"),
}


def _dirs(key: str, data_dir, image_dir):
    """Lazily resolved (data_dir, image_dir) for dataset `key`."""
    d = registry.resolve_data_dir(key, data_dir)
    return d, image_dir or registry.image_dir_override(key) or d


COCO_FOLDERS = ("train2014", "val2014", "test2015", "train2017", "val2017", "test2017")


def _has_coco_folders(d: str) -> bool:
    return any(os.path.isdir(os.path.join(d, f)) for f in COCO_FOLDERS)


def coco_image_root(dataset_dir: str, coco_image_dir: str | None = None) -> str | None:
    """Where the COCO image folders (``train2014/``, ``val2014/``...) of a
    dataset that refers to COCO images are, or None (then: ``dataset_dir``).

    In order: ``coco_image_dir`` (the per-dataset override), the dataset's own
    folder when it holds COCO folders itself (the older layout), the COCO
    folder (``set_data_dir("coco_images" | "coco", ...)`` or
    ``$LOCCA_DATA_DIR/coco``), a ``coco/`` folder beside the dataset's folder.
    """
    if coco_image_dir:
        return os.fspath(coco_image_dir)
    if _has_coco_folders(dataset_dir):
        return None
    candidates = [registry.image_dir_override("coco")]
    try:
        candidates.append(registry.resolve_data_dir("coco"))
    except FileNotFoundError:
        pass
    candidates.append(os.path.join(os.path.dirname(os.path.abspath(dataset_dir)), "coco"))
    return next((c for c in candidates if c and os.path.isdir(c)), None)


def make_source(name, key, reader, splits, kind, *, data_dir=None, image_dir=None,
                skip_missing_images=None, coco_images=None, coco_image_dir=None,
                **reader_kwargs) -> RecordSource:  # fmt: skip
    """A RecordSource calling `reader(split, data_dir, image_dir, **kw)` lazily.

    coco_images: None (the dataset has its own images), "all" (every image is
    a COCO image: image_dir defaults to :func:`coco_image_root`) or "part"
    (some are: the reader gets ``coco_image_dir=``). ``coco_image_dir``
    overrides where this dataset's COCO images are.
    """

    def records_fn(split):
        d, i = _dirs(key, data_dir, image_dir)
        kw = dict(reader_kwargs)
        explicit = image_dir or registry.image_dir_override(key)
        if coco_images == "all" and not explicit:
            i = coco_image_root(d, coco_image_dir) or d
        elif coco_images == "part":
            kw["coco_image_dir"] = coco_image_dir or (None if explicit else coco_image_root(d))
        return reader(split, d, i, **kw)

    return RecordSource(name, records_fn, splits, KEYS[kind], skip_missing_images)


def make_task(
    name: str,
    source,
    kind: str,
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    box_encoding: str = "text",
    num_bins: int | None = None,
    box_order: str = "yxyx",
    vocabulary=None,
    source_config: dict,
):
    """Registers (idempotently) a `kind` task over `source`; source_config: the
    factory arguments that define the source (compared on re-registration,
    see tasks.registry.add_task)."""
    config = dict(source_config, kind=kind, image_size=image_size, box_encoding=box_encoding,
                  num_bins=num_bins, box_order=box_order, vocabulary=vocabulary)  # fmt: skip
    return registry.add_task(
        name,
        config=config,
        source=source,
        preprocessors=registry.text_preprocessors(
            image_size, format_for(kind, box_encoding, num_bins, box_order)
        ),
        output_features=registry.output_features(vocabulary),
        postprocess_fn=postprocessor_for(kind, box_encoding, num_bins, box_order),
        metric_fns=_METRICS[kind],
    )


def _task_kwargs(kw):
    keys = ("image_size", "box_encoding", "num_bins", "box_order", "vocabulary")
    return {k: kw.pop(k) for k in keys if k in kw}


# ------------------------------------------------------------------ factories


def make_coco_captions_task(name="coco_captions", *, karpathy=True, year=2014, **kw):
    tk = _task_kwargs(kw)
    tk["source_config"] = dict(kw, factory="coco_captions", karpathy=karpathy, year=year)
    if karpathy:
        splits = ("train", "validation", "test", "restval")
        src = make_source(name, "coco", coco.karpathy_records, splits, "caption", **kw)
    else:
        reader = functools.partial(coco.caption_records, year=year)
        src = make_source(name, "coco", reader, ("train", "validation", "test"), "caption", **kw)
    return make_task(name, src, "caption", **tk)


def make_vqav2_task(name="vqav2", **kw):
    tk = _task_kwargs(kw)
    tk["source_config"] = dict(kw, factory="vqav2")
    src = make_source(
        name, "vqav2", vqa.vqav2_records, vqa.VQAV2_SPLITS, "vqa", coco_images="all", **kw
    )
    return make_task(name, src, "vqa", **tk)


def make_okvqa_task(name="okvqa", **kw):
    tk = _task_kwargs(kw)
    tk["source_config"] = dict(kw, factory="okvqa")
    src = make_source(
        name, "okvqa", vqa.okvqa_records, vqa.OKVQA_SPLITS, "vqa", coco_images="all", **kw
    )
    return make_task(name, src, "okvqa", **tk)


def make_textvqa_task(name="textvqa", **kw):
    tk = _task_kwargs(kw)
    tk["source_config"] = dict(kw, factory="textvqa")
    splits = tuple(text_count.TEXTVQA_SPLITS)
    src = make_source(name, "textvqa", text_count.textvqa_records, splits, "textvqa", **kw)
    return make_task(name, src, "textvqa", **tk)


def make_stvqa_task(name="stvqa", *, val_fraction=text_count.STVQA_VAL_FRACTION, **kw):
    tk = _task_kwargs(kw)
    tk["source_config"] = dict(kw, factory="stvqa", val_fraction=val_fraction)
    reader = functools.partial(text_count.stvqa_records, val_fraction=val_fraction)
    src = make_source(name, "stvqa", reader, text_count.STVQA_SPLITS, "textvqa", **kw)
    return make_task(name, src, "stvqa", **tk)


def make_tallyqa_task(name="tallyqa", **kw):
    tk = _task_kwargs(kw)
    tk["source_config"] = dict(kw, factory="tallyqa")
    src = make_source(name, "tallyqa", text_count.tallyqa_records, text_count.TALLY_SPLITS,
                      "tally", coco_images="part", **kw)  # fmt: skip
    return make_task(name, src, "tally", **tk)


def make_refcoco_task(name="refcoco", *, dataset="refcoco", partition=None, **kw):
    tk = _task_kwargs(kw)
    tk["source_config"] = dict(kw, factory="refcoco", dataset=dataset, partition=partition)
    folder, default_part = refcoco.DATASETS[dataset]
    part = partition or default_part
    splits = tuple("validation" if s == "val" else s for s in refcoco.PARTITION_SPLITS[part])

    def reader(split, d, i):
        return refcoco.records(dataset, split, d, i, partition=part)

    src = make_source(name, "refcoco", reader, splits, "refexp", coco_images="all", **kw)
    return make_task(name, src, "refexp", **tk)


def make_coco_captions_tfds_task(name="coco_captions_tfds", *, data_dir=None, **kw):
    src = tfds_sources.coco_captions_source(lambda: registry.resolve_data_dir("tfds", data_dir))
    source_config = dict(factory="coco_captions_tfds", data_dir=data_dir)
    return make_task(name, src, "caption", source_config=source_config, **kw)


def make_refcoco_tfds_task(name="refcoco_tfds", *, config="refcoco_unc", data_dir=None, **kw):
    splits = {"refcoco_unc": ("train", "validation", "testA", "testB"),
              "refcocoplus_unc": ("train", "validation", "testA", "testB"),
              "refcocog_umd": ("train", "validation", "test"),
              "refcoco_google": ("train", "validation", "test"),
              "refcocog_google": ("train", "validation")}[config]  # fmt: skip
    src = tfds_sources.ref_coco_source(
        lambda: registry.resolve_data_dir("tfds", data_dir), config, splits
    )
    source_config = dict(factory="refcoco_tfds", config=config, data_dir=data_dir)
    return make_task(name, src, "refexp", source_config=source_config, **kw)


# ------------------------------------------------------------------ pretraining


_SOURCE_KW = ("data_dir", "image_dir", "skip_missing_images", "coco_image_dir")


def _pretrain(name, source, kw, source_config):
    tk = _task_kwargs(kw)
    tk.setdefault("image_size", DEFAULT_IMAGE_SIZE)
    return make_pretrain_task(name, source, source_config=source_config, **tk)


def make_coco_pretrain_task(name="coco_pretrain", *, year=2014, **kw):
    reader = functools.partial(coco.pretrain_records, year=year)
    tk = {k: kw.pop(k) for k in list(kw) if k not in _SOURCE_KW}
    src = make_source(name, "coco", reader, ("train", "validation"), "pretrain", **kw)
    return _pretrain(name, src, tk, dict(kw, factory="coco_pretrain", year=year))


def make_vg_pretrain_task(name="vg_pretrain", **kw):
    tk = {k: kw.pop(k) for k in list(kw) if k not in _SOURCE_KW}
    src = make_source(name, "vg", regions.vg_records, ("train",), "pretrain", **kw)
    return _pretrain(name, src, tk, dict(kw, factory="vg_pretrain"))


def make_refcoco_pretrain_task(name="refcoco_pretrain", *, dataset="refcoco", **kw):
    tk = {k: kw.pop(k) for k in list(kw) if k not in _SOURCE_KW}

    def reader(split, d, i):
        return refcoco.pretrain_records(dataset, split, d, i)

    src = make_source(
        name, "refcoco", reader, ("train", "validation"), "pretrain", coco_images="all", **kw
    )
    return _pretrain(name, src, tk, dict(kw, factory="refcoco_pretrain", dataset=dataset))


def make_jsonl_pretrain_task(name="jsonl_pretrain", *, min_score=0.3, splits=("train",
                             "validation"), **kw):  # fmt: skip
    tk = {k: kw.pop(k) for k in list(kw) if k not in _SOURCE_KW}

    def reader(split, d, i):
        del i
        return regions.jsonl_records(split, d, min_score=min_score)

    src = make_source(name, "jsonl", reader, splits, "pretrain", **kw)
    source_config = dict(kw, factory="jsonl_pretrain", min_score=min_score, splits=splits)
    return _pretrain(name, src, tk, source_config)


# ------------------------------------------------------------------ registration


def register() -> None:
    make_coco_captions_task("coco_captions", karpathy=True)
    make_coco_captions_task("coco_captions_2014", karpathy=False, year=2014)
    make_coco_captions_task("coco_captions_2017", karpathy=False, year=2017)
    make_vqav2_task()
    make_okvqa_task()
    make_textvqa_task()
    make_stvqa_task()
    make_tallyqa_task()
    make_refcoco_task("refcoco", dataset="refcoco")
    make_refcoco_task("refcoco_plus", dataset="refcoco_plus")
    make_refcoco_task("refcocog", dataset="refcocog")
    registry.add_mixture("refcoco_all", ["refcoco", "refcoco_plus", "refcocog"])
    make_coco_captions_tfds_task()
    make_refcoco_tfds_task()


def register_pretrain() -> None:
    make_coco_pretrain_task()
    make_vg_pretrain_task()
    make_refcoco_pretrain_task()
    make_jsonl_pretrain_task()
