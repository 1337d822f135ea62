"""HF CLIP vision tower -> our ViT: parity with transformers' outputs (no torch needed).

The fixture tests/data/hf_clip_tiny comes from tests/fixtures_gen/make_hf_clip.py.
"""

import io
import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

import gin
from checkpoints import bv_npz, hf_clip, hf_siglip, verify
from checkpoints import inspect as ckpt_inspect
from locca.models import pali, vit

DATA = "tests/data/hf_clip_tiny"
TINY_CONFIG = dict(num_classes=None, width=32, depth=2, mlp_dim=64, num_heads=4,
                   patch_size=(8, 8), posemb="learn", pool_type="tok", pre_norm=True,
                   mlp_act="quick_gelu", ln_eps=1e-5)  # fmt: skip


@pytest.fixture
def tiny(repo_root):
    return repo_root / DATA


def _hf(d):
    return {k: np.array(v) for k, v in hf_siglip.read_safetensors(str(d)).items()}


def _zeros_init(model, res):
    """Our ViT's plain parameter tree, zeros (shapes only traced)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, res, res, 3))))
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), nn.unbox(shapes["params"]))


def _errors(model_config, params, io_, keys=("post_layernorm", "pooler_output")):
    out = hf_siglip.apply_nchw(model_config, params, io_["pixel_values"])
    ours = {keys[0]: out["encoded"], keys[1]: out["head_input"]}
    return {k: verify.compare(np.asarray(v), io_[k])[1] for k, v in ours.items()}


def test_reproduces_transformers_outputs(tiny, capsys):
    errors = hf_clip.run_reference(str(tiny))
    assert set(errors) == {"last_hidden_state", "post_layernorm", "pooler_output"}
    for key, (max_abs, max_rel) in errors.items():
        assert max_rel <= 1e-5, (key, max_abs, max_rel)
    assert verify.detect_kind(str(tiny)) == "hf_clip"
    assert verify.main([str(tiny)]) == 0
    assert "pooler_output" in capsys.readouterr().out


def test_exact_gelu_config(tiny, tmp_path):
    """hidden_act "gelu" (erf) -> mlp_act "gelu_exact"; the tanh GELU would not match."""
    d = tmp_path / "gelu"
    shutil.copytree(tiny, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "hidden_act": "gelu"}))
    model_config, params = hf_clip.load_hf_clip(str(d))
    assert model_config["mlp_act"] == "gelu_exact"
    io_ = hf_siglip.read_io(str(d))
    keys = ("post_layernorm_gelu", "pooler_output_gelu")
    for key, err in _errors(model_config, params, io_, keys).items():
        assert err <= 1e-5, (key, err)
    tanh = _errors({**model_config, "mlp_act": "gelu"}, params, io_, keys)
    assert min(tanh.values()) > 1e-5, tanh


@pytest.mark.parametrize(
    "change",
    [{"ln_eps": 1e-6}, {"mlp_act": "gelu"}, {"mlp_act": "gelu_exact"}],
    ids=["eps", "tanh_gelu", "erf_gelu"],
)
def test_each_clip_option_matters(tiny, change):
    model_config, params = hf_clip.load_hf_clip(str(tiny))
    errors = _errors({**model_config, **change}, params, hf_siglip.read_io(str(tiny)))
    assert min(errors.values()) > 1e-5, errors


def test_model_config_and_mapping(tiny):
    cfg, params = hf_clip.load_hf_clip(str(tiny))
    assert cfg == TINY_CONFIG
    hf = _hf(tiny / "model.safetensors")
    pe = hf["embeddings.position_embedding.weight"]  # [17, 32]
    # The cls position embedding is folded into the class token.
    np.testing.assert_allclose(params["cls"][0, 0], hf["embeddings.class_embedding"] + pe[0])
    np.testing.assert_array_equal(params["pos_embedding"][0], pe[1:])
    np.testing.assert_array_equal(params["embedding"]["bias"], np.zeros(32, np.float32))
    w = hf["embeddings.patch_embedding.weight"]
    np.testing.assert_array_equal(params["embedding"]["kernel"][2, 5, 1], w[:, 1, 2, 5])
    np.testing.assert_array_equal(params["pre_norm"]["scale"], hf["pre_layrnorm.weight"])
    np.testing.assert_array_equal(
        params["Transformer"]["encoder_norm"]["bias"], hf["post_layernorm.bias"]
    )
    # Exactly the tree our ViT builds with the CLIP options.
    model = vit.Model(**cfg)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    want = {k: v.shape for k, v in bv_npz.flatten(nn.unbox(shapes["params"])).items()}
    got = {k: v.shape for k, v in bv_npz.flatten(params).items()}
    assert got == want


def test_full_clipmodel_checkpoint(tiny, tmp_path):
    """CLIPModel layout: vision_model.* used, text tower and projections ignored."""
    flat = {f"vision_model.{k}": v for k, v in _hf(tiny / "model.safetensors").items()}
    flat["vision_model.embeddings.position_ids"] = np.arange(17, dtype=np.int64)[None]
    flat["text_model.embeddings.token_embedding.weight"] = np.zeros((5, 4), np.float32)
    flat["text_model.final_layer_norm.weight"] = np.ones((4,), np.float32)
    flat["visual_projection.weight"] = np.zeros((6, 32), np.float32)
    flat["text_projection.weight"] = np.zeros((6, 4), np.float32)
    flat["logit_scale"] = np.zeros((), np.float32)
    save_file(flat, str(tmp_path / "model.safetensors"))
    vc = json.loads((tiny / "config.json").read_text())
    vc = {k: v for k, v in vc.items() if k not in ("model_type", "architectures")}
    two_tower = {"model_type": "clip", "architectures": ["CLIPModel"], "vision_config": vc,
                 "text_config": {"hidden_size": 4}, "projection_dim": 6}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(two_tower))
    cfg1, p1 = hf_clip.load_hf_clip(str(tmp_path))
    cfg0, p0 = hf_clip.load_hf_clip(str(tiny))
    assert cfg1 == cfg0
    jax.tree.map(np.testing.assert_array_equal, p1, p0)
    assert verify.detect_kind(str(tmp_path)) == "hf_clip"


def test_config_defaults_are_clip_vision_config():
    """HF omits default values; missing keys mean CLIPVisionConfig's defaults (B/32, 224)."""
    cfg = hf_clip.model_config_from_hf({"model_type": "clip", "vision_config": {}})
    assert (cfg["width"], cfg["depth"], cfg["mlp_dim"], cfg["num_heads"]) == (768, 12, 3072, 12)
    assert cfg["patch_size"] == (32, 32) and cfg["mlp_act"] == "quick_gelu"
    assert cfg["ln_eps"] == 1e-5 and hf_clip.image_size({"model_type": "clip"}) == 224


