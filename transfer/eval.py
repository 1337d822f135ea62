r"""Evaluate PaLI transfer checkpoints on a seqio task or mixture.

    python -m transfer.eval --gin_file=gin/runs/eval.gin \
        --gin_file=gin/models/t5_tiny.gin --gin_file=gin/encoders/locca_tiny.gin \
        --gin_file=gin/tasks/shapes_vqa.gin \
        --gin.CHECKPOINT_PATH="'runs/transfer/vqa'" --gin.EVAL_OUTPUT_DIR="'runs/eval/vqa'"

``CHECKPOINT_PATH`` is a run's ``MODEL_DIR`` (every checkpoint in it, or the
latest with ``evaluate.all_checkpoints = False``) or one
``.../checkpoints/<step>`` directory. For each checkpoint and each task of the
mixture: decode (greedy / beam / sample over the KV cache), detokenize,
postprocess with the task's ``postprocess_fn``, score with its ``metric_fns``,
write ``predictions/{task}_{step}.jsonl`` and one line per checkpoint in
``metrics.jsonl`` (``{"step": s, "{task}/{metric}": value, ...}``).
``evaluate.export_dir`` additionally writes test-server files
(``tasks/exports.py``) for caption and VQA-style tasks.

:class:`InferenceEvaluator` is also the periodic evaluator of
``transfer.train`` (the trainer calls it as ``(step, params, frozen)``).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from locca import generation
from locca.io_utils import atomic_write_json
from locca.models import pali
from locca.training import writers
from transfer import common, gin_flags

log = logging.getLogger("transfer.eval")


def _jsonable(x: Any) -> Any:
    if isinstance(x, bytes):
        return x.decode("utf-8", errors="replace")
    if isinstance(x, np.ndarray):
        if x.dtype.kind in "SO":
            return [_jsonable(v) for v in x.tolist()]
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float | int | str | bool) or x is None:
        return x
    return str(x)


def _flatten_metrics(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten_metrics(f"{prefix}/{k}", v, out)
        return
    try:
        out[prefix] = float(value)
    except (TypeError, ValueError):
        log.warning("metric %s is not a number (%r); not logged", prefix, value)


_META_KEYS = (
    "id",
    "question_id",
    "image_id",
    "question_type",
    "answer_type",
    "issimple",
    "question",
    "expression",
    "box",
)


class _TaskData:
    """One task's evaluation examples, loaded once: model features + metadata."""

    def __init__(self, task, *, split, task_feature_lengths, image_size, num_examples):
        from tasks.feature_converters import ImageTextFeatureConverter

        self.task = task
        ds = task.get_dataset(
            sequence_length=dict(task_feature_lengths),
            split=split,
            shuffle=False,
            num_epochs=1,
            use_cached=False,
        )
        if num_examples:
            ds = ds.take(num_examples)
        conv = ImageTextFeatureConverter(image_size=image_size)
        model_ds = conv(ds, dict(task_feature_lengths))
        self.examples = list(ds.as_numpy_iterator())
        feats = list(model_ds.as_numpy_iterator())
        if len(feats) != len(self.examples):
            raise RuntimeError(f"{task.name}: feature converter changed the example count")
        self.features = (
            {k: np.stack([f[k] for f in feats]) for k in ("image", "encoder_input_tokens")}
            if feats
            else {}
        )
        self.targets = [
            task.postprocess_fn(
                _text(ex.get("targets_pretokenized", b"")), example=ex, is_target=True
            )
            for ex in self.examples
        ]

    def __len__(self):
        return len(self.examples)


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


# Evaluation data of generated (in-memory) tasks, kept across evaluators: a job that
# evaluates several models on the same tasks (the demo's encoders, an experiment's
# cells) loads each split once. Keyed on the task object itself (kept alive by the
# key) and the loading arguments; file-backed tasks are read again every time.
_TASK_DATA_CACHE: collections.OrderedDict = collections.OrderedDict()
_TASK_DATA_CACHE_SIZE = 32


def load_task_data(task, **kwargs) -> _TaskData:
    """A task split's evaluation data (``_TaskData`` keyword arguments), cached as above."""
    if not callable(getattr(task.source, "examples", None)):
        return _TaskData(task, **kwargs)
    key = (task, task.name, json.dumps(kwargs, sort_keys=True, default=str))
    if key in _TASK_DATA_CACHE:
        _TASK_DATA_CACHE.move_to_end(key)
        return _TASK_DATA_CACHE[key]
    data = _TASK_DATA_CACHE[key] = _TaskData(task, **kwargs)
    while len(_TASK_DATA_CACHE) > _TASK_DATA_CACHE_SIZE:
        _TASK_DATA_CACHE.popitem(last=False)
    return data


