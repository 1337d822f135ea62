"""Sharded trainer step on 8 simulated CPU devices (mesh data 4 x fsdp 2)
equals the single-device step; params and optimiser state are really sharded.
Runs in a subprocess because the device count is fixed at JAX start-up."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from locca.training import partitioning
from locca.training.optimizers import make_optimizer
from locca.training.step import make_loss_and_grads
from locca.training.trainer import Trainer

assert jax.device_count() == 8, jax.devices()
lp = nn.with_logical_partitioning

class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):  # x: [B, 8]
        h = nn.Dense(16, kernel_init=lp(nn.initializers.lecun_normal(), ("embed", "mlp")),
                     bias_init=lp(nn.initializers.normal(0.1), ("mlp",)), name="fc1")(x)
        h = nn.gelu(h)  # [B, 16]
        return nn.Dense(8, kernel_init=nn.initializers.lecun_normal(), name="fc2")(h)

model = MLP()
rng = np.random.RandomState(0)
batch = {"x": rng.randn(32, 8).astype(np.float32), "y": rng.randn(32, 8).astype(np.float32)}
boxed = model.init(jax.random.PRNGKey(0), batch["x"])["params"]
params, axes = partitioning.logical_axes_from_boxed(boxed)
params = jax.device_get(params)
frozen = {"scale": np.full((8,), 0.5, np.float32)}

def loss_fn(p, f, b, key):
    y = model.apply({"params": p}, b["x"] * f["scale"])
    err = y - b["y"]
    return jnp.mean(err ** 2), {"mae": jnp.mean(jnp.abs(err))}

def spec(x):
    return [list(e) if isinstance(e, tuple) else e for e in x.sharding.spec]

def run(mesh):
    tx = make_optimizer("adamw", lr=1e-2, warmup_steps=0, schedule="constant",
                        weight_decay=1e-3, clip_norm=1.0)
    tr = Trainer(loss_fn=loss_fn, optimizer=tx, mesh=mesh, param_logical_axes=axes)
    state = tr.init_state(params, seed=0)
    fz = tr.place_frozen(frozen)
    sb = partitioning.shard_batch(batch, mesh)
    lg = jax.jit(make_loss_and_grads(loss_fn, mesh=mesh))
    loss, aux, grads = lg(state.params, fz, sb, jax.random.PRNGKey(1))
    info = {
        "kernel_spec": spec(state.params["fc1"]["kernel"]),
        "kernel_shard": list(state.params["fc1"]["kernel"].addressable_shards[0].data.shape),
        "fc2_spec": spec(state.params["fc2"]["kernel"]),
        "mu_spec": [spec(x) for pth, x in
                    jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
                    if jax.tree_util.keystr(pth).endswith(".mu['fc1']['kernel']")],
        "batch_shard": list(sb["x"].addressable_shards[0].data.shape),
    }
    state, metrics = tr.step(state, fz, sb)
    return (float(loss), jax.device_get(grads), jax.device_get(state.params),
            jax.device_get(metrics), info)

one = run(partitioning.make_mesh((1, 1, 1), devices=jax.devices()[:1]))
eight = run(partitioning.make_mesh({"data": 4, "fsdp": 2}))

def max_rel(a, b):
    return max(float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

print("RESULT " + json.dumps({
    "loss_rel": abs(one[0] - eight[0]) / abs(one[0]),
    "grads_rel": max_rel(eight[1], one[1]),
    "params_rel": max_rel(eight[2], one[2]),
    "metrics_rel": max_rel(eight[3], one[3]),
    "grads_nonzero": min(float(np.abs(g).max()) for g in jax.tree.leaves(one[1])),
    "one": one[4], "eight": eight[4],
}))
"""


@pytest.fixture(scope="module")
def result():
    env = dict(os.environ)
    env.update(
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    p = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def test_sharded_loss_grads_and_update_match_single_device(result):
    assert result["grads_nonzero"] > 0
    assert result["loss_rel"] < 1e-6
    assert result["grads_rel"] < 1e-6
    assert result["metrics_rel"] < 1e-6
    assert result["params_rel"] < 1e-6


def test_params_opt_state_and_batch_are_sharded(result):
    eight = result["eight"]
    # fc1/kernel: logical ("embed", "mlp") -> ("fsdp", "model"): rows split over fsdp=2.
    assert eight["kernel_spec"] == ["fsdp", "model"]
    assert eight["kernel_shard"] == [4, 16]
    assert result["one"]["kernel_shard"] == [8, 16]
    # Adam's first moment follows its parameter's sharding.
    assert eight["mu_spec"] == [eight["kernel_spec"]]
    # fc2 has no logical axes: replicated.
    assert eight["fc2_spec"] == []
    # Batch 32 over data x fsdp = 8 devices.
    assert eight["batch_shard"] == [4, 8]


def test_make_mesh_shapes_and_errors():
    import jax

    from locca.training import partitioning

    mesh = partitioning.make_mesh()
    assert mesh.axis_names == ("data", "fsdp", "model")
    assert mesh.devices.shape == (jax.device_count(), 1, 1)
    with pytest.raises(ValueError, match="unknown axes"):
        partitioning.make_mesh({"tensor": 1})
    with pytest.raises(ValueError, match="needs"):
        partitioning.make_mesh({"data": 2 * jax.device_count()})


def test_param_shardings_errors_and_fallback():
    import jax
    from jax.sharding import PartitionSpec as P

    from locca.training import partitioning

    mesh = partitioning.make_mesh()
    params = {"a": {"kernel": np.zeros((4, 6), np.float32)}, "b": np.zeros((3,), np.float32)}
    sh = partitioning.param_shardings(params, mesh, {"a": {"kernel": ("embed", "mlp")}})
    assert sh["a"]["kernel"].spec == P("fsdp", "model")
    assert sh["b"].spec == P()  # no logical axes: replicated
    with pytest.raises(ValueError, match="a/kernel.*do not match its shape"):
        partitioning.param_shardings(params, mesh, {"a": {"kernel": ("embed",)}})
    del jax
