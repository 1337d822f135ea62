"""Autoregressive decoding over a step function and its cache.

Generic over models. A decoder step is

    tokens_to_logits(tokens [B, 1] int32, cache) -> (logits [B, V] float32, new_cache)

where `cache` is a pytree whose array leaves have the batch on axis 0;
0-d leaves (cache indices) are shared by all rows and are not expanded for
beams. The step at loop position i receives the token of position i-1
(`bos_id` at i = 0) and its logits choose the token of position i.

All decoders return int32 tokens [B, max_len]: BOS is not included, tokens
after the first EOS are 0 (padding). `prefix` [B, P] (P <= max_len) forces
tokens: position i of row b is forced to prefix[b, i] where that is non-zero
(0 = not forced, so prompts of different lengths are right-padded with 0);
forced tokens never end a sequence. `eos_id=None` never stops early.

The loops are `lax.while_loop`s under `jax.jit`. A step function that is a
pytree with array leaves (e.g. `T5DecodeStep`, holding the parameters) is
passed as a traced argument, so new parameters reuse the compiled loop; a
plain Python function is a static argument (compiled once per function).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

NEG = -1.0e9  # log-probability of impossible choices (finite, avoids NaN)
_VALID = -1.0e8  # scores below this are impossible candidates


# --------------------------------------------------------------------------
# Step-function plumbing.
# --------------------------------------------------------------------------
def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _split_fn(fn):
    """(static, dynamic leaves) for a step function (see module docstring)."""
    leaves, treedef = jax.tree_util.tree_flatten(fn)
    if leaves and not (len(leaves) == 1 and leaves[0] is fn) and all(map(_is_array, leaves)):
        return ("tree", treedef), leaves
    return ("fn", fn), []


def _join_fn(static, leaves):
    kind, obj = static
    return jax.tree_util.tree_unflatten(obj, leaves) if kind == "tree" else obj


def _prefix_arrays(prefix, batch_size: int, max_len: int):
    """(forced tokens [B, max_len] int32, forced mask [B, max_len] bool)."""
    if prefix is None:
        z = jnp.zeros((batch_size, max_len), jnp.int32)
        return z, z > 0
    prefix = jnp.asarray(prefix, jnp.int32)
    if prefix.ndim != 2 or prefix.shape[0] != batch_size or prefix.shape[1] > max_len:
        raise ValueError(
            f"prefix must be int [batch_size={batch_size}, P<=max_len={max_len}], "
            f"got shape {prefix.shape}"
        )
    prefix = jnp.pad(prefix, ((0, 0), (0, max_len - prefix.shape[1])))
    return prefix, prefix != 0


def _check(batch_size, max_len):
    if max_len < 1 or batch_size < 1:
        raise ValueError(f"need batch_size >= 1 and max_len >= 1, got {batch_size}, {max_len}")


# --------------------------------------------------------------------------
# Greedy and sampling (one loop; the token choice differs).
# --------------------------------------------------------------------------
def _filter_logits(logits, temperature, top_k, top_p):
    """Temperature, then top-k, then nucleus (top-p) filtering; f32 [B, V]."""
    logits = logits.astype(jnp.float32) / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [B, 1]
        logits = jnp.where(logits < kth, NEG, logits)
    if top_p is not None and top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # descending
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
        keep = before < top_p  # always keeps the top token
        num_kept = jnp.sum(keep, axis=-1, keepdims=True)  # [B, 1]
        threshold = jnp.take_along_axis(sorted_logits, num_kept - 1, axis=-1)
        logits = jnp.where(logits < threshold, NEG, logits)
    return logits


@functools.partial(
    jax.jit,
    static_argnames=(
        "fn_static",
        "batch_size",
        "max_len",
        "eos_id",
        "bos_id",
        "mode",
        "temperature",
        "top_k",
        "top_p",
    ),
)
def _sample_loop(
    fn_static,
    fn_leaves,
    cache,
    prefix,
    forced,
    rng,
    *,
    batch_size,
    max_len,
    eos_id,
    bos_id,
    mode,
    temperature,
    top_k,
    top_p,
):
    fn = _join_fn(fn_static, fn_leaves)

    def choose(logits, key):
        if mode == "greedy" or temperature == 0.0:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        filtered = _filter_logits(logits, temperature, top_k, top_p)
        return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)

    def cond(state):
        i, _, _, _, finished, _ = state
        return (i < max_len) & ~jnp.all(finished)

    def body(state):
        i, cache, seqs, last, finished, rng = state
        logits, cache = fn(last[:, None], cache)  # [B, V]
        rng, key = jax.random.split(rng)
        nxt = choose(logits, key)  # [B]
        is_forced = forced[:, i]
        nxt = jnp.where(is_forced, prefix[:, i], nxt)
        nxt = jnp.where(finished, 0, nxt)
        seqs = seqs.at[:, i].set(nxt)
        if eos_id is not None:
            finished = finished | ((nxt == eos_id) & ~is_forced)
        return i + 1, cache, seqs, nxt, finished, rng

    state = (
        jnp.array(0, jnp.int32),
        cache,
        jnp.zeros((batch_size, max_len), jnp.int32),
        jnp.full((batch_size,), bos_id, jnp.int32),
        jnp.zeros((batch_size,), bool),
        rng,
    )
    return jax.lax.while_loop(cond, body, state)[2]


def greedy(
    tokens_to_logits: Callable,
    cache: Any,
    *,
    batch_size: int,
    max_len: int,
    eos_id: int | None = 1,
    bos_id: int = 0,
    prefix=None,
) -> jax.Array:
    """Argmax decoding; returns int32 [B, max_len] (0 after EOS)."""
    _check(batch_size, max_len)
    static, leaves = _split_fn(tokens_to_logits)
    prefix, forced = _prefix_arrays(prefix, batch_size, max_len)
    return _sample_loop(
        static,
        leaves,
        cache,
        prefix,
        forced,
        jax.random.PRNGKey(0),
        batch_size=batch_size,
        max_len=max_len,
        eos_id=eos_id,
        bos_id=bos_id,
        mode="greedy",
        temperature=1.0,
        top_k=0,
        top_p=None,
    )


def sample(
    tokens_to_logits: Callable,
    cache: Any,
    *,
    batch_size: int,
    max_len: int,
    rng: jax.Array,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float | None = None,
    eos_id: int | None = 1,
    bos_id: int = 0,
    prefix=None,
) -> jax.Array:
    """Ancestral sampling from softmax(logits / temperature), optionally
    restricted to the top_k tokens (0 = all) and then to the smallest set whose
    probability reaches top_p (nucleus). temperature=0 is greedy."""
    _check(batch_size, max_len)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    static, leaves = _split_fn(tokens_to_logits)
    prefix, forced = _prefix_arrays(prefix, batch_size, max_len)
    return _sample_loop(
        static,
        leaves,
        cache,
        prefix,
        forced,
        rng,
        batch_size=batch_size,
        max_len=max_len,
        eos_id=eos_id,
        bos_id=bos_id,
        mode="sample",
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=None if top_p is None else float(top_p),
    )


# --------------------------------------------------------------------------
# Beam search.
# --------------------------------------------------------------------------
def length_penalty(length, alpha: float):
    """GNMT/t5x brevity penalty ((5 + length) / 6) ** alpha."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def expand_cache(cache, beam_size: int):
    """Repeats every non-scalar leaf beam_size times along axis 0 (b0k0, b0k1, ...)."""
    return jax.tree_util.tree_map(
        lambda x: x if jnp.ndim(x) == 0 else jnp.repeat(x, beam_size, axis=0), cache
    )


