"""Atomic file writes for results, metrics and reports.

A reader (or a rerun after a kill) sees either the previous file or the new
one, never a half-written file: the text goes to a temporary file in the same
folder, is flushed to disk, then renamed over the target (``os.replace``).
A failing write (full disk, ...) raises and leaves the previous file intact
and no temporary file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, **dump_kwargs) -> None:
    """``json.dumps(obj, **dump_kwargs)`` + newline, written atomically."""
    atomic_write_text(path, json.dumps(obj, **dump_kwargs) + "\n")
