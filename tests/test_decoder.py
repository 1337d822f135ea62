"""Captioning decoder: KV cache parity, masks, zero-init head, parameter names."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from locca.models import decoder as dec

V, D, H, MLP, DEPTH, L, N = 37, 32, 4, 64, 2, 9, 5


def _model(**kw):
    cfg = dict(vocab_size=V, width=D, depth=DEPTH, num_heads=H, mlp_dim=MLP, max_len=L)
    cfg.update(kw)
    return dec.Decoder(**cfg)


def _randomise(params, seed=0):
    """Replace every leaf by noise so the zero-init head does not hide bugs."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    new = [0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, new)


@pytest.fixture(scope="module")
def setup():
    model = _model()
    rng = jax.random.PRNGKey(0)
    enc = jax.random.normal(jax.random.PRNGKey(1), (3, N, 24))  # encoder width 24 != D
    tokens = jax.random.randint(jax.random.PRNGKey(2), (3, L), 0, V)
    params = nn.unbox(model.init(rng, enc, tokens)["params"])
    return model, _randomise(params), enc, tokens


def test_zero_init_head_gives_uniform_logits():
    model = _model()
    enc = jax.random.normal(jax.random.PRNGKey(1), (2, N, 24))
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, L), 0, V)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), enc, tokens)["params"])
    logits = model.apply({"params": params}, enc, tokens)
    assert logits.shape == (2, L, V) and logits.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(logits), 0.0)
    logp = jax.nn.log_softmax(logits)
    np.testing.assert_allclose(np.asarray(logp), -np.log(V), rtol=1e-6)
    # Not everything is zero: the rest of the network is initialised randomly.
    assert float(jnp.abs(params["EmbedTokens"]["embedding"]).sum()) > 0


def test_no_biases_by_default_and_mask_row():
    model = _model()
    enc = jnp.zeros((1, N, 24))
    variables = model.init(jax.random.PRNGKey(0), enc, jnp.zeros((1, L), jnp.int32))
    flat = jax.tree_util.tree_flatten_with_path(nn.unbox(variables["params"]))[0]
    names = ["/".join(str(k.key) for k in path) for path, _ in flat]
    assert not [n for n in names if n.endswith("/bias")], names
    params = nn.unbox(variables["params"])
    assert params["EmbedTokens"]["embedding"].shape == (V + 1, D)  # row V = mask token
    assert params["pos_embedding"].shape == (1, L, D)
    assert params["head"]["kernel"].shape == (D, V)
    assert set(params["encoderblock_0"]) == {
        "LayerNorm_0", "LayerNorm_1", "LayerNorm_2", "SelfAttn", "CrossAttn", "MlpBlock"
    }  # fmt: skip
    with_bias = _model(use_bias=True).init(jax.random.PRNGKey(0), enc, jnp.zeros((1, L), int))
    assert "bias" in nn.unbox(with_bias["params"])["head"]


def test_logical_axis_names_on_params():
    model = _model()
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, N, 24)), jnp.zeros((1, L), int))
    specs = nn.get_partition_spec(variables)["params"]
    assert tuple(specs["EmbedTokens"]["embedding"]) == ("vocab", "embed")
    assert tuple(specs["head"]["kernel"]) == ("embed", "vocab")
    blk = specs["encoderblock_1"]
    assert tuple(blk["SelfAttn"]["query"]["kernel"]) == ("embed", "heads", "kv")
    assert tuple(blk["CrossAttn"]["out"]["kernel"]) == ("heads", "kv", "embed")
    assert tuple(blk["MlpBlock"]["Dense_0"]["kernel"]) == ("embed", "mlp")


