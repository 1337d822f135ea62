"""The training batch pipeline: the trainer's ``batches(start_step)`` on one or many hosts.

One function, :func:`make_batches`, used by pretraining (``transfer.pretrain``)
and transfer (``transfer.common.train_batches``). The data comes in through a
factory (``dataset_fn``), so this module knows nothing about tasks:

    dataset_fn(shard_index, num_shards) -> tf.data.Dataset

returns an *infinite, deterministic* stream of per-example feature dicts
(unbatched; e.g. a seqio task read with ``ShardInfo(shard_index,
num_shards)``, ``num_epochs=None`` and a fixed seed, then a feature
converter). Shards must be disjoint and together cover the data.

Layout of a global batch (``batch_size`` = B examples, ``num_shards`` = V
data shards, P = ``jax.process_count()`` processes)::

    global batch s = [shard 0: B/V examples | shard 1: B/V | ... | shard V-1: B/V]
    process i holds shards [i*V/P, (i+1)*V/P)  =  rows [i*B/P, (i+1)*B/P)

Rows ``[j*B/V, (j+1)*B/V)`` of batch ``s`` are examples ``[s*B/V, (s+1)*B/V)``
of shard ``j``'s stream. Each process builds only its own shards' pipelines
and yields its B/P rows; ``partitioning.shard_batch`` (the trainer) stitches
the process-local rows back together in process order
(``jax.make_array_from_process_local_data`` over a mesh whose devices are
ordered by process, as ``jax.devices()`` is). The global batch therefore
depends only on (data, seed, B, V), never on P: a run on 1 process with
``num_shards=2`` reads exactly the batches of a run on 2 processes. V defaults
to P; set it explicitly to keep the data stream when the number of hosts
changes (e.g. resuming on another slice).

Resume in O(1): ``batches(start_step)`` asks each shard's stream to *start*
at example ``start_step * B/V``: while ``dataset_fn`` runs, the position is
offered through :func:`claim_start` (a thread-local hint). A stream that can
start anywhere (the tasks' indexed training stream, ``tasks.resumable``: a
per-epoch permutation of the raw examples and per-example random seeds keyed
on the example's position) claims it and begins there, preprocessing nothing
before it; the pipeline then skips nothing. A ``dataset_fn`` that does not
claim it (any plain tf.data factory, a seqio mixture) gets the old behaviour:
``Dataset.skip(start_step)`` over its batches, bitwise correct but O(start_step)
since every skipped example is still produced. Either way batch ``s`` is
bitwise the same whether or not the run was interrupted.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

DatasetFn = Callable[[int, int], Any]  # (shard_index, num_shards) -> tf.data.Dataset

_HINT = threading.local()  # .offer: the _StartOffer of the dataset_fn call in progress


class _StartOffer:
    def __init__(self, position: int | None):
        self.position = position
        self.claimed = False


@contextlib.contextmanager
def offer_start(position: int):
    """While active, :func:`claim_start` returns ``position`` (once). Yields the
    offer: ``offer.claimed`` says whether the stream built inside began there."""
    prev = getattr(_HINT, "offer", None)
    offer = _StartOffer(int(position))
    _HINT.offer = offer
    try:
        yield offer
    finally:
        _HINT.offer = prev


@contextlib.contextmanager
def no_start_offer():
    """Hides an active offer (a mixture building its sub-task streams: their
    positions are not the mixture's)."""
    prev = getattr(_HINT, "offer", None)
    _HINT.offer = None
    try:
        yield
    finally:
        _HINT.offer = prev


def claim_start() -> int | None:
    """For streams that can start at any example: the example index (within
    this shard's stream) that :func:`make_batches` wants the stream to begin
    at, or None when nothing is offered or it was already claimed. Claiming
    tells the pipeline not to skip anything itself."""
    offer = getattr(_HINT, "offer", None)
    if offer is None or offer.claimed:
        return None
    offer.claimed = True
    return offer.position


def shard_layout(
    batch_size: int, num_shards: int | None, process_index: int, process_count: int
) -> tuple[range, int]:
    """-> (the data shards this process reads, examples per shard per batch).

    Raises ValueError when the global batch does not split evenly: ``batch_size``
    must be divisible by the process count and by ``num_shards``, and
    ``num_shards`` must be a multiple of the process count.
    """
    p, i = int(process_count), int(process_index)
    if p < 1 or not 0 <= i < p:
        raise ValueError(f"process_index {i} is not in [0, process_count={p})")
    if batch_size < 1 or batch_size % p:
        raise ValueError(
            f"global batch_size {batch_size} is not divisible by the {p} processes "
            f"(each process reads batch_size / process_count examples per step)"
        )
    v = p if num_shards is None else int(num_shards)
    if v < 1 or v % p:
        raise ValueError(f"num_shards {v} is not a positive multiple of the {p} processes")
    if batch_size % v:
        raise ValueError(f"global batch_size {batch_size} is not divisible by num_shards {v}")
    per_process = v // p
    return range(i * per_process, (i + 1) * per_process), batch_size // v


def make_batches(
    dataset_fn: DatasetFn,
    *,
    batch_size: int,
    num_shards: int | None = None,
    prefetch: int | None = -1,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Callable[[int], Iterator[dict[str, np.ndarray]]]:
    """The trainer's ``batches(start_step) -> iterator`` of process-local numpy batches.

    Args:
      dataset_fn: ``(shard_index, num_shards) -> tf.data.Dataset`` of unbatched
        per-example feature dicts; infinite and deterministic (see module doc).
      batch_size: the global batch size (examples per update, all processes).
      num_shards: data shards the stream is split into (default: the process
        count); a multiple of the process count dividing ``batch_size``.
      prefetch: batches prefetched in the background (-1: tf.data AUTOTUNE,
        0/None: none).
      process_index / process_count: default ``jax.process_index()`` /
        ``jax.process_count()`` (given explicitly to simulate hosts).

    Returns:
      ``batches(start_step)``: yields dicts of numpy arrays with
      ``batch_size / process_count`` rows, starting at batch index
      ``start_step`` (bitwise the batches an uninterrupted run reads).
    """
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    shards, per_shard = shard_layout(batch_size, num_shards, process_index, process_count)
    total_shards = len(shards) * int(process_count)

    def batches(start_step: int) -> Iterator[dict[str, np.ndarray]]:
        import tensorflow as tf

        start_step = int(start_step)
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        parts = []
        for j in shards:
            with offer_start(start_step * per_shard) as offer:
                ds = dataset_fn(j, total_shards)
            ds = ds.batch(per_shard, drop_remainder=True)
            if not offer.claimed:  # a stream that cannot start anywhere: O(start_step)
                ds = ds.skip(start_step)
            parts.append(ds)
        if len(parts) == 1:
            ds = parts[0]
        else:  # this process's shards side by side, in shard order

            def concat(*bs):
                return {k: tf.concat([b[k] for b in bs], axis=0) for k in bs[0]}

            ds = tf.data.Dataset.zip(tuple(parts)).map(concat)
        if prefetch:
            ds = ds.prefetch(tf.data.AUTOTUNE if prefetch == -1 else int(prefetch))
        return ds.as_numpy_iterator()

    return batches
