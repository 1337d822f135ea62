"""Hugging Face T5 import: the reference fixture, and a v1.0 (ReLU, tied) model
against an independent numpy implementation written here."""

import json
import math
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from checkpoints import hf_t5
from locca.models.t5 import T5


# ---------------------------------------------------------------- fixture
def test_verify_fixture(shared_fixtures):
    ok, report = hf_t5.verify_dir(shared_fixtures / "hf_t5_v11", verbose=False)
    assert ok, report
    assert report["logits_max_rel_err"] <= 1e-4
    assert report["encoder_last_hidden_state_max_rel_err"] <= 1e-4
    assert report["greedy_recompute_match"] and report["greedy_kv_cache_match"]


def test_verify_command_exit_code(shared_fixtures, capsys):
    from checkpoints import verify

    assert verify.main([str(shared_fixtures / "hf_t5_v11")]) == 0
    assert "PASS" in capsys.readouterr().out


def test_verify_detects_a_perturbed_weight(shared_fixtures, tmp_path):
    d = tmp_path / "t5"
    shutil.copytree(shared_fixtures / "hf_t5_v11", d)
    tensors = load_file(str(d / "model.safetensors"))
    # (a constant shift of a bias table would be invisible: softmax ignores it)
    name = "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    tensors[name][3, 1] += 0.5
    save_file(tensors, str(d / "model.safetensors"))
    result = hf_t5.verify_dir(d, verbose=False)
    assert not result.ok and not bool(result)
    assert result.report["logits_max_rel_err"] > 1e-4


def test_fixture_config_mapping(shared_fixtures):
    cfg = hf_t5.load_hf_t5_config(shared_fixtures / "hf_t5_v11")
    assert cfg.mlp_activations == ("gelu", "linear")
    assert not cfg.logits_via_embedding
    assert (cfg.emb_dim, cfg.head_dim, cfg.num_heads, cfg.mlp_dim) == (32, 8, 4, 48)
    assert (cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance) == (8, 20)


# ---------------------------------------------------------------- v1.0 reference
HF_V10 = {
    "model_type": "t5",
    "vocab_size": 40,
    "d_model": 16,
    "d_kv": 6,
    "d_ff": 24,
    "num_layers": 2,
    "num_decoder_layers": 3,
    "num_heads": 3,
    "relative_attention_num_buckets": 8,
    "feed_forward_proj": "relu",
    "layer_norm_epsilon": 1e-6,
    # no tie_word_embeddings (HF default: tied), no max distance (default 128)
}


def _random_hf_v10(rng):
    c = HF_V10
    d, inner, ff, v, h = c["d_model"], c["d_kv"] * c["num_heads"], c["d_ff"], c["vocab_size"], 3
    w = {"shared.weight": rng.normal(0, 1, (v, d))}

    def attn(prefix):
        for n in "qkv":
            w[f"{prefix}.{n}.weight"] = rng.normal(0, d**-0.5, (inner, d))
        w[f"{prefix}.o.weight"] = rng.normal(0, inner**-0.5, (d, inner))

    def ffn(prefix):
        w[f"{prefix}.wi.weight"] = rng.normal(0, d**-0.5, (ff, d))
        w[f"{prefix}.wo.weight"] = rng.normal(0, ff**-0.5, (d, ff))

    def norm(name):
        w[name] = 1.0 + 0.2 * rng.normal(size=(d,))

    for i in range(c["num_layers"]):
        attn(f"encoder.block.{i}.layer.0.SelfAttention")
        norm(f"encoder.block.{i}.layer.0.layer_norm.weight")
        ffn(f"encoder.block.{i}.layer.1.DenseReluDense")
        norm(f"encoder.block.{i}.layer.1.layer_norm.weight")
    for i in range(c["num_decoder_layers"]):
        attn(f"decoder.block.{i}.layer.0.SelfAttention")
        norm(f"decoder.block.{i}.layer.0.layer_norm.weight")
        attn(f"decoder.block.{i}.layer.1.EncDecAttention")
        norm(f"decoder.block.{i}.layer.1.layer_norm.weight")
        ffn(f"decoder.block.{i}.layer.2.DenseReluDense")
        norm(f"decoder.block.{i}.layer.2.layer_norm.weight")
    for s in ("encoder", "decoder"):
        w[f"{s}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = rng.normal(
            0, 1, (c["relative_attention_num_buckets"], h)
        )
        norm(f"{s}.final_layer_norm.weight")
    return {k: np.asarray(x, np.float32) for k, x in w.items()}


