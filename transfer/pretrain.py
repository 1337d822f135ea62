r"""LocCa / Cap / CapPa pretraining entry point.

    python -m transfer.pretrain --gin_file=gin/pretrain/locca_tiny.gin \
        --gin.MODEL_DIR="'/tmp/locca_tiny'" [--gin.TRAIN_STEPS=2000]

t5x flag conventions: ``--gin_file`` (repeatable), ``--gin.NAME=VALUE``
(a gin binding; also ``--gin_bindings``), ``--gin_search_paths`` (the
repository's ``gin/`` folder and the working directory are always searched).
Gin lives only in this module's ``register_configurables`` / ``main``: the
library functions are registered with ``gin.external_configurable`` (gin names
``transfer.pretrain``, and the shared ``transfer.make_optimizer`` /
``transfer.make_schedule``) and the gin files bind their keyword arguments;
``pretrain`` (the job function, plain keyword arguments) is the root.

Floor: a job of the top floor beside the transfer jobs (it reads seqio tasks
from ``tasks/``); the library (``locca/``) never imports it.

What a run does: builds the model (:mod:`locca.models.locca`), the data
(a seqio pretraining task through
``tasks.feature_converters.LocCaPretrainFeatureConverter``; a seeded shuffle
of the repeated split, batch ``s`` is the same after a resume), the optimiser
(``locca.training.optimizers.make_optimizer``), the evaluator
(:mod:`locca.pretrain_eval`) and calls the one trainer
(``locca.training.trainer.train``). ``model_dir/model_config.json`` records
the encoder/decoder configs (read by ``checkpoints/export_encoder.py``);
``model_dir/config.gin`` the operative gin config.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import app, flags

from locca import pretrain_eval
from locca.data import pipeline
from locca.io_utils import atomic_write_json
from locca.models import locca as locca_lib
from locca.training import optimizers, trainer
from transfer import common, gin_flags

log = logging.getLogger("transfer.pretrain")

MODEL_CONFIG_FILE = "model_config.json"

# Environment variables that signal a multi-process (multi-host) launch.
_MULTIHOST_ENV = (
    "JAX_COORDINATOR_ADDRESS",
    "COORDINATOR_ADDRESS",
    "MEGASCALE_COORDINATOR_ADDRESS",
)
_COUNT_ENV = ("JAX_NUM_PROCESSES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def maybe_initialize_distributed(environ: Mapping[str, str] | None = None) -> bool:
    """Calls ``jax.distributed.initialize()`` only for a multi-host launch.

    Multi-host = a coordinator address is set, more than one process is
    announced (JAX/SLURM/Open MPI), or a TPU pod slice lists several workers.
    Returns whether it initialised.
    """
    env = os.environ if environ is None else environ
    multi = any(env.get(k) for k in _MULTIHOST_ENV)
    for k in _COUNT_ENV:
        try:
            multi = multi or int(env.get(k, "1")) > 1
        except ValueError:
            pass
    multi = multi or len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
    if multi:
        jax.distributed.initialize()
    return multi


# ---------------------------------------------------------------------------
# Data.


def _get_task(task: Any):
    import seqio

    import tasks  # noqa: F401  (registers every task; TensorFlow loads after the CLI is quiet)

    if isinstance(task, str):
        return seqio.get_mixture_or_task(task)
    return task


def make_dataset(
    task: Any,
    *,
    split: str,
    task_feature_lengths: Mapping[str, int],
    batch_size: int | None,
    image_size: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    num_epochs: int | None = None,
    shard_index: int = 0,
    num_shards: int = 1,
):
    """tf.data of batched pretraining model features (numpy-able dicts).

    Features (``LocCaPretrainFeatureConverter``): ``image`` uint8 [B, S, S, 3]
    and ``{cap,aref,gcap}_{decoder_input_tokens,decoder_target_tokens,
    loss_weights}`` int32 [B, L_t]. ``batch_size`` None: unbatched examples.
    ``shard_index`` / ``num_shards``: read that shard of the split.
    """
    import seqio

    from tasks.feature_converters import LocCaPretrainFeatureConverter  # TensorFlow: see _get_task

    task = _get_task(task)
    lengths = {k: int(v) for k, v in task_feature_lengths.items()}
    ds = task.get_dataset(
        sequence_length=lengths,
        split=split,
        shuffle=shuffle,
        seed=seed,  # also seeds the per-example sampling (regions, captions)
        num_epochs=num_epochs,
        shard_info=seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None,
        use_cached=False,
    )
    ds = LocCaPretrainFeatureConverter(image_size=image_size)(ds, lengths)
    return ds if batch_size is None else ds.batch(batch_size, drop_remainder=True)


def make_batches(
    task: Any,
    *,
    task_feature_lengths: Mapping[str, int],
    batch_size: int,
    image_size: int | None = None,
    seed: int = 0,
    split: str = "train",
    num_shards: int | None = None,
) -> Callable[[int], Iterator[dict[str, np.ndarray]]]:
    """The trainer's ``batches(start_step) -> iterator`` (``locca.data.pipeline``).

    A seeded shuffle of the repeated split, read as ``num_shards`` data shards
    (default: one per process; each process reads only its own) and batched
    to ``batch_size`` global examples per step, ``batch_size / process_count``
    per process. ``batches(start_step)`` yields batch ``start_step`` first,
    bitwise the same whether or not the run was interrupted.
    """

    def examples(shard_index: int, num_shards: int):
        return make_dataset(
            task,
            split=split,
            task_feature_lengths=task_feature_lengths,
            batch_size=None,
            image_size=image_size,
            shuffle=True,
            seed=seed,
            num_epochs=None,
            shard_index=shard_index,
            num_shards=num_shards,
        )

    return pipeline.make_batches(examples, batch_size=batch_size, num_shards=num_shards)


# ---------------------------------------------------------------------------
# The run.


def pretrain(
    *,
    model_dir: str,
    train_steps: int,
    batch_size: int,
    task: Any = "shapes_pretrain",
    task_feature_lengths: Mapping[str, int] = (("cap", 48), ("aref", 32), ("gcap", 32)),
    image_size: int | None = None,
    data_seed: int = 0,
    vocab_size: int | None = None,
    encoder_config: Mapping[str, Any] = (),
    decoder_config: Mapping[str, Any] | None = None,
    dropout: float = 0.0,
    remat: bool = False,
    dtype_mm: str = "float32",
    tasks: Sequence[str] = ("cap", "aref", "gcap"),
    task_weights: Mapping[str, float] | None = None,
    parallel_prob: float = 0.5,
    optimizer: Any = None,
    seed: int = 0,
    checkpoint_every: int = 1000,
    keep_checkpoints: int = 3,
    log_every: int = 50,
    eval_every: int | None = None,
    evaluate: bool = True,
    evaluator_kwargs: Mapping[str, Any] | None = None,
    mesh_shape: Mapping[str, int] | None = None,
    compute_dtype: str = "float32",
    grad_accum_steps: int = 1,
    progress: bool = True,
    tensorboard: bool = True,
    fixed_batch: bool = False,
):
    """Pretrains LocCa (or Cap / CapPa: ``tasks=("cap",)``) and returns the final state.

    Args:
      model_dir: checkpoints, metrics.jsonl, sample PNGs, configs.
      train_steps: number of optimiser updates.
      batch_size: global batch size (images per update).
      task: a seqio task/mixture name or object producing image/cap/aref/gcap.
      task_feature_lengths: text lengths {cap, aref, gcap} in tokens (the
        decoder's position embeddings cover the longest).
      image_size: model input side in pixels (None: the task's).
      data_seed: shuffle / sampling seed of the data.
      vocab_size: output vocabulary size; None: the task's vocabulary size.
        It may exceed the data's vocabulary (e.g. 32k for paper configs).
      encoder_config: ``vit.Model`` kwargs (``variant``, ``patch_size``...).
      decoder_config: decoder width/depth/mlp_dim/num_heads overrides
        (default: the encoder's width/heads/mlp, half its depth).
      tasks, task_weights, parallel_prob: see ``locca.make_loss_fn``.
      optimizer: an optax transformation (gin: ``@make_optimizer()``); None:
        ``make_optimizer(total_steps=train_steps)`` with its defaults.
      evaluate / evaluator_kwargs / eval_every: the pretraining evaluator
        (``PretrainEvaluator`` keyword arguments).
      fixed_batch: train on the first batch over and over (a sanity check:
        the loss must fall).
    """
    if tasks is None or not tuple(tasks):
        raise ValueError("tasks must name at least one of cap, aref, gcap")
    lengths = dict(task_feature_lengths)
    task_obj = _get_task(task)
    max_len = max(lengths[t] for t in lengths)
    model, vocab_size = _build_model(
        task_obj,
        vocab_size=vocab_size,
        encoder_config=encoder_config,
        decoder_config=decoder_config,
        max_len=max_len,
        dropout=dropout,
        remat=remat,
        dtype_mm=dtype_mm,
    )
    if image_size is None:
        shape = _task_image_shape(task_obj)
        image_size = int(shape[0])
    init = locca_lib.init_params(
        model, jax.random.PRNGKey(seed), image_size=image_size, text_len=max_len, boxed=True
    )
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(init))
    log.info("LocCa model: %d parameters, vocab %d, image %d px", n_params, vocab_size, image_size)
    if jax.process_index() == 0:
        _write_model_config(model_dir, model, image_size=image_size, max_len=max_len)
        gin_flags.write_gin_config(model_dir)

    loss_fn = locca_lib.make_loss_fn(
        model, tasks=tuple(tasks), task_weights=task_weights, parallel_prob=parallel_prob
    )
    if optimizer is None:
        optimizer = optimizers.make_optimizer(total_steps=train_steps)
    batches = make_batches(
        task_obj,
        task_feature_lengths=lengths,
        batch_size=batch_size,
        image_size=image_size,
        seed=data_seed,
    )
    if fixed_batch:
        batches = _repeat_first(batches)
    evaluators = []
    if evaluate:
        evaluators.append(
            _evaluator(
                model,
                task_obj,
                lengths=lengths,
                image_size=image_size,
                tasks=tuple(tasks),
                model_dir=model_dir,
                evaluator_kwargs=evaluator_kwargs,
            )
        )
    return trainer.train(
        model_dir=model_dir,
        init_params=init,
        loss_fn=loss_fn,
        optimizer=optimizer,
        batches=batches,
        num_steps=train_steps,
        seed=seed,
        grad_accum_steps=grad_accum_steps,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        log_every=log_every,
        evaluators=evaluators,
        eval_every=eval_every,
        mesh_shape=mesh_shape,
        compute_dtype=compute_dtype,
        learning_rate_fn=getattr(optimizer, "learning_rate_fn", None),
        progress=progress,
        tensorboard=tensorboard,
    )


def _build_model(task_obj, *, vocab_size, encoder_config, decoder_config, max_len, **kw):
    """(the LocCa model, its vocabulary size): ``vocab_size`` None = the task's;
    never below it. ``kw``: ``locca.build_model``'s dropout / remat / dtype_mm."""
    data_vocab = task_obj.output_features["cap"].vocabulary.vocab_size
    if vocab_size is None:
        vocab_size = data_vocab
    if vocab_size < data_vocab:
        raise ValueError(f"vocab_size {vocab_size} < the task's vocabulary size {data_vocab}")
    enc_cfg = dict(encoder_config)
    if "patch_size" in enc_cfg and enc_cfg["patch_size"] is not None:
        ps = enc_cfg["patch_size"]
        enc_cfg["patch_size"] = (int(ps), int(ps)) if np.isscalar(ps) else tuple(ps)
    model = locca_lib.build_model(
        vocab_size=vocab_size,
        encoder_config=enc_cfg,
        decoder_config=decoder_config,
        max_len=max_len,
        **kw,
    )
    return model, vocab_size


def _evaluator(model, task_obj, *, lengths, image_size, tasks, model_dir, evaluator_kwargs):
    """The pretraining evaluator over the task's held-out splits (unshuffled, one epoch)."""

    def held_out(split: str):
        return make_dataset(
            task_obj,
            split=split,
            task_feature_lengths=lengths,
            batch_size=None,
            image_size=image_size,
            shuffle=False,
            num_epochs=1,
        )

    return pretrain_eval.PretrainEvaluator(
        model=model,
        task=task_obj,
        dataset_fn=held_out,
        task_feature_lengths=lengths,
        image_size=image_size,
        tasks=tasks,
        model_dir=model_dir,
        **dict(evaluator_kwargs or {}),
    )


def _repeat_first(batches: Callable[[int], Iterator]) -> Callable[[int], Iterator]:
    def repeated(start_step: int) -> Iterator[dict[str, np.ndarray]]:
        first = next(iter(batches(0)))
        while True:
            yield first

    return repeated


def _task_image_shape(task_obj) -> tuple[int, ...]:
    """Static image shape of a task (for image_size=None)."""
    ds = task_obj.get_dataset(
        sequence_length=None, split="validation", shuffle=False, use_cached=False
    )
    shape = ds.element_spec["image"].shape
    if shape.rank != 3 or shape[0] is None:
        raise ValueError(f"task {task_obj.name}: image shape {shape} is not static; set image_size")
    return tuple(int(s) for s in shape)


def _write_model_config(model_dir: str, model, *, image_size: int, max_len: int) -> None:
    """``model_dir/model_config.json``: the ViT and decoder configs of the run."""
    import dataclasses

    def fields(m) -> dict:
        out = {}
        for f in dataclasses.fields(m):
            if f.name in ("parent", "name"):
                continue
            v = getattr(m, f.name)
            if isinstance(v, tuple):
                v = list(v)
            if isinstance(v, (int, float, str, bool, list, type(None))):
                out[f.name] = v
            else:
                out[f.name] = str(v)
        return out

    os.makedirs(model_dir, exist_ok=True)
    cfg = {
        "vit_config": fields(model.encoder),
        "decoder_config": fields(model.decoder),
        "image_size": int(image_size),
        "max_len": int(max_len),
    }
    atomic_write_json(os.path.join(model_dir, MODEL_CONFIG_FILE), cfg, indent=2, sort_keys=True)


# ---------------------------------------------------------------------------
# Flags, gin and main.


_CONFIGURED = False


def register_configurables() -> None:
    """gin (idempotent): the shared transfer pieces (``common.register_configurables``:
    ``transfer.make_optimizer``, ``transfer.make_schedule``...), ``transfer.pretrain``
    and ``tasks.make_shapes_pretrain_task``."""
    global _CONFIGURED
    if _CONFIGURED:
        return
    from tasks import pretrain_tasks  # TensorFlow: see _get_task

    common.register_configurables()
    gin_flags.register_configurable(pretrain, "pretrain", "transfer")
    gin_flags.register_configurable(
        pretrain_tasks.make_shapes_pretrain_task, "make_shapes_pretrain_task", "tasks"
    )
    _CONFIGURED = True


def parse_gin(
    gin_files: Sequence[str], gin_bindings: Sequence[str] = (), search_paths: Sequence[str] = ()
) -> None:
    """Registers this job's configurables, then ``gin_flags.parse_gin``."""
    register_configurables()
    gin_flags.parse_gin(gin_files, gin_bindings, search_paths)


def run_from_gin() -> Any:
    """Calls the gin-bound ``pretrain`` (which saves the config into model_dir)."""
    import gin

    return gin.get_configurable("transfer.pretrain")()


def main(argv: Sequence[str]) -> None:
    """After ``gin_flags.run`` parsed the flags and gin files: the gin-bound ``pretrain``."""
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    maybe_initialize_distributed()
    if not flags.FLAGS.gin_file:
        raise app.UsageError("--gin_file is required (e.g. gin/pretrain/locca_tiny.gin)")
    run_from_gin()


if __name__ == "__main__":
    gin_flags.run(main, register_configurables)
