"""In-process trainer behaviour on toy models: frozen params, gradient
accumulation, NaN stop, metrics/evaluators, bf16 compute, keep-N, errors."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from locca.training.checkpointing import Checkpointer
from locca.training.optimizers import make_optimizer
from locca.training.partitioning import make_mesh
from locca.training.step import make_loss_and_grads
from locca.training.trainer import Trainer, train

B, D_IN, D_OUT = 16, 5, 3


def _params(seed=0):
    r = np.random.RandomState(seed)
    return {
        "dense": {
            "kernel": r.randn(D_IN, D_OUT).astype(np.float32),
            "bias": np.zeros(D_OUT, np.float32),
        }
    }


def _frozen(seed=1):
    r = np.random.RandomState(seed)
    return {
        "embed": {"kernel": r.randn(D_IN, D_IN).astype(np.float32)},
        "norm": {"scale": np.ones(D_IN, np.float32)},
    }


def loss_fn(params, frozen, batch, rng):
    del rng
    x = (batch["x"] @ frozen["embed"]["kernel"]) * frozen["norm"]["scale"]  # [b, D_IN]
    y = x @ params["dense"]["kernel"] + params["dense"]["bias"]  # [b, D_OUT]
    err = y - batch["y"]
    return jnp.mean(err**2), {
        "mae": jnp.mean(jnp.abs(err)),
        "micro_batch": jnp.float32(batch["x"].shape[0]),
    }


def _batch(i, bad=()):
    r = np.random.RandomState(100 + i)
    x = r.randn(B, D_IN).astype(np.float32)
    if i in bad:
        x[0, 0] = np.nan
    return {"x": x, "y": r.randn(B, D_OUT).astype(np.float32)}


def _batches(bad=()):
    def batches(start):
        i = start
        while True:
            yield _batch(i, bad)
            i += 1

    return batches


def _tx(steps=8):
    return make_optimizer("adamw", lr=0.05, warmup_steps=1, total_steps=steps, weight_decay=1e-3)


def _train(tmp_path, **kw):
    args = dict(
        model_dir=str(tmp_path),
        init_params=_params(),
        frozen_params=_frozen(),
        loss_fn=loss_fn,
        optimizer=_tx(),
        batches=_batches(),
        num_steps=8,
        checkpoint_every=4,
        log_every=2,
        progress=False,
        tensorboard=False,
    )
    args.update(kw)
    return train(**args)


def _metrics(tmp_path):
    return [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_frozen_params_unchanged_and_absent_from_optimizer_state(tmp_path):
    frozen = _frozen()
    original = jax.tree.map(np.copy, frozen)
    seen = []
    state = _train(
        tmp_path,
        frozen_params=frozen,
        evaluators=[lambda step, p, f: seen.append(jax.device_get(f)) or {"eval/n": 1.0}],
    )
    assert seen, "evaluator never ran"
    for got in seen:  # what the trainer holds and passes on is bitwise the input
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(original)):
            assert np.array_equal(a, b)
    paths = [
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
    ]
    assert any("'dense'" in p for p in paths)  # the trainable params have state...
    assert not any("'embed'" in p or "'norm'" in p for p in paths)  # ...the frozen none
    assert set(state.params) == {"dense"}
    # The frozen params reach the loss: changing them changes the result.
    lg = make_loss_and_grads(loss_fn)
    key = jax.random.PRNGKey(0)
    a = lg(_params(), _frozen(), _batch(0), key)[0]
    b = lg(_params(), jax.tree.map(lambda x: 2 * x, _frozen()), _batch(0), key)[0]
    assert float(a) != float(b)
    # Training happened.
    m = _metrics(tmp_path)
    assert m[-1]["loss"] < m[0]["loss"]


def test_grad_accumulation_equals_full_batch():
    params, frozen, batch = _params(), _frozen(), _batch(0)
    key = jax.random.PRNGKey(0)
    loss1, aux1, g1 = jax.jit(make_loss_and_grads(loss_fn))(params, frozen, batch, key)
    loss4, aux4, g4 = jax.jit(make_loss_and_grads(loss_fn, grad_accum_steps=4))(
        params, frozen, batch, key
    )
    assert float(aux1["micro_batch"]) == B and float(aux4["micro_batch"]) == B / 4
    np.testing.assert_allclose(loss4, loss1, rtol=1e-6)
    np.testing.assert_allclose(aux4["mae"], aux1["mae"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g4), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert max(float(np.abs(g).max()) for g in jax.tree.leaves(g1)) > 1e-3
    with pytest.raises(ValueError, match="not divisible by grad_accum_steps=3"):
        make_loss_and_grads(loss_fn, grad_accum_steps=3)(params, frozen, batch, key)


def test_grad_accumulation_training_matches(tmp_path):
    a = _train(tmp_path / "a", grad_accum_steps=1)
    b = _train(tmp_path / "b", grad_accum_steps=4)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("log_every,bad_step", [(1, 6), (100, 5)])
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, log_every, bad_step):
    with pytest.raises(FloatingPointError, match=f"non-finite loss nan at step {bad_step} "):
        _train(
            tmp_path, batches=_batches(bad={bad_step - 1}), checkpoint_every=2, log_every=log_every
        )
    ckpt = Checkpointer(str(tmp_path))
    assert ckpt.all_steps() == [2, 4]
    trainer = Trainer(loss_fn=loss_fn, optimizer=_tx(), mesh=make_mesh())
    state = ckpt.restore(4, trainer.abstract_state(_params()))
    ckpt.close()
    assert int(state.step) == 4
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))
    logged = [m["step"] for m in _metrics(tmp_path)]
    assert bad_step not in logged


def test_metrics_jsonl_tensorboard_and_evaluators(tmp_path):
    calls = []

    def evaluator(step, params, frozen):
        calls.append(step)
        return {"toy/param_sum": float(jnp.sum(params["dense"]["kernel"]))}

    _train(tmp_path, evaluators=[evaluator], eval_every=3, tensorboard=True)
    assert calls == [3, 6, 8]
    m = _metrics(tmp_path)
    train_lines = [x for x in m if "loss" in x]
    assert [x["step"] for x in train_lines] == [2, 4, 6, 8]
    for key in (
        "loss",
        "mae",
        "micro_batch",
        "grad_norm",
        "learning_rate",
        "step_time_s",
        "examples_per_sec",
        "eta_s",
    ):
        assert key in train_lines[-1], key
    assert train_lines[-1]["eta_s"] == 0.0
    np.testing.assert_allclose(
        train_lines[-1]["examples_per_sec"], B / train_lines[-1]["step_time_s"], rtol=1e-6
    )
    # learning_rate is the rate of the logged update (step 8 used schedule(7)).
    np.testing.assert_allclose(
        train_lines[-1]["learning_rate"], float(_tx().learning_rate_fn(7)), rtol=1e-5
    )
    assert [x["step"] for x in m if "toy/param_sum" in x] == [3, 6, 8]
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_checkpoints_keep_n_and_resume_skips_done_work(tmp_path):
    _train(tmp_path, checkpoint_every=2, keep_checkpoints=2)
    ckpt = Checkpointer(str(tmp_path))
    assert ckpt.all_steps() == [6, 8]
    ckpt.close()

    def no_batches(start):
        raise AssertionError("a finished run must not read data")

    state = _train(tmp_path, batches=no_batches)
    assert int(state.step) == 8


def test_bfloat16_compute_keeps_float32_master_weights(tmp_path):
    def bf16_loss(params, frozen, batch, rng):
        loss, aux = loss_fn(params, frozen, batch, rng)
        dtypes = [
            params["dense"]["kernel"].dtype,
            frozen["embed"]["kernel"].dtype,
            batch["x"].dtype,
        ]
        aux["is_bf16"] = jnp.float32(all(d == jnp.bfloat16 for d in dtypes))
        return loss, aux

    state = _train(tmp_path, loss_fn=bf16_loss, compute_dtype="bfloat16")
    assert state.params["dense"]["kernel"].dtype == jnp.float32
    m = _metrics(tmp_path)
    assert m[-1]["is_bf16"] == 1.0 and np.isfinite(m[-1]["loss"])
    with pytest.raises(ValueError, match="compute_dtype"):
        _train(tmp_path / "x", compute_dtype="float16")


def test_boxed_params_and_short_batch_stream(tmp_path):
    dense = nn.Dense(
        D_OUT,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
    )
    boxed = dense.init(jax.random.PRNGKey(0), jnp.zeros((1, D_IN)))["params"]

    def flax_loss(params, frozen, batch, rng):
        err = dense.apply({"params": params}, batch["x"]) - batch["y"]
        return jnp.mean(err**2), {}

    state = _train(tmp_path / "boxed", init_params=boxed, frozen_params=None, loss_fn=flax_loss)
    assert isinstance(state.params["kernel"], jax.Array) and int(state.step) == 8

    def short(start):
        yield from (_batch(i) for i in range(start, 3))

    with pytest.raises(ValueError, match=r"batches\(0\) ended after 3 batches"):
        _train(tmp_path / "short", batches=short)


def test_resume_with_different_params_fails_clearly(tmp_path):
    _train(tmp_path, num_steps=2, checkpoint_every=2)
    other = {
        "dense": {
            "kernel": np.zeros((D_IN + 1, D_OUT), np.float32),
            "bias": np.zeros(D_OUT, np.float32),
        }
    }

    def other_loss(params, frozen, batch, rng):
        return jnp.sum(params["dense"]["kernel"]) * 0.0, {}

    with pytest.raises(ValueError, match="does not match the trainable params"):
        _train(tmp_path, init_params=other, loss_fn=other_loss, num_steps=4)
