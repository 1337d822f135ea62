"""The indexed training stream: a seqio Task whose training stream can start at any example.

``ResumableTask`` (every task registered by ``tasks.registry.add_task``) behaves
as ``seqio.Task`` except when the training pipeline (``locca.data.pipeline``)
offers a start position (``pipeline.claim_start``) for a repeated, shuffled
stream (``shuffle=True, num_epochs=None``). It then builds the stream from
positions instead of from a sequence of stateful shuffles:

  raw shard   the split's examples of shard j of V, before the cache placeholder
              (source + pre-cache preprocessors, e.g. the pretraining
              region/caption filter), read once, in the source's order, into
              memory: n examples (raw fields only; images on disk stay paths),
              held as one tensor per field and looked up by index in tf.data
  position g  epoch e = g // n, offset r = g % n; example perm_e[r], where
              perm_e = numpy ``default_rng([seed, j, V, e]).permutation(n)``
  seed of g   ``stateless_fold_in`` of (seed, j, V, g): the example's own seed
              (``preprocessors.EXAMPLE_SEED``); the format preprocessors draw
              their random choices (caption / answer / region) from it

then the post-cache preprocessors (image decoding and resizing, formatting,
tokenisation) and trimming, one output per raw example (checked: a post-cache
preprocessor that drops or adds examples is an error naming the task). The
stream starting at position k therefore preprocesses nothing before k, and its
examples are bitwise those of a stream started at 0 from position k on: resume
costs O(n) to read the raw shard (independent of k) instead of O(k).

Contract for post-cache preprocessors: one output per input (checked), and
random choices drawn from the example's seed (``preprocessors.example_seeds``,
as every format preprocessor of tasks/preprocessors.py does). A preprocessor
that draws from seqio's positional seed stream instead would be deterministic
but would differ between a run and its resumption (not checked).

The full per-epoch permutation replaces seqio's 1000-example shuffle buffer.
Other calls (evaluation, ``shuffle=False``, a finite number of epochs, no
offer) are seqio's own ``Task.get_dataset``. ``ResumableMixture`` hides the
offer from its sub-tasks (a mixture's position is not theirs): a mixture's
stream is skipped after preprocessing, as before (O(k)).
"""

from __future__ import annotations

import threading

import numpy as np
import seqio
import tensorflow as tf

from locca.data import pipeline
from tasks import preprocessors as prep

POSITION = "_locca_position"  # int64 []: the example's position in the shard's stream


def _raw_shard(task: seqio.Task, split: str, shard_info: seqio.ShardInfo | None):
    """The finite raw stream of one shard (source order, no shuffling), with
    seqio's sharding rule (at the source when it can, else by example)."""
    source = task.source
    if shard_info is None or shard_info.num_shards == 1:
        ds = source.get_dataset(split=split, shuffle=False, seed=None)
    elif source.supports_arbitrary_sharding or (
        len(source.list_shards(split=split)) >= shard_info.num_shards
    ):
        ds = source.get_dataset(split=split, shuffle=False, seed=None, shard_info=shard_info)
    else:
        ds = source.get_dataset(split=split, shuffle=False, seed=None)
        ds = ds.shard(shard_info.num_shards, shard_info.index)
    return ds


def _nonneg(x: int) -> int:
    return int(x) % (1 << 63)


def _seed_base(seed: int, shard_index: int, num_shards: int) -> tf.Tensor:
    """int64 [2]: the stream's stateless seed for (seed, shard j, of V); an
    example's ``EXAMPLE_SEED`` is it folded with the example's position."""
    base = tf.constant([_nonneg(seed) >> 32, _nonneg(seed) & 0xFFFFFFFF], tf.int64)
    base = tf.random.experimental.stateless_fold_in(base, shard_index)
    return tf.random.experimental.stateless_fold_in(base, num_shards)


_READING = threading.local()  # .shard: (j, V) of the seqio read in progress (get_dataset)


