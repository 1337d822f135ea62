r"""Learning diagnostics for localisation: can the LocCa pipeline learn boxes?

    python -m benchmarks.aref_diagnostics overfit [--steps 400] [--images 16]
    python -m benchmarks.aref_diagnostics curve [--steps 2000] [--points 5] [--eval 1000]

Both run the toy recipe of ``gin/pretrain/locca_tiny.gin`` (plus any
``--gin_file`` / ``--gin.NAME=VALUE``) through the real pretraining entry
point's library call and read Acc@0.5 from the run's ``metrics.jsonl``.

* ``overfit``: a training split of ``--images`` scenes, trained for
  ``--steps`` and scored on those same scenes (zero-shot ARef prompts of the
  training images). A pipeline that can learn boxes memorises them: the
  check passes at training Acc@0.5 >= ``--target`` (default 0.9) and exits 1
  otherwise. Measured (2 CPU cores, batch 32): 16 scenes, 400 steps: 100%
  (16/16, 95% interval [80.6, 100]) in 298 s. More scenes need more steps
  than a check should take: 64 scenes reached 27% after 500 steps x 16.
  Memorising is not localising: the 16-scene run puts 0.18 of its
  cross-attention on the box (uniform: 0.11), so the model recalls the box
  from the image and its text more than it reads the box off the object.
* ``curve``: the ARef learning curve: held-out Acc@0.5 (with its 95%
  interval) and the baselines at ``--points`` evenly spaced steps.

Numbers go to stdout and, with ``--json``, to a file. These are benchmarks
(minutes), not tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from transfer import pretrain

GIN_FILE = "pretrain/locca_tiny.gin"


def _run(model_dir: str, gin_files, bindings) -> list[dict]:
    import gin

    with gin.unlock_config():
        gin.clear_config()
    pretrain.parse_gin(gin_files, [f"MODEL_DIR = {model_dir!r}", *bindings])
    pretrain.run_from_gin()
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if "aref_acc@0.5" in r]


def _fmt(r: dict, key: str = "aref_acc@0.5") -> str:
    """``r[key]`` in percent, with its 95% interval when the row has one."""
    lo, hi = r.get(f"{key}_low"), r.get(f"{key}_high")
    if lo is None:
        return f"{100 * r[key]:5.1f}"
    return f"{100 * r[key]:5.1f} [{100 * lo:4.1f}, {100 * hi:4.1f}]"


def _where(r: dict) -> str:
    """Where the ARef failure sits (``PretrainEvaluator`` probe metrics of one row)."""
    parts = []
    groups = [k[len("aref_count_objects") :] for k in r if k.startswith("aref_count_objects")]
    if groups:
        parts.append("by objects (n; Acc@0.5 / largest / random region) " + " ".join(
            f"{g} ({r[f'aref_count_objects{g}']:.0f}; "
            f"{100 * r[f'aref_acc@0.5_objects{g}']:.1f}/"
            f"{100 * r.get(f'aref_acc@0.5_objects{g}_largest_region', float('nan')):.1f}/"
            f"{100 * r.get(f'aref_acc@0.5_objects{g}_random_region', float('nan')):.1f})"
            for g in groups))  # fmt: skip
    coords = [c for c in ("ymin", "xmin", "ymax", "xmax") if f"aref_tf_acc_{c}" in r]
    if coords:
        nan = float("nan")
        cells = [f"{c}:{100 * r[f'aref_tf_acc_{c}']:.0f}%/"
                 f"{r.get(f'aref_tf_bin_error_{c}', nan):.1f}" for c in coords]  # fmt: skip
        parts.append("teacher-forced exact/bin error " + " ".join(cells))
    layers = sorted(k for k in r if k.startswith("aref_xattn_in_box_l"))
    if layers:
        parts.append("x-attn on box " + " ".join(
            f"l{k[-1]}:{r[k]:.2f}(max head {r[k.replace('_l', '_max_l')]:.2f})" for k in layers
        ) + f" vs uniform {r['aref_xattn_in_box_uniform']:.2f}")  # fmt: skip
    return "; ".join(parts)


def overfit(args) -> dict:
    name = f"shapes_pretrain_overfit_{args.images}"
    bindings = [
        f"TRAIN_STEPS = {args.steps}",
        f"BATCH_SIZE = {args.batch}",
        f"tasks.make_shapes_pretrain_task.name = {name!r}",
        f"tasks.make_shapes_pretrain_task.num_train = {args.images}",
        "transfer.pretrain.evaluator_kwargs = "
        f"{{'split': 'train', 'num_examples': {args.images}, 'batch_size': {args.images}, "
        "'num_render': 8, 'box_encoding': %BOX_ENCODING, 'num_bins': %NUM_BINS}",
        f"transfer.pretrain.eval_every = {args.steps}",
        "transfer.pretrain.log_every = 100",
        "transfer.pretrain.progress = False",
        "transfer.pretrain.tensorboard = False",
        *args.gin_bindings,
    ]
    t0 = time.time()
    rows = _run(args.model_dir, [GIN_FILE, *args.gin_file], bindings)
    last = rows[-1]
    ok = last["aref_acc@0.5"] >= args.target
    print(
        f"overfit: {args.images} training images, {args.steps} steps x batch {args.batch}, "
        f"{time.time() - t0:.0f} s"
    )
    print(f"  training-image ARef Acc@0.5 {_fmt(last)} (target >= {100 * args.target:.0f})")
    print(f"  mean IoU {100 * last['aref_mean_iou']:.1f}, mean-box baseline "
          f"{100 * last['aref_acc@0.5_mean_box']:.1f}")  # fmt: skip
    print("  " + _where(last))
    print("  PASS" if ok else "  FAIL: the pipeline does not memorise boxes")
    return {"kind": "overfit", "ok": ok, "seconds": time.time() - t0, "final": last}


def curve(args) -> dict:
    every = max(1, args.steps // args.points)
    bindings = [
        f"TRAIN_STEPS = {args.steps}",
        f"BATCH_SIZE = {args.batch}",
        f"transfer.pretrain.eval_every = {every}",
        f"tasks.make_shapes_pretrain_task.num_validation = {args.eval}",
        "transfer.pretrain.evaluator_kwargs = "
        f"{{'num_examples': {args.eval}, 'batch_size': 250, 'num_render': 8, "
        "'box_encoding': %BOX_ENCODING, 'num_bins': %NUM_BINS}",
        "transfer.pretrain.log_every = 100",
        "transfer.pretrain.progress = False",
        "transfer.pretrain.tensorboard = False",
        *args.gin_bindings,
    ]
    t0 = time.time()
    rows = _run(args.model_dir, [GIN_FILE, *args.gin_file], bindings)
    print(f"ARef learning curve: {args.steps} steps x batch {args.batch}, "
          f"{args.eval} held-out regions, {time.time() - t0:.0f} s")  # fmt: skip
    print("  step | Acc@0.5 [95% CI] | mean IoU | mean box | largest region | random region")
    for r in rows:
        print(
            f"  {r['step']:5d} | {_fmt(r)} | {100 * r['aref_mean_iou']:5.1f} | "
            f"{100 * r['aref_acc@0.5_mean_box']:5.1f} | "
            f"{100 * r.get('aref_acc@0.5_largest_region', float('nan')):5.1f} | "
            f"{100 * r.get('aref_acc@0.5_random_region', float('nan')):5.1f}"
        )
        print("        " + _where(r))
    return {"kind": "curve", "seconds": time.time() - t0, "points": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=("overfit", "curve"))
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--images", type=int, default=16, help="overfit: training images")
    ap.add_argument("--target", type=float, default=0.9, help="overfit: Acc@0.5 to reach")
    ap.add_argument("--points", type=int, default=5, help="curve: evaluations")
    ap.add_argument("--eval", type=int, default=1000, help="curve: held-out regions")
    ap.add_argument("--model_dir", default=None)
    ap.add_argument("--gin_file", action="append", default=[])
    ap.add_argument("--gin_bindings", action="append", default=[])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    args.steps = args.steps or (400 if args.kind == "overfit" else 2000)
    args.model_dir = args.model_dir or tempfile.mkdtemp(prefix=f"aref_{args.kind}_")
    res = overfit(args) if args.kind == "overfit" else curve(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0 if res.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
