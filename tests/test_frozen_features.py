"""FrozenFeatureCache: the features of the encode function, each image encoded once."""

import numpy as np
import pytest

from locca.training.frozen_features import FrozenFeatureCache


class _Encoder:
    """images [B, H, W, C] -> [B, 2, 3] features that identify the image; records calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, images):
        self.calls.append(images.copy())
        x = images.astype(np.float32)
        feats = np.stack([x.mean((1, 2, 3)), x.max((1, 2, 3)), x[:, 0, 0, 0]], -1)  # [B, 3]
        return np.stack([feats, 2 * feats], 1)  # [B, 2, 3]


def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)


def test_same_features_and_each_image_encoded_once():
    enc = _Encoder()
    cache = FrozenFeatureCache(enc, max_bytes=1 << 20)
    a, b = _images(4, 0), _images(4, 1)
    batch1 = a[[0, 1, 1, 2]]  # a duplicate inside the batch
    np.testing.assert_array_equal(cache(batch1), _Encoder()(batch1))
    assert len(enc.calls) == 1 and enc.calls[0].shape == batch1.shape  # padded to the batch
    np.testing.assert_array_equal(enc.calls[0][:3], a[[0, 1, 2]])  # the three unseen images
    assert (cache.misses, cache.hits, len(cache)) == (3, 0, 3)
    batch2 = np.concatenate([a[[2, 0]], b[:2]])  # two seen, two new
    np.testing.assert_array_equal(cache(batch2), _Encoder()(batch2))
    np.testing.assert_array_equal(enc.calls[1][:2], b[:2])
    assert (cache.misses, cache.hits, len(cache)) == (5, 2, 5)
    batch3 = np.concatenate([b[[1, 0]], a[[1, 2]]])  # all seen: no encoder call
    np.testing.assert_array_equal(cache(batch3), _Encoder()(batch3))
    assert len(enc.calls) == 2 and cache.hits == 6
    assert cache.nbytes == 5 * 2 * 3 * 4  # five images' float32 [2, 3] features


def test_a_byte_limit_keeps_what_fits_and_encodes_the_rest_every_time():
    enc = _Encoder()
    per_image = 2 * 3 * 4
    cache = FrozenFeatureCache(enc, max_bytes=2 * per_image)
    imgs = _images(4, 2)
    np.testing.assert_array_equal(cache(imgs), _Encoder()(imgs))
    assert len(cache) == 2 and cache.nbytes == 2 * per_image
    np.testing.assert_array_equal(cache(imgs), _Encoder()(imgs))
    assert len(enc.calls) == 2 and cache.misses == 6 and cache.hits == 2
    off = FrozenFeatureCache(enc, max_bytes=0)
    for _ in range(2):
        np.testing.assert_array_equal(off(imgs), _Encoder()(imgs))
    assert len(off) == 0 and off.misses == 8 and off.hits == 0


def test_stored_features_do_not_alias_the_returned_batch():
    cache = FrozenFeatureCache(_Encoder(), max_bytes=1 << 20)
    imgs = _images(2, 3)
    first = cache(imgs)
    want = first.copy()
    first[...] = -1  # the caller writes into what it got
    np.testing.assert_array_equal(cache(imgs), want)


def test_images_with_equal_bytes_but_other_shapes_are_different_keys():
    cache = FrozenFeatureCache(_Encoder(), max_bytes=1 << 20)
    img = _images(1, 4)
    cache(img)
    flat = img.reshape(1, 2, 8, 3)
    assert cache(flat).shape == (1, 2, 3) and cache.misses == 2


@pytest.mark.parametrize("n", [1, 3])
def test_encode_always_sees_the_batch_shape(n):
    enc = _Encoder()
    cache = FrozenFeatureCache(enc, max_bytes=1 << 20)
    imgs = _images(3, 5)
    cache(imgs[:n].repeat(3 // n, axis=0)[:3] if n == 1 else imgs)
    assert all(c.shape == (3, 4, 4, 3) for c in enc.calls)
