"""checkpoints.verify: fixture parity through the CLI, dispatch, failure on bad weights."""

import json
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from checkpoints import verify


def test_fixture_within_tolerance(shared_fixtures):
    errors = verify.run_bv_vit(str(shared_fixtures / "bv_vit_map"))
    assert set(errors) == {"encoded", "pre_logits", "logits"}
    for key, (max_abs, max_rel) in errors.items():
        assert max_rel <= 1e-5, (key, max_abs, max_rel)


def test_cli_exit_zero(shared_fixtures, repo_root):
    r = subprocess.run(
        [sys.executable, "-m", "checkpoints.verify", str(shared_fixtures / "bv_vit_map")],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for key in ("encoded", "pre_logits", "logits"):
        assert f"{key}" in r.stdout and "max_rel=" in r.stdout
    assert "PASS" in r.stdout


def test_perturbed_weights_fail(shared_fixtures, tmp_path, capsys):
    d = tmp_path / "bv_vit_map"
    shutil.copytree(shared_fixtures / "bv_vit_map", d)
    (d / "params.npz").chmod(0o644)
    with np.load(d / "params.npz", allow_pickle=False) as f:
        flat = {k: f[k] for k in f.files}
    flat["Transformer/encoderblock_1/LayerNorm_1/bias"] = (
        flat["Transformer/encoderblock_1/LayerNorm_1/bias"] + 1e-3
    )
    np.savez(d / "params.npz", **flat)
    assert verify.main([str(d)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_detect_kind_and_t5_hook(tmp_path, shared_fixtures, monkeypatch):
    assert verify.detect_kind(str(shared_fixtures / "bv_vit_map")) == "bv_vit"
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (t5 / "model.safetensors").write_bytes(b"")
    assert verify.detect_kind(str(t5)) == "hf_t5"
    calls = []
    fake = types.ModuleType("checkpoints.hf_t5")
    fake.verify_dir = lambda d: calls.append(d) or 0
    monkeypatch.setitem(sys.modules, "checkpoints.hf_t5", fake)
    assert verify.main([str(t5)]) == 0 and calls == [str(t5)]
    fake.verify_dir = lambda d: False
    assert verify.main([str(t5)]) == 1
    del fake.verify_dir
    with pytest.raises(SystemExit, match="no verify_dir"):
        verify.main([str(t5)])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("")
    with pytest.raises(ValueError, match="unknown reference directory"):
        verify.detect_kind(str(tmp_path / "empty"))
