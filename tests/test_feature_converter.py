"""Feature converters: shapes, dtypes, shift-right with BOS 0, loss weights, resize."""

import numpy as np
import pytest
import tensorflow as tf

from tasks.feature_converters import ImageTextFeatureConverter, LocCaPretrainFeatureConverter


def _ds(examples):
    keys = examples[0].keys()
    sig = {
        k: tf.TensorSpec([None, None, 3], tf.uint8)
        if k == "image"
        else tf.TensorSpec([None], tf.int32)
        for k in keys
    }
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=sig)


def _img(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_image_text_converter():
    exs = [
        {"image": _img(40, 40, 0), "inputs": np.array([5, 6, 1], np.int32),
         "targets": np.array([7, 8, 9, 1], np.int32)},
        {"image": _img(64, 48, 1), "inputs": np.array([5, 1], np.int32),
         "targets": np.array([3, 1], np.int32)},
    ]  # fmt: skip
    conv = ImageTextFeatureConverter(image_size=32)
    out = list(conv(_ds(exs), {"inputs": 4, "targets": 6}).as_numpy_iterator())
    a, b = out
    assert set(a) == {"image", "encoder_input_tokens", "decoder_input_tokens",
                      "decoder_target_tokens", "decoder_loss_weights"}  # fmt: skip
    assert a["image"].shape == (32, 32, 3) and a["image"].dtype == np.uint8
    np.testing.assert_array_equal(a["encoder_input_tokens"], [5, 6, 1, 0])
    np.testing.assert_array_equal(a["decoder_target_tokens"], [7, 8, 9, 1, 0, 0])
    np.testing.assert_array_equal(a["decoder_input_tokens"], [0, 7, 8, 9, 1, 0])
    np.testing.assert_array_equal(a["decoder_loss_weights"], [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(b["decoder_input_tokens"], [0, 3, 1, 0, 0, 0])
    for k in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens"):
        assert a[k].dtype == np.int32
    # the resize is a real (antialiased) resize of the image, not a crop
    ref = tf.image.resize(exs[1]["image"].astype(np.float32), (32, 32), antialias=True)
    np.testing.assert_allclose(b["image"], np.clip(np.round(ref.numpy()), 0, 255), atol=1)


def test_image_size_none_keeps_static_size_and_identity():
    img = _img(16, 16, 2)
    exs = [{"image": img, "inputs": np.array([1], np.int32), "targets": np.array([1], np.int32)}]
    ds = _ds(exs).map(lambda e: dict(e, image=tf.ensure_shape(e["image"], [16, 16, 3])))
    out = next(ImageTextFeatureConverter()(ds, {"inputs": 2, "targets": 2}).as_numpy_iterator())
    np.testing.assert_array_equal(out["image"], img)  # same size: untouched
    with pytest.raises(ValueError, match="image_size"):
        ImageTextFeatureConverter()(_ds(exs), {"inputs": 2, "targets": 2})


def test_too_long_targets_fail_length_check():
    exs = [{"image": _img(8, 8, 0), "inputs": np.array([1], np.int32),
            "targets": np.array([4, 4, 4, 1], np.int32)}]  # fmt: skip
    ds = ImageTextFeatureConverter(image_size=8)(_ds(exs), {"inputs": 2, "targets": 2})
    with pytest.raises(tf.errors.InvalidArgumentError, match="targets"):
        list(ds)


def test_pretrain_converter():
    exs = [
        {
            "image": _img(20, 30, 3),
            "cap": np.array([4, 5, 1], np.int32),
            "aref": np.array([6, 1], np.int32),
            "gcap": np.array([7, 8, 9, 1], np.int32),
        }
    ]
    out = next(
        LocCaPretrainFeatureConverter(image_size=16)(
            _ds(exs), {"cap": 5, "aref": 3, "gcap": 4}
        ).as_numpy_iterator()
    )
    assert out["image"].shape == (16, 16, 3)
    np.testing.assert_array_equal(out["cap_decoder_target_tokens"], [4, 5, 1, 0, 0])
    np.testing.assert_array_equal(out["cap_decoder_input_tokens"], [0, 4, 5, 1, 0])
    np.testing.assert_array_equal(out["cap_loss_weights"], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(out["aref_decoder_input_tokens"], [0, 6, 1])
    np.testing.assert_array_equal(out["gcap_decoder_target_tokens"], [7, 8, 9, 1])
    np.testing.assert_array_equal(out["gcap_loss_weights"], [1, 1, 1, 1])
    assert len(out) == 10
