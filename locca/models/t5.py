"""T5 encoder-decoder (v1.0, v1.1, flan, UL2) in flax linen.

Parameter names and shapes follow t5x (`token_embedder/embedding`,
`encoder/layers_0/attention/query/kernel` [embed, heads*head_dim], ...), so
t5x checkpoints and the Hugging Face importer (`checkpoints/hf_t5.py`) map
onto them one to one. Every parameter carries logical axis names
("vocab", "embed", "mlp", "joined_kv", "heads", "relpos_buckets") via
`nn.with_logical_partitioning`; `model.init` therefore returns boxed values
(use `flax.linen.unbox` or `nn.get_partition_spec`); `apply` takes plain
arrays.

Conventions (as T5):
- RMS LayerNorm with a scale only (no bias, no mean subtraction), computed
  in float32.
- No 1/sqrt(head_dim) scaling of attention logits (T5 folds it into the
  initialisation of the query projection).
- Relative position biases: one table per stack (`encoder/relpos_bias`,
  `decoder/relpos_bias`, [heads, buckets]) computed once and added in every
  layer of that stack; bidirectional buckets in the encoder, causal ones in
  the decoder; none in cross-attention.
- Token id 0 is padding and also the decoder start (BOS) token.
- Tied head (`logits_via_embedding=True`, T5 v1.0): the decoder output is
  multiplied by emb_dim**-0.5 before the projection onto the embedding
  matrix. Untied (v1.1/flan/UL2): `decoder/logits_dense/kernel` [embed, vocab].
- Logits are returned in float32.

KV cache (decode=True): the "cache" collection holds, per decoder layer,
`self_attention/cached_key|cached_value` [B, max_len, heads, head_dim] and
`encoder_decoder_attention/cached_key|cached_value` [B, L_enc, heads,
head_dim], plus `decoder/cached_encoder_mask` [B, L_enc] and the scalar
`decoder/cache_index`. The first call with decode=True and no cache (made
with `mutable=["cache"]` on dummy decoder tokens [B, max_len], see
`T5.init_cache`) creates the cache and fills the cross-attention keys and
values from the encoder output; later calls take one token [B, 1] each.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

NEG_INF = -1e10


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Architecture of a T5 model (sizes in elements, not bytes).

    mlp_activations: ("gelu", "linear") is the gated-GELU of v1.1/flan
    (tanh-approximate GELU, as t5x and HF "gelu_new"); ("silu", "linear") the
    gated-SiLU of UL2; ("relu",) the v1.0 FFN. Also "gelu_exact" (erf GELU).
    dtype: activation/compute dtype (a name such as "bfloat16" or a dtype);
    parameters are always stored in float32.
    """

    vocab_size: int = 32128
    emb_dim: int = 512
    num_heads: int = 6
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    head_dim: int = 64
    mlp_dim: int = 1024
    mlp_activations: Sequence[str] = ("gelu", "linear")
    dropout_rate: float = 0.0
    logits_via_embedding: bool = False
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dtype: Any = "float32"

    def __post_init__(self):
        object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
        for act in self.mlp_activations:
            if act not in _ACTIVATIONS:
                raise ValueError(
                    f"T5Config.mlp_activations: unknown activation {act!r}; "
                    f"expected one of {sorted(_ACTIVATIONS)}"
                )

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "linear": lambda x: x,
}