def _gather_beams(x, beam_idx, batch_size, old_k):
    """x [B*old_k, ...] or [B, old_k, ...] gathered by beam_idx [B, K]."""
    flat = x.shape[0] == batch_size * old_k and (x.ndim == 1 or x.shape[1] != old_k)
    y = x.reshape((batch_size, old_k) + x.shape[1:]) if flat else x
    idx = beam_idx.reshape(beam_idx.shape + (1,) * (y.ndim - 2))
    out = jnp.take_along_axis(y, idx, axis=1)
    return out.reshape((-1,) + x.shape[1:]) if flat else out


@functools.partial(
    jax.jit,
    static_argnames=(
        "fn_static",
        "batch_size",
        "max_len",
        "eos_id",
        "bos_id",
        "beam_size",
        "alpha",
    ),
)
def _beam_loop(
    fn_static,
    fn_leaves,
    cache,
    prefix,
    forced,
    *,
    batch_size,
    max_len,
    eos_id,
    bos_id,
    beam_size,
    alpha,
):
    fn = _join_fn(fn_static, fn_leaves)
    b, k = batch_size, beam_size

    def gather_cache(c, beam_idx):
        def g(x):
            if jnp.ndim(x) == 0:
                return x
            y = x.reshape((b, k) + x.shape[1:])
            idx = beam_idx.reshape(beam_idx.shape + (1,) * (y.ndim - 2))
            return jnp.take_along_axis(y, idx, axis=1).reshape(x.shape)

        return jax.tree_util.tree_map(g, c)

    def take(x, idx):  # x [B, N, ...], idx [B, M]
        return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

    max_bound = length_penalty(max_len, alpha)

    def cond(state):
        i, _, alive_lp, _, fin_scores, fin_flags, _ = state
        # Log-probs only decrease, so alive_lp / penalty(max_len) bounds any
        # alive beam's final score (alpha >= 0).
        best_alive = alive_lp[:, 0] / max_bound
        worst_fin = jnp.min(jnp.where(fin_flags, fin_scores, -NEG), axis=1)
        done = (jnp.all(fin_flags, axis=1) & (worst_fin >= best_alive)) | (alive_lp[:, 0] < _VALID)
        return (i < max_len) & ~jnp.all(done)

    def body(state):
        i, alive_seqs, alive_lp, fin_seqs, fin_scores, fin_flags, cache = state
        last = jnp.where(i == 0, bos_id, alive_seqs[:, :, jnp.maximum(i - 1, 0)])  # [B, K]
        logits, cache = fn(last.reshape(b * k, 1), cache)  # [B*K, V]
        v = logits.shape[-1]
        lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, k, v)
        is_forced = forced[:, i]  # [B]
        only = jnp.arange(v)[None, None, :] == prefix[:, i][:, None, None]
        lp = jnp.where(is_forced[:, None, None] & ~only, NEG, lp)
        cand = (alive_lp[:, :, None] + lp).reshape(b, k * v)
        top_lp, top_idx = jax.lax.top_k(cand, 2 * k)  # [B, 2K]
        src_beam, tok = top_idx // v, (top_idx % v).astype(jnp.int32)
        top_seqs = take(alive_seqs, src_beam).at[:, :, i].set(tok)  # [B, 2K, T]
        valid = top_lp > _VALID
        if eos_id is None:
            is_eos = jnp.zeros_like(valid)
        else:
            is_eos = (tok == eos_id) & ~is_forced[:, None] & valid
        # Alive: the best K candidates that did not just end.
        new_alive_lp, a_idx = jax.lax.top_k(jnp.where(is_eos, NEG, top_lp), k)
        new_alive_seqs = take(top_seqs, a_idx)
        cache = gather_cache(cache, jnp.take_along_axis(src_beam, a_idx, axis=1))
        # Finished: merge the ones that just ended into the best K so far.
        new_scores = jnp.where(is_eos, top_lp / length_penalty(i + 1, alpha), NEG)
        all_scores = jnp.concatenate([fin_scores, new_scores], axis=1)
        all_flags = jnp.concatenate([fin_flags, is_eos], axis=1)
        all_seqs = jnp.concatenate([fin_seqs, top_seqs], axis=1)
        fin_scores, f_idx = jax.lax.top_k(all_scores, k)
        fin_flags = jnp.take_along_axis(all_flags, f_idx, axis=1)
        fin_seqs = take(all_seqs, f_idx)
        return i + 1, new_alive_seqs, new_alive_lp, fin_seqs, fin_scores, fin_flags, cache

    alive_lp0 = jnp.tile(jnp.array([0.0] + [NEG] * (k - 1), jnp.float32), (b, 1))
    state = (
        jnp.array(0, jnp.int32),
        jnp.zeros((b, k, max_len), jnp.int32),
        alive_lp0,
        jnp.zeros((b, k, max_len), jnp.int32),
        jnp.full((b, k), NEG, jnp.float32),
        jnp.zeros((b, k), bool),
        cache,
    )
    _, alive_seqs, alive_lp, fin_seqs, fin_scores, fin_flags, _ = jax.lax.while_loop(
        cond, body, state
    )
    # Hypotheses alive at the end compete as complete ones of length max_len
    # (if the loop stopped early they cannot beat the finished ones).
    alive_scores = jnp.where(alive_lp > _VALID, alive_lp / max_bound, 2 * NEG)
    all_scores = jnp.concatenate([fin_scores, alive_scores], axis=1)  # finished first on ties
    all_seqs = jnp.concatenate([fin_seqs, alive_seqs], axis=1)
    scores, idx = jax.lax.top_k(all_scores, k)
    seqs = take(all_seqs, idx)
    return seqs, scores


