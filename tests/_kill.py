"""Shared by the CLI SIGKILL tests: kill a training subprocess once it has a checkpoint."""

import signal
import subprocess
import time

import pytest

from transfer import common


def sigkill_after_checkpoint(
    proc: subprocess.Popen, model_dir, min_step: int = 1, timeout_s: float = 300
) -> int:
    """Polls ``model_dir`` until a completed checkpoint of step >= ``min_step``
    exists, then SIGKILLs ``proc``; -> the latest checkpoint step left behind.
    Fails the test when the run ends first or no checkpoint appears in time."""
    t0 = time.time()
    while not any(s >= min_step for s in common.checkpoint_steps(str(model_dir))):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"run ended early ({proc.returncode}):\n{out}\n{(err or '')[-4000:]}")
        if time.time() - t0 > timeout_s:
            proc.kill()
            pytest.fail("timed out waiting for a checkpoint")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return max(common.checkpoint_steps(str(model_dir)))
