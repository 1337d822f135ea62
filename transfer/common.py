"""Shared plumbing of the transfer jobs (train / eval / infer).

* gin: :func:`register_configurables` registers the shared pieces below
  (flags, parsing and the rest of the gin setup: ``transfer/gin_flags.py``);
  gin files bind the keyword arguments of these plain functions; the library
  under ``locca/`` never sees gin.
* Model construction: :func:`encoder` (an :class:`EncoderSpec`: ViT config,
  checkpoint, input resolution and normalisation, all from the encoder's gin
  file), :func:`language_model` (a ``T5Config`` and optional Hugging Face
  T5 checkpoint) and :func:`build_model` -> :class:`ModelBundle`.
* Parameters: :func:`initial_params` (random init, then the encoder npz with
  position-embedding resampling, then the language model), split into
  trainable and frozen trees; :func:`restore_params` reads the trainable
  params of a trainer checkpoint.
* Data: :func:`get_task` / :func:`model_dataset` turn a seqio task or
  mixture into batches of model features at the encoder's resolution.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from checkpoints import bv_npz, hf_t5
from locca.data import pipeline
from locca.models import pali, vit
from locca.models import t5 as t5_lib
from locca.training import optimizers, schedules
from transfer import gin_flags

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# gin registration of the pieces the transfer jobs share (setup: transfer/gin_flags.py).

_REGISTERED = False


def register_configurables() -> None:
    """Registers the library pieces the transfer jobs share with gin (idempotent).

    Names (module ``transfer`` unless noted): ``transfer.encoder``,
    ``transfer.language_model``, ``transfer.build_model``,
    ``transfer.make_optimizer``, ``transfer.make_schedule``, and the T5 config
    class as ``locca.models.t5.T5Config`` (short: ``T5Config``). Each job adds
    itself in its own ``register_configurables``: ``transfer.evaluate``
    (eval.py), ``transfer.train`` (train.py, with evaluate), ``transfer.infer``
    (infer.py, with evaluate); ``transfer.experiment`` registers them all.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    gin_flags.register_configurable(encoder, "encoder", "transfer")
    gin_flags.register_configurable(language_model, "language_model", "transfer")
    gin_flags.register_configurable(build_model, "build_model", "transfer")
    gin_flags.register_configurable(optimizers.make_optimizer, "make_optimizer", "transfer")
    gin_flags.register_configurable(schedules.make_schedule, "make_schedule", "transfer")
    gin_flags.register_configurable(t5_lib.T5Config, "T5Config", "locca.models.t5")
    _REGISTERED = True


def set_data_dir(data_dir: str | None) -> None:
    """``DATA_DIR``: the root of the official datasets (``$LOCCA_DATA_DIR``)."""
    if data_dir:
        from tasks import registry

        os.environ[registry.DATA_DIR_ENV] = os.fspath(data_dir)


# ---------------------------------------------------------------------------
# Model construction.


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """A vision encoder for transfer (what an ``gin/encoders/*.gin`` file binds).

    Attributes:
      name: short name used in logs and experiment tables.
      vit_config: ``vit.Model`` keyword arguments.
      checkpoint: big_vision npz (``path.npz[:subtree]``) or None for a random
        encoder (tests only).
      preprocessing: resolution and normalisation of the encoder's inputs.
    """

    name: str
    vit_config: Mapping[str, Any]
    checkpoint: str | None
    preprocessing: pali.ImagePreprocessing

    @property
    def resolution(self) -> int:
        res = self.preprocessing.resolution
        if res is None or res[0] != res[1]:
            raise ValueError(f"encoder {self.name}: needs a square resolution, got {res}")
        return int(res[0])


def _sidecar_config(checkpoint: str) -> dict | None:
    """The ViT config exported next to an npz (``X.json`` beside ``X.npz``)."""
    file = checkpoint.split(":", 1)[0] if not os.path.exists(checkpoint) else checkpoint
    for cand in (re.sub(r"\.npz$", ".json", file), file + ".json"):
        if cand != file and os.path.exists(cand):
            with open(cand) as f:
                meta = json.load(f)
            cfg = meta.get("model_config", meta.get("vit_config", meta))
            return cfg if isinstance(cfg, dict) else None
    return None


