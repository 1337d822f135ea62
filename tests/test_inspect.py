"""checkpoints.inspect: tree listing, counts, and ViT inference from saved checkpoints."""

import io

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from checkpoints import bv_npz
from checkpoints import inspect as ckpt_inspect
from locca.models import vit


def _save(path, res=48, **kw):
    m = vit.Model(**kw)
    p = jax.device_get(
        nn.unbox(jax.jit(m.init)(jax.random.PRNGKey(0), jnp.zeros((1, res, res, 3))))
    )
    bv_npz.save_npz(path, p["params"])
    return p["params"]


@pytest.mark.parametrize(
    "kw",
    [
        dict(variant="mu/8", pool_type="map", num_classes=10),
        dict(variant="mu/16", pool_type="tok", rep_size=16, scan=True),
        dict(width=32, depth=3, mlp_dim=48, num_heads=4, patch_size=(4, 4), posemb="sincos2d"),
    ],
)
def test_infers_saved_vit(tmp_path, kw):
    params = _save(tmp_path / "v.npz", **kw)
    buf = io.StringIO()
    cfg = ckpt_inspect.describe(str(tmp_path / "v.npz"), out=buf)
    text = buf.getvalue()
    n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    assert f"parameters: {n:,}" in text
    assert "embedding/kernel" in text and "float32" in text
    want = {**vit.decode_variant(kw.get("variant")), **kw}
    for key in ("width", "depth", "mlp_dim", "num_heads", "pool_type", "posemb"):
        if key in want:
            assert cfg[key] == want[key], key
    assert cfg["patch_size"] == tuple(want["patch_size"])
    if want.get("posemb", "learn") == "learn":
        assert cfg["resolution"] == (48, 48) and "resolution=48x48" in text
    assert cfg["variant"] == kw.get("variant")
    # The inferred config rebuilds exactly the saved tree.
    model_cfg = {k: v for k, v in cfg.items() if k not in ("resolution", "variant")}
    res = 48 if cfg["resolution"] is None else cfg["resolution"][0]
    shapes = jax.eval_shape(
        lambda: vit.Model(**model_cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, res, res, 3)))
    )
    got = {k: v.shape for k, v in bv_npz.flatten(nn.unbox(shapes["params"])).items()}
    assert got == {k: v.shape for k, v in bv_npz.flatten(params).items()}


def test_two_tower_and_bf16(tmp_path):
    img = _save(tmp_path / "img.npz", variant="mu/8", pool_type="map")
    img = jax.tree.map(lambda a: np.asarray(a, ml_dtypes.bfloat16), img)
    bv_npz.save_npz(tmp_path / "tt.npz", {"img": img, "txt": {"w": np.zeros((3, 2), np.float32)}})
    buf = io.StringIO()
    cfg = ckpt_inspect.describe(str(tmp_path / "tt.npz"), out=buf)
    assert "add" not in buf.getvalue() and "tt.npz:img" in buf.getvalue()
    assert "bfloat16" in buf.getvalue() and cfg["width"] == 32
    buf = io.StringIO()
    cfg = ckpt_inspect.describe(f"{tmp_path / 'tt.npz'}:img", out=buf, show_tree=False)
    assert cfg["pool_type"] == "map" and "txt/w" not in buf.getvalue()


def test_safetensors_headers(tmp_path):
    from safetensors.numpy import save_file

    params = _save(tmp_path / "v.npz", variant="mu/8")
    save_file({k: np.asarray(v) for k, v in bv_npz.flatten(params).items()}, tmp_path / "v.st")
    (tmp_path / "v.st").rename(tmp_path / "v.safetensors")
    buf = io.StringIO()
    cfg = ckpt_inspect.describe(str(tmp_path / "v.safetensors"), out=buf)
    assert cfg["variant"] == "mu/8" and "(1, 36, 32)" in buf.getvalue()
    assert ckpt_inspect.main([str(tmp_path / "v.safetensors"), "--no-tree"]) == 0


def test_not_a_vit(tmp_path):
    bv_npz.save_npz(tmp_path / "x.npz", {"a": np.zeros(3)})
    buf = io.StringIO()
    assert ckpt_inspect.describe(str(tmp_path / "x.npz"), out=buf) is None
    assert "not recognised" in buf.getvalue()
