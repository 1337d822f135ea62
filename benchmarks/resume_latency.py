"""Time to the first batch after resuming at step 0 vs a late step (issue 12).

    python -m benchmarks.resume_latency                       # steps 0 and 5000, batch 16
    python -m benchmarks.resume_latency --steps 0 1000 5000 --batch 16 --repeats 3
    python -m benchmarks.resume_latency --mode indexed        # only the indexed stream

The input pipeline of the toy recipe (gin/pretrain/locca_tiny.gin): the shapes
pretraining task (2,000 scenes, 64 px, loc box tokens with 32 bins, lengths
cap 40 / aref 18 / gcap 18) through the task's training stream, the
``LocCaPretrainFeatureConverter`` and ``locca.data.pipeline.make_batches``, as
``transfer.pretrain.make_batches`` builds it (one process, one shard). For each
step k it builds ``batches(k)`` afresh and times the first ``next()``: pipeline
construction, scene generation, every example produced before batch k, and
batch k itself. Also checks that batch k equals batch k of a run started at
k - 1 (resume is bitwise, not only fast).

Two mechanisms, timed in the same process one after the other (``--mode both``):

  indexed  the task's indexed training stream (``tasks.resumable``) starts at
           example k * batch: nothing before it is preprocessed (O(1) in k;
           a fixed cost of reading the raw shard: 2,000 scene renders here)
  skip     the stream before issue 12: seqio's stream (1,000-example shuffle
           buffer after the preprocessing) and ``Dataset.skip(k)`` over its
           batches, every skipped example decoded and preprocessed (O(k))

Prints one line per mechanism and step: ``mode=... step=k first_batch_s=...
(min of N)``, then the ratio late/first of each mechanism.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import seqio

from locca.data import pipeline
from tasks import pretrain_tasks
from tasks.feature_converters import LocCaPretrainFeatureConverter

LENGTHS = {"cap": 40, "aref": 18, "gcap": 18}


def make_batches(batch: int, seed: int = 0, mode: str = "indexed", num_train: int = 2000):
    """``batches(start_step)`` of the toy recipe's shapes pretraining stream;
    ``mode="skip"``: the stream hides the pipeline's start offer (old behaviour)."""
    task = pretrain_tasks.make_shapes_pretrain_task(
        f"shapes_pretrain_resume_bench_{num_train}",
        num_train=num_train,
        box_encoding="loc",
        num_bins=32,
    )

    def examples(shard_index: int, num_shards: int):
        if mode == "skip":
            with pipeline.no_start_offer():
                return stream(shard_index, num_shards)
        return stream(shard_index, num_shards)

    def stream(shard_index: int, num_shards: int):
        ds = task.get_dataset(
            sequence_length=LENGTHS,
            split="train",
            shuffle=True,
            seed=seed,
            num_epochs=None,
            shard_info=seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None,
            use_cached=False,
        )
        return LocCaPretrainFeatureConverter(image_size=None)(ds, LENGTHS)

    return pipeline.make_batches(examples, batch_size=batch)


def first_batch_seconds(batches, step: int):
    """(seconds to the first batch of ``batches(step)``, that batch)."""
    t0 = time.perf_counter()
    it = batches(step)
    b = next(it)
    return time.perf_counter() - t0, b


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 5000])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1, help="report the minimum of N timings")
    ap.add_argument("--no_check", action="store_true", help="skip the bitwise check")
    ap.add_argument("--mode", default="both", choices=["both", "indexed", "skip"])
    ap.add_argument("--num_train", type=int, default=2000, help="scenes in the training split")
    args = ap.parse_args(argv)
    modes = ["indexed", "skip"] if args.mode == "both" else [args.mode]
    res: dict[str, dict[int, float]] = {}
    for mode in modes:
        batches = make_batches(args.batch, mode=mode, num_train=args.num_train)
        first_batch_seconds(batches, 0)  # warm-up: TensorFlow, the vocabulary, graph tracing
        res[mode] = {}
        for k in args.steps:
            times = []
            for _ in range(args.repeats):
                t, b = first_batch_seconds(batches, k)
                times.append(t)
            res[mode][k] = min(times)
            line = f"mode={mode} step={k} first_batch_s={res[mode][k]:.2f} (min of {args.repeats})"
            if k > 0 and not args.no_check:
                it = batches(k - 1)
                next(it)
                prev = next(it)
                same = all(np.array_equal(prev[f], b[f]) for f in b)
                line += f" bitwise_equal_to_run_from_{k - 1}={same}"
                if not same:
                    raise AssertionError(f"{mode}: batch {k} differs between resume at k and k-1")
            print(line, flush=True)
    if len(args.steps) > 1:
        first, last = args.steps[0], args.steps[-1]
        for mode in modes:
            r = res[mode][last] / res[mode][first]
            print(f"{mode}: late/first = step {last} / step {first} = {r:.2f}x")
    return {"first_batch_s": res}


if __name__ == "__main__":
    main()
