"""Toy training run for the trainer's subprocess tests (resume, SIGTERM).

Usage: python tests/_train_script.py MODEL_DIR OUT_NPZ [--num_steps N]
  [--checkpoint_every K] [--sleep S]
Trains a 2-layer MLP (plus a frozen input projection) on synthetic
deterministic data with Adafactor, weight decay, clipping, gradient
accumulation and a stochastic (rng-dependent) loss; writes the final
trainable params to OUT_NPZ ("a/b/kernel" keys). Prints "start_step=K" when
the batch stream is (re)opened.
"""

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from locca.training.optimizers import make_optimizer  # noqa: E402
from locca.training.trainer import train  # noqa: E402

D_IN, D_HID, D_OUT, BATCH = 6, 16, 3, 8


def init_params(seed=0):
    r = np.random.RandomState(seed)
    params = {
        "layer_0": {
            "kernel": r.randn(D_IN, D_HID).astype(np.float32) * 0.3,
            "bias": np.zeros(D_HID, np.float32),
        },
        "layer_1": {
            "kernel": r.randn(D_HID, D_OUT).astype(np.float32) * 0.3,
            "bias": np.zeros(D_OUT, np.float32),
        },
    }
    frozen = {"proj": {"kernel": r.randn(D_IN, D_IN).astype(np.float32)}}
    return params, frozen


def loss_fn(params, frozen, batch, rng):
    x = batch["x"] @ frozen["proj"]["kernel"]
    keep = jax.random.bernoulli(rng, 0.9, x.shape)  # dropout-like: uses the step key
    h = jax.nn.gelu(x * keep @ params["layer_0"]["kernel"] + params["layer_0"]["bias"])
    y = h @ params["layer_1"]["kernel"] + params["layer_1"]["bias"]
    loss = jnp.mean((y - batch["y"]) ** 2)
    return loss, {"abs_err": jnp.mean(jnp.abs(y - batch["y"]))}


def make_batches(sleep=0.0):
    def batches(start):
        print(f"start_step={start}", flush=True)
        i = start
        while True:
            if sleep:
                time.sleep(sleep)
            r = np.random.RandomState(1000 + i)
            x = r.randn(BATCH, D_IN).astype(np.float32)
            yield {
                "x": x,
                "y": np.tanh(x[:, :D_OUT]) + 0.1 * r.randn(BATCH, D_OUT).astype(np.float32),
            }
            i += 1

    return batches


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("out_npz")
    ap.add_argument("--num_steps", type=int, default=16)
    ap.add_argument("--checkpoint_every", type=int, default=2)
    ap.add_argument("--sleep", type=float, default=0.0)
    args = ap.parse_args()
    params, frozen = init_params()
    tx = make_optimizer(
        "adafactor",
        lr=0.05,
        warmup_steps=3,
        total_steps=args.num_steps,
        weight_decay=1e-3,
        clip_norm=1.0,
        min_dim_size_to_factor=4,
    )
    state = train(
        model_dir=args.model_dir,
        init_params=params,
        frozen_params=frozen,
        loss_fn=loss_fn,
        optimizer=tx,
        batches=make_batches(args.sleep),
        num_steps=args.num_steps,
        seed=7,
        grad_accum_steps=2,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=3,
        log_every=1,
        progress=False,
        tensorboard=False,
    )
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
    np.savez(args.out_npz, **{"/".join(k.key for k in p): np.asarray(v) for p, v in flat})
    print(f"done step={int(state.step)}", flush=True)


if __name__ == "__main__":
    main()
