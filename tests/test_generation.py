"""The one generative evaluation loop (locca/generation.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from locca import generation
from locca.models import decoder as decoder_lib


class _Vocab:
    def decode(self, ids):
        return " ".join(str(i) for i in ids)


def test_evaluate_generations_pads_last_batch_and_drops_padding():
    calls = []

    def decode_batch(idx):
        calls.append(np.asarray(idx).tolist())
        return [f"t{i}" for i in idx]

    seen = []

    def metric(targets, preds):
        seen.append((list(targets), list(preds)))
        return {"n": len(preds)}

    res = generation.evaluate_generations(
        num_examples=5,
        batch_size=2,
        decode_batch=decode_batch,
        postprocess=lambda text, i: (text, i),
        metric_fns=[metric, lambda t, p: {"second": 1.0}],
        targets=list("abcde"),
    )
    # Every call gets exactly B indices; the last one repeats index N-1.
    assert calls == [[0, 1], [2, 3], [4, 4]]
    assert res.texts == ["t0", "t1", "t2", "t3", "t4"]
    assert res.predictions == [("t0", 0), ("t1", 1), ("t2", 2), ("t3", 3), ("t4", 4)]
    assert seen == [(list("abcde"), res.predictions)]
    assert res.metrics == {"n": 5, "second": 1.0}


def test_evaluate_generations_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="3 targets for 2 examples"):
        generation.evaluate_generations(
            num_examples=2,
            batch_size=2,
            decode_batch=lambda idx: ["x"] * len(idx),
            postprocess=lambda t, i: t,
            metric_fns=[],
            targets=[1, 2, 3],
        )
    with pytest.raises(ValueError, match="returned 1 texts for 2 indices"):
        generation.evaluate_generations(
            num_examples=2,
            batch_size=2,
            decode_batch=lambda idx: ["x"],
            postprocess=lambda t, i: t,
            metric_fns=[],
            targets=[1, 2],
        )


def test_detokenize_skips_prompt_and_stops_at_eos():
    tokens = np.array([[5, 6, 1, 7, 8, 1, 9], [0, 4, 4, 1, 2, 0, 0]])
    assert generation.detokenize(_Vocab(), tokens) == ["5 6", "4 4"]
    assert generation.detokenize(_Vocab(), tokens, start=[3, 4]) == ["7 8", "2"]
    assert generation.ids_until_eos([0, 3, 0, 2, 1, 5]) == [3, 2]


@pytest.fixture(scope="module")
def tiny_decoder():
    """A random 2-layer decoder (initialised once per module), its params, image tokens."""
    dec = decoder_lib.Decoder(vocab_size=11, width=16, depth=2, num_heads=2, mlp_dim=32, max_len=8)
    encoded = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 16))  # [B, N, D]

    @jax.jit
    def init(rng):
        params = dec.init(rng, encoded, jnp.zeros((3, 8), jnp.int32))["params"]
        # Perturbed (the output head starts at zero) so that the argmax is not a tie.
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
        noisy = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
        return jax.tree.unflatten(tree, noisy)

    return dec, init(jax.random.PRNGKey(0)), encoded


def test_greedy_continuation_equals_argmax_of_full_forward_passes(tiny_decoder):
    """Cached greedy after a forced prompt == re-running the whole sequence each step."""
    dec, params, encoded = tiny_decoder
    prefix = np.array([[4, 5, 1, 0, 0, 0, 0, 0], [7, 1, 0, 0, 0, 0, 0, 0], [0] * 8], np.int32)
    continuation = jax.jit(
        lambda p, e, x: generation.greedy_continuation(dec, p, e, x, max_len=8, eos_id=None)
    )
    out = np.asarray(continuation(params, encoded, prefix))
    forward = jax.jit(lambda enc, inp: dec.apply({"params": params}, enc, inp))  # one shape
    for b in range(3):
        n = int((prefix[b] != 0).sum())
        seq = list(prefix[b, :n])
        while len(seq) < 8:
            inp = jnp.array([[0] + seq + [0] * (7 - len(seq))], jnp.int32)  # BOS-shifted
            logits = forward(encoded[b : b + 1], inp)  # [1, 8, V]
            seq.append(int(jnp.argmax(logits[0, len(seq)])))
        np.testing.assert_array_equal(out[b], seq)


def test_greedy_continuation_bans_first_tokens(tiny_decoder):
    dec, params, encoded = tiny_decoder
    empty = np.zeros((3, 8), np.int32)
    greedy = jax.jit(
        lambda banned: generation.greedy_continuation(
            dec, params, encoded, empty, max_len=8, banned_first=banned
        ),
        static_argnums=0,
    )
    free = np.asarray(greedy(()))
    banned = tuple(sorted(set(free[:, 0].tolist())))
    out = np.asarray(greedy(banned))
    assert not set(out[:, 0].tolist()) & set(banned)
