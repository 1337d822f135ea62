"""T5 model: relative position buckets, prefix embeddings, KV cache, names/axes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax.traverse_util import flatten_dict
from hypothesis import given, settings
from hypothesis import strategies as st

from locca.models import t5 as t5_lib
from locca.models.t5 import T5, T5Config

TINY = T5Config(
    vocab_size=50,
    emb_dim=16,
    num_heads=2,
    num_encoder_layers=2,
    num_decoder_layers=2,
    head_dim=8,
    mlp_dim=24,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
)


def direct_bucket(rel, bidirectional, num_buckets, max_distance):
    """Bucket of relative position rel = key - query, written from the T5 paper
    (exact buckets for small distances, log-spaced up to max_distance)."""
    half = num_buckets // 2 if bidirectional else num_buckets
    offset = half if (bidirectional and rel > 0) else 0
    dist = abs(rel) if bidirectional else max(-rel, 0)
    exact = half // 2
    if dist < exact:
        return offset + dist
    log_ratio = math.log(dist / exact) / math.log(max_distance / exact)
    return offset + min(half - 1, exact + int(log_ratio * (half - exact)))


@settings(max_examples=200, deadline=None)
@given(
    rel=st.integers(-400, 400),
    bidirectional=st.booleans(),
    cfg=st.sampled_from([(32, 128), (8, 20), (16, 64), (64, 256)]),
)
def test_relative_position_bucket_matches_formula(rel, bidirectional, cfg):
    nb, md = cfg
    got = t5_lib.relative_position_bucket(
        np.array([rel]), bidirectional=bidirectional, num_buckets=nb, max_distance=md
    )[0]
    assert got == direct_bucket(rel, bidirectional, nb, md)


def test_relative_position_bucket_known_values():
    b = lambda r, bi: t5_lib.relative_position_bucket(  # noqa: E731
        np.array(r), bidirectional=bi, num_buckets=32, max_distance=128
    ).tolist()
    # Bidirectional: past keys 0..15, future keys 16..31; 8 exact distances.
    assert b([0, -1, -7, 1, 7], True) == [0, 1, 7, 17, 23]
    assert b([-16, -32, -64, -127, -128, -5000], True) == [10, 12, 14, 15, 15, 15]
    # Causal: every future key maps to bucket 0; 16 exact past distances.
    assert b([5, 0, -1, -15, -16, -1000], False) == [0, 0, 1, 15, 16, 31]


def apply(model, variables, *args, **kwargs):
    """model.apply under jit (positional arrays traced, keyword arguments baked in)."""
    return jax.jit(lambda v, *a: model.apply(v, *a, **kwargs))(variables, *args)


def _params(cfg=TINY, seed=0):
    return t5_lib.random_params(cfg, seed)


def test_parameter_names_shapes_and_logical_axes():
    model = T5(TINY)
    variables = jax.eval_shape(
        lambda: model.init(
            jax.random.PRNGKey(0), jnp.ones((1, 3), jnp.int32), jnp.ones((1, 3), jnp.int32)
        )
    )
    specs = flatten_dict(nn.get_partition_spec(variables)["params"])
    shapes = {"/".join(k): v.shape for k, v in flatten_dict(nn.unbox(variables)["params"]).items()}
    expect = {
        "token_embedder/embedding": (50, 16),
        "encoder/layers_0/attention/query/kernel": (16, 16),
        "encoder/layers_1/attention/out/kernel": (16, 16),
        "encoder/layers_0/pre_attention_layer_norm/scale": (16,),
        "encoder/layers_0/mlp/wi_0/kernel": (16, 24),
        "encoder/layers_0/mlp/wi_1/kernel": (16, 24),
        "encoder/layers_0/mlp/wo/kernel": (24, 16),
        "encoder/layers_0/pre_mlp_layer_norm/scale": (16,),
        "encoder/encoder_norm/scale": (16,),
        "encoder/relpos_bias/rel_embedding": (2, 8),
        "decoder/layers_1/self_attention/key/kernel": (16, 16),
        "decoder/layers_1/encoder_decoder_attention/value/kernel": (16, 16),
        "decoder/layers_0/pre_self_attention_layer_norm/scale": (16,),
        "decoder/layers_0/pre_cross_attention_layer_norm/scale": (16,),
        "decoder/decoder_norm/scale": (16,),
        "decoder/relpos_bias/rel_embedding": (2, 8),
        "decoder/logits_dense/kernel": (16, 50),
    }
    for name, shape in expect.items():
        assert shapes[name] == shape, name
    # One relative-position table per stack, none per layer.
    assert sum("rel_embedding" in n for n in shapes) == 2
    allowed = {"vocab", "embed", "mlp", "heads", "joined_kv", "kv", "relpos_buckets"}
    for k, spec in specs.items():
        assert spec is not None and len(spec) == len(shapes["/".join(k)]), k
        assert set(spec) <= allowed, (k, spec)
    assert tuple(specs[("token_embedder", "embedding")]) == ("vocab", "embed")
    assert tuple(specs[("encoder", "relpos_bias", "rel_embedding")]) == ("heads", "relpos_buckets")
    relu_tied = T5Config(
        **{**vars(TINY), "mlp_activations": ("relu",), "logits_via_embedding": True}
    )
    random = _params(relu_tied)
    names = {"/".join(k) for k in flatten_dict(random)}
    assert jax.tree.map(lambda x: x.shape, random) == jax.tree.map(
        lambda x: x.shape,
        nn.unbox(
            jax.eval_shape(
                lambda: T5(relu_tied).init(
                    jax.random.PRNGKey(0), jnp.ones((1, 3), jnp.int32), jnp.ones((1, 3), jnp.int32)
                )
            )
        )["params"],
    )
    assert "encoder/layers_0/mlp/wi/kernel" in names and "decoder/logits_dense/kernel" not in names


def test_prefix_embeddings_equal_embedded_tokens():
    """Prefix embeddings are prepended before the encoder stack: feeding the
    embeddings of tokens t1 as a prefix equals encoding concat(t1, t2)."""
    params = _params()
    model = T5(TINY)
    t1 = jnp.array([[3, 4, 5], [9, 8, 7]])
    t2 = jnp.array([[11, 12, 0, 0], [13, 14, 15, 16]])
    emb = params["token_embedder"]["embedding"][t1]  # [B, 3, D]
    full = apply(model, {"params": params}, jnp.concatenate([t1, t2], 1), method=T5.encode)
    pref = apply(model, {"params": params}, t2, prefix_embeddings=emb, method=T5.encode)
    np.testing.assert_allclose(pref, full, atol=1e-5, rtol=1e-5)
    # A masked prefix position behaves like a padded token.
    pmask = jnp.array([[1, 0, 1], [1, 1, 1]])
    t1_padded = t1 * pmask
    full_pad = apply(
        model, {"params": params}, jnp.concatenate([t1_padded, t2], 1), method=T5.encode
    )
    pref_pad = apply(
        model, {"params": params}, t2, prefix_embeddings=emb, prefix_mask=pmask, method=T5.encode
    )
    keep = np.asarray(jnp.concatenate([t1_padded, t2], 1) > 0)
    np.testing.assert_allclose(np.asarray(pref_pad)[keep], np.asarray(full_pad)[keep], atol=1e-5)
    assert not np.allclose(pref_pad, pref, atol=1e-3)
    # Logits through __call__ with a prefix.
    dec = jnp.array([[0, 5, 6], [0, 7, 8]])
    a = apply(model, {"params": params}, jnp.concatenate([t1, t2], 1), dec)
    b = apply(model, {"params": params}, t2, dec, prefix_embeddings=emb)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["v11", "v10"])
def test_kv_cache_logits_equal_full_decode(variant):
    cfg = TINY
    if variant == "v10":
        cfg = T5Config(**{**vars(TINY), "mlp_activations": ("relu",), "logits_via_embedding": True})
    params = _params(cfg, seed=1)
    model = T5(cfg)
    enc = jnp.array([[5, 6, 7, 8, 0], [9, 10, 11, 12, 13]])
    dec = jnp.array([[0, 3, 4, 5, 6, 7, 8], [0, 9, 9, 9, 2, 1, 4]])
    full = apply(model, {"params": params}, enc, dec)  # [B, T, V]
    encoded = apply(model, {"params": params}, enc, method=T5.encode)
    cache = t5_lib.init_cache(model, params, encoded, enc > 0, max_len=dec.shape[1])
    assert cache["decoder"]["cache_index"].shape == ()
    assert cache["decoder"]["layers_0"]["encoder_decoder_attention"]["cached_key"].shape == (
        2,
        5,
        2,
        8,
    )
    step = jax.jit(
        lambda v, tok: apply(
            model, v, None, None, tok, decode=True, method=T5.decode, mutable=["cache"]
        )
    )
    steps = []
    for i in range(dec.shape[1]):
        logits, vs = step({"params": params, "cache": cache}, dec[:, i : i + 1])
        cache = vs["cache"]
        steps.append(logits[:, 0])
    np.testing.assert_allclose(jnp.stack(steps, 1), full, atol=2e-5, rtol=2e-5)


def test_tied_head_rescale():
    cfg = T5Config(**{**vars(TINY), "logits_via_embedding": True})
    params = _params(cfg)
    model = T5(cfg)
    enc, dec = jnp.array([[4, 5, 6]]), jnp.array([[0, 7, 8]])
    logits = apply(model, {"params": params}, enc, dec)
    # The same weights with an untied head holding E^T give the unscaled
    # projection: tied logits = (x * d**-0.5) @ E^T.
    untied = T5Config(**{**vars(cfg), "logits_via_embedding": False})
    p2 = dict(params)
    p2["decoder"] = dict(
        params["decoder"], logits_dense={"kernel": params["token_embedder"]["embedding"].T}
    )
    logits_untied = apply(T5(untied), {"params": p2}, enc, dec)
    np.testing.assert_allclose(logits, logits_untied * cfg.emb_dim**-0.5, rtol=1e-5, atol=1e-6)


def test_dropout_only_when_enabled():
    cfg = T5Config(
        **{**vars(TINY), "dropout_rate": 0.3, "num_encoder_layers": 1, "num_decoder_layers": 1}
    )
    params = _params(cfg)
    model = T5(cfg)
    enc, dec = jnp.array([[4, 5, 6, 7]]), jnp.array([[0, 7, 8]])
    base = apply(model, {"params": params}, enc, dec)
    again = apply(model, {"params": params}, enc, dec)
    np.testing.assert_array_equal(base, again)
    r = {"dropout": jax.random.PRNGKey(3)}
    d1 = apply(model, {"params": params}, enc, dec, enable_dropout=True, rngs=r)
    d2 = apply(model, {"params": params}, enc, dec, enable_dropout=True, rngs=r)
    np.testing.assert_array_equal(d1, d2)
    assert not np.allclose(d1, base, atol=1e-3)


def test_bfloat16_close_to_float32():
    params = _params()
    enc, dec = jnp.array([[4, 5, 6, 7]]), jnp.array([[0, 7, 8]])
    f32 = apply(T5(TINY), {"params": params}, enc, dec)
    bf16 = apply(T5(T5Config(**{**vars(TINY), "dtype": "bfloat16"})), {"params": params}, enc, dec)
    assert bf16.dtype == jnp.float32
    assert np.max(np.abs(bf16 - f32)) / np.max(np.abs(f32)) < 5e-2


def test_bad_config_and_prefix_width():
    with pytest.raises(ValueError, match="unknown activation"):
        T5Config(mlp_activations=("geglu",))
    params = _params()
    with pytest.raises(ValueError, match="emb_dim"):
        apply(
            T5(TINY),
            {"params": params},
            jnp.array([[3]]),
            prefix_embeddings=jnp.zeros((1, 2, 7)),
            method=T5.encode,
        )
