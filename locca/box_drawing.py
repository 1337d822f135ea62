"""The one box-drawing routine: a box outline on a PIL image or a matplotlib image axis.

Boxes are ``[ymin, xmin, ymax, xmax]`` in ``[0, 1]`` of the image (the project's
convention, :mod:`locca.boxes`). In pixels the box covers columns
``[xmin * W, xmax * W)`` and rows ``[ymin * H, ymax * H)`` (:func:`box_pixels`).

* PIL (``PIL.ImageDraw.ImageDraw``, integer pixels): the outline's outer edge runs
  one pixel outside the box, so a 1-pixel line never covers the object's pixels.
* matplotlib (an ``Axes`` showing the image with ``imshow``: pixel centres at
  integers, pixel edges at half-integers): the rectangle runs along the box's
  pixel edges.

matplotlib is imported only when an axis is drawn on (it is an optional, heavy
dependency of the library).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["box_pixels", "draw_box"]


def box_pixels(
    box: Sequence[float], width: float, height: float, origin: tuple[float, float] = (0, 0)
) -> tuple[float, float, float, float]:
    """Normalised yxyx ``box`` -> pixel edges ``(x0, y0, x1, y1)`` of a ``width`` x ``height``
    image whose top-left pixel sits at ``origin`` = (x, y)."""
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    ox, oy = origin
    return ox + xmin * width, oy + ymin * height, ox + xmax * width, oy + ymax * height


def draw_box(
    canvas: Any,
    box: Sequence[float],
    *,
    size: tuple[float, float],
    colour: Any,
    line_width: float = 2,
    style: str = "-",
    label: str | None = None,
    origin: tuple[float, float] = (0, 0),
    font: Any = None,
    fontsize: float = 7,
) -> None:
    """Draws ``box`` (normalised yxyx) with an optional ``label`` at its top-left corner.

    Args:
      canvas: a ``PIL.ImageDraw.ImageDraw`` or a matplotlib ``Axes`` showing the image.
      size: (width, height) of the image on the canvas, in canvas pixels.
      colour: PIL fill (RGB tuple or name) / matplotlib colour.
      line_width: outline width (PIL pixels / matplotlib points).
      style: matplotlib line style (PIL draws solid lines).
      origin: (x, y) of the image's top-left pixel on the canvas (PIL: a tile of a sheet).
      font, fontsize: label font (PIL ``ImageFont``) / size (matplotlib points).
    """
    x0, y0, x1, y1 = box_pixels(box, size[0], size[1], origin)
    if hasattr(canvas, "add_patch"):  # a matplotlib axis
        from matplotlib.patches import Rectangle

        canvas.add_patch(
            Rectangle(
                (x0 - 0.5, y0 - 0.5),
                x1 - x0,
                y1 - y0,
                fill=False,
                edgecolor=colour,
                lw=line_width,
                ls=style,
            )
        )
        if label:
            canvas.text(
                x0 - 0.5, y0 - 1, label, color=colour, fontsize=fontsize, va="bottom", clip_on=True
            )
        return
    canvas.rectangle([x0 - 1, y0 - 1, x1, y1], outline=colour, width=int(line_width))
    if label:
        canvas.text((x0 + 2, y0 + 1), label, fill=colour, font=font)
