"""Shapes-world analogues of every transfer task, generated in memory.

Registered names (splits train / validation / test = disjoint scene ranges):
  shapes_caption   `caption en` -> caption                    (CIDEr)
  shapes_vqa       `answer en {q}` -> one of 10 answers       (VQA accuracy)
  shapes_okvqa     knowledge questions                        (VQA accuracy)
  shapes_textvqa   text-reading questions, 10 answers         (VQA accuracy)
  shapes_stvqa     text-reading questions, short answers      (ANLS)
  shapes_tally     counting, simple and complex               (exact match)
  shapes_refexp    `locate en {expression}` -> box text       (Acc@0.5)
  shapes_all       mixture of the above (rates = example counts, roughly equal)
`make_shapes_task(...)` registers variants (other resolution/sizes/seed).
"""

from __future__ import annotations

from tasks import preprocessors as prep
from tasks import registry
from tasks.sources.shapes import ShapesSource

DEFAULT_RESOLUTION = 64
DEFAULT_SIZES = {"num_train": 2000, "num_validation": 200, "num_test": 200}

# kind -> (format preprocessor factory, metric list, postprocessor)
_METRICS = {
    "caption": [registry.lazy_metric("cider", "cider")],
    "vqa": [registry.lazy_metric("vqa", "vqa_accuracy")],
    "okvqa": [registry.lazy_metric("vqa", "vqa_accuracy")],
    "textvqa": [registry.lazy_metric("vqa", "vqa_accuracy")],
    "stvqa": [registry.lazy_metric("anls", "anls")],
    "tally": [registry.lazy_metric("tally", "tally_accuracy")],
    "refexp": [registry.lazy_metric("rec", "rec_accuracy")],
}

SHAPES_TASKS = {
    "shapes_caption": "caption",
    "shapes_vqa": "vqa",
    "shapes_okvqa": "okvqa",
    "shapes_textvqa": "textvqa",
    "shapes_stvqa": "stvqa",
    "shapes_tally": "tally",
    "shapes_refexp": "refexp",
}


def format_for(kind: str, box_encoding="text", num_bins=None, order="yxyx"):
    if kind == "caption":
        return prep.caption_format()
    if kind == "refexp":
        return prep.rec_format(encoding=box_encoding, num_bins=num_bins, order=order)
    return prep.vqa_format()


def postprocessor_for(kind: str, box_encoding="text", num_bins=None, order="yxyx"):
    if kind == "refexp":
        return registry.rec_postprocessor_factory(box_encoding, num_bins, order)
    return registry.text_postprocessor


def make_shapes_task(
    name: str,
    kind: str,
    *,
    resolution: int = DEFAULT_RESOLUTION,
    image_size: int | None = None,
    seed: int = 0,
    num_train: int = DEFAULT_SIZES["num_train"],
    num_validation: int = DEFAULT_SIZES["num_validation"],
    num_test: int = DEFAULT_SIZES["num_test"],
    box_encoding: str = "text",
    num_bins: int | None = None,
    box_order: str = "yxyx",
    vocabulary=None,
):
    """Registers (idempotently) a shapes-world task of `kind` under `name`.

    resolution: rendered image side (pixels); image_size: the task's image
    side (default = resolution; the feature converter may resize again).
    """
    source = ShapesSource(
        kind,
        resolution=resolution,
        seed=seed,
        num_train=num_train,
        num_validation=num_validation,
        num_test=num_test,
    )
    config = dict(factory="shapes", kind=kind, resolution=resolution, image_size=image_size,
                  seed=seed, num_train=num_train, num_validation=num_validation,
                  num_test=num_test, box_encoding=box_encoding, num_bins=num_bins,
                  box_order=box_order, vocabulary=vocabulary)  # fmt: skip
    return registry.add_task(
        name,
        config=config,
        source=source,
        preprocessors=registry.text_preprocessors(
            image_size or resolution, format_for(kind, box_encoding, num_bins, box_order)
        ),
        output_features=registry.output_features(vocabulary),
        postprocess_fn=postprocessor_for(kind, box_encoding, num_bins, box_order),
        metric_fns=_METRICS[kind],
    )


def register() -> None:
    for name, kind in SHAPES_TASKS.items():
        make_shapes_task(name, kind)
    registry.add_mixture("shapes_all", list(SHAPES_TASKS))
