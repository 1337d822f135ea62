r"""Run a PaLI transfer model on a task split or on one image.

    # a task split -> OUTPUT_DIR/predictions/{task}_{step}.jsonl
    python -m transfer.infer --gin_file=gin/runs/infer.gin \
        --gin_file=gin/models/t5_tiny.gin --gin_file=gin/encoders/locca_tiny.gin \
        --gin_file=gin/tasks/shapes_refexp.gin \
        --gin.CHECKPOINT_PATH="'runs/transfer/refexp'" --gin.INFER_OUTPUT_DIR="'runs/infer'"

    # one image and prompt -> OUTPUT_DIR/prediction.json (+ prediction.png with boxes)
    python -m transfer.infer ... --image scene.png --prompt "locate en the red circle"

When the decoded text contains boxes (``locca.boxes.BoxCodec``; the task's
box encoding), a PNG of the image with the predicted boxes is written next to
the predictions (for a split: the first ``num_draw`` examples).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping

import jax
import numpy as np

from locca import generation
from locca import vocab as vocab_lib
from locca.box_drawing import draw_box
from locca.boxes import BoxCodec
from locca.io_utils import atomic_write_json
from locca.models import pali
from transfer import common, gin_flags
from transfer import eval as eval_lib

log = logging.getLogger("transfer.infer")


def _load_image(path: str, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(im, np.uint8)  # [S, S, 3]
    except FileNotFoundError:
        raise FileNotFoundError(f"--image {path}: no such file") from None
    except OSError as e:
        raise ValueError(f"--image {path}: not a readable image ({e})") from None


def _vocabulary():
    """The vocabulary the registered tasks use ($LOCCA_VOCAB or the default)."""
    return (
        vocab_lib.task_vocabulary()
        if hasattr(vocab_lib, "task_vocabulary")
        else (vocab_lib.default_vocabulary())
    )


def _tokenize_prompt(prompt: str, length: int) -> np.ndarray:
    ids = list(_vocabulary().encode(prompt))[: length - 1] + [1]  # EOS as the tasks
    out = np.zeros((length,), np.int32)
    out[: len(ids)] = ids
    return out


def _find_boxes(text: str, codec) -> list[np.ndarray]:
    """Every box in a decoded string (one per ';'-separated part or the whole)."""
    parts = [p for p in re.split(r"[;\n]", text) if p.strip()] or [text]
    boxes = [codec.decode(p) for p in parts]
    return [b for b in boxes if b is not None]


def draw_boxes(image: np.ndarray, boxes, labels, path: str, scale: int = 4) -> None:
    """Saves ``image`` (uint8 [H, W, 3]) upscaled ``scale``x with boxes (yxyx in [0, 1])."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.asarray(image, np.uint8)).resize(
        (image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST
    )
    d = ImageDraw.Draw(im)
    for i, b in enumerate(boxes):
        label = labels[i] if labels and i < len(labels) else None
        draw_box(d, b, size=im.size, colour=(255, 0, 0), line_width=2, label=label)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    im.save(path)


