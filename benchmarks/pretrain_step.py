r"""Train-step time of LocCa (3 tasks) vs Cap (captioning only), one process.

    python -m benchmarks.pretrain_step [--model tiny|B/16|L/14] [--batch 32]
        [--image_size 64] [--vocab 2028] [--steps 10] [--dtype float32]

Both steps are the full update (forward, backward, AdamW update) on the same
synthetic batch (same images, same model); LocCa decodes cap, aref and gcap,
each at its own text length (``LENGTHS``), Cap decodes cap only. Prints each
step time (median of ``--steps`` timed steps after a compile and a warm-up
step, the two models timed alternately so machine noise hits both alike),
images/s, and the ratio
LocCa step / Cap step. ``--json`` also writes the numbers to a file.

``--pipeline N`` also times the real input pipeline alone (the toy recipe's
shapes pretraining task through ``transfer.pretrain.make_batches``: scene
generation, JPEG-free preprocessing, tokenisation, feature conversion,
prefetch) over N batches after a warm-up epoch, and prints its examples/s
against the LocCa step's consumption (img/s): the pipeline keeps up when the
ratio is > 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np
import optax

from locca.models import locca

MODELS = {
    "tiny": dict(width=64, depth=4, mlp_dim=256, num_heads=4, patch_size=(8, 8)),
    "B/16": dict(variant="B/16"),
    "L/14": dict(variant="L/14"),
}
LENGTHS = {"cap": 40, "aref": 18, "gcap": 18}  # the toy recipe (gin/pretrain/locca_tiny.gin)


def synthetic_batch(batch: int, image_size: int, vocab: int, lengths=LENGTHS, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    out = {"image": rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)}
    for t, n in lengths.items():
        tgt = rng.integers(3, vocab, (batch, n)).astype(np.int32)
        ki, kt, kw = locca.task_keys(t)
        out[kt] = tgt
        out[ki] = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], 1)
        out[kw] = np.ones((batch, n), np.int32)
    return out


def make_stepper(model, params, batch, *, tasks, parallel_prob):
    """A callable running one full update (compiled and warmed up) and returning seconds."""
    loss_fn = locca.make_loss_fn(model, tasks=tasks, parallel_prob=parallel_prob)
    opt = optax.adamw(1e-4)

    @jax.jit
    def step(p, s, b, rng):
        (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(p, {}, b, rng)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    b = jax.device_put(batch)
    state = {"p": params, "s": opt.init(params), "i": 0}

    def run() -> float:
        t0 = time.perf_counter()
        state["p"], state["s"], loss = step(
            state["p"], state["s"], b, jax.random.PRNGKey(state["i"])
        )
        jax.block_until_ready(loss)
        state["i"] += 1
        return time.perf_counter() - t0

    run()  # compile
    run()  # warm-up
    return run


def time_steps(steppers: dict, steps: int) -> dict[str, float]:
    """Median seconds per update of each stepper, timed interleaved (A B A B ...)
    so that a noisy shared machine slows all of them alike."""
    times = {k: [] for k in steppers}
    for _ in range(steps):
        for k, run in steppers.items():
            times[k].append(run())
    return {k: statistics.median(v) for k, v in times.items()}


def time_pipeline(batch: int, num_batches: int) -> float:
    """Examples/s of the shapes pretraining input pipeline alone (one process)."""
    from tasks import pretrain_tasks
    from transfer import pretrain

    task = pretrain_tasks.make_shapes_pretrain_task(
        "shapes_pretrain_bench", num_train=2000, box_encoding="loc", num_bins=32
    )
    it = pretrain.make_batches(task, task_feature_lengths=LENGTHS, batch_size=batch)(0)
    for _ in range(2000 // batch + 2):  # first epoch: scenes generated and cached
        next(it)
    t0 = time.perf_counter()
    for _ in range(num_batches):
        next(it)
    return num_batches * batch / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--image_size", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=2304)  # the shapes vocabulary
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--dtype", default="float32", help="matmul dtype (bfloat16 on accelerators)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--pipeline", type=int, default=0, help="also time N input batches")
    args = ap.parse_args(argv)

    model = locca.build_model(
        vocab_size=args.vocab,
        encoder_config=MODELS[args.model],
        max_len=max(LENGTHS.values()),
        dtype_mm=args.dtype,
    )
    params = locca.init_params(
        model, jax.random.PRNGKey(0), image_size=args.image_size, text_len=max(LENGTHS.values())
    )
    batch = synthetic_batch(args.batch, args.image_size, args.vocab)
    steppers = {
        "locca": make_stepper(
            model, params, batch, tasks=("cap", "aref", "gcap"), parallel_prob=0.5
        ),
        "cap": make_stepper(model, params, batch, tasks=("cap",), parallel_prob=0.0),
    }
    med = time_steps(steppers, args.steps)
    t_locca, t_cap = med["locca"], med["cap"]
    res = {
        "device": str(jax.devices()[0].device_kind),
        "model": args.model,
        "batch": args.batch,
        "image_size": args.image_size,
        "vocab": args.vocab,
        "text_lengths": LENGTHS,
        "locca_step_s": t_locca,
        "cap_step_s": t_cap,
        "locca_images_per_s": args.batch / t_locca,
        "cap_images_per_s": args.batch / t_cap,
        "ratio_locca_over_cap": t_locca / t_cap,
    }
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    print(
        f"device {res['device']}  model {args.model} ({n_params:,} params)  batch {args.batch}  "
        f"{args.image_size}px  vocab {args.vocab}  text {LENGTHS}"
    )
    print(f"LocCa 3-task step: {t_locca * 1e3:9.1f} ms  {res['locca_images_per_s']:9.1f} img/s")
    print(f"Cap step:          {t_cap * 1e3:9.1f} ms  {res['cap_images_per_s']:9.1f} img/s")
    print(f"ratio LocCa / Cap step time: {res['ratio_locca_over_cap']:.2f}")
    if args.pipeline:
        res["pipeline_examples_per_s"] = time_pipeline(args.batch, args.pipeline)
        res["pipeline_over_locca_step"] = res["pipeline_examples_per_s"] / res["locca_images_per_s"]
        print(
            f"input pipeline alone: {res['pipeline_examples_per_s']:9.1f} examples/s "
            f"({res['pipeline_over_locca_step']:.1f}x the LocCa step's consumption)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
