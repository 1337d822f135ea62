"""Captioning decoder (LocCa / CapPa): a pre-LN transformer decoder over image tokens.

The decoder reads the **un-pooled** encoder tokens ``encoded`` [B, N, D_enc]
(the ViT's ``out["encoded"]``, after its final LayerNorm) through
cross-attention and predicts text tokens.

Block (pre-LayerNorm, as big_vision's CapPa decoder)::

    x = x + Drop(SelfAttn(LN(x)))       causal, or full for parallel examples
    x = x + Drop(CrossAttn(LN(x), enc))
    x = x + MLP(LN(x))                  Dense -> GELU -> Drop -> Dense -> Drop

Input = token embedding + learned position embedding; output = final
LayerNorm then a zero-initialised Dense to the vocabulary, so the logits are
exactly zero (uniform distribution) at initialisation. Biases are off by
default everywhere (big_vision ``decoder_bias=False``).

Conventions:
  * ``tokens`` are *decoder input* tokens (already shifted right, BOS = 0 as
    T5); logits[:, i] predicts the target token at position i.
  * Parallel prediction (CapPa): ``parallel`` [B] bool. For a parallel
    example every input token is replaced by the mask id (``vocab_size``, an
    extra row of the embedding table) and self-attention is full
    (non-causal), so all target tokens are predicted at once from the image.
  * KV cache (flax collection ``"cache"``): with ``decode=True`` the decoder
    takes one token per call. The cache is created by :func:`init_cache`
    (one pass over a dummy full-length input, which also computes the
    cross-attention keys/values once); :func:`make_tokens_to_logits` then
    gives the ``tokens_to_logits(tokens [B, 1], cache) -> (logits [B, V],
    cache)`` step that ``locca.decoding`` expects. Array leaves of the cache
    are batch-first; position counters are int32 scalars.
  * Parameters carry logical axis names (``vocab``, ``embed``, ``mlp``,
    ``heads``, ``kv``, ``length``) via ``nn.with_logical_partitioning``;
    ``nn.unbox`` gives plain arrays, ``nn.get_partition_spec`` the names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DecodeStep",
    "Decoder",
    "DecoderBlock",
    "Attention",
    "default_decoder_config",
    "init_cache",
    "make_tokens_to_logits",
]

_NEG_INF = -1e10  # added to masked attention logits (float32 softmax)

Array = jax.Array


def _lp(init: Callable, names: tuple[str | None, ...]) -> Callable:
    return nn.with_logical_partitioning(init, names)


def _wlc(x: Array, names: tuple[str | None, ...]) -> Array:
    return nn.with_logical_constraint(x, names)


def default_decoder_config(encoder_config: dict[str, Any]) -> dict[str, int]:
    """Decoder width/heads/mlp equal the encoder's, depth half of it (LocCa, CapPa).

    ``encoder_config`` holds ``width``, ``depth``, ``mlp_dim``, ``num_heads``
    (as ``vit.decode_variant`` returns). ``mlp_dim`` defaults to 4 * width.
    """
    width = int(encoder_config["width"])
    return dict(
        width=width,
        depth=max(1, int(encoder_config["depth"]) // 2),
        mlp_dim=int(encoder_config.get("mlp_dim") or 4 * width),
        num_heads=int(encoder_config["num_heads"]),
    )


class Attention(nn.Module):
    """Multi-head dot-product attention with an optional KV cache.

    ``kind="self"``: keys/values from ``x``; in decode mode one query token
    per call, keys/values appended to ``cache/cached_key|cached_value``
    [B, L_max, H, Dh] at ``cache/cache_index``.
    ``kind="cross"``: keys/values from ``kv`` (the encoder tokens); in decode
    mode they are projected once, when the cache is created, and stored as
    ``cache/cross_key|cross_value`` [B, N, H, Dh].
    """

    num_heads: int
    kind: str = "self"
    dropout: float = 0.0
    use_bias: bool = False
    dtype_mm: Any = jnp.float32

    def _proj(self, name: str, features: int) -> nn.Module:
        head_dim = features // self.num_heads
        return nn.DenseGeneral(
            features=(self.num_heads, head_dim),
            use_bias=self.use_bias,
            dtype=self.dtype_mm,
            kernel_init=_lp(nn.initializers.xavier_uniform(), ("embed", "heads", "kv")),
            bias_init=_lp(nn.initializers.zeros, ("heads", "kv")),
            name=name,
        )

    @nn.compact
    def __call__(
        self,
        x: Array,  # [B, L, D]
        kv: Array | None = None,  # [B, N, D_kv] (cross) or None
        mask: Array | None = None,  # [B or 1, 1, L, L_kv] bool, True = attend
        *,
        decode: bool = False,
        deterministic: bool = True,
    ) -> Array:
        features = x.shape[-1]
        if features % self.num_heads:
            raise ValueError(f"width {features} not divisible by num_heads {self.num_heads}")
        head_dim = features // self.num_heads
        q = self._proj("query", features)(x)  # [B, L, H, Dh]
        key_proj, value_proj = self._proj("key", features), self._proj("value", features)

        if self.kind == "self":
            k, v = key_proj(x), value_proj(x)  # [B, L, H, Dh]
            if decode:
                initialized = self.has_variable("cache", "cached_key")
                ck = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
                cv = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
                ci = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
                if initialized:
                    if x.shape[1] != 1:
                        raise ValueError(f"decode step takes one token, got length {x.shape[1]}")
                    i = ci.value
                    at = (0, i, 0, 0)
                    k = jax.lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), at)
                    v = jax.lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype), at)
                    ck.value, cv.value, ci.value = k, v, i + 1
                    max_len = k.shape[1]
                    mask = (jnp.arange(max_len) <= i)[None, None, None, :]  # [1, 1, 1, L_max]
        elif self.kind == "cross":
            if decode:
                initialized = self.has_variable("cache", "cross_key")
                if not initialized and kv is None:
                    raise ValueError("cross-attention cache needs the encoder tokens")
                ck = self.variable("cache", "cross_key", lambda: key_proj(kv))
                cv = self.variable("cache", "cross_value", lambda: value_proj(kv))
                k, v = ck.value, cv.value  # [B, N, H, Dh]
            else:
                if kv is None:
                    raise ValueError("cross-attention needs the encoder tokens")
                k, v = key_proj(kv), value_proj(kv)
        else:
            raise ValueError(f"kind must be 'self' or 'cross', got {self.kind!r}")

        q = q / np.sqrt(head_dim).astype(np.float32)
        # Grouped queries: a batch of G * B queries may attend to B key/value rows
        # (query row g * B + b reads kv row b), so LocCa's three decoder passes
        # share one projection of the encoder tokens instead of tiling them.
        b, b_kv = q.shape[0], k.shape[0]
        if b % b_kv:
            raise ValueError(f"query batch {b} is not a multiple of key/value batch {b_kv}")
        qg = q.reshape((b // b_kv, b_kv) + q.shape[1:])  # [G, B_kv, L, H, Dh]
        logits = jnp.einsum("gbqhd,bkhd->gbhqk", qg, k).astype(jnp.float32)
        logits = logits.reshape((b,) + logits.shape[2:])  # [B, H, L, L_kv]
        if mask is not None:
            logits = jnp.where(mask, logits, _NEG_INF)
        weights = jax.nn.softmax(logits, axis=-1)  # [B, H, L, L_kv]
        self.sow("intermediates", "attention_weights", weights)  # no-op unless mutable
        if self.dropout > 0.0:
            weights = nn.Dropout(rate=self.dropout)(weights, deterministic=deterministic)
        wg = weights.astype(v.dtype).reshape((b // b_kv, b_kv) + weights.shape[1:])
        y = jnp.einsum("gbhqk,bkhd->gbqhd", wg, v).reshape(q.shape)  # [B, L, H, Dh]
        return nn.DenseGeneral(
            features=features,
            axis=(-2, -1),
            use_bias=self.use_bias,
            dtype=self.dtype_mm,
            kernel_init=_lp(nn.initializers.xavier_uniform(), ("heads", "kv", "embed")),
            bias_init=_lp(nn.initializers.zeros, ("embed",)),
            name="out",
        )(y)  # [B, L, D]


class MlpBlock(nn.Module):
    """Dense(mlp_dim) -> GELU -> Dropout -> Dense(width) (big_vision MlpBlock layout)."""

    mlp_dim: int
    dropout: float = 0.0
    use_bias: bool = False
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        d = x.shape[-1]
        x = nn.Dense(
            self.mlp_dim,
            use_bias=self.use_bias,
            dtype=self.dtype_mm,
            kernel_init=_lp(nn.initializers.xavier_uniform(), ("embed", "mlp")),
            bias_init=_lp(nn.initializers.normal(stddev=1e-6), ("mlp",)),
            name="Dense_0",
        )(x)
        x = _wlc(nn.gelu(x), ("batch", "length", "mlp"))
        x = nn.Dropout(rate=self.dropout)(x, deterministic=deterministic)
        return nn.Dense(
            d,
            use_bias=self.use_bias,
            dtype=self.dtype_mm,
            kernel_init=_lp(nn.initializers.xavier_uniform(), ("mlp", "embed")),
            bias_init=_lp(nn.initializers.normal(stddev=1e-6), ("embed",)),
            name="Dense_1",
        )(x)


def _layer_norm(name: str, use_bias: bool) -> nn.LayerNorm:
    return nn.LayerNorm(
        use_bias=use_bias,
        scale_init=_lp(nn.initializers.ones, ("embed",)),
        bias_init=_lp(nn.initializers.zeros, ("embed",)),
        name=name,
    )


class DecoderBlock(nn.Module):
    """Pre-LN block: causal/full self-attention, cross-attention, GELU MLP."""

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    use_bias: bool = False
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: Array,  # [B, L, D]
        encoded: Array | None,  # [B, N, D_enc]
        self_mask: Array | None,  # [B, 1, L, L] bool
        decode: bool = False,
        deterministic: bool = True,
    ) -> Array:
        names = ("batch", "length", "embed")
        kw = dict(dropout=self.dropout, use_bias=self.use_bias, dtype_mm=self.dtype_mm)
        y = _layer_norm("LayerNorm_0", self.use_bias)(x)
        y = Attention(self.num_heads, kind="self", name="SelfAttn", **kw)(
            y, None, self_mask, decode=decode, deterministic=deterministic
        )
        y = nn.Dropout(rate=self.dropout)(y, deterministic=deterministic)
        x = _wlc(x + y, names)
        y = _layer_norm("LayerNorm_1", self.use_bias)(x)
        y = Attention(self.num_heads, kind="cross", name="CrossAttn", **kw)(
            y, encoded, None, decode=decode, deterministic=deterministic
        )
        y = nn.Dropout(rate=self.dropout)(y, deterministic=deterministic)
        x = _wlc(x + y, names)
        y = _layer_norm("LayerNorm_2", self.use_bias)(x)
        y = MlpBlock(self.mlp_dim, name="MlpBlock", **kw)(y, deterministic=deterministic)
        y = nn.Dropout(rate=self.dropout)(y, deterministic=deterministic)
        return _wlc(x + y, names)


class Decoder(nn.Module):
    """Text decoder over image tokens; see the module docstring.

    Attributes:
      vocab_size: output vocabulary size V (logits [.., V]). The embedding
        table has V + 1 rows; row ``V`` is the parallel-prediction mask token.
      width, depth, num_heads, mlp_dim: transformer sizes.
      max_len: number of learned position embeddings (longest text).
      dropout: dropout rate (residual branches, attention weights, MLP, embeddings).
      use_bias: biases in LayerNorms, attention and MLP (big_vision decoder_bias).
      remat: rematerialise each block in the backward pass (memory for speed).
      dtype_mm: matmul dtype (params stay float32; logits are float32).
    """

    vocab_size: int
    width: int = 512
    depth: int = 6
    num_heads: int = 8
    mlp_dim: int = 2048
    max_len: int = 64
    dropout: float = 0.0
    use_bias: bool = False
    remat: bool = False
    dtype_mm: Any = jnp.float32

    @property
    def mask_id(self) -> int:
        """Input id of the parallel-prediction mask token (an extra embedding row)."""
        return self.vocab_size

    @nn.compact
    def __call__(
        self,
        encoded: Array | None,  # [B_enc, N, D_enc]; None in decode steps
        tokens: Array,  # [B, L] int decoder input tokens; B a multiple of B_enc
        parallel: Array | None = None,  # [B] bool
        *,
        train: bool = False,
        decode: bool = False,
        positions: Array | None = None,  # [B, K] int: only these positions' logits
    ) -> Array:
        """Returns logits [B, L, vocab_size] float32 ([B, K, vocab_size] with
        ``positions``: the logits at ``positions[b, k]`` of row b, the same
        values as the full call's, without computing the vocabulary
        projection of the other positions; a loss on K of L tokens needs
        only these).

        ``encoded`` may have fewer rows than ``tokens``: with B = G * B_enc,
        token row ``g * B_enc + b`` cross-attends to image ``b`` (LocCa's task
        passes concatenated along the batch share one encoder pass).
        """
        deterministic = not train
        tokens = jnp.asarray(tokens, jnp.int32)
        b, length = tokens.shape
        if length > self.max_len:
            raise ValueError(f"text length {length} exceeds decoder max_len {self.max_len}")
        if parallel is not None:
            parallel = jnp.asarray(parallel, bool).reshape(b)
            tokens = jnp.where(parallel[:, None], self.mask_id, tokens)

        embed = nn.Embed(
            self.vocab_size + 1,
            self.width,
            embedding_init=_lp(nn.initializers.normal(stddev=0.02), ("vocab", "embed")),
            name="EmbedTokens",
        )
        pos_emb = self.param(
            "pos_embedding",
            _lp(nn.initializers.normal(stddev=0.02), (None, "length", "embed")),
            (1, self.max_len, self.width),
        )  # [1, L_max, D]
        x = embed(tokens)  # [B, L, D]
        if decode:
            initialized = self.has_variable("cache", "position")
            pos = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
            if initialized:
                x = x + jax.lax.dynamic_slice_in_dim(pos_emb, pos.value, 1, axis=1)
                pos.value = pos.value + 1
            else:
                x = x + pos_emb[:, :length]
        else:
            x = x + pos_emb[:, :length]
        x = nn.Dropout(rate=self.dropout)(x, deterministic=deterministic)
        x = _wlc(x.astype(self.dtype_mm), ("batch", "length", "embed"))

        # Self-attention mask [B, 1, L, L]: causal, or full for parallel examples.
        causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
        if parallel is not None:
            self_mask = causal | parallel[:, None, None, None]
        else:
            self_mask = causal

        block_cls = DecoderBlock
        if self.remat:
            block_cls = nn.remat(DecoderBlock, static_argnums=(4, 5))
        for i in range(self.depth):
            x = block_cls(
                num_heads=self.num_heads,
                mlp_dim=self.mlp_dim,
                dropout=self.dropout,
                use_bias=self.use_bias,
                dtype_mm=self.dtype_mm,
                name=f"encoderblock_{i}",
            )(x, encoded, self_mask, decode, deterministic)

        if positions is not None:  # [B, L, D] -> [B, K, D]
            x = jnp.take_along_axis(x, jnp.asarray(positions, jnp.int32)[..., None], axis=1)
        x = _layer_norm("LayerNorm", self.use_bias)(x)
        logits = nn.Dense(
            self.vocab_size,
            use_bias=self.use_bias,
            dtype=self.dtype_mm,
            kernel_init=_lp(nn.initializers.zeros, ("embed", "vocab")),
            bias_init=_lp(nn.initializers.zeros, ("vocab",)),
            name="head",
        )(x)
        return _wlc(logits.astype(jnp.float32), ("batch", "length", "vocab"))


def init_cache(decoder: Decoder, params: Any, encoded: Array, max_len: int | None = None) -> Any:
    """Creates the decoding cache for ``encoded`` [B, N, D_enc].

    Self-attention caches hold ``max_len`` (default ``decoder.max_len``)
    positions; the cross-attention keys/values are projected here, once.
    Returns the ``"cache"`` collection (a pytree, array leaves batch-first).
    """
    max_len = decoder.max_len if max_len is None else int(max_len)
    dummy = jnp.zeros((encoded.shape[0], max_len), jnp.int32)
    _, variables = decoder.apply({"params": params}, encoded, dummy, decode=True, mutable=["cache"])
    return variables["cache"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeStep:
    """``tokens_to_logits`` as a pytree (params are its leaves), so
    ``locca.decoding`` traces the parameters instead of baking them into a
    new compilation per call."""

    params: Any
    decoder: Decoder = dataclasses.field(metadata=dict(static=True))

    def __call__(self, tokens: Array, cache: Any) -> tuple[Array, Any]:
        logits, variables = self.decoder.apply(
            {"params": self.params, "cache": cache}, None, tokens, decode=True, mutable=["cache"]
        )
        return logits[:, -1].astype(jnp.float32), variables["cache"]


def make_tokens_to_logits(decoder: Decoder, params: Any) -> DecodeStep:
    """The ``tokens_to_logits(tokens [B, 1], cache) -> (logits [B, V], cache)`` step.

    The cache comes from :func:`init_cache`; the encoder tokens live in it.
    """
    return DecodeStep(params=params, decoder=decoder)
