"""Frozen-encoder REC protocol: the encoder is bitwise unchanged and never
trained; the decoder learns from the prompt-prefixed box targets."""

import hashlib
import json
import os

import flax.linen as nn
import jax
import numpy as np

from checkpoints import bv_npz
from transfer import common, rec_protocol

VIT = {
    "width": 16,
    "depth": 1,
    "mlp_dim": 32,
    "num_heads": 2,
    "patch_size": 16,
    "pool_type": "gap",
    "posemb": "learn",
}


def test_pack_prompt_and_target():
    inputs = np.array([[5, 6, 1, 0], [7, 1, 0, 0]])
    targets = np.array([[9, 8, 1], [4, 1, 0]])
    p = rec_protocol.pack_prompt_and_target(inputs, targets, max_len=7)
    np.testing.assert_array_equal(
        p["decoder_target_tokens"], [[5, 6, 1, 9, 8, 1, 0], [7, 1, 4, 1, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        p["decoder_input_tokens"], [[0, 5, 6, 1, 9, 8, 1], [0, 7, 1, 4, 1, 0, 0]]
    )
    np.testing.assert_array_equal(
        p["decoder_loss_weights"], [[0, 0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0, 0]]
    )
    np.testing.assert_array_equal(p["prompt_length"], [3, 2])


def test_loss_slots_cover_exactly_the_weighted_positions():
    inputs = np.array([[5, 6, 1, 0], [7, 1, 0, 0], [3, 4, 5, 1]])
    targets = np.array([[9, 8, 1], [4, 1, 0], [6, 2, 1]])  # row 3: truncated at max_len
    p = rec_protocol.pack_prompt_and_target(inputs, targets, max_len=6)
    positions, weights = rec_protocol.loss_slots(p["decoder_loss_weights"], num_slots=3)
    np.testing.assert_array_equal(positions, [[3, 4, 5], [2, 3, 4], [4, 5, 5]])
    np.testing.assert_array_equal(weights, [[1, 1, 1], [1, 1, 0], [1, 1, 0]])
    # Every weighted position is one weighted slot, no more, no less.
    for b in range(3):
        want = np.flatnonzero(p["decoder_loss_weights"][b])
        np.testing.assert_array_equal(np.asarray(positions[b])[np.asarray(weights[b]) > 0], want)


def test_slot_loss_equals_the_full_sequence_loss():
    """The box-slot loss (vocabulary projection on K slots only) has the value and
    the gradients of the token cross-entropy over all L positions with the
    prompt's weights at 0, on a decoder with a non-zero head."""
    from locca import losses

    spec = common.encoder(name="tiny", vit_config=VIT, resolution=32)
    dec = rec_protocol.build_decoder(spec.vit_config, vocab_size=50, max_len=9, depth=1)
    frozen = {"encoder": rec_protocol.encoder_params(spec)}
    enc_tokens = np.zeros((1, 4, 16), np.float32)
    params = dec.init(jax.random.PRNGKey(0), enc_tokens, np.zeros((1, 9), np.int32))["params"]
    leaves, tree = jax.tree.flatten(nn.unbox(params))
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = {"decoder": jax.tree.unflatten(
        tree, [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])}  # fmt: skip
    rng = np.random.RandomState(0)
    inputs = np.array([[5, 6, 1, 0, 0], [7, 1, 0, 0, 0], [3, 4, 5, 8, 1]])
    targets = np.array([[9, 8, 11, 1], [4, 1, 0, 0], [6, 2, 10, 1]])  # row 3 truncated
    batch = {
        "image": rng.randint(0, 255, (3, 32, 32, 3)).astype(np.uint8),
        **rec_protocol.pack_prompt_and_target(inputs, targets, max_len=9),
    }
    batch.pop("prompt_length")
    encode = rec_protocol.make_encode_fn(spec)

    def full_loss(p):
        logits = dec.apply({"params": p["decoder"]}, encode(frozen, batch["image"]),
                           batch["decoder_input_tokens"])  # fmt: skip
        total, count, _ = losses.token_cross_entropy(
            logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"]
        )
        return total / count

    slot_fn = rec_protocol.make_loss_fn(spec, dec, num_slots=4)

    def slot_loss(p):
        return slot_fn(p, frozen, batch, jax.random.PRNGKey(0))[0]

    want, g_want = jax.jit(jax.value_and_grad(full_loss))(params)
    got, g_got = jax.jit(jax.value_and_grad(slot_loss))(params)
    assert float(want) > 1.0
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-4)


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_frozen_encoder_is_bitwise_unchanged(tmp_path):
    spec0 = common.encoder(name="tiny", vit_config=VIT, resolution=32)
    params = rec_protocol.encoder_params(spec0, seed=3)  # random, then saved as npz
    npz = str(tmp_path / "enc.npz")
    bv_npz.save_npz(npz, params)
    before = _sha(npz)
    spec = common.encoder(name="tiny", checkpoint=npz, vit_config=VIT, resolution=32)
    out = rec_protocol.rec_protocol(
        model_dir=str(tmp_path / "rec"),
        encoder=spec,
        task="shapes_refexp",
        eval=("validation",),
        task_feature_lengths={"inputs": 16, "targets": 12},
        train_steps=3,
        batch_size=4,
        depth=1,
        learning_rate=1e-2,
        warmup_steps=1,
        eval_batch_size=4,
        num_eval_examples=4,
        checkpoint_every=0,
        log_every=1,
        progress=False,
    )
    # The encoder used for training and evaluation is the checkpoint, bit for bit.
    loaded = bv_npz.load_npz(npz)
    got = bv_npz.flatten(out["frozen"]["encoder"])
    want = bv_npz.flatten(loaded)
    assert sorted(got) == sorted(want)
    for k in want:
        assert np.asarray(got[k]).tobytes() == np.asarray(want[k]).tobytes(), k
    assert _sha(npz) == before
    # Only the decoder is trained and checkpointed.
    assert set(out["params"]) == {"decoder"}
    restored, step = common.restore_params(str(tmp_path / "rec"))
    assert step == 3 and set(restored) == {"decoder"}
    lines = [json.loads(x) for x in open(tmp_path / "rec" / "metrics.jsonl")]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3]
    assert {"validation/acc@0.5", "validation/mean_iou"} <= set(out["metrics"])
    assert os.path.exists(out["predictions"]["shapes_refexp:validation"])


