"""seqio feature converters: task features -> model features (no packing).

`ImageTextFeatureConverter` (PaLI transfer / REC decoders):
  task:  image uint8 [H, W, 3], inputs int32 [<=Li], targets int32 [<=Lt]
  model: image uint8 [S, S, 3]           (resized to `image_size`)
         encoder_input_tokens  int32 [Li] (0-padded)
         decoder_input_tokens  int32 [Lt] (targets shifted right, BOS = 0)
         decoder_target_tokens int32 [Lt]
         decoder_loss_weights  int32 [Lt] (1 on non-padding target tokens)

`LocCaPretrainFeatureConverter` (LocCa pretraining, all three tasks on every
example):
  task:  image, cap, aref, gcap (int32 token ids)
  model: image, and for t in (cap, aref, gcap): `{t}_decoder_input_tokens`,
         `{t}_decoder_target_tokens`, `{t}_loss_weights` (int32 [L_t]).

`task_feature_lengths` needs no entry for `image`: its size is `image_size`
(or, when None, the static size the task already produces).
"""

from __future__ import annotations

from collections.abc import Mapping

import seqio
import tensorflow as tf
from seqio import utils

from tasks.preprocessors import resize_uint8

_Spec = seqio.FeatureConverter.FeatureSpec
_BIG = 1 << 30  # no length check on the incoming image (any size is resized)


class _ImageConverterBase(seqio.FeatureConverter):
    """Shared handling of the `image` feature (never packed, never padded)."""

    TEXT_FEATURES: tuple[str, ...] = ()

    def __init__(self, image_size: int | None = None, bos_id: int = 0, apply_length_check=True):
        super().__init__(pack=False, apply_length_check=apply_length_check, bos_id=bos_id)
        self.image_size = image_size
        self._resolved_size: int | None = image_size

    def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]):
        lengths = dict(task_feature_lengths)
        lengths.pop("image", None)
        size = self.image_size
        if size is None:
            shape = ds.element_spec["image"].shape
            if shape.rank != 3 or shape[0] is None or shape[0] != shape[1]:
                raise ValueError(
                    f"{type(self).__name__}: image_size=None needs a static square image "
                    f"shape from the task, got {shape}; pass image_size"
                )
            size = int(shape[0])
        self._resolved_size = size
        lengths["image"] = _BIG
        return super().__call__(ds, lengths)

    def _pad_text(self, ds, task_feature_lengths):
        text_lengths = {k: v for k, v in task_feature_lengths.items() if k != "image"}
        return utils.trim_and_pad_dataset(ds, text_lengths)

    def _image(self, features):
        return resize_uint8(features["image"], self._resolved_size)  # uint8 [S, S, 3]


class ImageTextFeatureConverter(_ImageConverterBase):
    """image + inputs + targets -> encoder/decoder model features (see module doc)."""

    TASK_FEATURES = {
        "image": _Spec(dtype=tf.uint8, rank=3),
        "inputs": _Spec(dtype=tf.int32),
        "targets": _Spec(dtype=tf.int32),
    }
    MODEL_FEATURES = {
        "image": _Spec(dtype=tf.uint8, rank=3),
        "encoder_input_tokens": _Spec(dtype=tf.int32),
        "decoder_input_tokens": _Spec(dtype=tf.int32),
        "decoder_target_tokens": _Spec(dtype=tf.int32),
        "decoder_loss_weights": _Spec(dtype=tf.int32),
    }
    PACKING_FEATURE_DTYPES = {}

    def _convert_example(self, features):
        targets = features["targets"]
        return {
            "image": self._image(features),
            "encoder_input_tokens": features["inputs"],
            "decoder_input_tokens": utils.make_autoregressive_inputs(targets, bos_id=self.bos_id),
            "decoder_target_tokens": targets,
            "decoder_loss_weights": seqio.non_padding_position(targets),
        }

    def _convert_features(self, ds, task_feature_lengths):
        ds = self._pad_text(ds, task_feature_lengths)
        return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths):
        return {
            "image": self._resolved_size,
            "encoder_input_tokens": task_feature_lengths["inputs"],
            "decoder_input_tokens": task_feature_lengths["targets"],
            "decoder_target_tokens": task_feature_lengths["targets"],
            "decoder_loss_weights": task_feature_lengths["targets"],
        }


PRETRAIN_TASKS = ("cap", "aref", "gcap")


class LocCaPretrainFeatureConverter(_ImageConverterBase):
    """image + cap/aref/gcap -> per-task decoder features (see module doc)."""

    TASK_FEATURES = {"image": _Spec(dtype=tf.uint8, rank=3)} | {
        t: _Spec(dtype=tf.int32) for t in PRETRAIN_TASKS
    }
    MODEL_FEATURES = {"image": _Spec(dtype=tf.uint8, rank=3)}
    for _t in PRETRAIN_TASKS:
        MODEL_FEATURES[f"{_t}_decoder_input_tokens"] = _Spec(dtype=tf.int32)
        MODEL_FEATURES[f"{_t}_decoder_target_tokens"] = _Spec(dtype=tf.int32)
        MODEL_FEATURES[f"{_t}_loss_weights"] = _Spec(dtype=tf.int32)
    del _t
    PACKING_FEATURE_DTYPES = {}

    def _convert_example(self, features):
        out = {"image": self._image(features)}
        for t in PRETRAIN_TASKS:
            tgt = features[t]
            out[f"{t}_decoder_input_tokens"] = utils.make_autoregressive_inputs(
                tgt, bos_id=self.bos_id
            )
            out[f"{t}_decoder_target_tokens"] = tgt
            out[f"{t}_loss_weights"] = seqio.non_padding_position(tgt)
        return out

    def _convert_features(self, ds, task_feature_lengths):
        ds = self._pad_text(ds, task_feature_lengths)
        return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths):
        out = {"image": self._resolved_size}
        for t in PRETRAIN_TASKS:
            for suffix in ("decoder_input_tokens", "decoder_target_tokens", "loss_weights"):
                out[f"{t}_{suffix}"] = task_feature_lengths[t]
        return out
