"""Contact sheet and demo summary of the shapes world."""

import json

import numpy as np
from PIL import Image

from locca.data.contact_sheet import make_contact_sheet, write_contact_sheet
from locca.data.shapes import ShapesWorld
from transfer import demo


def test_contact_sheet_draws_boxes(tmp_path):
    scenes = [ShapesWorld(64, seed=2).scene(i) for i in range(6)]
    path = write_contact_sheet(scenes, str(tmp_path / "sheet.png"), cols=3, tile=128)
    with Image.open(path) as im:
        assert im.format == "PNG"
        sheet = np.asarray(im.convert("RGB"))
    assert sheet.shape[1] == 3 * (128 + 6) + 6
    # Box outlines are drawn: black around objects, white (thick) around the referred one.
    n = 0
    for t, s in enumerate(scenes[:3]):  # first row of tiles
        ox = 6 + t * (128 + 6)
        for k, o in enumerate(s.objects):
            y = 6 + round(o.box[0] * 128) - 1
            x0, x1 = ox + round(o.box[1] * 128), ox + round(o.box[3] * 128) - 1
            expected = 255 if k == s.refexps[0].object_index else 0
            assert (sheet[y, x0:x1] == expected).all(), (t, k)
            n += 1
    assert n >= 3
    # Deterministic rendering.
    again = np.asarray(make_contact_sheet(scenes, cols=3, tile=128))
    assert np.array_equal(again, sheet)


def test_demo_writes_sheet_and_summary(tmp_path, capsys):
    out = tmp_path / "demo_out"
    args = ["--out", str(out), "--num_images", "30", "--sheet_images", "4", "--stages", "sheet"]
    assert demo.main(args) == 0
    assert (out / "contact_sheet.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    world = ShapesWorld(64, 0)
    n_obj = sum(len(world.scene(i).objects) for i in range(30))
    assert summary["images"] == 30 and summary["objects"] == n_obj
    assert sum(summary["shape"].values()) == sum(summary["colour"].values()) == n_obj
    assert "objects_per_image" in capsys.readouterr().out
