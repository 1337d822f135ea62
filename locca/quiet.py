"""Keeps a healthy run free of ERROR lines that are not errors.

Two probes print ERROR-looking lines on a machine without a GPU:

* TensorFlow (the data pipeline) probes CUDA when it first lists devices and
  prints ``E... cuda_platform.cc] failed call to cuInit: ... UNKNOWN ERROR
  (303)``. On a machine without an NVIDIA driver that probe can only fail, so
  :func:`quiet_accelerator_probe` sets ``TF_CPP_MIN_LOG_LEVEL=3`` there (before
  TensorFlow is imported; never when the user set it, never on a machine with
  an NVIDIA driver, so GPU errors stay visible where a GPU exists).
* gin tries each include against every search path and logs
  ``ERROR:root:Path not found: pretrain/cap_tiny.gin`` for each miss (the file
  is then found under the next path). :func:`quiet_gin_search_probes` drops
  exactly those records (gin's resource_reader module); a gin file that is
  really missing is still gin's own ``IOError`` naming it.

Both run when ``locca`` is imported (every entry point imports it first).
"""

from __future__ import annotations

import glob
import logging
import os

_GIN_PROBE_MESSAGES = ("Path not found: %s", "system_path_file_exists:%s")


def has_nvidia_driver() -> bool:
    """Whether this machine has an NVIDIA kernel driver (a CUDA probe can succeed)."""
    return os.path.exists("/proc/driver/nvidia/version") or bool(glob.glob("/dev/nvidia[0-9]*"))


def quiet_accelerator_probe(environ=None) -> bool:
    """Sets ``TF_CPP_MIN_LOG_LEVEL=3`` on a machine without an NVIDIA driver
    unless already set; returns whether it set it."""
    env = os.environ if environ is None else environ
    if "TF_CPP_MIN_LOG_LEVEL" in env or has_nvidia_driver():
        return False
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return True


class _GinProbeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        probe = record.msg in _GIN_PROBE_MESSAGES
        return not (probe and record.pathname.replace("\\", "/").endswith("gin/resource_reader.py"))


def quiet_gin_search_probes() -> None:
    """Drops gin's per-search-path 'Path not found' records (idempotent)."""
    root = logging.getLogger()
    if not any(isinstance(f, _GinProbeFilter) for f in root.filters):
        root.addFilter(_GinProbeFilter())
