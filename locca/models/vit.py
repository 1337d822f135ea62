"""Vision Transformer with big_vision's parameter tree and numerics.

Written for this project; compatible with big_vision's ``models/vit.py`` so that
its ``.npz`` checkpoints load without renaming:

* patch embedding ``embedding`` (Conv, kernel HWIO), learned ``pos_embedding``
  [1, N, D] added *before* the optional ``cls`` token is prepended;
* pre-LN blocks ``Transformer/encoderblock_{i}`` with ``LayerNorm_0``,
  ``MultiHeadDotProductAttention_0`` (query/key/value/out), ``LayerNorm_1``,
  ``MlpBlock_0`` (Dense_0 -> tanh-GELU -> Dense_1); final ``encoder_norm``;
* pooling ``gap`` / ``map`` (``MAPHead_0``) / ``tok`` / ``0`` / ``none``;
  optional ``pre_logits`` (Dense + tanh) and ``head``.

LayerNorm epsilon is 1e-6 and GELU is the tanh approximation (flax defaults).

Options beyond big_vision, for CLIP-style towers (defaults leave the parameter
tree and the numerics exactly as above): ``pre_norm=True`` adds a LayerNorm
``pre_norm`` over the whole sequence (cls token included) before the first
block (CLIP's ``ln_pre`` / HF ``pre_layrnorm``); ``mlp_act`` picks the MLP
activation ("gelu" tanh-approximate, "gelu_exact" erf, "quick_gelu"
x * sigmoid(1.702 x)); ``ln_eps`` sets every LayerNorm's epsilon (CLIP: 1e-5).

With ``scan=True`` the blocks are one scanned module ``Transformer/encoderblock``
whose parameters carry a leading depth axis.

Images enter as float NHWC, normalised as the weights expect ([-1, 1] for
big_vision and SigLIP; CLIP's mean/std). Every parameter carries logical axis
names (``nn.with_logical_partitioning``); ``nn.unbox`` / ``flax.core.meta.unbox``
gives the plain big_vision tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LN_EPS = 1e-6

# Logical axis names used on parameters (see locca/training/partitioning.py).
EMBED, MLP, HEADS, KV, VOCAB = "embed", "mlp", "heads", "kv", "vocab"


def _p(init, *names):
    """Initializer annotated with logical axis names (one per dimension)."""
    return nn.with_logical_partitioning(init, tuple(names))


MLP_ACTS = ("gelu", "gelu_exact", "quick_gelu")


def _layer_norm(name=None, dtype=None, eps=LN_EPS):
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        scale_init=_p(nn.initializers.ones, EMBED),
        bias_init=_p(nn.initializers.zeros, EMBED),
        name=name,
    )


def _attention(num_heads, dtype_mm, deterministic=True, name=None):
    """flax MultiHeadDotProductAttention with big_vision's init and axis names.

    DenseGeneral calls the kernel initializer on the flattened 2-D shape and
    reshapes afterwards; xavier_uniform on the flat shape equals big_vision's.
    """
    return nn.MultiHeadDotProductAttention(
        num_heads=num_heads,
        kernel_init=_p(nn.initializers.xavier_uniform(), EMBED, HEADS, KV),
        bias_init=_p(nn.initializers.zeros, HEADS, KV),
        out_kernel_init=_p(nn.initializers.xavier_uniform(), HEADS, KV, EMBED),
        out_bias_init=_p(nn.initializers.zeros, EMBED),
        deterministic=deterministic,
        dtype=dtype_mm,
        name=name,
    )


def posemb_sincos_2d(h, w, width, temperature=10_000.0, dtype=jnp.float32):
    """Fixed 2-D sin-cos position embedding [1, h*w, width] (MoCo v3 layout).

    Channels are [sin(x), cos(x), sin(y), cos(y)], each width/4 wide, with
    frequencies 1 / temperature**(k / (width/4 - 1)).
    """
    if width % 4:
        raise ValueError(f"sincos2d posemb needs width divisible by 4, got {width}")
    y, x = jnp.mgrid[:h, :w]  # int32 grids, as big_vision (float32 numerics)
    quarter = width // 4
    omega = jnp.arange(quarter) / (quarter - 1)
    omega = 1.0 / (temperature**omega)  # [width/4] float32
    y = jnp.einsum("m,d->md", y.flatten(), omega)  # [h*w, width/4]
    x = jnp.einsum("m,d->md", x.flatten(), omega)
    pe = jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)
    return jnp.asarray(pe, dtype)[None]  # [1, h*w, width]


def quick_gelu(x):
    """CLIP's activation: x * sigmoid(1.702 x)."""
    return x * nn.sigmoid(1.702 * x)