@pytest.mark.parametrize("act", ["gelu_pytorch_tanh", "relu", "silu"])
def test_unsupported_hidden_act_raises(tiny, tmp_path, act):
    with pytest.raises(ValueError, match=f"hidden_act '{act}'.*quick_gelu"):
        hf_clip.model_config_from_hf({"model_type": "clip_vision_model", "hidden_act": act})
    shutil.copytree(tiny, tmp_path / "d")
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    nested = {"model_type": "clip", "vision_config": {**cfg, "hidden_act": act}}
    (tmp_path / "d" / "config.json").write_text(json.dumps(nested))
    with pytest.raises(ValueError, match="hidden_act"):
        hf_clip.load_hf_clip(str(tmp_path / "d"))


def test_refuses_pickled_weights_and_other_models(tiny, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(FileNotFoundError, match=r"\.bin/\.pt weights are refused.*safetensors"):
        hf_clip.load_hf_clip(str(tmp_path))
    with pytest.raises(ValueError, match="model_type 'siglip_vision_model' is not clip"):
        hf_clip.load_hf_clip(str(tiny.parent / "hf_siglip_tiny"))


def test_unmapped_tensor_raises(tiny, tmp_path):
    shutil.copytree(tiny, tmp_path / "d")
    hf = _hf(tmp_path / "d" / "model.safetensors")
    hf["embeddings.extra_token"] = np.zeros((32,), np.float32)
    save_file(hf, str(tmp_path / "d" / "model.safetensors"))
    with pytest.raises(ValueError, match="CLIP tensors not mapped.*extra_token"):
        hf_clip.load_hf_clip(str(tmp_path / "d"))


@pytest.mark.parametrize(
    "name", ["pre_layrnorm.bias", "embeddings.class_embedding", "post_layernorm.weight"]
)
def test_perturbed_weights_fail(tiny, tmp_path, name):
    d = tmp_path / "tiny"
    shutil.copytree(tiny, d)
    hf = _hf(d / "model.safetensors")
    hf[name][3] += 1e-3
    (d / "model.safetensors").unlink()
    save_file(hf, str(d / "model.safetensors"))
    assert verify.main([str(d)]) == 1


def test_export_npz_loads_for_transfer(tiny, tmp_path):
    """npz + sidecar -> transfer.encoder (config from the sidecar) -> load_vit_params (also
    into the scanned layout) -> same outputs."""
    from transfer import common

    npz = str(tmp_path / "clip_tiny.npz")
    side = hf_clip.main([str(tiny), "--out", npz])
    assert side == 0
    sidecar = json.loads((tmp_path / "clip_tiny.json").read_text())
    assert sidecar["resolution"] == 32 and sidecar["mean"] == list(pali.CLIP_MEAN)
    spec = common.encoder(checkpoint=npz, resolution=32, mean=pali.CLIP_MEAN, std=pali.CLIP_STD)
    assert spec.vit_config == {k: v for k, v in TINY_CONFIG.items() if k != "num_classes"}
    io_ = hf_siglip.read_io(str(tiny))
    for scan in (False, True):
        cfg = {**spec.vit_config, "scan": scan}
        model = vit.Model(**cfg)
        init = _zeros_init(model, 32)
        params = bv_npz.load_vit_params(init, npz, cfg)
        for key, err in _errors(cfg, params, io_).items():
            assert err <= 1e-5, (scan, key, err)


def test_clip_gin_binds_mean_std(repo_root):
    from transfer import gin_flags
    from transfer import train as train_lib

    train_lib.register_configurables()
    gin_flags.parse_gin(
        ["runs/finetune.gin", str(repo_root / "gin/encoders/clip_l14_224.gin")],
        ["MODEL_DIR = '/tmp/unused'", "MIXTURE_OR_TASK_NAME = 'shapes_vqa'"],
    )
    assert gin.query_parameter("%ENCODER_CHECKPOINT").endswith(".npz")
    gin.bind_parameter("transfer.encoder.checkpoint", None)
    spec = gin.get_configurable("transfer.encoder")()
    gin.clear_config()
    prep = spec.preprocessing
    assert prep.mean == pali.CLIP_MEAN and prep.std == pali.CLIP_STD
    assert prep.resolution == (224, 224)
    u8 = np.arange(224 * 224 * 3, dtype=np.int64).reshape(1, 224, 224, 3) % 256
    x = np.asarray(prep(jnp.asarray(u8, jnp.uint8)))
    want = (u8 / 255.0 - np.array(hf_clip.CLIP_MEAN)) / np.array(hf_clip.CLIP_STD)
    np.testing.assert_allclose(x, want, rtol=1e-6, atol=1e-6)
    # The L/14 tree: cls + 256 patch posembs, pre_norm, CLIP activation and epsilon.
    vc = spec.vit_config
    assert (vc["pre_norm"], vc["mlp_act"], vc["ln_eps"], vc["pool_type"]) == (
        True, "quick_gelu", 1e-5, "tok")  # fmt: skip
    model = vit.Model(**{**vc, "depth": 1})
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))))
    flat = bv_npz.flatten(nn.unbox(shapes["params"]))
    assert flat["pos_embedding"].shape == (1, 256, 1024) and flat["cls"].shape == (1, 1, 1024)
    assert flat["pre_norm/scale"].shape == (1024,)


