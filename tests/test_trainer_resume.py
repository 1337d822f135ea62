"""Trainer process-level behaviour: SIGKILL + resume is bitwise, SIGTERM saves
and exits 0. Each test runs tests/_train_script.py in subprocesses."""

import importlib.util
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

SCRIPT = pathlib.Path(__file__).with_name("_train_script.py")
REPO = SCRIPT.parents[1]
NUM_STEPS = 16


def _cmd(model_dir, out, *extra):
    return [
        sys.executable,
        str(SCRIPT),
        str(model_dir),
        str(out),
        "--num_steps",
        str(NUM_STEPS),
        *extra,
    ]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.pop("XLA_FLAGS", None)
    return env


def _run(cmd, timeout=180):
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-4000:]}"
    return p


def _steps(model_dir) -> list[int]:
    d = pathlib.Path(model_dir) / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(int(c.name) for c in d.iterdir() if c.name.isdigit())


def _wait_for(proc, cond, timeout=120.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process ended early ({proc.returncode}):\n{out}\n{err[-4000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("timed out waiting for the training process")


def _load(npz):
    with np.load(npz, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (same seed and data)."""
    d = tmp_path_factory.mktemp("ref")
    _run(_cmd(d / "model", d / "params.npz"))
    return _load(d / "params.npz")


def _assert_bitwise(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), f"{k} differs"


def test_sigkill_then_resume_is_bitwise(reference, tmp_path):
    model_dir, out = tmp_path / "model", tmp_path / "params.npz"
    cmd = _cmd(model_dir, out, "--sleep", "0.15")
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    _wait_for(proc, lambda: any(s >= 4 for s in _steps(model_dir)))
    assert proc.poll() is None, "run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = max(_steps(model_dir))
    assert 4 <= killed_at < NUM_STEPS
    assert not out.exists()
    p = _run(cmd)
    assert f"start_step={killed_at}" in p.stdout  # it resumed, not restarted
    _assert_bitwise(_load(out), reference)
    # Training changed the params (the comparison is not vacuous).
    init, _ = _script_module().init_params()
    assert not np.array_equal(reference["layer_0/kernel"], init["layer_0"]["kernel"])


def _script_module():
    spec = importlib.util.spec_from_file_location("_train_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _metric_lines(model_dir) -> int:
    f = pathlib.Path(model_dir) / "metrics.jsonl"
    return len(f.read_text().splitlines()) if f.exists() else 0


def test_sigterm_saves_and_exits_zero_then_resumes_bitwise(reference, tmp_path):
    model_dir, out = tmp_path / "model", tmp_path / "params.npz"
    cmd = _cmd(model_dir, out, "--sleep", "0.15", "--checkpoint_every", "1000")
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    _wait_for(proc, lambda: _metric_lines(model_dir) >= 3)
    assert _steps(model_dir) == []  # no periodic checkpoint before the signal
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-4000:]
    assert "SIGTERM received: saved checkpoint at step" in stdout
    steps = _steps(model_dir)
    assert len(steps) == 1 and 3 <= steps[0] < NUM_STEPS, steps
    assert f"step {steps[0]}" in stdout
    assert not out.exists()
    p = _run(cmd)
    assert f"start_step={steps[0]}" in p.stdout
    _assert_bitwise(_load(out), reference)
