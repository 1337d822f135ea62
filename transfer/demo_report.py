"""The demo's report stage: ``report.md`` with the table, trivial baselines,
the verdict on LocCa's localisation advantage, confidence intervals, zero-shot
ARef, the paper's numbers and what ran; ``training_curves.png``,
``predictions.png`` and the runner's table files (``transfer.demo`` runs it).

Reads only what the earlier stages wrote under ``OUT/work``: pretraining
``metrics.jsonl`` per encoder, the experiment runner's cells, table and
prediction files. Percentages throughout (Acc@0.5 %, CIDEr x100).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import pathlib
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from locca import boxes as boxes_lib
from locca import stats
from locca.boxes import iou
from locca.training import writers
from tasks.metrics import captions as caption_metrics
from tasks.metrics import rec as rec_metrics
from tasks.metrics import vqa as vqa_metrics
from transfer import common
from transfer import report as report_lib

ENCODERS = ("cap", "cappa", "locca")  # row names; gin/demo/encoders/{name}.gin
DISPLAY = {"cap": "Cap", "cappa": "CapPa", "locca": "LocCa"}

# The paper's numbers (L/14 encoders at 224 px pretrained on WebLI, real
# datasets): for orientation only, not comparable with the shapes world.
PAPER_TRANSFER = {  # PaLI-3-style transfer, frozen encoder, UL2 language model
    "columns": [
        "COCO CIDEr",
        "VQAv2",
        "OKVQA",
        "TextVQA",
        "ST-VQA ANLS",
        "TallyQA simple",
        "TallyQA complex",
    ],
    "rows": {
        "SigLIP-L": [135.8, 75.6, 57.5, 41.1, 46.2, 74.9, 61.4],
        "LocCa-L": [138.9, 77.6, 58.4, 49.2, 50.9, 79.3, 64.1],
    },
}
PAPER_REC = {  # frozen encoder + 6-layer decoder from scratch, RefCOCO Acc@0.5
    "columns": ["RefCOCO val", "RefCOCO testA", "RefCOCO testB"],
    "rows": {
        "Cap-L": [60.64, 65.47, 56.17],
        "CapPa-L": [64.17, 69.90, 58.25],
        "CLIP-L": [65.21, 71.28, 58.17],
        "SigLIP-L": [67.33, 72.40, 61.21],
        "LocCa-L": [88.34, 91.20, 85.10],
    },
}


def _read_jsonl(path: str) -> list[dict]:
    """Records of a JSONL file ([] when missing); a torn final line is ignored."""
    if not path or not os.path.exists(path):
        return []
    return writers.read_jsonl(path)[0]


def _prediction_records(cell: Mapping, seqio_task: str, split: str) -> list[dict]:
    """The cell's recorded predictions on ``split`` ([] when it recorded none);
    FileNotFoundError naming the cell when the recorded file is gone."""
    preds = cell.get("predictions")
    path = preds.get(f"{seqio_task}:{split}") if isinstance(preds, Mapping) else preds
    if not path:
        return []
    if not os.path.exists(path):
        what = f"{split} predictions" if split else "predictions"
        raise FileNotFoundError(
            f"cell {cell.get('encoder')} x {cell.get('task')} records its {what} at {path!r}, "
            "which does not exist (was the run moved?)"
        )
    return writers.read_jsonl(path)[0]


def read_cells(exp_dir: str) -> dict[tuple[str, str], dict]:
    """The experiment runner's finished cells: ``{(encoder, task): cell record}``."""
    out = {}
    for p in sorted(pathlib.Path(exp_dir, "cells").glob("*.json")):
        rec = json.loads(p.read_text())
        out[(rec["encoder"], rec["task"])] = rec
    return out


def _eval_examples(task: str, split: str, indices: Sequence[int]) -> dict[int, dict]:
    """The task's evaluation examples (same order as transfer.eval) by index."""
    ds = common.get_task(task).get_dataset(
        sequence_length={"inputs": 64, "targets": 64},
        split=split,
        shuffle=False,
        num_epochs=1,
        use_cached=False,
        seed=0,  # the random choices (sampled caption / answer) are reproducible
    )
    want, out = set(indices), {}
    for i, ex in enumerate(ds.as_numpy_iterator()):
        if i in want:
            out[i] = ex
        if len(out) == len(want) or i > max(want):
            break
    return out