# --------------------------------------------------------------------------
# Relative position buckets.
# --------------------------------------------------------------------------
def relative_position_bucket(
    relative_position: np.ndarray, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> np.ndarray:
    """Maps relative positions (key position - query position) to bucket ids.

    Half of the buckets (of each direction, when bidirectional) hold exact
    distances 0..max_exact-1; the rest cover max_exact..max_distance on a log
    scale, larger distances share the last bucket. With bidirectional=False
    (causal) only the past (relative_position <= 0) is distinguished.
    Computed in numpy float32 arithmetic, as Hugging Face does, so the bucket
    boundaries agree exactly.
    """
    rp = np.asarray(relative_position, dtype=np.int64)
    buckets = np.zeros_like(rp)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (rp > 0).astype(np.int64) * num_buckets
        n = np.abs(rp)
    else:
        n = -np.minimum(rp, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    with np.errstate(divide="ignore"):
        scaled = np.log(n.astype(np.float32) / np.float32(max_exact))
        scaled = scaled / np.float32(math.log(max_distance / max_exact))
        scaled = scaled * np.float32(num_buckets - max_exact)
    large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """Per-head additive attention bias from bucketed relative positions."""

    num_heads: int
    num_buckets: int
    max_distance: int
    bidirectional: bool

    @nn.compact
    def __call__(self, query_positions: jax.Array, key_length: int) -> jax.Array:
        """query_positions: int [Q] (may be traced); returns f32 [1, H, Q, K]."""
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(
                nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                ("heads", "relpos_buckets"),
            ),
            (self.num_heads, self.num_buckets),
            jnp.float32,
        )  # [H, buckets]
        # Bucket ids of every relative position in [-(K-1), K-1] form a static
        # lookup table, indexed with (key - query) so queries may be traced.
        # Query positions must lie in [0, K).
        offsets = np.arange(-(key_length - 1), key_length)
        lut = relative_position_bucket(
            offsets,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        lut = jnp.asarray(lut, jnp.int32)
        rel = jnp.arange(key_length)[None, :] - query_positions[:, None]  # [Q, K]
        bucket = lut[rel - offsets[0]]  # [Q, K]
        bias = table[:, bucket]  # [H, Q, K]
        return bias[None]


# --------------------------------------------------------------------------
# Layers.
# --------------------------------------------------------------------------
class Dense(nn.Module):
    """Bias-free linear map with a 2-D kernel [in, out] (t5x storage)."""

    features: int
    axes: tuple[str, str]
    dtype: Any = jnp.float32
    init_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(
                nn.initializers.variance_scaling(self.init_scale, "fan_in", "truncated_normal"),
                self.axes,
            ),
            (x.shape[-1], self.features),
            jnp.float32,
        )
        return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))


class Embed(nn.Module):
    """Token embedding [vocab, embed]; `attend` projects onto it (tied head)."""

    num_embeddings: int
    features: int
    dtype: Any = jnp.float32

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
            (self.num_embeddings, self.features),
            jnp.float32,
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        return jnp.dot(x.astype(self.dtype), self.embedding.T.astype(self.dtype))


class RMSNorm(nn.Module):
    """T5 LayerNorm: x / sqrt(mean(x^2) + eps) * scale, in float32."""

    epsilon: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            (x.shape[-1],),
            jnp.float32,
        )
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(var + self.epsilon)
        return (y * scale).astype(self.dtype)


class MlpBlock(nn.Module):
    """FFN: wo(prod_i act_i(wi_i x)); names wi_0, wi_1, ... or wi if one."""

    mlp_dim: int
    activations: tuple[str, ...]
    dropout_rate: float
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        emb = x.shape[-1]
        h = None
        for i, act in enumerate(self.activations):
            name = "wi" if len(self.activations) == 1 else f"wi_{i}"
            y = _ACTIVATIONS[act](
                Dense(self.mlp_dim, ("embed", "mlp"), self.dtype, name=name)(x)
            )  # [..., mlp]
            h = y if h is None else h * y
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return Dense(emb, ("mlp", "embed"), self.dtype, name="wo")(h)


