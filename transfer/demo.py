"""locca demo: the whole LocCa-vs-Cap/CapPa story on the embedded shapes world.

    python -m transfer.demo --out demo_out [--gin_file=demo/tiny.gin] [--gin.NAME=VALUE]
    make demo

Stages (a banner and wall time each; tqdm bars from the trainer):
  1. ``sheet``     the shapes world: ``contact_sheet.png`` and ``summary.json``.
  2. ``pretrain``  Cap, CapPa and LocCa tiny encoders, the same budget
                   (``transfer.pretrain`` with gin/demo/pretrain_{cap,cappa,locca}.gin),
                   each exported to a big_vision npz (``checkpoints.export_encoder``).
  3. ``transfer``  the experiment runner (``transfer.experiment``,
                   gin/demo/transfer.gin): per encoder one multi-task PaLI
                   fine-tune over every shapes task analogue, evaluated per
                   task, plus the frozen-encoder REC protocol.
  4. ``report``    ``report.md`` (table, trivial baselines, the paper's numbers
                   for orientation, what ran, seeds, stage times, the verdict on
                   LocCa's localisation advantage computed from the numbers),
                   ``training_curves.png``, ``predictions.png``, the runner's
                   ``transfer/table.{md,csv,json,png}``.

The budget lives in gin/demo/demo.gin (macros ``PRETRAIN_STEPS``,
``TRANSFER_STEPS``, ``REC_STEPS``, ``REC_LEARNING_RATE``, ``NUM_EVAL_EXAMPLES``,
``SEED``...). Each
run starts afresh (``OUT/work`` is cleared) unless ``--resume``; the same seed
gives the same table. ``--stages sheet`` only draws the contact sheet.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence

import gin
from checkpoints import export_encoder
from locca import cli
from locca.data.contact_sheet import write_contact_sheet
from locca.data.shapes import ShapesWorld
from transfer import demo_report, experiment, pretrain
from transfer.demo_report import DISPLAY, ENCODERS
from transfer.gin_flags import rewrite_gin_args

STAGES = ("sheet", "pretrain", "transfer", "report")
DEMO_GIN = "demo/demo.gin"
TRANSFER_GIN = "demo/transfer.gin"

# ---------------------------------------------------------------------------
# Stage 1: the shapes world.


def summarise(scenes) -> dict:
    """Counts over a list of scenes (plain dicts of ints, JSON-serialisable)."""
    objs = [o for s in scenes for o in s.objects]
    vqa = [q for s in scenes for q in s.vqa]
    count = [c for s in scenes for c in s.counting]
    return {
        "images": len(scenes),
        "objects": len(objs),
        "objects_per_image": dict(sorted(Counter(len(s.objects) for s in scenes).items())),
        "shape": dict(Counter(o.shape for o in objs).most_common()),
        "colour": dict(Counter(o.colour for o in objs).most_common()),
        "size": dict(Counter(o.size for o in objs).most_common()),
        "objects_with_word": sum(o.word is not None for o in objs),
        "refexps_by_kind": dict(Counter(r.kind for s in scenes for r in s.refexps).most_common()),
        "vqa_by_question_type": dict(Counter(q.question_type for q in vqa).most_common()),
        "vqa_by_answer_type": dict(Counter(q.answer_type for q in vqa).most_common()),
        "vqa_top_answers": {
            t: dict(
                Counter(q.multiple_choice_answer for q in vqa if q.answer_type == t).most_common(8)
            )
            for t in ("yes/no", "number", "other")
        },
        "vqa_answers_agreeing_with_majority": round(
            sum(q.answers.count(q.multiple_choice_answer) for q in vqa) / max(1, 10 * len(vqa)), 3
        ),
        "counting": {
            "simple": sum(c.issimple for c in count),
            "complex": sum(not c.issimple for c in count),
            "answers": dict(sorted(Counter(c.answer for c in count).items())),
        },
        "text_questions": sum(len(s.text_questions) for s in scenes),
        "knowledge_questions": dict(
            Counter(q.question_type for s in scenes for q in s.knowledge).most_common()
        ),
    }


def stage_sheet(out: str, num_images: int, seed: int, resolution: int, sheet_images: int) -> dict:
    world = ShapesWorld(resolution=resolution, seed=seed)
    scenes = [world.scene(i) for i in range(num_images)]
    os.makedirs(out, exist_ok=True)
    sheet = write_contact_sheet(scenes[:sheet_images], os.path.join(out, "contact_sheet.png"))
    summary = summarise(scenes)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"shapes world {world}: {num_images} images")
    for k, v in summary.items():
        print(f"  {k}: {v}")
    print(f"contact sheet: {sheet}")
    return {"contact_sheet": sheet, "images": num_images}


# ---------------------------------------------------------------------------
# Configuration (gin/demo/demo.gin macros).


def read_budget(gin_files: Sequence[str], bindings: Sequence[str]) -> dict:
    """The demo macros from gin/demo/demo.gin + overrides (gin is cleared after)."""
    experiment._configure([DEMO_GIN, *gin_files], bindings, ())
    names = (
        "SEED",
        "PRETRAIN_STEPS",
        "PRETRAIN_BATCH_SIZE",
        "PRETRAIN_SCENES",
        "TRANSFER_STEPS",
        "REC_STEPS",
        "REC_LEARNING_RATE",
        "NUM_EVAL_EXAMPLES",
        "ZERO_SHOT_AREF",
        "ENCODERS",
    )
    budget = {n.lower(): gin.query_parameter(f"%{n}") for n in names}
    budget["encoders"] = tuple(budget["encoders"])
    unknown = [e for e in budget["encoders"] if e not in ENCODERS]
    if unknown or not budget["encoders"]:
        raise ValueError(f"ENCODERS must be a non-empty subset of {ENCODERS}, got {unknown}")
    with gin.unlock_config():
        gin.clear_config()
    return budget


def _warmup(steps: int) -> int:
    return max(1, min(20, steps // 10))


def _seed_everything(seed: int) -> None:
    """tf.data random maps (reference / expression sampling) and numpy."""
    import numpy as np
    import tensorflow as tf

    tf.random.set_seed(seed)
    np.random.seed(seed)


# ---------------------------------------------------------------------------
# Stage 2: pretraining.


def stage_pretrain(work: str, budget: Mapping, encoders: Sequence[str] = ENCODERS) -> dict:
    """Pretrains each encoder with the same budget and exports it; -> npz paths."""
    steps, bs, seed = budget["pretrain_steps"], budget["pretrain_batch_size"], budget["seed"]
    scenes = int(budget["pretrain_scenes"])
    zero_shot = bool(budget.get("zero_shot_aref"))
    out, times = {}, {}
    for i, name in enumerate(encoders):
        model_dir = os.path.join(work, "pretrain", name)
        npz = os.path.join(model_dir, "encoder.npz")
        who = f"{DISPLAY.get(name, name)} ({i + 1}/{len(encoders)})"
        _banner(f"pretrain {who}: {steps} steps x batch {bs}")
        t0 = time.time()
        _seed_everything(seed)
        with gin.unlock_config():
            gin.clear_config()
            pretrain.parse_gin(
                [f"demo/pretrain_{name}.gin"],
                [
                    f"MODEL_DIR = {model_dir!r}",
                    f"TRAIN_STEPS = {steps}",
                    f"BATCH_SIZE = {bs}",
                    f"tasks.make_shapes_pretrain_task.num_train = {scenes}",
                    # Registered tasks are looked up by name: the name carries the size.
                    f"tasks.make_shapes_pretrain_task.name = 'shapes_pretrain_demo_{scenes}'",
                    f"transfer.make_optimizer.warmup_steps = {_warmup(steps)}",
                    f"transfer.pretrain.seed = {seed}",
                    f"transfer.pretrain.data_seed = {seed}",
                    # Zero-shot ARef once, at the end (LocCa only: Cap/CapPa never saw it).
                    f"transfer.pretrain.evaluate = {zero_shot and name == 'locca'}",
                    f"transfer.pretrain.eval_every = {steps}",
                ],
            )
        pretrain.run_from_gin()
        export_encoder.export_encoder(model_dir, npz)
        times[name] = round(time.time() - t0, 1)
        out[name] = npz
        print(f"[demo] {name}: encoder -> {npz} ({times[name]} s)", flush=True)
    with gin.unlock_config():
        gin.clear_config()
    return {"encoders": out, "seconds": times}


# ---------------------------------------------------------------------------
# Stage 3: transfer (the experiment runner).


def register_demo_tasks(task_entries: Sequence[str]) -> None:
    """Registers ``shapes_refexp_b<N>`` entries: the shapes REC task with boxes
    written with N bins instead of 500 (``tasks.shapes_tasks.make_shapes_task``),
    so that box tokens are learnable within the demo's few hundred steps."""
    import re

    from tasks import shapes_tasks  # TensorFlow: loads after _configure_runtime quiets it

    for t in task_entries:
        name = t.split(":", 1)[-1]
        m = re.fullmatch(r"shapes_refexp_b(\d+)", name)
        if m:
            shapes_tasks.make_shapes_task(name, "refexp", num_bins=int(m.group(1)))