def _bucket(query_pos, key_pos, bidirectional, num_buckets, max_distance):
    """Mesh-TF's formula, written from the paper's description (python floats)."""
    n = query_pos - key_pos
    ret = 0
    if bidirectional:
        num_buckets //= 2
        ret += num_buckets if n < 0 else 0
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    val = max_exact + int(
        math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    )
    return ret + min(val, num_buckets - 1)


def _np_t5_v10(w, enc_ids, dec_ids):
    """Independent float64 numpy T5 v1.0 forward (ReLU FFN, tied head)."""
    c = HF_V10
    h, dk, eps = c["num_heads"], c["d_kv"], c["layer_norm_epsilon"]
    nb, md = c["relative_attention_num_buckets"], 128
    w = {k: v.astype(np.float64) for k, v in w.items()}

    def rms(x, s):
        return s * x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)

    def bias(table, lq, lk, bidir):
        b = np.array([[_bucket(i, j, bidir, nb, md) for j in range(lk)] for i in range(lq)])
        return table[b].transpose(2, 0, 1)  # [H, q, k]

    def attention(p, x, kv, pos_bias, mask):  # x [q, D], kv [k, D], mask [q, k]
        q = (x @ w[p + ".q.weight"].T).reshape(len(x), h, dk).transpose(1, 0, 2)
        k = (kv @ w[p + ".k.weight"].T).reshape(len(kv), h, dk).transpose(1, 0, 2)
        v = (kv @ w[p + ".v.weight"].T).reshape(len(kv), h, dk).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) + pos_bias
        s = np.where(mask[None], s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = s / s.sum(-1, keepdims=True)
        o = (a @ v).transpose(1, 0, 2).reshape(len(x), h * dk)
        return o @ w[p + ".o.weight"].T

    def ffn(p, x):
        return np.maximum(x @ w[p + ".wi.weight"].T, 0) @ w[p + ".wo.weight"].T

    out = []
    for enc, dec in zip(enc_ids, dec_ids):
        le, ld = len(enc), len(dec)
        x = w["shared.weight"][enc]
        eb = bias(
            w["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"], le, le, True
        )
        emask = np.broadcast_to(enc > 0, (le, le))
        for i in range(c["num_layers"]):
            p = f"encoder.block.{i}.layer."
            y = rms(x, w[p + "0.layer_norm.weight"])
            x = x + attention(p + "0.SelfAttention", y, y, eb, emask)
            x = x + ffn(p + "1.DenseReluDense", rms(x, w[p + "1.layer_norm.weight"]))
        enc_out = rms(x, w["encoder.final_layer_norm.weight"])
        x = w["shared.weight"][dec]
        db = bias(
            w["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"], ld, ld, False
        )
        causal = np.tril(np.ones((ld, ld), bool))
        cmask = np.broadcast_to(enc > 0, (ld, le))
        for i in range(c["num_decoder_layers"]):
            p = f"decoder.block.{i}.layer."
            y = rms(x, w[p + "0.layer_norm.weight"])
            x = x + attention(p + "0.SelfAttention", y, y, db, causal)
            y = rms(x, w[p + "1.layer_norm.weight"])
            x = x + attention(p + "1.EncDecAttention", y, enc_out, 0.0, cmask)
            x = x + ffn(p + "2.DenseReluDense", rms(x, w[p + "2.layer_norm.weight"]))
        x = rms(x, w["decoder.final_layer_norm.weight"]) * c["d_model"] ** -0.5
        out.append(x @ w["shared.weight"].T)
    return np.stack(out)


def _write_hf_dir(path, weights, config=HF_V10):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file(weights, str(path / "model.safetensors"))
    return path


def test_v10_relu_tied_against_numpy_reference(tmp_path):
    rng = np.random.default_rng(0)
    weights = _random_hf_v10(rng)
    d = _write_hf_dir(tmp_path / "v10", weights)
    cfg, params = hf_t5.load_hf_t5(d)
    assert cfg.logits_via_embedding and cfg.mlp_activations == ("relu",)
    assert cfg.num_encoder_layers == 2 and cfg.num_decoder_layers == 3
    assert cfg.relative_attention_max_distance == 128
    assert "logits_dense" not in params["decoder"]
    enc = np.array(
        [[5, 9, 3, 17, 22, 8, 30, 1, 0, 0, 0, 0], [7, 2, 11, 4, 39, 1, 6, 6, 12, 13, 9, 1]]
    )
    dec = np.array([[0, 4, 9, 33, 2, 21, 5, 8, 10, 3], [0, 12, 12, 5, 7, 1, 19, 2, 2, 2]])
    ours = np.asarray(T5(cfg).apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec)))
    ref = _np_t5_v10(weights, enc, dec)
    rel = np.max(np.abs(ours - ref)) / np.max(np.abs(ref))
    assert rel < 1e-5, rel
    # The d_model**-0.5 rescale matters: without it logits are 4x larger.
    assert np.max(np.abs(ref)) * 2 < np.max(np.abs(ref * cfg.emb_dim**0.5))