class Attention(nn.Module):
    """Multi-head attention without logit scaling (T5).

    Self-attention with decode=True appends one step's key/value to the
    cache; cross-attention (is_cross=True) with decode=True computes the
    keys/values of the encoder output once (when the cache is created) and
    reuses them afterwards.
    """

    num_heads: int
    head_dim: int
    dropout_rate: float
    dtype: Any
    is_cross: bool = False

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,  # [B, Q, D]
        inputs_kv: jax.Array | None,  # [B, K, D]; ignored for cached cross-attention
        mask: jax.Array | None,  # bool, broadcastable to [B, 1, Q, K]
        bias: jax.Array | None,  # f32, broadcastable to [B, H, Q, K]
        *,
        decode: bool = False,
        cache_index: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        h, d = self.num_heads, self.head_dim
        emb = inputs_q.shape[-1]
        hd = h * d
        # t5x initialisation: the query folds in the 1/sqrt(head_dim) scale.
        dense = lambda name, scale=1.0: Dense(  # noqa: E731
            hd, ("embed", "joined_kv"), self.dtype, init_scale=scale, name=name
        )
        b, q_len = inputs_q.shape[:2]
        query = dense("query", 1.0 / d)(inputs_q).reshape(b, q_len, h, d)
        key_proj, value_proj = dense("key"), dense("value")

        if decode and self.is_cross:
            initialized = self.has_variable("cache", "cached_key")
            if initialized:
                key = self.get_variable("cache", "cached_key")
                value = self.get_variable("cache", "cached_value")
            else:
                k_len = inputs_kv.shape[1]
                key = key_proj(inputs_kv).reshape(b, k_len, h, d)
                value = value_proj(inputs_kv).reshape(b, k_len, h, d)
                self.put_variable("cache", "cached_key", key)
                self.put_variable("cache", "cached_value", value)
        else:
            k_len = inputs_kv.shape[1]
            key = key_proj(inputs_kv).reshape(b, k_len, h, d)  # [B, K, H, Dh]
            value = value_proj(inputs_kv).reshape(b, k_len, h, d)
            if decode:
                initialized = self.has_variable("cache", "cached_key")
                cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
                cached_value = self.variable(
                    "cache", "cached_value", jnp.zeros, value.shape, value.dtype
                )
                if initialized:
                    if q_len != 1:
                        raise ValueError(
                            f"decode=True takes one token per call, got length {q_len}"
                        )
                    idx = cache_index
                    key = jax.lax.dynamic_update_slice(cached_key.value, key, (0, idx, 0, 0))
                    value = jax.lax.dynamic_update_slice(cached_value.value, value, (0, idx, 0, 0))
                    cached_key.value, cached_value.value = key, value

        logits = jnp.einsum("bqhd,bkhd->bhqk", query, key).astype(jnp.float32)  # [B, H, Q, K]
        if bias is not None:
            logits = logits + bias.astype(jnp.float32)
        if mask is not None:
            logits = jnp.where(mask, logits, NEG_INF)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, value).reshape(b, q_len, hd)
        return Dense(emb, ("joined_kv", "embed"), self.dtype, name="out")(out)


class EncoderLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x, mask, bias, deterministic):
        cfg = self.config
        dt = cfg.compute_dtype
        drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)  # noqa: E731
        y = RMSNorm(cfg.layer_norm_epsilon, dt, name="pre_attention_layer_norm")(x)
        y = Attention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dt, name="attention")(
            y, y, mask, bias, deterministic=deterministic
        )
        x = x + drop(y)
        y = RMSNorm(cfg.layer_norm_epsilon, dt, name="pre_mlp_layer_norm")(x)
        y = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, dt, name="mlp")(
            y, deterministic
        )
        return x + drop(y)


class DecoderLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(
        self, x, encoded, self_mask, self_bias, cross_mask, decode, cache_index, deterministic
    ):
        cfg = self.config
        dt = cfg.compute_dtype
        drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)  # noqa: E731
        eps = cfg.layer_norm_epsilon
        y = RMSNorm(eps, dt, name="pre_self_attention_layer_norm")(x)
        y = Attention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dt, name="self_attention")(
            y,
            y,
            self_mask,
            self_bias,
            decode=decode,
            cache_index=cache_index,
            deterministic=deterministic,
        )
        x = x + drop(y)
        y = RMSNorm(eps, dt, name="pre_cross_attention_layer_norm")(x)
        y = Attention(
            cfg.num_heads,
            cfg.head_dim,
            cfg.dropout_rate,
            dt,
            is_cross=True,
            name="encoder_decoder_attention",
        )(y, encoded, cross_mask, None, decode=decode, deterministic=deterministic)
        x = x + drop(y)
        y = RMSNorm(eps, dt, name="pre_mlp_layer_norm")(x)
        y = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, dt, name="mlp")(
            y, deterministic
        )
        return x + drop(y)


