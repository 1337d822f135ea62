"""big_vision npz: round trips (incl. bf16), subtrees, two-tower, scan, posemb, errors."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import scipy.ndimage

from checkpoints import bv_npz
from locca.models import vit

CFG = dict(width=32, depth=2, mlp_dim=64, num_heads=4, patch_size=(8, 8), pool_type="map")


def _params(model, res=32, seed=0):
    """Random (numpy) parameters with the model's tree; no jax compute, so fast."""
    x = jnp.zeros((1, res, res, 3))
    shapes = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))["params"])
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(s.dtype), shapes)


def _assert_trees_bitwise(a, b):
    fa, fb = bv_npz.flatten(a), bv_npz.flatten(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        x, y = np.asarray(fa[k]), np.asarray(fb[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert x.tobytes() == y.tobytes(), k


def test_flatten_unflatten():
    tree = {"a": {"b": np.ones(2), "c": {"d": np.zeros(1)}}, "e": np.arange(3)}
    flat = bv_npz.flatten(tree)
    assert sorted(flat) == ["a/b", "a/c/d", "e"]
    _assert_trees_bitwise(bv_npz.unflatten(flat), tree)
    with pytest.raises(ValueError, match="both a leaf and a subtree"):
        bv_npz.unflatten({"a": 1, "a/b": 2})


def test_save_load_bitwise_including_bfloat16(tmp_path):
    p = _params(vit.Model(num_classes=3, **CFG))
    p["extra_bf16"] = np.asarray(
        np.random.default_rng(0).normal(size=(5, 7)), dtype=ml_dtypes.bfloat16
    )
    p["Transformer"]["encoder_norm"]["scale"] = p["Transformer"]["encoder_norm"]["scale"].astype(
        ml_dtypes.bfloat16
    )
    path = tmp_path / "vit.npz"
    bv_npz.save_npz(path, p)
    with np.load(path, allow_pickle=False) as raw:  # numpy stores bf16 as 2-byte void
        assert raw["extra_bf16"].dtype.kind == "V" and raw["extra_bf16"].dtype.itemsize == 2
        assert "Transformer/encoderblock_1/MultiHeadDotProductAttention_0/key/kernel" in raw.files
    back = bv_npz.load_npz(path)
    assert back["extra_bf16"].dtype == ml_dtypes.bfloat16
    _assert_trees_bitwise(back, p)
    assert os.listdir(tmp_path) == ["vit.npz"]  # no temporary files left behind
    bv_npz.save_npz(path, {"x": np.zeros(1)})  # atomic overwrite
    assert list(bv_npz.load_npz(path)) == ["x"]


def test_save_accepts_boxed_params(tmp_path):
    m = vit.Model(**CFG)
    boxed = jax.jit(m.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
    bv_npz.save_npz(tmp_path / "b.npz", boxed)
    _assert_trees_bitwise(bv_npz.load_npz(tmp_path / "b.npz"), jax.device_get(nn.unbox(boxed)))


def _two_tower(tmp_path, img):
    txt = {"Embed_0": {"embedding": np.ones((11, 8), np.float32)}, "head": {"kernel": np.eye(8)}}
    path = tmp_path / "siglip_like.npz"
    bv_npz.save_npz(path, {"img": img, "txt": txt, "t": np.float32(10.0), "b": np.float32(-10)})
    return path


def test_two_tower_subtree(tmp_path):
    m = vit.Model(num_classes=3, **CFG)
    img = _params(m)
    path = _two_tower(tmp_path, img)
    init = _params(m, seed=5)
    loaded = bv_npz.load_vit_params(init, f"{path}:img", CFG)
    _assert_trees_bitwise(loaded, img)
    _assert_trees_bitwise(bv_npz.load_npz(f"{path}:img"), img)
    assert list(bv_npz.load_npz(f"{path}:txt")) == ["Embed_0", "head"]
    with pytest.raises(ValueError, match=r"two-tower.*add ':img'"):
        bv_npz.load_vit_params(init, str(path), CFG)
    with pytest.raises(KeyError, match="no keys under subtree 'image'"):
        bv_npz.load_npz(f"{path}:image")


@pytest.mark.parametrize("suffix", [".bin", ".pt"])
def test_refuses_pickles(tmp_path, suffix):
    f = tmp_path / f"pytorch_model{suffix}"
    f.write_bytes(b"\x80\x04not really")
    with pytest.raises(ValueError, match="safetensors"):
        bv_npz.load_npz(f)


def test_scan_conversion_both_ways(tmp_path):
    m = vit.Model(num_classes=3, **CFG)
    ms = vit.Model(num_classes=3, scan=True, **CFG)
    p = _params(m)
    bv_npz.save_npz(tmp_path / "unscanned.npz", p)
    ps = bv_npz.load_vit_params(_params(ms), tmp_path / "unscanned.npz", CFG)
    k = ps["Transformer"]["encoderblock"]["MultiHeadDotProductAttention_0"]["query"]["kernel"]
    assert k.shape == (2, 32, 4, 8)
    np.testing.assert_array_equal(
        k[1],
        p["Transformer"]["encoderblock_1"]["MultiHeadDotProductAttention_0"]["query"]["kernel"],
    )
    bv_npz.save_npz(tmp_path / "scanned.npz", ps)
    _assert_trees_bitwise(bv_npz.load_vit_params(_params(m, seed=3), tmp_path / "scanned.npz"), p)
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 32, 32, 3), minval=-1, maxval=1)
    np.testing.assert_allclose(
        ms.apply({"params": ps}, x)[0], m.apply({"params": p}, x)[0], rtol=1e-5, atol=1e-6
    )


def test_posemb_resampled_to_new_grid(tmp_path):
    m32 = vit.Model(**CFG)
    p = _params(m32)  # grid 4x4
    bv_npz.save_npz(tmp_path / "p.npz", p)
    m64 = vit.Model(**CFG)
    init64 = _params(m64, res=64)  # grid 8x8
    loaded = bv_npz.load_vit_params(init64, tmp_path / "p.npz", CFG)
    pe = loaded["pos_embedding"]
    assert pe.shape == (1, 64, 32)
    ref = scipy.ndimage.zoom(p["pos_embedding"].reshape(4, 4, 32), (2, 2, 1), order=1)
    np.testing.assert_allclose(pe.reshape(8, 8, 32), ref, rtol=1e-6)
    np.testing.assert_array_equal(pe.reshape(8, 8, 32)[0, 0], p["pos_embedding"][0, 0])
    np.testing.assert_array_equal(pe.reshape(8, 8, 32)[-1, -1], p["pos_embedding"][0, -1])
    _, out = m64.apply({"params": loaded}, jnp.zeros((1, 64, 64, 3)))
    assert out["encoded"].shape == (1, 64, 32)


def test_resample_keeps_extra_cls_token():
    old = np.random.default_rng(0).normal(size=(1, 1 + 9, 4)).astype(np.float32)
    new = bv_npz.resample_posemb(old, (1, 1 + 36, 4))
    assert new.shape == (1, 37, 4)
    np.testing.assert_array_equal(new[:, 0], old[:, 0])
    np.testing.assert_allclose(new[0, 1:].reshape(6, 6, 4)[0, 0], old[0, 1])
    with pytest.raises(ValueError, match="square"):
        bv_npz.resample_posemb(np.zeros((1, 10 + 2, 4)), (1, 16, 4))


def test_mismatch_error_lists_all_problems(tmp_path):
    p = _params(vit.Model(num_classes=3, **CFG))
    flat = bv_npz.flatten(p)
    del flat["MAPHead_0/probe"]
    flat["surprise/kernel"] = np.zeros(3)
    flat["head/kernel"] = np.zeros((32, 4), np.float32)
    bv_npz.save_npz(tmp_path / "bad.npz", flat)
    with pytest.raises(ValueError) as e:
        bv_npz.load_vit_params(p, tmp_path / "bad.npz", CFG)
    msg = str(e.value)
    assert "missing (1): MAPHead_0/probe" in msg
    assert "unexpected (1): surprise/kernel" in msg
    assert "mis-shaped (1): head/kernel: checkpoint (32, 4) vs model (32, 3)" in msg
    assert "bad.npz" in msg


def test_dont_load_keeps_init_head(tmp_path):
    p = _params(vit.Model(num_classes=3, **CFG))
    bv_npz.save_npz(tmp_path / "p.npz", p)
    init = _params(vit.Model(num_classes=5, **CFG), seed=9)
    loaded = bv_npz.load_vit_params(init, tmp_path / "p.npz", CFG, dont_load=["head/.*"])
    np.testing.assert_array_equal(loaded["head"]["kernel"], init["head"]["kernel"])
    np.testing.assert_array_equal(loaded["MAPHead_0"]["probe"], p["MAPHead_0"]["probe"])


def test_loads_fixture_exactly(shared_fixtures):
    import json

    d = shared_fixtures / "bv_vit_map"
    cfg = json.loads((d / "config.json").read_text())["model_config"]
    m = vit.Model(**cfg)
    init = _params(m)
    loaded = bv_npz.flatten(bv_npz.load_vit_params(init, d / "params.npz", cfg))
    with np.load(d / "params.npz", allow_pickle=False) as f:
        for k in f.files:
            np.testing.assert_array_equal(loaded[k], f[k])
