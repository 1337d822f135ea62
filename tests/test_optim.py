"""Optimisers and schedules: Adafactor against a numpy reference, factored
state shapes, decoupled weight decay on kernels only, clipping, schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from locca.training.optimizers import kernel_mask, make_optimizer, scale_by_adafactor
from locca.training.schedules import make_schedule


def _adafactor_reference(grads, beta2_cap, momentum, eps=1e-30):
    """numpy big_vision Adafactor on one [R, C] matrix, row/col factored."""
    r = c = m = None
    out = []
    for t, g in enumerate(grads):
        beta2 = min(beta2_cap, 1.0 - (t + 1.0) ** -0.8)
        g2 = g.astype(np.float64) ** 2 + eps
        rows, cols = g2.mean(axis=1), g2.mean(axis=0)  # [R], [C]
        r = rows if r is None else beta2 * r + (1 - beta2) * rows
        c = cols if c is None else beta2 * c + (1 - beta2) * cols
        v = np.outer(r, c) / r.mean()  # rank-1 estimate of E[g^2]
        u = g / np.sqrt(v)
        m = (1 - momentum) * u if m is None else momentum * m + (1 - momentum) * u
        out.append(m)
    return out


def test_adafactor_matches_reference_with_beta2_cap_and_momentum():
    rng = np.random.RandomState(0)
    param = jnp.asarray(rng.randn(6, 5), jnp.float32)
    grads = [rng.randn(6, 5).astype(np.float32) for _ in range(4)]
    # Cap 0.5 binds from the third update on (1 - 3**-0.8 = 0.585).
    tx = scale_by_adafactor(
        min_dim_size_to_factor=4, beta2_cap=0.5, momentum=0.9, momentum_dtype=jnp.float32
    )
    state = tx.init(param)
    got = []
    for g in grads:
        u, state = tx.update(jnp.asarray(g), state, param)
        got.append(np.asarray(u))
    want = _adafactor_reference(grads, beta2_cap=0.5, momentum=0.9)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    # Without the cap the third update differs: the cap really is applied.
    uncapped = _adafactor_reference(grads, beta2_cap=1.0, momentum=0.9)
    assert not np.allclose(uncapped[2], want[2], rtol=1e-4)


def test_adafactor_factored_state_shapes():
    params = {
        "dense": {"kernel": jnp.zeros((64, 48)), "bias": jnp.zeros((48,))},
        "small": {"kernel": jnp.zeros((8, 48))},
    }
    state = scale_by_adafactor(min_dim_size_to_factor=32).init(params)
    factored = state[0]  # optax FactoredState(count, v_row, v_col, v)
    k = ("dense", "kernel")
    get = lambda tree, path: tree[path[0]][path[1]]  # noqa: E731
    assert {get(factored.v_row, k).shape, get(factored.v_col, k).shape} == {(64,), (48,)}
    assert get(factored.v, k).shape == (1,)  # no full second moment for a matrix
    assert get(factored.v, ("dense", "bias")).shape == (48,)  # vectors: full
    assert get(factored.v, ("small", "kernel")).shape == (8, 48)  # 8 < 32: not factored
    mom = state[1]  # momentum in bf16 (big_vision default)
    assert get(mom.ema, k).dtype == jnp.bfloat16 and get(mom.ema, k).shape == (64, 48)
    n_factored = sum(x.size for x in jax.tree.leaves((factored.v_row, factored.v_col, factored.v)))
    assert n_factored < 64 * 48  # memory: factored stats are sublinear


def test_weight_decay_only_on_kernels_and_not_scaled_by_lr():
    params = {
        "dense": {"kernel": jnp.full((3, 2), 2.0), "bias": jnp.full((2,), 2.0)},
        "ln": {"scale": jnp.full((2,), 2.0)},
        "pos_embedding": jnp.full((4, 2), 2.0),
    }
    zeros = jax.tree.map(jnp.zeros_like, params)
    tx = make_optimizer("adamw", lr=0.5, schedule="constant", weight_decay=0.01, clip_norm=None)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.01 * 2.0, rtol=1e-6)
    for path in (("dense", "bias"), ("ln", "scale")):
        np.testing.assert_array_equal(updates[path[0]][path[1]], 0.0)
    np.testing.assert_array_equal(updates["pos_embedding"], 0.0)
    assert kernel_mask(params) == {
        "dense": {"kernel": True, "bias": False},
        "ln": {"scale": False},
        "pos_embedding": False,
    }


def test_weight_decay_follows_schedule():
    params = {"kernel": jnp.ones((2, 2))}
    tx = make_optimizer(
        "adamw",
        lr=1.0,
        warmup_steps=4,
        total_steps=8,
        schedule="cosine",
        weight_decay=0.1,
        clip_norm=None,
    )
    state = tx.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    seen = []
    for _ in range(3):
        u, state = tx.update(zero, state, params)
        seen.append(float(u["kernel"][0, 0]))
    np.testing.assert_allclose(seen, [0.0, -0.1 * 0.25, -0.1 * 0.5], rtol=1e-6)


def test_global_norm_clipping():
    params = {"a": jnp.ones((3,)), "b": jnp.ones((2, 2))}
    grads = {"a": jnp.asarray([3.0, 0.0, 4.0]), "b": jnp.asarray([[12.0, 0.0], [0.0, 0.0]])}
    norm = 13.0
    # Adam with a huge eps is ~linear in the gradient, so clipping is visible.
    kw = dict(lr=1.0, schedule="constant", b1=0.0, b2=0.0, eps=1e3)
    clipped = make_optimizer("adamw", clip_norm=1.0, **kw)
    plain = make_optimizer("adamw", clip_norm=None, **kw)
    u_clip, _ = clipped.update(grads, clipped.init(params), params)
    u_manual, _ = plain.update(jax.tree.map(lambda g: g / norm, grads), plain.init(params), params)
    u_plain, _ = plain.update(grads, plain.init(params), params)
    for k in params:
        np.testing.assert_allclose(u_clip[k], u_manual[k], rtol=1e-6)
    assert not np.allclose(u_plain["a"], u_clip["a"])
    # Below the threshold nothing changes.
    small = jax.tree.map(lambda g: g / 100.0, grads)
    a, _ = clipped.update(small, clipped.init(params), params)
    b, _ = plain.update(small, plain.init(params), params)
    np.testing.assert_allclose(a["b"], b["b"], rtol=1e-6)


def test_learning_rate_fn_matches_applied_step():
    tx = make_optimizer(
        "adafactor", lr=0.1, warmup_steps=2, total_steps=10, clip_norm=None, b1=None
    )
    params = {"w": jnp.ones((3,))}
    state = tx.init(params)
    g = {"w": jnp.asarray([1.0, -2.0, 4.0])}
    # A constant gradient keeps Adafactor's second moment at g**2, so its
    # direction is sign(g) and the update is exactly -lr(step) * sign(g).
    lrs = []
    for step in range(5):
        u, state = tx.update(g, state, params)
        lrs.append(float(tx.learning_rate_fn(step)))
        np.testing.assert_allclose(u["w"], -lrs[-1] * np.sign(g["w"]), rtol=1e-5, atol=1e-9)
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(0.05) and lrs[2] == pytest.approx(0.1)
    assert lrs[3] < lrs[2]  # cosine decay after warmup


@pytest.mark.parametrize(
    "kind,step,want",
    [
        ("cosine", 0, 0.0),
        ("cosine", 5, 0.5),
        ("cosine", 10, 1.0),
        ("cosine", 60, 0.5),
        ("cosine", 110, 0.0),
        ("linear", 60, 0.5),
        ("linear", 110, 0.0),
        ("constant", 200, 1.0),
        ("rsqrt", 10, 1.0),
        ("rsqrt", 10 + 300, 0.5),  # sqrt(100 / (300 + 100))
    ],
)
def test_schedules(kind, step, want):
    fn = make_schedule(kind, warmup_steps=10, total_steps=110, timescale=100)
    assert float(fn(step)) == pytest.approx(want, abs=1e-6)


def test_schedule_and_optimizer_errors():
    with pytest.raises(ValueError, match="total_steps"):
        make_schedule("cosine", warmup_steps=10, total_steps=5)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("exp")
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("sgd", total_steps=10)


def test_make_optimizer_is_an_optax_transformation():
    tx = make_optimizer("adafactor", lr=1e-3, warmup_steps=1, total_steps=4, weight_decay=1e-4)
    params = {"dense": {"kernel": jnp.ones((2, 2))}}
    chained = optax.chain(tx, optax.identity())
    u, _ = chained.update(params, chained.init(params), params)
    assert jax.tree.structure(u) == jax.tree.structure(params)
