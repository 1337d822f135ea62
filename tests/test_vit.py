"""ViT: big_vision parameter tree, counts, pooling/head options, scan, axis names."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from checkpoints import bv_npz
from locca.models import vit

AXES = {"embed", "mlp", "heads", "kv", "batch", "length", "vocab", None}
TINY = dict(width=32, depth=2, mlp_dim=64, num_heads=4, patch_size=(8, 8))


def _shapes(model, res=224):
    v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, res, res, 3))))
    return nn.unbox(v["params"])


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    "variant,expected",
    [("B/16", 85_797_120), ("L/14", 303_176_704), ("So400m/14", 412_442_352)],
)
def test_param_counts(variant, expected):
    assert _count(_shapes(vit.Model(variant=variant, pool_type="gap"))) == expected


def test_decode_variant():
    assert vit.decode_variant("B/16") == dict(
        width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=(16, 16)
    )
    assert vit.decode_variant("So400m/14")["mlp_dim"] == 4304
    assert vit.decode_variant("mu")["width"] == 32
    assert "patch_size" not in vit.decode_variant("L")
    for name in ["mu", "Ti", "S", "M", "B", "L", "So400m", "H", "g", "G"]:
        cfg = vit.decode_variant(name + "/8")
        assert cfg["width"] % cfg["num_heads"] == 0
    assert vit.decode_variant(None) == {}
    with pytest.raises(ValueError, match="Unknown ViT variant"):
        vit.decode_variant("XL/16")
    m = vit.Model(variant="B/16", width=64)  # explicit kwargs override the variant
    assert m.width == 64 and m.depth == 12


def test_tree_matches_big_vision_fixture(shared_fixtures):
    import json

    d = shared_fixtures / "bv_vit_map"
    cfg = json.loads((d / "config.json").read_text())["model_config"]
    ours = bv_npz.flatten(_shapes(vit.Model(**cfg), res=32))
    with np.load(d / "params.npz", allow_pickle=False) as f:
        ref = {k: f[k].shape for k in f.files}
    assert {k: tuple(v.shape) for k, v in ours.items()} == ref


def test_logical_axis_names():
    for scan in (False, True):
        m = vit.Model(num_classes=5, pool_type="map", rep_size=True, scan=scan, **TINY)
        v = jax.eval_shape(lambda m=m: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))))
        leaves = jax.tree.leaves(v["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
        assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
        for x in leaves:
            assert len(x.names) == x.value.ndim and set(x.names) <= AXES, x.names
    flat = bv_npz.flatten(nn.unbox(v["params"]))
    assert flat["Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"].shape == (2, 32, 64)


def _init(model, res=16, seed=0):
    """Random parameters (numpy, perturbed so biases matter) and an input batch."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (2, res, res, 3)).astype(np.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(seed), x))["params"]
    p = jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(s.dtype), nn.unbox(shapes))
    return p, x


@pytest.mark.parametrize("pool", ["gap", "map", "tok", "0", "none"])
def test_pooling_shapes(pool):
    m = vit.Model(num_classes=7 if pool != "none" else None, pool_type=pool, **TINY)
    p, x = _init(m)
    y, out = m.apply({"params": p}, x)
    n_tok = 4 + (pool == "tok")
    assert out["encoded"].shape == (2, n_tok, 32)
    assert out["stem"].shape == (2, 2, 2, 32)
    assert out["with_posemb"].shape == (2, 4, 32)
    if pool == "none":
        assert "head_input" not in out and y.shape == (2, 4, 32)
    else:
        assert out["head_input"].shape == (2, 32) and y.shape == (2, 7)
        assert out["logits_2d"].shape == (2, 2, 2, 7)
    if pool == "gap":
        np.testing.assert_allclose(out["head_input"], out["encoded"].mean(1), rtol=1e-6)
    if pool in ("tok", "0"):
        np.testing.assert_array_equal(out["head_input"], out["encoded"][:, 0])
    assert ("cls" in p) == (pool == "tok") and ("MAPHead_0" in p) == (pool == "map")


