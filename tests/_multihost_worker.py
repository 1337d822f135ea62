"""One process of the multi-host test (tests/test_multihost.py).

Usage: python tests/_multihost_worker.py OUT_DIR --process_id I --num_processes P
  [--port PORT] [--num_shards V]

With P > 1 it joins a ``jax.distributed`` CPU cluster on localhost:PORT (one
device per process, gloo collectives). It then runs, through the real entry
functions, (a) a tiny PaLI transfer fine-tune (``transfer.train.train``) on a
shapes captioning task and (b) a tiny LocCa pretraining run
(``transfer.pretrain.pretrain``). The batch pipelines are wrapped to record a
hash of every example row this process reads. Writes
``OUT_DIR/{transfer,pretrain}/rows_{I}.json`` (per step, the row hashes) and,
on process 0, ``OUT_DIR/{transfer,pretrain}/params.npz`` (final parameters);
the losses are in ``OUT_DIR/{transfer,pretrain}/metrics.jsonl`` (process 0).
"""

import argparse
import hashlib
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

RESOLUTION = 32
NUM_TRAIN = 16  # scenes = examples per epoch (one example per scene in both tasks)
BATCH_SIZE = 4  # global
TRANSFER_STEPS = 8  # two epochs
PRETRAIN_STEPS = 4  # one epoch
TRANSFER_TASK = "multihost_caption"
PRETRAIN_TASK = "multihost_pretrain"


def row_id(image: np.ndarray) -> str:
    """An example's id: a hash of its image (every scene's image is distinct)."""
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]


def recording(make_batches, record: list, **extra):
    """Wraps a ``make_batches``-like factory: records the row ids of every batch read."""

    def factory(*args, **kwargs):
        inner = make_batches(*args, **kwargs, **extra)

        def batches(start_step):
            for batch in inner(start_step):
                record.append([row_id(im) for im in batch["image"]])
                yield batch

        return batches

    return factory


def register_tasks():
    """The transfer task has no shuffle buffer (sharp epoch boundaries: the
    source's seeded permutation, repeated); the pretraining task is the
    registered kind (seqio shuffle buffer of 1000 over the repeated stream)."""
    from tasks import pretrain_tasks, registry, shapes_tasks
    from tasks.sources.shapes import ShapesSource

    sizes = dict(num_train=NUM_TRAIN, num_validation=4, num_test=4)
    registry.add_task(
        TRANSFER_TASK,
        config=dict(sizes, kind="caption", resolution=RESOLUTION, shuffle_buffer_size=1),
        source=ShapesSource("caption", resolution=RESOLUTION, seed=0, **sizes),
        preprocessors=registry.text_preprocessors(RESOLUTION, shapes_tasks.format_for("caption")),
        output_features=registry.output_features(),
        postprocess_fn=registry.text_postprocessor,
        metric_fns=[],
        shuffle_buffer_size=1,
    )
    return pretrain_tasks.make_shapes_pretrain_task(PRETRAIN_TASK, resolution=RESOLUTION, **sizes)


def host_params(params) -> dict[str, np.ndarray]:
    """Replicated global params -> {path: numpy} (this process's copy)."""
    return {
        jax.tree_util.keystr(k): np.asarray(v.addressable_shards[0].data)
        for k, v in jax.tree_util.tree_leaves_with_path(params)
    }


def write(out_dir, name, process_id, record, state):
    with open(os.path.join(out_dir, name, f"rows_{process_id}.json"), "w") as f:
        json.dump(record, f)
    params = host_params(state.params)
    if process_id == 0:
        np.savez(os.path.join(out_dir, name, "params.npz"), **params)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out_dir")
    p.add_argument("--process_id", type=int, default=0)
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--num_shards", type=int, default=None)
    args = p.parse_args()
    if args.num_processes > 1:
        jax.distributed.initialize(
            coordinator_address=f"localhost:{args.port}",
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    assert jax.process_count() == args.num_processes and jax.local_device_count() == 1

    from locca.models import t5 as t5_lib
    from locca.training import optimizers
    from locca.vocab import default_vocabulary
    from transfer import common, pretrain
    from transfer import train as transfer_train

    extra = {} if args.num_shards is None else {"num_shards": args.num_shards}
    pretrain_task = register_tasks()

    # (a) transfer: frozen random ViT -> linear projection -> 1+1-layer T5.
    record: list = []
    common.train_batches = recording(common.train_batches, record, **extra)
    vocab = -(-default_vocabulary().vocab_size // 128) * 128
    bundle = common.build_model(
        encoder=common.encoder(
            name="micro",
            vit_config=dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=16),
            resolution=RESOLUTION,
        ),
        lm=common.language_model(
            config=t5_lib.T5Config(
                vocab_size=vocab,
                emb_dim=32,
                num_heads=2,
                num_encoder_layers=1,
                num_decoder_layers=1,
                head_dim=16,
                mlp_dim=64,
            )  # fmt: skip
        ),
    )
    d = os.path.join(args.out_dir, "transfer")
    state = transfer_train.train(
        model_dir=d, mixture_or_task_name=TRANSFER_TASK,
        task_feature_lengths={"inputs": 8, "targets": 24}, train_steps=TRANSFER_STEPS,
        batch_size=BATCH_SIZE, model=bundle, data_seed=3,
        optimizer=optimizers.make_optimizer("adamw", lr=3e-3, total_steps=TRANSFER_STEPS),
        eval_mixture_or_task_name="", eval_every=0, checkpoint_every=None, log_every=1,
        progress=False, tensorboard=False,
    )  # fmt: skip
    write(args.out_dir, "transfer", args.process_id, record, state)

    # (b) pretraining: tiny ViT encoder + 1-layer decoder, cap / aref / gcap.
    record = []
    pretrain.make_batches = recording(pretrain.make_batches, record, **extra)
    d = os.path.join(args.out_dir, "pretrain")
    state = pretrain.pretrain(
        model_dir=d, train_steps=PRETRAIN_STEPS, batch_size=BATCH_SIZE, task=pretrain_task,
        task_feature_lengths={"cap": 40, "aref": 28, "gcap": 28}, data_seed=5,
        encoder_config=dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=16),
        decoder_config=dict(depth=1),
        # eps: attention key biases get a zero gradient up to float noise, which
        # Adam would otherwise blow up to full-size (run-dependent) steps.
        optimizer=optimizers.make_optimizer(
            "adamw", lr=3e-3, eps=1e-6, total_steps=PRETRAIN_STEPS
        ),
        evaluate=False, checkpoint_every=0, log_every=1, progress=False, tensorboard=False,
    )  # fmt: skip
    write(args.out_dir, "pretrain", args.process_id, record, state)
    print(f"process {args.process_id}: done", flush=True)


if __name__ == "__main__":
    main()
