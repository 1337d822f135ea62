"""The fault and bad-input matrix (issue 12): each case a real file or process.

Every case ends in a clear error (the message names the file / record / what
was expected) or a counted skip, and nothing written before is lost. This
module is the one place that lists the cases; the behaviour lives in the
library (readers, checkpointing, gin flags, CLIs).
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FAULT_TRAIN = REPO / "tests" / "_fault_train.py"


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("XLA_FLAGS", None)
    env.pop("LOCCA_DEBUG", None)
    env.update(extra)
    return env


# ---------------------------------------------------------------------------
# Configs: gin typos are errors before any work starts.


def _parse_pretrain(bindings):
    from transfer import pretrain

    pretrain.parse_gin(["pretrain/cap_tiny.gin"], ["MODEL_DIR = '/nonexistent'", *bindings])


def _parse_transfer(bindings):
    from transfer import eval as eval_lib
    from transfer import gin_flags

    eval_lib.register_configurables()
    gin_flags.parse_gin(
        ["runs/eval.gin", "models/t5_tiny.gin", "encoders/locca_tiny.gin", "tasks/shapes_vqa.gin"],
        ["CHECKPOINT_PATH = '/nonexistent'", *bindings],
    )


GIN_CASES = {
    # case: (parser, bindings, words the error names)
    "unknown_macro_pretrain": (_parse_pretrain, ["TRAIN_STEPZ=3"], ["TRAIN_STEPZ", "TRAIN_STEPS"]),
    "unknown_macro_transfer": (_parse_transfer, ["EVAL_SPLT=1"], ["EVAL_SPLT", "EVAL_SPLIT"]),
    "unknown_parameter": (
        _parse_pretrain,
        ["transfer.pretrain.train_stepz = 3"],
        ["transfer.pretrain", "train_stepz"],
    ),
    "unknown_configurable": (_parse_transfer, ["transfer.trainz.x = 3"], ["transfer.trainz"]),
    "bad_flag_value": (_parse_pretrain, ["TRAIN_STEPS = 3 4"], ["TRAIN_STEPS = 3 4"]),
}


@pytest.mark.parametrize("case", sorted(GIN_CASES))
def test_gin_typo_is_an_error(case, clean_gin):
    parse, bindings, words = GIN_CASES[case]
    from locca import cli

    with pytest.raises((ValueError, SyntaxError)) as e:
        parse(bindings)
    line = cli.describe(e.value)  # what the entry points print
    for w in words:
        assert w in line, (w, line)


def test_gin_used_macros_pass(clean_gin):
    """The control: a used macro, and a macro another job uses (a task file's
    LABEL_SMOOTHING in an eval config) are accepted."""
    import gin

    _parse_pretrain(["TRAIN_STEPS = 3"])
    assert gin.query_parameter("%TRAIN_STEPS") == 3
    gin.clear_config()
    _parse_transfer(["LABEL_SMOOTHING = 0.1"])


def test_healthy_gin_parse_logs_no_error(clean_gin, caplog):
    """gin's per-search-path include probes ('Path not found') are not logged."""
    import logging

    with caplog.at_level(logging.DEBUG):
        _parse_pretrain([])  # cap_tiny.gin includes pretrain/locca_tiny.gin
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_accelerator_probe_quiet_only_without_a_gpu_driver():
    from locca import quiet

    env = {}
    assert quiet.quiet_accelerator_probe(env) == (not quiet.has_nvidia_driver())
    assert env.get("TF_CPP_MIN_LOG_LEVEL") == (None if quiet.has_nvidia_driver() else "3")
    env = {"TF_CPP_MIN_LOG_LEVEL": "0"}  # the user's choice stands
    assert not quiet.quiet_accelerator_probe(env) and env["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_gin_file_not_found_names_it(clean_gin):
    from transfer import pretrain

    with pytest.raises(FileNotFoundError, match=r"gin file 'pretrain/nope\.gin' not found"):
        pretrain.parse_gin(["pretrain/nope.gin"])


# ---------------------------------------------------------------------------
# Readers: official-format folders written by the shapes exporter, then damaged.


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from locca.data.export import export

    root = tmp_path_factory.mktemp("exported")
    export("vqav2", str(root / "vqav2"), 3, 0, "val")
    export("refcoco", str(root / "refcoco"), 3, 0, "train")
    return root


@pytest.fixture
def vqa_dir(exported, tmp_path):
    d = tmp_path / "vqav2"
    shutil.copytree(exported / "vqav2", d)
    return d


@pytest.fixture
def ref_dir(exported, tmp_path):
    d = tmp_path / "refcoco"
    shutil.copytree(exported / "refcoco", d)
    return d


Q = "v2_OpenEnded_mscoco_val2014_questions.json"
A = "v2_mscoco_val2014_annotations.json"


def _vqa_records(d):
    from tasks.sources import vqa

    return vqa.vqav2_records("validation", str(d))


def _edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _first_image(d):
    return sorted((d / "val2014").iterdir())[0]


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _not_jpeg(p):
    p.write_text("<html>404 Not Found</html>")


IMAGE_FAULTS = {
    # case: (damage, reason counted when skipping, words of the error)
    "image_missing": (os.remove, "missing_image", ["image not found", "record"]),
    "image_truncated": (_truncate, "truncated_image", ["truncated JPEG", "record"]),
    "image_not_jpeg": (_not_jpeg, "not_an_image", ["not a JPEG/PNG/GIF/BMP file", "record"]),
}


def _source(d, skip):
    from tasks.sources import vqa
    from tasks.sources.common import RecordSource

    keys = ("id", "image/path", "question", "answers")
    return RecordSource(
        f"faults_{skip}", lambda split: vqa.vqav2_records(split, str(d)), ["validation"], keys, skip
    )


@pytest.mark.parametrize("case", sorted(IMAGE_FAULTS))
@pytest.mark.parametrize("skip", [False, True], ids=["error", "skip"])
def test_bad_image(case, skip, vqa_dir, tmp_path):
    damage, reason, words = IMAGE_FAULTS[case]
    img = _first_image(vqa_dir)
    damage(img)
    src = _source(vqa_dir, skip)
    n_records = len(_vqa_records(vqa_dir))
    n_bad = sum(r["image/path"] == str(img) for r in _vqa_records(vqa_dir))
    assert n_bad > 0
    gen = src._generate("validation", False, None, 0, 1)
    if not skip:
        with pytest.raises((FileNotFoundError, ValueError)) as e:
            list(gen)
        for w in [*words, str(img), "--skip_missing_images"]:
            assert w in str(e.value), (w, str(e.value))
        return
    out = list(gen)
    assert len(out) == n_records - n_bad
    counts = src.counter("validation").as_dict()
    assert counts["skipped"] == {reason: n_bad} and str(img) in counts["examples"]
    from transfer import eval as transfer_eval  # the report beside an evaluation's metrics

    transfer_eval._report_skips(str(tmp_path), 7)
    report = json.loads((tmp_path / "skipped_7.json").read_text())
    assert report["sources"][f"{src._name}:validation"]["skipped"] == {reason: n_bad}


def _empty(p):
    p.write_bytes(b"")


def _cut(p):
    p.write_bytes(p.read_bytes()[:-40])


def _latin1(p):
    p.write_bytes(p.read_bytes().replace(b'"question": "', b'"question": "\xe9', 1))


def _drop_question(data):
    del data["questions"][0]["question"]


def _string_qid(data):
    data["questions"][1]["question_id"] = "abc"


def _empty_question(data):
    data["questions"][0]["question"] = "  "


def _three_answers(data):
    data["annotations"][0]["answers"] = data["annotations"][0]["answers"][:3]


JSON_FAULTS = {
    # case: (file, damage of the bytes or of the parsed JSON, words of the error)
    "json_empty": (Q, _empty, [Q, "malformed JSON at line 1", "expected VQA questions"]),
    "json_malformed": (Q, _cut, [Q, "malformed JSON at line", "column"]),
    "json_not_utf8": (Q, _latin1, [Q, "not UTF-8 text at byte"]),
    "field_missing": (Q, _drop_question, [Q, "missing required field 'question'"]),
    "field_mistyped": (Q, _string_qid, [Q, "questions[1]", "'question_id' should be int"]),
    "text_empty": (Q, _empty_question, [Q, "empty question text"]),
    "answers_wrong_length": (A, _three_answers, [A, "expected 10 answers", "got 3"]),
    "annotations_missing": (A, os.remove, [A, "file not found", "expected VQA annotations"]),
}


@pytest.mark.parametrize("case", sorted(JSON_FAULTS))
def test_bad_annotation_file(case, vqa_dir):
    from tasks.sources.common import DataFormatError

    name, damage, words = JSON_FAULTS[case]
    path = vqa_dir / name
    if damage in (_drop_question, _string_qid, _empty_question, _three_answers):
        _edit_json(path, damage)
    else:
        damage(path)
    with pytest.raises((DataFormatError, FileNotFoundError)) as e:
        _vqa_records(vqa_dir)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def _set_bbox(bbox):
    def fn(data):
        data["annotations"][0]["bbox"] = bbox

    return fn


BOX_FAULTS = {
    "box_outside_image": ([500.0, 500.0, 10.0, 10.0], "covers no part"),
    "box_zero_area": ([5.0, 5.0, 0.0, 8.0], "covers no part"),
    "box_negative_size": ([5.0, 5.0, -3.0, 8.0], "negative width/height"),
}


@pytest.mark.parametrize("case", sorted(BOX_FAULTS))
def test_bad_box(case, ref_dir):
    from tasks.sources import refcoco
    from tasks.sources.common import DataFormatError

    bbox, words = BOX_FAULTS[case]
    inst = ref_dir / "refcoco" / "instances.json"
    data = json.loads(inst.read_text())
    ann_id = data["annotations"][0]["id"]
    _edit_json(inst, _set_bbox(bbox))
    with pytest.raises(DataFormatError) as e:
        refcoco.records("refcoco", "train", str(ref_dir), partition="unc")
        refcoco.records("refcoco", "val", str(ref_dir), partition="unc")
        refcoco.records("refcoco", "testA", str(ref_dir), partition="unc")
        refcoco.records("refcoco", "testB", str(ref_dir), partition="unc")
    for w in [str(inst), f"annotation {ann_id}", words]:
        assert w in str(e.value), (w, str(e.value))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_refused(ref_dir, tmp_path, monkeypatch):
    from tasks.sources import refcoco

    refs = ref_dir / "refcoco" / "refs(unc).p"
    refs.write_bytes(pickle.dumps([{"evil": _Evil()}], protocol=2))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match=r"refs\(unc\)\.p: unsafe pickle.*refused global"):
        refcoco.records("refcoco", "train", str(ref_dir), partition="unc")
    assert not (tmp_path / "PWNED").exists()