def test_vit_defaults_unchanged_and_options():
    """Defaults build big_vision's tree; pre_norm only adds ``pre_norm``; activations."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 16, 16, 3)), jnp.float32)
    base = dict(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=(8, 8), pool_type="tok")
    p0 = vit.Model(**base).init(jax.random.PRNGKey(0), x)["params"]
    p1 = vit.Model(**base, pre_norm=True).init(jax.random.PRNGKey(0), x)["params"]
    k0, k1 = set(bv_npz.flatten(nn.unbox(p0))), set(bv_npz.flatten(nn.unbox(p1)))
    assert not any("pre_norm" in k for k in k0)
    assert k1 - k0 == {"pre_norm/scale", "pre_norm/bias"} and k0 <= k1
    # Default = tanh GELU, i.e. the same numbers as before the options existed.
    y0, _ = vit.Model(**base).apply({"params": p0}, x)
    y1, _ = vit.Model(**base, mlp_act="gelu", ln_eps=1e-6).apply({"params": p0}, x)
    np.testing.assert_array_equal(y0, y1)
    z = jnp.linspace(-4, 4, 9)
    np.testing.assert_allclose(vit.quick_gelu(z), z / (1 + np.exp(-1.702 * np.asarray(z))), 1e-6)
    np.testing.assert_allclose(vit.mlp_activation("gelu")(z), jax.nn.gelu(z, approximate=True))
    np.testing.assert_allclose(
        vit.mlp_activation("gelu_exact")(z), jax.nn.gelu(z, approximate=False)
    )
    with pytest.raises(ValueError, match="Unknown mlp_act 'swish'"):
        vit.Model(**base, mlp_act="swish").init(jax.random.PRNGKey(0), x)


def test_inspect_safetensors(tiny):
    buf = io.StringIO()
    cfg = ckpt_inspect.describe(str(tiny / "model.safetensors"), out=buf)
    text = buf.getvalue()
    assert "Hugging Face CLIP vision names" in text and "parameters: 23,936" in text
    assert "pre_norm=True mlp_act=quick_gelu ln_eps=1e-05" in text
    assert (cfg["width"], cfg["depth"], cfg["num_heads"], cfg["mlp_dim"]) == (32, 2, 4, 64)
    assert cfg["pool_type"] == "tok" and cfg["resolution"] == (32, 32) and cfg["pre_norm"]