def test_rep_size_and_head_zeroinit():
    m = vit.Model(num_classes=3, rep_size=16, **TINY)
    x = jnp.ones((1, 16, 16, 3))
    p = nn.unbox(jax.jit(m.init)(jax.random.PRNGKey(0), x)["params"])
    assert p["pre_logits"]["kernel"].shape == (32, 16)
    assert not np.any(p["head"]["kernel"])  # head_zeroinit
    y, out = m.apply({"params": p}, x)
    assert out["pre_logits"].shape == (1, 16) and np.all(np.abs(out["pre_logits"]) <= 1)
    np.testing.assert_allclose(y, np.broadcast_to(p["head"]["bias"], (1, 3)))
    m2 = vit.Model(num_classes=3, head_zeroinit=False, **TINY)
    p2 = nn.unbox(jax.jit(m2.init)(jax.random.PRNGKey(0), x)["params"])
    assert np.any(p2["head"]["kernel"])


def test_sincos2d_posemb():
    m = vit.Model(posemb="sincos2d", **TINY)
    p, x = _init(m)
    assert "pos_embedding" not in p
    _, out = m.apply({"params": p}, x)
    pe = np.asarray(out["with_posemb"] - out["stem"].reshape(2, 4, 32))[0]
    # Independent float64 formula: [sin(x w), cos(x w), sin(y w), cos(y w)].
    omega = 1.0 / 10000 ** (np.arange(8) / 7)
    yy, xx = np.mgrid[:2, :2]
    ref = np.concatenate(
        [
            np.sin(np.outer(xx.ravel(), omega)),
            np.cos(np.outer(xx.ravel(), omega)),
            np.sin(np.outer(yy.ravel(), omega)),
            np.cos(np.outer(yy.ravel(), omega)),
        ],
        axis=1,
    )
    np.testing.assert_allclose(pe, ref, atol=1e-5)
    with pytest.raises(ValueError, match="posemb"):
        jax.eval_shape(vit.Model(posemb="bogus", **TINY).init, jax.random.PRNGKey(0), x)


def test_scan_matches_unscanned():
    m = vit.Model(num_classes=5, pool_type="map", **TINY)
    ms = vit.Model(num_classes=5, pool_type="map", scan=True, **TINY)
    p, x = _init(m)
    ps = bv_npz.unflatten(bv_npz._to_scanned(bv_npz.flatten(p)))
    want = jax.tree.map(lambda s: s.shape, _shapes(ms, res=16))
    assert jax.tree.map(lambda a: a.shape, ps) == want
    y, out = m.apply({"params": p}, x)
    ys, outs = ms.apply({"params": ps}, x)
    np.testing.assert_allclose(ys, y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outs["encoded"], out["encoded"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        outs["encoder"]["block01"]["+mlp"], out["encoder"]["block01"]["+mlp"], rtol=1e-5, atol=1e-6
    )
    # Gradients flow through remat + scan.
    g = jax.jit(jax.grad(lambda q: ms.apply({"params": q}, x)[0].sum()))(ps)
    assert np.any(g["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"])


def test_dtype_mm_bfloat16_close_to_float32():
    m = vit.Model(num_classes=5, pool_type="map", **TINY)
    mb = vit.Model(num_classes=5, pool_type="map", dtype_mm="bfloat16", **TINY)
    p, x = _init(m)
    _, out = m.apply({"params": p}, x)
    _, outb = mb.apply({"params": p}, x)
    assert outb["stem"].dtype == jnp.bfloat16
    assert jax.tree.leaves(p)[0].dtype == jnp.float32  # params stay float32
    err = np.abs(np.asarray(outb["encoded"], np.float32) - out["encoded"]).max()
    assert 0 < err < 0.1 * np.abs(out["encoded"]).max()


def test_dropout_only_in_train():
    m = vit.Model(num_classes=5, dropout=0.5, **TINY)
    p, x = _init(m)
    a, _ = m.apply({"params": p}, x)
    b, _ = m.apply({"params": p}, x)
    np.testing.assert_array_equal(a, b)
    c, _ = m.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
    assert not np.allclose(a, c)
