"""LocCa: ViT encoder + captioning decoder trained on Cap, ARef and GCap at once.

One encoder pass per image, then one decoder pass per task, each at its own
text length (:meth:`LocCa.decode_tasks`): no task is padded to the longest
one, so a short ARef/GCap target costs only its own tokens.

Cap (``tasks=("cap",)``, ``parallel_prob=0``), CapPa (``tasks=("cap",)``,
``parallel_prob=0.75``) and LocCa (``tasks=("cap", "aref", "gcap")``,
``parallel_prob=0.5`` on cap only) are the same code with different keyword
arguments.

Batch layout expected by :func:`make_loss_fn` (the pretraining feature
converter in ``tasks/``): ``image`` uint8 [B, H, W, 3] (or float in [-1, 1]),
and per task ``t``: ``{t}_decoder_input_tokens`` [B, L_t] int (decoder input,
shifted right, BOS = 0), ``{t}_decoder_target_tokens`` [B, L_t] int,
``{t}_loss_weights`` [B, L_t] int or float (1 on every target token incl. EOS,
0 on padding) -- ``tasks.feature_converters.LocCaPretrainFeatureConverter``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from locca import losses
from locca.models import decoder as decoder_lib

__all__ = [
    "LocCa",
    "TASKS",
    "build_model",
    "init_params",
    "make_loss_fn",
    "merge_params",
    "preprocess_image",
    "task_keys",
]

TASKS = ("cap", "aref", "gcap")

Array = jax.Array


def task_keys(task: str) -> tuple[str, str, str]:
    """Batch keys (input tokens, target tokens, loss weights) of one task."""
    return f"{task}_decoder_input_tokens", f"{task}_decoder_target_tokens", f"{task}_loss_weights"


def preprocess_image(image: Array) -> Array:
    """uint8 [0, 255] -> float32 [-1, 1]; float input is taken as already in [-1, 1]."""
    image = jnp.asarray(image)
    if image.dtype == jnp.uint8:
        return image.astype(jnp.float32) / 127.5 - 1.0
    return image.astype(jnp.float32)


class LocCa(nn.Module):
    """Encoder (a ``vit.Model``) + :class:`decoder_lib.Decoder`.

    Parameter tree: ``{"encoder": <big_vision ViT params>, "decoder": {...}}``.
    The encoder must return ``(x, out)`` with ``out["encoded"]`` the
    un-pooled tokens after its final LayerNorm [B, N, D_enc].
    """

    encoder: nn.Module
    decoder: decoder_lib.Decoder

    def encode(self, image: Array, train: bool = False) -> Array:
        """image [B, H, W, 3] in [-1, 1] -> encoded tokens [B, N, D_enc]."""
        _, out = self.encoder(image, train=train)
        return out["encoded"]

    def decode(
        self,
        encoded: Array,  # [B, N, D_enc]
        tokens: Array,  # [G * B, L]
        parallel: Array | None = None,  # [G * B] bool
        train: bool = False,
    ) -> Array:
        return self.decoder(encoded, tokens, parallel, train=train)

    def decode_tasks(
        self,
        image: Array,  # [B, H, W, 3] float in [-1, 1]
        tokens: Sequence[Array],  # per task: [B, L_t] decoder inputs
        parallel: Sequence[Array | None],  # per task: [B] bool, or None
        train: bool = False,
    ) -> list[Array]:
        """One encoder pass, one decoder pass per task: logits [B, L_t, V] per task."""
        encoded = self.encode(image, train=train)  # [B, N, D_enc]
        return [self.decode(encoded, t, p, train=train) for t, p in zip(tokens, parallel)]

    def __call__(
        self,
        image: Array,  # [B, H, W, 3] float in [-1, 1]
        tokens: Array,  # [G * B, L] decoder inputs of G tasks, task-major
        parallel: Array | None = None,  # [G * B] bool
        train: bool = False,
    ) -> Array:
        """Returns logits [G * B, L, V]; one encoder pass shared by the G passes."""
        encoded = self.encode(image, train=train)
        return self.decode(encoded, tokens, parallel, train=train)


def build_model(
    *,
    vocab_size: int,
    encoder_config: Mapping[str, Any],
    decoder_config: Mapping[str, Any] | None = None,
    max_len: int = 64,
    dropout: float = 0.0,
    use_bias: bool = False,
    remat: bool = False,
    dtype_mm: Any = "float32",
) -> LocCa:
    """Builds LocCa from plain configs.

    Args:
      vocab_size: text vocabulary size (the decoder adds one mask id).
      encoder_config: keyword arguments of ``vit.Model`` (``variant="L/14"`` or
        ``width``/``depth``/``mlp_dim``/``num_heads``/``patch_size``, ``pool_type``
        ...). ``num_classes`` is forced to None (no head).
      decoder_config: ``width``/``depth``/``mlp_dim``/``num_heads``; missing
        entries default to the encoder's width/heads/mlp and half its depth.
      max_len: longest text (decoder position embeddings).
    """
    from locca.models import vit  # late import: written concurrently

    enc_cfg = dict(encoder_config)
    enc_cfg["num_classes"] = None
    enc_cfg.setdefault("pool_type", "gap")
    enc_cfg.setdefault("dtype_mm", dtype_mm)
    sizes = dict(enc_cfg)
    if enc_cfg.get("variant"):
        sizes = {**vit.decode_variant(enc_cfg["variant"]), **sizes}
    dec_cfg = decoder_lib.default_decoder_config(sizes)
    dec_cfg.update(dict(decoder_config or {}))
    encoder = vit.Model(**enc_cfg)
    decoder = decoder_lib.Decoder(
        vocab_size=int(vocab_size),
        max_len=int(max_len),
        dropout=dropout,
        use_bias=use_bias,
        remat=remat,
        dtype_mm=dtype_mm,
        **dec_cfg,
    )
    return LocCa(encoder=encoder, decoder=decoder)


def init_params(
    model: LocCa, rng: Array, *, image_size: int | Sequence[int], text_len: int, boxed: bool = False
) -> Any:
    """Initial params for images [1, H, W, 3] and text [1, text_len].

    ``boxed=True`` keeps the ``nn.Partitioned`` boxes (logical axis names) of
    the decoder; the default returns plain arrays.
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    image = jnp.zeros((1, *image_size, 3), jnp.float32)
    tokens = jnp.zeros((1, text_len), jnp.int32)
    # jit: one compiled program instead of hundreds of eagerly dispatched ops
    # (identical models share it through the persistent compilation cache).
    params = jax.jit(lambda r: model.init({"params": r}, image, tokens)["params"])(rng)
    return params if boxed else nn.unbox(params)


