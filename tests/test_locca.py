"""LocCa model + 3-task loss: one encoder pass, one decoder pass per task at its length."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from locca.models import locca

V, L, B, IMG = 50, 8, 4, 32
ENC = dict(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=(8, 8))


def _batch(seed=0, b=B, lengths=(L, L - 3, L - 2)):
    rng = np.random.default_rng(seed)
    batch = {"image": rng.integers(0, 256, (b, IMG, IMG, 3), dtype=np.uint8)}
    for t, n in zip(locca.TASKS, lengths):
        tgt = rng.integers(3, V, (b, n)).astype(np.int32)
        w = np.ones((b, n), np.int32)
        w[:, n - 2 :] = 0  # padding at the end
        tgt[w == 0] = 0
        inp = np.concatenate([np.zeros((b, 1), np.int32), tgt[:, :-1]], axis=1)
        keys = locca.task_keys(t)
        batch.update({keys[0]: inp, keys[1]: tgt, keys[2]: w})
    return batch


@pytest.fixture(scope="module")
def model_and_params():
    model = locca.build_model(vocab_size=V, encoder_config=ENC, max_len=L)
    params = locca.init_params(model, jax.random.PRNGKey(0), image_size=IMG, text_len=L)
    return model, params


def _loss_fn(model, **kwargs):
    """``locca.make_loss_fn``, jitted: one compiled program, not eager op-by-op dispatch."""
    return jax.jit(locca.make_loss_fn(model, **kwargs))


def _randomise_head(params, seed=1):
    p = jax.tree.map(lambda x: x, params)
    k = p["decoder"]["head"]["kernel"]
    p["decoder"]["head"]["kernel"] = 0.5 * jax.random.normal(jax.random.PRNGKey(seed), k.shape)
    return p


def test_structure_and_default_decoder_sizes(model_and_params):
    model, params = model_and_params
    assert set(params) == {"encoder", "decoder"}
    assert "head" not in params["encoder"]  # no classifier head
    assert "embedding" in params["encoder"] and "Transformer" in params["encoder"]
    dec = params["decoder"]
    assert sorted(k for k in dec if k.startswith("encoderblock_")) == ["encoderblock_0"]  # 2 // 2
    assert dec["EmbedTokens"]["embedding"].shape == (V + 1, 32)
    assert model.decoder.mlp_dim == 64 and model.decoder.num_heads == 2


def test_initial_loss_is_log_vocab(model_and_params):
    model, params = model_and_params
    loss_fn = _loss_fn(model, parallel_prob=0.5)
    loss, aux = loss_fn(params, {}, _batch(), jax.random.PRNGKey(0))
    for t in locca.TASKS:
        np.testing.assert_allclose(float(aux[f"loss_{t}"]), math.log(V), rtol=1e-5)
    np.testing.assert_allclose(float(loss), 3 * math.log(V), rtol=1e-5)


def test_one_encoder_pass_and_each_task_at_its_own_length(model_and_params):
    model, params = model_and_params
    loss_fn = locca.make_loss_fn(model)
    lengths = (L, L - 3, L - 2)
    jaxpr = str(jax.make_jaxpr(loss_fn)(params, {}, _batch(lengths=lengths), jax.random.PRNGKey(0)))
    assert jaxpr.count("conv_general_dilated") == 1  # the patch embedding, once
    # The decoder head (D -> V matmul) runs once per task, on B rows of that
    # task's own length (no padding to the longest task).
    heads = [
        ln for ln in jaxpr.splitlines() if "dot_general" in ln and f",{V}] = dot_general" in ln
    ]
    assert len(heads) == 3, heads
    for n in lengths:
        assert sum(f"f32[{B},{n},{V}] = dot_general" in ln for ln in heads) == 1


def test_batched_tasks_equal_separate_runs(model_and_params):
    model, params = model_and_params
    params = _randomise_head(params)
    batch = _batch(seed=3)
    full = locca.make_loss_fn(model, train=False)
    _, aux = full(params, {}, batch, jax.random.PRNGKey(0))
    for t in locca.TASKS:
        single = locca.make_loss_fn(model, tasks=(t,), train=False)
        loss_t, aux_t = single(params, {}, batch, jax.random.PRNGKey(0))
        np.testing.assert_allclose(float(aux[f"loss_{t}"]), float(loss_t), rtol=1e-5)
        np.testing.assert_allclose(float(aux[f"accuracy_{t}"]), float(aux_t["accuracy"]), rtol=1e-6)
    # Hand-computed cap loss (mean over weighted tokens).
    ki, kt, kw = locca.task_keys("cap")
    logits = model.apply(
        {"params": params}, locca.preprocess_image(batch["image"]), jnp.asarray(batch[ki])
    )
    logp = jax.nn.log_softmax(logits)
    nll = -np.take_along_axis(np.asarray(logp), batch[kt][..., None], -1)[..., 0]
    want = (nll * batch[kw]).sum() / batch[kw].sum()
    np.testing.assert_allclose(float(aux["loss_cap"]), want, rtol=1e-5)


def test_task_weights_and_cap_only(model_and_params):
    model, params = model_and_params
    params = _randomise_head(params)
    batch = _batch(seed=4)
    w = {"cap": 1.0, "aref": 0.5, "gcap": 2.0}
    loss, aux = locca.make_loss_fn(model, task_weights=w, train=False)(
        params, {}, batch, jax.random.PRNGKey(0)
    )
    want = sum(w[t] * float(aux[f"loss_{t}"]) for t in locca.TASKS)
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)
    cap_batch = {k: v for k, v in batch.items() if k == "image" or k.startswith("cap_")}
    loss_c, aux_c = locca.make_loss_fn(model, tasks=("cap",), train=False)(
        params, {}, cap_batch, jax.random.PRNGKey(0)
    )
    assert set(k for k in aux_c if k.startswith("loss_")) == {"loss_cap"}
    with pytest.raises(KeyError, match="aref_decoder_input_tokens"):
        locca.make_loss_fn(model)(params, {}, cap_batch, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="subset"):
        locca.make_loss_fn(model, tasks=("caption",))


def test_parallel_prediction_on_cap_only(model_and_params):
    model, params = model_and_params
    params = _randomise_head(params)
    batch = _batch(seed=5, b=64)
    base = _loss_fn(model, parallel_prob=0.0, train=False)
    _, aux0 = base(params, {}, batch, jax.random.PRNGKey(0))
    fn = _loss_fn(model, parallel_prob=0.5)
    fracs = []
    for s in range(3):
        _, aux = fn(params, {}, batch, jax.random.PRNGKey(s))
        fracs.append(float(aux["parallel_fraction"]))
        # aref / gcap never parallel: their losses are those of the plain run.
        np.testing.assert_allclose(float(aux["loss_aref"]), float(aux0["loss_aref"]), rtol=1e-5)
        np.testing.assert_allclose(float(aux["loss_gcap"]), float(aux0["loss_gcap"]), rtol=1e-5)
        assert abs(float(aux["loss_cap"]) - float(aux0["loss_cap"])) > 1e-4
    assert all(0.25 < f < 0.75 for f in fracs) and len(set(fracs)) > 1
    _, aux1 = _loss_fn(model, parallel_prob=1.0)(params, {}, batch, jax.random.PRNGKey(0))
    assert float(aux1["parallel_fraction"]) == 1.0
    _, auxc = _loss_fn(model, parallel_prob=0.0)(params, {}, batch, jax.random.PRNGKey(0))
    assert float(auxc["parallel_fraction"]) == 0.0


def test_loss_falls_on_fixed_batch(model_and_params):
    model, params = model_and_params
    loss_fn = locca.make_loss_fn(model, parallel_prob=0.5)
    batch = _batch(seed=6)
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s, i):
        (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(
            p, {}, batch, jax.random.PRNGKey(i)
        )
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    losses = []
    for i in range(30):
        params, state, loss = step(params, state, i)
        losses.append(float(loss))
    assert losses[-1] < 0.6 * losses[0], losses


def test_frozen_encoder_merge(model_and_params):
    model, params = model_and_params
    loss_fn = _loss_fn(model, train=False)
    trainable = {"decoder": params["decoder"]}
    frozen = {"encoder": params["encoder"]}
    a, _ = loss_fn(trainable, frozen, _batch(), jax.random.PRNGKey(0))
    b, _ = loss_fn(params, {}, _batch(), jax.random.PRNGKey(0))
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
    g = jax.jit(jax.grad(lambda p: loss_fn(p, frozen, _batch(), jax.random.PRNGKey(0))[0]))(
        trainable
    )
    assert set(g) == {"decoder"}
    with pytest.raises(ValueError, match="both trainable and frozen"):
        locca.merge_params(params, {"encoder": {"embedding": {"kernel": 1}}} | {"decoder": 1})


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_l14_config_shapes():
    model = locca.build_model(
        vocab_size=32_000, encoder_config=dict(variant="L/14", pool_type="gap"), max_len=64
    )
    shapes = jax.eval_shape(
        lambda r: locca.init_params(model, r, image_size=224, text_len=64), jax.random.PRNGKey(0)
    )
    assert _count(shapes["encoder"]) == 303_176_704
    dec = shapes["decoder"]
    assert len([k for k in dec if k.startswith("encoderblock_")]) == 12
    assert dec["EmbedTokens"]["embedding"].shape == (32_001, 1024)
    assert dec["encoderblock_0"]["MlpBlock"]["Dense_0"]["kernel"].shape == (1024, 4096)
    total = _count(shapes)
    assert 550e6 < total < 700e6, total  # "~600M parameters in total"