def _norm_vit_config(cfg: Mapping[str, Any]) -> dict:
    out = dict(cfg)
    out.pop("num_classes", None)
    if "patch_size" in out and out["patch_size"] is not None:
        ps = out["patch_size"]
        out["patch_size"] = (int(ps), int(ps)) if np.isscalar(ps) else tuple(int(p) for p in ps)
    return out


def encoder(
    *,
    name: str = "encoder",
    checkpoint: str | None = None,
    vit_config: Mapping[str, Any] | None = None,
    variant: str | None = None,
    resolution: int = 224,
    value_range: Sequence[float] | None = (-1.0, 1.0),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> EncoderSpec:
    """Describes a vision encoder.

    Args:
      name: a short name (logs, tables).
      checkpoint: big_vision npz path (``file.npz`` or ``file.npz:img``), or
        None / "" / "None" for random initialisation.
      vit_config: ``vit.Model`` keyword arguments. When None, read from the
        sidecar JSON that ``checkpoints/export_encoder.py`` writes beside the
        npz. When both exist, they must agree on the architecture.
      variant: a big_vision variant such as "B/16" (merged under vit_config).
      resolution: input size in pixels (square). Position embeddings of a
        checkpoint trained at another size are resampled on load.
      value_range: pixel range the encoder was trained with ((-1, 1) for
        SigLIP/LocCa); set None and give mean/std for CLIP-style encoders.
      mean, std: per-channel statistics on the [0, 1] scale.
    """
    if checkpoint in ("", "None", "none"):
        checkpoint = None
    cfg = {}
    if variant:
        cfg.update(vit.decode_variant(variant))
    if vit_config is not None:
        cfg.update(vit_config)
    sidecar = _sidecar_config(checkpoint) if checkpoint else None
    if vit_config is None and variant is None:
        if sidecar is None:
            raise ValueError(
                f"encoder {name}: no vit_config given and no sidecar JSON found beside "
                f"checkpoint {checkpoint!r}"
            )
        cfg = dict(sidecar)
    elif sidecar is not None:
        ours, theirs = _norm_vit_config(cfg), _norm_vit_config(sidecar)
        keys = ("width", "depth", "mlp_dim", "num_heads", "patch_size", "posemb", "pool_type")
        diff = {k: (ours.get(k), theirs.get(k)) for k in keys if k in theirs and k in ours}
        diff = {k: v for k, v in diff.items() if v[0] != v[1]}
        if diff:
            raise ValueError(
                f"encoder {name}: gin vit_config disagrees with the checkpoint's sidecar "
                f"config for {checkpoint}: {diff} (gin value, checkpoint value)"
            )
    if mean is not None or std is not None:
        value_range = None
    prep = pali.ImagePreprocessing.create(
        resolution=resolution, value_range=value_range, mean=mean, std=std
    )
    return EncoderSpec(
        name=name, vit_config=_norm_vit_config(cfg), checkpoint=checkpoint, preprocessing=prep
    )


@dataclasses.dataclass(frozen=True)
class LanguageModelSpec:
    config: Any  # t5.T5Config
    checkpoint: str | None


def language_model(*, config: Any = None, checkpoint: str | None = None) -> LanguageModelSpec:
    """The T5 language model: a ``T5Config`` and optionally a HF T5 directory.

    With a checkpoint, its config is used (the gin config, if given, must
    agree on the vocabulary size and widths); without one, the language model
    is randomly initialised from ``config``.
    """
    if checkpoint in ("", "None", "none"):
        checkpoint = None
    if checkpoint is not None:
        cfg_path = pathlib.Path(checkpoint) / "config.json"
        ckpt_config = hf_t5.config_from_hf(hf_t5._read_json(cfg_path), source=str(cfg_path))
        if config is not None:
            _check_t5_match(config, ckpt_config, checkpoint)
            # Keep run-time choices of the gin config (dropout, dtype).
            ckpt_config = dataclasses.replace(
                ckpt_config, dropout_rate=config.dropout_rate, dtype=config.dtype
            )
        config = ckpt_config
    if config is None:
        raise ValueError("language_model: give a T5Config (gin/models/*.gin) or a checkpoint")
    return LanguageModelSpec(config=config, checkpoint=checkpoint)


def _check_t5_match(ours, theirs, where):
    keys = ("vocab_size", "emb_dim", "num_heads", "num_encoder_layers", "num_decoder_layers")
    diff = {k: (getattr(ours, k), getattr(theirs, k)) for k in keys}
    diff = {k: v for k, v in diff.items() if v[0] != v[1]}
    if diff:
        raise ValueError(
            f"T5 config from gin disagrees with checkpoint {where}: {diff} (gin, checkpoint)"
        )


@dataclasses.dataclass(frozen=True)
class ModelBundle:
    """A built PaLI model with where its weights come from."""

    model: pali.PaLI
    encoder: EncoderSpec
    lm: LanguageModelSpec
    freeze_encoder: bool


def build_model(
    *,
    encoder: EncoderSpec,
    lm: LanguageModelSpec,
    projection: str = "linear",
    projection_hidden_dim: int | None = None,
    freeze_encoder: bool = True,
    dropout: float | None = None,
) -> ModelBundle:
    """PaLI from an encoder and a language model (see ``locca.models.pali``)."""
    cfg = lm.config
    if dropout is not None:
        cfg = dataclasses.replace(cfg, dropout_rate=float(dropout))
    model = pali.PaLI(
        vit_config=dict(encoder.vit_config),
        t5_config=cfg,
        projection=projection,
        projection_hidden_dim=projection_hidden_dim,
        preprocessing=encoder.preprocessing,
        freeze_encoder=freeze_encoder,
    )
    return ModelBundle(
        model=model,
        encoder=encoder,
        lm=dataclasses.replace(lm, config=cfg),
        freeze_encoder=freeze_encoder,
    )


def initial_params(bundle: ModelBundle, seed: int = 0) -> tuple[dict, dict, dict, dict]:
    """-> (trainable, frozen, trainable logical axes, frozen logical axes).

    Random init; then the encoder npz (position embeddings resampled to the
    encoder resolution by ``load_vit_params``); then the HF T5 weights.
    """
    params, axes = pali.init_params(bundle.model, jax.random.PRNGKey(seed))
    params = dict(params)
    if bundle.encoder.checkpoint:
        params["img"] = bv_npz.load_vit_params(
            params["img"], bundle.encoder.checkpoint, dict(bundle.encoder.vit_config)
        )
        log.info("encoder %s loaded from %s", bundle.encoder.name, bundle.encoder.checkpoint)
    else:
        log.warning("encoder %s: no checkpoint, random initialisation", bundle.encoder.name)
    if bundle.lm.checkpoint:
        cfg, lm_params = hf_t5.load_hf_t5(bundle.lm.checkpoint)
        _check_t5_match(bundle.lm.config, cfg, bundle.lm.checkpoint)
        _check_same_structure(params["llm"], lm_params, bundle.lm.checkpoint)
        params["llm"] = lm_params
        log.info("language model loaded from %s", bundle.lm.checkpoint)
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    trainable, frozen = pali.split_params(params, bundle.freeze_encoder)
    t_axes, f_axes = pali.split_params(axes, bundle.freeze_encoder)
    return trainable, frozen, t_axes, f_axes


def _check_same_structure(ours, theirs, where):
    a = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(ours)}
    b = {
        jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(theirs)
    }
    if a != b:
        missing = sorted(set(a) - set(b))[:5]
        extra = sorted(set(b) - set(a))[:5]
        shapes = [k for k in set(a) & set(b) if a[k] != b[k]][:5]
        raise ValueError(
            f"{where}: language-model parameters do not match the model: missing {missing}, "
            f"unexpected {extra}, mis-shaped {shapes}"
        )


