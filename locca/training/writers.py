"""Metric writers: ``model_dir/metrics.jsonl`` plus TensorBoard, process 0 only.

JSONL: one object per logged step, ``{"step": int, "<name>": float, ...}``,
appended line by line. Each line goes out as one ``write`` of the complete
line on an ``O_APPEND`` descriptor, then ``fsync``, so a crash leaves at most
a torn *final* line (a partial record without its newline): the next writer
cuts that torn tail off before appending (logging what it dropped), and
:func:`read_jsonl` ignores it, with a count, instead of failing. After a
resume, steps between the last checkpoint and the interruption are logged
again (append-only file; readers should keep the last line of each step).

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


def drop_torn_tail(path: str) -> int:
    """Cuts a torn final line (bytes after the last newline) off ``path``.

    A crash during an append can leave a partial record without its newline;
    appending after it would glue the next record onto it. Returns the number
    of bytes dropped (0 when the file is missing, empty or ends in a newline).
    """
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        keep, pos, chunk = 0, size, 1 << 16
        while pos > 0:  # find the last newline, reading backwards
            start = max(0, pos - chunk)
            f.seek(start)
            i = f.read(pos - start).rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    log.warning("%s: dropped a torn final line (%d bytes) left by a crash", path, size - keep)
    return size - keep


def append_jsonl(fd: int, record: Mapping) -> None:
    """Appends ``record`` as one complete line: a single ``os.write`` on an
    ``O_APPEND`` descriptor, then ``fsync`` (a crash cannot tear earlier lines)."""
    data = (json.dumps(record, sort_keys=False) + "\n").encode("utf-8")
    n = os.write(fd, data)
    while n < len(data):  # a short write (e.g. a signal): finish the same line
        n += os.write(fd, data[n:])
    os.fsync(fd)


def read_jsonl(path: str) -> tuple[list[dict], int]:
    """-> (records, number of torn final lines ignored: 0 or 1).

    A final line without its newline that is not valid JSON is the trace of a
    crash during an append: it is ignored (and logged). Any other malformed
    line is a ValueError naming the file and the line number.
    """
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as e:
            raise ValueError(f"{path}: line {n} is not a JSON object ({e})") from None
    if tail.strip():
        try:
            records.append(json.loads(tail))
        except ValueError:
            log.warning("%s: ignored a torn final line (%d bytes)", path, len(tail))
            return records, 1
    return records, 0


class JsonlWriter:
    """Appends one JSON line per ``write_scalars`` (see the module doc)."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.dropped_bytes = drop_torn_tail(path)
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        rec = {"step": int(step)}
        for k, v in scalars.items():
            f = _to_float(v)
            rec[k] = f if math.isfinite(f) else str(f)  # JSON has no NaN/Inf
        if self._fd is None:
            raise ValueError(f"{self.path}: write after close")
        append_jsonl(self._fd, rec)

    def flush(self) -> None:  # every line is already on disk
        pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