def beam_search(
    tokens_to_logits: Callable,
    cache: Any,
    *,
    batch_size: int,
    max_len: int,
    beam_size: int,
    alpha: float = 0.6,
    eos_id: int | None = 1,
    bos_id: int = 0,
    prefix=None,
    return_all: bool = False,
):
    """Beam search with the GNMT length penalty ((5 + len) / 6) ** alpha.

    `cache` is given for batch_size rows and expanded to batch_size*beam_size
    here. A finished hypothesis scores sum(log p) / penalty(len), len counting
    its EOS; hypotheses still alive at max_len compete with them as complete
    ones scored sum(log p) / penalty(max_len) (as Hugging Face does; t5x only
    falls back to them when nothing finished), so beam_size=1 is greedy.
    Returns the best tokens int32
    [B, max_len], or with return_all=True (tokens [B, K, max_len],
    scores [B, K]) best first.
    """
    _check(batch_size, max_len)
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    static, leaves = _split_fn(tokens_to_logits)
    prefix, forced = _prefix_arrays(prefix, batch_size, max_len)
    seqs, scores = _beam_loop(
        static,
        leaves,
        expand_cache(cache, beam_size),
        prefix,
        forced,
        batch_size=batch_size,
        max_len=max_len,
        eos_id=eos_id,
        bos_id=bos_id,
        beam_size=beam_size,
        alpha=float(alpha),
    )
    return (seqs, scores) if return_all else seqs[:, 0]