def trivial_baselines(cells: Mapping, columns: Sequence[Mapping]) -> tuple[dict, dict]:
    """Metrics of constant predictions on the evaluated examples.

    Most frequent training answer (VQA-style and counting tasks), the most
    frequent training caption (captioning), the whole-image box (REC).
    Returns ``({column key: value}, {task: description})``.
    """
    values, what = {}, {}
    for c in columns:
        task, metric = c["task"], c["metric"]
        rec = next((r for (e, t), r in cells.items() if t == task), None)
        if rec is None:
            continue
        seqio_task = rec.get("seqio_task", task)
        # REC protocol cells: {task:split: path} (the metric names the split)
        split = metric.split("/")[0] if isinstance(rec.get("predictions"), Mapping) else ""
        records = _prediction_records(rec, seqio_task, split)
        if not records:
            continue
        t = common.get_task(seqio_task)
        targets = [r["target"] for r in records]
        if "refexp" in seqio_task or "refcoco" in seqio_task:
            const = np.array([0.0, 0.0, 1.0, 1.0])
            what[task] = "whole-image box"
        else:
            const, desc = _most_frequent_target(seqio_task)
            what[task] = desc
        scores = {}
        for fn in t.predict_metric_fns:
            scores.update(fn(targets, [const] * len(targets)))
        key = metric.rsplit("/", 1)[-1]
        if key in scores:
            values[c["key"]] = round(float(scores[key]) * float(c.get("scale", 1.0)), 2)
    return values, what


_MOST_FREQUENT: dict[str, tuple[str, str]] = {}


def _most_frequent_target(task: str, n: int = 500) -> tuple[str, str]:
    """The most frequent target text among the first n training examples (the
    task's sampled caption / answer under seqio seed 0: the same every run)."""
    if task in _MOST_FREQUENT:
        return _MOST_FREQUENT[task]

    ds = common.get_task(task).get_dataset(
        sequence_length={"inputs": 64, "targets": 64},
        split="train",
        shuffle=False,
        num_epochs=1,
        use_cached=False,
        seed=0,  # the random choices (sampled caption / answer) are reproducible
    )
    texts = Counter()
    for ex in ds.take(n).as_numpy_iterator():
        texts[ex["targets_pretokenized"].decode("utf-8")] += 1
    text, count = texts.most_common(1)[0]
    kind = "caption" if "caption" in task else "answer"
    desc = f"most frequent training {kind} {text!r} ({count}/{sum(texts.values())})"
    _MOST_FREQUENT[task] = (text, desc)
    return text, desc


def _loss_series(model_dir: str, key: str = "loss") -> tuple[list, list]:
    xs, ys = [], []
    for r in _read_jsonl(os.path.join(model_dir, "metrics.jsonl")):
        if key in r:
            xs.append(r["step"])
            ys.append(r[key])
    return xs, ys


def write_training_curves(path: str, work: str, cells: Mapping, encoders: Sequence[str]) -> str:
    pre = {DISPLAY.get(e, e): _loss_series(os.path.join(work, "pretrain", e)) for e in encoders}
    pre_cap = {
        DISPLAY.get(e, e): _loss_series(os.path.join(work, "pretrain", e), "loss_cap")
        for e in encoders
    }
    locca_parts = {
        k: _loss_series(os.path.join(work, "pretrain", "locca"), f"loss_{k}")
        for k in ("cap", "aref", "gcap")
    }
    transfer, rec = {}, {}
    for (e, _t), r in cells.items():
        if r.get("mode") == "rec_protocol":
            rec[DISPLAY.get(e, e)] = _loss_series(r["model_dir"])
        elif DISPLAY.get(e, e) not in transfer:
            transfer[DISPLAY.get(e, e)] = _loss_series(r["model_dir"])
    panels = [
        ("pretraining: total loss (LocCa = Cap + ARef + GCap)", pre),
        ("pretraining: caption loss", pre_cap),
        ("LocCa pretraining: per-task loss", locca_parts),
        ("transfer: multi-task PaLI fine-tune loss", transfer),
        ("frozen-encoder REC decoder loss", rec),
    ]
    return report_lib.write_curves(
        [(t, {k: v for k, v in s.items() if v[0]}) for t, s in panels], path
    )