class Encoder(nn.Module):
    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, tokens, prefix_embeddings, prefix_mask, deterministic):
        cfg = self.config
        dt = cfg.compute_dtype
        x = self.shared_embedding(tokens)  # [B, L, D]
        mask = tokens > 0  # [B, L]
        if prefix_embeddings is not None:
            b, p = prefix_embeddings.shape[:2]
            if prefix_embeddings.shape[-1] != cfg.emb_dim:
                raise ValueError(
                    f"prefix_embeddings width {prefix_embeddings.shape[-1]} != "
                    f"emb_dim {cfg.emb_dim}"
                )
            if prefix_mask is None:
                prefix_mask = jnp.ones((b, p), bool)
            x = jnp.concatenate([prefix_embeddings.astype(dt), x], axis=1)  # [B, P+L, D]
            mask = jnp.concatenate([prefix_mask.astype(bool), mask], axis=1)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        length = x.shape[1]
        bias = RelativePositionBias(
            cfg.num_heads,
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
            bidirectional=True,
            name="relpos_bias",
        )(jnp.arange(length), length)  # [1, H, L, L]
        attn_mask = mask[:, None, None, :]  # keys only, as HF
        for i in range(cfg.num_encoder_layers):
            x = EncoderLayer(cfg, name=f"layers_{i}")(x, attn_mask, bias, deterministic)
        x = RMSNorm(cfg.layer_norm_epsilon, dt, name="encoder_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        return x, mask


class Decoder(nn.Module):
    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, encoded, encoder_mask, tokens, decode, max_decode_length, deterministic):
        cfg = self.config
        dt = cfg.compute_dtype
        q_len = tokens.shape[1]
        relpos = RelativePositionBias(
            cfg.num_heads,
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
            bidirectional=False,
            name="relpos_bias",
        )
        cache_index = None
        if decode:
            initialized = self.has_variable("cache", "cache_index")
            index_var = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            if initialized:
                enc_mask = self.get_variable("cache", "cached_encoder_mask")
                # The cache length is that of the self-attention key cache.
                first_layer = self.variables["cache"]["layers_0"]["self_attention"]
                max_len = first_layer["cached_key"].shape[1]
                # Steps past max_len are not supported (indices would clamp).
                cache_index = index_var.value
                positions = cache_index[None]  # [1]
                self_mask = (jnp.arange(max_len) <= cache_index)[None, None, None, :]
                self_bias = relpos(positions, max_len)  # [1, H, 1, max_len]
                index_var.value = cache_index + 1
            else:
                if max_decode_length is not None and max_decode_length != q_len:
                    raise ValueError(
                        f"cache creation needs decoder tokens of length max_decode_length="
                        f"{max_decode_length}, got {q_len}"
                    )
                enc_mask = encoder_mask.astype(bool)
                self.put_variable("cache", "cached_encoder_mask", enc_mask)
        else:
            enc_mask = encoder_mask.astype(bool)
        if not decode or cache_index is None:
            positions = jnp.arange(q_len)
            self_mask = (positions[None, :] <= positions[:, None])[None, None]  # [1,1,Q,Q]
            self_bias = relpos(positions, q_len)  # [1, H, Q, Q]
        cross_mask = enc_mask[:, None, None, :]  # [B, 1, 1, K]

        x = self.shared_embedding(tokens)  # [B, Q, D]
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        for i in range(cfg.num_decoder_layers):
            x = DecoderLayer(cfg, name=f"layers_{i}")(
                x, encoded, self_mask, self_bias, cross_mask, decode, cache_index, deterministic
            )
        x = RMSNorm(cfg.layer_norm_epsilon, dt, name="decoder_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        if cfg.logits_via_embedding:
            logits = self.shared_embedding.attend(x * (cfg.emb_dim**-0.5))
        else:
            logits = Dense(cfg.vocab_size, ("embed", "vocab"), dt, name="logits_dense")(x)
        return logits.astype(jnp.float32)  # [B, Q, V]


class T5(nn.Module):
    """T5 encoder-decoder; see the module docstring for conventions."""

    config: T5Config

    def setup(self):
        cfg = self.config
        self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, cfg.compute_dtype)
        self.encoder = Encoder(cfg, self.token_embedder)
        self.decoder = Decoder(cfg, self.token_embedder)

    def encode(
        self,
        encoder_input_tokens: jax.Array,  # int [B, L]
        *,
        prefix_embeddings: jax.Array | None = None,  # [B, P, D]
        prefix_mask: jax.Array | None = None,  # bool/int [B, P]
        enable_dropout: bool = False,
    ) -> jax.Array:
        """Returns the encoder output [B, P+L, D] (prefix first)."""
        encoded, _ = self.encoder(
            encoder_input_tokens, prefix_embeddings, prefix_mask, not enable_dropout
        )
        return encoded

    def encoder_mask(self, encoder_input_tokens, prefix_mask=None, prefix_length=0):
        """The key mask [B, P+L] that goes with `encode`'s output."""
        mask = encoder_input_tokens > 0
        if prefix_mask is None and prefix_length:
            prefix_mask = jnp.ones((mask.shape[0], prefix_length), bool)
        if prefix_mask is not None:
            mask = jnp.concatenate([prefix_mask.astype(bool), mask], axis=1)
        return mask

    def decode(
        self,
        encoded: jax.Array | None,  # [B, K, D]; may be None once the cache exists
        encoder_mask: jax.Array | None,  # bool [B, K]; may be None once the cache exists
        decoder_input_tokens: jax.Array,  # int [B, Q] (Q=1 with an initialised cache)
        *,
        decode: bool = False,
        max_decode_length: int | None = None,
        enable_dropout: bool = False,
    ) -> jax.Array:
        """Decoder logits f32 [B, Q, V]; causal self-attention (no padding mask)."""
        return self.decoder(
            encoded,
            encoder_mask,
            decoder_input_tokens,
            decode,
            max_decode_length,
            not enable_dropout,
        )

    def __call__(
        self,
        encoder_input_tokens: jax.Array,
        decoder_input_tokens: jax.Array,
        *,
        prefix_embeddings: jax.Array | None = None,
        prefix_mask: jax.Array | None = None,
        enable_dropout: bool = False,
    ) -> jax.Array:
        """Teacher-forced logits f32 [B, Q, V]."""
        encoded, mask = self.encoder(
            encoder_input_tokens, prefix_embeddings, prefix_mask, not enable_dropout
        )
        return self.decoder(encoded, mask, decoder_input_tokens, False, None, not enable_dropout)


