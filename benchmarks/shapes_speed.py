"""Shapes-world generation speed (one core): prints images/s at 64 and 224 px.

Each measured scene includes the image and every annotation (caption, boxes,
referring expressions, VQA, counting, text and knowledge questions); JPEG
encoding is measured separately. Run: ``python benchmarks/shapes_speed.py``.
"""

import argparse
import time

from locca.data.shapes import ShapesWorld, scene_to_jpeg


def rate(resolution: int, num: int, jpeg: bool = False) -> float:
    w = ShapesWorld(resolution=resolution, seed=0)
    for i in range(20):  # warm caches (masks, fonts)
        w.scene(i)
    t = time.perf_counter()
    for i in range(num):
        s = w.scene(1000 + i)
        if jpeg:
            scene_to_jpeg(s)
    return num / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num", type=int, default=2000)
    args = p.parse_args()
    for res in (64, 224):
        n = args.num if res == 64 else max(1, args.num // 4)
        print(f"{res:4d} px: {rate(res, n):8.1f} images/s (scene + annotations)")
        print(f"{res:4d} px: {rate(res, n, jpeg=True):8.1f} images/s (+ JPEG encode)")


if __name__ == "__main__":
    main()