def write_predictions(path: str, cells: Mapping, encoders: Sequence[str]) -> str:
    """A grid of held-out examples: REC boxes (frozen protocol and transfer),
    captions, VQA, counting and text-reading answers per encoder."""
    tasks = list(dict.fromkeys(t for (_, t) in cells))
    rec = next((t for t in tasks if t.startswith("rec_protocol:")), "")
    ref = next((t for t in tasks if "refexp" in t and not t.startswith("rec_protocol:")), "")
    plan = [  # (cell task, position in the evaluated examples (fraction), title prefix)
        (rec, 0.0, "REC (frozen)"),
        (rec, 0.3, "REC (frozen)"),
        (rec, 0.6, "REC (frozen)"),
        (ref, 0.9, "REC (transfer)"),
        ("shapes_caption", 0.1, "caption"),
        ("shapes_vqa", 0.4, "VQA"),
        ("shapes_tally", 0.7, "counting"),
        ("shapes_textvqa", 0.2, "TextVQA"),
    ]
    examples = []
    for task, frac, prefix in plan:
        recs, idx = {}, None
        seqio_task, split = None, "validation"
        for e in encoders:
            cell = cells.get((e, task))
            if cell is None:
                continue
            seqio_task = cell.get("seqio_task", task)
            rows = _prediction_records(cell, seqio_task, "validation")
            if rows:
                idx = min(int(frac * len(rows)), len(rows) - 1) if idx is None else idx
                if idx < len(rows):
                    recs[e] = rows[idx]
        if not recs or seqio_task is None:
            continue
        ex = _eval_examples(seqio_task, split, [idx]).get(idx)
        if ex is None:
            continue
        first = next(iter(recs.values()))
        tgt = first["target"]
        is_box = isinstance(tgt, Mapping) and "box" in tgt
        prompt = first.get("inputs", "")
        truth = (
            "box"
            if is_box
            else (tgt.get("answers", [""])[0] if isinstance(tgt, Mapping) else str(tgt))
        )
        preds = {}
        for e, r in recs.items():
            box = r["postprocessed"] if is_box else None
            preds[DISPLAY.get(e, e)] = {
                "text": _box_text(box, tgt["box"], r.get("prediction", ""))
                if is_box
                else r["postprocessed"],
                "box": box,
            }
        examples.append(
            {
                "image": ex["image"],
                "title": f"{prefix}: {prompt}",
                "truth": truth,
                "gt_box": tgt["box"] if is_box else None,
                "preds": preds,
            }
        )
    return report_lib.write_prediction_grid(
        examples, path, [DISPLAY.get(e, e) for e in encoders], ncols=4
    )


def _box_text(box, gt, raw: str) -> str:
    """The panel line of a box prediction: its IoU, or the raw text when it is no box."""
    if box is None:
        return f"no box: {raw!r}"

    return f"IoU {float(iou(box, gt)):.2f}"


def _noise(p1: float, p2: float, n: int) -> float:
    """Two standard errors of a difference of two accuracies (%) on n examples."""
    if not n:
        return 0.0
    a, b = p1 / 100.0, p2 / 100.0
    return 200.0 * math.sqrt((a * (1 - a) + b * (1 - b)) / n)


