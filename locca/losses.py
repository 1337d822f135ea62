"""The one token loss: weighted softmax cross-entropy over decoder outputs.

Used by LocCa pretraining (:mod:`locca.models.locca`), PaLI transfer
(:mod:`locca.models.pali`) and the frozen-encoder REC decoder
(``transfer/rec_protocol.py``). Losses are in nats per token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["token_cross_entropy"]


def token_cross_entropy(
    logits: jax.Array,  # [B, T, V] float
    targets: jax.Array,  # [B, T] int token ids
    weights: jax.Array,  # [B, T] loss weights (0 on padding)
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Weighted token cross-entropy, summed (not averaged) over the batch.

    ``label_smoothing`` spreads that mass uniformly over the other vocabulary
    entries; the constant minimum entropy is subtracted (as t5x) so a perfect
    model scores 0.

    Returns:
      ``(sum of weighted losses, sum of weights, sum of weighted correct
      argmax tokens)``, each a float32 scalar; divide the first and the last
      by the second for the mean loss and the token accuracy.
    """
    vocab = logits.shape[-1]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, T, V]
    targets = targets.astype(jnp.int32)
    nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]  # [B, T]
    if label_smoothing > 0:
        confidence = 1.0 - label_smoothing
        low = label_smoothing / (vocab - 1) if vocab > 1 else 0.0
        # -sum_v soft_v logp_v with soft = low everywhere, confidence at the target.
        loss = (confidence - low) * nll - low * jnp.sum(logp, axis=-1)
        norm = -(confidence * np.log(confidence) + (vocab - 1) * low * np.log(low + 1e-20))
        loss = loss - norm
    else:
        loss = nll
    weights = weights.astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) * weights
    return jnp.sum(loss * weights), jnp.sum(weights), jnp.sum(correct)