def stage_transfer(
    work: str,
    budget: Mapping,
    encoder_npz: Mapping[str, str],
    gin_files: Sequence[str] = (),
    bindings: Sequence[str] = (),
) -> dict:
    """The experiment runner over gin/demo/transfer.gin (+ the demo's override
    files/bindings, which may also rebind ``transfer.run_experiment.*``)."""
    exp_dir = os.path.join(work, "transfer")
    experiment._configure([TRANSFER_GIN, *gin_files], [f"MODEL_DIR = {exp_dir!r}", *bindings], ())
    kwargs = {
        k: gin.query_parameter(f"transfer.run_experiment.{k}")
        for k in ("bindings", "rec_bindings", "tasks")
    }
    register_demo_tasks(kwargs["tasks"])
    # The rows are the budget's ENCODERS (gin/demo/demo.gin), one gin file each.
    kwargs["encoders"] = [f"demo/encoders/{e}.gin" for e in budget["encoders"]]
    steps, rec_steps = budget["transfer_steps"], budget["rec_steps"]
    n_eval, seed = budget["num_eval_examples"], budget["seed"]
    kwargs["bindings"] = [
        *kwargs["bindings"],
        f"TRAIN_STEPS = {steps}",
        f"WARMUP_STEPS = {_warmup(steps)}",
        f"NUM_EVAL_EXAMPLES = {n_eval}",
        f"transfer.train.seed = {seed}",
        f"transfer.train.data_seed = {seed}",
    ]
    kwargs["rec_bindings"] = [
        *kwargs["rec_bindings"],
        f"REC_TRAIN_STEPS = {rec_steps}",
        f"REC_LEARNING_RATE = {budget['rec_learning_rate']!r}",
        f"transfer.rec_protocol.num_eval_examples = {n_eval}",
        f"transfer.rec_protocol.seed = {seed}",
        f"transfer.rec_protocol.data_seed = {seed}",
    ]
    kwargs["encoder_bindings"] = {
        experiment.encoder_label(e): [
            f"ENCODER_CHECKPOINT = {encoder_npz[experiment.encoder_label(e)]!r}"
        ]
        for e in kwargs["encoders"]
    }
    n = len(kwargs["encoders"])
    _banner(
        f"transfer: {n} encoders x {len(kwargs['tasks'])} tasks "
        f"(multi-task fine-tune {steps} steps, REC decoder {rec_steps} steps)"
    )

    def progress(rec):
        print(f"[demo] cell done: {rec['encoder']} x {rec['task']}", flush=True)
        _seed_everything(seed)

    _seed_everything(seed)
    result = gin.get_configurable("transfer.run_experiment")(**kwargs, on_cell=progress)
    return result


