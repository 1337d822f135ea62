"""The paper's frozen-encoder REC protocol (comparing encoders on localisation).

Freeze the vision encoder, train a decoder **from scratch** (6 layers in the
paper; width / heads / MLP default to the encoder's) that cross-attends to
the encoder's **un-pooled** tokens (``out["encoded"]``, after its final
LayerNorm), on the RefCOCO mix (``refcoco_all``) or ``shapes_refexp``, and
report Acc@0.5 per evaluation split.

The decoder is the captioning decoder (``locca.models.decoder.Decoder``); the
loop is the one trainer (``locca.training.trainer.train``) with the encoder in
its frozen tree (no gradients, no optimiser state, not checkpointed).

Sequence layout. The task's prompt (``inputs``, e.g. ``locate en {expr}``,
ending with EOS) is teacher-forced as a decoder prefix and the box text
(``targets``) follows it::

    sequence  = prompt tokens (incl. its EOS) ++ box tokens (incl. EOS), 0-padded
    decoder input = [0] ++ sequence[:-1]      (BOS = 0, T5 convention)
    loss weight   = 1 on the box tokens only

At evaluation the prompt is forced (``locca.generation.greedy_continuation``)
and the tokens after it are decoded, parsed by the task's postprocessor
(the box codec) and scored by the task's metric (Acc@0.5, mean IoU): the
one generative evaluation, ``transfer.eval.score_task``, with this decoder
as its decode function.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from checkpoints import bv_npz
from locca import generation, losses
from locca.io_utils import atomic_write_json
from locca.models import decoder as decoder_lib
from locca.models import vit
from locca.training import optimizers
from locca.training.frozen_features import FrozenFeatureCache
from locca.training.trainer import train as trainer_train
from transfer import common
from transfer.eval import load_task_data, score_task, write_jsonl

log = logging.getLogger("transfer.rec_protocol")


# ---------------------------------------------------------------------------
# Batches.


def pack_prompt_and_target(
    inputs: np.ndarray, targets: np.ndarray, max_len: int
) -> dict[str, np.ndarray]:
    """Task tokens -> decoder features (see the module docstring).

    Args:
      inputs: [B, Li] prompt tokens (EOS-terminated, 0-padded).
      targets: [B, Lt] box tokens (EOS-terminated, 0-padded).
      max_len: sequence length (>= Li + Lt keeps everything).

    Returns:
      ``decoder_input_tokens``, ``decoder_target_tokens``,
      ``decoder_loss_weights`` [B, max_len] int32, ``prompt_length`` [B].
    """
    inputs, targets = np.asarray(inputs), np.asarray(targets)
    b = inputs.shape[0]
    seq = np.zeros((b, max_len), np.int32)
    w = np.zeros((b, max_len), np.int32)
    plen = np.zeros((b,), np.int32)
    for i in range(b):
        p = inputs[i][inputs[i] != 0]
        t = targets[i][targets[i] != 0]
        n_p = min(len(p), max_len)
        n_t = min(len(t), max_len - n_p)
        seq[i, :n_p] = p[:n_p]
        seq[i, n_p : n_p + n_t] = t[:n_t]
        w[i, n_p : n_p + n_t] = 1
        plen[i] = n_p
    dec_in = np.concatenate([np.zeros((b, 1), np.int32), seq[:, :-1]], axis=1)
    return {
        "decoder_input_tokens": dec_in,
        "decoder_target_tokens": seq,
        "decoder_loss_weights": w,
        "prompt_length": plen,
    }


def _rec_batches(base_batches, max_len: int, features: FrozenFeatureCache | None = None):
    """The trainer's batches: ``image`` [B, H, W, 3] uint8, or with ``features``
    the frozen encoder's tokens ``encoded`` [B, N, D] in its place, plus the
    packed decoder features."""

    def batches(start_step: int):
        for b in base_batches(start_step):
            packed = pack_prompt_and_target(
                b["encoder_input_tokens"], b["decoder_target_tokens"], max_len
            )
            packed.pop("prompt_length")
            if features is None:
                yield {"image": b["image"], **packed}
            else:
                yield {"encoded": features(b["image"]), **packed}

    return batches


# ---------------------------------------------------------------------------
# Model pieces.


def build_decoder(
    encoder_config: Mapping[str, Any],
    *,
    vocab_size: int,
    max_len: int,
    depth: int = 6,
    width: int | None = None,
    num_heads: int | None = None,
    mlp_dim: int | None = None,
    dropout: float = 0.0,
) -> decoder_lib.Decoder:
    """The REC decoder: ``depth`` layers, other sizes default to the encoder's."""
    cfg = decoder_lib.default_decoder_config(_encoder_sizes(encoder_config))
    cfg["depth"] = int(depth)
    if width is not None:
        cfg["width"] = int(width)
    if num_heads is not None:
        cfg["num_heads"] = int(num_heads)
    if mlp_dim is not None:
        cfg["mlp_dim"] = int(mlp_dim)
    return decoder_lib.Decoder(
        vocab_size=int(vocab_size), max_len=int(max_len), dropout=dropout, **cfg
    )


