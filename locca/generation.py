"""Generative evaluation, one loop for every job: decode -> postprocess -> metric.

The three generative evaluations of the project use it with their own
pluggable pieces (the decode function is a parameter, as in t5x):

* transfer evaluation (``transfer.eval.InferenceEvaluator``): PaLI decoding,
  the seqio task's postprocessor and metric functions;
* the frozen-encoder REC protocol (``transfer.rec_protocol.evaluate``): a
  decoder from scratch continuing the prompt, the same seqio pieces;
* pretraining's zero-shot ARef (``locca.pretrain_eval.PretrainEvaluator``):
  the LocCa decoder continuing ``ARef : {text} :``, the box codec as the
  postprocessor, localisation scores with intervals as the metric.

Token conventions (T5 / big_vision): id 0 is padding and BOS, id 1 is EOS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from locca import decoding
from locca.models import decoder as decoder_lib

__all__ = [
    "GenerationResult",
    "evaluate_generations",
    "greedy_continuation",
    "ids_until_eos",
    "detokenize",
]

EOS_ID = 1


def ids_until_eos(row: Sequence[int] | np.ndarray, eos_id: int = EOS_ID) -> list[int]:
    """Token ids of one row up to (not including) the first EOS; padding (0) skipped."""
    out = []
    for t in np.asarray(row).tolist():
        if t == eos_id:
            break
        if t != 0:
            out.append(int(t))
    return out


def detokenize(
    vocab: Any,
    tokens: np.ndarray,  # [B, T] int
    start: Sequence[int] | np.ndarray | None = None,  # [B] first position to read
    eos_id: int = EOS_ID,
) -> list[str]:
    """[B, T] token ids -> B strings, each cut at its first EOS.

    ``start``: per row, the number of leading positions to skip (a forced
    prompt); None reads every row from position 0.
    """
    tokens = np.asarray(tokens)
    starts = np.zeros(len(tokens), int) if start is None else np.asarray(start, int)
    return [vocab.decode(ids_until_eos(row[s:], eos_id)) for row, s in zip(tokens, starts)]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _BanFirst:
    """Wraps a decode step: ``banned`` ids cannot be chosen as the first token.

    Used to sample plain captions from a multi-task decoder, whose first token
    could otherwise start an ``ARef`` / ``GCap`` sequence.
    """

    step: Any
    banned: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))

    def __call__(self, tokens, cache):
        first = cache["position"] == 0
        logits, cache = self.step(tokens, cache)
        ban = jnp.zeros((logits.shape[-1],), bool).at[jnp.array(self.banned)].set(True)
        return jnp.where(first & ban[None, :], -1e9, logits), cache


def greedy_continuation(
    decoder: decoder_lib.Decoder,
    decoder_params: Any,
    encoded: jax.Array,  # [B, N, D_enc] un-pooled image tokens
    prefix: jax.Array,  # [B, P] forced prompt ids, 0-padded (P <= max_len)
    *,
    max_len: int,
    banned_first: tuple[int, ...] = (),
    eos_id: int = EOS_ID,
) -> jax.Array:
    """Greedy decoding of a :class:`Decoder` after a forced prompt -> [B, max_len].

    The output rows start with the prompt (its non-zero ids) and continue with
    the generated ids (0 after EOS); ``banned_first`` ids may not be generated
    at the first position (only meaningful with an empty prompt). jit-able.
    """
    cache = decoder_lib.init_cache(decoder, decoder_params, encoded, max_len)
    step = decoder_lib.make_tokens_to_logits(decoder, decoder_params)
    if banned_first:
        step = _BanFirst(step, tuple(banned_first))
    return decoding.greedy(
        step, cache, batch_size=encoded.shape[0], max_len=max_len, eos_id=eos_id, prefix=prefix
    )


@dataclasses.dataclass
class GenerationResult:
    """What :func:`evaluate_generations` produced, one entry per example."""

    texts: list[str]  # the decoded text after any prompt
    predictions: list[Any]  # postprocess(text, index)
    metrics: dict[str, Any]  # merged outputs of the metric functions


def evaluate_generations(
    *,
    num_examples: int,
    batch_size: int,
    decode_batch: Callable[[np.ndarray], Sequence[str]],
    postprocess: Callable[[str, int], Any],
    metric_fns: Sequence[Callable[[Sequence[Any], Sequence[Any]], Mapping[str, Any]]],
    targets: Sequence[Any],
) -> GenerationResult:
    """Decodes every example in batches, postprocesses, scores.

    Args:
      num_examples: N; examples are addressed by index 0..N-1.
      batch_size: B. Every call of ``decode_batch`` gets exactly B indices
        (the last batch is padded by repeating index N-1, so one compiled
        shape serves all batches); the padded outputs are dropped.
      decode_batch: ``indices [B] -> B texts`` (the pluggable decode function).
      postprocess: ``(text, index) -> prediction`` (e.g. a seqio task's
        ``postprocess_fn`` or a box parser).
      metric_fns: each ``(targets, predictions) -> {name: value}`` (seqio's
        ``predict_metric_fns`` signature); their outputs are merged in order.
      targets: the N targets handed to the metric functions.
    """
    if len(targets) != num_examples:
        raise ValueError(f"{len(targets)} targets for {num_examples} examples")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    texts: list[str] = []
    for start in range(0, num_examples, batch_size):
        idx = np.minimum(np.arange(start, start + batch_size), num_examples - 1)
        out = list(decode_batch(idx))
        if len(out) != batch_size:
            raise ValueError(f"decode_batch returned {len(out)} texts for {batch_size} indices")
        texts.extend(out[: min(batch_size, num_examples - start)])
    predictions = [postprocess(t, i) for i, t in enumerate(texts)]
    metrics: dict[str, Any] = {}
    for fn in metric_fns:
        metrics.update(fn(targets, predictions))
    return GenerationResult(texts=texts, predictions=predictions, metrics=metrics)
