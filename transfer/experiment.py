r"""Encoder-swap experiments: every encoder x every task, one table.

    python -m transfer.experiment --gin_file=gin/experiments/encoder_swap.gin \
        [--gin.MODEL_DIR="'runs/experiments/encoder_swap'"]

For each encoder (one ``gin/encoders/*.gin`` file) and each task the runner
fine-tunes and evaluates with the transfer jobs themselves
(``transfer.train.train`` then ``transfer.eval.evaluate``, configured by the
same gin files a single ``python -m transfer.train`` run takes), and writes
one table -- rows = encoders, columns = each task's metric, the layout of the
paper's transfer table -- as ``table.md``, ``table.csv``, ``table.json`` and
``table.png`` (bar chart) under the experiment directory.

Modes (``run_experiment.mode``):
  * ``"per_task"``: one fine-tune per (encoder, task).
  * ``"multitask"``: one fine-tune per encoder over the mixture of the tasks
    (PaLI's first transfer stage; ``mixture`` names a registered one, else a
    mixture of the listed tasks with equal rates is registered), then an
    evaluation of that checkpoint on each task.

A task entry ``"rec_protocol:<task>"`` runs the paper's frozen-encoder REC
protocol instead (``transfer.rec_protocol``: a decoder trained from scratch
on the frozen encoder's un-pooled tokens), configured by ``rec_gin_files``.

Cells and resumption: when a cell (one encoder x one task) has finished, its
metrics go to ``cells/<encoder>__<task>.json`` (temp file + rename). Running
the same command again skips recorded cells and fills in the missing ones;
an interrupted fine-tune also resumes from its own checkpoints
(``runs/<encoder>/<task>``). A cell recorded under a different configuration
(its gin files' text and bindings are fingerprinted) is stale: its run
directory is removed and the cell is recomputed.

Gin: the experiment's own gin file binds ``run_experiment``; each cell is
configured afresh (``gin.clear_config()``, then ``base_gin_files`` + the
encoder file [+ the task file] + ``eval_gin_files`` + bindings), so the gin
state of the process belongs to the last cell afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from transfer import common, gin_flags, rec_protocol
from transfer import infer as infer_lib
from transfer import report as report_lib
from transfer import train as train_lib

log = logging.getLogger("transfer.experiment")

REC_PREFIX = "rec_protocol:"
CELLS_DIR = "cells"
RUNS_DIR = "runs"


# ---------------------------------------------------------------------------
# Cells on disk.


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def encoder_label(encoder_gin: str) -> str:
    """``encoders/locca_tiny.gin`` -> ``locca_tiny`` (the table's row name)."""
    return pathlib.Path(encoder_gin).name.removesuffix(".gin")


def task_name(task: str) -> str:
    """Column/task key of a task entry (a gin file's stem for ``*.gin`` entries)."""
    if task.endswith(".gin"):
        return pathlib.Path(task).name.removesuffix(".gin")
    return task


def cell_path(experiment_dir: str, encoder: str, task: str) -> str:
    return os.path.join(experiment_dir, CELLS_DIR, f"{_safe(encoder)}__{_safe(task)}.json")


def read_cell(path: str) -> dict | None:
    """A recorded cell, or None (missing or unreadable: recomputed)."""
    try:
        with open(path) as f:
            rec = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        log.warning("cell %s is unreadable (%s); it will be recomputed", path, e)
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("metrics"), dict):
        log.warning("cell %s lacks 'metrics'; it will be recomputed", path)
        return None
    return rec