def restore_params(model_dir_or_step_dir: str, step: int | None = None) -> tuple[dict, int]:
    """Trainable params of a trainer checkpoint -> (params as numpy, step).

    Accepts a run's ``model_dir`` (latest step unless ``step``) or a
    ``.../checkpoints/<step>`` directory.
    """
    import orbax.checkpoint as ocp

    path = pathlib.Path(model_dir_or_step_dir).resolve()
    if path.name.isdigit() and (path / "state").exists():
        step_dir = path
    else:
        steps = checkpoint_steps(str(path))
        if not steps:
            raise FileNotFoundError(f"no checkpoints under {path / 'checkpoints'}")
        if step is None:
            step = steps[-1]
        if step not in steps:
            raise FileNotFoundError(f"{path}: no checkpoint for step {step}; have {steps}")
        step_dir = path / "checkpoints" / str(step)
    with ocp.StandardCheckpointer() as ckptr:
        state = ckptr.restore(step_dir / "state")
    params = jax.tree.map(np.asarray, state["params"])
    return params, int(np.asarray(state["step"]))


def checkpoint_steps(model_dir: str) -> list[int]:
    """Completed checkpoint steps of a run, ascending."""
    d = pathlib.Path(model_dir) / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / "state").exists())


# ---------------------------------------------------------------------------
# Data.


