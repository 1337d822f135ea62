"""HF SigLIP vision tower -> our ViT: parity with transformers' outputs (no torch needed)."""

import io
import json
import shutil
import struct

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from checkpoints import hf_siglip, verify
from checkpoints import inspect as ckpt_inspect

DATA = "tests/data/hf_siglip_tiny"


@pytest.fixture
def tiny(repo_root):
    return repo_root / DATA


def test_reproduces_transformers_outputs(tiny):
    errors = hf_siglip.run_reference(str(tiny))
    assert set(errors) == {"last_hidden_state", "pooler_output"}
    for key, (max_abs, max_rel) in errors.items():
        assert max_rel <= 1e-5, (key, max_abs, max_rel)
    assert verify.detect_kind(str(tiny)) == "hf_siglip"
    assert verify.main([str(tiny)]) == 0


def test_model_config_and_mapping(tiny):
    cfg, params = hf_siglip.load_hf_siglip(str(tiny))
    assert cfg == dict(num_classes=None, width=32, depth=2, mlp_dim=64, num_heads=4,
                       patch_size=(8, 8), posemb="learn", pool_type="map")  # fmt: skip
    hf = hf_siglip.read_safetensors(str(tiny / "model.safetensors"))
    assert params["embedding"]["kernel"].shape == (8, 8, 3, 32)
    # Conv OIHW -> HWIO.
    w = hf["embeddings.patch_embedding.weight"]
    np.testing.assert_array_equal(params["embedding"]["kernel"][2, 5, 1], w[:, 1, 2, 5])
    # q projection with the head split: x @ W.T + b == einsum over [D, H, D/H].
    x = np.random.default_rng(0).normal(size=32).astype(np.float32)
    q = params["Transformer"]["encoderblock_1"]["MultiHeadDotProductAttention_0"]["query"]
    w_q = hf["encoder.layers.1.self_attn.q_proj.weight"]
    ref = w_q @ x + hf["encoder.layers.1.self_attn.q_proj.bias"]
    ours = np.einsum("d,dhk->hk", x, q["kernel"]) + q["bias"]
    np.testing.assert_allclose(ours.reshape(-1), ref, rtol=1e-5, atol=1e-6)
    # MAP head: the value third of in_proj.
    v = params["MAPHead_0"]["MultiHeadDotProductAttention_0"]["value"]
    ref = hf["head.attention.in_proj_weight"][64:] @ x + hf["head.attention.in_proj_bias"][64:]
    ours = np.einsum("d,dhk->hk", x, v["kernel"]) + v["bias"]
    np.testing.assert_allclose(ours.reshape(-1), ref, rtol=1e-5, atol=1e-6)
    o = params["MAPHead_0"]["MultiHeadDotProductAttention_0"]["out"]["kernel"]
    assert o.shape == (4, 8, 32)


def test_two_tower_prefix_and_config(tiny, tmp_path):
    hf = hf_siglip.read_safetensors(str(tiny / "model.safetensors"))
    flat = {f"vision_model.{k}": np.array(v) for k, v in hf.items()}
    flat["text_model.embeddings.token_embedding.weight"] = np.zeros((5, 4), np.float32)
    flat["logit_scale"] = np.zeros((1,), np.float32)
    save_file(flat, str(tmp_path / "model.safetensors"))
    vc = json.loads((tiny / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip", "vision_config": vc}))
    _, p1 = hf_siglip.load_hf_siglip(str(tmp_path))
    _, p0 = hf_siglip.load_hf_siglip(str(tiny))
    np.testing.assert_array_equal(p1["pos_embedding"], p0["pos_embedding"])
    np.testing.assert_array_equal(p1["MAPHead_0"]["probe"], np.array(hf["head.probe"]))


@pytest.mark.parametrize("bad", [{"hidden_act": "gelu"}, {"layer_norm_eps": 1e-5}])
def test_unsupported_config_raises(bad):
    with pytest.raises(ValueError, match="our ViT uses"):
        hf_siglip.model_config_from_hf({"model_type": "siglip_vision_model", **bad})


def test_refuses_pickled_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip_vision_model"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        hf_siglip.load_hf_siglip(str(tmp_path))


def test_read_safetensors_bfloat16(tmp_path):
    a = np.random.default_rng(0).normal(size=(3, 4)).astype(ml_dtypes.bfloat16)
    raw = a.tobytes()
    header = json.dumps({"x": {"dtype": "BF16", "shape": [3, 4], "data_offsets": [0, len(raw)]}})
    hb = header.encode()
    (tmp_path / "t.safetensors").write_bytes(struct.pack("<Q", len(hb)) + hb + raw)
    b = hf_siglip.read_safetensors(str(tmp_path / "t.safetensors"))["x"]
    assert b.dtype == ml_dtypes.bfloat16 and b.tobytes() == raw


def test_perturbed_weights_fail(tiny, tmp_path):
    d = tmp_path / "tiny"
    shutil.copytree(tiny, d)
    hf = {
        k: np.array(v) for k, v in hf_siglip.read_safetensors(str(d / "model.safetensors")).items()
    }
    hf["encoder.layers.0.mlp.fc2.bias"][3] += 1e-3
    (d / "model.safetensors").unlink()
    save_file(hf, str(d / "model.safetensors"))
    assert verify.main([str(d)]) == 1


def test_inspect_safetensors(tiny):
    buf = io.StringIO()
    cfg = ckpt_inspect.describe(str(tiny / "model.safetensors"), out=buf)
    assert (
        "head.attention.in_proj_weight" in buf.getvalue() and "parameters: 32,352" in buf.getvalue()
    )
    assert (cfg["width"], cfg["depth"], cfg["num_heads"], cfg["mlp_dim"]) == (32, 2, 4, 64)
    assert cfg["pool_type"] == "map" and cfg["resolution"] == (32, 32)
