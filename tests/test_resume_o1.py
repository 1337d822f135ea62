"""O(1) resume of the training stream (issue 12): tasks/resumable.py + locca.data.pipeline.

Resuming at step k must (a) give bitwise the batches of an uninterrupted run,
(b) not preprocess the examples before k (counted: a preprocessor that counts
its calls), (c) keep the multi-host layout (the global batch depends only on
data, seed, B and the number of shards V, not on the process count).
"""

from __future__ import annotations

import numpy as np
import pytest

LENGTHS = {"inputs": 8, "targets": 24}
RES = 16
NUM_TRAIN = 10  # scenes: 10 caption examples per epoch
CALLS = {"n": 0}


def _counting():
    """Post-cache preprocessor counting the examples it sees (a py_function)."""
    import tensorflow as tf

    def inc():
        CALLS["n"] += 1
        return np.int64(0)

    def fn(ds):
        def count(ex):
            z = tf.py_function(inc, [], tf.int64)
            with tf.control_dependencies([z]):
                return {k: tf.identity(v) for k, v in ex.items()}

        return ds.map(count)

    return fn


@pytest.fixture(scope="module")
def task():
    import seqio

    from tasks import preprocessors as prep
    from tasks import registry
    from tasks.sources.shapes import ShapesSource

    return registry.add_task(
        "shapes_caption_resume_o1_test",
        config={"test": "shapes_caption_resume_o1_test", "num_train": NUM_TRAIN},
        source=ShapesSource("caption", resolution=32, num_train=NUM_TRAIN),
        preprocessors=[
            seqio.CacheDatasetPlaceholder(),
            _counting(),
            prep.load_image(RES),
            prep.caption_format(),
            seqio.preprocessors.tokenize,
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features=registry.output_features(),
        metric_fns=[],
    )


def _examples(task, seed=3):
    import seqio

    from tasks.feature_converters import ImageTextFeatureConverter

    def fn(shard_index, num_shards):
        ds = task.get_dataset(
            sequence_length=LENGTHS,
            split="train",
            shuffle=True,
            seed=seed,
            num_epochs=None,
            shard_info=seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None,
            use_cached=False,
        )
        return ImageTextFeatureConverter(image_size=RES)(ds, LENGTHS)

    return fn


def _batches(task, *, seed=3, batch_size=4, num_shards=None, process_index=0, process_count=1):
    from locca.data import pipeline

    return pipeline.make_batches(
        _examples(task, seed),
        batch_size=batch_size,
        num_shards=num_shards,
        prefetch=0,
        process_index=process_index,
        process_count=process_count,
    )


def _take(it, n):
    return [next(it) for _ in range(n)]


def _equal(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_resume_is_bitwise_across_epochs(task):
    batches = _batches(task)
    ref = _take(batches(0), 9)  # 36 examples: three epochs of ten and a bit
    for k in (2, 7):  # 2: inside epoch 0; 7: example 28 = epoch 2, offset 8
        got = _take(batches(k), 9 - k)
        for a, b in zip(ref[k:], got):
            _equal(a, b)
    again = _take(_batches(task)(0), 9)  # deterministic: a fresh pipeline, the same stream
    for a, b in zip(ref, again):
        _equal(a, b)


def test_each_epoch_is_a_permutation_with_fresh_samples(task):
    ref = _take(_batches(task, batch_size=2)(0), 10)  # 20 examples: epochs 0 and 1
    imgs = [row.tobytes() for b in ref for row in b["image"]]
    assert len(set(imgs[:10])) == len(set(imgs[10:])) == len(set(imgs)), "not a permutation"
    assert imgs[:10] != imgs[10:], "epochs 0 and 1 have the same order"
    other = _take(_batches(task, seed=4, batch_size=2)(0), 5)
    assert [r.tobytes() for b in other for r in b["image"]] != imgs[:10], "seed is ignored"


def test_resume_does_not_preprocess_the_skipped_examples(task):
    """Structural O(1): starting at step k preprocesses O(batch) examples, not k * batch."""
    batches = _batches(task)
    k = 200  # 800 examples, 80 epochs in
    CALLS["n"] = 0
    late = next(batches(k))
    preprocessed = CALLS["n"]
    assert preprocessed <= 64, f"{preprocessed} examples preprocessed to resume at step {k}"
    CALLS["n"] = 0
    next(batches(0))
    assert CALLS["n"] <= 64
    # The same batch through a stream that cannot start anywhere (Dataset.skip):
    # every skipped example is preprocessed -- what this test guards against.
    from locca.data import pipeline

    examples = _examples(task)

    def from_zero(j, v):  # the same stream, always built from position 0: not claimed
        with pipeline.offer_start(0):
            return examples(j, v)

    plain = pipeline.make_batches(from_zero, batch_size=4, prefetch=0)
    CALLS["n"] = 0
    old = next(plain(k))
    assert CALLS["n"] >= k * 4
    _equal(late, old)  # and the two agree: skipping positions == skipping examples


def test_multihost_layout_is_kept(task):
    """1 process reading V=2 shards == 2 processes reading one shard each, resumed."""
    one = _take(_batches(task, num_shards=2)(3), 3)
    p0 = _take(_batches(task, num_shards=2, process_index=0, process_count=2)(3), 3)
    p1 = _take(_batches(task, num_shards=2, process_index=1, process_count=2)(3), 3)
    for g, a, b in zip(one, p0, p1):
        _equal(g, {k: np.concatenate([a[k], b[k]]) for k in g})
    full = _take(_batches(task, num_shards=2)(0), 6)
    for a, b in zip(full[3:], one):
        _equal(a, b)


def test_a_dropping_postcache_filter_is_a_clear_error():
    import seqio
    import tensorflow as tf

    from locca.data import pipeline
    from tasks import preprocessors as prep
    from tasks import registry
    from tasks.sources.shapes import ShapesSource

    t = registry.add_task(
        "shapes_caption_resume_o1_filter_test",
        config={"test": "shapes_caption_resume_o1_filter_test", "num_train": NUM_TRAIN},
        source=ShapesSource("caption", resolution=32, num_train=NUM_TRAIN),
        preprocessors=[
            seqio.CacheDatasetPlaceholder(),
            prep.load_image(RES),
            prep.caption_format(),
            lambda ds: ds.filter(lambda ex: tf.strings.to_hash_bucket_fast(ex["id"], 2) == 0),
            seqio.preprocessors.tokenize,
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features=registry.output_features(),
        metric_fns=[],
    )
    with pipeline.offer_start(0) as offer:
        ds = t.get_dataset(sequence_length=LENGTHS, shuffle=True, seed=0, num_epochs=None)
    assert offer.claimed
    with pytest.raises(tf.errors.InvalidArgumentError, match="dropped or added examples"):
        for _ in ds.take(30):
            pass


def test_evaluation_streams_are_seqio_streams(task):
    """No offer, or not a repeated shuffled stream: the offer is not claimed."""
    from locca.data import pipeline

    with pipeline.offer_start(5) as offer:
        task.get_dataset(sequence_length=LENGTHS, shuffle=False, num_epochs=1)
    assert not offer.claimed
    assert pipeline.claim_start() is None


def test_transfer_training_stream_claims_the_offer(task):
    """transfer.common.train_batches reads the indexed stream (no skip after preprocessing)."""
    from locca.data import pipeline
    from transfer import common

    kw = dict(split="train", task_feature_lengths=LENGTHS, image_size=RES, batch_size=None)
    with pipeline.offer_start(8) as offer:
        ds = common.model_dataset(task.name, shuffle=True, seed=3, num_epochs=None, **kw)
    assert offer.claimed
    first = next(ds.as_numpy_iterator())
    ref = next(_batches(task, batch_size=4)(2))  # examples 8..11 of the same stream
    _equal({k: v[0] for k, v in ref.items()}, first)
    with pipeline.offer_start(8) as offer:  # evaluation: seqio's stream, offer left alone
        common.model_dataset(task.name, shuffle=False, num_epochs=1, **kw)
    assert not offer.claimed


def test_raw_examples_python_path_equals_tf_path():
    """A shapes source read in Python (no pre-cache preprocessor) gives the tf.data
    path's raw examples, in order and per shard. Compared after the generator's
    conversion to the element spec, as the indexed stream feeds them."""
    import seqio
    import tensorflow as tf

    from tasks import registry
    from tasks.resumable import _raw_shard
    from tasks.sources.shapes import ShapesSource

    source = ShapesSource("vqa", resolution=32, num_train=12, num_validation=2, num_test=2)
    t = registry.add_task(
        "shapes_vqa_raw_path_test", config={"test": "raw_path"}, source=source,
        preprocessors=[seqio.CacheDatasetPlaceholder()],
        output_features=registry.output_features(), metric_fns=[],
    )  # fmt: skip
    for shard in (None, seqio.ShardInfo(1, 3)):
        got, spec = t.raw_examples("train", shard, seed=0)
        want = list(t.preprocess_precache(_raw_shard(t, "train", shard)).as_numpy_iterator())
        ds = tf.data.Dataset.from_generator(lambda got=got: iter(got), output_signature=spec)
        got = list(ds.as_numpy_iterator())
        assert len(got) == len(want) > 0
        for g, w in zip(got, want):
            assert g.keys() == w.keys()
            for k in g:
                np.testing.assert_array_equal(g[k], w[k], err_msg=k)


def test_raw_columns_give_the_generator_examples():
    """The indexed stream's raw-example lookup (tensors per field, no Python per
    example) returns what ``from_generator`` made of the same examples: equal
    shapes (images of two sizes, string lists of different lengths, none),
    dtypes and values."""
    import tensorflow as tf

    from tasks.resumable import _Columns

    rng = np.random.default_rng(0)
    examples = [
        {"id": "a", "image": rng.integers(0, 255, (4, 6, 3), dtype=np.uint8),
         "answers": ["yes", "no"], "box": [0.1, 0.2, 0.3, 0.4]},
        {"id": "bé", "image": rng.integers(0, 255, (5, 2, 3), dtype=np.uint8),
         "answers": [], "box": [0.5, 0.5, 1.0, 1.0]},
        {"id": b"c", "image": rng.integers(0, 255, (4, 6, 3), dtype=np.uint8),
         "answers": ["a picture of three words"], "box": [0, 0, 1, 1]},
    ]  # fmt: skip
    spec = {
        "id": tf.TensorSpec([], tf.string),
        "image": tf.TensorSpec([None, None, 3], tf.uint8),
        "answers": tf.TensorSpec([None], tf.string),
        "box": tf.TensorSpec([4], tf.float64),
    }
    want = list(
        tf.data.Dataset.from_generator(
            lambda: iter(examples), output_signature=spec
        ).as_numpy_iterator()
    )
    columns = _Columns(examples, spec, "columns_test")
    order = [2, 0, 1, 1]
    got = list(
        tf.data.Dataset.from_tensor_slices(np.array(order, np.int64))
        .map(columns.example)
        .as_numpy_iterator()
    )
    for g, i in zip(got, order):
        w = want[i]
        assert g.keys() == w.keys()
        for k in w:
            assert np.asarray(g[k]).dtype == np.asarray(w[k]).dtype, k
            assert np.shape(g[k]) == np.shape(w[k]), k
            np.testing.assert_array_equal(g[k], w[k], err_msg=k)
    with pytest.raises(ValueError, match="columns_test.*'box'"):
        _Columns([{"box": [1.0, 2.0]}, {"box": [[1.0, 2.0]]}], {"box": spec["box"]}, "columns_test")


def test_indexed_stream_reads_the_permuted_raw_examples():
    """Position g of the stream is raw example perm_e[g % n], perm_e = numpy
    default_rng([seed, shard, num_shards, epoch]).permutation(n): bitwise the
    raw fields (a task without post-cache preprocessors), across two epochs,
    from a start inside the first."""
    import seqio

    from tasks import registry
    from tasks.sources.shapes import ShapesSource

    t = registry.add_task(
        "shapes_caption_indexed_raw_test", config={"test": "indexed_raw"},
        source=ShapesSource("caption", resolution=32, num_train=7),
        preprocessors=[seqio.CacheDatasetPlaceholder()],
        output_features={}, metric_fns=[],
    )  # fmt: skip
    raw, _ = t.raw_examples("train", None, 5)
    n = len(raw)
    want = []
    for e in range(2):
        want += [raw[i] for i in np.random.default_rng([5, 0, 1, e]).permutation(n)]
    start = 3
    ds = t.indexed_stream(start, split="train", seed=5, trim_output_features=False)
    got = list(ds.take(2 * n - start).as_numpy_iterator())
    assert len(got) == 2 * n - start
    for g, w in zip(got, want[start:]):
        assert g.keys() == w.keys()
        assert g["id"].decode() == w["id"]
        np.testing.assert_array_equal(g["image"], w["image"])
        assert [c.decode() for c in g["captions"]] == list(w["captions"])


def test_seqio_reads_draw_from_per_example_seeds(task):
    """A read outside the indexed stream (evaluation: shuffle=False, one epoch)
    samples each example's caption from its own seed (seed, shard, position):
    the same whatever TensorFlow's global seed, different for another seed."""
    import seqio
    import tensorflow as tf

    def captions(global_seed, seed=None, shard_info=None):
        tf.random.set_seed(global_seed)
        ds = task.get_dataset(
            sequence_length=LENGTHS, split="train", shuffle=False, num_epochs=2, seed=seed,
            shard_info=shard_info, use_cached=False,
        )  # fmt: skip
        return [ex["targets_pretokenized"] for ex in ds.as_numpy_iterator()]

    try:
        ref = captions(0)
        assert len(ref) == 2 * NUM_TRAIN
        assert captions(5) == ref
        assert captions(5, seed=0) == ref  # seed None reads as seed 0
        assert captions(0, seed=1) != ref
        assert ref[:NUM_TRAIN] != ref[NUM_TRAIN:]  # the second epoch samples afresh
        half = captions(0, shard_info=seqio.ShardInfo(1, 2))
        assert captions(7, shard_info=seqio.ShardInfo(1, 2)) == half
    finally:
        tf.random.set_seed(None)
    assert not any("_locca" in k for k in task.get_dataset(
        sequence_length=LENGTHS, split="train", shuffle=False).element_spec)  # fmt: skip


def test_a_cached_raw_shard_builds_its_tensors_once(task):
    """Two streams of the same in-memory shard share its tensors (the demo trains
    three encoders on one task: one copy, not three)."""
    a = task.indexed_stream(0, sequence_length=LENGTHS, split="train", seed=3)
    cols = task._columns_cache[1]
    b = task.indexed_stream(5, sequence_length=LENGTHS, split="train", seed=3)
    assert task._columns_cache[1] is cols
    _equal(
        {k: v.numpy() for k, v in next(iter(a.skip(5))).items()},
        {k: v.numpy() for k, v in next(iter(b)).items()},
    )
