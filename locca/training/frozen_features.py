"""A host-memory cache of a frozen encoder's outputs, keyed by image content.

A frozen encoder (the REC protocol's, a probe's) maps the same image to the
same tokens at every step, so a training stream that revisits its images
(epochs over a finite split) can encode each image once and reuse its tokens:
the train step then runs the decoder only. The cache is exact up to
floating-point summation order (the encoder runs in its own jit, on a batch
whose other rows may differ), bounded by ``max_bytes`` (beyond it, new images
are encoded every time they come), and per process (each host caches the
images of its own data shard).

Keys are a 128-bit BLAKE2b digest of the image's shape, dtype and bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

__all__ = ["FrozenFeatureCache"]


def _key(image: np.ndarray) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((image.shape, image.dtype.str)).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.digest()


class FrozenFeatureCache:
    """``cache(images [B, H, W, C]) -> features [B, N, D]`` (numpy), encoding
    only the images it has not seen.

    Args:
      encode: ``images [B, H, W, C] -> features [B, N, D]`` (e.g. a jitted
        frozen-encoder forward); called with the batch's unseen images, padded
        with copies of the first to the batch's size so that its input shape
        (and compilation) stays fixed.
      max_bytes: the most feature bytes kept; 0 keeps nothing (every image is
        encoded every time).

    ``hits``, ``misses`` (images encoded) and ``nbytes`` count what it did.
    """

    def __init__(self, encode: Callable[[np.ndarray], np.ndarray], *, max_bytes: int):
        self._encode = encode
        self.max_bytes = int(max_bytes)
        self._store: dict[bytes, np.ndarray] = {}
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        keys = [_key(im) for im in images]
        unseen: dict[bytes, int] = {}  # key -> first row with that image
        for i, k in enumerate(keys):
            if k not in self._store and k not in unseen:
                unseen[k] = i
        fresh: dict[bytes, np.ndarray] = {}
        if unseen:
            rows = list(unseen.values())
            pad = rows + [rows[0]] * (len(images) - len(rows))  # fixed shape [B, ...]
            encoded = np.asarray(self._encode(images[pad]))  # [B, N, D]
            fresh = {k: encoded[j] for j, k in enumerate(unseen)}
        self.misses += len(unseen)
        self.hits += sum(k in self._store for k in keys)
        out = np.stack([self._store[k] if k in self._store else fresh[k] for k in keys])
        for k, feat in fresh.items():
            if self.nbytes + feat.nbytes > self.max_bytes:
                break
            self._store[k] = feat.copy()  # not a view of the batch's array
            self.nbytes += feat.nbytes
        return out