class _Columns:
    """A shard's raw examples as tensors, one per field, for lookups by index in
    tf.data (no Python per example: the stream's old ``from_generator`` of
    example dicts cost ~1 ms of GIL-holding Python an example, competing with
    the training step's dispatch).

    A field whose values share one shape is one stacked tensor [n, ...]; a
    field of varying shapes (images of different sizes, lists of different
    lengths) is its values' concatenated elements [sum of sizes] with each
    value's offset and shape, reshaped back on lookup. Values are converted to
    the element spec's dtype, as ``from_generator`` did.
    """

    def __init__(self, examples: list[dict], spec: dict, task_name: str):
        self._stacked, self._flat = {}, {}
        for key, field_spec in spec.items():
            as_object = field_spec.dtype == tf.string  # str / bytes, any length, even none
            values = [np.asarray(ex[key], dtype=object if as_object else None) for ex in examples]
            shapes = {v.shape for v in values}
            if any(len(s) != len(field_spec.shape) for s in shapes):
                raise ValueError(
                    f"task {task_name}: raw field {key!r} has ranks "
                    f"{sorted({len(s) for s in shapes})}, the element spec {field_spec.shape}"
                )
            if len(shapes) == 1:
                self._stacked[key] = tf.constant(np.stack(values), dtype=field_spec.dtype)
            else:
                sizes = np.array([v.size for v in values], np.int64)
                offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
                flat = np.concatenate([v.reshape(-1) for v in values])
                self._flat[key] = (
                    tf.constant(flat, dtype=field_spec.dtype),  # [sum of sizes]
                    tf.constant(offsets),  # [n]
                    tf.constant(sizes),  # [n]
                    tf.constant(np.array([v.shape for v in values], np.int64)),  # [n, rank]
                )

    def example(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
        """Raw example ``index`` (int64 scalar tensor) as a dict of tensors."""
        ex = {k: tf.gather(col, index) for k, col in self._stacked.items()}
        for k, (flat, offsets, sizes, shapes) in self._flat.items():
            begin, size = tf.gather(offsets, index), tf.gather(sizes, index)
            ex[k] = tf.reshape(flat[begin : begin + size], tf.gather(shapes, index))
        return ex


class ResumableTask(seqio.Task):
    """seqio.Task whose offered training stream starts at any example (module doc)."""

    def get_dataset(  # pytype: disable=signature-mismatch
        self,
        sequence_length=None,
        split: str = "train",
        use_cached: bool = False,
        shuffle: bool = True,
        shuffle_buffer_size: int | None = None,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        num_epochs: int | None = 1,
        trim_output_features: bool = True,
        try_in_mem_cache: bool = True,
    ) -> tf.data.Dataset:
        if shuffle and num_epochs is None and not use_cached and not self.requires_caching:
            start = pipeline.claim_start()
            if start is not None:
                return self.indexed_stream(
                    start,
                    sequence_length=sequence_length,
                    split=split,
                    seed=0 if seed is None else int(seed),
                    shard_info=shard_info,
                    trim_output_features=trim_output_features,
                )
        previous = getattr(_READING, "shard", None)
        _READING.shard = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
        try:
            return super().get_dataset(
                sequence_length=sequence_length,
                split=split,
                use_cached=use_cached,
                shuffle=shuffle,
                shuffle_buffer_size=shuffle_buffer_size,
                seed=seed,
                shard_info=shard_info,
                num_epochs=num_epochs,
                trim_output_features=trim_output_features,
                try_in_mem_cache=try_in_mem_cache,
            )
        finally:
            _READING.shard = previous

    def preprocess_postcache(self, dataset, sequence_length, seed=None):
        """seqio's post-cache preprocessing, each example carrying its own seed.

        An example without ``EXAMPLE_SEED`` (seqio's read: evaluation,
        ``shuffle=False``, finite epochs, a mixture's sub-task) gets one from
        (``seed``, 0 when None; the read's shard; its position in the stream
        after the pre-cache preprocessors and the repeat), as the indexed
        stream does, and it is dropped again after the preprocessors. The
        format preprocessors' random choices (sampled caption, answer,
        expression) then depend on these alone: not on TensorFlow's global
        seed, which seqio's own per-map seed stream (``tf.data.Dataset.random``)
        mixes in, nor on the process (that stream is nondeterministic when
        neither seed is set). seqio's final shuffle buffer and a mixture's
        sampling still use TensorFlow's seeding (``tf.random.set_seed``).
        """
        if prep.EXAMPLE_SEED in dataset.element_spec:  # the indexed stream: seeded already
            return super().preprocess_postcache(dataset, sequence_length, seed=seed)
        j, v = getattr(_READING, "shard", None) or (0, 1)
        base = _seed_base(0 if seed is None else int(seed), j, v)

        def add_seed(position, ex):
            ex = dict(ex)
            ex[prep.EXAMPLE_SEED] = tf.random.experimental.stateless_fold_in(base, position)
            return ex

        dataset = dataset.enumerate().map(add_seed, num_parallel_calls=tf.data.AUTOTUNE)
        dataset = super().preprocess_postcache(dataset, sequence_length, seed=seed)

        def drop_seed(ex):
            return {k: x for k, x in ex.items() if k != prep.EXAMPLE_SEED}

        return dataset.map(drop_seed, num_parallel_calls=tf.data.AUTOTUNE)

    def raw_examples(self, split: str, shard_info: seqio.ShardInfo | None, seed: int):
        """-> (the shard's raw examples as numpy dicts, their tf.data element spec).

        A source that can list its raw examples in Python (``examples(split,
        shuffle, seed, shard)``, as the in-memory shapes world) is read that
        way when the task has no pre-cache preprocessor: the same examples in
        the same order, without tf.data's per-element generator cost (about
        1 ms an example, 12 s of a shapes VQA split's 17 s). Such a task keeps the
        last shard it read (generated examples are a pure function of split, shard
        and seed; file-backed sources are read again each time), so a job that
        trains several models on the same task (the demo's encoders) reads it
        once; callers copy an example before changing it.
        """
        if not callable(getattr(self.source, "examples", None)):  # files: read them again
            return self._read_raw_examples(split, shard_info, seed)
        shard = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
        key = (split, shard, seed)
        cached = getattr(self, "_raw_examples_cache", None)
        if cached is not None and cached[0] == key:  # the same shard again (next run, same job)
            return cached[1]
        result = self._read_raw_examples(split, shard_info, seed)
        self._raw_examples_cache = (key, result)  # the last shard read: one at a time
        return result

    def _columns(self, examples: list, spec) -> _Columns:
        """The tensors of ``examples``; kept with the cached raw shard (built once
        for the runs of one job, not once per stream)."""
        cached_raw = getattr(self, "_raw_examples_cache", None)
        cached = getattr(self, "_columns_cache", None)
        if cached is not None and cached[0] is examples:
            return cached[1]
        columns = _Columns(examples, spec, self.name)
        if cached_raw is not None and cached_raw[1][0] is examples:
            self._columns_cache = (examples, columns)  # the cached shard's: one at a time
        return columns

    def _read_raw_examples(self, split: str, shard_info: seqio.ShardInfo | None, seed: int):
        ds = self.preprocess_precache(_raw_shard(self, split, shard_info), seed=seed)
        python_examples = getattr(self.source, "examples", None)
        if callable(python_examples) and not self.preprocessors[: self._cache_step_idx or 0]:
            shard = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
            return list(python_examples(split, False, None, shard)), ds.element_spec
        return list(ds.as_numpy_iterator()), ds.element_spec

    def indexed_stream(
        self,
        start: int,
        *,
        sequence_length=None,
        split: str = "train",
        seed: int = 0,
        shard_info: seqio.ShardInfo | None = None,
        trim_output_features: bool = True,
    ) -> tf.data.Dataset:
        """The infinite training stream of this shard from position ``start`` on."""
        start = int(start)
        if start < 0:
            raise ValueError(f"task {self.name}: start position must be >= 0, got {start}")
        j, v = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
        examples, spec = self.raw_examples(split, shard_info, seed)
        n = len(examples)
        if n == 0:
            raise ValueError(
                f"task {self.name}: split {split!r} shard {j} of {v} has no examples "
                "(after the pre-cache filters); check the data directory, or use fewer shards"
            )
        if not isinstance(spec, dict) or POSITION in spec or prep.EXAMPLE_SEED in spec:
            raise ValueError(f"task {self.name}: raw examples must be dicts without {POSITION!r}")

        columns = self._columns(examples, spec)

        def index_chunks():  # (raw indices [m], positions [m]): the rest of one epoch at a time
            g = start
            while True:
                e, r = divmod(g, n)  # one permutation per epoch, from (seed, shard, epoch) only
                perm = np.random.default_rng([_nonneg(seed), j, v, e]).permutation(n)
                yield perm[r:].astype(np.int64), np.arange(g, g + n - r, dtype=np.int64)
                g += n - r

        chunk_sig = (tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.int64))
        ds = tf.data.Dataset.from_generator(index_chunks, output_signature=chunk_sig).unbatch()

        def lookup(index, position):
            ex = columns.example(index)
            ex[POSITION] = position
            return ex

        ds = ds.map(lookup, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        base = _seed_base(seed, j, v)

        def add_seed(ex):
            ex = dict(ex)
            ex[prep.EXAMPLE_SEED] = tf.random.experimental.stateless_fold_in(base, ex[POSITION])
            return ex

        ds = ds.map(add_seed, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = self.preprocess_postcache(ds, sequence_length=sequence_length, seed=seed)
        ds = self._validate_preprocessing(ds)
        if trim_output_features:
            ds = self._trim_output_features(ds, sequence_length=sequence_length)
        name = self.name

        def check(i, ex):  # one output per raw example, in order
            ok = tf.debugging.assert_equal(
                ex[POSITION],
                i,
                message=(
                    f"task {name}: a post-cache preprocessor dropped or added examples; the "
                    "indexed training stream needs one output per raw example (filter raw "
                    "fields before the CacheDatasetPlaceholder)"
                ),
            )
            with tf.control_dependencies([ok]):
                return {
                    k: tf.identity(x)
                    for k, x in ex.items()
                    if k not in (POSITION, prep.EXAMPLE_SEED)
                }

        return ds.enumerate(start).map(check, num_parallel_calls=tf.data.AUTOTUNE)


class ResumableMixture(seqio.Mixture):
    """seqio.Mixture that hides the pipeline's start offer from its sub-tasks."""

    def get_dataset(self, *args, **kwargs) -> tf.data.Dataset:  # pytype: disable=signature-mismatch
        with pipeline.no_start_offer():
            return super().get_dataset(*args, **kwargs)