# --------------------------------------------------------------------------
# T5 step functions.
# --------------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class T5DecodeStep:
    """`tokens_to_logits` for locca's T5 (a pytree: params are its leaves).

    use_cache=True: one decoder step on the KV cache (cross-attention keys and
    values were computed once by `t5_tokens_to_logits`). use_cache=False:
    full recompute; the cache holds the token buffer [B, max_len], the
    encoder output and mask, and the scalar position.
    """

    params: Any
    model: Any = dataclasses.field(metadata=dict(static=True))
    use_cache: bool = dataclasses.field(metadata=dict(static=True))

    def __call__(self, tokens, cache):
        from locca.models.t5 import T5

        if self.use_cache:
            logits, variables = self.model.apply(
                {"params": self.params, "cache": cache},
                None,
                None,
                tokens,
                decode=True,
                method=T5.decode,
                mutable=["cache"],
            )
            return logits[:, 0], variables["cache"]
        idx = cache["index"]
        buf = jax.lax.dynamic_update_slice(cache["tokens"], tokens.astype(jnp.int32), (0, idx))
        logits = self.model.apply(
            {"params": self.params}, cache["encoded"], cache["mask"], buf, method=T5.decode
        )  # [B, T, V]
        step_logits = jax.lax.dynamic_index_in_dim(logits, idx, axis=1, keepdims=False)
        return step_logits, dict(cache, tokens=buf, index=idx + 1)


def t5_tokens_to_logits(model, params, encoded, encoder_mask, *, max_len: int, use_cache=True):
    """(tokens_to_logits, cache) for T5 decoding of up to max_len tokens.

    encoded: encoder output [B, K, D]; encoder_mask: bool [B, K].
    """
    from locca.models.t5 import init_cache

    encoder_mask = jnp.asarray(encoder_mask).astype(bool)
    if use_cache:
        cache = init_cache(model, params, encoded, encoder_mask, max_len)
    else:
        cache = {
            "tokens": jnp.zeros((encoded.shape[0], max_len), jnp.int32),
            "index": jnp.array(0, jnp.int32),
            "encoded": encoded,
            "mask": encoder_mask,
        }
    return T5DecodeStep(params=params, model=model, use_cache=use_cache), cache
