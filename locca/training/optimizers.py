"""Optimisers: big_vision-style Adafactor and AdamW, with schedule, clipping and
decoupled weight decay on kernels.

Update rule of :func:`make_optimizer` (big_vision ``optax.make`` semantics)::

    g      <- clip_by_global_norm(grad, clip_norm)            (if clip_norm)
    d      <- direction(g)                                     (adafactor | adamw)
    update <- -schedule(step) * (lr * d + weight_decay * p)    (decay: kernels only)

so ``weight_decay`` is *decoupled*: it is not multiplied by ``lr``, only by the
schedule multiplier (to get optax.adamw's ``lr * wd`` semantics pass
``weight_decay = lr * wd``). Decay applies to parameters whose path ends in
``kernel`` (flax Dense/Conv weights); biases, scales, embeddings and position
embeddings are not decayed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from locca.training.schedules import make_schedule

OPTIMIZERS = ("adafactor", "adamw")


class ScheduledTransformation(NamedTuple):
    """An optax transformation that also carries its learning-rate function.

    Usable anywhere an ``optax.GradientTransformation`` is (``init``/``update``);
    the trainer reads ``learning_rate_fn(step) -> lr`` to log the learning rate.
    """

    init: Callable
    update: Callable
    learning_rate_fn: Callable[[Any], jnp.ndarray]


def scale_by_adafactor(
    *,
    min_dim_size_to_factor: int = 32,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    beta2_cap: float = 0.999,
    clipping_threshold: float | None = None,
    momentum: float | None = 0.9,
    momentum_dtype: Any = jnp.bfloat16,
    eps: float = 1e-30,
) -> optax.GradientTransformation:
    """big_vision's ``scale_by_adafactor`` (no parameter scaling, no lr).

    Second moment: factored (row/column statistics) for arrays with two dims of
    size >= ``min_dim_size_to_factor``, full otherwise. Its decay at update
    ``t`` (0-based count) is ``beta2_t = min(beta2_cap, 1 - (t + 1) ** -decay_rate)``,
    so the first update uses ``g**2`` alone (beta2_0 = 0). Then optional
    block-RMS clipping, then optional momentum (EMA without debiasing, stored in
    ``momentum_dtype``).
    """

    def decay_rate_fn(i, exponent):
        t = jnp.asarray(i, jnp.float32) + 1.0
        return jnp.minimum(beta2_cap, 1.0 - t ** (-exponent))

    txs = [
        optax.scale_by_factored_rms(
            factored=True,
            decay_rate=decay_rate,
            step_offset=decay_offset,
            min_dim_size_to_factor=min_dim_size_to_factor,
            epsilon=eps,
            decay_rate_fn=decay_rate_fn,
        )
    ]
    if clipping_threshold:
        txs.append(optax.clip_by_block_rms(clipping_threshold))
    if momentum:
        txs.append(optax.ema(momentum, debias=False, accumulator_dtype=momentum_dtype))
    return optax.chain(*txs)


def path_str(path) -> str:
    """'a/b/kernel' for a jax tree path."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        else:
            parts.append(str(k))
    return "/".join(parts)


def kernel_mask(params) -> Any:
    """Pytree of bools: True where the parameter path ends in 'kernel'."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: path_str(p).split("/")[-1] == "kernel", params
    )


def make_optimizer(
    name: str = "adafactor",
    *,
    lr: float = 1e-3,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    schedule: str = "cosine",
    weight_decay: float = 0.0,
    clip_norm: float | None = 1.0,
    b1: float | None = 0.9,
    b2: float = 0.999,
    beta2_cap: float = 0.999,
    eps: float | None = None,
    min_dim_size_to_factor: int = 32,
    momentum_dtype: Any = "bfloat16",
    schedule_kwargs: dict | None = None,
) -> ScheduledTransformation:
    """Builds the optimiser (see the module docstring for the update rule).

    Args:
      name: "adafactor" (big_vision ``scale_by_adafactor``; ``b1`` is its
        momentum, None/0 disables it; ``beta2_cap`` caps the second-moment
        decay) or "adamw" (``b1``, ``b2``, ``eps`` default 1e-8).
      lr: peak learning rate.
      warmup_steps, total_steps, schedule, schedule_kwargs: see
        :func:`locca.training.schedules.make_schedule`.
      weight_decay: decoupled decay (not scaled by ``lr``), kernels only.
      clip_norm: global gradient-norm clipping threshold (None/0: off).
      min_dim_size_to_factor: Adafactor factors arrays with two dims >= this.
      momentum_dtype: Adafactor momentum accumulator dtype (big_vision: bf16).

    Returns:
      A :class:`ScheduledTransformation` (an optax transformation with
      ``learning_rate_fn``).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")
    sched = make_schedule(
        schedule, warmup_steps=warmup_steps, total_steps=total_steps, **(schedule_kwargs or {})
    )
    txs = []
    if clip_norm:
        txs.append(optax.clip_by_global_norm(clip_norm))
    if name == "adafactor":
        txs.append(
            scale_by_adafactor(
                min_dim_size_to_factor=min_dim_size_to_factor,
                beta2_cap=beta2_cap,
                momentum=b1,
                momentum_dtype=jnp.dtype(momentum_dtype),
                eps=1e-30 if eps is None else eps,
            )
        )
    else:
        txs.append(optax.scale_by_adam(b1=b1 or 0.0, b2=b2, eps=1e-8 if eps is None else eps))
    txs.append(optax.scale(lr))
    if weight_decay:
        txs.append(optax.add_decayed_weights(weight_decay, mask=kernel_mask))
    txs.append(optax.scale_by_schedule(lambda count: -sched(count)))
    tx = optax.chain(*txs)
    return ScheduledTransformation(tx.init, tx.update, lambda step: lr * sched(step))
