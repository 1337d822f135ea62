"""Official-format readers end to end: shapes-world exports in each official
format -> reader -> seqio task -> feature converter; plus bad-input handling."""

import json
import os
import pickle
import re

import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks  # noqa: F401  (registers)
from locca.boxes import BoxCodec
from locca.data.export import export
from tasks.feature_converters import ImageTextFeatureConverter, LocCaPretrainFeatureConverter
from tasks.official_tasks import make_vqav2_task
from tasks.registry import data_dir_override
from tasks.sources import common, refcoco, text_count, vqa

L = {"inputs": 48, "targets": 32}
N = 8


def _s(x):
    return x.decode() if isinstance(x, bytes) else str(x)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    cache = {}

    def get(fmt, split):
        key = (fmt, split)
        if key not in cache:
            d = root / fmt / split
            export(fmt, str(d), N, 0, split)
            cache[key] = str(d)
        return cache[key]

    return get


def _batch(task, key, d, split, lengths=L):
    with data_dir_override(**{key: d}):
        t = seqio.get_mixture_or_task(task)
        ds = t.get_dataset(lengths, split=split, shuffle=False, seed=0)
        exs = list(ds.as_numpy_iterator())
        batch = next(
            ImageTextFeatureConverter(image_size=32)(ds, lengths).batch(2).as_numpy_iterator()
        )
    return t, exs, batch


def _check_batch(t, exs, batch):
    b = min(2, len(exs))
    assert batch["image"].shape == (b, 32, 32, 3) and batch["image"].dtype == np.uint8
    for k in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens"):
        assert batch[k].dtype == np.int32 and batch[k].shape[0] == b
    np.testing.assert_array_equal(
        batch["decoder_input_tokens"][:, 1:], batch["decoder_target_tokens"][:, :-1]
    )
    vocab = t.output_features["targets"].vocabulary
    assert vocab.decode(batch["decoder_target_tokens"][0].tolist()) == _s(
        exs[0]["targets_pretokenized"]
    )
    assert exs[0]["image"].shape == (224, 224, 3)


def _vqa_answers(path):
    data = json.load(open(path))
    return {a["question_id"]: [x["answer"] for x in a["answers"]] for a in data["annotations"]}


# ------------------------------------------------------------------ per task


@pytest.mark.parametrize("split,file_split", [("train", "train"), ("validation", "val")])
def test_coco_captions_karpathy(exported, split, file_split):
    d = exported("karpathy", file_split)
    t, exs, batch = _batch("coco_captions", "coco", d, split)
    _check_batch(t, exs, batch)
    data = json.load(open(os.path.join(d, "dataset_coco.json")))
    want = {"train": ("train", "restval"), "validation": ("val",)}[split]
    caps = {str(im["cocoid"]): [s["raw"].strip() for s in im["sentences"]]
            for im in data["images"] if im["split"] in want}  # fmt: skip
    assert {_s(e["id"]) for e in exs} == set(caps)  # train = train + restval
    if split == "train":
        assert any(im["split"] == "restval" for im in data["images"])
    for e in exs:
        refs = caps[_s(e["id"])]
        assert [_s(r) for r in e["references"]] == refs
        assert _s(e["targets_pretokenized"]) in refs


def test_coco_captions_2014_and_test_split(exported):
    d = exported("coco_captions", "val")
    t, exs, batch = _batch("coco_captions_2014", "coco", d, "validation")
    _check_batch(t, exs, batch)
    data = json.load(open(os.path.join(d, "annotations", "captions_val2014.json")))
    caps = {}
    for a in data["annotations"]:
        caps.setdefault(str(a["image_id"]), []).append(a["caption"])
    assert {_s(e["id"]) for e in exs} == set(caps)
    for e in exs:
        assert _s(e["targets_pretokenized"]) in caps[_s(e["id"])]
    d17 = os.path.join(os.path.dirname(os.path.dirname(d)), "coco2017")
    export("coco_captions", d17, 3, 0, "val", year=2017)
    with data_dir_override(coco=d17):
        ds = seqio.get_mixture_or_task("coco_captions_2017").get_dataset(
            L, split="validation", shuffle=False
        )
        exs17 = list(ds.as_numpy_iterator())
    data17 = json.load(open(os.path.join(d17, "annotations", "captions_val2017.json")))
    names = {str(i["id"]): i["file_name"] for i in data17["images"]}
    assert len(exs17) == 3
    for e in exs17:
        assert _s(e["image/path"]) == os.path.join(d17, "val2017", names[_s(e["id"])])
        assert re.fullmatch(r"\d{12}\.jpg", names[_s(e["id"])])
    dt = exported("coco_captions", "test")
    with data_dir_override(coco=dt):
        ds = seqio.get_mixture_or_task("coco_captions_2014").get_dataset(
            L, split="test", shuffle=False
        )
        exs = list(ds.as_numpy_iterator())
    assert len(exs) == N and all(len(e["references"]) == 0 for e in exs)