def _encoder_sizes(cfg: Mapping[str, Any]) -> dict:
    cfg = dict(cfg)
    if cfg.get("variant"):
        cfg = {**vit.decode_variant(cfg["variant"]), **cfg}
    return cfg


def build_encoder(vit_config: Mapping[str, Any]):
    cfg = dict(vit_config)
    cfg["num_classes"] = None
    return vit.Model(**cfg)


def encoder_params(spec: common.EncoderSpec, seed: int = 0) -> dict:
    """Initialises the encoder at the spec's resolution, then loads its npz."""
    enc = build_encoder(spec.vit_config)
    res = spec.resolution
    init = jax.jit(lambda r: enc.init(r, jnp.zeros((1, res, res, 3), jnp.float32)))(
        jax.random.PRNGKey(seed)
    )["params"]
    import flax.linen as nn

    init = nn.unbox(init)
    if spec.checkpoint:
        init = bv_npz.load_vit_params(init, spec.checkpoint, dict(spec.vit_config))
    else:
        log.warning("REC protocol: encoder %s has no checkpoint (random encoder)", spec.name)
    return jax.tree.map(lambda x: np.asarray(x, np.float32), init)


def make_encode_fn(spec: common.EncoderSpec):
    """``(frozen, image uint8 [B, H, W, 3]) -> tokens [B, N, D]`` (no gradient)."""
    enc = build_encoder(spec.vit_config)
    prep = spec.preprocessing

    def encode(frozen, image):
        x = prep(image)  # [B, S, S, 3] float, normalised as the encoder was trained
        _, out = enc.apply({"params": frozen["encoder"]}, x, train=False)
        return jax.lax.stop_gradient(out["encoded"])  # [B, N, D] un-pooled

    return encode


def loss_slots(weights: jax.Array, num_slots: int) -> tuple[jax.Array, jax.Array]:
    """The sequence positions that carry the loss, as ``num_slots`` slots per row.

    ``pack_prompt_and_target`` writes each row's box tokens contiguously (weight
    1) after its prompt (weight 0), at most ``num_slots`` of them (the task's
    target length). Slot k of row b is position ``first_b + k``, ``first_b`` the
    row's first weighted position.

    Args:
      weights: [B, L] ``decoder_loss_weights``.
      num_slots: K >= the number of weighted positions of any row.

    Returns:
      ``(positions [B, K] int32 in [0, L), slot weights [B, K] float32)``: the
      slot weights are the weights at those positions, 0 for slots past the end
      of the sequence (their position is clipped to L - 1).
    """
    weights = jnp.asarray(weights)
    length = weights.shape[1]
    first = jnp.argmax(weights > 0, axis=1).astype(jnp.int32)  # [B]; 0 for a row without weights
    positions = first[:, None] + jnp.arange(num_slots, dtype=jnp.int32)[None]  # [B, K]
    inside = positions < length
    positions = jnp.minimum(positions, length - 1)
    slot_weights = jnp.take_along_axis(weights, positions, axis=1).astype(jnp.float32)
    return positions, slot_weights * inside