def write_cell(path: str, record: Mapping) -> None:
    report_lib.atomic_write(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


def fingerprint(gin_files: Sequence[str], bindings: Sequence[str], search=()) -> str:
    """sha256 over the gin files' text (as found on the search path) and bindings."""
    h = hashlib.sha256()
    for f in gin_files:
        found = gin_flags.find_gin_file(f, search)
        h.update(f.encode())
        if found:
            h.update(pathlib.Path(found).read_bytes())
    for b in bindings:
        h.update(b"\0" + b.encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------
# Gin per cell.


def register_configurables() -> None:
    """The transfer jobs plus ``run_experiment`` and ``rec_protocol`` (idempotent)."""
    train_lib.register_configurables()  # with transfer.evaluate and the shared pieces
    infer_lib.register_configurables()
    gin_flags.register_configurable(run_experiment, "run_experiment", "transfer")
    gin_flags.register_configurable(rec_protocol.rec_protocol, "rec_protocol", "transfer")


def _seed_tf(seed: int | None) -> None:
    if seed is not None:
        import tensorflow as tf

        tf.random.set_seed(seed)


def _configure(gin_files: Sequence[str], bindings: Sequence[str], search: Sequence[str]) -> None:
    import gin

    register_configurables()
    with gin.unlock_config():  # an earlier entry point may have finalised (locked) gin
        gin.clear_config()
        gin_flags.parse_gin(gin_files, bindings, search)


def _q(value: Any) -> str:
    """A Python value as a gin literal."""
    if isinstance(value, str):
        return repr(value)
    return repr(value)


# ---------------------------------------------------------------------------
# The runner.


def _split_metrics(metrics: Mapping[str, float], task: str) -> dict[str, float]:
    """``{"task/metric": v}`` of an evaluation -> ``{"metric": v}`` for ``task``."""
    p = task + "/"
    return {k[len(p) :]: float(v) for k, v in metrics.items() if k.startswith(p)}


def _ensure_mixture(tasks: Sequence[str]) -> str:
    """Registers (idempotently) an equal-rate mixture of ``tasks``; returns its name."""
    from tasks import registry

    common.get_task(tasks[0])  # imports and registers every task
    digest = hashlib.sha1(",".join(tasks).encode()).hexdigest()[:8]
    name = f"experiment_mix_{digest}"
    registry.add_mixture(name, list(tasks))
    return name


def _eval_result(res: Mapping[int, Mapping[str, float]]) -> tuple[int, dict]:
    if not res:
        raise RuntimeError("evaluation returned no checkpoint results")
    step = max(res)
    return step, dict(res[step])


def run_experiment(
    *,
    experiment_dir: str,
    encoders: Sequence[str],
    tasks: Sequence[str],
    mode: str = "per_task",
    mixture: str | None = None,
    base_gin_files: Sequence[str] = ("runs/finetune.gin", "models/t5_tiny.gin"),
    eval_gin_files: Sequence[str] = ("experiments/cell_eval.gin",),
    rec_gin_files: Sequence[str] = ("experiments/rec_protocol.gin",),
    bindings: Sequence[str] = (),
    encoder_bindings: Mapping[str, Sequence[str]] | None = None,
    task_bindings: Mapping[str, Sequence[str]] | None = None,
    rec_bindings: Sequence[str] = (),
    columns: Sequence[Mapping | Sequence] | None = None,
    title: str = "Encoder swap",
    gin_search_paths: Sequence[str] = (),
    on_cell: Callable[[dict], None] | None = None,
    tf_seed: int | None = 0,
) -> dict:
    """Runs the missing cells of the grid and writes the table.

    Args:
      experiment_dir: cells, runs and tables go here.
      encoders: encoder gin files (``encoders/locca_tiny.gin``); the row name
        is the file's stem.
      tasks: seqio task/mixture names, task gin files (``*.gin``, which bind
        ``MIXTURE_OR_TASK_NAME``; per_task mode only), or
        ``rec_protocol:<task>`` entries.
      mode: ``"per_task"`` or ``"multitask"`` (see the module docstring).
      mixture: multitask mode: train on this registered mixture instead of
        the equal-rate mixture of ``tasks``.
      base_gin_files: the fine-tuning job's files (run + language model).
      eval_gin_files: bind ``transfer.evaluate`` for a cell (after training).
      rec_gin_files: bind ``transfer.rec_protocol`` for REC-protocol cells.
      bindings: gin bindings for every fine-tuning cell (``TRAIN_STEPS = 100``).
      encoder_bindings: ``{encoder row name: [bindings]}`` (e.g. a checkpoint).
      task_bindings: ``{task entry: [bindings]}`` (per_task mode and REC).
      rec_bindings: gin bindings for every REC-protocol cell.
      columns: table columns as dicts or ``[task, metric, label, scale]``
        lists; default: each task's headline metrics
        (``report.METRIC_LABELS``).
      title: the table's title.
      gin_search_paths: extra folders searched for gin files.
      on_cell: called with each newly recorded cell (progress hooks, tests).
      tf_seed: ``tf.random.set_seed`` before each cell, so seqio's unseeded
        random preprocessors (a sampled expression or reference at
        evaluation) are the same in every run; None leaves it alone.

    Returns:
      ``{"table": table dict, "trained": [(encoder, task)...] computed now,
      "skipped": [...] found recorded, "paths": {...}}``.
    """
    labels = _check_grid(encoders, tasks, mode, encoder_bindings, gin_search_paths)
    encoder_bindings = dict(encoder_bindings or {})
    task_bindings = dict(task_bindings or {})
    search = list(gin_search_paths)
    rec_tasks = [t for t in tasks if t.startswith(REC_PREFIX)]
    ft_tasks = [t for t in tasks if not t.startswith(REC_PREFIX)]
    experiment_dir = os.path.abspath(experiment_dir)  # cells record paths: cwd-independent
    os.makedirs(experiment_dir, exist_ok=True)
    grid = _Grid(experiment_dir, title, labels, tasks, columns, on_cell)

    for e_file, label in zip(encoders, labels):
        enc_b = list(encoder_bindings.get(label, ()))
        groups = [[t] for t in ft_tasks] if mode == "per_task" else [ft_tasks] if ft_tasks else []
        for group in groups:  # fine-tuning cells
            model_dir, files, all_b = _finetune_config(
                experiment_dir,
                label,
                e_file,
                group,
                mode=mode,
                mixture=mixture,
                base_gin_files=base_gin_files,
                eval_gin_files=eval_gin_files,
                bindings=[*bindings, *enc_b],
                task_bindings=task_bindings,
            )
            _finetune_cell(grid, label, group, mode, model_dir, files, all_b, search, tf_seed)
        for t in rec_tasks:  # frozen-encoder REC protocol cells
            model_dir = os.path.join(experiment_dir, RUNS_DIR, _safe(label), _safe(t))
            files = [*rec_gin_files, e_file]
            all_b = [
                f"MODEL_DIR = {_q(model_dir)}",
                f"REC_TASK = {_q(t[len(REC_PREFIX) :])}",
                *rec_bindings,
                *enc_b,
                *task_bindings.get(t, ()),
            ]
            _rec_cell(grid, label, t, model_dir, files, all_b, search, tf_seed)

    paths = grid.write_outputs()
    table = json.loads(pathlib.Path(paths["json"]).read_text())
    print(f"[experiment] table: {paths['md']}", flush=True)
    return {"table": table, "trained": grid.trained, "skipped": grid.skipped, "paths": paths}


def _check_grid(encoders, tasks, mode, encoder_bindings, search) -> list[str]:
    """The row names (encoder file stems) after checking the grid's arguments."""
    if mode not in ("per_task", "multitask"):
        raise ValueError(f"mode must be 'per_task' or 'multitask', got {mode!r}")
    if not encoders or not tasks:
        raise ValueError("an experiment needs at least one encoder and one task")
    for e in encoders:
        if gin_flags.find_gin_file(e, search) is None:
            raise FileNotFoundError(f"encoder gin file {e!r} not found (search path {search})")
    labels = [encoder_label(e) for e in encoders]
    if len(set(labels)) != len(labels):
        raise ValueError(f"encoder gin files must have distinct names, got {labels}")
    unknown = set(encoder_bindings or {}) - set(labels)
    if unknown:
        raise ValueError(f"encoder_bindings for unknown encoders {sorted(unknown)}; have {labels}")
    ft_tasks = [t for t in tasks if not t.startswith(REC_PREFIX)]
    if mode == "multitask" and any(t.endswith(".gin") for t in ft_tasks):
        raise ValueError("multitask mode needs task names, not task gin files")
    return labels


class _Grid:
    """The experiment's cells: read back when recorded with the same fingerprint,
    else computed, recorded (``cells/*.json``) and the table rewritten after each."""

    def __init__(self, experiment_dir, title, labels, tasks, columns, on_cell):
        self.experiment_dir, self.title, self.labels = experiment_dir, title, labels
        self.tasks, self.columns, self.on_cell = tasks, columns, on_cell
        self.cells: dict[tuple[str, str], dict] = {}
        self.trained: list[tuple[str, str]] = []
        self.skipped: list[tuple[str, str]] = []

    def lookup(self, label: str, task: str, fp: str) -> dict | None:
        """The recorded cell (kept as skipped) when its fingerprint is ``fp``, else None."""
        rec = read_cell(cell_path(self.experiment_dir, label, task))
        if rec is None:
            return None
        if rec.get("fingerprint") != fp:
            print(f"[experiment] {label} x {task}: configuration changed; recomputing", flush=True)
            return None
        self.cells[(label, task)] = rec
        self.skipped.append((label, task))
        return rec

    def record(self, label: str, task: str, metrics: Mapping, extra: Mapping) -> None:
        rec = {"encoder": label, "task": task, "metrics": metrics, **extra}
        write_cell(cell_path(self.experiment_dir, label, task), rec)
        self.cells[(label, task_name(task))] = rec
        self.trained.append((label, task_name(task)))
        n_total = len(self.labels) * len(self.tasks)
        print(
            f"[experiment] recorded {label} x {task_name(task)} "
            f"({len(self.cells)}/{n_total}): {_short(metrics)}",
            flush=True,
        )
        self.write_outputs(chart=False)  # the table so far; the PNG once, at the end
        if self.on_cell is not None:
            self.on_cell(rec)

    def write_outputs(self, chart: bool = True) -> dict:
        return _write_outputs(
            self.experiment_dir,
            self.title,
            self.labels,
            self.tasks,
            self.columns,
            self.cells,
            chart=chart,
        )


def _finetune_config(
    experiment_dir,
    label,
    e_file,
    group,
    *,
    mode,
    mixture,
    base_gin_files,
    eval_gin_files,
    bindings,
    task_bindings,
) -> tuple[str, list[str], list[str]]:
    """(model_dir, gin files, gin bindings) of one fine-tuning run: one task
    (per_task) or the group's mixture (multitask)."""
    files = [*base_gin_files, e_file]
    eval_name = None
    if mode == "per_task":
        t = group[0]
        run_name = _safe(task_name(t))
        if t.endswith(".gin"):
            files.append(t)
            cell_b = []
        else:
            cell_b = [f"MIXTURE_OR_TASK_NAME = {_q(t)}"]
        extra_b = list(task_bindings.get(t, ()))
    else:
        train_name = mixture or _ensure_mixture(group)
        eval_name = _ensure_mixture(group)
        run_name = "multitask_" + _safe(train_name)
        cell_b = [f"MIXTURE_OR_TASK_NAME = {_q(train_name)}"]
        extra_b = []
    model_dir = os.path.join(experiment_dir, RUNS_DIR, _safe(label), run_name)
    all_b = [f"MODEL_DIR = {_q(model_dir)}", *cell_b, "EVAL_EVERY = 0", *bindings, *extra_b]
    if eval_name:
        all_b.append(f"transfer.evaluate.mixture_or_task_name = {_q(eval_name)}")
    return model_dir, [*files, *eval_gin_files], all_b


def _finetune_cell(grid, label, group, mode, model_dir, files, all_b, search, tf_seed) -> None:
    """Fine-tunes and evaluates once for the group's missing cells; records each."""
    import gin

    fp = fingerprint(files, all_b, search)
    have = {t: grid.lookup(label, task_name(t), fp) for t in group}
    if all(rec is not None for rec in have.values()):
        return
    _maybe_clear_stale(model_dir, fp)
    print(
        f"[experiment] fine-tune {label} on {', '.join(task_name(t) for t in group)} "
        f"({mode}) -> {model_dir}",
        flush=True,
    )
    t0 = time.time()
    _configure(files, all_b, search)
    _seed_tf(tf_seed)
    _write_fingerprint(model_dir, fp)
    gin.get_configurable("transfer.train")()
    t_train = time.time() - t0
    step, metrics = _eval_result(gin.get_configurable("transfer.evaluate")())
    wall = time.time() - t0
    for t in group:
        if have[t] is not None:
            continue
        key = t if mode == "multitask" else gin.query_parameter("%MIXTURE_OR_TASK_NAME")
        m = _split_metrics(metrics, key)
        if not m:
            raise RuntimeError(
                f"evaluation of {model_dir} returned no metrics for task {key!r}; "
                f"got {sorted(metrics)}"
            )
        extra = dict(
            fingerprint=fp,
            mode=mode,
            model_dir=model_dir,
            step=step,
            train_seconds=round(t_train, 2),
            wall_seconds=round(wall, 2),
            seqio_task=key,
            predictions=_predictions_path(model_dir, key, step),
        )
        grid.record(label, task_name(t), m, extra)


def _rec_cell(grid, label, t, model_dir, files, all_b, search, tf_seed) -> None:
    """One frozen-encoder REC protocol cell (``rec_protocol:<task>``), unless recorded."""
    import gin

    fp = fingerprint(files, all_b, search)
    if grid.lookup(label, t, fp) is not None:
        return
    rec_task = t[len(REC_PREFIX) :]
    _maybe_clear_stale(model_dir, fp)
    print(f"[experiment] REC protocol {label} on {rec_task} -> {model_dir}", flush=True)
    t0 = time.time()
    _configure(files, all_b, search)
    _seed_tf(tf_seed)
    _write_fingerprint(model_dir, fp)
    out = gin.get_configurable("transfer.rec_protocol")()
    extra = dict(
        fingerprint=fp,
        mode="rec_protocol",
        model_dir=model_dir,
        step=out["step"],
        wall_seconds=round(time.time() - t0, 2),
        seqio_task=rec_task,
        predictions=out.get("predictions", {}),
    )
    grid.record(label, t, dict(out["metrics"]), extra)


def _short(metrics: Mapping[str, float]) -> str:
    keep = [(k, v) for k, v in metrics.items() if k.rsplit("/", 1)[-1] in report_lib.METRIC_LABELS]
    return ", ".join(f"{k}={v:.4g}" for k, v in keep)


def _predictions_path(model_dir: str, task: str, step: int) -> str | None:
    import glob

    hits = glob.glob(os.path.join(model_dir, "eval_*", "predictions", f"{task}_{step}.jsonl"))
    return sorted(hits)[0] if hits else None


def _write_fingerprint(model_dir: str, fp: str) -> None:
    os.makedirs(model_dir, exist_ok=True)
    report_lib.atomic_write(os.path.join(model_dir, "experiment_fingerprint"), fp + "\n")


def _maybe_clear_stale(model_dir: str, fp: str) -> None:
    """Removes a run directory trained under another configuration."""
    f = os.path.join(model_dir, "experiment_fingerprint")
    if os.path.exists(f) and pathlib.Path(f).read_text().strip() != fp:
        print(f"[experiment] {model_dir} was trained with another config; removing", flush=True)
        shutil.rmtree(model_dir)


def table_columns(
    tasks: Sequence[str],
    columns: Sequence[Mapping | Sequence] | None,
    cells: Mapping[tuple[str, str], Mapping],
) -> list[dict]:
    """Explicit columns, or each task's headline metrics in task order."""
    if columns:
        out = []
        for c in columns:
            if isinstance(c, Mapping):
                d = dict(c)
            else:
                c = list(c)
                d = dict(task=c[0], metric=c[1], label=c[2], scale=c[3] if len(c) > 3 else 1.0)
            d.setdefault("key", f"{d['task']}/{d['metric']}")
            d.setdefault("label", d["key"])
            d.setdefault("scale", 1.0)
            out.append(d)
        return out
    out = []
    for t in tasks:
        t = task_name(t)
        metrics = next((c["metrics"] for (e, tt), c in cells.items() if tt == t), None)
        if metrics is None:  # not run yet: the task's column(s) appear once a cell exists
            continue
        out.extend(report_lib.default_columns(t, metrics))
    return out


def _write_outputs(
    experiment_dir, title, labels, tasks, columns, cells, chart: bool = True
) -> dict[str, str]:
    """table.{json,md,csv} (+ table.png with ``chart``: ~1 s of matplotlib, so only
    the finished experiment draws it, not every recorded cell)."""
    cols = table_columns(tasks, columns, cells)
    metrics = {k: v["metrics"] for k, v in cells.items()}
    table = report_lib.make_table(title, labels, cols, metrics)
    paths = report_lib.write_table(table, os.path.join(experiment_dir, "table"))
    if chart:
        paths["png"] = report_lib.write_bar_chart(table, os.path.join(experiment_dir, "table.png"))
    return paths


def main(argv):
    del argv
    import gin

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    gin.get_configurable("transfer.run_experiment")()


if __name__ == "__main__":
    gin_flags.run(main, register_configurables)