@pytest.mark.parametrize("task,fmt,split,file_split,ann", [
    ("vqav2", "vqav2", "train", "train", "v2_mscoco_train2014_annotations.json"),
    ("vqav2", "vqav2", "validation", "val", "v2_mscoco_val2014_annotations.json"),
    ("okvqa", "okvqa", "validation", "val", "mscoco_val2014_annotations.json"),
])  # fmt: skip
def test_vqa_family(exported, task, fmt, split, file_split, ann):
    d = exported(fmt, file_split)
    t, exs, batch = _batch(task, task, d, split)
    _check_batch(t, exs, batch)
    answers = _vqa_answers(os.path.join(d, ann))
    assert {int(_s(e["id"])) for e in exs} == set(answers)
    for e in exs:
        refs = answers[int(_s(e["id"]))]
        assert [_s(r) for r in e["references"]] == refs
        assert _s(e["targets_pretokenized"]) in refs
        assert _s(e["inputs_pretokenized"]).startswith("answer en ")
    post = t.postprocess_fn(exs[0]["targets_pretokenized"], example=exs[0], is_target=True)
    assert post["answers"] == answers[int(_s(exs[0]["id"]))]


def test_vqav2_test_and_minival(exported, monkeypatch):
    dt = exported("vqav2", "test")
    with data_dir_override(vqav2=dt):
        for split, name in [("test", "test2015"), ("test-dev", "test-dev2015")]:
            ds = seqio.get_mixture_or_task("vqav2").get_dataset(L, split=split, shuffle=False)
            exs = list(ds.as_numpy_iterator())
            qs = json.load(open(os.path.join(dt, f"v2_OpenEnded_mscoco_{name}_questions.json")))
            assert [int(_s(e["id"])) for e in exs] == [q["question_id"] for q in qs["questions"]]
            assert all(len(e["references"]) == 0 for e in exs)
            assert all("/test2015/COCO_test2015_" in _s(e["image/path"]) for e in exs)
    dv, dtr = exported("vqav2", "val"), exported("vqav2", "train")
    monkeypatch.setattr(vqa, "MINIVAL_SIZE", 5)
    val = vqa.vqav2_records("validation", dv)
    mini = vqa.vqav2_records("minival", dv)
    assert [r["id"] for r in mini] == [r["id"] for r in val[-5:]]  # the last 5 in file order
    rest = vqa.vqav2_records("val-minival", dv)
    assert [r["id"] for r in rest + mini] == [r["id"] for r in val]
    # train+val-minival with train and val files side by side
    both = os.path.join(os.path.dirname(dv), "both")
    os.makedirs(both, exist_ok=True)
    for src in (dv, dtr):
        for f in os.listdir(src):
            if not os.path.exists(os.path.join(both, f)):
                os.symlink(os.path.join(src, f), os.path.join(both, f))
    tv = vqa.vqav2_records("train+val-minival", both)
    assert len(tv) == len(vqa.vqav2_records("train", both)) + len(val) - 5


@pytest.mark.parametrize(
    "split,file_split", [("train", "train"), ("validation", "val"), ("test", "test")]
)
def test_textvqa(exported, split, file_split):
    d = exported("textvqa", file_split)
    with data_dir_override(textvqa=d):
        ds = seqio.get_mixture_or_task("textvqa").get_dataset(L, split=split, shuffle=False)
        exs = list(ds.as_numpy_iterator())
    data = json.load(open(os.path.join(d, f"TextVQA_0.5.1_{file_split}.json")))["data"]
    by_id = {r["question_id"]: r for r in data}
    assert {int(_s(e["id"])) for e in exs} == set(by_id)
    for e in exs:
        r = by_id[int(_s(e["id"]))]
        root = "test_images" if split == "test" else "train_images"
        assert _s(e["image/path"]).endswith(f"{root}/{r['image_id']}.jpg")
        assert [_s(a) for a in e["references"]] == r.get("answers", [])
    if split != "test":
        _, exs, batch = _batch("textvqa", "textvqa", d, split)
        _check_batch(seqio.get_mixture_or_task("textvqa"), exs, batch)


