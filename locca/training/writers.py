"""Metric writers: ``model_dir/metrics.jsonl`` plus TensorBoard, process 0 only.

JSONL: one object per logged step, ``{"step": int, "<name>": float, ...}``,
appended and flushed line by line. After a resume, steps between the last
checkpoint and the interruption are logged again (append-only file; readers
should keep the last line of each step).

TensorBoard: ``clu.metric_writers.SummaryWriter(model_dir)`` event files.
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


def tensorboard_writer(logdir: str):
    """clu's TensorBoard summary writer (synchronous, so nothing is lost at exit)."""
    from clu import metric_writers

    return metric_writers.SummaryWriter(logdir)


class MetricWriter:
    """JSONL + TensorBoard on process 0; a no-op on other processes."""

    def __init__(self, model_dir: str, *, tensorboard: bool = True):
        self._writers = []
        if jax.process_index() != 0:
            return
        self._writers.append(JsonlWriter(os.path.join(model_dir, "metrics.jsonl")))
        if tensorboard:
            self._writers.append(tensorboard_writer(model_dir))

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
