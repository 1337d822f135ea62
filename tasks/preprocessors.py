"""seqio preprocessors shared by every locca task (tf.data, graph mode).

Raw examples (what the sources in tasks/sources yield) use one schema:
  id            string  unique example id
  image/path    string  image file, read lazily here (official formats), or
  image         uint8 [H, W, 3] pixels (shapes world, in memory)
  captions      string [N]       caption references
  question      string           VQA / counting / text questions
  answers       string [N]       answer references (N may be 0 on test splits)
  expressions   string [N]       referring expressions of one box
  box           float64 [4]      normalised [ymin, xmin, ymax, xmax]
  region_boxes  float64 [R, 4]   pretraining regions (normalised yxyx)
  region_texts  string [R]
Preprocessors add `image` (uint8 [S, S, 3]), `inputs`, `targets` (strings,
tokenised later by seqio.preprocessors.tokenize) and keep every raw field for
the metrics (`references`: all target strings of the example).

Random choices: an example that carries `EXAMPLE_SEED` (int64 [2], set by
tasks/resumable.py from the read's seed, shard and the example's position: in
the indexed training stream and in every other read of a registered task) is
sampled with stateless seeds folded from it, so its choices depend on nothing
else (not on the examples before it, nor on TensorFlow's global seed);
otherwise (a plain seqio.Task) the seeds are seqio's per-example seed stream
(`map_over_dataset(num_seeds=...)`), which also mixes in TensorFlow's global
seed and is nondeterministic when neither seed is set.
"""

from __future__ import annotations

import zlib

import seqio
import tensorflow as tf

from locca import region_text

EXAMPLE_SEED = "_locca_seed"  # int64 [2]: the example's own stateless seed (tasks/resumable.py)

CAPTION_PROMPT = "caption en"
VQA_PROMPT = "answer en {question}"
REC_PROMPT = "locate en {expression}"


# ------------------------------------------------------------------ images