def test_stvqa_holdout_by_image(exported):
    d = exported("stvqa", "train")
    tr = text_count.stvqa_records("train", d)
    va = text_count.stvqa_records("validation", d)
    full = text_count.stvqa_records("train_full", d)
    assert va and tr and len(tr) + len(va) == len(full)
    assert not {r["image/path"] for r in tr} & {r["image/path"] for r in va}
    assert text_count.stvqa_records("validation", d) == va  # deterministic
    t, exs, batch = _batch("stvqa", "stvqa", d, "validation")
    _check_batch(t, exs, batch)
    data = {
        r["question_id"]: r for r in json.load(open(os.path.join(d, "train_task_3.json")))["data"]
    }
    for e in exs:
        r = data[int(_s(e["id"]))]
        assert _s(e["image/path"]).endswith("train_images/" + r["file_path"])
        assert _s(e["targets_pretokenized"]) in r["answers"]


def test_tallyqa(exported):
    d = exported("tallyqa", "train")
    t, exs, batch = _batch("tallyqa", "tallyqa", d, "train")
    _check_batch(t, exs, batch)
    data = {r["question_id"]: r for r in json.load(open(os.path.join(d, "train.json")))}
    assert any("issimple" not in r for r in data.values())
    for e in exs:
        r = data[int(_s(e["id"]))]
        assert _s(e["image/path"]) == os.path.join(d, r["image"])  # from `image`, not image_id
        assert _s(e["targets_pretokenized"]) == str(r["answer"])
        assert int(e["issimple"]) == (int(r["issimple"]) if "issimple" in r else -1)
    dt = exported("tallyqa", "test")
    simple = text_count.tallyqa_records("test_simple", dt)
    complex_ = text_count.tallyqa_records("test_complex", dt)
    assert len(simple) + len(complex_) == len(text_count.tallyqa_records("test", dt))
    assert all(r["issimple"] == 1 for r in simple) and all(r["issimple"] == 0 for r in complex_)


@pytest.mark.parametrize("task,fmt,folder,part,split", [
    ("refcoco", "refcoco", "refcoco", "unc", "validation"),
    ("refcoco", "refcoco", "refcoco", "unc", "train"),
    ("refcoco_plus", "refcoco_plus", "refcoco+", "unc", "testA"),
    ("refcocog", "refcocog", "refcocog", "umd", "test"),
])  # fmt: skip
def test_refcoco_family(exported, task, fmt, folder, part, split):
    d = exported(fmt, "train")
    refs = pickle.load(open(os.path.join(d, folder, f"refs({part}).p"), "rb"))
    inst = json.load(open(os.path.join(d, folder, "instances.json")))
    anns = {a["id"]: a for a in inst["annotations"]}
    imgs = {i["id"]: i for i in inst["images"]}
    fsplit = "val" if split == "validation" else split
    mine = [r for r in refs if r["split"] == fsplit]
    if not mine:
        pytest.skip(f"no {split} refs among {N} exported images")
    t, exs, batch = _batch(task, "refcoco", d, split)
    _check_batch(t, exs, batch)
    codec = BoxCodec("text", 500)
    by_ref = {r["ref_id"]: r for r in mine}
    n_sent = sum(len(r["sentences"]) for r in mine)
    assert len(exs) == (len(mine) if split == "train" else n_sent)  # one per sentence at eval
    for e in exs:
        r = by_ref[int(_s(e["id"]).split("/")[0])]
        img = imgs[r["image_id"]]
        x, y, w, h = anns[r["ann_id"]]["bbox"]
        box = [y / img["height"], x / img["width"], (y + h) / img["height"], (x + w) / img["width"]]
        assert _s(e["targets_pretokenized"]) == codec.encode(box)
        assert _s(e["image/path"]) == os.path.join(d, "train2014", img["file_name"])
        expr = _s(e["inputs_pretokenized"])[len("locate en ") :]
        assert expr in [s["sent"] for s in r["sentences"]]
        pred = t.postprocess_fn(e["targets_pretokenized"], example=e, is_target=False)
        np.testing.assert_allclose(pred, box, atol=0.5 / 499 + 1e-9)


def test_refcoco_all_mixture(exported):
    d = exported("refcoco", "train")
    with data_dir_override(refcoco=d):
        # all three datasets under one root: export the other two beside it
        for fmt in ("refcoco_plus", "refcocog"):
            export(fmt, d, N, 0, "train")
        mix = seqio.get_mixture_or_task("refcoco_all")
        ds = mix.get_dataset(L, split="train", shuffle=False, seed=0, num_epochs=1)
        ex = next(ds.as_numpy_iterator())
    assert ex["image"].shape == (224, 224, 3) and ex["targets"][-1] == 1


