r"""Fine-tune a PaLI model (frozen vision encoder -> projection -> T5) on a task.

    python -m transfer.train --gin_file=gin/runs/finetune.gin \
        --gin_file=gin/models/t5_tiny.gin --gin_file=gin/encoders/locca_tiny.gin \
        --gin_file=gin/tasks/shapes_vqa.gin --gin.MODEL_DIR="'runs/transfer/vqa'"

t5x-style flags: ``--gin_file`` (repeatable), ``--gin.NAME=VALUE``,
``--gin_search_paths``. Macros: ``MODEL_DIR``, ``MIXTURE_OR_TASK_NAME``,
``TASK_FEATURE_LENGTHS``, ``TRAIN_STEPS``, ``BATCH_SIZE``,
``ENCODER_CHECKPOINT`` (the encoder's npz; ``None`` = random encoder),
``INITIAL_CHECKPOINT_PATH`` (a Hugging Face T5 directory for the language
model; ``None`` = random init), ``DATA_DIR`` (official datasets root).

The loop is the one trainer (``locca.training.trainer.train``): the encoder's
parameters are passed as its frozen tree (no gradients, no optimiser state),
the run resumes from ``MODEL_DIR`` by itself, metrics go to
``MODEL_DIR/metrics.jsonl`` and TensorBoard. Every ``eval_every`` steps (and
at the end) the :class:`transfer.eval.InferenceEvaluator` decodes the eval
split, scores it with the task's metric functions and writes
``MODEL_DIR/predictions/{task}_{step}.jsonl``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from locca.io_utils import atomic_write_json
from locca.models import pali
from locca.training import optimizers
from locca.training.trainer import train as trainer_train
from transfer import common, gin_flags
from transfer import eval as eval_lib

log = logging.getLogger("transfer.train")


def train(
    *,
    model_dir: str,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    train_steps: int,
    batch_size: int,
    model: common.ModelBundle,
    optimizer: Any = None,
    seed: int = 0,
    data_seed: int = 0,
    label_smoothing: float = 0.0,
    train_split: str = "train",
    eval_mixture_or_task_name: str | None = None,
    eval_split: str = "validation",
    eval_every: int | None = None,
    eval_batch_size: int = 64,
    num_eval_examples: int | None = None,
    decode_method: str = "greedy",
    max_decode_len: int | None = None,
    beam_size: int = 4,
    alpha: float = 0.6,
    checkpoint_every: int | None = 1000,
    keep_checkpoints: int | None = 3,
    log_every: int = 50,
    grad_accum_steps: int = 1,
    compute_dtype: str = "float32",
    mesh_shape: Mapping[str, int] | None = None,
    data_dir: str | None = None,
    progress: bool = True,
    tensorboard: bool = True,
):
    """Fine-tunes and returns the final TrainState.

    Args:
      model_dir: checkpoints, metrics, predictions, config.gin.
      mixture_or_task_name: seqio task or mixture to train on.
      task_feature_lengths: {"inputs": Li, "targets": Lt} in tokens.
      train_steps: total optimiser updates (a resumed run stops there too).
      batch_size: global batch size.
      model: ``common.build_model(...)`` (encoder, language model, projection).
      optimizer: optax transformation (gin: ``@transfer.make_optimizer()``);
        None = AdamW, lr 1e-4, 5% warmup, cosine, clip 1.0.
      seed: parameter init and dropout PRNG seed. data_seed: shuffling seed.
      label_smoothing: token cross-entropy smoothing.
      eval_mixture_or_task_name: evaluate on this (default: the training one);
        "" or None with ``eval_every=0`` disables evaluation.
      eval_split, eval_every (default: checkpoint_every), eval_batch_size,
        num_eval_examples, decode_method, max_decode_len, beam_size, alpha:
        periodic inference evaluation (see transfer.eval.InferenceEvaluator).
      checkpoint_every, keep_checkpoints, log_every, grad_accum_steps,
        compute_dtype, mesh_shape, progress, tensorboard: the trainer's.
      data_dir: root of the official datasets (``DATA_DIR``).
    """
    common.set_data_dir(data_dir)
    gin_flags.write_gin_config(model_dir)
    bundle = model
    common.check_vocabulary(bundle, mixture_or_task_name)
    _write_model_info(model_dir, bundle)
    trainable, frozen, t_axes, f_axes = common.initial_params(bundle, seed=seed)
    if optimizer is None:
        optimizer = optimizers.make_optimizer(
            "adamw",
            lr=1e-4,
            warmup_steps=max(1, train_steps // 20),
            total_steps=train_steps,
            schedule="cosine",
        )
    batches = common.train_batches(
        mixture_or_task_name,
        task_feature_lengths=task_feature_lengths,
        image_size=bundle.encoder.resolution,
        batch_size=batch_size,
        seed=data_seed,
        split=train_split,
    )
    evaluators = []
    eval_name = (
        mixture_or_task_name if eval_mixture_or_task_name is None else eval_mixture_or_task_name
    )
    if eval_name and eval_every != 0:
        evaluators.append(
            eval_lib.InferenceEvaluator(
                bundle,
                eval_name,
                split=eval_split,
                task_feature_lengths=task_feature_lengths,
                batch_size=eval_batch_size,
                num_examples=num_eval_examples,
                predictions_dir=os.path.join(model_dir, "predictions"),
                decode_method=decode_method,
                max_decode_len=max_decode_len,
                beam_size=beam_size,
                alpha=alpha,
                seed=seed,
            )
        )
    return trainer_train(
        model_dir=model_dir,
        init_params=trainable,
        frozen_params=frozen,
        param_logical_axes=t_axes,
        frozen_logical_axes=f_axes,
        loss_fn=pali.make_loss_fn(bundle.model, label_smoothing=label_smoothing),
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
        progress=progress,
        tensorboard=tensorboard,
    )


def _write_model_info(model_dir: str, bundle: common.ModelBundle) -> None:
    """``model_dir/model_info.json``: encoder, projection and T5 config of the run."""
    import dataclasses

    import jax

    if jax.process_index() != 0:
        return
    os.makedirs(model_dir, exist_ok=True)
    info = {
        "encoder": {
            "name": bundle.encoder.name,
            "checkpoint": bundle.encoder.checkpoint,
            "vit_config": {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in bundle.encoder.vit_config.items()
            },
            "resolution": list(bundle.encoder.preprocessing.resolution or ()),
            "mean": list(bundle.encoder.preprocessing.mean),
            "std": list(bundle.encoder.preprocessing.std),
        },
        "projection": bundle.model.projection,
        "freeze_encoder": bundle.freeze_encoder,
        "language_model": {
            "checkpoint": bundle.lm.checkpoint,
            "config": {
                k: (list(v) if isinstance(v, tuple) else str(v) if k == "dtype" else v)
                for k, v in dataclasses.asdict(bundle.lm.config).items()
            },
        },
    }
    atomic_write_json(os.path.join(model_dir, "model_info.json"), info, indent=2, sort_keys=True)


def register_configurables() -> None:
    """gin: ``transfer.evaluate`` and the shared pieces (eval.py) and ``transfer.train``."""
    eval_lib.register_configurables()
    gin_flags.register_configurable(train, "train", "transfer")


def main(argv):
    del argv
    import gin

    gin.get_configurable("transfer.train")()


if __name__ == "__main__":
    gin_flags.run(main, register_configurables)