def verdict(
    table: Mapping,
    encoders=("cap", "cappa", "locca"),
    baselines: Mapping[str, float] | None = None,
    num_examples: int = 0,
) -> tuple[str, dict]:
    """Whether LocCa beat both Cap and CapPa on the frozen-encoder REC splits,
    computed from the table. A split counts as a win when LocCa's Acc@0.5
    exceeds the better of Cap/CapPa by more than two standard errors of the
    difference (binomial, ``num_examples`` per split; 0 = any margin) and the
    trivial baseline (whole-image box) when given. Transfer REC columns are
    listed but not counted."""
    rows = {r["encoder"]: r["values"] for r in table["rows"]}
    if not all(e in rows for e in encoders):
        return "LocCa, Cap and CapPa are not all in the table; no verdict.", {}
    baselines = dict(baselines or {})
    loc_cols = [c for c in table["columns"] if c["metric"].endswith("acc@0.5")]
    frozen = [c for c in loc_cols if c["task"].startswith("rec_protocol:")]
    detail, wins, lines = {}, [], []
    for c in frozen + [c for c in loc_cols if c not in frozen]:
        v = {e: rows[e].get(c["key"]) for e in encoders}
        if any(x is None for x in v.values()):
            continue
        best_other = max(v["cap"], v["cappa"])
        margin = v["locca"] - best_other
        noise = _noise(v["locca"], best_other, num_examples)
        base = baselines.get(c["key"])
        above_base = base is None or v["locca"] > base
        win = margin > noise and margin > 0 and above_base
        detail[c["label"]] = {
            **v,
            "margin": round(margin, 2),
            "two_standard_errors": round(noise, 2),
            "baseline": base,
            "locca_best": win,
        }
        if c in frozen:
            wins.append(win)
        note = f"; trivial baseline {base:.2f}" if base is not None else ""
        lines.append(
            f"- {c['label']}: LocCa {v['locca']:.2f} vs Cap {v['cap']:.2f}, "
            f"CapPa {v['cappa']:.2f} (LocCa minus the better of the two: {margin:+.2f}; "
            f"two standard errors {noise:.2f}{note})"
        )
    if not wins:
        return "No frozen-encoder REC results in the table; no verdict.", detail
    if all(wins):
        head = (
            "**Reproduced at this scale**: LocCa's encoder beats both Cap and CapPa on "
            "every frozen-encoder REC split, beyond noise and above the trivial baseline"
        )
    elif any(wins):
        head = (
            "**Partly reproduced at this scale**: LocCa's encoder beats both Cap and CapPa "
            f"beyond noise on {sum(wins)} of {len(wins)} frozen-encoder REC splits"
        )
    else:
        head = (
            "**Not reproduced at this scale**: on no frozen-encoder REC split does LocCa's "
            "encoder beat both Cap and CapPa by more than two standard errors while "
            "also beating the trivial whole-image baseline"
        )
    paper = PAPER_REC["rows"]
    gap = paper["LocCa-L"][0] - max(paper["Cap-L"][0], paper["CapPa-L"][0])
    lines.append(
        f"- For scale: in the paper LocCa-L beats the better of Cap-L / CapPa-L by {gap:+.1f} "
        "points on RefCOCO val (frozen encoder, 6-layer decoder); a win here is a margin "
        "beyond noise, whatever its size."
    )
    return head + " (Acc@0.5, higher is better):\n" + "\n".join(lines), detail


def _above(values: Mapping, base: Mapping, cols: Sequence[Mapping]) -> str:
    """'k of n columns (below: ...)' for one row against the trivial baselines."""
    known = [c for c in cols if values.get(c["key"]) is not None and c["key"] in base]
    above = [c for c in known if values[c["key"]] > base[c["key"]]]
    below = [c["label"] for c in known if c not in above]
    return f"{len(above)} of {len(known)} columns" + (
        f" (not above: {', '.join(below)})" if below else ""
    )


AREF_BASELINES = (
    ("whole_image", "whole image"),
    ("mean_box", "mean training box"),
    ("largest_region", "largest region of the image"),
    ("random_region", "random region of the image"),
)