# ---------------------------------------------------------------------------
# Checkpoint files.


def test_pytorch_bin_checkpoint_is_refused(tmp_path):
    from checkpoints import bv_npz

    f = tmp_path / "pytorch_model.bin"
    f.write_bytes(pickle.dumps({"w": [1.0]}))
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: refusing to load a pickle-based"):
        bv_npz.load_npz_flat(str(f))


def test_npz_with_pickled_objects_is_refused(tmp_path):
    from checkpoints import bv_npz

    f = tmp_path / "evil.npz"
    np.savez(f, good=np.zeros(3, np.float32), bad=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"evil\.npz: array 'bad' holds pickled Python objects"):
        bv_npz.load_npz_flat(str(f))


def _tiny_vit():
    import jax

    from locca.models import vit

    cfg = {"width": 16, "depth": 1, "mlp_dim": 32, "num_heads": 2, "patch_size": (8, 8)}
    model = vit.Model(**cfg)
    import flax.linen as nn

    params = model.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3), np.float32))["params"]
    return cfg, jax.device_get(nn.unbox(params))


def test_missing_img_subtree_and_two_tower_without_img(tmp_path):
    from checkpoints import bv_npz

    cfg, params = _tiny_vit()
    flat = bv_npz.flatten(params)
    f = tmp_path / "two_tower.npz"
    np.savez(f, **{f"img/{k}": v for k, v in flat.items()}, **{"txt/x": np.zeros(2)})
    with pytest.raises(ValueError, match=r"two_tower\.npz is a two-tower checkpoint.*':img'"):
        bv_npz.load_vit_params(params, str(f), cfg)
    g = tmp_path / "txt_only.npz"
    np.savez(g, **{"txt/x": np.zeros(2)})
    with pytest.raises(KeyError, match=r"txt_only\.npz: no keys under subtree 'img'"):
        bv_npz.load_vit_params(params, f"{g}:img", cfg)


