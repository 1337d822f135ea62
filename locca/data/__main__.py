"""The shapes world's command line: export a split in an official format, or show a scene.

python -m locca.data export --format F --out DIR --num_images N --seed S
    [--split train|val|test] [--resolution R] [--year 2014|2017]
python -m locca.data show --index K [--seed S] [--resolution R]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from locca import cli
from locca.data import export as export_lib
from locca.data.shapes import ShapesWorld


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m locca.data", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="write a split in an official dataset format")
    e.add_argument("--format", required=True, choices=sorted(export_lib.FORMATS))
    e.add_argument("--out", required=True)
    e.add_argument("--num_images", type=int, default=100)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--split", default="train", choices=["train", "val", "test"])
    e.add_argument("--resolution", type=int, default=64)
    e.add_argument("--year", type=int, default=2014, choices=[2014, 2017])
    s = sub.add_parser("show", help="print one scene's annotations as JSON")
    s.add_argument("--index", type=int, default=0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--resolution", type=int, default=64)
    args = p.parse_args(argv)
    if args.cmd == "export":
        written = export_lib.export(
            args.format, args.out, args.num_images, args.seed, args.split,
            resolution=args.resolution, year=args.year,
        )  # fmt: skip
        print(f"wrote {args.format} ({args.split}, {args.num_images} images) to {args.out}:")
        for path in written:
            print("  " + path)
        return 0
    sc = ShapesWorld(args.resolution, args.seed).scene(args.index)
    print(json.dumps(sc.annotations(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
