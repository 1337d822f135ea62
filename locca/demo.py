"""locca demo (initial version): generate a small shapes-world split, draw a
contact sheet, and summarise the world.

    python -m locca.demo --out demo_out [--num_images 200] [--seed 0] [--resolution 64]

Writes ``OUT/contact_sheet.png`` and ``OUT/summary.json`` and prints counts of
objects per shape / colour / size, questions per type and answer
distributions.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter

from locca.data.contact_sheet import write_contact_sheet
from locca.data.shapes import ShapesWorld


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m locca.demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="demo_out")
    p.add_argument("--num_images", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--sheet_images", type=int, default=12)
    args = p.parse_args(argv)
    world = ShapesWorld(resolution=args.resolution, seed=args.seed)
    scenes = [world.scene(i) for i in range(args.num_images)]
    os.makedirs(args.out, exist_ok=True)
    sheet = write_contact_sheet(
        scenes[: args.sheet_images], os.path.join(args.out, "contact_sheet.png")
    )
    summary = summarise(scenes)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"shapes world {world}: {args.num_images} images")
    for k, v in summary.items():
        print(f"  {k}: {v}")
    print(f"contact sheet: {sheet}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