def get_task(name: str):
    """A registered seqio task or mixture (``import tasks`` registers them)."""
    import seqio

    import tasks  # noqa: F401  (registers tasks and mixtures)

    try:
        return seqio.get_mixture_or_task(name)
    except ValueError as e:
        raise ValueError(f"unknown task or mixture {name!r}: {e}") from None


def subtasks(name: str) -> list:
    """The tasks of a mixture (or the task itself)."""
    import seqio

    t = get_task(name)
    if isinstance(t, seqio.Mixture):
        return list(t.tasks)
    return [t]


def model_dataset(
    name: str,
    *,
    split: str,
    task_feature_lengths: Mapping[str, int],
    image_size: int,
    batch_size: int | None,
    shuffle: bool,
    seed: int = 0,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    with_task_features: bool = False,
    shard_index: int = 0,
    num_shards: int = 1,
):
    """tf.data of batched model features (``ImageTextFeatureConverter``).

    With ``with_task_features`` the un-converted task examples are returned
    instead (for evaluation, where targets and postprocessing need them).
    ``batch_size`` None: unbatched examples. ``shard_index`` / ``num_shards``:
    read that shard of the split (``seqio.ShardInfo``).
    """
    import seqio

    from tasks.feature_converters import ImageTextFeatureConverter

    task = get_task(name)
    ds = task.get_dataset(
        sequence_length=dict(task_feature_lengths),
        split=split,
        shuffle=shuffle,
        seed=seed if shuffle else None,
        num_epochs=num_epochs,
        shard_info=seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None,
        use_cached=False,
    )
    if with_task_features:
        return ds
    conv = ImageTextFeatureConverter(image_size=image_size)
    ds = conv(ds, dict(task_feature_lengths))
    return ds if batch_size is None else ds.batch(batch_size, drop_remainder=drop_remainder)


def train_batches(
    name: str,
    *,
    task_feature_lengths: Mapping[str, int],
    image_size: int,
    batch_size: int,
    seed: int = 0,
    split: str = "train",
    num_shards: int | None = None,
):
    """The trainer's ``batches(start_step) -> iterator`` (``locca.data.pipeline``).

    The stream is a seeded shuffle of the repeated training split, read as
    ``num_shards`` data shards (default: one per process; each process reads
    only its own) and batched to ``batch_size`` global examples per step,
    ``batch_size / process_count`` per process. ``batches(start_step)`` yields
    batch ``start_step`` first, the same whether or not the run was interrupted.
    """

    def examples(shard_index: int, num_shards: int):
        return model_dataset(
            name,
            split=split,
            task_feature_lengths=task_feature_lengths,
            image_size=image_size,
            batch_size=None,
            shuffle=True,
            seed=seed,
            num_epochs=None,
            shard_index=shard_index,
            num_shards=num_shards,
        )

    return pipeline.make_batches(examples, batch_size=batch_size, num_shards=num_shards)


def check_vocabulary(bundle: ModelBundle, name: str) -> None:
    """The model's vocabulary must cover every task's token ids."""
    model_vocab = bundle.lm.config.vocab_size
    for task in subtasks(name):
        for feat in ("inputs", "targets"):
            v = task.output_features[feat].vocabulary
            if v.vocab_size > model_vocab:
                raise ValueError(
                    f"task {task.name}: feature {feat!r} uses a vocabulary of {v.vocab_size} ids "
                    f"but the language model has vocab_size={model_vocab}; set "
                    f"T5Config.vocab_size >= {v.vocab_size} (e.g. {-(-v.vocab_size // 128) * 128})"
                )


def default_t5_config(**overrides):
    """A T5Config with overrides (convenience for tests and gin)."""
    return t5_lib.T5Config(**overrides)