# ------------------------------------------------------------------ pretraining


PL = {"cap": 48, "aref": 48, "gcap": 48}


@pytest.mark.parametrize("task,fmt,key", [
    ("coco_pretrain", "coco_captions", "coco"),
    ("vg_pretrain", "vg", "vg"),
    ("refcoco_pretrain", "refcoco", "refcoco"),
])  # fmt: skip
def test_pretrain_readers(exported, task, fmt, key):
    d = exported(fmt, "train")
    if fmt == "coco_captions":
        export("coco_instances", d, N, 0, "train")
    with data_dir_override(**{key: d}):
        t = seqio.get_mixture_or_task(task)
        ds = t.get_dataset(PL, split="train", shuffle=False, seed=0)
        exs = list(ds.as_numpy_iterator())
        batch = next(
            LocCaPretrainFeatureConverter(image_size=32)(ds, PL).batch(2).as_numpy_iterator()
        )
    assert exs and batch["image"].shape == (2, 32, 32, 3)
    for e in exs:
        regions = {
            (_s(txt), BoxCodec().encode(b)) for txt, b in zip(e["region_texts"], e["region_boxes"])
        }
        m = re.fullmatch(r"ARef : (.+) : (\d+ \d+ \d+ \d+)", _s(e["aref_pretokenized"]))
        assert m and (m.group(1), m.group(2)) in regions
        m = re.fullmatch(r"GCap : (\d+ \d+ \d+ \d+) : (.+)", _s(e["gcap_pretokenized"]))
        assert m and (m.group(2), m.group(1)) in regions
    if fmt == "vg":  # boxes from pixels / image_data size; folder from url
        data = json.load(open(os.path.join(d, "region_descriptions.json")))
        imd = {i["image_id"]: i for i in json.load(open(os.path.join(d, "image_data.json")))}
        e0 = next(e for e in exs if _s(e["id"]) == str(data[0]["id"]))
        r0 = data[0]["regions"][0]
        im = imd[data[0]["id"]]
        H, W = im["height"], im["width"]
        want = [r0["y"] / H, r0["x"] / W, (r0["y"] + r0["height"]) / H, (r0["x"] + r0["width"]) / W]
        np.testing.assert_allclose(e0["region_boxes"][0], want)
        assert _s(e0["image/path"]).endswith("/".join(im["url"].split("/")[-2:]))