def test_encoder_gets_no_gradient():
    spec = common.encoder(name="tiny", vit_config=VIT, resolution=32)
    dec = rec_protocol.build_decoder(spec.vit_config, vocab_size=50, max_len=6, depth=1)
    frozen = {"encoder": rec_protocol.encoder_params(spec)}
    import flax.linen as nn

    params = {
        "decoder": nn.unbox(
            dec.init(jax.random.PRNGKey(0), np.zeros((1, 4, 16)), np.zeros((1, 6), np.int32))[
                "params"
            ]
        )
    }
    batch = {
        "image": np.random.RandomState(0).randint(0, 255, (2, 32, 32, 3)).astype(np.uint8),
        **{
            k: v
            for k, v in rec_protocol.pack_prompt_and_target(
                np.array([[3, 1], [4, 1]]), np.array([[7, 1], [8, 1]]), 6
            ).items()
            if k != "prompt_length"
        },
    }
    loss_fn = rec_protocol.make_loss_fn(spec, dec, num_slots=2)
    g_enc = jax.jit(jax.grad(lambda f: loss_fn(params, f, batch, jax.random.PRNGKey(0))[0]))(frozen)
    assert all(float(np.abs(x).max()) == 0.0 for x in jax.tree.leaves(g_enc))
    g_dec = jax.jit(jax.grad(lambda p: loss_fn(p, frozen, batch, jax.random.PRNGKey(0))[0]))(params)
    assert any(float(np.abs(x).max()) > 0.0 for x in jax.tree.leaves(g_dec))


def test_feature_cache_trains_the_same_decoder(tmp_path):
    """Cached frozen-encoder tokens (each training image encoded once) give the
    decoder the steps and evaluation of the encoder run in every step, up to
    floating-point summation order."""
    spec = common.encoder(name="tiny", vit_config=VIT, resolution=32)
    kw = dict(encoder=spec, task="shapes_refexp", eval=("validation",),
              task_feature_lengths={"inputs": 16, "targets": 12}, train_steps=4, batch_size=4,
              depth=1, learning_rate=1e-2, warmup_steps=1, eval_batch_size=4,
              num_eval_examples=8, checkpoint_every=0, log_every=1, progress=False)  # fmt: skip
    plain = rec_protocol.rec_protocol(model_dir=str(tmp_path / "plain"), **kw)
    cached = rec_protocol.rec_protocol(model_dir=str(tmp_path / "cached"), feature_cache_mb=1, **kw)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(plain["params"]), jax.tree.leaves(cached["params"])
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=str(path))
    losses = [
        [json.loads(x)["loss"] for x in open(tmp_path / d / "metrics.jsonl") if '"loss"' in x]
        for d in ("plain", "cached")
    ]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    stats = json.loads(open(tmp_path / "cached" / "rec_metrics.json").read())["feature_cache"]
    assert 1 <= stats["encoded"] <= 16 and stats["images"] == stats["encoded"]
    assert json.loads(open(tmp_path / "plain" / "rec_metrics.json").read())["feature_cache"] is None