def zero_shot_aref_lines(work: str, encoder: str = "locca") -> list[str]:
    """Report lines: the encoder's last zero-shot ARef evaluation (pretraining
    metrics.jsonl) with 95% intervals, against every trivial baseline."""
    rows = [
        r
        for r in _read_jsonl(os.path.join(work, "pretrain", encoder, "metrics.jsonl"))
        if "aref_acc@0.5" in r
    ]
    if not rows:
        return ["No zero-shot ARef evaluation in this run (budget ZERO_SHOT_AREF = False)."]
    r = rows[-1]

    def ci(key: str, suffix: str = "") -> str:
        lo, hi = r.get(f"{key}_low{suffix}"), r.get(f"{key}_high{suffix}")
        v = r[f"{key}{suffix}"]
        return f"{100 * v:.1f}" + (f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None else "")

    table = {DISPLAY.get(encoder, encoder): [ci("aref_acc@0.5"), ci("aref_mean_iou")]}
    for key, label in AREF_BASELINES:
        if f"aref_acc@0.5_{key}" in r:
            miou = r.get(f"aref_mean_iou_{key}")
            table[label] = [
                ci("aref_acc@0.5", f"_{key}"),
                "" if miou is None else f"{100 * miou:.1f}",
            ]
    n = int(r.get("aref_num_examples", 0))
    return [
        f"Zero-shot ARef of the {DISPLAY.get(encoder, encoder)} model after pretraining (step "
        f"{r['step']}): the prompt `ARef : {{description}} :` on {n} held-out regions (one per "
        "held-out image), the greedy box scored against the true one; 95% intervals in "
        "brackets (Wilson for Acc@0.5, normal for mean IoU). Baselines read no prompt; the "
        "region baselines know the image's regions (a perfect detector without grounding).",
        "",
        _md_table(["Acc@0.5 (%)", "mean IoU (%)"], table),
        "",
        f"Unparsed outputs: {int(r.get('aref_num_unparsed', 0))}; zero-area boxes: "
        f"{int(r.get('aref_num_degenerate', 0))}.",
    ]


def rec_interval_lines(table: Mapping, n: int) -> list[str]:
    """'REC frozen ...: Cap 12.0 [10.1, 14.2], ...' per frozen-REC column (Wilson, n each)."""
    out = []
    for c in table["columns"]:
        if not (c["task"].startswith("rec_protocol:") and c["metric"].endswith("acc@0.5")):
            continue
        parts = []
        for r in table["rows"]:
            v = r["values"].get(c["key"])
            if v is None or not n:
                continue
            lo, hi = stats.proportion_ci(round(v / 100 * n), n)
            name = DISPLAY.get(r["encoder"], r["encoder"])
            parts.append(f"{name} {v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]")
        if parts:
            out.append(f"- {c['label']} (n = {n}, 95% Wilson interval): " + ", ".join(parts))
    return out


def rec_baseline_lines(cells: Mapping, columns: Sequence[Mapping], num_train: int = 500) -> list:
    """Report lines: the trivial localisation baselines (``locca.boxes.baseline_scores``)
    on the examples each frozen-REC split evaluated: the whole image, the mean
    training box (of the task's first ``num_train`` training boxes) and, from the
    shapes world's scene of each example, its largest object and a random
    object (a perfect detector without grounding). [] for non-shapes tasks."""
    out, train_mean_box = [], {}  # seqio task -> mean of its first training boxes [4]
    for c in columns:
        if not (c["task"].startswith("rec_protocol:") and c["metric"].endswith("acc@0.5")):
            continue
        rec = next((r for (e, t), r in cells.items() if t == c["task"]), None)
        split = c["metric"].split("/")[0]
        seqio_task = rec.get("seqio_task", "") if rec else ""
        source = common.get_task(seqio_task).source if seqio_task else None
        if not all(hasattr(source, a) for a in ("world", "examples", "scene_of")):
            continue
        records = _prediction_records(rec, seqio_task, split)
        if not records:
            continue
        world, objects = source.world(), {}  # scene index -> its object boxes [R, 4]
        scenes = [source.scene_of(r["id"]) for r in records]
        for i in sorted(set(scenes)):
            objects[i] = np.array([o.box for o in world.scene(i).objects], np.float64)
        gts = [np.asarray(r["box"], np.float64) for r in records]
        if seqio_task not in train_mean_box:
            train = itertools.islice(source.examples("train"), num_train)
            train_mean_box[seqio_task] = boxes_lib.mean_box([ex["box"] for ex in train])
        scores = boxes_lib.baseline_scores(
            gts, train_mean_box=train_mean_box[seqio_task], regions=[objects[i] for i in scenes]
        )
        cells_txt = []
        for key, label in AREF_BASELINES:
            sc = scores[key]
            iou_txt = f", mean IoU {100 * sc['mean_iou']:.1f}" if "mean_iou" in sc else ""
            cells_txt.append(
                f"{label.replace('region', 'object')} {100 * sc['acc@0.5']:.1f} "
                f"[{100 * sc['acc@0.5_low']:.1f}, {100 * sc['acc@0.5_high']:.1f}]{iou_txt}"
            )
        out.append(
            f"- Trivial baselines on the same {len(gts)} {split} examples (Acc@0.5 %, 95% "
            "interval; no expression read): " + "; ".join(cells_txt) + "."
        )
    return out


