"""Evaluation during LocCa pretraining: an evaluator for the one trainer.

``PretrainEvaluator(...)(step, params, frozen_params) -> {name: float}``:

* ``val_loss_{t}`` / ``val_accuracy_{t}``: teacher-forced per-task loss and
  token accuracy on held-out images (no parallel prediction, no dropout).
* Zero-shot ARef: for each held-out example the ``aref`` target
  ``ARef : {c} : {b}`` gives the prompt ``ARef : {c} :`` and the ground-truth
  box ``b``; the model greedily continues the prompt and the continuation is
  parsed with ``BoxCodec.decode`` (unparseable = wrong).
  ``aref_acc@0.5`` (IoU >= 0.5) with its 95% Wilson interval
  (``aref_acc@0.5_low/_high``), ``aref_mean_iou`` with its 95% interval,
  ``aref_num_unparsed``, ``aref_num_degenerate`` (zero-area boxes),
  ``aref_parse_rate``, and trivial baselines on the same examples, each with
  its interval: ``..._whole_image`` (box [0, 0, 1, 1]), ``..._mean_box`` (the
  mean box of the training split's ``aref`` targets), ``..._largest_region``
  (the image's largest region, without reading the prompt) and
  ``..._random_region`` (a uniformly random region of the image, as its
  expectation over the regions). The last two need the task's raw
  ``region_boxes`` feature and are left out when it is absent.
* Where the ARef failure sits (``"loc"`` boxes only): ``aref_acc@0.5_objects{1,2,3,4+}``
  splits the accuracy by the number of regions of the image (``..._count_...``
  their sizes); on the first ``num_probe`` held-out examples, teacher-forced
  (ground-truth prompt and earlier coordinates given) ``aref_tf_acc_{ymin,
  xmin,ymax,xmax}`` (exact bin) and ``aref_tf_bin_error_*`` (mean absolute
  bin error of the arg-max bin), and the cross-attention mass on the patches
  that overlap the ground-truth box at the position predicting the first
  coordinate, per decoder layer: ``aref_xattn_in_box_l{i}`` (mean over
  heads), ``aref_xattn_in_box_max_l{i}`` (best head) and
  ``aref_xattn_in_box_uniform`` (the mass of uniform attention: the box's
  patch fraction). A decoder that looks at the object has mass well above
  uniform.
* A PNG of sample outputs in ``model_dir/samples/step_XXXXXX.png``: greedy
  captions, GCap continuations of the held-out GCap prompts (box drawn) and
  ARef predictions (predicted box red, ground truth green).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from locca import boxes as boxes_lib
from locca import generation, region_text
from locca.box_drawing import draw_box
from locca.models import locca as locca_lib

log = logging.getLogger(__name__)

__all__ = ["PretrainEvaluator"]


class PretrainEvaluator:
    """Validation losses, zero-shot ARef Acc@0.5 vs baselines, and sample PNGs.

    Args:
      model: the ``LocCa`` module.
      task: the seqio pretraining task (object) with image/cap/aref/gcap.
      dataset_fn: ``dataset_fn(split)`` -> tf.data of the split's examples as
        unbatched model features, in order, one epoch (the pretraining entry
        point passes its ``make_dataset``; the feature converter lives in
        ``tasks/``, above this library).
      task_feature_lengths: {cap, aref, gcap} token lengths (as in training).
      image_size: model input side (pixels).
      tasks: the tasks trained (losses are reported for these; ARef is
        evaluated only when "aref" is among them unless ``aref_eval=True``).
      model_dir: where sample PNGs go (None: no PNG).
      split: held-out split; num_examples: how many of its examples.
      batch_size: evaluation batch size.
      box_encoding / num_bins / box_order: the ``BoxCodec`` of the task.
      num_mean_box_examples: training examples averaged for the mean-box
        baseline.
      num_render: examples drawn in the PNG (0: none).
      num_probe: held-out examples of the teacher-forced box-token and
        cross-attention probe (0: off; ``"loc"`` boxes only).
    """

    def __init__(
        self,
        *,
        model: locca_lib.LocCa,
        task: Any,
        dataset_fn: Callable[[str], Any],
        task_feature_lengths: Mapping[str, int],
        image_size: int,
        tasks: Sequence[str] = locca_lib.TASKS,
        model_dir: str | None = None,
        split: str = "validation",
        num_examples: int = 200,
        batch_size: int = 50,
        box_encoding: str = "text",
        num_bins: int | None = None,
        box_order: str = "yxyx",
        num_mean_box_examples: int = 1000,
        num_render: int = 8,
        aref_eval: bool | None = None,
        caption_len: int | None = None,
        num_probe: int = 250,
    ):
        self.model = model
        self.task = task
        self.lengths = {k: int(v) for k, v in dict(task_feature_lengths).items()}
        self.image_size = int(image_size)
        self.tasks = tuple(tasks)
        self.model_dir = model_dir
        self.batch_size = int(batch_size)
        self.codec = boxes_lib.BoxCodec(box_encoding, num_bins, box_order)
        self.vocab = self.task.output_features["cap"].vocabulary
        self.num_render = int(num_render)
        self.aref_eval = ("aref" in self.tasks) if aref_eval is None else bool(aref_eval)
        self.caption_len = int(caption_len or self.lengths["cap"])
        self.num_probe = int(num_probe)

        # Held-out examples, loaded once into host memory.
        exs = list(dataset_fn(split).take(num_examples).as_numpy_iterator())
        if not exs:
            raise ValueError(f"task {self.task.name}: split {split!r} has no examples")
        # The same examples before feature conversion: the image's regions
        # (for the oracle-free region baselines), when the task has them.
        raw = self.task.get_dataset(
            sequence_length=self.lengths, split=split, shuffle=False, seed=0, use_cached=False
        )
        self.region_boxes = None
        if "region_boxes" in raw.element_spec:
            raw = raw.map(lambda e: {"aref": e["aref"], "region_boxes": e["region_boxes"]})
            raw_exs = list(raw.take(len(exs)).as_numpy_iterator())
            same = len(raw_exs) == len(exs) and all(
                np.array_equal(r["aref"], e["aref_decoder_target_tokens"][: len(r["aref"])])
                for r, e in zip(raw_exs, exs)
            )
            if same:
                self.region_boxes = [np.asarray(r["region_boxes"], np.float64) for r in raw_exs]
            else:
                log.warning("raw and converted held-out examples differ; no region baselines")
        n = (len(exs) // self.batch_size) * self.batch_size or len(exs)
        self.batch_size = min(self.batch_size, n)
        self.data = {k: np.stack([e[k] for e in exs[:n]]) for k in exs[0]}
        self.num_examples = n

        # ARef prompts and ground-truth boxes from the held-out aref targets.
        self.aref_prompts, self.aref_gt = [], []
        for ids in self.data["aref_decoder_target_tokens"]:
            parsed = region_text.split_aref(self.vocab.decode(generation.ids_until_eos(ids)))
            box = self.codec.decode(parsed[1]) if parsed else None
            self.aref_prompts.append(parsed[0] if parsed and box is not None else None)
            self.aref_gt.append(box)
        if self.aref_eval:
            train_boxes = []
            for e in dataset_fn("train").take(num_mean_box_examples).as_numpy_iterator():
                p = region_text.split_aref(
                    self.vocab.decode(generation.ids_until_eos(e["aref_decoder_target_tokens"]))
                )
                b = self.codec.decode(p[1]) if p else None
                if b is not None:
                    train_boxes.append(b)
            self.train_mean_box = boxes_lib.mean_box(train_boxes)
        self._loss_fn = jax.jit(locca_lib.make_loss_fn(model, tasks=self.tasks, train=False))
        self._generate = jax.jit(self._generate_impl, static_argnames=("max_len", "banned"))
        # First tokens of the ARef / GCap task prefixes (banned when sampling captions).
        self.task_prefix_ids = tuple(
            sorted({int(self.vocab.encode(p)[0]) for p in region_text.TASK_PREFIXES})
        )

    # ------------------------------------------------------------------ decode
    def _generate_impl(self, params, images, prefix, *, max_len: int, banned=()):
        """Greedy continuation of ``prefix`` [B, P] (0-padded) for images [B, S, S, 3]."""
        encoded = self.model.apply(
            {"params": params}, locca_lib.preprocess_image(images), method=locca_lib.LocCa.encode
        )  # [B, N, D]
        return generation.greedy_continuation(
            self.model.decoder,
            params["decoder"],
            encoded,
            prefix,
            max_len=max_len,
            banned_first=tuple(banned),
        )

    def _prompt_ids(self, prompts: Sequence[str | None], width: int) -> np.ndarray:
        out = np.zeros((len(prompts), width), np.int32)
        for i, p in enumerate(prompts):
            if p is None:
                continue
            ids = list(self.vocab.encode(p))[: width - 1]
            out[i, : len(ids)] = ids
        return out

    def generate(
        self,
        params,
        images: np.ndarray,
        prompts: Sequence[str | None],
        max_len: int,
        banned: Sequence[int] = (),
    ):
        """Greedy continuations (text after the prompt) for each image.

        ``banned``: token ids that may not be generated first.
        """
        prefix = self._prompt_ids(prompts, max_len)
        toks = self._generate(
            params, jnp.asarray(images), prefix, max_len=max_len, banned=tuple(banned)
        )
        return generation.detokenize(self.vocab, np.asarray(toks), start=(prefix != 0).sum(1))

    # -------------------------------------------------------------- evaluate
    def __call__(self, step: int, params, frozen_params=None) -> dict[str, float]:
        params = locca_lib.merge_params(params, frozen_params or {})
        params = jax.device_get(params)
        out: dict[str, float] = {}
        sums: dict[str, float] = {}
        nb = 0
        for s in range(0, self.num_examples, self.batch_size):
            batch = {k: v[s : s + self.batch_size] for k, v in self.data.items()}
            _, aux = self._loss_fn(params, {}, batch, jax.random.PRNGKey(0))
            for k, v in aux.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            nb += 1
        for t in self.tasks:
            out[f"val_loss_{t}"] = sums[f"loss_{t}"] / nb
            out[f"val_accuracy_{t}"] = sums[f"accuracy_{t}"] / nb

        preds: list[np.ndarray | None] = []
        if self.aref_eval:
            aref, preds = self.zero_shot_aref(params)
            out.update(aref)
            if self.codec.encoding == "loc" and self.num_probe > 0:
                out.update(self.box_token_probe(params))
        if self.model_dir and self.num_render > 0 and jax.process_index() == 0:
            try:
                self.render(step, params, preds)
            except Exception as e:  # a plotting failure must not kill training
                log.warning("sample rendering failed at step %d: %s", step, e)
        return out

    def zero_shot_aref(self, params) -> tuple[dict[str, float], list[np.ndarray | None]]:
        """Greedy ARef on the held-out regions -> (``aref_*`` scores, box per example).

        The one generative evaluation (``locca.generation``): the decoder
        continues ``ARef : {text} :``; the continuation is parsed by the box
        codec (None = unparsed, counted wrong); scored against the ground truth
        and the trivial baselines. Examples whose target has no parseable box
        are left out (and get None).
        """
        rows = [i for i, g in enumerate(self.aref_gt) if g is not None]
        gts = [self.aref_gt[i] for i in rows]

        def decode_batch(idx):
            chosen = [rows[i] for i in idx]
            prompts = [self.aref_prompts[i] for i in chosen]
            return self.generate(params, self.data["image"][chosen], prompts, self.lengths["aref"])

        def metrics(targets, preds):
            out = self.aref_scores(preds, targets, rows)
            out["aref_parse_rate"] = float(np.mean([p is not None for p in preds]))
            out.update(self.aref_by_object_count(preds, targets, rows))
            return out

        result = generation.evaluate_generations(
            num_examples=len(rows),
            batch_size=self.batch_size,
            decode_batch=decode_batch,
            postprocess=lambda text, i: self.codec.decode(text),
            metric_fns=[metrics],
            targets=gts,
        )
        preds: list[np.ndarray | None] = [None] * self.num_examples
        for i, p in zip(rows, result.predictions):
            preds[i] = p
        return result.metrics, preds

    def aref_scores(
        self, preds: Sequence[np.ndarray | None], gts: Sequence[np.ndarray], rows: Sequence[int]
    ) -> dict[str, float]:
        """``aref_*`` scores of ``preds`` and of every trivial baseline (fractions).

        ``rows``: the held-out example index of each (pred, gt) pair.
        """
        out = {f"aref_{k}": v for k, v in boxes_lib.localisation_scores(preds, gts).items()}
        regions = None
        if self.region_boxes is not None:
            regions = [self.region_boxes[i] for i in rows]
        baselines = boxes_lib.baseline_scores(
            gts, train_mean_box=self.train_mean_box, regions=regions
        )
        for name, sc in baselines.items():
            for k in ("acc@0.5", "acc@0.5_low", "acc@0.5_high", "mean_iou"):
                if k in sc:
                    key = f"aref_{k}_{name}" if k != "mean_iou" else f"aref_mean_iou_{name}"
                    out[key] = sc[k]
        return out

    def aref_by_object_count(
        self, preds: Sequence[np.ndarray | None], gts: Sequence[np.ndarray], rows: Sequence[int]
    ) -> dict[str, float]:
        """Acc@0.5 split by the image's number of regions (1, 2, 3, 4+), with the
        largest-region and random-region baselines of the same group (fractions).

        ``aref_acc@0.5_objects{g}``, ``aref_count_objects{g}``,
        ``aref_acc@0.5_objects{g}_largest_region``, ``aref_acc@0.5_objects{g}_random_region``.
        """
        if self.region_boxes is None:
            return {}
        groups: dict[str, list[tuple[float, float, float]]] = {}
        for p, g, i in zip(preds, gts, rows):
            regions = self.region_boxes[i]
            k = len(regions)
            key = f"{k}" if k < 4 else "4+"
            hit = p is not None and float(boxes_lib.iou(p, g)) >= 0.5
            largest = float(boxes_lib.iou(boxes_lib.largest_region(regions), g)) >= 0.5
            groups.setdefault(key, []).append(
                (float(hit), float(largest), boxes_lib.random_region_hit(regions, g))
            )
        out = {}
        for key, vals in sorted(groups.items()):
            hit, largest, rand = np.mean(np.asarray(vals), axis=0)
            out[f"aref_acc@0.5_objects{key}"] = float(hit)
            out[f"aref_count_objects{key}"] = float(len(vals))
            out[f"aref_acc@0.5_objects{key}_largest_region"] = float(largest)
            out[f"aref_acc@0.5_objects{key}_random_region"] = float(rand)
        return out

    def box_token_probe(self, params) -> dict[str, float]:
        """Teacher-forced box-token accuracy and cross-attention on the box (see module doc)."""
        n = min(self.num_probe, self.num_examples)
        sp = self.vocab.tokenizer  # each location token is one piece
        loc_ids = np.array([sp.piece_to_id(t) for t in self.codec.location_tokens()])
        bin_of = {int(t): b for b, t in enumerate(loc_ids)}  # token id -> bin
        images = self.data["image"][:n]
        inputs = self.data["aref_decoder_input_tokens"][:n]  # [n, L]
        targets = self.data["aref_decoder_target_tokens"][:n]  # [n, L]
        logits, state = self.model.apply(
            {"params": params},
            locca_lib.preprocess_image(images),
            [inputs],
            [None],
            method=locca_lib.LocCa.decode_tasks,
            mutable=["intermediates"],
        )
        pred = np.asarray(jnp.argmax(logits[0], -1))  # [n, L]
        attn = _cross_attention_weights(state["intermediates"])  # per layer [n, H, L, N]
        yxyx = self.codec.order == "yxyx"
        names = ("ymin", "xmin", "ymax", "xmax") if yxyx else ("xmin", "ymin", "xmax", "ymax")
        acc: dict[str, list[float]] = {k: [] for k in names}
        err: dict[str, list[float]] = {k: [] for k in names}
        mass = [[] for _ in attn]
        uniform = []
        grid = int(round(np.sqrt(attn[0].shape[-1]))) if attn else 0
        for r in range(n):
            pos = np.flatnonzero(np.isin(targets[r], loc_ids))
            if len(pos) != 4:
                continue
            gt_bins = np.array([bin_of[int(t)] for t in targets[r, pos]])  # [4] written order
            for k, q, b in zip(names, pos, gt_bins):
                acc[k].append(float(pred[r, q] == targets[r, q]))
                if int(pred[r, q]) in bin_of:
                    err[k].append(abs(bin_of[int(pred[r, q])] - float(b)))
            if grid * grid == (attn[0].shape[-1] if attn else -1):
                box = self.codec.dequantize(gt_bins if yxyx else gt_bins[[1, 0, 3, 2]])
                inside = _patches_overlapping(box, grid)  # [N] bool
                uniform.append(float(inside.mean()))
                for layer, w in enumerate(attn):
                    mass[layer].append(w[r, :, pos[0], :][:, inside].sum(-1))  # [H]
        out = {}
        for k in names:
            if acc[k]:
                out[f"aref_tf_acc_{k}"] = float(np.mean(acc[k]))
            if err[k]:
                out[f"aref_tf_bin_error_{k}"] = float(np.mean(err[k]))
        if uniform:
            out["aref_xattn_in_box_uniform"] = float(np.mean(uniform))
            for layer, m in enumerate(mass):
                per_head = np.mean(np.stack(m), axis=0)  # [H]
                out[f"aref_xattn_in_box_l{layer}"] = float(per_head.mean())
                out[f"aref_xattn_in_box_max_l{layer}"] = float(per_head.max())
        return out

    # ---------------------------------------------------------------- render
    def render(self, step: int, params, aref_preds: Sequence[np.ndarray | None] = ()) -> str:
        """Draws captions, GCap outputs and ARef boxes of the first examples; returns the path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        k = min(self.num_render, self.num_examples)
        images = self.data["image"][:k]
        # Plain captions: the decoder starts from BOS for every task, so the
        # task-prefix tokens are banned as first token.
        captions = self.generate(
            params, images, [None] * k, self.caption_len, banned=self.task_prefix_ids
        )
        gcap_prompts, gcap_boxes = [], []
        for ids in self.data["gcap_decoder_target_tokens"][:k]:
            parsed = region_text.split_gcap(self.vocab.decode(generation.ids_until_eos(ids)))
            box = self.codec.decode(parsed[0]) if parsed else None
            gcap_prompts.append(parsed[0] if box is not None else None)
            gcap_boxes.append(box)
        if "gcap" in self.tasks:
            gcaps = self.generate(params, images, gcap_prompts, self.lengths["gcap"])
        else:  # a captioning-only model was never asked for GCap
            gcaps, gcap_boxes = [""] * k, [None] * k

        cols = min(4, k)
        rows = (k + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4.6 * rows), squeeze=False)
        size = images.shape[1]

        def draw(ax, box, colour, style="-", label=None):
            draw_box(ax, box, size=(size, size), colour=colour, style=style, label=label)

        for i in range(rows * cols):
            ax = axes[i // cols][i % cols]
            ax.axis("off")
            if i >= k:
                continue
            ax.imshow(images[i], interpolation="nearest")
            if gcap_boxes[i] is not None:
                draw(ax, gcap_boxes[i], "deepskyblue", label=f"GCap: {gcaps[i]}"[:40])
            if self.aref_eval and i < len(aref_preds):
                if self.aref_gt[i] is not None:
                    draw(ax, self.aref_gt[i], "lime")
                if aref_preds[i] is not None:
                    draw(ax, aref_preds[i], "red", "--")
            ref = region_text.aref_region(self.aref_prompts[i] or "")
            title = f"Cap: {captions[i]}"
            if self.aref_eval:
                title += f"\nARef: {ref}"
            ax.set_title(_wrap(title, 48), fontsize=7)
        fig.suptitle(
            f"step {step}: GCap box+text (blue), ARef gt (green) / pred (red dashed)", fontsize=9
        )
        fig.tight_layout()
        out_dir = os.path.join(self.model_dir, "samples")
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, f"step_{int(step):06d}.png")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path


def _cross_attention_weights(intermediates: Mapping) -> list[np.ndarray]:
    """The sown cross-attention weights [B, H, L, N] of each decoder block, in block order."""
    out = []
    blocks = intermediates.get("decoder", {})
    for name in sorted(blocks, key=lambda b: int(b.rsplit("_", 1)[-1])):  # encoderblock_{i}
        sown = blocks[name].get("CrossAttn", {}).get("attention_weights")
        if sown:
            out.append(np.asarray(sown[0]))
    return out


def _patches_overlapping(box: np.ndarray, grid: int) -> np.ndarray:
    """[grid * grid] bool, row-major: patch cells that overlap the yxyx box (normalised)."""
    edges = np.arange(grid + 1) / grid
    rows = (edges[1:] > box[0]) & (edges[:-1] < box[2])  # [grid]
    cols = (edges[1:] > box[1]) & (edges[:-1] < box[3])
    return (rows[:, None] & cols[None, :]).reshape(-1)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:4])