def mlp_activation(name: str):
    """The MLP nonlinearity for ``mlp_act`` (see ``MLP_ACTS``)."""
    if name == "gelu":
        return nn.gelu  # tanh approximation (big_vision, SigLIP)
    if name == "gelu_exact":
        return lambda x: nn.gelu(x, approximate=False)  # erf (HF "gelu")
    if name == "quick_gelu":
        return quick_gelu
    raise ValueError(f"Unknown mlp_act {name!r} (expected one of {MLP_ACTS})")


class MlpBlock(nn.Module):
    """Dense(mlp_dim) -> activation (default tanh-GELU) -> Dropout -> Dense(D)."""

    mlp_dim: int | None = None  # default 4 * D
    dropout: float = 0.0
    dtype_mm: Any = "float32"
    mlp_act: str = "gelu"  # see MLP_ACTS

    @nn.compact
    def __call__(self, x, deterministic=True):
        d = x.shape[-1]
        mlp_dim = self.mlp_dim or 4 * d
        bias_init = nn.initializers.normal(stddev=1e-6)
        x = nn.Dense(
            mlp_dim,
            dtype=self.dtype_mm,
            kernel_init=_p(nn.initializers.xavier_uniform(), EMBED, MLP),
            bias_init=_p(bias_init, MLP),
        )(x)  # [B, L, mlp_dim]
        x = mlp_activation(self.mlp_act)(x)
        x = nn.Dropout(rate=self.dropout)(x, deterministic)
        x = nn.Dense(
            d,
            dtype=self.dtype_mm,
            kernel_init=_p(nn.initializers.xavier_uniform(), MLP, EMBED),
            bias_init=_p(bias_init, EMBED),
        )(x)  # [B, L, D]
        return x


class Encoder1DBlock(nn.Module):
    """Pre-LN transformer block: x + MHSA(LN(x)), then x + MLP(LN(x))."""

    mlp_dim: int | None = None
    num_heads: int = 12
    dropout: float = 0.0
    dtype_mm: Any = "float32"
    mlp_act: str = "gelu"
    ln_eps: float = LN_EPS

    @nn.compact
    def __call__(self, x, deterministic=True):
        out = {}
        y = _layer_norm(eps=self.ln_eps)(x)
        y = out["sa"] = _attention(self.num_heads, self.dtype_mm, deterministic)(y, y)
        y = nn.Dropout(rate=self.dropout)(y, deterministic)
        x = out["+sa"] = x + y
        y = _layer_norm(eps=self.ln_eps)(x)
        y = out["mlp"] = MlpBlock(self.mlp_dim, self.dropout, self.dtype_mm, self.mlp_act)(
            y, deterministic
        )
        y = nn.Dropout(rate=self.dropout)(y, deterministic)
        x = out["+mlp"] = x + y
        return x, out