# Metrics with per-example scores (their mean is the metric), for intervals and
# paired encoder differences: metric name -> (targets, predictions) -> scores
# in the metric's unit.
PER_EXAMPLE_SCORES = {
    "cider": caption_metrics.cider_per_example,
    "vqa_accuracy": vqa_metrics.vqa_per_example,
    "acc@0.5": rec_metrics.rec_hits_per_example,
}


def paired_lines(
    cells: Mapping,
    columns: Sequence[Mapping],
    encoders: Sequence[str],
    *,
    frozen_rec: bool,
    reference: str = "locca",
) -> list[str]:
    """Report lines per column with per-example scores (``PER_EXAMPLE_SCORES``):
    the frozen-encoder REC splits' Acc@0.5 (``frozen_rec``) or the holistic
    transfer columns (caption CIDEr, VQA accuracy; not the fine-tuned REC
    column). Each encoder's value with
    the normal 95% interval of its per-example mean, and ``reference`` minus
    every other encoder paired over the same evaluated examples (the mean
    per-example difference with its normal 95% interval: narrower than two
    independent intervals when the encoders agree on many examples). The
    intervals cover the evaluation sample only, not training noise (seeds).
    [] without such columns or recorded predictions."""
    out = []
    for c in columns:
        metric = c["metric"].rsplit("/", 1)[-1]
        fn = PER_EXAMPLE_SCORES.get(metric)
        # frozen REC: the protocol's splits; holistic: not a localisation column
        wanted = c["task"].startswith("rec_protocol:") if frozen_rec else metric != "acc@0.5"
        if fn is None or not wanted:
            continue
        scores, keys = {}, {}  # encoder -> per-example scores [n]; -> example keys
        for e in encoders:
            rec = cells.get((e, c["task"]))
            if not rec:
                continue
            # REC protocol cells record {task:split: path}; the metric names the split
            split = c["metric"].split("/")[0] if isinstance(rec.get("predictions"), Mapping) else ""
            records = _prediction_records(rec, rec.get("seqio_task", c["task"]), split)
            if not records:
                continue
            keys[e] = [(r["index"], r["inputs"]) for r in records]
            targets = [r["target"] for r in records]
            scores[e] = np.asarray(fn(targets, [r["postprocessed"] for r in records]))
        if not scores:
            continue
        first = next(iter(keys.values()))
        if any(k != first for k in keys.values()):
            out.append(f"- {c['label']}: encoders were evaluated on different examples; no "
                       "paired comparison.")  # fmt: skip
            continue
        parts = []
        for e, sc in scores.items():
            m, lo, hi = stats.mean_ci(sc)
            parts.append(f"{DISPLAY.get(e, e)} {m:.2f} [{lo:.2f}, {hi:.2f}]")
        diffs = []
        for e in scores:
            if e == reference or reference not in scores:
                continue
            m, lo, hi = stats.mean_ci(scores[reference] - scores[e])
            inside = "inside the noise" if lo <= 0 <= hi else "outside the noise"
            diffs.append(
                f"{DISPLAY.get(reference, reference)} − {DISPLAY.get(e, e)} "
                f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}] ({inside})"
            )
        out.append(
            f"- {c['label']} (n = {len(first)}; 95% normal interval of the per-example mean): "
            + ", ".join(parts)
            + (". Paired over the same examples: " + "; ".join(diffs) if diffs else "")
            + "."
        )
    if out:
        out.append(
            "- These intervals are the evaluation sample's noise only. Training noise "
            "(pretraining and fine-tuning seeds) is not in them: a difference outside them "
            "can still be a difference between training runs rather than between recipes."
        )
    return out