def merge_params(params: Mapping, frozen: Mapping | None) -> dict:
    """Deep union of the trainable and frozen trees (they must not overlap)."""
    out = dict(params)
    for k, v in (frozen or {}).items():
        if k in out:
            if not (isinstance(out[k], Mapping) and isinstance(v, Mapping)):
                raise ValueError(f"parameter {k!r} is both trainable and frozen")
            out[k] = merge_params(out[k], v)
        else:
            out[k] = v
    return out


def make_loss_fn(
    model: LocCa,
    *,
    tasks: Sequence[str] = TASKS,
    task_weights: Mapping[str, float] | None = None,
    parallel_prob: float = 0.5,
    parallel_tasks: Sequence[str] = ("cap",),
    train: bool = True,
) -> Callable:
    """The trainer's ``loss_fn(params, frozen_params, batch, rng) -> (loss, aux)``.

    Per task: softmax cross-entropy on every target token, weighted by the
    task's loss weights, averaged over the weighted tokens of the batch;
    ``loss = sum_t task_weights[t] * loss_t`` (weights default to 1).
    Parallel prediction: each example of a task in ``parallel_tasks`` is
    decoded in parallel mode with probability ``parallel_prob`` (drawn from
    ``rng``); ``train=False`` disables it and dropout (validation loss).
    aux: ``loss_{t}``, ``accuracy_{t}`` (token accuracy), ``accuracy``
    (all tasks), ``parallel_fraction``.
    """
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if not tasks or unknown:
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tasks}")
    weights_cfg = {t: 1.0 for t in tasks}
    weights_cfg.update(dict(task_weights or {}))
    if not 0.0 <= parallel_prob <= 1.0:
        raise ValueError(f"parallel_prob must be in [0, 1], got {parallel_prob}")

    def loss_fn(params, frozen_params, batch, rng):
        variables = {"params": merge_params(params, frozen_params)}
        rng_par, rng_drop = jax.random.split(rng)
        image = preprocess_image(batch["image"])  # [B, H, W, 3]
        b = image.shape[0]
        for t in tasks:
            for k in task_keys(t):
                if k not in batch:
                    raise KeyError(f"batch has no {k!r} (task {t!r}); keys: {sorted(batch)}")
        parallel = []
        for i, t in enumerate(tasks):
            if train and t in parallel_tasks and parallel_prob > 0:
                parallel.append(
                    jax.random.bernoulli(jax.random.fold_in(rng_par, i), parallel_prob, (b,))
                )
            else:
                parallel.append(None)  # [B] bool or None (all causal)
        logits = model.apply(
            variables,
            image,
            [batch[task_keys(t)[0]] for t in tasks],
            parallel,
            train=train,
            rngs={"dropout": rng_drop},
            method=LocCa.decode_tasks,
        )  # per task [B, L_t, V]
        loss = jnp.zeros((), jnp.float32)
        aux = {}
        sum_correct = sum_weight = 0.0
        for t, lg in zip(tasks, logits):
            _, targets, weights = (batch[k] for k in task_keys(t))
            total, count, correct = losses.token_cross_entropy(lg, targets, weights)
            denom = jnp.maximum(count, 1e-8)
            aux[f"loss_{t}"] = total / denom
            aux[f"accuracy_{t}"] = correct / denom
            loss = loss + weights_cfg[t] * aux[f"loss_{t}"]
            sum_correct, sum_weight = sum_correct + correct, sum_weight + count
        aux["accuracy"] = sum_correct / jnp.maximum(sum_weight, 1e-8)
        first = parallel[0]
        aux["parallel_fraction"] = (
            jnp.zeros((), jnp.float32) if first is None else first.astype(jnp.float32).mean()
        )
        return loss, aux

    return loss_fn
