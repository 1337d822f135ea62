"""PaLI model: freezing, gradients, prefix mask, loss, KV-cache decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from locca import losses
from locca.models import pali, t5

T5_CFG = t5.T5Config(
    vocab_size=48,
    emb_dim=32,
    num_heads=2,
    num_encoder_layers=1,
    num_decoder_layers=1,
    head_dim=16,
    mlp_dim=64,
)
VIT_CFG = dict(width=24, depth=1, mlp_dim=48, num_heads=2, patch_size=(8, 8), pool_type="gap")


def make_model(**kw):
    prep = pali.ImagePreprocessing.create(resolution=16, value_range=(-1, 1))
    return pali.PaLI(vit_config=VIT_CFG, t5_config=T5_CFG, preprocessing=prep, **kw)


@pytest.fixture(scope="module")
def model_and_params():
    model = make_model()
    params, axes = pali.init_params(model, jax.random.PRNGKey(0))
    return model, params, axes


def make_batch(rng=0, b=2, enc_len=6, dec_len=5):
    r = np.random.RandomState(rng)
    enc = r.randint(3, T5_CFG.vocab_size, size=(b, enc_len)).astype(np.int32)
    enc[0, 3:] = 0  # padded prompt
    tgt = r.randint(3, T5_CFG.vocab_size, size=(b, dec_len)).astype(np.int32)
    tgt[:, -1] = 1
    tgt[1, 2] = 1
    tgt[1, 3:] = 0
    dec_in = np.concatenate([np.zeros((b, 1), np.int32), tgt[:, :-1]], axis=1)
    return {
        "image": r.randint(0, 256, size=(b, 16, 16, 3)).astype(np.uint8),
        "encoder_input_tokens": enc,
        "decoder_input_tokens": dec_in,
        "decoder_target_tokens": tgt,
        "decoder_loss_weights": (tgt > 0).astype(np.int32),
    }


def test_param_tree_and_split(model_and_params):
    model, params, axes = model_and_params
    assert set(params) == {"img", "img_proj", "llm"}
    assert "embedding" in params["img"] and "Transformer" in params["img"]
    assert params["img_proj"]["head"]["kernel"].shape == (VIT_CFG["width"], T5_CFG.emb_dim)
    trainable, frozen = pali.split_params(params)
    assert set(trainable) == {"img_proj", "llm"} and set(frozen) == {"img"}
    trainable, frozen = pali.split_params(params, freeze_encoder=False)
    assert set(trainable) == {"img", "img_proj", "llm"} and frozen == {}
    # logical axes mirror the tree
    assert jax.tree.structure(params) == jax.tree.structure(
        axes, is_leaf=lambda x: x is None or isinstance(x, jax.sharding.PartitionSpec)
    )
    with pytest.raises(ValueError, match="both trainable and frozen"):
        pali.merge_params(params, {"img": params["img"]})


def test_mlp_projection_shapes():
    model = make_model(projection="mlp", projection_hidden_dim=40)
    params, _ = pali.init_params(model, jax.random.PRNGKey(1))
    proj = params["img_proj"]
    assert proj["hidden"]["kernel"].shape == (VIT_CFG["width"], 40)
    assert proj["head"]["kernel"].shape == (40, T5_CFG.emb_dim)
    with pytest.raises(ValueError, match="projection kind"):
        pali.init_params(make_model(projection="conv"), jax.random.PRNGKey(1))


def test_gradients_reach_projection_not_frozen_encoder(model_and_params):
    model, params, _ = model_and_params
    trainable, frozen = pali.split_params(params)
    loss_fn = pali.make_loss_fn(model)
    batch = make_batch()
    (loss, aux), (g_train, g_frozen) = jax.jit(
        jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
    )(trainable, frozen, batch, jax.random.PRNGKey(0))
    assert np.isfinite(loss) and aux["num_target_tokens"] == 8
    assert np.abs(g_train["img_proj"]["head"]["kernel"]).max() > 0
    assert np.abs(g_train["llm"]["token_embedder"]["embedding"]).max() > 0
    # stop_gradient: nothing flows into the frozen tree even when asked for
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(g_frozen))
    # ... but it does when the encoder is trainable.
    unfrozen = make_model(freeze_encoder=False)
    t_all, f_none = pali.split_params(params, freeze_encoder=False)
    g_all = jax.jit(jax.grad(lambda p: pali.make_loss_fn(unfrozen)(p, f_none, batch, None)[0]))(
        t_all
    )
    assert np.abs(g_all["img"]["embedding"]["kernel"]).max() > 0


def test_prefix_mask_padding_does_not_change_outputs(model_and_params):
    model, params, _ = model_and_params
    batch = make_batch()
    variables = {"params": params}
    args = (batch["image"], batch["encoder_input_tokens"], batch["decoder_input_tokens"])
    logits = model.apply(variables, *args)
    # (1) Extra trailing text padding changes nothing.
    longer = np.pad(batch["encoder_input_tokens"], ((0, 0), (0, 5)))
    logits_long = model.apply(variables, batch["image"], longer, batch["decoder_input_tokens"])
    np.testing.assert_allclose(logits, logits_long, atol=1e-5, rtol=1e-5)
    # (2) Whatever sits at padded positions (here: the pad embedding row)
    # does not reach valid encoder positions.
    enc, mask = model.apply(
        variables, batch["image"], batch["encoder_input_tokens"], method=pali.PaLI.encode
    )
    p2 = jax.tree.map(lambda x: x, params)
    emb = np.array(p2["llm"]["token_embedder"]["embedding"])
    emb[0] += 3.0
    p2["llm"]["token_embedder"]["embedding"] = emb
    enc2, mask2 = model.apply(
        {"params": p2}, batch["image"], batch["encoder_input_tokens"], method=pali.PaLI.encode
    )
    n_img = (16 // 8) ** 2
    assert mask.shape == (2, n_img + 6) and bool(mask[:, :n_img].all())
    np.testing.assert_array_equal(mask, mask2)
    m = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(enc)[m], np.asarray(enc2)[m], atol=1e-5)
    assert not np.allclose(np.asarray(enc)[~m], np.asarray(enc2)[~m])  # the check can fail
    # (3) The image does matter.
    other = dict(batch, image=255 - batch["image"])
    logits_img = model.apply(variables, other["image"], *args[1:])
    assert not np.allclose(logits, logits_img, atol=1e-4)


def test_token_cross_entropy():
    v = 7
    targets = jnp.array([[2, 3, 0]])
    weights = jnp.array([[1, 1, 0]])
    perfect = jax.nn.one_hot(targets, v) * 100.0
    total, count, correct = losses.token_cross_entropy(perfect, targets, weights)
    assert float(total) < 1e-6 and float(count) == 2 and float(correct) == 2
    # Smoothing: perfect one-hot logits now cost > 0, and the minimum is
    # reached by the smoothed distribution itself (value 0 after normalisation).
    total_s, _, _ = losses.token_cross_entropy(perfect, targets, weights, label_smoothing=0.1)
    assert float(total_s) > 1.0
    conf, low = 0.9, 0.1 / (v - 1)
    smooth_logits = jnp.log(jax.nn.one_hot(targets, v) * (conf - low) + low)
    total_m, _, _ = losses.token_cross_entropy(smooth_logits, targets, weights, label_smoothing=0.1)
    assert abs(float(total_m)) < 1e-5
    # Uniform logits: log(V) per weighted token; the padded position is ignored.
    total_u, _, correct_u = losses.token_cross_entropy(jnp.zeros((1, 3, v)), targets, weights)
    np.testing.assert_allclose(float(total_u), 2 * np.log(v), rtol=1e-6)


def test_image_preprocessing():
    img = np.array([[[[0, 128, 255]]]], np.uint8)  # [1, 1, 1, 3]
    sig = pali.ImagePreprocessing.create(value_range=(-1, 1))
    np.testing.assert_allclose(sig(jnp.asarray(img))[0, 0, 0], [-1, 128 / 127.5 - 1, 1], atol=1e-6)
    zero_one = pali.ImagePreprocessing.create(value_range=(0, 1))
    np.testing.assert_allclose(zero_one(jnp.asarray(img))[0, 0, 0], [0, 128 / 255, 1], atol=1e-6)
    clip = pali.ImagePreprocessing.create(mean=pali.CLIP_MEAN, std=pali.CLIP_STD)
    want = (np.array([0, 128, 255]) / 255 - np.array(pali.CLIP_MEAN)) / np.array(pali.CLIP_STD)
    np.testing.assert_allclose(clip(jnp.asarray(img))[0, 0, 0], want, atol=1e-5)
    # Resize to the encoder resolution; floats pass through un-normalised.
    resized = pali.ImagePreprocessing.create(resolution=8)(jnp.zeros((2, 4, 4, 3), jnp.uint8))
    assert resized.shape == (2, 8, 8, 3) and float(resized.max()) == -1.0
    same = pali.ImagePreprocessing.create(resolution=4)(jnp.full((1, 4, 4, 3), 0.25))
    np.testing.assert_allclose(same, 0.25)
    with pytest.raises(ValueError, match="either value_range or mean/std"):
        pali.ImagePreprocessing.create(value_range=(-1, 1), mean=(0, 0, 0))


def test_greedy_with_kv_cache_matches_full_recompute(model_and_params):
    model, params, _ = model_and_params
    trainable, frozen = pali.split_params(params)
    batch = make_batch()
    max_len = 6
    tokens = np.asarray(
        pali.make_predict_fn(model, decode_method="greedy", max_decode_len=max_len)(
            trainable, frozen, batch
        )
    )
    assert tokens.shape == (2, max_len) and tokens.dtype == np.int32
    # Teacher-force the decoded sequence: argmax at each position must
    # reproduce it (until EOS).
    dec_in = np.concatenate([np.zeros((2, 1), np.int32), tokens[:, :-1]], axis=1)
    logits = model.apply({"params": params}, batch["image"], batch["encoder_input_tokens"], dec_in)
    want = np.asarray(jnp.argmax(logits, -1))
    for row, ref in zip(tokens, want):
        n = int(np.argmax(row == 1)) + 1 if (row == 1).any() else max_len
        np.testing.assert_array_equal(row[:n], ref[:n])
    # Beam search of width 1 is greedy; sampling at temperature ~0 too.
    beam1 = pali.make_predict_fn(model, decode_method="beam", beam_size=1, max_decode_len=max_len)
    np.testing.assert_array_equal(beam1(trainable, frozen, batch), tokens)
    with pytest.raises(ValueError, match="decode_method"):
        pali.predict(model, trainable, frozen, batch, decode_method="nucleus")


def _paths(tree) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


@pytest.mark.parametrize("freeze", [True, False])
def test_trainer_keeps_frozen_encoder_out_of_optimizer(model_and_params, tmp_path, freeze):
    from locca.training.optimizers import make_optimizer
    from locca.training.trainer import train

    _, params, axes = model_and_params
    model = make_model(freeze_encoder=freeze)
    trainable, frozen = pali.split_params(params, freeze_encoder=freeze)
    t_axes, f_axes = pali.split_params(axes, freeze_encoder=freeze)
    frozen_before = jax.tree.map(np.array, frozen)
    img_before = np.array(params["img"]["embedding"]["kernel"])
    proj_before = np.array(params["img_proj"]["head"]["kernel"])
    batch = make_batch()

    def batches(start):
        for _ in range(start, 3):
            yield batch

    state = train(
        model_dir=str(tmp_path / "run"),
        init_params=trainable,
        frozen_params=frozen,
        param_logical_axes=t_axes,
        frozen_logical_axes=f_axes,
        loss_fn=pali.make_loss_fn(model),
        optimizer=make_optimizer("adamw", lr=1e-2, clip_norm=None, b1=0.9, schedule="constant"),
        batches=batches,
        num_steps=3,
        checkpoint_every=None,
        progress=False,
        tensorboard=False,
        async_checkpointing=False,
    )
    opt_paths = _paths(state.opt_state)
    assert opt_paths and any("img_proj" in p for p in opt_paths)
    # The projection moved.
    assert not np.array_equal(np.asarray(state.params["img_proj"]["head"]["kernel"]), proj_before)
    if freeze:
        assert not any("'img'" in p for p in opt_paths), "optimiser state holds encoder params"
        assert "img" not in state.params
        for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(frozen_before)):
            np.testing.assert_array_equal(np.asarray(a), b)  # bitwise unchanged
    else:
        assert any("'img'" in p for p in opt_paths)
        img_after = np.asarray(state.params["img"]["embedding"]["kernel"])
        assert not np.array_equal(img_after, img_before)
