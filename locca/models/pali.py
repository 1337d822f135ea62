"""PaLI: a vision encoder's tokens, projected, prefix the text of a T5 encoder-decoder.

The PaLI-3 transfer protocol (PAPER.md): an image goes through a ViT
(``locca.models.vit``, big_vision names); its **un-pooled** tokens after the
final LayerNorm ``[B, N, D_img]`` are mapped to the language model's width by a
projection (``"linear"``: one Dense; ``"mlp"``: Dense -> GELU -> Dense) and
prepended to the embedded text tokens of the T5 encoder as prefix embeddings.
The T5 encoder attends fully over ``[image tokens ; text tokens]`` with the
text padding masked out; the T5 decoder cross-attends to all of it.

Parameter tree (plain nested dicts)::

    {"img": <vit.Model params>, "img_proj": {...}, "llm": <T5 params, t5x names>}

Freezing: by default the encoder (``"img"``) lives in a separate *frozen* tree
that the trainer never differentiates nor gives optimiser state
(``split_params``); inside the model it is wrapped in
``jax.lax.stop_gradient`` and run in eval mode (no dropout). With
``freeze_encoder=False`` it is part of the trainable tree.

Images: the model takes the pipeline's uint8 NHWC images (or floats already
normalised) and applies the *encoder's* preprocessing (``ImagePreprocessing``):
bilinear resize to the encoder resolution when the sizes differ, then
``(x / 255 - mean) / std`` per channel. SigLIP-style encoders use
mean = std = 0.5 (values in [-1, 1]); CLIP-style ones use the CLIP mean/std.

Functions over a built model (plain keyword arguments, no gin):
``init_params``, ``split_params``/``merge_params``, ``make_loss_fn`` (the
trainer's ``loss_fn(params, frozen, batch, rng) -> (loss, aux)``) and
``predict`` (encode image + text once, then greedy / beam / sampling over the
T5 KV cache with ``locca.decoding``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from locca import decoding, losses
from locca.models import t5 as t5_lib
from locca.models import vit as vit_lib

FROZEN_KEYS = ("img",)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class ImagePreprocessing:
    """How images are prepared for one encoder (follows the encoder, not the task).

    Attributes:
      resolution: (height, width) in pixels the encoder expects; None keeps the
        input size.
      mean, std: per-channel statistics on the [0, 1] scale; the model input is
        ``(pixels / 255 - mean) / std``. mean = std = 0.5 maps to [-1, 1].
    """

    resolution: tuple[int, int] | None = None
    mean: tuple[float, float, float] = SIGLIP_MEAN
    std: tuple[float, float, float] = SIGLIP_STD

    @classmethod
    def create(cls, resolution=None, value_range=None, mean=None, std=None):
        """From gin-friendly values: ``value_range=(-1, 1)`` or (0, 1), or mean/std."""
        if resolution is not None:
            resolution = (
                (int(resolution), int(resolution))
                if np.isscalar(resolution)
                else tuple(int(r) for r in resolution)
            )
        if value_range is not None and (mean is not None or std is not None):
            raise ValueError("give either value_range or mean/std, not both")
        if value_range is not None:
            lo, hi = (float(v) for v in value_range)
            if hi <= lo:
                raise ValueError(f"value_range must be (low, high), low < high; got {value_range}")
            # x01 * (hi - lo) + lo == (x01 - mean) / std
            std = (1.0 / (hi - lo),) * 3
            mean = (-lo / (hi - lo),) * 3
        mean = tuple(float(m) for m in (mean if mean is not None else SIGLIP_MEAN))
        std = tuple(float(s) for s in (std if std is not None else SIGLIP_STD))
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean/std must be 3 values with std > 0, got {mean}, {std}")
        return cls(resolution=resolution, mean=mean, std=std)

    def __call__(self, image: jax.Array) -> jax.Array:
        """[B, H, W, 3] uint8 (0..255) or float (already normalised) -> float32."""
        if image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(f"expected images [B, H, W, 3], got shape {image.shape}")
        is_int = jnp.issubdtype(image.dtype, jnp.integer)
        x = image.astype(jnp.float32)  # [B, H, W, 3]
        if self.resolution is not None and tuple(x.shape[1:3]) != tuple(self.resolution):
            b, _, _, c = x.shape
            x = jax.image.resize(x, (b, *self.resolution, c), method="bilinear", antialias=True)
        if is_int:
            x = x / 255.0
            x = (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)
        return x


class Projection(nn.Module):
    """Maps image tokens [B, N, D_img] to the LM width [B, N, d_model].

    ``kind="linear"``: ``head`` Dense. ``kind="mlp"``: ``hidden`` Dense (width
    ``hidden_dim``, default d_model) -> GELU -> ``head`` Dense.
    """

    features: int
    kind: str = "linear"
    hidden_dim: int | None = None

    @nn.compact
    def __call__(self, x):
        if self.kind == "linear":
            pass
        elif self.kind == "mlp":
            x = nn.Dense(
                self.hidden_dim or self.features,
                name="hidden",
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.lecun_normal(), ("embed", "mlp")
                ),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
            )(x)
            x = nn.gelu(x)
        else:
            raise ValueError(f"unknown projection kind {self.kind!r} (expected linear|mlp)")
        return nn.Dense(
            self.features,
            name="head",
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), ("mlp" if self.kind == "mlp" else None, "embed")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        )(x)


class PaLI(nn.Module):
    """Vision encoder -> projection -> T5 encoder prefix -> T5 decoder.

    Attributes:
      vit_config: keyword arguments of ``vit.Model`` (``num_classes`` is forced
        to None: PaLI uses the un-pooled tokens ``out["encoded"]``).
      t5_config: the language model's ``T5Config``.
      projection: "linear" or "mlp".
      projection_hidden_dim: hidden width of the "mlp" projection.
      preprocessing: the encoder's ``ImagePreprocessing``.
      freeze_encoder: when True the encoder runs without dropout and behind
        ``stop_gradient``.
    """

    vit_config: Mapping[str, Any]
    t5_config: Any
    projection: str = "linear"
    projection_hidden_dim: int | None = None
    preprocessing: ImagePreprocessing = ImagePreprocessing()
    freeze_encoder: bool = True

    def setup(self):
        cfg = dict(self.vit_config)
        cfg["num_classes"] = None
        self.img = vit_lib.Model(**cfg)
        self.img_proj = Projection(
            features=self.t5_config.emb_dim,
            kind=self.projection,
            hidden_dim=self.projection_hidden_dim,
        )
        self.llm = t5_lib.T5(self.t5_config)

    def embed_image(self, image, *, train: bool = False):
        """Image [B, H, W, 3] -> projected tokens [B, N, d_model] (float32)."""
        x = self.preprocessing(image)  # [B, H', W', 3]
        _, out = self.img(x, train=train and not self.freeze_encoder)
        tokens = out["encoded"]  # [B, N, D_img] un-pooled, after encoder_norm
        if self.freeze_encoder:
            tokens = jax.lax.stop_gradient(tokens)
        return self.img_proj(tokens)  # [B, N, d_model]

    def encode(self, image, encoder_input_tokens, *, train: bool = False):
        """-> (encoded [B, N+L, d_model], encoder_mask [B, N+L] bool).

        The image tokens are always valid; text positions with token id 0 are
        padding and masked out of every attention.
        """
        prefix = self.embed_image(image, train=train)  # [B, N, d]
        prefix_mask = jnp.ones(prefix.shape[:2], jnp.bool_)  # [B, N]
        encoded = self.llm.encode(
            encoder_input_tokens,
            prefix_embeddings=prefix,
            prefix_mask=prefix_mask,
            enable_dropout=train,
        )  # [B, N+L, d]
        mask = jnp.concatenate([prefix_mask, encoder_input_tokens > 0], axis=1)  # [B, N+L]
        return encoded, mask

    def decode(
        self,
        encoded,
        encoder_mask,
        decoder_input_tokens,
        *,
        train: bool = False,
        decode: bool = False,
        max_decode_length: int | None = None,
    ):
        """Decoder logits [B, T, V] (decode=True: one step with the KV cache)."""
        return self.llm.decode(
            encoded,
            encoder_mask,
            decoder_input_tokens,
            enable_dropout=train,
            decode=decode,
            max_decode_length=max_decode_length,
        )

    def __call__(self, image, encoder_input_tokens, decoder_input_tokens, *, train=False):
        """Teacher-forced logits [B, T, V] float32."""
        encoded, mask = self.encode(image, encoder_input_tokens, train=train)
        return self.decode(encoded, mask, decoder_input_tokens, train=train)


# ---------------------------------------------------------------------------
# Parameters: init, split into trainable / frozen, merge.


def _dummy_inputs(model: PaLI, batch_size: int = 1, text_len: int = 4):
    res = model.preprocessing.resolution or (224, 224)
    image = jnp.zeros((batch_size, *res, 3), jnp.uint8)
    tokens = jnp.ones((batch_size, text_len), jnp.int32)
    return image, tokens, tokens


def init_params(model: PaLI, rng: jax.Array) -> tuple[dict, dict]:
    """Random parameters -> (plain params, logical axes PartitionSpecs; None where absent)."""
    image, enc, dec = _dummy_inputs(model)
    boxed = jax.jit(lambda r: model.init(r, image, enc, dec)["params"])(rng)
    is_boxed = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
    axes = jax.tree.map(
        lambda x: jax.sharding.PartitionSpec(*x.names) if is_boxed(x) else None,
        boxed,
        is_leaf=is_boxed,
    )
    return _plain(nn.unbox(boxed)), _plain(axes)


def _plain(tree):
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


def split_params(params: Mapping, freeze_encoder: bool = True) -> tuple[dict, dict]:
    """Full tree -> (trainable, frozen). Frozen holds ``img`` when freezing, else {}."""
    params = dict(params)
    if not freeze_encoder:
        return params, {}
    frozen = {k: params.pop(k) for k in FROZEN_KEYS if k in params}
    return params, frozen


def merge_params(trainable: Mapping, frozen: Mapping) -> dict:
    """(trainable, frozen) -> full tree; frozen leaves go behind ``stop_gradient``."""
    overlap = set(trainable) & set(frozen)
    if overlap:
        raise ValueError(f"parameter groups both trainable and frozen: {sorted(overlap)}")
    return {**dict(trainable), **jax.lax.stop_gradient(dict(frozen))}


# ---------------------------------------------------------------------------
# Loss.


def make_loss_fn(model: PaLI, *, label_smoothing: float = 0.0):
    """The trainer's ``loss_fn(params, frozen, batch, rng) -> (loss, aux)``.

    ``batch`` holds the feature converter's model features: ``image`` uint8
    [B, H, W, 3], ``encoder_input_tokens`` [B, L], ``decoder_input_tokens``,
    ``decoder_target_tokens``, ``decoder_loss_weights`` [B, T]. The loss is
    the mean over weighted target tokens (nats per token).
    """

    def loss_fn(params, frozen, batch, rng):
        variables = {"params": merge_params(params, frozen)}
        logits = model.apply(
            variables,
            batch["image"],
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            train=True,
            rngs={"dropout": rng} if rng is not None else {},
        )  # [B, T, V]
        total, count, correct = losses.token_cross_entropy(
            logits,
            batch["decoder_target_tokens"],
            batch["decoder_loss_weights"],
            label_smoothing,
        )
        denom = jnp.maximum(count, 1.0)
        loss = total / denom
        return loss, {"token_accuracy": correct / denom, "num_target_tokens": count}

    return loss_fn


# ---------------------------------------------------------------------------
# Inference.

DECODE_METHODS = ("greedy", "beam", "sample")


def predict(
    model: PaLI,
    params: Mapping,
    frozen: Mapping,
    batch: Mapping,
    *,
    decode_method: str = "greedy",
    max_decode_len: int = 32,
    eos_id: int = 1,
    beam_size: int = 4,
    alpha: float = 0.6,
    rng: jax.Array | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    prefix: jax.Array | None = None,
) -> jax.Array:
    """Decodes output tokens [B, max_decode_len] (0 after EOS).

    The image and prompt are encoded once; each step runs the T5 decoder on
    one token with the KV cache (``locca.decoding``). ``batch`` needs
    ``image`` and ``encoder_input_tokens``. Call under ``jax.jit`` with the
    keyword arguments static (see ``make_predict_fn``).
    """
    if decode_method not in DECODE_METHODS:
        raise ValueError(f"unknown decode_method {decode_method!r}; expected {DECODE_METHODS}")
    variables = {"params": merge_params(params, frozen)}
    image = batch["image"]
    batch_size = image.shape[0]
    encoded, mask = model.apply(
        variables, image, batch["encoder_input_tokens"], method=PaLI.encode
    )  # [B, S, d], [B, S]

    # Initialise the KV cache for max_decode_len positions.
    dummy = jnp.zeros((batch_size, max_decode_len), jnp.int32)
    _, init_vars = model.apply(
        variables,
        encoded,
        mask,
        dummy,
        decode=True,
        max_decode_length=max_decode_len,
        method=PaLI.decode,
        mutable=["cache"],
    )
    # The cache holds the cross-attention keys/values and the encoder mask,
    # so steps need neither `encoded` nor `mask` (beam search expands it).
    cache = init_vars["cache"]

    def tokens_to_logits(tokens, cache):
        logits, new_vars = model.apply(
            {**variables, "cache": cache},
            None,
            None,
            tokens,  # [B, 1]
            decode=True,
            max_decode_length=max_decode_len,
            method=PaLI.decode,
            mutable=["cache"],
        )  # [B, 1, V]
        return logits[:, -1, :].astype(jnp.float32), new_vars["cache"]

    common = dict(batch_size=batch_size, max_len=max_decode_len, eos_id=eos_id, prefix=prefix)
    if decode_method == "greedy":
        return decoding.greedy(tokens_to_logits, cache, **common)
    if decode_method == "beam":
        return decoding.beam_search(
            tokens_to_logits, cache, beam_size=beam_size, alpha=alpha, **common
        )
    if rng is None:
        raise ValueError("decode_method='sample' needs rng")
    return decoding.sample(
        tokens_to_logits,
        cache,
        rng=rng,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        **common,
    )


def make_predict_fn(model: PaLI, **decode_kwargs):
    """jit-compiled ``(params, frozen, batch[, rng]) -> tokens [B, max_decode_len]``."""

    @jax.jit
    def fn(params, frozen, batch, rng=None):
        return predict(model, params, frozen, batch, rng=rng, **decode_kwargs)

    return fn


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ImagePreprocessing",
    "PaLI",
    "Projection",
    "init_params",
    "make_loss_fn",
    "make_predict_fn",
    "merge_params",
    "predict",
    "split_params",
]
