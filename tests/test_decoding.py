"""Decoding: greedy / beam / sampling over step functions, T5 KV cache parity."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from locca import decoding
from locca.models import t5 as t5_lib
from locca.models.t5 import T5, T5Config

EOS = 1


# ------------------------------------------------------------- toy models
def markov_step(table):
    """A first-order Markov 'model': logits = log table[previous token].

    Its cache carries a scalar step index (must stay scalar under beam
    expansion) and a per-row counter with the batch on axis 0.
    """
    log_table = jnp.log(jnp.asarray(table, jnp.float32) + 1e-30)

    def tokens_to_logits(tokens, cache):
        assert cache["index"].shape == ()
        assert cache["count"].shape[0] == tokens.shape[0]
        new = {"index": cache["index"] + 1, "count": cache["count"] + 1}
        return log_table[tokens[:, 0]], new

    return tokens_to_logits


def markov_cache(batch):
    return {"index": jnp.array(0, jnp.int32), "count": jnp.zeros((batch, 1), jnp.int32)}


# Vocabulary: 0 pad/BOS (never generated), 1 EOS, 2 A, 3 B, 4 C, 5 D.
TRAP = np.zeros((6, 6))
TRAP[0] = [0, 0.0, 0.5, 0.4, 0.05, 0.05]  # BOS -> A (0.5) or B (0.4)
TRAP[2] = [0, 0.33, 0.0, 0.0, 0.34, 0.33]  # A -> spread out
TRAP[3] = [0, 0.9, 0.0, 0.1, 0.0, 0.0]  # B -> EOS (0.9)
TRAP[4] = [0, 1.0, 0, 0, 0, 0]
TRAP[5] = [0, 1.0, 0, 0, 0, 0]
TRAP[1] = [0, 1.0, 0, 0, 0, 0]


def seq_logprob(table, seq):
    lp, prev = 0.0, 0
    for t in seq:
        lp += np.log(table[prev, t])
        prev = t
        if t == EOS:
            break
    return lp


def test_beam_finds_better_sequence_than_greedy():
    step = markov_step(TRAP)
    common = dict(batch_size=1, max_len=4, eos_id=EOS)
    g = np.asarray(decoding.greedy(step, markov_cache(1), **common))
    b, scores = decoding.beam_search(
        step, markov_cache(1), beam_size=2, alpha=0.0, return_all=True, **common
    )
    assert g.tolist() == [[2, 4, 1, 0]]  # A C EOS: p = 0.17
    assert np.asarray(b[:, 0]).tolist() == [[3, 1, 0, 0]]  # B EOS: p = 0.36
    np.testing.assert_allclose(scores[0, 0], np.log(0.36), rtol=1e-5)
    assert seq_logprob(TRAP, [3, 1]) > seq_logprob(TRAP, g[0])


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_exhaustive_beam_equals_brute_force(alpha):
    """With beam_size >= every live hypothesis, beam search is exact."""
    rng = np.random.default_rng(int(alpha * 10))
    v, max_len = 4, 4
    table = rng.dirichlet(np.ones(v - 1) * 0.7, size=v)
    table = np.concatenate([np.zeros((v, 1)), table], 1)  # token 0 never generated
    best, best_score = None, -np.inf
    for n in range(1, max_len + 1):
        for body in itertools.product([2, 3], repeat=n - 1):
            seq = [*body, EOS]
            score = seq_logprob(table, seq) / ((5 + n) / 6) ** alpha
            if score > best_score:
                best, best_score = seq, score
    out, scores = decoding.beam_search(
        markov_step(table),
        markov_cache(1),
        batch_size=1,
        max_len=max_len,
        beam_size=8,
        alpha=alpha,
        eos_id=EOS,
        return_all=True,
    )
    assert np.asarray(out[0, 0]).tolist() == best + [0] * (max_len - len(best))
    np.testing.assert_allclose(scores[0, 0], best_score, rtol=1e-5)
    assert np.all(np.diff(np.asarray(scores[0])) <= 1e-6)  # best first


def test_eos_stops_and_pads_with_zeros():
    # Row-independent chain: 2 -> 3 -> EOS; EOS -> 4 (must never appear).
    table = np.full((6, 6), 1e-3)
    table[:, 0] = 0
    table[0, 2] = table[2, 3] = table[3, EOS] = table[EOS, 4] = 1.0
    step = markov_step(table)
    common = dict(batch_size=2, max_len=6, eos_id=EOS)
    want = [[2, 3, 1, 0, 0, 0]] * 2
    assert np.asarray(decoding.greedy(step, markov_cache(2), **common)).tolist() == want
    assert (
        np.asarray(
            decoding.beam_search(step, markov_cache(2), beam_size=3, alpha=0.6, **common)
        ).tolist()
        == want
    )
    s = decoding.sample(
        step, markov_cache(2), rng=jax.random.PRNGKey(0), temperature=0.5, top_k=1, **common
    )
    assert np.asarray(s).tolist() == want
    # Without an EOS id the loop runs to max_len.
    no_stop = decoding.greedy(step, markov_cache(2), batch_size=2, max_len=6, eos_id=None)
    # (row 4 is uniform over 1..5: argmax takes the first, EOS)
    assert np.asarray(no_stop).tolist() == [[2, 3, 1, 4, 1, 4]] * 2


def test_prefix_is_forced_and_forced_eos_does_not_stop():
    table = np.full((6, 6), 0.1)
    table[:, 0] = 0
    table[:, 5] = 1.0  # greedy always wants D
    step = markov_step(table)
    prefix = jnp.array([[2, 1, 3], [4, 0, 0]])  # row 1: only the first token forced
    out = np.asarray(
        decoding.greedy(step, markov_cache(2), batch_size=2, max_len=5, eos_id=EOS, prefix=prefix)
    )
    assert out.tolist() == [[2, 1, 3, 5, 5], [4, 5, 5, 5, 5]]
    beam = np.asarray(
        decoding.beam_search(
            step, markov_cache(2), batch_size=2, max_len=5, beam_size=2, eos_id=EOS, prefix=prefix
        )
    )
    assert beam.tolist() == out.tolist()
    with pytest.raises(ValueError, match="prefix"):
        decoding.greedy(step, markov_cache(2), batch_size=2, max_len=2, prefix=prefix)


def test_sampling_filters():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda **kw: np.asarray(decoding._filter_logits(logits, 1.0, **kw)[0] > -1e8)  # noqa: E731
    assert kept(top_k=2, top_p=None).tolist() == [True, True, False, False]
    assert kept(top_k=0, top_p=0.5).tolist() == [True, False, False, False]
    assert kept(top_k=0, top_p=0.79).tolist() == [True, True, False, False]
    assert kept(top_k=0, top_p=0.81).tolist() == [True, True, True, False]
    assert kept(top_k=0, top_p=1e-6).tolist() == [True, False, False, False]


def test_sampling_frequencies_follow_temperature():
    probs = np.array([0.0, 0.0, 0.6, 0.3, 0.1])
    table = np.tile(probs, (5, 1))
    n = 4000
    out = decoding.sample(
        markov_step(table),
        markov_cache(n),
        batch_size=n,
        max_len=1,
        rng=jax.random.PRNGKey(1),
        temperature=2.0,
        eos_id=None,
    )
    freq = np.bincount(np.asarray(out)[:, 0], minlength=5)[2:] / n
    want = probs[2:] ** 0.5 / np.sum(probs[2:] ** 0.5)  # softmax(log p / 2)
    np.testing.assert_allclose(freq, want, atol=0.03)


# ------------------------------------------------------------- T5
CFG = T5Config(
    vocab_size=40,
    emb_dim=16,
    num_heads=2,
    num_encoder_layers=1,
    num_decoder_layers=2,
    head_dim=8,
    mlp_dim=24,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
)


@pytest.fixture(scope="module")
def t5_setup():
    model = T5(CFG)
    params = t5_lib.random_params(CFG, 4)
    # Sharpen the head so sequences are not dominated by ties.
    params["decoder"]["logits_dense"]["kernel"] = params["decoder"]["logits_dense"]["kernel"] * 4
    enc = jnp.array([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 2], [3, 3, 4, 0, 0, 0]])
    encoded = jax.jit(lambda p, e: model.apply({"params": p}, e, method=T5.encode))(params, enc)
    return model, params, encoded, enc > 0


def naive_greedy(model, params, encoded, mask, max_len, eos_id):
    """Independent reference: re-run the full decoder on the growing sequence."""
    run = jax.jit(lambda p, d: model.apply({"params": p}, encoded, mask, d, method=T5.decode))
    b = encoded.shape[0]
    seq = np.zeros((b, max_len + 1), np.int32)  # position 0 = BOS
    done = np.zeros(b, bool)
    for i in range(max_len):
        logits = np.asarray(run(params, jnp.asarray(seq)))[:, i]
        nxt = np.where(done, 0, logits.argmax(-1))
        seq[:, i + 1] = nxt
        done |= nxt == eos_id
    return seq[:, 1:]


@pytest.mark.parametrize("eos_id", [None, 3])
def test_t5_kv_cache_greedy_equals_recompute(t5_setup, eos_id):
    model, params, encoded, mask = t5_setup
    max_len = 8
    outs = {}
    for use_cache in (True, False):
        step, cache = decoding.t5_tokens_to_logits(
            model, params, encoded, mask, max_len=max_len, use_cache=use_cache
        )
        outs[use_cache] = np.asarray(
            decoding.greedy(step, cache, batch_size=3, max_len=max_len, eos_id=eos_id)
        )
    np.testing.assert_array_equal(outs[True], outs[False])
    np.testing.assert_array_equal(
        outs[True], naive_greedy(model, params, encoded, mask, max_len, eos_id)
    )
    assert len(np.unique(outs[True])) > 2  # not a degenerate constant output


def test_t5_beam1_and_topk1_equal_greedy(t5_setup):
    model, params, encoded, mask = t5_setup
    step, cache = decoding.t5_tokens_to_logits(model, params, encoded, mask, max_len=7)
    common = dict(batch_size=3, max_len=7, eos_id=3)
    g = np.asarray(decoding.greedy(step, cache, **common))
    b1 = np.asarray(decoding.beam_search(step, cache, beam_size=1, alpha=0.0, **common))
    s1 = np.asarray(
        decoding.sample(step, cache, rng=jax.random.PRNGKey(7), temperature=1.3, top_k=1, **common)
    )
    sp = np.asarray(decoding.sample(step, cache, rng=jax.random.PRNGKey(8), top_p=1e-6, **common))
    np.testing.assert_array_equal(b1, g)
    np.testing.assert_array_equal(s1, g)
    np.testing.assert_array_equal(sp, g)
    # Real sampling differs from greedy somewhere (same model, high temperature).
    hot = np.asarray(
        decoding.sample(step, cache, rng=jax.random.PRNGKey(9), temperature=3.0, **common)
    )
    assert not np.array_equal(hot, g)


def test_t5_beam_search_scores_are_model_log_probs(t5_setup):
    model, params, encoded, mask = t5_setup
    max_len = 5
    step, cache = decoding.t5_tokens_to_logits(model, params, encoded, mask, max_len=max_len)
    seqs, scores = decoding.beam_search(
        step,
        cache,
        batch_size=3,
        max_len=max_len,
        beam_size=3,
        alpha=0.0,
        eos_id=None,
        return_all=True,
    )
    seqs = np.asarray(seqs)
    run = jax.jit(lambda d: model.apply({"params": params}, encoded, mask, d, method=T5.decode))
    for k in range(3):
        dec_in = np.concatenate([np.zeros((3, 1), np.int32), seqs[:, k, :-1]], 1)
        lp = jax.nn.log_softmax(run(jnp.asarray(dec_in)), -1)
        total = np.take_along_axis(np.asarray(lp), seqs[:, k, :, None], -1).sum((1, 2))
        np.testing.assert_allclose(scores[:, k], total, rtol=1e-4, atol=1e-4)
    g = np.asarray(decoding.greedy(step, cache, batch_size=3, max_len=max_len, eos_id=None))
    dec_in = np.concatenate([np.zeros((3, 1), np.int32), g[:, :-1]], 1)
    lp = jax.nn.log_softmax(run(jnp.asarray(dec_in)), -1)
    greedy_total = np.take_along_axis(np.asarray(lp), g[:, :, None], -1).sum((1, 2))
    assert np.all(np.asarray(scores[:, 0]) >= greedy_total - 1e-4)
