"""The one box-drawing routine: the same normalised yxyx box lands on the same pixels
on a PIL image and on a matplotlib image axis."""

import matplotlib.pyplot as plt  # headless: matplotlib falls back to Agg
import numpy as np
from PIL import Image, ImageDraw

from locca.box_drawing import box_pixels, draw_box

BOX = [0.25, 0.5, 0.75, 1.0]  # ymin, xmin, ymax, xmax of a 40 x 20 (W x H) image


def test_box_pixels_convention():
    assert box_pixels(BOX, 40, 20) == (20.0, 5.0, 40.0, 15.0)  # x0, y0, x1, y1
    assert box_pixels(BOX, 40, 20, origin=(3, 7)) == (23.0, 12.0, 43.0, 22.0)


def test_pil_outline_hugs_the_box_from_outside():
    im = Image.new("RGB", (48, 24), "black")
    draw_box(ImageDraw.Draw(im), BOX, size=(40, 20), colour=(255, 0, 0), line_width=1)
    red = np.asarray(im)[..., 0] == 255  # [H, W]
    rows, cols = np.nonzero(red)
    # Box pixels: columns 20..39, rows 5..14; the 1-px outline is the ring around them.
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (4, 15, 19, 40)
    assert not red[5:15, 20:40].any()  # nothing drawn on the box's own pixels
    im2 = Image.new("RGB", (48, 24), "black")  # a tile at an origin moves the outline
    draw_box(ImageDraw.Draw(im2), BOX, size=(40, 20), origin=(2, 1), colour=(255, 0, 0),
             line_width=1, label="x")  # fmt: skip
    r2, c2 = np.nonzero(np.asarray(im2)[..., 0] == 255)
    assert (r2.min(), c2.min()) == (5, 21)


def test_matplotlib_rectangle_on_pixel_edges():
    fig, ax = plt.subplots()
    ax.imshow(np.zeros((20, 40, 3)))
    draw_box(ax, BOX, size=(40, 20), colour="red", style="--", label="gt")
    (rect,) = ax.patches
    assert rect.get_xy() == (19.5, 4.5)  # pixel centres at integers: edges at -0.5
    assert (rect.get_width(), rect.get_height()) == (20.0, 10.0)
    assert rect.get_linestyle() == "--" and not rect.get_fill()
    assert [t.get_text() for t in ax.texts] == ["gt"]
    plt.close(fig)
