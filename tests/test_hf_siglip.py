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


def test_export_npz_loads_for_transfer(tiny, tmp_path, capsys):
    """HF dir -> npz + sidecar (CLI) -> transfer.encoder (config from the sidecar) ->
    load_vit_params -> the transformers outputs of io.npz; pixels in [-1, 1]."""
    import jax
    import jax.numpy as jnp

    from checkpoints import bv_npz
    from locca.models import vit
    from transfer import common

    npz = str(tmp_path / "siglip_tiny.npz")
    assert hf_siglip.main([str(tiny), "--out", npz]) == 0
    assert "32,352 parameters" in capsys.readouterr().out
    sidecar = json.loads((tmp_path / "siglip_tiny.json").read_text())
    assert sidecar["resolution"] == 32 and sidecar["value_range"] == [-1.0, 1.0]
    assert "mean" not in sidecar and sidecar["num_params"] == 32352
    spec = common.encoder(checkpoint=npz, vit_config=None, resolution=32)
    cfg, _ = hf_siglip.load_hf_siglip(str(tiny))
    assert spec.vit_config == {k: v for k, v in cfg.items() if k != "num_classes"}
    u8 = np.arange(32 * 32 * 3).reshape(1, 32, 32, 3) % 256
    x = np.asarray(spec.preprocessing(jnp.asarray(u8, jnp.uint8)))
    np.testing.assert_allclose(x, u8 / 127.5 - 1, rtol=1e-6, atol=1e-6)
    model = vit.Model(**spec.vit_config)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), bv_npz._unbox(shapes["params"]))
    params = bv_npz.load_vit_params(init, npz, dict(spec.vit_config))
    io_ = hf_siglip.read_io(str(tiny))
    out = hf_siglip.apply_nchw(spec.vit_config, params, io_["pixel_values"])
    for key, ours in (("last_hidden_state", out["encoded"]), ("pooler_output", out["head_input"])):
        _, rel = verify.compare(np.asarray(ours), io_[key])
        assert rel <= 1e-5, (key, rel)


def test_hf_gin_matches_converter_for_siglip_base(repo_root):
    """gin/encoders/siglip_b16_224_hf.gin = what the converter writes for HF
    "google/siglip-base-patch16-224" (its config.json keeps SiglipVisionConfig's defaults:
    768 wide, 12 deep, MLP 3072, 12 heads, patch 16, 224 px, gelu_pytorch_tanh, eps 1e-6)."""
    import gin
    from transfer import gin_flags
    from transfer import train as train_lib

    hf_config = {"model_type": "siglip", "vision_config": {"model_type": "siglip_vision_model"}}
    want = hf_siglip.model_config_from_hf(hf_config)
    want.pop("num_classes")
    train_lib.register_configurables()
    gin.clear_config()
    try:
        gin_flags.parse_gin(
            ["runs/finetune.gin", str(repo_root / "gin/encoders/siglip_b16_224_hf.gin")],
            ["MODEL_DIR = '/tmp/unused'", "MIXTURE_OR_TASK_NAME = 'shapes_vqa'"],
        )
        ckpt = gin.query_parameter("%ENCODER_CHECKPOINT")
        gin.bind_parameter("transfer.encoder.checkpoint", None)
        spec = gin.get_configurable("transfer.encoder")()
    finally:
        gin.clear_config()
    assert ckpt.endswith(".npz") and ":" not in ckpt  # single tower, not big_vision's ":img"
    assert spec.vit_config == want
    assert want["pool_type"] == "map" and want["patch_size"] == (16, 16) and want["width"] == 768
    assert spec.resolution == hf_siglip.image_size(hf_config) == 224
    assert spec.preprocessing.mean == (0.5,) * 3 and spec.preprocessing.std == (0.5,) * 3
