"""Datasets over COCO images find them once under DATA_DIR/coco/ (issue 12).

A data folder written by the shapes exporter in the official formats, with
every COCO image moved to ``coco/{train2014,val2014}`` (none left in the
dataset folders): the VQAv2, OK-VQA, RefCOCO/+/g and TallyQA readers yield
every record with an existing image there; the per-dataset override
(``coco_image_dir=``) and the older layout (images inside the dataset's own
folder) still work.
"""

from __future__ import annotations

import os
import pathlib
import shutil

import pytest

from locca.data.export import export

N = 6


def _move_coco(src: pathlib.Path, coco: pathlib.Path) -> int:
    """Moves src/{train2014,val2014}/* into coco/ (once per file); returns how many."""
    n = 0
    for folder in ("train2014", "val2014"):
        d = src / folder
        if not d.is_dir():
            continue
        (coco / folder).mkdir(parents=True, exist_ok=True)
        for f in d.iterdir():
            if not (coco / folder / f.name).exists():
                shutil.move(str(f), coco / folder / f.name)
                n += 1
        shutil.rmtree(d)
    return n


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    coco = root / "coco"
    export("vqav2", str(root / "vqav2"), N, 0, "val")
    export("okvqa", str(root / "okvqa"), N, 0, "val")
    export("refcoco", str(root / "refcoco"), N, 0, "train")
    export("refcoco_plus", str(root / "refcoco"), N, 0, "train")
    export("refcocog", str(root / "refcoco"), N, 0, "train")
    export("tallyqa", str(root / "tallyqa"), N, 0, "test")
    moved = sum(_move_coco(root / k, coco) for k in ("vqav2", "okvqa", "refcoco", "tallyqa"))
    assert moved > 0
    return root


def _records(task_name, split):
    import seqio

    from tasks.sources.common import RecordSource

    src = seqio.get_mixture_or_task(task_name).source
    assert isinstance(src, RecordSource)
    recs = src.records(split)
    # The source's own pass (it raises on a missing / unreadable image).
    n = sum(1 for _ in src.get_dataset(split, shuffle=False).as_numpy_iterator())
    assert n == len(recs) > 0
    return recs


CASES = [
    ("vqav2", "validation"),
    ("okvqa", "validation"),
    ("refcoco", "train"),
    ("refcoco_plus", "train"),
    ("refcocog", "train"),
    ("tallyqa", "test"),
]


@pytest.mark.parametrize("task_name,split", CASES)
def test_coco_images_found_under_data_dir_coco(task_name, split, data_root, monkeypatch):
    import tasks  # noqa: F401  (registers the tasks)
    from tasks import registry

    monkeypatch.setenv(registry.DATA_DIR_ENV, str(data_root))
    monkeypatch.delenv("LOCCA_SKIP_MISSING_IMAGES", raising=False)
    recs = _records(task_name, split)
    paths = [r["image/path"] for r in recs]
    assert all(os.path.isfile(p) for p in paths)
    coco = [p for p in paths if "COCO_" in os.path.basename(p)]
    assert coco, "no COCO image referenced"
    assert all(p.startswith(str(data_root / "coco") + os.sep) for p in coco)
    if task_name == "tallyqa":  # the Visual Genome part stays in tallyqa/
        assert any(p.startswith(str(data_root / "tallyqa") + os.sep) for p in paths)


def test_per_dataset_override_and_older_layout(data_root, tmp_path, monkeypatch):
    from tasks import official_tasks, registry

    # coco_image_dir= points one dataset elsewhere: its images are looked up there.
    elsewhere = tmp_path / "my_coco"
    shutil.copytree(data_root / "coco", elsewhere)
    monkeypatch.setenv(registry.DATA_DIR_ENV, str(data_root))
    official_tasks.make_vqav2_task("vqav2_override_test", coco_image_dir=str(elsewhere))
    recs = _records("vqav2_override_test", "validation")
    assert all(r["image/path"].startswith(str(elsewhere)) for r in recs)
    # The older layout: images inside the dataset's own folder.
    old = tmp_path / "old"
    export("vqav2", str(old / "vqav2"), N, 0, "val")
    official_tasks.make_vqav2_task("vqav2_old_layout_test", data_dir=str(old / "vqav2"))
    recs = _records("vqav2_old_layout_test", "validation")
    assert all(r["image/path"].startswith(str(old / "vqav2" / "val2014")) for r in recs)
