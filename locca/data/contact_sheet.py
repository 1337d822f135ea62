"""Contact sheet: a PNG grid of scenes with their boxes and texts drawn (PIL only).

Each tile shows the scene image upscaled (nearest neighbour) to ``tile``
pixels, every object's box outlined with its index, and below it the
caption, one referring expression (its box drawn thicker, in white) and one
VQA question with its majority answer.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw

from locca.box_drawing import draw_box
from locca.data import render
from locca.data.shapes import Scene

_BOX = (0, 0, 0)
_REF = (255, 255, 255)


def make_contact_sheet(
    scenes: Sequence[Scene], cols: int = 4, tile: int = 256, text_lines: int = 9
) -> Image.Image:
    """The contact sheet of ``scenes`` as a PIL RGB image."""
    if not scenes:
        raise ValueError("make_contact_sheet needs at least one scene")
    fnt = render.ui_font(11)
    line_h = 13
    band = text_lines * line_h + 6
    rows = (len(scenes) + cols - 1) // cols
    pad = 6
    sheet = Image.new("RGB", (cols * (tile + pad) + pad, rows * (tile + band + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    wrap = max(20, tile // 6)
    for n, s in enumerate(scenes):
        ox = pad + (n % cols) * (tile + pad)
        oy = pad + (n // cols) * (tile + band + pad)
        sheet.paste(Image.fromarray(s.image).resize((tile, tile), Image.NEAREST), (ox, oy))
        for k, o in enumerate(s.objects):
            draw_box(draw, o.box, size=(tile, tile), origin=(ox, oy), colour=_BOX, line_width=1,
                     label=str(k), font=fnt)  # fmt: skip
        lines = textwrap.wrap(f"#{s.index}: {s.caption}", wrap)
        if s.refexps:
            r = s.refexps[0]
            draw_box(draw, r.box, size=(tile, tile), origin=(ox, oy), colour=_REF, line_width=3)
            lines += textwrap.wrap(f"REF -> {r.object_index}: {r.text}", wrap)
        if s.vqa:
            q = s.vqa[0]
            lines += textwrap.wrap(f"Q: {q.question} A: {q.multiple_choice_answer}", wrap)
        if s.counting:
            c = s.counting[-1]
            lines += textwrap.wrap(f"Q: {c.question} A: {c.answer}", wrap)
        for j, line in enumerate(lines[:text_lines]):
            draw.text((ox, oy + tile + 3 + j * line_h), line, fill=(0, 0, 0), font=fnt)
    return sheet


def write_contact_sheet(scenes: Sequence[Scene], path: str, **kwargs) -> str:
    """Write the contact sheet PNG atomically to ``path``; returns the path."""
    img = make_contact_sheet(scenes, **kwargs)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".png")
    os.close(fd)
    try:
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