def test_kv_cache_decode_equals_full_forward(setup):
    model, params, enc, tokens = setup
    full = model.apply({"params": params}, enc, tokens)  # [B, L, V]
    assert float(jnp.std(full)) > 0.1  # non-trivial logits
    cache = dec.init_cache(model, params, enc)
    # Array leaves batch-first; cross K/V computed once, at cache creation.
    for path, leaf in jax.tree_util.tree_flatten_with_path(cache)[0]:
        assert leaf.ndim == 0 or leaf.shape[0] == 3, path
    assert cache["encoderblock_0"]["CrossAttn"]["cross_key"].shape == (3, N, H, D // H)
    step = dec.make_tokens_to_logits(model, params)
    run = jax.jit(lambda s, t, c: s(t, c))  # the step is a pytree (params are leaves)
    for i in range(L):
        logits, cache = run(step, tokens[:, i : i + 1], cache)
        assert logits.shape == (3, V)
        np.testing.assert_allclose(np.asarray(logits), np.asarray(full[:, i]), atol=2e-5, rtol=1e-5)


def test_positions_give_the_full_forward_logits_at_those_positions(setup):
    model, params, enc, tokens = setup
    full = model.apply({"params": params}, enc, tokens)  # [B, L, V]
    positions = jnp.array([[0, 4, 8], [2, 2, 3], [8, 7, 1]])  # [B, K], any order, repeats
    got = model.apply({"params": params}, enc, tokens, positions=positions)  # [B, K, V]
    assert got.shape == (3, 3, V)
    want = jnp.take_along_axis(full, positions[..., None], axis=1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)


def test_causal_mask_is_causal(setup):
    model, params, enc, tokens = setup
    base = model.apply({"params": params}, enc, tokens)
    j = 5
    changed = tokens.at[:, j].set((tokens[:, j] + 1) % V)
    out = model.apply({"params": params}, enc, changed)
    np.testing.assert_allclose(np.asarray(out[:, :j]), np.asarray(base[:, :j]), atol=1e-6)
    assert float(jnp.abs(out[:, j:] - base[:, j:]).max()) > 1e-3


def test_parallel_examples_see_all_positions(setup):
    model, params, enc, tokens = setup
    parallel = jnp.array([True, False, True])
    base = model.apply({"params": params}, enc, tokens, parallel)
    # Parallel rows ignore the input tokens altogether (all mask tokens).
    other = jax.random.randint(jax.random.PRNGKey(9), tokens.shape, 0, V)
    out = model.apply({"params": params}, enc, other, parallel)
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(base[0]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(out[2]), np.asarray(base[2]), atol=1e-6)
    assert float(jnp.abs(out[1] - base[1]).max()) > 1e-3
    # Equal to feeding the mask id explicitly with a full mask: position 0 sees
    # later positions, so it differs from the causal run on the same inputs.
    mask_in = jnp.full_like(tokens, model.mask_id)
    causal = model.apply({"params": params}, enc, mask_in)
    full = model.apply({"params": params}, enc, mask_in, jnp.ones((3,), bool))
    np.testing.assert_allclose(np.asarray(full[0]), np.asarray(base[0]), atol=1e-6)
    assert float(jnp.abs(full[:, 0] - causal[:, 0]).max()) > 1e-3
    # A parallel example's output depends on the image tokens.
    enc2 = enc.at[0].add(1.0)
    out2 = model.apply({"params": params}, enc2, tokens, parallel)
    assert float(jnp.abs(out2[0] - base[0]).max()) > 1e-3


def test_dropout_and_remat(setup):
    model, params, enc, tokens = setup
    m = _model(dropout=0.3, remat=True)
    v = {"params": params}
    a = m.apply(v, enc, tokens, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    b = m.apply(v, enc, tokens, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    c = m.apply(v, enc, tokens)  # eval: no dropout
    assert float(jnp.abs(a - b).max()) > 1e-3
    np.testing.assert_allclose(np.asarray(c), np.asarray(model.apply(v, enc, tokens)), atol=1e-5)

    def loss(p):
        return jnp.mean(m.apply({"params": p}, enc, tokens) ** 2)

    g = jax.jit(jax.grad(loss))(params)
    assert float(jnp.abs(g["encoderblock_0"]["SelfAttn"]["query"]["kernel"]).sum()) > 0


def test_errors():
    model = _model()
    enc = jnp.zeros((1, N, 24))
    with pytest.raises(ValueError, match="max_len"):
        model.init(jax.random.PRNGKey(0), enc, jnp.zeros((1, L + 1), int))
    with pytest.raises(ValueError, match="encoder tokens"):
        model.init(jax.random.PRNGKey(0), None, jnp.zeros((1, L), int))


def test_default_decoder_config():
    cfg = dec.default_decoder_config(dict(width=1024, depth=24, mlp_dim=4096, num_heads=16))
    assert cfg == dict(width=1024, depth=12, mlp_dim=4096, num_heads=16)


def test_grouped_cross_attention_equals_tiled_encoder(setup):
    model, params, enc, tokens = setup  # enc [3, N, 24]
    toks = jnp.concatenate([tokens, jnp.roll(tokens, 1, axis=1)])  # [6, L]: 2 passes x 3 images
    par = jnp.array([True, False, False, False, True, False])
    grouped = model.apply({"params": params}, enc, toks, par)
    tiled = model.apply({"params": params}, jnp.tile(enc, (2, 1, 1)), toks, par)
    np.testing.assert_allclose(np.asarray(grouped), np.asarray(tiled), atol=1e-5)
    with pytest.raises(ValueError, match="multiple"):
        model.apply({"params": params}, jnp.tile(enc, (2, 1, 1))[:4], toks)


def test_greedy_decoding_with_cache_matches_full_recompute(setup):
    from locca import decoding

    model, params, enc, tokens = setup
    cache = dec.init_cache(model, params, enc)
    step = dec.make_tokens_to_logits(model, params)
    prefix = tokens[:, :3]
    out = decoding.greedy(step, cache, batch_size=3, max_len=L, eos_id=None, prefix=prefix)
    # Reference: re-run the full decoder on the growing sequence.
    # Causal, so positions after i (zeros here) do not change logits[:, i].
    full = jax.jit(lambda x: model.apply({"params": params}, enc, x))
    seq = np.zeros((3, L), np.int32)
    for i in range(L):
        inp = np.concatenate([np.zeros((3, 1), np.int32), seq[:, :-1]], 1)
        logits = full(jnp.asarray(inp))
        seq[:, i] = np.asarray(prefix[:, i]) if i < 3 else np.argmax(logits[:, i], -1)
    np.testing.assert_array_equal(np.asarray(out), seq)