def make_loss_fn(spec: common.EncoderSpec, decoder: decoder_lib.Decoder, num_slots: int):
    """Trainer ``loss_fn(params, frozen, batch, rng)``: token cross-entropy on the box.

    Only the ``num_slots`` box positions of each row (:func:`loss_slots`) go
    through the vocabulary projection: the same loss and gradients as the full
    [B, L, V] logits with the prompt's weights at 0, at a fraction of the cost
    (the projection is most of this small decoder's step). A batch carrying
    ``encoded`` (the frozen encoder's tokens, ``_rec_batches`` with a feature
    cache) skips the encoder.
    """
    encode = make_encode_fn(spec)

    def loss_fn(params, frozen, batch, rng):
        if "encoded" in batch:  # the frozen encoder's tokens, from a FrozenFeatureCache
            encoded = batch["encoded"]  # [B, N, D]
        else:
            encoded = encode(frozen, batch["image"])  # [B, N, D]
        positions, weights = loss_slots(batch["decoder_loss_weights"], num_slots)  # [B, K]
        logits = decoder.apply(
            {"params": params["decoder"]},
            encoded,
            batch["decoder_input_tokens"],
            train=True,
            positions=positions,
            rngs={"dropout": rng},
        )  # [B, K, V]
        targets = jnp.take_along_axis(batch["decoder_target_tokens"], positions, axis=1)
        total, count, correct = losses.token_cross_entropy(logits, targets, weights)
        denom = jnp.maximum(count, 1.0)
        return total / denom, {"token_accuracy": correct / denom}

    return loss_fn


def make_predict_fn(spec: common.EncoderSpec, decoder: decoder_lib.Decoder, max_len: int):
    """jit ``(params, frozen, image, prefix [B, P]) -> tokens [B, max_len]`` (greedy)."""
    encode = make_encode_fn(spec)

    @jax.jit
    def predict(params, frozen, image, prefix):
        encoded = encode(frozen, image)  # [B, N, D]
        return generation.greedy_continuation(
            decoder, params["decoder"], encoded, prefix, max_len=max_len
        )

    return predict


# ---------------------------------------------------------------------------
# Evaluation.


def _parse_eval(entries: Sequence[str], task: str) -> list[tuple[str, str]]:
    out = []
    for e in entries:
        t, s = e.split(":", 1) if ":" in e else (task, e)
        out.append((t, s))
    return out