# ---------------------------------------------------------------------------
# Stage 4: report (transfer.demo_report).


def stage_report(out: str, work: str, budget: Mapping, stages: Mapping, encoders=ENCODERS) -> dict:
    # Seeded as every other stage. The constant baselines' sampled targets no
    # longer need it (tasks/resumable.py: per-example seeds, whatever
    # TensorFlow's global seed), but nothing in a stage should depend on what
    # ran before it in the process.
    _seed_everything(budget["seed"])
    cells = demo_report.read_cells(os.path.join(work, "transfer"))
    register_demo_tasks([t for (_, t) in cells])
    return demo_report.write_report(out, work, budget, stages, cells, encoders)


# ---------------------------------------------------------------------------
# Main.


def _banner(text: str) -> None:
    bar = "=" * min(100, max(40, len(text) + 8))
    print(f"\n{bar}\n=== {text}\n{bar}", flush=True)


def _configure_runtime(out: str) -> None:
    """CPU JAX with a compilation cache shared by identical stages (the three
    encoders have the same shapes, so their steps compile once)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import jax

    cache = os.path.join(out, "work", "jax_cache")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    import logging

    logging.getLogger("absl").setLevel(logging.WARNING)
    for name in ("orbax", "jax._src", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m transfer.demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="demo_out")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {STAGES}")
    p.add_argument("--gin_file", action="append", default=[], help="demo budget overrides")
    p.add_argument("--gin_bindings", action="append", default=[])
    p.add_argument("--resume", action="store_true", help="keep OUT/work from an earlier run")
    p.add_argument("--num_images", type=int, default=200, help="contact-sheet summary images")
    p.add_argument("--seed", type=int, default=0, help="shapes world seed of the contact sheet")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--sheet_images", type=int, default=12)

    args = p.parse_args(rewrite_gin_args(list(sys.argv[1:] if argv is None else argv)))
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        p.error(f"unknown stages {bad}; choose from {STAGES}")
    out = args.out
    os.makedirs(out, exist_ok=True)
    t_start = time.time()
    times: dict[str, float] = {}

    if "sheet" in stages:
        _banner("shapes world: contact sheet and summary")
        t0 = time.time()
        stage_sheet(out, args.num_images, args.seed, args.resolution, args.sheet_images)
        times["sheet"] = round(time.time() - t0, 1)
    if stages == ["sheet"]:
        return 0

    work = os.path.join(out, "work")
    if not args.resume and "pretrain" in stages and os.path.isdir(work):
        shutil.rmtree(work)
    _configure_runtime(out)
    budget = read_budget(args.gin_file, args.gin_bindings)
    print(f"[demo] budget: {budget}", flush=True)
    encoders = budget["encoders"]
    npz = {e: os.path.join(work, "pretrain", e, "encoder.npz") for e in encoders}
    if "pretrain" in stages:
        t0 = time.time()
        res = stage_pretrain(work, budget, encoders)
        times["pretrain"] = round(time.time() - t0, 1)
        for e, s in res["seconds"].items():
            times[f"pretrain {e}"] = s
    if "transfer" in stages:
        t0 = time.time()
        stage_transfer(work, budget, npz, args.gin_file, args.gin_bindings)
        times["transfer"] = round(time.time() - t0, 1)
    if "report" in stages:
        _banner("report")
        t0 = time.time()
        info = {"seconds": dict(times), "total_seconds": time.time() - t_start}
        res = stage_report(out, work, budget, info, encoders)
        times["report"] = round(time.time() - t0, 1)
        print(f"[demo] report: {res['report']}", flush=True)
    total = time.time() - t_start
    took = ", ".join(f"{k} {v:.0f}s" for k, v in times.items())
    print(f"[demo] done in {total:.0f} s: {took}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
