"""Device mesh and logical-axis sharding rules.

The mesh always has the three named axes ``("data", "fsdp", "model")``.
Parameters carry *logical* axis names (``embed``, ``mlp``, ``heads``, ...; see
``nn.with_logical_partitioning``); :data:`DEFAULT_RULES` maps them onto mesh
axes. A logical name without a rule, and a parameter without logical axes, is
replicated. The batch dimension of every input is sharded over
``("data", "fsdp")``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from locca.training.optimizers import path_str

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")

# Logical axis name -> mesh axis (or tuple of axes, or None = replicated).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("vocab", "model"),
    ("kv", None),
    ("joined_kv", "model"),
    ("length", None),
    ("relpos_buckets", None),
    ("abspos_buckets", None),
    ("layers", None),
    ("stack", None),
)


def make_mesh(mesh_shape: Mapping[str, int] | Sequence[int] | None = None, devices=None) -> Mesh:
    """Builds a ``("data", "fsdp", "model")`` mesh.

    Args:
      mesh_shape: sizes per axis, as a dict (missing axes = 1) or a sequence of
        3 ints; one entry may be -1 (= all remaining devices). Default: all
        devices on "data".
      devices: the devices to use (default ``jax.devices()``, all processes).
    """
    devices = list(jax.devices() if devices is None else devices)
    if mesh_shape is None:
        shape = [-1, 1, 1]
    elif isinstance(mesh_shape, Mapping):
        unknown = set(mesh_shape) - set(MESH_AXES)
        if unknown:
            raise ValueError(f"mesh_shape has unknown axes {sorted(unknown)}; expected {MESH_AXES}")
        shape = [int(mesh_shape.get(a, 1)) for a in MESH_AXES]
    else:
        shape = [int(s) for s in mesh_shape]
        if len(shape) != 3:
            raise ValueError(f"mesh_shape {mesh_shape} must have 3 entries {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh_shape {shape}: at most one -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices are not divisible by mesh {shape}")
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, shape))} needs {np.prod(shape)} devices, "
            f"have {len(devices)}"
        )
    try:
        arr = jax.experimental.mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # noqa: BLE001 - fall back to the plain device order
        arr = np.asarray(devices).reshape(shape)
    return Mesh(arr, MESH_AXES)


def _is_axes_leaf(x) -> bool:
    return (
        x is None
        or isinstance(x, PartitionSpec)
        or (isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x))
    )


def logical_axes_from_boxed(tree) -> tuple[Any, Any]:
    """Splits a tree with ``nn.Partitioned`` (LogicallyPartitioned) leaves into
    (plain arrays, logical PartitionSpecs; None for unboxed leaves)."""
    is_boxed = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
    axes = jax.tree.map(
        lambda x: PartitionSpec(*x.names) if is_boxed(x) else None, tree, is_leaf=is_boxed
    )
    return nn.unbox(tree), axes


def _flat_axes(logical_axes) -> dict[str, Any]:
    if logical_axes is None:
        return {}
    flat, _ = jax.tree_util.tree_flatten_with_path(logical_axes, is_leaf=_is_axes_leaf)
    return {path_str(p): v for p, v in flat}


def param_shardings(
    params, mesh: Mesh, logical_axes=None, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES
):
    """NamedSharding per parameter from its logical axes (replicated if absent).

    ``logical_axes`` is a pytree over (a subset of) the parameter paths whose
    leaves are ``PartitionSpec``s or tuples of logical names (None = replicate).
    A sharded dimension must be divisible by its mesh axes' size.
    """
    flat_axes = _flat_axes(logical_axes)

    def one(path, x):
        name = path_str(path)
        names = flat_axes.get(name)
        if names is None:
            return NamedSharding(mesh, PartitionSpec())
        names = tuple(names)
        if len(names) != np.ndim(x):
            raise ValueError(
                f"parameter {name}: logical axes {names} do not match its shape {np.shape(x)}"
            )
        sharding = nn.logical_to_mesh_sharding(PartitionSpec(*names), mesh, list(rules))
        _check_divisible(name, np.shape(x), sharding)
        return sharding

    return jax.tree_util.tree_map_with_path(one, params)


def _check_divisible(name, shape, sharding: NamedSharding):
    for dim, axes in zip(shape, tuple(sharding.spec) + (None,) * len(shape)):
        if axes is None:
            continue
        axes = (axes,) if isinstance(axes, str) else axes
        size = int(np.prod([sharding.mesh.shape[a] for a in axes]))
        if dim % size:
            raise ValueError(
                f"parameter {name}: dimension {dim} of shape {tuple(shape)} is not divisible "
                f"by mesh axes {axes} of size {size} (spec {sharding.spec})"
            )


def opt_state_shardings(abstract_opt_state, params, p_shardings, mesh: Mesh):
    """Shardings for an optimiser state: a leaf whose path ends with a
    parameter's path and has that parameter's shape takes the parameter's
    sharding (Adam moments, momentum); everything else (counts, factored
    Adafactor row/column statistics) is replicated."""
    by_path = {}
    for (p, x), s in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(p_shardings)
    ):
        by_path[path_str(p)] = (tuple(np.shape(x)), s)
    replicated = NamedSharding(mesh, PartitionSpec())

    def one(path, x):
        parts = path_str(path).split("/")
        for i in range(len(parts)):
            hit = by_path.get("/".join(parts[i:]))
            if hit is not None and hit[0] == tuple(x.shape):
                return hit[1]
        return replicated

    return jax.tree_util.tree_map_with_path(one, abstract_opt_state)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Batch dimension (axis 0) over ("data", "fsdp"); other dims replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global jax arrays sharded on the batch axis.

    Each process passes its own slice (leading dim = global batch / process
    count); on one host this is the whole batch.
    """
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.ndim == 0:
            raise ValueError(f"batch feature {k!r} is a scalar; expected a leading batch dim")
        global_b = v.shape[0] * jax.process_count()
        if global_b % n:
            raise ValueError(
                f"batch feature {k!r}: global batch {global_b} is not divisible by the "
                f"data x fsdp mesh size {n}"
            )
        out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
    return out