def _md_table(columns: Sequence[str], rows: Mapping[str, Sequence]) -> str:
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, vals in rows.items():
        cells = [
            "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v)) for v in vals
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _results_lines(
    table, base, base_what, head, budget, work, encoders, rec_base, rec_paired, holistic
) -> list[str]:
    cols = table["columns"]
    md_rows = {
        DISPLAY.get(r["encoder"], r["encoder"]): [r["values"][c["key"]] for c in cols]
        for r in table["rows"]
    }
    md_rows["trivial baseline"] = [base.get(c["key"]) for c in cols]
    return [
        "## Results (this run)",
        "",
        f"Rows: the {len(encoders)} tiny encoders pretrained with the same budget, then frozen. "
        "Transfer columns: one multi-task PaLI fine-tune per encoder (tiny T5) over the "
        "mixture of all shapes tasks, evaluated per task on "
        f"at most {budget['num_eval_examples']} held-out validation examples each (fewer "
        "where the split is smaller: each task's n is in its interval lines below). "
        "`REC frozen` columns: the paper's frozen-encoder REC protocol (a decoder trained "
        "from scratch with cross-attention to the encoder's un-pooled tokens), Acc@0.5 "
        "on the validation and test splits. Scores: CIDEr (x100), VQA accuracy (%), "
        "ANLS (x100), TallyQA accuracy (%), Acc@0.5 (%).",
        "",
        _md_table([c["label"] for c in cols], md_rows),
        "",
        "Trivial baselines (constant predictions on the same examples): "
        + "; ".join(f"{report_lib.task_label(t)}: {d}" for t, d in base_what.items())
        + ".",
        "",
        "Above the trivial baseline: "
        + "; ".join(
            f"{DISPLAY.get(r['encoder'], r['encoder'])} {_above(r['values'], base, cols)}"
            for r in table["rows"]
        )
        + ".",
        "",
        "## LocCa's localisation advantage",
        "",
        head,
        "",
        *rec_interval_lines(table, budget["num_eval_examples"]),
        *rec_base,
        *(
            ["", "Paired over the same REC examples (per-example hits, 0 or 100):", ""]
            if rec_paired
            else []
        ),
        *rec_paired,
        "",
        "## Holistic transfer: intervals and paired differences",
        "",
        *(holistic or ["No caption / VQA predictions recorded in this run."]),
        "",
        "## Zero-shot ARef (LocCa pretraining)",
        "",
        *zero_shot_aref_lines(work),
        "",
        "The full comparison at a larger budget: `make reproduce` (README, "
        '"The toy localisation benchmark").',
        "",
    ]


def _paper_lines() -> list[str]:
    return [
        "## The paper's numbers (paper scale, for orientation only)",
        "",
        "L/14 encoders at 224 px pretrained on WebLI, transferred on the real datasets "
        "(LocCa paper); not comparable with the shapes-world numbers above, which only "
        "mirror the table's layout.",
        "",
        "PaLI-3-style transfer (frozen encoder, UL2):",
        "",
        _md_table(PAPER_TRANSFER["columns"], PAPER_TRANSFER["rows"]),
        "",
        "Frozen-encoder REC protocol (6-layer decoder from scratch), RefCOCO Acc@0.5:",
        "",
        _md_table(PAPER_REC["columns"], PAPER_REC["rows"]),
        "",
    ]


def _what_ran_lines(out, work, budget, stages, encoders) -> list[str]:
    pre_final = {e: _loss_series(os.path.join(work, "pretrain", e)) for e in encoders}
    return [
        "## What ran",
        "",
        f"- Pretraining (`transfer.pretrain`, gin/demo/pretrain_{{cap,cappa,locca}}.gin over "
        f"gin/pretrain/*_tiny.gin): {budget['pretrain_steps']} steps x batch "
        f"{budget['pretrain_batch_size']} each, on the same {budget['pretrain_scenes']} "
        "training scenes; Cap = caption only, CapPa = caption with "
        "parallel prediction (p = 0.75), LocCa = Cap + ARef + GCap (parallel p = 0.5 on Cap). "
        "Final training loss: "
        + ", ".join(
            f"{DISPLAY[e]} {ys[-1]:.3f} (from {ys[0]:.3f})"
            for e, (xs, ys) in pre_final.items()
            if ys
        )
        + ".",
        f"- Encoders exported to big_vision npz (`checkpoints.export_encoder`) under "
        f"`{os.path.relpath(work, out)}/pretrain/<encoder>/encoder.npz`.",
        f"- Transfer (`transfer.experiment`, gin/demo/transfer.gin): "
        f"{budget['transfer_steps']} multi-task fine-tuning steps per encoder; REC protocol "
        f"decoder {budget['rec_steps']} steps per encoder at learning rate "
        f"{budget['rec_learning_rate']:g}.",
        f"- Seeds: {budget['seed']} for parameter init, dropout, data order and tf.data "
        "sampling in every stage.",
        "",
        "Wall time per stage (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in stages["seconds"].items())
        + ".",
        "",
        "Figures: `training_curves.png` (pretraining, transfer and REC-decoder losses), "
        "`predictions.png` (held-out images: dashed white = true box, coloured = each "
        "encoder's box; predicted texts below), `table.png` (the table as bars), "
        "`contact_sheet.png` (the shapes world).",
        "",
    ]


def write_report(
    out: str,
    work: str,
    budget: Mapping,
    stages: Mapping,
    cells: Mapping,
    encoders: Sequence[str] = ENCODERS,
) -> dict:
    """report.md, demo_summary.json, the figures and the runner's table files
    under ``out`` from the finished run in ``work`` (``cells``: :func:`read_cells`,
    their tasks registered). ``stages``: ``{"seconds": {stage: s}, "total_seconds"}``."""
    exp_dir = os.path.join(work, "transfer")
    table = json.loads(pathlib.Path(exp_dir, "table.json").read_text())
    base, base_what = trivial_baselines(cells, table["columns"])
    head, detail = verdict(table, baselines=base, num_examples=budget["num_eval_examples"])
    cols = table["columns"]
    curves = write_training_curves(os.path.join(out, "training_curves.png"), work, cells, encoders)
    preds = write_predictions(os.path.join(out, "predictions.png"), cells, encoders)
    shutil.copy(os.path.join(exp_dir, "table.png"), os.path.join(out, "table.png"))
    for ext in ("md", "csv", "json"):
        shutil.copy(os.path.join(exp_dir, f"table.{ext}"), os.path.join(out, f"table.{ext}"))
    lines = [
        "# locca demo report (shapes world, tiny models)",
        "",
        f"Generated by `python -m transfer.demo` in {stages['total_seconds']:.0f} s wall "
        f"(seed {budget['seed']}).",
        "",
        *_results_lines(
            table,
            base,
            base_what,
            head,
            budget,
            work,
            encoders,
            rec_baseline_lines(cells, cols),
            paired_lines(cells, cols, encoders, frozen_rec=True),
            paired_lines(cells, cols, encoders, frozen_rec=False),
        ),
        *_paper_lines(),
        *_what_ran_lines(out, work, budget, stages, encoders),
    ]
    report_lib.atomic_write(os.path.join(out, "report.md"), "\n".join(lines))
    summary = {
        "table": table,
        "baselines": base,
        "baselines_what": base_what,
        "verdict": head.split("\n")[0],
        "verdict_detail": detail,
        "stages": stages,
        "budget": dict(budget),
    }
    report_lib.atomic_write(
        os.path.join(out, "demo_summary.json"), json.dumps(summary, indent=1, sort_keys=True)
    )
    return {"report": os.path.join(out, "report.md"), "curves": curves, "predictions": preds}