class Encoder(nn.Module):
    """Stack of ``depth`` blocks followed by ``encoder_norm``."""

    depth: int
    mlp_dim: int | None = None
    num_heads: int = 12
    dropout: float = 0.0
    scan: bool = False
    remat_policy: str = "nothing_saveable"
    dtype_mm: Any = "float32"
    mlp_act: str = "gelu"
    ln_eps: float = LN_EPS

    @nn.compact
    def __call__(self, x, deterministic=True):
        out = {}
        kw = dict(
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            dropout=self.dropout,
            dtype_mm=self.dtype_mm,
            mlp_act=self.mlp_act,
            ln_eps=self.ln_eps,
        )
        if self.scan:
            policy = getattr(jax.checkpoint_policies, self.remat_policy, None)
            block = nn.remat(Encoder1DBlock, prevent_cse=False, static_argnums=(2,), policy=policy)
            x, scan_out = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=self.depth,
                metadata_params={nn.PARTITION_NAME: None},
            )(name="encoderblock", **kw)(x, deterministic)
            for i in range(self.depth):
                out[f"block{i:02d}"] = jax.tree.map(lambda o, i=i: o[i], scan_out)
        else:
            for i in range(self.depth):
                x, out[f"block{i:02d}"] = Encoder1DBlock(name=f"encoderblock_{i}", **kw)(
                    x, deterministic
                )
        out["pre_ln"] = x
        return _layer_norm(name="encoder_norm", eps=self.ln_eps)(x), out


class MAPHead(nn.Module):
    """Multihead attention pooling: one learned probe attends over the tokens."""

    mlp_dim: int | None = None
    num_heads: int = 12
    dtype_mm: Any = "float32"
    mlp_act: str = "gelu"
    ln_eps: float = LN_EPS

    @nn.compact
    def __call__(self, x):
        n, _, d = x.shape  # [B, L, D]
        probe = self.param(
            "probe", _p(nn.initializers.xavier_uniform(), None, None, EMBED), (1, 1, d), x.dtype
        )
        probe = jnp.tile(probe, [n, 1, 1])  # [B, 1, D]
        x = _attention(self.num_heads, self.dtype_mm)(probe, x)  # [B, 1, D]
        y = _layer_norm(eps=self.ln_eps)(x)
        x = x + MlpBlock(mlp_dim=self.mlp_dim, dtype_mm=self.dtype_mm, mlp_act=self.mlp_act)(y)
        return x[:, 0]  # [B, D]


