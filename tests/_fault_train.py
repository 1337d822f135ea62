"""Training process for tests/test_faults.py (checkpoint faults).

    python tests/_fault_train.py MODEL_DIR OUT_NPZ [--num_steps N]
        [--checkpoint_every K] [--sleep S] [--pad N] [--hidden H]

The toy run of tests/_train_script.py plus a ``pad`` parameter of N x N
float32 (trained by weight decay only) that makes each checkpoint write take
long enough to kill the process in the middle of one; ``--hidden`` changes a
layer width (a checkpoint of another shape). Writes the final trainable
params to OUT_NPZ and prints ``start_step=K`` when the batch stream opens.
"""

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _train_script as base  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from locca.training.optimizers import make_optimizer  # noqa: E402
from locca.training.trainer import train  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("out_npz")
    ap.add_argument("--num_steps", type=int, default=8)
    ap.add_argument("--checkpoint_every", type=int, default=1)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--pad", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=base.D_HID)
    args = ap.parse_args()
    params, frozen = base.init_params()
    if args.hidden != base.D_HID:
        r = np.random.RandomState(1)
        params["layer_0"]["kernel"] = r.randn(base.D_IN, args.hidden).astype(np.float32)
        params["layer_0"]["bias"] = np.zeros(args.hidden, np.float32)
        params["layer_1"]["kernel"] = r.randn(args.hidden, base.D_OUT).astype(np.float32)
    if args.pad:
        params["pad"] = np.random.RandomState(2).randn(args.pad, args.pad).astype(np.float32)

    def loss_fn(p, f, batch, rng):
        return base.loss_fn({k: v for k, v in p.items() if k != "pad"}, f, batch, rng)

    tx = make_optimizer(
        "adafactor",
        lr=0.05,
        warmup_steps=2,
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
        batches=base.make_batches(args.sleep),
        num_steps=args.num_steps,
        seed=7,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=2,
        log_every=1,
        progress=False,
        tensorboard=False,
    )
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
    np.savez(args.out_npz, **{"/".join(k.key for k in p): np.asarray(v) for p, v in flat})
    print(f"done step={int(state.step)}", flush=True)


if __name__ == "__main__":
    main()
