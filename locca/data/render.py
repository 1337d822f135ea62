"""Rendering helpers for the shapes world (numpy + PIL only).

Conventions: pixel coordinates are (x, y) with the origin at the top-left
corner, x to the right, y down; an object's nominal placement is a square
``(x0, y0, d)`` (top-left corner and side ``d`` in pixels). Shapes are drawn
without anti-aliasing, so every object pixel has exactly the object's RGB
colour (text drawn on an object is anti-aliased, but stays inside it).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SHAPES = ("circle", "square", "triangle", "star", "diamond")
SHAPE_PLURALS = {s: s + "s" for s in SHAPES}

# Saturated, mutually distinct colours. The background is low-saturation grey
# (channel spread <= 40) so it can never contain one of these exactly.
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 225),
    "yellow": (240, 215, 20),
    "purple": (140, 40, 185),
    "orange": (250, 125, 15),
}
COLOUR_NAMES = tuple(COLOURS)
# Text drawn on an object: dark on light colours, white on dark ones.
TEXT_FILL = {
    "red": (255, 255, 255),
    "green": (255, 255, 255),
    "blue": (255, 255, 255),
    "yellow": (0, 0, 0),
    "purple": (255, 255, 255),
    "orange": (0, 0, 0),
}

SIZES = ("small", "medium", "large")
# Side of the nominal square as a fraction of the image side.
SIZE_FRACTION = {"small": 0.14, "medium": 0.22, "large": 0.33}

# Fraction of the nominal side usable for a centred word, per shape.
_TEXT_FIT = {"square": 0.9, "circle": 0.68}
WORD_SHAPES = tuple(_TEXT_FIT)


def shape_polygon(shape: str, x0: float, y0: float, d: float) -> list[tuple[float, float]]:
    """Vertices (x, y) in pixels of ``shape`` inscribed in the square (x0, y0, d).

    Circles are returned as a 24-gon (used for COCO segmentation polygons;
    circles are drawn with PIL's ellipse).
    """
    cx, cy, r = x0 + d / 2.0, y0 + d / 2.0, d / 2.0
    if shape == "square":
        return [(x0, y0), (x0 + d, y0), (x0 + d, y0 + d), (x0, y0 + d)]
    if shape == "triangle":
        return [(cx, y0), (x0 + d, y0 + d), (x0, y0 + d)]
    if shape == "diamond":
        return [(cx, y0), (x0 + d * 0.85, cy), (cx, y0 + d), (x0 + d * 0.15, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(ang), cy + r * 0.08 + rad * math.sin(ang)))
        return pts
    if shape == "circle":
        return [
            (cx + r * math.cos(2 * math.pi * k / 24), cy + r * math.sin(2 * math.pi * k / 24))
            for k in range(24)
        ]
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def shape_mask(shape: str, d: int) -> Image.Image:
    """An 'L' image of side d + 1 with the shape drawn as 255 on 0 (no anti-aliasing)."""
    return _shape_mask_cached(shape, int(d)).copy()


@functools.lru_cache(maxsize=4096)
def _shape_mask_cached(shape: str, d: int) -> Image.Image:
    m = Image.new("L", (d + 1, d + 1), 0)
    draw = ImageDraw.Draw(m)
    if shape == "circle":
        draw.ellipse([0, 0, d - 1, d - 1], fill=255)
    elif shape == "square":
        draw.rectangle([0, 0, d - 1, d - 1], fill=255)
    else:
        draw.polygon(shape_polygon(shape, 0.0, 0.0, d - 1), fill=255)
    return m


@functools.lru_cache(maxsize=4096)
def mask_stats(shape: str, d: int) -> tuple[tuple[int, int, int, int], int]:
    """(bbox (left, upper, right, lower) exclusive, pixel count) of the shape mask."""
    m = _shape_mask_cached(shape, d)
    return m.getbbox(), int(np.count_nonzero(np.asarray(m)))


@functools.lru_cache(maxsize=1)
def font():
    """PIL's default bitmap font (fixed size, glyphs about 11 px tall, no anti-aliasing)."""
    loader = getattr(ImageFont, "load_default_imagefont", None)  # Pillow >= 10.1
    return loader() if loader is not None else ImageFont.load_default()


@functools.lru_cache(maxsize=64)
def ui_font(size: int):
    """PIL's default font at ``size`` px, for annotations drawn on contact sheets."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # pragma: no cover - old Pillow / no FreeType
        return ImageFont.load_default()


@functools.lru_cache(maxsize=4096)
def text_mask(word: str, scale: int = 1) -> Image.Image:
    """An 'L' mask (255 = ink) of ``word`` in the default bitmap font, cropped to its ink
    and enlarged ``scale`` times (nearest neighbour): crisp, exact-colour text pixels."""
    im = Image.new("L", (8 * len(word) + 16, 24), 0)
    ImageDraw.Draw(im).text((4, 4), word, fill=255, font=font())
    box = im.getbbox()
    if box is None:
        raise ValueError(f"word {word!r} renders no ink in the default font")
    im = im.crop(box)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    return im


def fit_text_scale(word: str, shape: str, d: int, max_scale: int = 3) -> int | None:
    """Largest integer scale (<= max_scale) at which ``word`` fits inside ``shape`` of side
    d pixels, or None when it does not fit even at scale 1 (no legible word then)."""
    if shape not in _TEXT_FIT:
        return None
    room = _TEXT_FIT[shape] * d
    w, h = text_mask(word, 1).size
    scale = min(max_scale, int(room // w), int(room * 0.8 // h))
    return scale if scale >= 1 else None


def background(rng: np.random.Generator, resolution: int) -> tuple[np.ndarray, str]:
    """A noisy low-saturation grey background, uint8 [R, R, 3], and its name.

    Per pixel: base grey + a linear gradient + luminance noise (0..31, shared
    by the channels) + chroma noise (0..7 per channel) + a per-image tint
    (0..16 per channel). Channels differ by at most 23, so no saturated object
    colour can appear; values stay in [48, 210] (no clipping, no pure
    black/white, which text uses).
    """
    R = resolution
    base = int(rng.integers(85, 176))
    tint = rng.integers(0, 17, size=3).astype(np.uint8)  # [3]
    gy, gx = rng.uniform(-18, 18, size=2)
    ramp = np.linspace(-0.5, 0.5, R, dtype=np.float32)
    level = (base - 28) + ramp[:, None] * gy + ramp[None, :] * gx  # [R, R] in [48, 156]
    noise = np.frombuffer(rng.bytes(R * R * 4), np.uint8).reshape(R, R, 4)
    img = np.rint(level).astype(np.uint8)[:, :, None] + (noise[:, :, 3:] & 31)  # [R, R, 1]
    img = img + (noise[:, :, :3] & 7) + tint  # [R, R, 3] uint8, no overflow (<= 210)
    name = "dark grey" if base < 110 else ("light grey" if base > 150 else "grey")
    return img, name