def test_checkpoint_of_the_wrong_shape(tmp_path):
    from checkpoints import bv_npz

    cfg, params = _tiny_vit()
    flat = bv_npz.flatten(params)
    k = next(k for k in flat if k.endswith("MlpBlock_0/Dense_0/kernel"))
    flat[k] = np.zeros((16, 64), np.float32)  # mlp_dim 64, the model has 32
    f = tmp_path / "wrong.npz"
    np.savez(f, **flat)
    with pytest.raises(ValueError) as e:
        bv_npz.load_vit_params(params, str(f), cfg)
    assert k in str(e.value) and "(16, 64)" in str(e.value), str(e.value)


# ---------------------------------------------------------------------------
# Training processes: kills, damaged checkpoints, concurrent runs, NaN, full disk.


def _train_cmd(model_dir, out, *extra):
    return [sys.executable, str(FAULT_TRAIN), str(model_dir), str(out), *extra]


def _run_train(model_dir, out, *extra, ok=True):
    p = subprocess.run(
        _train_cmd(model_dir, out, *extra),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    if ok:
        assert p.returncode == 0, f"{p.stdout}\n{p.stderr[-3000:]}"
    return p


def _load(npz):
    with np.load(npz, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _assert_bitwise(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def _steps(model_dir):
    d = pathlib.Path(model_dir) / "checkpoints"
    return sorted(int(c.name) for c in d.iterdir() if c.name.isdigit()) if d.is_dir() else []


PAD = ["--pad", "2500"]  # a 25 MB parameter: a checkpoint write takes a while


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: (model_dir, final params)."""
    d = tmp_path_factory.mktemp("reference")
    _run_train(d / "model", d / "params.npz", *PAD)
    return d / "model", _load(d / "params.npz")


def test_sigkill_during_checkpoint_write_resumes_bitwise(reference, tmp_path):
    model_dir, out = tmp_path / "model", tmp_path / "params.npz"
    ckpts = model_dir / "checkpoints"
    proc = subprocess.Popen(
        _train_cmd(model_dir, out, *PAD, "--sleep", "0.3"),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    killed_mid_write, t0 = False, time.time()
    try:
        while time.time() - t0 < 240 and proc.poll() is None:
            tmp = [c for c in ckpts.glob("*orbax-checkpoint-tmp*")] if ckpts.is_dir() else []
            if tmp and _steps(model_dir):  # a write in progress, with an older step done
                proc.send_signal(signal.SIGKILL)
                killed_mid_write = True
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None and not killed_mid_write:
            proc.kill()
        proc.communicate()
    assert killed_mid_write, "no checkpoint write was seen in progress"
    assert not out.exists()
    left = list(ckpts.glob("*orbax-checkpoint-tmp*"))
    before = _steps(model_dir)
    assert left, "the kill came after the write finished"
    p = _run_train(model_dir, out, *PAD)
    assert f"start_step={max(before)}" in p.stdout  # the previous, complete checkpoint
    _assert_bitwise(_load(out), reference[1])
    assert not list(ckpts.glob("*orbax-checkpoint-tmp*"))


def test_corrupted_latest_checkpoint_falls_back_with_warning(reference, tmp_path):
    model_dir, out = tmp_path / "model", tmp_path / "params.npz"
    shutil.copytree(reference[0], model_dir)
    steps = _steps(model_dir)
    assert len(steps) == 2
    latest = model_dir / "checkpoints" / str(steps[-1])
    (latest / "state" / "_METADATA").write_bytes(b"\x00garbage")  # a damaged latest step
    # Resume at an earlier total so the fallback step is trained again to the same end.
    p = _run_train(model_dir, out, *PAD)
    assert f"start_step={steps[0]}" in p.stdout
    assert "unreadable" in p.stderr and "moved aside" in p.stderr
    assert list((model_dir / "checkpoints").glob(f"{steps[-1]}.corrupt-*"))  # kept, not deleted
    _assert_bitwise(_load(out), reference[1])


def test_truncated_array_file_of_latest_checkpoint_falls_back(reference, tmp_path):
    """OCDBT: the metadata of the newest step is intact but its array data file
    is cut short: detected at restore, moved aside, the previous step resumed."""
    model_dir, out = tmp_path / "model", tmp_path / "params.npz"
    shutil.copytree(reference[0], model_dir)
    steps = _steps(model_dir)
    data = [
        p
        for p in (model_dir / "checkpoints" / str(steps[-1]) / "state").rglob("*")
        if p.is_file() and p.parent.name == "d"  # ocdbt.process_*/d/<hash>: the array bytes
    ]
    assert data, "no OCDBT data file in the checkpoint"
    big = max(data, key=lambda p: p.stat().st_size)
    with open(big, "r+b") as f:
        f.truncate(big.stat().st_size // 3)
    p = _run_train(model_dir, out, *PAD)
    assert f"start_step={steps[0]}" in p.stdout
    assert "array data unreadable (a truncated or corrupted file" in p.stderr
    assert "does not match" not in p.stderr  # damage, not a configuration error
    assert list((model_dir / "checkpoints").glob(f"{steps[-1]}.corrupt-*"))
    _assert_bitwise(_load(out), reference[1])


def test_torn_metrics_line_is_cut_and_ignored(tmp_path):
    """A crash in the middle of a metrics.jsonl append leaves a partial last line:
    readers ignore it (counted), the next writer cuts it before appending."""
    from locca.training.writers import JsonlWriter, read_jsonl

    path = tmp_path / "metrics.jsonl"
    w = JsonlWriter(str(path))
    w.write_scalars(1, {"loss": 2.5})
    w.write_scalars(2, {"loss": float("nan")})
    w.close()
    good = path.read_bytes()
    path.write_bytes(good + b'{"step": 3, "lo')  # the torn tail of a killed append
    records, torn = read_jsonl(str(path))
    assert torn == 1 and [r["step"] for r in records] == [1, 2] and records[1]["loss"] == "nan"
    w = JsonlWriter(str(path))  # the resumed run
    assert w.dropped_bytes == len(b'{"step": 3, "lo')
    w.write_scalars(3, {"loss": 1.0})
    w.close()
    assert path.read_bytes().startswith(good)  # nothing written before is lost
    records, torn = read_jsonl(str(path))
    assert torn == 0 and [r["step"] for r in records] == [1, 2, 3]
    path.write_bytes(good.replace(b'"step": 2', b'"step" 2'))  # damage inside: an error
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not a JSON object"):
        read_jsonl(str(path))


def test_no_readable_checkpoint_is_a_clear_error(reference, tmp_path):
    model_dir, out = tmp_path / "model", tmp_path / "params.npz"
    shutil.copytree(reference[0], model_dir)
    steps = _steps(model_dir)
    for s in steps:
        (model_dir / "checkpoints" / str(s) / "state" / "_METADATA").write_bytes(b"")
    p = _run_train(model_dir, out, *PAD, ok=False)
    assert p.returncode != 0
    assert "no readable checkpoint in" in p.stderr and "nothing was changed" in p.stderr
    assert _steps(model_dir) == steps  # nothing moved or deleted
    assert not out.exists()


def test_checkpoint_of_another_model_is_an_error_not_corruption(reference, tmp_path):
    model_dir, out = tmp_path / "model", tmp_path / "params.npz"
    shutil.copytree(reference[0], model_dir)
    steps = _steps(model_dir)
    p = _run_train(model_dir, out, *PAD, "--hidden", "24", ok=False)
    assert p.returncode != 0
    assert "does not match the trainable params" in p.stderr
    assert "param shapes differ" in p.stderr and "(6, 16)" in p.stderr
    assert _steps(model_dir) == steps and not list((model_dir / "checkpoints").glob("*corrupt*"))


def test_concurrent_runs_on_one_model_dir(tmp_path):
    from locca.training.checkpointing import RunLock, RunLockedError

    model_dir = tmp_path / "model"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from locca.training.checkpointing import RunLock; "
            "RunLock(sys.argv[1]); print('locked', flush=True); time.sleep(600)",
            str(model_dir),
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError) as e:
            RunLock(str(model_dir))
        assert f"pid {holder.pid}" in str(e.value) and "in use by another run" in str(e.value)
    finally:
        holder.send_signal(signal.SIGKILL)  # a dead owner leaves a stale lock file ...
        holder.wait()
    lock = RunLock(str(model_dir))  # ... which is free again
    assert json.loads((model_dir / "checkpoints.lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    sys.path.insert(0, str(REPO / "tests"))
    import _train_script as base

    from locca.training.optimizers import make_optimizer
    from locca.training.trainer import train

    good = base.make_batches()

    def batches(start):
        for i, b in enumerate(good(start), start):
            yield {**b, "x": b["x"] * np.nan} if i == 4 else b

    params, frozen = base.init_params()
    tx = make_optimizer("adamw", lr=0.01, warmup_steps=1, total_steps=8)
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 5 .*step 4"):
        train(
            model_dir=str(tmp_path),
            init_params=params,
            frozen_params=frozen,
            loss_fn=base.loss_fn,
            optimizer=tx,
            batches=batches,
            num_steps=8,
            checkpoint_every=2,
            progress=False,
            tensorboard=False,
        )
    assert _steps(tmp_path) == [2, 4]


FULL_DISK = r"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # the disk fills at 4 KiB
from locca.io_utils import atomic_write_json
atomic_write_json(sys.argv[1], {"scores": list(range(5000))})
"""


def test_full_disk_leaves_the_previous_result_intact(tmp_path):
    from locca.io_utils import atomic_write_json

    f = tmp_path / "metrics.json"
    atomic_write_json(f, {"step": 1, "accuracy": 0.5})
    p = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(f)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert p.returncode != 0 and ("File too large" in p.stderr or "No space" in p.stderr)
    assert json.loads(f.read_text()) == {"step": 1, "accuracy": 0.5}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["metrics.json"]  # no temp file left


# ---------------------------------------------------------------------------
# CLIs: one clear line, TensorFlow wrapping stripped, non-zero exit.


def test_tf_wrapped_reader_error_is_one_clear_line():
    import tensorflow as tf

    from locca import cli

    def gen():
        raise FileNotFoundError("vqav2: record 7: image not found: /data/coco/val2014/x.jpg")
        yield 0

    ds = tf.data.Dataset.from_generator(gen, output_signature=tf.TensorSpec([], tf.int32))
    with pytest.raises(tf.errors.OpError) as e:
        list(ds.as_numpy_iterator())
    line = cli.describe(e.value)
    assert line == "FileNotFoundError: vqav2: record 7: image not found: /data/coco/val2014/x.jpg"
    orig = cli.original_error(e.value)
    assert isinstance(orig, FileNotFoundError) and "function_node" not in str(orig)


_ABSL_INFO_OR_WARNING = re.compile(r"[IW]\d{4} ")


def _cli(*args, **env):
    return subprocess.run(
        [sys.executable, "-m", *args],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )


def test_cli_bad_flag_value_and_unknown_macro(tmp_path):
    """One subprocess per entry point family: an error line, no traceback, exit 1."""
    model_dir = tmp_path / "never_created"
    p = _cli(
        "transfer.pretrain",
        "--gin_file=pretrain/cap_tiny.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.TRAIN_STEPZ=3",
    )
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 1 and len(err) == 1, p.stderr[-2000:]
    assert "TRAIN_STEPZ (did you mean TRAIN_STEPS?)" in err[0]
    assert "Traceback" not in p.stderr and not model_dir.exists()
    # No gin search-path probe / CUDA probe lines. An INFO or WARNING line of the
    # C++ logger (absl prefix I/W + MMDD) may say "error" without being one:
    # TensorFlow 2.21 on a CPU with AVX512-VNNI logs "oneDNN custom operations are
    # on ... round-off errors" before absl is initialised, whatever
    # TF_CPP_MIN_LOG_LEVEL says.
    noise = [
        ln
        for ln in p.stderr.splitlines()
        if "error" in ln.lower() and ln not in err and not _ABSL_INFO_OR_WARNING.match(ln)
    ]
    assert noise == []
    files = [f"--{k}={tmp_path / k[0]}.json" for k in ("questions", "annotations", "results")]
    q = _cli("tasks.vqa_eval", *files)  # a scorer: its own usage-error exit status (2)
    err = [ln for ln in q.stderr.splitlines() if ln.startswith("error:")]
    assert q.returncode != 0 and len(err) == 1, q.stderr[-2000:]
    assert "a.json: file not found (expected VQA annotations" in err[0]
    assert "Traceback" not in q.stderr


def test_cli_verbose_shows_the_traceback(capsys, monkeypatch):
    from locca import cli

    monkeypatch.setenv(cli.DEBUG_ENV, "0")  # restored (unset) after the test

    def main(argv):
        assert argv == ["--x=1"]
        raise ValueError("data.json: record 3: field 'box' should be list, got str")

    for argv, traceback_shown in ((["--x=1"], False), (["--verbose", "--x=1"], True)):
        with pytest.raises(SystemExit) as e:
            cli.run(main, argv)
        err = capsys.readouterr().err
        assert e.value.code == 1
        assert ("Traceback" in err) == traceback_shown
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert (
            lines == [lines[0]]
            and "ValueError: data.json: record 3: field 'box' should be list" in lines[0]
        )


# ---------------------------------------------------------------------------
# Model outputs are arbitrary text: parsers and metrics never raise on them and
# always give a defined score (hypothesis fuzzing).

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_TEXT = st.one_of(
    st.text(max_size=80),
    st.binary(max_size=80),
    st.lists(
        st.one_of(
            st.integers(-(10**6), 10**9).map(str),
            st.floats(allow_nan=True, allow_infinity=True).map(str),
            st.integers(0, 1100).map(lambda i: f"<loc{i:04d}>"),
            st.sampled_from(["", " ", "two", "nan", "-1", "1e999", "9" * 400, "\x00", "é"]),
        ),
        max_size=8,
    ).map(" ".join),
)
FUZZ = settings(max_examples=150, deadline=None)


@FUZZ
@given(
    text=_TEXT, encoding=st.sampled_from(["text", "loc"]), order=st.sampled_from(["yxyx", "xyxy"])
)
def test_fuzz_box_decode_never_raises(text, encoding, order):
    from locca.boxes import BoxCodec

    box = BoxCodec(encoding, order=order).decode(text)
    if box is not None:
        assert box.shape == (4,) and np.all(np.isfinite(box))
        assert np.all((box >= 0) & (box <= 1)) and box[0] <= box[2] and box[1] <= box[3]


@FUZZ
@given(text=_TEXT)
def test_fuzz_postprocessors_never_raise(text):
    from tasks import registry
    from tasks.metrics.tally import parse_count

    assert isinstance(registry.text_postprocessor(text), str)
    box = registry.rec_postprocessor_factory("text")(text)
    assert box is None or box.shape == (4,)
    count = parse_count(text if isinstance(text, str) else text.decode("utf-8", "replace"))
    assert count is None or (isinstance(count, int) and count >= 0)


@FUZZ
@given(preds=st.lists(_TEXT, min_size=1, max_size=5))
def test_fuzz_metrics_give_a_defined_score(preds):
    from tasks import registry
    from tasks.metrics.anls import anls
    from tasks.metrics.rec import rec_accuracy
    from tasks.metrics.tally import tally_accuracy
    from tasks.metrics.vqa import vqa_accuracy

    texts = [registry.text_postprocessor(p) for p in preds]
    n = len(texts)
    scores = {
        **vqa_accuracy([{"answers": ["2"] * 7 + ["two", "3", "yes"]}] * n, texts),
        **anls([{"answers": ["Main St.", "main street"]}] * n, texts),
        **tally_accuracy([{"answer": 2, "issimple": True}] * n, texts),
        **rec_accuracy(
            [{"box": [0.1, 0.2, 0.5, 0.6]}] * n,
            [registry.rec_postprocessor_factory("text")(p) for p in preds],
        ),
    }
    for k, v in scores.items():
        assert np.isfinite(v), (k, v)
    for k in ("vqa_accuracy", "tally_accuracy", "acc@0.5"):
        assert 0.0 <= scores[k] <= 100.0
    assert 0.0 <= scores["anls"] <= 1.0 and 0.0 <= scores["mean_iou"] <= 1.0