def init_params(config: T5Config, rng: jax.Array, enc_len: int = 4, dec_len: int = 4) -> dict:
    """Random float32 parameters (plain nested dict, logical boxes removed)."""
    model = T5(config)
    init = jax.jit(
        lambda r: model.init(
            r, jnp.ones((1, enc_len), jnp.int32), jnp.ones((1, dec_len), jnp.int32)
        )
    )
    return nn.unbox(init(rng))["params"]


def random_params(config: T5Config, seed: int = 0) -> dict:
    """Random float32 parameters drawn with numpy (no compiled initialiser).

    For tests and benchmarks: kernels ~ N(0, 1/fan_in), embeddings and
    relative-position tables ~ N(0, 1), norm scales ~ 1 + N(0, 0.1^2).
    Same tree and shapes as `init_params`.
    """
    from flax.traverse_util import flatten_dict, unflatten_dict

    model = T5(config)
    shapes = jax.eval_shape(
        lambda: nn.unbox(
            model.init(
                jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32)
            )
        )["params"]
    )
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in sorted(flatten_dict(shapes).items()):
        shape = tuple(leaf.shape)
        if path[-1] == "kernel":
            x = rng.normal(0.0, shape[0] ** -0.5, shape)
        elif path[-1] == "scale":
            x = 1.0 + 0.1 * rng.normal(size=shape)
        else:
            x = rng.normal(size=shape)
        out[path] = jnp.asarray(x, jnp.float32)
    return unflatten_dict(out)


def init_cache(
    model: T5, params: dict, encoded: jax.Array, encoder_mask: jax.Array, max_len: int
) -> dict:
    """Creates the decode cache for `max_len` decoder steps.

    Fills the cross-attention keys/values from `encoded` [B, K, D] and the
    encoder mask [B, K]; self-attention caches start at zero, index 0.
    """
    b = encoded.shape[0]
    _, variables = model.apply(
        {"params": params},
        encoded,
        encoder_mask,
        jnp.zeros((b, max_len), jnp.int32),
        decode=True,
        max_decode_length=max_len,
        method=T5.decode,
        mutable=["cache"],
    )
    return variables["cache"]


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
