"""Optional TFDS alternatives (`coco_captions`, `ref_coco`), read with
`tfds.load(..., data_dir=..., download=False)` from an already prepared TFDS
directory. They map TFDS features onto the raw schema of
tasks/preprocessors.py. Not exercised by the tests (no TFDS data offline).
"""

from __future__ import annotations

import seqio
import tensorflow as tf


def _load(name, split, data_dir, shuffle_files, seed):
    import tensorflow_datasets as tfds

    read_config = tfds.ReadConfig(shuffle_seed=seed) if seed is not None else None
    return tfds.load(
        name,
        split=split,
        data_dir=data_dir,
        download=False,
        shuffle_files=shuffle_files,
        read_config=read_config,
    )


def coco_captions_source(data_dir_fn, name: str = "coco_captions") -> seqio.DataSource:
    """TFDS `coco_captions` (Karpathy splits: train, val, test, restval).
    seqio splits: train (= train+restval), validation, test."""
    splits = {"train": "train+restval", "validation": "val", "test": "test"}

    def dataset_fn(split, shuffle_files, seed=None):
        ds = _load(name, splits[split], data_dir_fn(), shuffle_files, seed)
        return ds.map(
            lambda ex: {
                "id": tf.strings.as_string(ex["image/id"]),
                "image": ex["image"],
                "captions": ex["captions"]["text"],
            }
        )

    return seqio.FunctionDataSource(dataset_fn, splits=list(splits))


def ref_coco_source(
    data_dir_fn, config: str = "refcoco_unc", splits=("train", "validation", "testA", "testB")
) -> seqio.DataSource:
    """TFDS `ref_coco/<config>`; one example per object (train) or per
    referring expression (other splits); boxes are TFDS's normalised yxyx."""
    tfds_split = {"validation": "validation"}

    def dataset_fn(split, shuffle_files, seed=None):
        ds = _load(f"ref_coco/{config}", tfds_split.get(split, split), data_dir_fn(),
                   shuffle_files, seed)  # fmt: skip
        per_sentence = split != "train"

        def explode(ex):
            objs = ex["objects"]
            boxes = tf.cast(objs["bbox"], tf.float64)  # [n, 4] yxyx normalised
            raws = objs["refexp"]["raw"]  # [n, max_refs], padded with "" (or ragged)
            if isinstance(raws, tf.RaggedTensor):
                raws = raws.to_tensor(default_value="")
            n = tf.minimum(tf.shape(boxes)[0], tf.shape(raws)[0])
            boxes, raws = boxes[:n], raws[:n]
            raws = tf.RaggedTensor.from_tensor(raws, padding="")  # drop the padding
            if per_sentence:
                d = {
                    "expressions": tf.reshape(raws.flat_values, [-1, 1]),
                    "box": tf.gather(boxes, raws.value_rowids()),
                    "k": tf.range(tf.size(raws.flat_values)),
                }
            else:
                d = {"expressions": raws, "box": boxes, "k": tf.range(tf.shape(boxes)[0])}
            image, iid = ex["image"], tf.strings.as_string(ex["image/id"])

            def add(e):
                exprs = e["expressions"]
                if isinstance(exprs, tf.RaggedTensor):
                    exprs = exprs.to_tensor()
                return {
                    "id": iid + "/" + tf.strings.as_string(e["k"]),
                    "image": image,
                    "expressions": exprs,
                    "box": e["box"],
                }

            return tf.data.Dataset.from_tensor_slices(d).map(add)

        return ds.flat_map(explode)

    return seqio.FunctionDataSource(dataset_fn, splits=list(splits))