class _Model(nn.Module):
    """ViT; see module docstring. Returns ``(x, out)`` like big_vision."""

    num_classes: int | None = None
    patch_size: Sequence[int] = (16, 16)
    width: int = 768
    depth: int = 12
    mlp_dim: int | None = None
    num_heads: int = 12
    posemb: str = "learn"  # or "sincos2d"
    rep_size: int | bool = False
    dropout: float = 0.0
    pool_type: str = "gap"  # "map", "tok", "0", "none"
    head_zeroinit: bool = True
    scan: bool = False
    remat_policy: str = "nothing_saveable"
    dtype_mm: Any = "float32"
    pre_norm: bool = False  # LayerNorm "pre_norm" before the blocks (CLIP's ln_pre)
    mlp_act: str = "gelu"  # "gelu" (tanh) | "gelu_exact" (erf) | "quick_gelu" (CLIP)
    ln_eps: float = LN_EPS  # every LayerNorm's epsilon (CLIP: 1e-5)

    @nn.compact
    def __call__(self, image, *, train=False):
        out = {}
        image = jnp.asarray(image, self.dtype_mm)  # [B, H, W, 3] normalised
        patch = tuple(self.patch_size)
        x = out["stem"] = nn.Conv(
            self.width,
            patch,
            strides=patch,
            padding="VALID",
            name="embedding",
            dtype=self.dtype_mm,
            kernel_init=_p(nn.initializers.lecun_normal(), None, None, None, EMBED),
            bias_init=_p(nn.initializers.zeros, EMBED),
        )(image)  # [B, h, w, D]
        n, h, w, c = x.shape
        x = jnp.reshape(x, [n, h * w, c])  # [B, N, D]

        if self.posemb == "learn":
            pe = self.param(
                "pos_embedding",
                _p(nn.initializers.normal(stddev=1 / np.sqrt(c)), None, None, EMBED),
                (1, h * w, c),
                x.dtype,
            )
        elif self.posemb == "sincos2d":
            pe = posemb_sincos_2d(h, w, c, dtype=x.dtype)
        else:
            raise ValueError(f"Unknown posemb type: {self.posemb!r} (expected learn|sincos2d)")
        x = out["with_posemb"] = x + pe

        if self.pool_type == "tok":
            cls_init = _p(nn.initializers.zeros, None, None, EMBED)
            cls = self.param("cls", cls_init, (1, 1, c), x.dtype)
            x = jnp.concatenate([jnp.tile(cls, [n, 1, 1]), x], axis=1)  # [B, 1+N, D]

        if self.pre_norm:
            x = out["pre_norm"] = _layer_norm(name="pre_norm", eps=self.ln_eps)(x)  # [B, L, D]

        x = nn.Dropout(rate=self.dropout)(x, not train)
        x, out["encoder"] = Encoder(
            depth=self.depth,
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            dropout=self.dropout,
            scan=self.scan,
            remat_policy=self.remat_policy,
            dtype_mm=self.dtype_mm,
            mlp_act=self.mlp_act,
            ln_eps=self.ln_eps,
            name="Transformer",
        )(x, deterministic=not train)
        encoded = out["encoded"] = x  # [B, L, D] after encoder_norm

        if self.pool_type == "map":
            x = out["head_input"] = MAPHead(
                num_heads=self.num_heads,
                mlp_dim=self.mlp_dim,
                dtype_mm=self.dtype_mm,
                mlp_act=self.mlp_act,
                ln_eps=self.ln_eps,
            )(x)
        elif self.pool_type == "gap":
            x = out["head_input"] = jnp.mean(x, axis=1)
        elif self.pool_type == "0":
            x = out["head_input"] = x[:, 0]
        elif self.pool_type == "tok":
            x = out["head_input"] = x[:, 0]
            encoded = encoded[:, 1:]
        elif self.pool_type == "none":
            pass
        else:
            raise ValueError(f"Unknown pool type: {self.pool_type!r}")

        x_2d = jnp.reshape(encoded, [n, h, w, -1])  # [B, h, w, D]

        if self.rep_size:
            rep_size = self.width if self.rep_size is True else self.rep_size
            hid = nn.Dense(
                rep_size,
                name="pre_logits",
                kernel_init=_p(nn.initializers.lecun_normal(), EMBED, MLP),
                bias_init=_p(nn.initializers.zeros, MLP),
            )
            x_2d = nn.tanh(hid(x_2d))
            x = nn.tanh(hid(x))

        out["pre_logits_2d"] = x_2d
        out["pre_logits"] = x

        if self.num_classes:
            kinit = nn.initializers.zeros if self.head_zeroinit else nn.initializers.lecun_normal()
            head = nn.Dense(
                self.num_classes,
                name="head",
                kernel_init=_p(kinit, EMBED, VOCAB),
                bias_init=_p(nn.initializers.zeros, VOCAB),
            )
            x_2d = out["logits_2d"] = head(x_2d)
            x = out["logits"] = head(x)

        return x, out


def Model(num_classes=None, *, variant=None, **kw):  # noqa: N802 (big_vision's factory name)
    """Builds the ViT; ``variant`` like "B/16" fills width/depth/mlp_dim/heads/patch.

    Explicit keyword arguments override the variant's values.
    """
    if "patch_size" in kw and kw["patch_size"] is not None:
        kw["patch_size"] = tuple(kw["patch_size"])
    return _Model(num_classes, **{**decode_variant(variant), **kw})


_VARIANTS = {
    # name: (width, depth, mlp_dim, num_heads); Table 2 of arXiv:2106.04560 + SoViT.
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
    "e": (1792, 56, 15360, 16),
}


def decode_variant(variant: str | None) -> dict:
    """ "B" or "B/16" -> dict(width, depth, mlp_dim, num_heads[, patch_size])."""
    if variant is None:
        return {}
    name, _, patch = variant.partition("/")
    if name not in _VARIANTS:
        raise ValueError(f"Unknown ViT variant {variant!r}; known: {sorted(_VARIANTS)}")
    width, depth, mlp_dim, num_heads = _VARIANTS[name]
    cfg = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads)
    if patch:
        cfg["patch_size"] = (int(patch), int(patch))
    return cfg