def resize_uint8(image: tf.Tensor, size: int | tuple[int, int]) -> tf.Tensor:
    """Resize a uint8 [H, W, 3] image to [size, size, 3] (bilinear, antialiased;
    aspect ratio not kept, as PaliGemma). A no-op when already that size."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)

    def _resize():
        x = tf.image.resize(tf.cast(image, tf.float32), hw, method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)

    same = tf.logical_and(tf.equal(shape[0], hw[0]), tf.equal(shape[1], hw[1]))
    out = tf.cond(same, lambda: tf.cast(image, tf.uint8), _resize)
    return tf.ensure_shape(out, [hw[0], hw[1], 3])


def decode_image_file(path: tf.Tensor) -> tf.Tensor:
    """Reads and decodes a JPEG/PNG/GIF/BMP file -> uint8 [H, W, 3]."""
    data = tf.io.read_file(path)
    img = tf.io.decode_image(data, channels=3, expand_animations=False)
    return tf.ensure_shape(img, [None, None, 3])


def load_image(image_size: int):
    """Preprocessor: `image/path` (read lazily from disk) or `image` pixels ->
    `image` uint8 [image_size, image_size, 3]."""

    @seqio.map_over_dataset
    def _fn(ex):
        ex = dict(ex)
        img = decode_image_file(ex["image/path"]) if "image/path" in ex else ex["image"]
        ex["image"] = resize_uint8(img, image_size)
        return ex

    return _fn


# ------------------------------------------------------------------ sampling


def example_seeds(ex, stream_seeds: tf.Tensor, n: int, salt: str) -> list[tf.Tensor]:
    """``n`` stateless seeds (each [2]) for one example's random choices.

    From ``ex[EXAMPLE_SEED]`` folded with ``salt`` (the preprocessor's name)
    and the seed index when the example carries one, else seqio's stream
    seeds (``stream_seeds``: seqio's ``seed`` argument when n == 1, else its
    ``seeds``)."""
    if EXAMPLE_SEED in ex:
        base = tf.random.experimental.stateless_fold_in(
            ex[EXAMPLE_SEED], zlib.crc32(salt.encode()) & 0x7FFFFFFF
        )
        return [tf.random.experimental.stateless_fold_in(base, i) for i in range(n)]
    if n == 1:  # seqio's `seed` argument: one seed
        return [stream_seeds]
    return [stream_seeds[i] for i in range(n)]


def _rand_index(n: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Uniform int32 in [0, max(n, 1)) from a stateless seed (shape [2])."""
    return tf.random.stateless_uniform(
        [], seed=seed, minval=0, maxval=tf.maximum(n, 1), dtype=tf.int32
    )


def _sample_one(strings: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """One element of a 1-D string tensor, chosen by a stateless seed ("" if empty)."""
    n = tf.shape(strings)[0]
    i = _rand_index(n, seed)
    return tf.cond(n > 0, lambda: tf.gather(strings, i), lambda: tf.constant(""))


# ------------------------------------------------------------------ boxes


def encode_box_tf(
    box: tf.Tensor, encoding: str = "text", num_bins: int | None = None, order: str = "yxyx"
) -> tf.Tensor:
    """TF twin of `locca.boxes.BoxCodec(encoding, num_bins, order).encode(box)`.

    box: float [4] normalised yxyx (float64 for bit-exact agreement with the
    numpy codec). Returns a scalar string.
    """
    if num_bins is None:
        num_bins = 500 if encoding == "text" else 1024
    b = tf.clip_by_value(tf.cast(box, tf.float64), 0.0, 1.0)
    q = tf.cast(tf.round(b * float(num_bins - 1)), tf.int64)  # [4] yxyx, half to even as numpy
    if order == "xyxy":
        q = tf.gather(q, [1, 0, 3, 2])
    elif order != "yxyx":
        raise ValueError(f"order must be 'yxyx' or 'xyxy', got {order!r}")
    if encoding == "loc":
        return tf.strings.reduce_join("<loc" + tf.strings.as_string(q, width=4, fill="0") + ">")
    if encoding != "text":
        raise ValueError(f"encoding must be 'text' or 'loc', got {encoding!r}")
    return tf.strings.reduce_join(tf.strings.as_string(q), separator=" ")


# ------------------------------------------------------------------ task formats


def _fill(template: str, **fields: tf.Tensor) -> tf.Tensor:
    """`"answer en {question}"` with string tensors substituted (graph mode)."""
    parts: list = [template]
    for k, v in fields.items():
        nxt: list = []
        for p in parts:
            if isinstance(p, str):
                pieces = p.split("{" + k + "}")
                for j, piece in enumerate(pieces):
                    if j:
                        nxt.append(v)
                    nxt.append(piece)
            else:
                nxt.append(p)
        parts = nxt
    out = tf.constant("")
    for p in parts:
        out = out + p
    return out


def caption_format(prompt: str = CAPTION_PROMPT):
    """inputs = prompt; targets = one caption sampled per example (seeded);
    references = all captions."""

    @seqio.map_over_dataset(num_seeds=1)
    def _fn(ex, seed):
        ex = dict(ex)
        (seed,) = example_seeds(ex, seed, 1, "caption_format")
        ex["inputs"] = tf.constant(prompt)
        ex["targets"] = _sample_one(ex["captions"], seed)
        ex["references"] = ex["captions"]
        return ex

    return _fn


def vqa_format(prompt: str = VQA_PROMPT):
    """inputs = `answer en {question}`; targets = one answer sampled per
    example (seeded); references = all answers."""

    @seqio.map_over_dataset(num_seeds=1)
    def _fn(ex, seed):
        ex = dict(ex)
        (seed,) = example_seeds(ex, seed, 1, "vqa_format")
        ex["inputs"] = _fill(prompt, question=ex["question"])
        ex["targets"] = _sample_one(ex["answers"], seed)
        ex["references"] = ex["answers"]
        return ex

    return _fn


def rec_format(
    prompt: str = REC_PROMPT, encoding: str = "text", num_bins: int | None = None, order="yxyx"
):
    """inputs = `locate en {expression}` (one expression sampled); targets =
    the box through the box codec; references = [box text]."""

    @seqio.map_over_dataset(num_seeds=1)
    def _fn(ex, seed):
        ex = dict(ex)
        (seed,) = example_seeds(ex, seed, 1, "rec_format")
        expr = _sample_one(ex["expressions"], seed)
        ex["expression"] = expr
        ex["inputs"] = _fill(prompt, expression=expr)
        ex["targets"] = encode_box_tf(ex["box"], encoding, num_bins, order)
        ex["references"] = tf.reshape(ex["targets"], [1])
        return ex

    return _fn


def pretrain_format(encoding: str = "text", num_bins: int | None = None, order: str = "yxyx"):
    """LocCa targets: `cap` = a sampled caption, `aref` = `ARef : {c} : {b}`,
    `gcap` = `GCap : {b} : {c}`, each with its own sampled region (seeded).
    The caption is sampled among the non-empty ones. Examples without regions
    (or without a non-empty caption) get empty strings: drop them before the
    cache placeholder with :func:`require_regions_and_caption`."""

    @seqio.map_over_dataset(num_seeds=3)
    def _fn(ex, seeds):
        ex = dict(ex)
        seeds = example_seeds(ex, seeds, 3, "pretrain_format")
        captions = ex["captions"]
        nonempty = tf.boolean_mask(captions, tf.strings.length(captions) > 0)
        ex["cap"] = _sample_one(nonempty, seeds[0])
        texts, boxes = ex["region_texts"], ex["region_boxes"]
        n = tf.shape(texts)[0]

        def _region(seed):
            i = _rand_index(n, seed)
            box_text = encode_box_tf(tf.gather(boxes, i), encoding, num_bins, order)
            return tf.gather(texts, i), box_text

        def _pair(seed, fmt):
            def has():
                c, b = _region(seed)
                return fmt(c, b)

            return tf.cond(n > 0, has, lambda: tf.constant(""))

        ex["aref"] = _pair(seeds[1], region_text.aref_text)
        ex["gcap"] = _pair(seeds[2], lambda c, b: region_text.gcap_text(b, c))
        return ex

    return _fn


def require_regions_and_caption():
    """Drops raw pretraining examples without a region or a non-empty caption.

    A filter on raw fields, meant to run *before* the cache placeholder: the
    indexed training stream (tasks/resumable.py) then preprocesses exactly one
    output per kept example, so a position in the stream is a position in the
    data (a filter after the formatting would shift every later example)."""

    def _fn(ds):
        def ok(ex):
            has_region = tf.size(ex["region_texts"]) > 0
            has_caption = tf.reduce_any(tf.strings.length(ex["captions"]) > 0)
            return tf.logical_and(has_region, has_caption)

        return ds.filter(ok)

    return _fn


def filter_nonempty(*keys: str):
    """Drops examples whose string feature `key` is empty (e.g. no regions)."""

    def _fn(ds):
        def ok(ex):
            conds = [tf.strings.length(ex[k]) > 0 for k in keys]
            return tf.reduce_all(tf.stack(conds))

        return ds.filter(ok)

    return _fn


def select(*keys: str):
    """Keeps only `keys` (drops the raw fields; used before caching/batching)."""

    @seqio.map_over_dataset
    def _fn(ex):
        return {k: ex[k] for k in keys if k in ex}

    return _fn