def test_jsonl_pretrain(tmp_path):
    from PIL import Image

    from locca.data.shapes import ShapesWorld

    w = ShapesWorld(64, 0)
    lines = []
    for i in range(3):
        s = w.scene(i)
        Image.fromarray(s.image).save(tmp_path / f"img{i}.png")
        regs = [{"box": o.box, "text": o.description, "score": 0.9} for o in s.objects]
        regs.append({"box": [0.0, 0.0, 1.0, 1.0], "text": "LOWSCORE", "score": 0.1})
        lines.append(json.dumps({"image": f"img{i}.png", "captions": [s.caption], "regions": regs}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    recs = __import__("tasks.sources.regions", fromlist=["x"]).jsonl_records("train", str(tmp_path))
    assert all("LOWSCORE" not in r["region_texts"] for r in recs)
    with data_dir_override(jsonl=str(tmp_path)):
        ds = seqio.get_mixture_or_task("jsonl_pretrain").get_dataset(
            PL, split="train", shuffle=False
        )
        exs = list(ds.as_numpy_iterator())
    assert len(exs) == 3
    for i, e in enumerate(exs):
        assert _s(e["cap_pretokenized"]) == w.scene(i).caption
        assert "LOWSCORE" not in _s(e["aref_pretokenized"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text(
        '{"image": "a.png", "regions": [{"box": [0.5, 0, 0.1, 1], "text": "x"}]}\n'
    )
    with pytest.raises(common.DataFormatError, match=r"train.jsonl: line 1 regions\[0\]: 'box'"):
        __import__("tasks.sources.regions", fromlist=["x"]).jsonl_records("train", str(bad))


# ------------------------------------------------------------------ bad input


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_refs_pickle_is_refused(exported, tmp_path):
    d = tmp_path / "evil"
    (d / "refcoco").mkdir(parents=True)
    src = exported("refcoco", "train")
    (d / "refcoco" / "instances.json").write_bytes(
        open(os.path.join(src, "refcoco", "instances.json"), "rb").read()
    )
    marker = tmp_path / "PWNED"
    payload = [{"ref_id": 1, "split": "val", "evil": _Evil(marker)}]
    for proto in (0, 2, 4):
        (d / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(payload, protocol=proto))
        with pytest.raises(refcoco.UnsafePickleError, match=r"refs\(unc\)\.p.*refused global"):
            refcoco.records("refcoco", "validation", str(d))
        assert not marker.exists()
    # and through the registered task (the error surfaces when data is read)
    with data_dir_override(refcoco=str(d)):
        ds = seqio.get_mixture_or_task("refcoco").get_dataset(L, split="validation", shuffle=False)
        with pytest.raises(Exception, match="refused global"):
            next(ds.as_numpy_iterator())
    assert not marker.exists()
    # the payload is live: a plain unpickler would have run it
    pickle.loads(pickle.dumps(payload, protocol=2))
    assert marker.exists()


def _py2_pickle(obj) -> bytes:
    """Protocol-2 pickle as Python 2 writes it: str -> SHORT_BINSTRING bytes."""
    out = bytearray(b"\x80\x02")

    def w(o):
        if isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                w(k)
                w(v)
            out.extend(b"u")
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                w(v)
            out.extend(b"e")
        elif isinstance(o, str):
            b = o.encode("utf-8")
            out.extend(b"U" + bytes([len(b)]) + b)
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"J" + int(o).to_bytes(4, "little", signed=True))
        else:
            raise TypeError(o)

    w(obj)
    out.extend(b".")
    return bytes(out)


def test_python2_refs_pickle(exported, tmp_path):
    src = exported("refcoco", "train")
    refs = pickle.load(open(os.path.join(src, "refcoco", "refs(unc).p"), "rb"))
    d = tmp_path / "py2"
    (d / "refcoco").mkdir(parents=True)
    (d / "refcoco" / "instances.json").write_bytes(
        open(os.path.join(src, "refcoco", "instances.json"), "rb").read()
    )
    refs[0]["sentences"][0]["sent"] = "the caf\u00e9 shape"  # non-ASCII survives as UTF-8
    (d / "refcoco" / "refs(unc).p").write_bytes(_py2_pickle(refs))
    assert refcoco.load_refs(str(d / "refcoco" / "refs(unc).p")) == refs
    split = refs[0]["split"]
    recs = refcoco.records("refcoco", split, str(d), image_dir=src, per_sentence=True)
    assert "the caf\u00e9 shape" in [r["expressions"][0] for r in recs]


def test_missing_file_names_path_and_format(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"v2_OpenEnded_mscoco_val2014_questions\.json.*expected VQA"
    ):
        vqa.vqav2_records("validation", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"refs\(unc\)\.p: file not found \(expected REFER"):
        refcoco.records("refcoco", "train", str(tmp_path))
    with data_dir_override(tallyqa=str(tmp_path)):
        ds = seqio.get_mixture_or_task("tallyqa").get_dataset(L, split="train", shuffle=False)
        with pytest.raises(Exception, match=r"train\.json: file not found \(expected TallyQA"):
            next(ds.as_numpy_iterator())


def test_unset_data_dir_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("LOCCA_DATA_DIR", raising=False)
    ds = seqio.get_mixture_or_task("okvqa").get_dataset(L, split="train", shuffle=False)
    with pytest.raises(Exception, match="no data directory for dataset 'okvqa'.*LOCCA_DATA_DIR"):
        next(ds.as_numpy_iterator())


def test_malformed_json_names_file_and_position(exported, tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    good = open(os.path.join(exported("textvqa", "val"), "TextVQA_0.5.1_val.json")).read()
    (d / "TextVQA_0.5.1_val.json").write_text(good[:200] + "}{" + good[200:])
    with pytest.raises(
        common.DataFormatError,
        match=r"TextVQA_0\.5\.1_val\.json: malformed JSON at line 1 column \d+",
    ):
        text_count.textvqa_records("validation", str(d))


def test_missing_field_names_record_and_field(exported, tmp_path):
    src = exported("okvqa", "val")
    d = tmp_path / "okvqa"
    d.mkdir()
    for f in os.listdir(src):
        if f.endswith(".json"):
            data = json.load(open(os.path.join(src, f)))
            if "questions" in data:
                bad_qid = data["questions"][2]["question_id"]
                del data["questions"][2]["question"]
            (d / f).write_text(json.dumps(data))
    with pytest.raises(
        common.DataFormatError, match=rf"record {bad_qid}: missing required field 'question'"
    ):
        vqa.okvqa_records("validation", str(d), image_dir=src)
    tally = tmp_path / "tally"
    tally.mkdir()
    (tally / "train.json").write_text(
        json.dumps([{"question_id": 7, "question": "how many?", "answer": 1}])
    )
    with pytest.raises(common.DataFormatError, match="record 7: missing required field 'image'"):
        text_count.tallyqa_records("train", str(tally))


def test_missing_image_error_and_skip_count(exported, tmp_path):
    src = exported("vqav2", "val")
    d = tmp_path / "vqa"
    os.symlink(src, d)  # annotation files as exported ...
    imgs = tmp_path / "imgs"
    (imgs / "val2014").mkdir(parents=True)
    files = sorted(os.listdir(os.path.join(src, "val2014")))
    for f in files[1:]:  # ... but the first image is missing
        os.symlink(os.path.join(src, "val2014", f), imgs / "val2014" / f)
    missing_id = int(files[0].split("_")[-1].split(".")[0])
    recs = vqa.vqav2_records("validation", str(d))
    n_missing = sum(1 for r in recs if f"{missing_id:012d}" in r["image/path"])
    assert n_missing > 0

    make_vqav2_task("test_vqav2_strict", data_dir=str(d), image_dir=str(imgs))
    ds = seqio.get_mixture_or_task("test_vqav2_strict").get_dataset(
        L, split="validation", shuffle=False
    )
    with pytest.raises(Exception, match=rf"image not found: .*{files[0]}"):
        list(ds.as_numpy_iterator())

    make_vqav2_task(
        "test_vqav2_skip", data_dir=str(d), image_dir=str(imgs), skip_missing_images=True
    )
    t = seqio.get_mixture_or_task("test_vqav2_skip")
    exs = list(t.get_dataset(L, split="validation", shuffle=False).as_numpy_iterator())
    assert len(exs) == len(recs) - n_missing
    counter = t.source.counter("validation")
    assert counter.counts["missing_image"] == n_missing
    assert common.skip_counts()["test_vqav2_skip:validation"]["skipped"] == {
        "missing_image": n_missing
    }


def test_registration_touches_no_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCCA_DATA_DIR", str(tmp_path / "nowhere"))
    from tasks.official_tasks import make_okvqa_task

    make_okvqa_task("test_okvqa_lazy")
    t = seqio.get_mixture_or_task("test_okvqa_lazy")
    assert set(t.splits) == {"train", "validation"}
    assert not (tmp_path / "nowhere").exists()


def test_tf_errors_keep_message():
    """A reader error raised inside tf.data keeps the file name in its message."""

    def boom(split):
        raise FileNotFoundError("/p/q.json: gone")

    src = common.RecordSource("x", boom, ["train"], ["id"])
    with pytest.raises(Exception, match=r"/p/q\.json: gone"):
        next(iter(src.get_dataset("train")))
    assert tf.executing_eagerly()


@pytest.mark.parametrize("task,split", [
    ("coco_captions_tfds", "validation"), ("refcoco_tfds", "validation"), ("refcoco_tfds", "train"),
])  # fmt: skip
def test_tfds_wiring_with_mock_data(task, split, tmp_path):
    """TFDS alternatives: tfds.load(download=False) mapped onto the raw schema.
    Uses tfds.testing.mock_data (random examples from the builder's feature
    spec); real TFDS data is not available offline."""
    import tensorflow_datasets as tfds

    with (
        data_dir_override(tfds=str(tmp_path)),
        tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE),
    ):
        t = seqio.get_mixture_or_task(task)
        ds = t.get_dataset(L, split=split, shuffle=False)
        exs = list(ds.take(3).as_numpy_iterator())
        batch = next(ImageTextFeatureConverter(image_size=32)(ds, L).batch(2).as_numpy_iterator())
    assert exs and batch["image"].shape == (2, 32, 32, 3)
    for e in exs:
        assert e["image"].shape == (224, 224, 3)
        if task == "refcoco_tfds":
            assert e["box"].shape == (4,) and all(len(_s(x)) > 0 for x in e["expressions"])
            assert len(e["expressions"]) == 1 if split != "train" else len(e["expressions"]) >= 1
            assert re.fullmatch(r"\d+ \d+ \d+ \d+", _s(e["targets_pretokenized"]))
        else:
            assert _s(e["targets_pretokenized"]) in [_s(c) for c in e["captions"]]
