"""Experiment tables (Markdown / CSV / JSON), a bar chart and a prediction grid.

A table is a plain dict (what ``table.json`` holds)::

    {"title": str,
     "columns": [{"key": "shapes_vqa/vqa_accuracy", "label": "VQA acc", "task": ...,
                  "metric": ..., "scale": 1.0}, ...],
     "rows": [{"encoder": "locca_tiny", "values": {key: float | None},
               "intervals": {key: [low, high]}}, ...]}

``intervals`` holds the 95% interval of each value whose metric reported one
(``{metric}_low`` / ``{metric}_high``, e.g. CIDEr, VQA accuracy, Acc@0.5),
scaled and rounded like the value; Markdown prints it after the value as
``12.35 [10.00, 14.69]``, the CSV holds the values only.

Values are the metric times the column's ``scale`` (e.g. ANLS x 100, as the
paper prints it), rounded to ``DECIMALS`` places, so the three files hold the
very same numbers; a missing cell is ``null`` (JSON), empty (CSV), ``-``
(Markdown). Writers are atomic (temp file + rename).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from locca.box_drawing import draw_box

DECIMALS = 2
MISSING_MD = "-"

# metric key (as the metric fn returns it) -> (short label, scale); metrics not
# listed here are bookkeeping (counts, timings) and left out of default tables.
METRIC_LABELS: dict[str, tuple[str, float]] = {
    "cider": ("CIDEr", 1.0),
    "vqa_accuracy": ("acc", 1.0),
    "anls": ("ANLS", 100.0),
    "tally_simple": ("simple", 1.0),
    "tally_complex": ("complex", 1.0),
    "acc@0.5": ("Acc@0.5", 1.0),
}

# task name -> the paper's column name (shapes analogues and real datasets).
TASK_LABELS: dict[str, str] = {
    "shapes_caption": "Caption (COCO)",
    "shapes_vqa": "VQA (VQAv2)",
    "shapes_okvqa": "OKVQA",
    "shapes_textvqa": "TextVQA",
    "shapes_stvqa": "ST-VQA",
    "shapes_tally": "Tally",
    "shapes_refexp": "RefExp",
    "coco_captions": "COCO",
    "vqav2": "VQAv2",
    "okvqa": "OKVQA",
    "textvqa": "TextVQA",
    "stvqa": "ST-VQA",
    "tallyqa": "TallyQA",
    "refcoco": "RefCOCO",
    "refcoco_all": "RefCOCO mix",
}


def task_label(task: str) -> str:
    if task.startswith("rec_protocol:"):
        return "REC frozen " + task_label(task.split(":", 1)[1])
    m = re.fullmatch(r"shapes_refexp_b(\d+)", task)
    if m:
        return f"RefExp ({m.group(1)} bins)"
    return TASK_LABELS.get(task, task)


# Column order of a task's splits (metric keys ``split/metric``); other splits follow by name.
SPLIT_ORDER = ("", "train", "validation", "val", "minival", "test", "testA", "testB")


def default_columns(task: str, metrics: Mapping[str, float]) -> list[dict]:
    """Columns for one task's metric dict (keys ``metric`` or ``split/metric``)."""
    cols = []
    order = list(METRIC_LABELS)
    keys = [k for k in metrics if k.rsplit("/", 1)[-1] in METRIC_LABELS]

    # Splits (prefixes) in a canonical order (SPLIT_ORDER, then by name), metrics in
    # METRIC_LABELS order: the same columns whether the metrics were just computed
    # or read back from a recorded cell (whose JSON keys may come in another order).
    def split_rank(prefix: str) -> tuple[int, str]:
        return (SPLIT_ORDER.index(prefix) if prefix in SPLIT_ORDER else len(SPLIT_ORDER), prefix)

    keys.sort(key=lambda k: (split_rank(k.rpartition("/")[0]), order.index(k.rpartition("/")[2])))
    for key in keys:
        metric = key.rsplit("/", 1)[-1]
        label, scale = METRIC_LABELS[metric]
        prefix = key[: -len(metric)].rstrip("/")
        name = f"{task_label(task)} {prefix + ' ' if prefix else ''}{label}"
        cols.append(dict(key=f"{task}/{key}", label=name, task=task, metric=key, scale=scale))
    return cols