class InferenceEvaluator:
    """Decode -> postprocess -> metric_fns on one task or mixture split.

    Called as ``evaluator(step, params, frozen) -> {"{task}/{metric}": value}``
    (the trainer's evaluator signature); writes
    ``predictions_dir/{task}_{step}.jsonl`` when ``predictions_dir`` is set.

    Args:
      bundle: the built model (``common.build_model``).
      task_name: seqio task or mixture; a mixture is evaluated per task.
      split: dataset split.
      task_feature_lengths: {"inputs": Li, "targets": Lt}.
      batch_size: decoding batch (the last batch is padded, then cut).
      num_examples: evaluate the first N examples of each task (None: all).
      decode_method, max_decode_len, beam_size, alpha, temperature, top_k,
        top_p: see ``pali.predict``; max_decode_len defaults to Lt.
      seed: sampling seed (decode_method="sample").
    """

    def __init__(
        self,
        bundle: common.ModelBundle,
        task_name: str,
        *,
        split: str = "validation",
        task_feature_lengths: Mapping[str, int],
        batch_size: int = 32,
        num_examples: int | None = None,
        predictions_dir: str | None = None,
        decode_method: str = "greedy",
        max_decode_len: int | None = None,
        beam_size: int = 4,
        alpha: float = 0.6,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
    ):
        self.bundle = bundle
        self.task_name = task_name
        self.split = split
        self.task_feature_lengths = dict(task_feature_lengths)
        self.batch_size = int(batch_size)
        self.num_examples = num_examples
        self.predictions_dir = predictions_dir
        self.decode_method = decode_method
        self.seed = seed
        self.max_decode_len = int(max_decode_len or self.task_feature_lengths["targets"])
        self._predict = pali.make_predict_fn(
            bundle.model,
            decode_method=decode_method,
            max_decode_len=self.max_decode_len,
            beam_size=beam_size,
            alpha=alpha,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        )
        self._data: dict[str, _TaskData] | None = None
        self.last_predictions: dict[str, list[dict]] = {}

    @property
    def data(self) -> dict[str, _TaskData]:
        if self._data is None:
            self._data = {}
            for task in common.subtasks(self.task_name):
                self._data[task.name] = load_task_data(
                    task,
                    split=self.split,
                    task_feature_lengths=self.task_feature_lengths,
                    image_size=self.bundle.encoder.resolution,
                    num_examples=self.num_examples,
                )
                log.info(
                    "eval %s/%s: %d examples", task.name, self.split, len(self._data[task.name])
                )
        return self._data

    def __call__(self, step: int, params, frozen) -> dict[str, float]:
        results: dict[str, float] = {}
        rng = jax.random.PRNGKey(self.seed)
        for name, data in self.data.items():
            t0 = time.perf_counter()
            if not len(data):
                log.warning("eval %s/%s: no examples", name, self.split)
                continue
            vocab = data.task.output_features["targets"].vocabulary

            def decode_batch(idx, data=data, vocab=vocab):
                batch = {k: v[idx] for k, v in data.features.items()}
                step_rng = jax.random.fold_in(rng, int(idx[0]))  # batch start: seeded per batch
                tokens = self._predict(params, frozen, batch, step_rng)  # [B, max_decode_len]
                return generation.detokenize(vocab, np.asarray(jax.device_get(tokens)))

            metrics, records = score_task(data, decode_batch, batch_size=self.batch_size)
            results.update({f"{name}/{k}": v for k, v in metrics.items()})
            results[f"{name}/eval_seconds"] = time.perf_counter() - t0
            self.last_predictions[name] = records
            if self.predictions_dir and jax.process_index() == 0:
                write_jsonl(os.path.join(self.predictions_dir, f"{name}_{step}.jsonl"), records)
        log.info("eval step %d: %s", step, results)
        return results


def score_task(
    data: _TaskData, decode_batch, *, batch_size: int
) -> tuple[dict[str, float], list[dict]]:
    """The one generative evaluation of a seqio task split: decode -> postprocess -> metric.

    ``decode_batch(indices [B]) -> B texts`` is the pluggable decode function
    (PaLI decoding in :class:`InferenceEvaluator`, the REC protocol's decoder
    continuing the prompt in ``transfer.rec_protocol``); the loop is
    ``locca.generation.evaluate_generations``. Returns the task's metrics
    (flattened to ``"a/b"`` names, floats) and one prediction record per
    example (index, inputs, raw prediction, postprocessed prediction, target,
    and the example's metadata keys).
    """
    result = generation.evaluate_generations(
        num_examples=len(data),
        batch_size=batch_size,
        decode_batch=decode_batch,
        postprocess=lambda text, i: data.task.postprocess_fn(
            text, example=data.examples[i], is_target=False
        ),
        metric_fns=data.task.predict_metric_fns,
        targets=data.targets,
    )
    metrics: dict[str, float] = {}
    for k, v in result.metrics.items():
        _flatten_metrics(k, v, metrics)
    records = [
        {
            "index": i,
            "inputs": _text(ex.get("inputs_pretokenized", b"")),
            "prediction": text,
            "postprocessed": _jsonable(pred),
            "target": _jsonable(tgt),
            **{k: _jsonable(ex[k]) for k in _META_KEYS if k in ex},
        }
        for i, (text, pred, tgt, ex) in enumerate(
            zip(result.texts, result.predictions, data.targets, data.examples)
        )
    ]
    return metrics, records