def infer(
    *,
    model: common.ModelBundle,
    output_dir: str,
    checkpoint_path: str | None = None,
    step: int | None = None,
    mixture_or_task_name: str | None = None,
    split: str = "validation",
    task_feature_lengths: Mapping[str, int] = (("inputs", 32), ("targets", 32)),
    image: str | None = None,
    prompt: str | None = None,
    num_examples: int | None = None,
    batch_size: int = 32,
    decode_method: str = "greedy",
    max_decode_len: int | None = None,
    beam_size: int = 4,
    alpha: float = 0.6,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    box_encoding: str = "text",
    num_bins: int | None = None,
    box_order: str = "yxyx",
    num_draw: int = 8,
    data_dir: str | None = None,
) -> list[dict]:
    """Predicts and writes the results; returns the prediction records.

    Args:
      model: the built model (same gin files as training).
      output_dir: where predictions (and PNGs) are written.
      checkpoint_path: a run's model_dir or ``checkpoints/<step>``; None runs
        the initial parameters (random LM unless ``INITIAL_CHECKPOINT_PATH``).
      step: checkpoint step (default: latest).
      mixture_or_task_name, split, num_examples: the task mode.
      image, prompt: the single-image mode (both required there).
      box_encoding, num_bins, box_order: how boxes are read from the output.
      num_draw: examples drawn as PNG (task mode, when boxes are predicted).
      Others: decoding, as ``pali.predict``.
    """
    common.set_data_dir(data_dir)
    lengths = dict(task_feature_lengths)
    bundle = model
    trainable, frozen, _, _ = common.initial_params(bundle, seed=0)
    got_step = 0
    if checkpoint_path:
        trainable, got_step = common.restore_params(checkpoint_path, step)
    codec = BoxCodec(encoding=box_encoding, num_bins=num_bins, order=box_order)
    os.makedirs(output_dir, exist_ok=True)
    decode_kw = dict(
        decode_method=decode_method,
        max_decode_len=int(max_decode_len or lengths["targets"]),
        beam_size=beam_size,
        alpha=alpha,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
    )

    if image is not None or prompt is not None:
        if image is None or prompt is None:
            raise ValueError("single-image mode needs both --image and --prompt")
        if _vocabulary().vocab_size > bundle.lm.config.vocab_size:
            raise ValueError(
                f"the task vocabulary has {_vocabulary().vocab_size} ids but the language "
                f"model has vocab_size={bundle.lm.config.vocab_size}"
            )
        pixels = _load_image(image, bundle.encoder.resolution)
        batch = {
            "image": pixels[None],
            "encoder_input_tokens": _tokenize_prompt(prompt, lengths["inputs"])[None],
        }
        fn = pali.make_predict_fn(bundle.model, **decode_kw)
        tokens = np.asarray(fn(trainable, frozen, batch, jax.random.PRNGKey(seed)))
        text = generation.detokenize(_vocabulary(), tokens)[0]
        boxes = _find_boxes(text, codec)
        record = {
            "image": image,
            "prompt": prompt,
            "prediction": text,
            "boxes": [[float(v) for v in b] for b in boxes],
            "step": got_step,
        }
        if boxes:
            png = os.path.join(output_dir, "prediction.png")
            draw_boxes(pixels, boxes, [text], png)
            record["png"] = png
        atomic_write_json(os.path.join(output_dir, "prediction.json"), record, indent=2)
        print(json.dumps(record))
        return [record]

    if not mixture_or_task_name:
        raise ValueError("give a task (MIXTURE_OR_TASK_NAME) or --image and --prompt")
    common.check_vocabulary(bundle, mixture_or_task_name)
    evaluator = eval_lib.InferenceEvaluator(
        bundle,
        mixture_or_task_name,
        split=split,
        task_feature_lengths=lengths,
        batch_size=batch_size,
        num_examples=num_examples,
        predictions_dir=None,
        seed=seed,
        **decode_kw,
    )
    metrics = evaluator(got_step, trainable, frozen)
    all_records = []
    for name, records in evaluator.last_predictions.items():
        data = evaluator.data[name]
        drawn = 0
        for rec, ex in zip(records, data.examples):
            boxes = _find_boxes(rec["prediction"], codec)
            rec["boxes"] = [[float(v) for v in b] for b in boxes]
            if boxes and drawn < num_draw:
                png = os.path.join(output_dir, "png", f"{name}_{rec['index']}.png")
                draw_boxes(ex["image"], boxes, [rec["prediction"]], png)
                rec["png"] = png
                drawn += 1
        eval_lib.write_jsonl(
            os.path.join(output_dir, "predictions", f"{name}_{got_step}.jsonl"), records
        )
        all_records.extend(records)
    atomic_write_json(
        os.path.join(output_dir, "metrics.json"), {"step": got_step, **metrics}, indent=2
    )
    print(json.dumps({"step": got_step, **metrics}))
    return all_records


def main(argv):
    del argv
    from absl import flags

    import gin

    kw = {}
    if flags.FLAGS.image is not None:
        kw["image"] = flags.FLAGS.image
    if flags.FLAGS.prompt is not None:
        kw["prompt"] = flags.FLAGS.prompt
    gin.get_configurable("transfer.infer")(**kw)


def _define_flags():
    from absl import flags

    flags.DEFINE_string("image", None, "Single-image mode: the image file.")
    flags.DEFINE_string("prompt", None, 'Single-image mode: the prompt, e.g. "caption en".')


def register_configurables() -> None:
    """gin: ``transfer.evaluate`` and the shared pieces (eval.py) and ``transfer.infer``."""
    eval_lib.register_configurables()
    gin_flags.register_configurable(infer, "infer", "transfer")


if __name__ == "__main__":
    _define_flags()
    gin_flags.run(main, register_configurables)
