"""LocCa pretraining tasks: examples carry `image` and three targets.

  cap   a caption (one sampled per example)
  aref  `ARef : {c} : {b}`   region text then its box   (one region sampled)
  gcap  `GCap : {b} : {c}`   box then its region text   (another region sampled)
Boxes go through the box codec (text encoding, 500 bins by default).

Registered: shapes_pretrain (in memory); readers-based coco_pretrain,
vg_pretrain, refcoco_pretrain, jsonl_pretrain (see tasks/sources/jsonl.py for
the JSONL format). Examples without any region or non-empty caption are
dropped (on the raw fields, before the cache placeholder).
"""

from __future__ import annotations

import seqio

from tasks import preprocessors as prep
from tasks import registry
from tasks.sources.shapes import ShapesSource


def pretrain_preprocessors(image_size: int, box_encoding="text", num_bins=None, order="yxyx"):
    return [
        prep.require_regions_and_caption(),  # on raw fields: one output per kept example
        seqio.CacheDatasetPlaceholder(),
        prep.load_image(image_size),
        prep.pretrain_format(box_encoding, num_bins, order),
        seqio.preprocessors.tokenize,
        seqio.preprocessors.append_eos_after_trim,
    ]


def make_pretrain_task(
    name: str,
    source,
    *,
    image_size: int,
    box_encoding: str = "text",
    num_bins: int | None = None,
    box_order: str = "yxyx",
    vocabulary=None,
    source_config: dict,
):
    """Registers (idempotently) a LocCa pretraining task over `source` (any
    source yielding the raw schema with captions + region_boxes/texts);
    source_config: the arguments that define the source (compared on
    re-registration, see tasks.registry.add_task)."""
    config = dict(source_config, kind="pretrain", image_size=image_size,
                  box_encoding=box_encoding, num_bins=num_bins, box_order=box_order,
                  vocabulary=vocabulary)  # fmt: skip
    return registry.add_task(
        name,
        config=config,
        source=source,
        preprocessors=pretrain_preprocessors(image_size, box_encoding, num_bins, box_order),
        output_features=registry.pretrain_output_features(vocabulary),
        metric_fns=[],
    )


def make_shapes_pretrain_task(
    name: str = "shapes_pretrain",
    *,
    resolution: int = 64,
    image_size: int | None = None,
    seed: int = 0,
    num_train: int = 2000,
    num_validation: int = 200,
    num_test: int = 200,
    pretrain_regions: str = "objects",
    max_objects: int | None = None,
    **kwargs,
):
    """Registers a shapes-world pretraining task; ``pretrain_regions`` picks the
    ARef/GCap regions (``tasks.sources.shapes.scene_examples``), ``max_objects``
    bounds the objects per scene (1: the one-object diagnostic), ``kwargs`` go to
    :func:`make_pretrain_task` (``box_encoding``, ``num_bins``, ``box_order``)."""
    source = ShapesSource(
        "pretrain",
        resolution=resolution,
        seed=seed,
        num_train=num_train,
        num_validation=num_validation,
        num_test=num_test,
        pretrain_regions=pretrain_regions,
        max_objects=max_objects,
    )
    source_config = dict(factory="shapes_pretrain", resolution=resolution, seed=seed,
                         num_train=num_train, num_validation=num_validation, num_test=num_test,
                         pretrain_regions=pretrain_regions, max_objects=max_objects)  # fmt: skip
    return make_pretrain_task(
        name, source, image_size=image_size or resolution, source_config=source_config, **kwargs
    )


def register() -> None:
    make_shapes_pretrain_task()
