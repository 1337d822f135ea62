"""Metric writers: ``model_dir/metrics.jsonl`` plus TensorBoard, process 0 only.

JSONL: one object per logged step, ``{"step": int, "<name>": float, ...}``,
appended and flushed line by line. After a resume, steps between the last
checkpoint and the interruption are logged again (append-only file; readers
should keep the last line of each step).

TensorBoard: ``clu.metric_writers.create_default_writer(model_dir)``. When
clu's writers cannot be imported (they need the ``tensorboard`` package), a
minimal writer on ``tf.summary.write`` with the scalars-plugin metadata is
used; when TensorFlow is missing too, TensorBoard output is skipped with a
warning (JSONL is always written).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping

import jax
import numpy as np

log = logging.getLogger(__name__)


def _to_float(v) -> float:
    return float(np.asarray(v))


class JsonlWriter:
    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        rec = {"step": int(step)}
        for k, v in scalars.items():
            f = _to_float(v)
            rec[k] = f if math.isfinite(f) else str(f)  # JSON has no NaN/Inf
        self._f.write(json.dumps(rec, sort_keys=False) + "\n")
        self._f.flush()

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class _TfSummaryWriter:
    """Scalars to TensorBoard event files via tf.summary.write (no tensorboard pkg)."""

    def __init__(self, logdir: str):
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        self._tf = tf
        self._writer = tf.summary.create_file_writer(logdir)
        self._meta = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        ).SerializeToString()

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        tf = self._tf
        with self._writer.as_default():
            for k, v in scalars.items():
                tf.summary.write(
                    k, tf.constant(_to_float(v), tf.float32), step=int(step), metadata=self._meta
                )

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def tensorboard_writer(logdir: str):
    """clu's default writer, else the tf.summary fallback, else None."""
    try:
        from clu import metric_writers

        return metric_writers.create_default_writer(logdir, asynchronous=False)
    except ImportError as e:
        clu_error = e
    try:
        return _TfSummaryWriter(logdir)
    except Exception as e:  # noqa: BLE001
        log.warning("no TensorBoard output (clu: %s; tf.summary: %s)", clu_error, e)
        return None


class MetricWriter:
    """JSONL + TensorBoard on process 0; a no-op on other processes."""

    def __init__(self, model_dir: str, *, tensorboard: bool = True):
        self._writers = []
        if jax.process_index() != 0:
            return
        self._writers.append(JsonlWriter(os.path.join(model_dir, "metrics.jsonl")))
        if tensorboard:
            tb = tensorboard_writer(model_dir)
            if tb is not None:
                self._writers.append(tb)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not scalars:
            return
        for w in self._writers:
            w.write_scalars(step, scalars)

    def flush(self) -> None:
        for w in self._writers:
            w.flush()

    def close(self) -> None:
        for w in self._writers:
            w.close()