def test_sharded_checkpoint_equals_single(tmp_path):
    weights = _random_hf_v10(np.random.default_rng(1))
    single = _write_hf_dir(tmp_path / "single", weights)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(json.dumps(HF_V10))
    names = sorted(weights)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for fname, keys in shards.items():
        save_file({k: weights[k] for k in keys}, str(sharded / fname))
        weight_map.update({k: fname for k in keys})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _, a = hf_t5.load_hf_t5(single)
    _, b = hf_t5.load_hf_t5(sharded)
    import jax

    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_bfloat16_checkpoint_and_embed_tokens_only(tmp_path):
    import ml_dtypes

    weights = _random_hf_v10(np.random.default_rng(4))
    bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in weights.items()}
    bf16["encoder.embed_tokens.weight"] = bf16.pop("shared.weight")
    bf16["decoder.embed_tokens.weight"] = bf16["encoder.embed_tokens.weight"]
    _, params = hf_t5.load_hf_t5(_write_hf_dir(tmp_path / "bf16", bf16))
    emb = params["token_embedder"]["embedding"]
    assert emb.dtype == np.float32
    np.testing.assert_array_equal(
        emb, weights["shared.weight"].astype(ml_dtypes.bfloat16).astype(np.float32)
    )
    np.testing.assert_allclose(emb, weights["shared.weight"], rtol=1e-2)


def test_missing_and_unexpected_tensors_are_listed(tmp_path):
    weights = _random_hf_v10(np.random.default_rng(2))
    del weights["decoder.block.2.layer.2.DenseReluDense.wo.weight"]
    weights["encoder.block.5.layer.0.SelfAttention.q.weight"] = np.zeros((18, 16), np.float32)
    d = _write_hf_dir(tmp_path / "bad", weights)
    with pytest.raises(ValueError) as e:
        hf_t5.load_hf_t5(d)
    msg = str(e.value)
    assert "missing (1)" in msg and "decoder.block.2.layer.2.DenseReluDense.wo.weight" in msg
    assert "unexpected (1)" in msg and "encoder.block.5.layer.0.SelfAttention.q.weight" in msg


def test_bad_shape_and_untied_lm_head_mismatch(tmp_path):
    weights = _random_hf_v10(np.random.default_rng(3))
    w2 = dict(weights)
    w2["encoder.block.0.layer.1.DenseReluDense.wi.weight"] = np.zeros((25, 16), np.float32)
    with pytest.raises(ValueError, match=r"DenseReluDense.wi.weight has shape \(25, 16\)"):
        hf_t5.load_hf_t5(_write_hf_dir(tmp_path / "shape", w2))
    w3 = dict(weights, **{"lm_head.weight": weights["shared.weight"] + 1})
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        hf_t5.load_hf_t5(_write_hf_dir(tmp_path / "tied", w3))
    # A tied copy of the embedding is accepted and ignored.
    w4 = dict(weights, **{"lm_head.weight": weights["shared.weight"]})
    w4["encoder.embed_tokens.weight"] = weights["shared.weight"]
    hf_t5.load_hf_t5(_write_hf_dir(tmp_path / "copies", w4))


def test_config_errors_and_activations():
    with pytest.raises(KeyError, match="d_model"):
        hf_t5.config_from_hf({k: v for k, v in HF_V10.items() if k != "d_model"})
    with pytest.raises(ValueError, match="feed_forward_proj"):
        hf_t5.config_from_hf(dict(HF_V10, feed_forward_proj="swiglu-x-y"))
    ul2 = hf_t5.config_from_hf(dict(HF_V10, feed_forward_proj="gated-silu", dense_act_fn="silu"))
    assert ul2.mlp_activations == ("silu", "linear")
    g = hf_t5.config_from_hf(dict(HF_V10, feed_forward_proj="gated-gelu"))
    assert g.mlp_activations == ("gelu", "linear")  # HF: gated-gelu means gelu_new (tanh)
    exact = hf_t5.config_from_hf(dict(HF_V10, feed_forward_proj="gated-gelu", dense_act_fn="gelu"))
    assert exact.mlp_activations == ("gelu_exact", "linear")
    assert (
        hf_t5.config_from_hf(dict(HF_V10, tie_word_embeddings=False)).logits_via_embedding is False
    )