def _round(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    return round(x, DECIMALS)


def make_table(
    title: str,
    encoders: Sequence[str],
    columns: Sequence[Mapping],
    cells: Mapping[tuple[str, str], Mapping[str, float]],
) -> dict:
    """Builds the table dict.

    Args:
      title: a heading.
      encoders: row names, in order.
      columns: dicts with ``key``, ``label``, ``task``, ``metric``, ``scale``.
      cells: ``(encoder, task) -> {metric: value}`` (unscaled metric values).
    """
    keys = [c["key"] for c in columns]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate column keys: {keys}")
    rows = []
    for enc in encoders:
        values, intervals = {}, {}
        for c in columns:
            m = cells.get((enc, c["task"])) or {}
            scale = float(c.get("scale", 1))
            v = m.get(c["metric"])
            values[c["key"]] = _round(None if v is None else float(v) * scale)
            lo, hi = m.get(f"{c['metric']}_low"), m.get(f"{c['metric']}_high")
            if v is not None and lo is not None and hi is not None:
                intervals[c["key"]] = [_round(float(lo) * scale), _round(float(hi) * scale)]
        rows.append({"encoder": enc, "values": values, "intervals": intervals})
    return {"title": title, "columns": [dict(c) for c in columns], "rows": rows}


def _fmt(v: float | None) -> str:
    return MISSING_MD if v is None else f"{v:.{DECIMALS}f}"


def to_markdown(table: Mapping) -> str:
    cols = table["columns"]
    lines = [
        "| encoder | " + " | ".join(c["label"] for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for r in table["rows"]:
        vals = []
        for c in cols:
            text = _fmt(r["values"].get(c["key"]))
            ci = (r.get("intervals") or {}).get(c["key"])
            if ci and text != MISSING_MD and None not in ci:
                text += f" [{_fmt(ci[0])}, {_fmt(ci[1])}]"
            vals.append(text)
        lines.append(f"| {r['encoder']} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: Mapping) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = table["columns"]
    w.writerow(["encoder"] + [c["label"] for c in cols])
    for r in table["rows"]:
        vals = r["values"]
        w.writerow(
            [r["encoder"]]
            + ["" if vals.get(c["key"]) is None else f"{vals[c['key']]:.{DECIMALS}f}" for c in cols]
        )
    return buf.getvalue()


def read_markdown(text: str) -> dict[str, list[float | None]]:
    """Parses :func:`to_markdown` output -> {encoder: [values]} (for checks;
    intervals left out)."""
    out = {}
    for line in text.strip().splitlines()[2:]:
        parts = [p.strip().split(" [")[0] for p in line.strip().strip("|").split("|")]
        out[parts[0]] = [None if p == MISSING_MD else float(p) for p in parts[1:]]
    return out


def read_csv(text: str) -> dict[str, list[float | None]]:
    rows = list(csv.reader(io.StringIO(text)))
    return {r[0]: [None if v == "" else float(v) for v in r[1:]] for r in rows[1:]}


def atomic_write(path: str, data: str | bytes) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(tmp, mode) as f:
        f.write(data)
    os.replace(tmp, path)


def write_table(table: Mapping, out_prefix: str) -> dict[str, str]:
    """Writes ``{prefix}.md``, ``.csv``, ``.json``; returns the paths."""
    paths = {ext: f"{out_prefix}.{ext}" for ext in ("md", "csv", "json")}
    md = f"# {table['title']}\n\n" + to_markdown(table) if table.get("title") else ""
    atomic_write(paths["md"], md or to_markdown(table))
    atomic_write(paths["csv"], to_csv(table))
    atomic_write(paths["json"], json.dumps(table, indent=1, sort_keys=True) + "\n")
    return paths


# ---------------------------------------------------------------------------
# Figures (matplotlib, Agg).


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_bar_chart(table: Mapping, path: str, ncols: int = 4) -> str:
    """One small bar plot per column (bars = encoders); missing cells empty."""
    plt = _plt()
    cols = table["columns"]
    encs = [r["encoder"] for r in table["rows"]]
    n = max(1, len(cols))
    nc = min(ncols, n)
    nr = (n + nc - 1) // nc
    fig, axes = plt.subplots(nr, nc, figsize=(3.2 * nc, 2.6 * nr), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, c in enumerate(cols):
        ax = axes[i // nc][i % nc]
        vals = [r["values"].get(c["key"]) for r in table["rows"]]
        heights = [0.0 if v is None else v for v in vals]
        bars = ax.bar(range(len(encs)), heights, color=colours[: len(encs)] or None)
        for b, v in zip(bars, vals):
            ax.annotate(
                _fmt(v),
                (b.get_x() + b.get_width() / 2, b.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        ax.set_xticks(range(len(encs)))
        ax.set_xticklabels(encs, fontsize=7, rotation=20)
        ax.set_title(c["label"], fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        top = max([h for h in heights] + [1e-6])
        ax.set_ylim(0, top * 1.2)
    for j in range(len(cols), nr * nc):
        axes[j // nc][j % nc].axis("off")
    if table.get("title"):
        fig.suptitle(table["title"], fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_curves(
    panels: Sequence[tuple[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]]],
    path: str,
    ncols: int = 3,
    ylabel: str = "loss",
) -> str:
    """Line plots: ``panels = [(title, {series: (steps, values)})]``."""
    plt = _plt()
    n = max(1, len(panels))
    nc = min(ncols, n)
    nr = (n + nc - 1) // nc
    fig, axes = plt.subplots(nr, nc, figsize=(4.0 * nc, 2.9 * nr), squeeze=False)
    for i, (title, series) in enumerate(panels):
        ax = axes[i // nc][i % nc]
        for name, (xs, ys) in series.items():
            ax.plot(xs, ys, label=name, lw=1.2, marker="." if len(xs) < 20 else None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        if series:
            ax.legend(fontsize=7)
    for j in range(len(panels), nr * nc):
        axes[j // nc][j % nc].axis("off")
    fig.tight_layout()
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_prediction_grid(
    examples: Sequence[Mapping],
    path: str,
    encoders: Sequence[str],
    ncols: int = 4,
) -> str:
    """A grid of held-out images with true and predicted boxes and texts.

    Each example: ``image`` (uint8 [H, W, 3]), ``title`` (str: the question,
    expression or task), ``truth`` (str), optional ``gt_box`` (normalised
    yxyx), and ``preds``: ``{encoder: {"text": str, "box": yxyx | None}}``.
    The ground-truth box is drawn dashed white; each encoder's box in its
    colour; texts are listed under the image.
    """
    plt = _plt()

    n = max(1, len(examples))
    nc = min(ncols, n)
    nr = (n + nc - 1) // nc
    lines = 2 + len(encoders)
    text_h = 0.16 * lines  # inches of text under each image
    fig = plt.figure(figsize=(3.4 * nc, (3.0 + text_h) * nr + 0.4))
    gs = fig.add_gridspec(2 * nr, nc, height_ratios=[3.0, text_h] * nr, hspace=0.05, wspace=0.08)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ecol = {e: colours[i % len(colours)] for i, e in enumerate(encoders)}
    for i, ex in enumerate(examples):
        r, c = divmod(i, nc)
        ax = fig.add_subplot(gs[2 * r, c])
        tax = fig.add_subplot(gs[2 * r + 1, c])
        tax.axis("off")
        img = ex["image"]
        h, w = img.shape[:2]
        ax.imshow(img, interpolation="nearest")
        if ex.get("gt_box") is not None:
            draw_box(ax, ex["gt_box"], size=(w, h), colour="white", line_width=2.0, style="--")
        tax.text(
            0.0,
            1.0,
            _wrap(ex.get("title", ""), 46),
            fontsize=6.5,
            va="top",
            fontweight="bold",
            transform=tax.transAxes,
        )
        tax.text(
            0.0,
            1.0 - 1.0 / lines,
            f"truth: {_wrap(ex.get('truth', ''), 40)}",
            fontsize=6.5,
            va="top",
            transform=tax.transAxes,
        )
        for k, e in enumerate(encoders):
            p = ex.get("preds", {}).get(e, {})
            if p.get("box") is not None:
                draw_box(ax, p["box"], size=(w, h), colour=ecol[e], line_width=1.5)
            tax.text(
                0.0,
                1.0 - (k + 2) / lines,
                f"{e}: {_wrap(str(p.get('text', '')), 40)}",
                fontsize=6.5,
                va="top",
                color=ecol[e],
                transform=tax.transAxes,
            )
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], color=ecol[e], lw=2) for e in encoders]
    handles.append(plt.Line2D([], [], color="grey", lw=2, ls="--"))
    fig.legend(handles, [*encoders, "ground truth (white)"], loc="upper center", ncol=4, fontsize=7)
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.35 / fig.get_figheight(), bottom=0.01)
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _wrap(s: str, width: int) -> str:
    s = str(s)
    return s if len(s) <= width else s[: width - 1] + "…"
