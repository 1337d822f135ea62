"""Shapes-world exporters: every official format read back with plain json / a
restricted unpickler, checked field by field against ../shared/FORMATS.md, and
every referenced image opened."""

import io
import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from locca.data.export import FORMATS, export
from locca.data.shapes import ShapesWorld

N = 12
SEED = 5
R = 64
COCO_GAPS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}


class RestrictedUnpickler(pickle.Unpickler):
    """Admits builtin containers and scalars only: any global lookup is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def load_refs(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:2] in (b"\x80\x02", b"\x80\x01") or data[:1] != b"\x80", "protocol > 2"
    return RestrictedUnpickler(io.BytesIO(data)).load()


def assert_plain(x):
    if isinstance(x, dict):
        for k, v in x.items():
            assert type(k) is str
            assert_plain(v)
    elif isinstance(x, list):
        for v in x:
            assert_plain(v)
    else:
        assert type(x) in (str, int, float, bool, type(None)), type(x)


def load(root, rel):
    with open(os.path.join(root, rel)) as f:
        return json.load(f)


def check_image(path, size=R):
    assert os.path.isfile(path), f"missing image {path}"
    with Image.open(path) as im:
        assert im.format == "JPEG"
        assert im.size == (size, size)
        im.load()


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    dirs = {}
    for fmt in FORMATS:
        n = 18 if fmt.startswith("refcoco") else N
        d = root / fmt
        export(fmt, d, n, SEED, "train", resolution=R)
        dirs[fmt] = str(d)
    return dirs


def test_no_temp_files_left(out):
    for d in out.values():
        for _, _, files in os.walk(d):
            assert not [f for f in files if f.startswith(".tmp-")]


def test_coco_captions(out):
    d = out["coco_captions"]
    js = load(d, "annotations/captions_train2014.json")
    assert set(js) == {"info", "images", "licenses", "annotations"}
    assert len(js["images"]) == N
    ids = {im["id"] for im in js["images"]}
    for im in js["images"]:
        assert set(im) >= {"id", "width", "height", "file_name", "license", "coco_url",
                           "flickr_url", "date_captured"}  # fmt: skip
        assert im["file_name"] == f"COCO_train2014_{im['id']:012d}.jpg"
        check_image(os.path.join(d, "train2014", im["file_name"]))
    world = ShapesWorld(R, SEED)
    for a in js["annotations"]:
        assert set(a) == {"image_id", "id", "caption"} and a["image_id"] in ids
        assert type(a["id"]) is int and isinstance(a["caption"], str)
    per_image = {}
    for a in js["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a["caption"])
    assert all(len(v) == 5 for v in per_image.values())
    k = js["images"][0]["id"]
    assert per_image[k][0].lower().rstrip(".") == world.scene(k).caption
    assert len({a["id"] for a in js["annotations"]}) == len(js["annotations"])


def test_coco_2017_naming_and_test_split(tmp_path):
    export("coco_captions", tmp_path / "c17", 3, SEED, "val", year=2017)
    js = load(tmp_path / "c17", "annotations/captions_val2017.json")
    for im in js["images"]:
        assert im["file_name"] == f"{im['id']:012d}.jpg"
        check_image(tmp_path / "c17" / "val2017" / im["file_name"])
    export("coco_instances", tmp_path / "ct", 3, SEED, "test")
    js = load(tmp_path / "ct", "annotations/image_info_test2014.json")
    assert "annotations" not in js and len(js["images"]) == 3
    for im in js["images"]:
        check_image(tmp_path / "ct" / "test2014" / im["file_name"])


def test_coco_instances(out):
    d = out["coco_instances"]
    js = load(d, "annotations/instances_train2014.json")
    assert set(js) == {"info", "licenses", "images", "annotations", "categories"}
    cat_ids = [c["id"] for c in js["categories"]]
    assert len(cat_ids) == len(set(cat_ids)) == 30
    assert not set(cat_ids) & COCO_GAPS and max(cat_ids) > 12  # the gaps are exercised
    assert all(set(c) == {"id", "name", "supercategory"} for c in js["categories"])
    images = {im["id"]: im for im in js["images"]}
    world = ShapesWorld(R, SEED)
    cats = {c["id"]: c["name"] for c in js["categories"]}
    for a in js["annotations"]:
        assert set(a) == {"id", "image_id", "category_id", "segmentation", "area", "bbox",
                          "iscrowd"}  # fmt: skip
        assert a["iscrowd"] == 0 and a["category_id"] in cats
        assert all(type(v) is float for v in a["bbox"]) and type(a["area"]) is float
        poly = a["segmentation"][0]
        assert len(poly) % 2 == 0 and len(poly) >= 6
        x, y, w, h = a["bbox"]
        xs, ys = poly[0::2], poly[1::2]
        assert x - 1 <= min(xs) and max(xs) <= x + w + 1 and y - 1 <= min(ys) <= y + h + 1
        im = images[a["image_id"]]
        # Normalised box per FORMATS.md equals the generator's box; pixels agree.
        s = world.scene(a["image_id"])
        o = s.objects[a["id"] - a["image_id"] * 10]
        H, W = im["height"], im["width"]
        np.testing.assert_allclose([y / H, x / W, (y + h) / H, (x + w) / W], o.box)
        assert cats[a["category_id"]] == f"{o.colour} {o.shape}"
        with Image.open(os.path.join(d, "train2014", im["file_name"])) as f:
            pix = np.asarray(f.convert("RGB")).astype(int)
        # JPEG-decoded pixels at the box centre row are near the object colour somewhere.
        crop = pix[int(y) : int(y + h), int(x) : int(x + w)]
        spread = crop.max(-1) - crop.min(-1)
        assert spread.max() > 100  # a saturated object lies inside the box


def test_karpathy(out):
    d = out["karpathy"]
    js = load(d, "dataset_coco.json")
    assert js["dataset"] == "coco" and len(js["images"]) == N
    splits = set()
    for k, im in enumerate(js["images"]):
        assert set(im) == {"filepath", "sentids", "filename", "imgid", "split", "sentences",
                           "cocoid"}  # fmt: skip
        assert im["imgid"] == k and im["split"] in ("train", "restval", "val", "test")
        splits.add(im["split"])
        assert im["filepath"] in ("train2014", "val2014")
        assert im["filename"] == f"COCO_{im['filepath']}_{im['cocoid']:012d}.jpg"
        check_image(os.path.join(d, im["filepath"], im["filename"]))
        assert im["sentids"] == [s["sentid"] for s in im["sentences"]]
        for s in im["sentences"]:
            assert set(s) == {"tokens", "raw", "imgid", "sentid"} and s["imgid"] == k
            assert s["tokens"] == re.findall(r"[a-z0-9]+", s["raw"].lower()) and s["tokens"]
    assert splits == {"train", "restval"}


def _check_vqa_questions(js, subtype):
    assert set(js) == {"info", "task_type", "data_type", "data_subtype", "questions", "license"}
    assert js["data_subtype"] == subtype
    for q in js["questions"]:
        assert set(q) == {"image_id", "question", "question_id"}
        assert type(q["image_id"]) is int and type(q["question_id"]) is int
    return {q["question_id"]: q for q in js["questions"]}


def test_vqav2(out, tmp_path):
    d = out["vqav2"]
    qs = _check_vqa_questions(load(d, "v2_OpenEnded_mscoco_train2014_questions.json"), "train2014")
    js = load(d, "v2_mscoco_train2014_annotations.json")
    assert "annotations" in js
    world = ShapesWorld(R, SEED)
    assert {a["question_id"] for a in js["annotations"]} == set(qs)
    for a in js["annotations"]:
        assert set(a) == {"question_type", "multiple_choice_answer", "answers", "image_id",
                          "answer_type", "question_id"}  # fmt: skip
        assert a["answer_type"] in ("yes/no", "number", "other")
        assert len(a["answers"]) == 10
        assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
        assert all(x["answer_confidence"] in ("yes", "maybe", "no") for x in a["answers"])
        s = world.scene(a["image_id"])
        q = s.vqa[a["question_id"] - a["image_id"] * 1000]
        assert qs[a["question_id"]]["question"] == q.question
        assert [x["answer"] for x in a["answers"]] == q.answers
    for im_id in {q["image_id"] for q in qs.values()}:
        check_image(os.path.join(d, "train2014", f"COCO_train2014_{im_id:012d}.jpg"))
    # test: questions only (test2015 + test-dev2015), images in test2015/
    export("vqav2", tmp_path, 4, SEED, "test")
    assert not os.path.exists(tmp_path / "v2_mscoco_test2015_annotations.json")
    t = _check_vqa_questions(load(tmp_path, "v2_OpenEnded_mscoco_test2015_questions.json"),
                             "test2015")  # fmt: skip
    dev = _check_vqa_questions(
        load(tmp_path, "v2_OpenEnded_mscoco_test-dev2015_questions.json"), "test-dev2015"
    )
    assert set(dev) < set(t)
    for q in t.values():
        check_image(tmp_path / "test2015" / f"COCO_test2015_{q['image_id']:012d}.jpg")


def test_okvqa(out):
    d = out["okvqa"]
    qs = _check_vqa_questions(load(d, "OpenEnded_mscoco_train2014_questions.json"), "train2014")
    js = load(d, "mscoco_train2014_annotations.json")
    assert {a["question_id"] for a in js["annotations"]} == set(qs)
    cats = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "other"}
    for a in js["annotations"]:
        assert "multiple_choice_answer" not in a
        assert set(a) == {"image_id", "question_id", "question_type", "answer_type",
                          "confidence", "answers"}  # fmt: skip
        assert a["question_type"] in cats and type(a["confidence"]) is int
        assert len(a["answers"]) == 10
        for x in a["answers"]:
            assert set(x) == {"answer_id", "raw_answer", "answer_confidence", "answer"}
            assert x["answer_confidence"] in ("yes", "no")
            assert x["raw_answer"].lower() == x["answer"]
        check_image(os.path.join(d, "train2014", f"COCO_train2014_{a['image_id']:012d}.jpg"))
    with pytest.raises(ValueError, match="OK-VQA"):
        export("okvqa", d + "_t", 2, SEED, "test")


def test_textvqa(out, tmp_path):
    d = out["textvqa"]
    js = load(d, "TextVQA_0.5.1_train.json")
    assert set(js) == {"dataset_type", "dataset_name", "dataset_version", "data"}
    assert js["dataset_version"] == "0.5.1"
    images = set()
    for r in js["data"]:
        assert set(r) == {"question", "image_id", "image_classes", "flickr_original_url",
                          "flickr_300k_url", "image_width", "image_height", "answers",
                          "question_tokens", "question_id", "set_name"}  # fmt: skip
        assert len(r["image_id"]) == 16 and int(r["image_id"], 16) >= 0
        assert len(r["answers"]) == 10 and type(r["question_id"]) is int
        check_image(os.path.join(d, "train_images", r["image_id"] + ".jpg"))
        images.add(r["image_id"])
    assert len(images) == N
    export("textvqa", tmp_path, 3, SEED, "test")
    js = load(tmp_path, "TextVQA_0.5.1_test.json")
    for r in js["data"]:
        assert "answers" not in r
        check_image(tmp_path / "test_images" / (r["image_id"] + ".jpg"))


def test_stvqa(out, tmp_path):
    d = out["stvqa"]
    js = load(d, "train_task_3.json")
    datasets = set()
    for r in js["data"]:
        assert set(r) >= {"question_id", "question", "file_path", "dataset", "file_name",
                          "set_name", "answers"}  # fmt: skip
        assert r["file_path"] == r["dataset"] + "/" + r["file_name"]
        assert isinstance(r["answers"], list) and r["answers"]
        datasets.add(r["dataset"])
        check_image(os.path.join(d, "train_images", r["file_path"]))
    assert len(datasets) > 1
    assert len({len(r["answers"]) for r in js["data"]}) > 1  # variable number of answers
    export("stvqa", tmp_path, 3, SEED, "test")
    for r in load(tmp_path, "test_task_3.json")["data"]:
        assert "answers" not in r
        check_image(tmp_path / "test_task3_images" / r["file_path"])


def test_tallyqa(out):
    d = out["tallyqa"]
    js = load(d, "train.json")
    assert isinstance(js, list)
    world = ShapesWorld(R, SEED)
    kinds, missing = set(), 0
    for r in js:
        assert set(r) - {"issimple"} == {"image", "answer", "data_source", "question",
                                         "image_id", "question_id"}  # fmt: skip
        assert type(r["answer"]) is int and 0 <= r["answer"] <= 15
        missing += "issimple" not in r
        check_image(os.path.join(d, r["image"]))
        if r["image"].startswith("VG_100K"):
            kinds.add("vg")
            vg_id = int(os.path.basename(r["image"])[:-4])
            assert str(r["image_id"]) == "9" + str(vg_id)  # the extra leading digit
            sid = vg_id
        else:
            kinds.add("coco")
            assert r["image"] == f"train2014/COCO_train2014_{r['image_id']:012d}.jpg"
            sid = r["image_id"]
        c = world.scene(sid).counting[r["question_id"] - sid * 1000 - 900]
        assert (c.question, c.answer) == (r["question"], r["answer"])
        if "issimple" in r:
            assert r["issimple"] == c.issimple
    assert kinds == {"vg", "coco"} and missing > 0
    assert {True, False} == {r["issimple"] for r in js if "issimple" in r}


@pytest.mark.parametrize(
    "fmt,folder,parts",
    [
        ("refcoco", "refcoco", {"unc": {"train", "val", "testA", "testB"},
                                "google": {"train", "val", "test"}}),
        ("refcoco_plus", "refcoco+", {"unc": {"train", "val", "testA", "testB"}}),
        ("refcocog", "refcocog", {"umd": {"train", "val", "test"}, "google": {"train", "val"}}),
    ],
)  # fmt: skip
def test_refcoco(out, fmt, folder, parts):
    d = out[fmt]
    inst = load(d, f"{folder}/instances.json")
    assert set(inst) >= {"images", "annotations", "categories"}
    anns = {a["id"]: a for a in inst["annotations"]}
    images = {im["id"]: im for im in inst["images"]}
    for im in images.values():
        check_image(os.path.join(d, "train2014", im["file_name"]))
    world = ShapesWorld(R, SEED)
    for part, splits in parts.items():
        refs = load_refs(os.path.join(d, folder, f"refs({part}).p"))
        assert isinstance(refs, list) and refs
        assert_plain(refs)
        assert {r["split"] for r in refs} == splits
        for r in refs:
            assert set(r) == {"ref_id", "ann_id", "image_id", "category_id", "split",
                              "sent_ids", "file_name", "sentences"}  # fmt: skip
            ann = anns[r["ann_id"]]
            assert ann["image_id"] == r["image_id"] and ann["category_id"] == r["category_id"]
            assert r["file_name"] == f"COCO_train2014_{r['image_id']:012d}_{r['ann_id']}.jpg"
            assert r["sent_ids"] == [s["sent_id"] for s in r["sentences"]]
            s = world.scene(r["image_id"])
            o = s.objects[r["ann_id"] - r["image_id"] * 10]
            x, y, w, h = ann["bbox"]
            np.testing.assert_allclose([y / R, x / R, (y + h) / R, (x + w) / R], o.box)
            for sent in r["sentences"]:
                assert set(sent) == {"tokens", "raw", "sent_id", "sent"}
                assert sent["sent"] == " ".join(sent["tokens"])
                if fmt == "refcoco_plus":
                    assert not {"left", "right", "above", "below", "leftmost", "rightmost",
                                "topmost", "bottommost"} & set(sent["tokens"])  # fmt: skip


def test_vg(out):
    d = out["vg"]
    regions = load(d, "region_descriptions.json")
    data = load(d, "image_data.json")
    assert isinstance(regions, list) and isinstance(data, list) and len(data) == N
    by_id = {im["image_id"]: im for im in data}
    world = ShapesWorld(R, SEED)
    for entry in regions:
        im = by_id[entry["id"]]
        folder, fn = im["url"].split("/")[-2:]
        assert folder in ("VG_100K", "VG_100K_2")
        check_image(os.path.join(d, folder, fn))
        s = world.scene(entry["id"])
        boxes = {tuple(o.bbox_px) for o in s.objects}
        for r in entry["regions"]:
            assert set(r) == {"region_id", "width", "height", "image_id", "phrase", "y", "x"}
            assert r["image_id"] == entry["id"]
            assert (r["x"], r["y"], r["width"], r["height"]) in boxes
    for im in data:
        assert set(im) == {"width", "url", "height", "image_id", "coco_id", "flickr_id"}


def test_ids_and_images_consistent_across_formats(out):
    a = os.path.join(out["coco_captions"], "train2014", "COCO_train2014_000000000003.jpg")
    b = os.path.join(out["vg"], "VG_100K_2", "3.jpg")
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()


def test_export_deterministic(tmp_path):
    for k in (1, 2):
        export("vqav2", tmp_path / str(k), 3, 9, "val")
    for name in ("v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json",
                 "val2014/COCO_val2014_000000500001.jpg"):  # fmt: skip
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes()


def test_export_224(tmp_path):
    export("coco_instances", tmp_path, 2, 0, "train", resolution=224)
    js = load(tmp_path, "annotations/instances_train2014.json")
    for im in js["images"]:
        assert im["width"] == im["height"] == 224
        check_image(tmp_path / "train2014" / im["file_name"], 224)


def test_bad_format_and_cli(tmp_path):
    with pytest.raises(ValueError, match="unknown format"):
        export("coco", tmp_path, 1)
    with pytest.raises(ValueError, match="split"):
        export("vqav2", tmp_path, 1, 0, "dev")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run(
        [sys.executable, "-m", "locca.data", "export", "--format", "tallyqa", "--out",
         str(tmp_path / "cli"), "--num_images", "2", "--seed", "1", "--split", "test"],
        cwd=root, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    js = load(tmp_path / "cli", "test.json")
    assert js and all("issimple" in r for r in js)
    for r in js:
        check_image(tmp_path / "cli" / r["image"])