def write_jsonl(path: str, records: Sequence[Mapping]) -> None:
    """Writes one JSON object per line, atomically (temp file + rename)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# Trivial baselines.


def constant_baselines(
    task_name: str,
    *,
    split: str = "validation",
    train_split: str = "train",
    task_feature_lengths: Mapping[str, int] = (("inputs", 64), ("targets", 64)),
    num_examples: int | None = None,
    num_train_examples: int = 2000,
) -> dict[str, dict[str, float]]:
    """Scores the best image-blind constant answers on the eval examples.

    For each task: ``most_frequent`` predicts the most frequent training
    target string for every example (for VQA, the most frequent answer; for
    captions, the most frequent caption); ``best_constant`` tries the 20 most
    frequent training targets and keeps the best on the eval set (an upper
    bound for any constant prediction among them). Returns
    ``{task: {"most_frequent/<metric>": v, "best_constant/<metric>": v,
    "most_frequent_text": str, ...}}``.
    """
    out = {}
    for task in common.subtasks(task_name):
        data = load_task_data(
            task,
            split=split,
            task_feature_lengths=dict(task_feature_lengths),
            image_size=8,
            num_examples=num_examples,
        )
        ds = task.get_dataset(
            sequence_length=dict(task_feature_lengths),
            split=train_split,
            shuffle=False,
            num_epochs=1,
            use_cached=False,
        ).take(num_train_examples)
        counts = collections.Counter()
        for ex in ds.as_numpy_iterator():
            refs = ex.get("references")
            texts = [_text(r) for r in refs] if refs is not None and len(refs) else []
            texts = texts or [_text(ex.get("targets_pretokenized", b""))]
            for t in texts:
                counts[t] += 1.0 / len(texts)
        candidates = [t for t, _ in counts.most_common(20)]
        res: dict[str, Any] = {}
        best = None
        for i, cand in enumerate(candidates):
            preds = [task.postprocess_fn(cand, example=ex, is_target=False) for ex in data.examples]
            scores: dict[str, float] = {}
            for fn in task.predict_metric_fns:
                _flatten_metrics("m", fn(data.targets, preds), scores)
            main = next(iter(scores.values()))
            if i == 0:
                res.update({f"most_frequent/{k[2:]}": v for k, v in scores.items()})
                res["most_frequent_text"] = cand
            if best is None or main > best[0]:
                best = (main, cand, scores)
        if best is not None:
            res.update({f"best_constant/{k[2:]}": v for k, v in best[2].items()})
            res["best_constant_text"] = best[1]
        out[task.name] = res
    return out


# ---------------------------------------------------------------------------
# Test-server exports.

# task-name fragment -> (writer name in tasks.exports, id field in the example)
_EXPORTS = {
    "caption": ("write_coco_caption_results", "image_id"),
    "coco": ("write_coco_caption_results", "image_id"),
    "textvqa": ("write_textvqa_submission", "question_id"),
    "stvqa": ("write_stvqa_submission", "question_id"),
    "vqa": ("write_vqa_results", "question_id"),
}


def export_predictions(task_name: str, records: Sequence[Mapping], out_dir: str) -> str | None:
    """Writes the test-server file for one task's predictions; None when the
    task has no submission format."""
    from tasks import exports

    match = [v for frag, v in _EXPORTS.items() if frag in task_name]
    if not match:
        return None
    writer, id_field = match[0]
    pairs = {}
    for r in records:
        rid = r.get(id_field, r.get("id"))
        if rid is None:
            raise exports.ExportError(
                f"{task_name}: prediction {r['index']} has no {id_field!r} (or 'id') to export"
            )
        try:
            rid = int(rid)
        except (TypeError, ValueError):
            raise exports.ExportError(
                f"{task_name}: prediction {r['index']}: {id_field}={rid!r} is not an integer"
            ) from None
        pairs.setdefault(rid, str(r["postprocessed"]))  # one caption per image
    path = os.path.join(out_dir, f"{task_name}_results.json")
    os.makedirs(out_dir, exist_ok=True)
    getattr(exports, writer)(path, pairs)
    return path


# ---------------------------------------------------------------------------
# The job.


def evaluate(
    *,
    checkpoint_path: str,
    output_dir: str | None = None,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    model: common.ModelBundle,
    split: str = "validation",
    batch_size: int = 32,
    num_examples: int | None = None,
    all_checkpoints: bool = True,
    steps: Sequence[int] | None = None,
    export_dir: str | None = None,
    decode_method: str = "greedy",
    max_decode_len: int | None = None,
    beam_size: int = 4,
    alpha: float = 0.6,
    seed: int = 0,
    data_dir: str | None = None,
) -> dict[int, dict[str, float]]:
    """Evaluates checkpoint(s); returns ``{step: metrics}``.

    Args:
      checkpoint_path: a run's model_dir or a ``checkpoints/<step>`` folder.
      output_dir: where ``metrics.jsonl`` and ``predictions/`` go (default:
        ``checkpoint_path/eval_{split}``).
      all_checkpoints: every checkpoint of the run (else the latest), or the
        explicit ``steps``.
      export_dir: also write test-server files here (per checkpoint step).
      Others: as :class:`InferenceEvaluator`.
    """
    common.set_data_dir(data_dir)
    bundle = model
    common.check_vocabulary(bundle, mixture_or_task_name)
    ckpt_is_step = os.path.basename(os.path.normpath(checkpoint_path)).isdigit()
    if ckpt_is_step:
        todo = [None]
        run_dir = checkpoint_path
    else:
        have = common.checkpoint_steps(checkpoint_path)
        if not have:
            raise FileNotFoundError(f"no checkpoints under {checkpoint_path}/checkpoints")
        if steps:
            missing = sorted(set(steps) - set(have))
            if missing:
                raise FileNotFoundError(f"{checkpoint_path}: no checkpoints for steps {missing}")
            todo = list(steps)
        else:
            todo = have if all_checkpoints else have[-1:]
        run_dir = checkpoint_path
    output_dir = output_dir or os.path.join(run_dir, f"eval_{split}")
    os.makedirs(output_dir, exist_ok=True)
    _, frozen, _, _ = common.initial_params(bundle, seed=0)
    evaluator = InferenceEvaluator(
        bundle,
        mixture_or_task_name,
        split=split,
        task_feature_lengths=task_feature_lengths,
        batch_size=batch_size,
        num_examples=num_examples,
        predictions_dir=os.path.join(output_dir, "predictions"),
        decode_method=decode_method,
        max_decode_len=max_decode_len,
        beam_size=beam_size,
        alpha=alpha,
        seed=seed,
    )
    out = {}
    metrics_path = os.path.join(output_dir, "metrics.jsonl")
    writers.drop_torn_tail(metrics_path)  # a crash mid-append must not glue two records
    for step in todo:
        params, got_step = common.restore_params(checkpoint_path, step)
        metrics = evaluator(got_step, params, frozen)
        out[got_step] = metrics
        fd = os.open(metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            writers.append_jsonl(fd, {"step": got_step, **metrics})
        finally:
            os.close(fd)
        _report_skips(output_dir, got_step)
        if export_dir:
            from tasks.exports import ExportError

            for name, records in evaluator.last_predictions.items():
                try:
                    path = export_predictions(
                        name, records, os.path.join(export_dir, str(got_step))
                    )
                except ExportError as e:  # e.g. a shapes task: string ids, no server
                    log.warning("no test-server export for %s: %s", name, e)
                    continue
                if path:
                    log.info("exported %s", path)
        print(f"step {got_step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return out


def _report_skips(output_dir: str, step: int) -> None:
    """Records the readers skipped (``--skip_missing_images``), by source and
    reason, in ``output_dir/skipped_{step}.json`` beside the metrics."""
    from tasks.sources.common import skip_counts

    skipped = skip_counts()
    if skipped:
        path = os.path.join(output_dir, f"skipped_{step}.json")
        atomic_write_json(path, {"step": step, "sources": skipped}, indent=1)
        total = sum(sum(v["skipped"].values()) for v in skipped.values())
        print(f"step {step}: skipped {total} records without a readable image (see {path})")


def register_configurables() -> None:
    """gin: the shared pieces (``common.register_configurables``) and ``transfer.evaluate``."""
    common.register_configurables()
    gin_flags.register_configurable(evaluate, "evaluate", "transfer")


def main(argv):
    del argv
    import gin

    gin.get_configurable("transfer.evaluate")()


if __name__ == "__main__":
    gin_flags.run(main, register_configurables)
