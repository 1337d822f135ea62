"""Shapes-world generation speed (one core): prints images/s at 64 and 224 px.

Each measured scene includes the image and every annotation (caption, boxes,
referring expressions, VQA, counting, text and knowledge questions); JPEG
encoding is measured separately. Reports wall-clock rate and rate per CPU
second of this process (the one-core number, robust to a busy machine).
Run: ``python -m benchmarks.shapes_speed [--num 2000]``.
"""

import argparse
import time

from locca.data.shapes import ShapesWorld, scene_to_jpeg


def rate(resolution: int, num: int, jpeg: bool = False) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU second of this process)."""
    w = ShapesWorld(resolution=resolution, seed=0)
    for i in range(20):  # warm caches (masks, fonts)
        w.scene(i)
    t, c = time.perf_counter(), time.process_time()
    for i in range(num):
        s = w.scene(1000 + i)
        if jpeg:
            scene_to_jpeg(s)
    return num / (time.perf_counter() - t), num / (time.process_time() - c)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num", type=int, default=2000)
    args = p.parse_args(argv)
    for res in (64, 224):
        n = args.num if res == 64 else max(1, args.num // 4)
        for jpeg, what in ((False, "scene + annotations"), (True, "+ JPEG encode")):
            wall, cpu = rate(res, n, jpeg)
            print(f"{res:4d} px: {wall:8.1f} images/s wall, {cpu:8.1f} images/s per CPU ({what})")


if __name__ == "__main__":
    main()
