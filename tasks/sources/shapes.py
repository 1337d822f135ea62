"""In-memory shapes-world source: the tiny analogue of every task, no export.

Splits are disjoint scene-index ranges: train [0, n_train), validation
[n_train, n_train + n_val), test [n_train + n_val, n_train + n_val + n_test).
Examples carry `image` pixels (uint8 [R, R, 3]) and the raw schema of
tasks/preprocessors.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import seqio
import tensorflow as tf

from tasks.sources.common import SIGNATURES, to_tensors

KINDS = {
    "caption": ("id", "image", "captions"),
    "vqa": ("id", "image", "question", "answers", "question_type", "answer_type"),
    "okvqa": ("id", "image", "question", "answers", "question_type", "answer_type"),
    "textvqa": ("id", "image", "question", "answers"),
    "stvqa": ("id", "image", "question", "answers"),
    "tally": ("id", "image", "question", "answers", "issimple"),
    "refexp": ("id", "image", "expressions", "box"),
    "pretrain": ("id", "image", "captions", "region_boxes", "region_texts"),
}


PRETRAIN_REGIONS = ("objects", "objects+refexps")


def example_id(scene_index: int) -> str:
    """The id prefix of a scene's examples: ``shapes/{scene}`` (a task kind adds
    ``/{kind}{j}``, e.g. ``shapes/12/ref0``)."""
    return f"shapes/{scene_index}"


def scene_of(example_id: str) -> int:
    """The scene index of a shapes-world example id (inverse of :func:`example_id`)."""
    parts = str(example_id).split("/")
    if len(parts) < 2 or parts[0] != "shapes" or not parts[1].isdigit():
        raise ValueError(f"not a shapes-world example id: {example_id!r}")
    return int(parts[1])


def scene_examples(scene, kind: str, split: str, pretrain_regions: str = "objects") -> list[dict]:
    """The raw examples of one scene for a task kind (see module doc).

    ``pretrain_regions`` (kind "pretrain"): which (box, text) pairs feed ARef /
    GCap. ``"objects"``: each object's box with its description ("small red
    circle with the word cat"), the analogue of LocCa's detector pseudo-labels
    (OWL-ViT box + class text). ``"objects+refexps"`` adds every referring
    expression (relations and extremes: "the circle below the yellow
    triangle"), which asks the pretraining decoder for spatial reasoning on
    top of localisation.
    """
    if pretrain_regions not in PRETRAIN_REGIONS:
        raise ValueError(
            f"pretrain_regions must be one of {PRETRAIN_REGIONS}, got {pretrain_regions!r}"
        )
    sid = example_id(scene.index)
    base = {"image": scene.image}
    out = []
    if kind == "caption":
        out.append({"id": sid, "captions": list(getattr(scene, "captions", [scene.caption]))})
    elif kind == "vqa":
        for j, q in enumerate(scene.vqa):
            out.append(
                {
                    "id": f"{sid}/vqa{j}",
                    "question": q.question,
                    "answers": list(q.answers),
                    "question_type": q.question_type,
                    "answer_type": q.answer_type,
                }
            )
    elif kind == "okvqa":
        for j, q in enumerate(scene.knowledge):
            out.append(
                {
                    "id": f"{sid}/ok{j}",
                    "question": q.question,
                    "answers": list(q.answers),
                    "question_type": q.question_type,
                    "answer_type": q.answer_type,
                }
            )
    elif kind in ("textvqa", "stvqa"):
        for j, q in enumerate(scene.text_questions):
            answers = q.answers if kind == "textvqa" else q.short_answers
            out.append({"id": f"{sid}/text{j}", "question": q.question, "answers": list(answers)})
    elif kind == "tally":
        for j, q in enumerate(scene.counting):
            out.append(
                {
                    "id": f"{sid}/count{j}",
                    "question": q.question,
                    "answers": [str(int(q.answer))],
                    "issimple": int(bool(q.issimple)),
                }
            )
    elif kind == "refexp":
        if split == "train":  # one example per object, all its expressions
            by_obj: dict[int, list] = {}
            for r in scene.refexps:
                by_obj.setdefault(r.object_index, []).append(r)
            for oi, rs in sorted(by_obj.items()):
                out.append(
                    {"id": f"{sid}/obj{oi}", "expressions": [r.text for r in rs], "box": rs[0].box}
                )
        else:  # evaluation: one example per sentence
            for j, r in enumerate(scene.refexps):
                out.append({"id": f"{sid}/ref{j}", "expressions": [r.text], "box": r.box})
    elif kind == "pretrain":
        boxes = [o.box for o in scene.objects]
        texts = [o.description for o in scene.objects]
        if pretrain_regions == "objects+refexps":
            boxes += [r.box for r in scene.refexps]
            texts += [r.text for r in scene.refexps]
        out.append(
            {
                "id": sid,
                "captions": list(getattr(scene, "captions", [scene.caption])),
                "region_boxes": boxes,
                "region_texts": texts,
            }
        )
    else:
        raise ValueError(f"unknown shapes task kind {kind!r}; kinds: {sorted(KINDS)}")
    return [dict(base, **e) for e in out]


class ShapesSource(seqio.DataSource):
    """seqio DataSource generating shapes-world examples in memory.

    Args:
      kind: one of KINDS.
      resolution: image side in pixels.
      seed: world seed.
      num_train, num_validation, num_test: scenes per split (disjoint ranges).
      cache_in_memory: keep generated examples in memory after the first pass
        (only when the split's images take < 1 GiB).
      pretrain_regions: kind "pretrain" only, see :func:`scene_examples`.
      max_objects: most objects per scene (None: ``ShapesWorld``'s default;
        1 = one-object scenes, a localisation diagnostic without distractors).
    """

    def __init__(
        self,
        kind: str,
        resolution: int = 64,
        seed: int = 0,
        num_train: int = 2000,
        num_validation: int = 200,
        num_test: int = 200,
        cache_in_memory: bool = True,
        pretrain_regions: str = "objects",
        max_objects: int | None = None,
    ):
        if kind not in KINDS:
            raise ValueError(f"unknown shapes task kind {kind!r}; kinds: {sorted(KINDS)}")
        self.kind = kind
        self.resolution = resolution
        self.seed = seed
        self.cache_in_memory = cache_in_memory
        if pretrain_regions not in PRETRAIN_REGIONS:
            raise ValueError(
                f"pretrain_regions must be one of {PRETRAIN_REGIONS}, got {pretrain_regions!r}"
            )
        self.pretrain_regions = pretrain_regions
        self.max_objects = max_objects
        self.ranges = {
            "train": (0, num_train),
            "validation": (num_train, num_train + num_validation),
            "test": (num_train + num_validation, num_train + num_validation + num_test),
        }
        super().__init__(splits=tuple(self.ranges), num_input_examples=None)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str):
        return [split]

    def world(self):
        from locca.data.shapes import ShapesWorld

        extra = {} if self.max_objects is None else {"max_objects": int(self.max_objects)}
        return ShapesWorld(resolution=self.resolution, seed=self.seed, **extra)

    def scene_of(self, example_id: str) -> int:
        """The scene index behind one of this source's example ids."""
        return scene_of(example_id)

    def scene_indices(self, split: str) -> range:
        if split not in self.ranges:
            raise ValueError(f"shapes_{self.kind}: unknown split {split!r}; splits: {self.splits}")
        return range(*self.ranges[split])

    def examples(self, split: str, shuffle=False, seed=None, shard=(0, 1)) -> Iterator[dict]:
        """Raw python examples (the same ones the tf.data pipeline yields)."""
        world = self.world()
        idx = np.asarray(self.scene_indices(split))
        if shuffle:
            np.random.default_rng(seed).shuffle(idx)
        keys = KINDS[self.kind]
        for i in idx[shard[0] :: shard[1]]:
            scene = world.scene(int(i))
            for ex in scene_examples(scene, self.kind, split, self.pretrain_regions):
                yield to_tensors(ex, keys)

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
        self.scene_indices(split)  # validate the split name eagerly
        shard = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
        sig = {k: SIGNATURES[k] for k in KINDS[self.kind]}
        ds = tf.data.Dataset.from_generator(
            lambda: self.examples(split, shuffle, seed, shard), output_signature=sig
        )
        n = len(self.scene_indices(split))
        if self.cache_in_memory and n * self.resolution**2 * 3 * 8 < (1 << 30):
            ds = ds.cache()  # scenes are generated once per process (x8: questions/scene)
        if num_epochs != 1:
            ds = ds.repeat(num_epochs)
        return ds
