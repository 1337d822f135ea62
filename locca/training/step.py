"""The jitted train step: loss, gradient accumulation, optimiser update.

``make_train_step(...)`` returns ``step(state, frozen_params, batch) ->
(new_state, metrics)``, a pure function (jit it with shardings; see
trainer.py). Metrics are float32 scalars: ``loss``, every aux scalar of the
loss function, ``grad_norm`` (global L2 norm of the averaged gradient, before
clipping) and ``learning_rate`` (when a schedule is known).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from locca.training.partitioning import BATCH_AXES
from locca.training.train_state import TrainState

LossFn = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, dict]]
RESERVED_METRICS = {"loss", "grad_norm", "learning_rate"}
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def cast_floats(tree, dtype):
    """Casts floating leaves of ``tree`` to ``dtype`` (ints/bools untouched)."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, tree
    )


def _split_microbatches(batch: dict, n: int, mesh: Mesh | None) -> dict:
    """[B, ...] -> [n, B/n, ...]; micro-batch i holds examples i, i+n, i+2n, ...

    This strided split keeps every micro-batch spread over all data shards
    (a contiguous split would put whole micro-batches on a few devices).
    """

    def one(k, x):
        if x.shape[0] % n:
            raise ValueError(
                f"batch feature {k!r}: batch size {x.shape[0]} is not divisible by "
                f"grad_accum_steps={n}"
            )
        x = x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
        if mesh is not None:
            spec = PartitionSpec(None, BATCH_AXES, *([None] * (x.ndim - 2)))
            x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
        return x

    return {k: one(k, v) for k, v in batch.items()}


def make_loss_and_grads(
    loss_fn: LossFn,
    *,
    grad_accum_steps: int = 1,
    compute_dtype: str = "float32",
    mesh: Mesh | None = None,
):
    """Returns ``f(params, frozen, batch, rng) -> (loss, aux, grads)``.

    With ``grad_accum_steps = n > 1`` the batch is split into n micro-batches
    (see :func:`_split_microbatches`), processed sequentially by ``lax.scan``
    with keys ``fold_in(rng, i)``; loss, aux and gradients are the means over
    micro-batches (equal to the full-batch values for a per-example-mean loss).
    With ``compute_dtype="bfloat16"`` float params, frozen params and batch
    features are cast to bf16 inside the loss; gradients stay float32 (w.r.t.
    the float32 master weights).
    """
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype {compute_dtype!r} not in {sorted(COMPUTE_DTYPES)}")
    if grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
    dtype = COMPUTE_DTYPES[compute_dtype]

    def compute_loss(params, frozen, batch, rng):
        if dtype != jnp.float32:
            params, frozen, batch = cast_floats((params, frozen, batch), dtype)
        loss, aux = loss_fn(params, frozen, batch, rng)
        clash = set(aux) & RESERVED_METRICS
        if clash:
            raise ValueError(f"loss_fn aux metrics use reserved names {sorted(clash)}")
        aux = {k: jnp.asarray(v, jnp.float32) for k, v in dict(aux).items()}
        return jnp.asarray(loss, jnp.float32), aux

    grad_fn = jax.value_and_grad(compute_loss, has_aux=True)

    def loss_and_grads(params, frozen, batch, rng):
        if grad_accum_steps == 1:
            (loss, aux), grads = grad_fn(params, frozen, batch, rng)
            return loss, aux, grads
        n = grad_accum_steps
        micro = _split_microbatches(batch, n, mesh)

        def body(acc, xs):
            i, mb = xs
            (loss, aux), grads = grad_fn(params, frozen, mb, jax.random.fold_in(rng, i))
            return jax.tree.map(jnp.add, acc, (loss, aux, grads)), None

        first = jax.tree.map(lambda x: x[0], micro)
        shapes = jax.eval_shape(grad_fn, params, frozen, first, rng)
        (loss_s, aux_s), grads_s = shapes
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), (loss_s, aux_s, grads_s))
        total, _ = jax.lax.scan(body, zeros, (jnp.arange(n), micro))
        loss, aux, grads = jax.tree.map(lambda x: x / n, total)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        return loss, aux, grads

    return loss_and_grads


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    grad_accum_steps: int = 1,
    compute_dtype: str = "float32",
    learning_rate_fn: Callable | None = None,
    mesh: Mesh | None = None,
):
    """Returns ``step(state, frozen, batch) -> (state, metrics)`` (not jitted).

    The key of update ``s`` is ``fold_in(state.rng, s)``. ``frozen`` only
    enters the loss: it gets no gradient and no optimiser state.
    """
    loss_and_grads = make_loss_and_grads(
        loss_fn, grad_accum_steps=grad_accum_steps, compute_dtype=compute_dtype, mesh=mesh
    )

    def step(state: TrainState, frozen, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        loss, aux, grads = loss_and_grads(state.params, frozen, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads)}
        if learning_rate_fn is not None:
            metrics["learning_rate"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return step