def evaluate(
    spec: common.EncoderSpec,
    decoder: decoder_lib.Decoder,
    params,
    frozen,
    *,
    task: str,
    split: str,
    task_feature_lengths: Mapping[str, int],
    batch_size: int = 100,
    num_examples: int | None = None,
    predictions_path: str | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Greedy-decodes the boxes of one split; -> (metrics, prediction records)."""

    data = load_task_data(
        common.get_task(task),
        split=split,
        task_feature_lengths=task_feature_lengths,
        image_size=spec.resolution,
        num_examples=num_examples,
    )
    if not len(data):
        raise ValueError(f"REC protocol: {task}/{split} has no examples")
    max_len = decoder.max_len
    predict = make_predict_fn(spec, decoder, max_len)
    vocab = data.task.output_features["targets"].vocabulary

    def decode_batch(idx):
        prompt = data.features["encoder_input_tokens"][idx]  # [B, Li], EOS-terminated
        prefix = np.zeros((len(idx), max_len), np.int32)
        prefix[:, : prompt.shape[1]] = prompt[:, :max_len]
        tokens = np.asarray(predict(params, frozen, data.features["image"][idx], prefix))
        return generation.detokenize(vocab, tokens, start=(prompt != 0).sum(axis=1))

    metrics, records = score_task(data, decode_batch, batch_size=batch_size)
    if predictions_path:
        write_jsonl(predictions_path, records)
    return metrics, records


# ---------------------------------------------------------------------------
# The job.


def rec_protocol(
    *,
    model_dir: str,
    encoder: common.EncoderSpec,
    task: str = "refcoco_all",
    eval: Sequence[str] = ("validation",),
    task_feature_lengths: Mapping[str, int] = (("inputs", 32), ("targets", 16)),
    train_steps: int = 20000,
    batch_size: int = 256,
    depth: int = 6,
    width: int | None = None,
    num_heads: int | None = None,
    mlp_dim: int | None = None,
    dropout: float = 0.0,
    learning_rate: float = 1e-3,
    warmup_steps: int = 1000,
    weight_decay: float = 1e-4,
    schedule: str = "cosine",
    eval_batch_size: int = 256,
    num_eval_examples: int | None = None,
    checkpoint_every: int | None = 1000,
    log_every: int = 100,
    data_dir: str | None = None,
    seed: int = 0,
    data_seed: int = 0,
    progress: bool = True,
    tensorboard: bool = False,
    feature_cache_mb: int = 0,
) -> dict:
    """Trains the REC decoder on ``task`` with ``encoder`` frozen; evaluates.

    Args:
      model_dir: checkpoints (decoder only), metrics.jsonl, predictions.
      encoder: a ``transfer.encoder(...)`` spec (gin: ``@transfer.encoder()``).
      task: training task or mixture (``refcoco_all``, ``shapes_refexp``).
      eval: evaluation entries ``"split"`` (of ``task``) or ``"task:split"``.
      task_feature_lengths: ``{"inputs": prompt tokens, "targets": box tokens}``.
      depth / width / num_heads / mlp_dim: decoder sizes (None: the
        encoder's width, heads and MLP).
      learning_rate, warmup_steps, weight_decay, schedule: AdamW
        (``locca.training.optimizers.make_optimizer``).
      feature_cache_mb: host memory (MiB) for the frozen encoder's tokens of
        the training images (``locca.training.frozen_features``): each image
        is encoded once and the train step runs the decoder only; beyond the
        limit, images are encoded every time. 0: the encoder runs in every step.

    Returns:
      ``{"metrics": {"{task}/{split}/acc@0.5": %, ".../mean_iou": ..., ...},
      "step": int, "predictions": {entry: path}, "frozen": frozen tree,
      "params": trained decoder tree}``.
    """
    common.set_data_dir(data_dir)
    lengths = dict(task_feature_lengths)
    max_len = int(lengths["inputs"]) + int(lengths["targets"])
    t_obj = common.subtasks(task)[0]
    vocab_size = t_obj.output_features["targets"].vocabulary.vocab_size
    decoder = build_decoder(
        encoder.vit_config,
        vocab_size=vocab_size,
        max_len=max_len,
        depth=depth,
        width=width,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
        dropout=dropout,
    )
    frozen = {"encoder": encoder_params(encoder, seed=seed)}
    init = {"decoder": init_decoder(decoder, encoder, max_len, seed + 1)}
    optimizer = optimizers.make_optimizer(
        "adamw",
        lr=learning_rate,
        warmup_steps=min(warmup_steps, max(1, train_steps // 10)),
        total_steps=train_steps,
        schedule=schedule,
        weight_decay=weight_decay,
        clip_norm=1.0,
    )
    base = common.train_batches(
        task,
        task_feature_lengths=lengths,
        image_size=encoder.resolution,
        batch_size=batch_size,
        seed=data_seed,
    )
    cache = None
    if feature_cache_mb:
        encode = jax.jit(make_encode_fn(encoder))
        frozen_on_device = jax.device_put(frozen)
        cache = FrozenFeatureCache(
            lambda images: encode(frozen_on_device, images), max_bytes=feature_cache_mb * 2**20
        )
    os.makedirs(model_dir, exist_ok=True)
    _write_info(model_dir, encoder, decoder, task)
    state = trainer_train(
        model_dir=model_dir,
        init_params=init,
        loss_fn=make_loss_fn(encoder, decoder, int(lengths["targets"])),
        optimizer=optimizer,
        batches=_rec_batches(base, max_len, features=cache),
        num_steps=train_steps,
        frozen_params=frozen,
        seed=seed,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=1,
        log_every=log_every,
        progress=progress,
        tensorboard=tensorboard,
        learning_rate_fn=optimizer.learning_rate_fn,
    )
    params = jax.tree.map(np.asarray, jax.device_get(state.params))
    step = int(jax.device_get(state.step))
    metrics, preds = _evaluate_entries(
        encoder, decoder, params, frozen, model_dir=model_dir, step=step,
        entries=_parse_eval(eval, task), task=task, task_feature_lengths=lengths,
        batch_size=eval_batch_size, num_examples=num_eval_examples,
    )  # fmt: skip
    cache_stats = None
    if cache is not None:
        cache_stats = {"images": len(cache), "mib": round(cache.nbytes / 2**20, 2),
                       "hits": cache.hits, "encoded": cache.misses}  # fmt: skip
        log.info("REC protocol: frozen-feature cache %s", cache_stats)
    atomic_write_json(
        os.path.join(model_dir, "rec_metrics.json"),
        {"step": step, "metrics": metrics, "feature_cache": cache_stats},
        indent=1,
        sort_keys=True,
    )
    return {"metrics": metrics, "step": step, "predictions": preds, "frozen": frozen,
            "params": params}  # fmt: skip


def init_decoder(decoder, encoder: common.EncoderSpec, max_len: int, seed: int) -> dict:
    """The decoder's initial parameters (flax ``Partitioned`` boxes kept: the
    trainer reads the logical axes), for the encoder's token grid
    ([1, (resolution / patch)^2, width]) and ``max_len`` decoder tokens."""
    n_tok = (encoder.resolution // int(_patch(encoder.vit_config))) ** 2
    d_enc = int(_encoder_sizes(encoder.vit_config)["width"])
    tokens = jnp.zeros((1, n_tok, d_enc), jnp.float32)  # [1, N, D]
    ids = jnp.zeros((1, max_len), jnp.int32)  # [1, L]
    return jax.jit(lambda r: decoder.init(r, tokens, ids)["params"])(jax.random.PRNGKey(seed))


def _evaluate_entries(
    encoder, decoder, params, frozen, *, model_dir, step, entries, task, task_feature_lengths,
    batch_size, num_examples,
) -> tuple[dict, dict]:  # fmt: skip
    """:func:`evaluate` on each ``(task, split)`` entry, predictions under
    ``model_dir/predictions``. Returns ``({"[task/]split/metric": v}, {"task:split": path})``
    (the training task's entries unprefixed)."""
    metrics, preds = {}, {}
    for t, split in entries:
        t0 = time.time()
        path = os.path.join(model_dir, "predictions", f"{t}_{split}_{step}.jsonl")
        m, _ = evaluate(
            encoder, decoder, params, frozen, task=t, split=split,
            task_feature_lengths=task_feature_lengths, batch_size=batch_size,
            num_examples=num_examples, predictions_path=path,
        )  # fmt: skip
        key = split if t == task else f"{t}/{split}"
        metrics.update({f"{key}/{k}": v for k, v in m.items()})
        preds[f"{t}:{split}"] = path
        log.info("REC %s/%s: %s (%.1fs)", t, split, m, time.time() - t0)
    return metrics, preds


def _patch(vit_config: Mapping[str, Any]) -> int:
    cfg = _encoder_sizes(vit_config)
    ps = cfg.get("patch_size", 16)
    return int(ps[0] if not np.isscalar(ps) else ps)


def _write_info(model_dir, spec, decoder, task) -> None:
    info = {
        "encoder": {"name": spec.name, "checkpoint": spec.checkpoint, "frozen": True},
        "decoder": {
            "width": decoder.width,
            "depth": decoder.depth,
            "num_heads": decoder.num_heads,
            "mlp_dim": decoder.mlp_dim,
            "max_len": decoder.max_len,
            "vocab_size": decoder.vocab_size,
        },
        "task": task,
    }
    atomic_write_json(os.path.join(model_dir, "rec_info.json"), info, indent=1, sort_keys=True)
