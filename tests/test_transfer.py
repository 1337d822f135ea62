"""Transfer jobs: gin plumbing, encoder files, checkpoint loading, the
transfer.train CLI (outputs, SIGKILL + resume bitwise), eval and infer."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from _kill import sigkill_after_checkpoint

import gin
from transfer import common, gin_flags
from transfer import train as train_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
ENCODER_FILES = sorted((REPO / "gin" / "encoders").glob("*.gin"))


def _vocab_size() -> int:
    from locca.vocab import default_vocabulary

    return -(-default_vocabulary().vocab_size // 128) * 128


# A micro PaLI for the CLI runs: 16 image tokens of width 32, a 1+1-layer T5.
MICRO = [
    f"--gin.T5Config.vocab_size={_vocab_size()}",
    "--gin.T5Config.emb_dim=32",
    "--gin.T5Config.num_heads=2",
    "--gin.T5Config.num_encoder_layers=1",
    "--gin.T5Config.num_decoder_layers=1",
    "--gin.T5Config.head_dim=16",
    "--gin.T5Config.mlp_dim=64",
    "--gin.T5Config.dropout_rate=0.1",  # the step rng matters for bitwise resume
    "--gin.ENCODER_CHECKPOINT=None",
    "--gin.transfer.encoder.vit_config={'width': 32, 'depth': 1, 'mlp_dim': 64, "
    "'num_heads': 2, 'patch_size': 16, 'pool_type': 'gap', 'posemb': 'learn'}",
    "--gin.MIXTURE_OR_TASK_NAME='shapes_vqa'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 8}",
]
NUM_STEPS = 24


def _train_cmd(model_dir, *extra):
    return [
        sys.executable,
        "-m",
        "transfer.train",
        "--gin_file=gin/runs/finetune.gin",
        "--gin_file=gin/encoders/locca_tiny.gin",
        *MICRO,
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.TRAIN_STEPS={NUM_STEPS}",
        "--gin.WARMUP_STEPS=2",
        "--gin.LEARNING_RATE=3e-3",
        "--gin.BATCH_SIZE=4",
        "--gin.CHECKPOINT_EVERY=1",
        "--gin.EVAL_EVERY=1000",  # evaluate at the end only
        "--gin.NUM_EVAL_EXAMPLES=6",
        "--gin.transfer.train.eval_batch_size=4",
        "--gin.transfer.train.tensorboard=False",
        "--gin.transfer.train.progress=False",
        "--gin.transfer.train.log_every=4",
        *extra,
    ]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.pop("XLA_FLAGS", None)
    return env


def _run(cmd, timeout=300):
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-4000:]}"
    return p


def _final_params(model_dir):
    params, step = common.restore_params(str(model_dir))
    return {
        jax.tree_util.keystr(k): np.asarray(v)
        for k, v in jax.tree_util.tree_leaves_with_path(params)
    }, step


pytestmark = pytest.mark.usefixtures("clean_gin")


# ---------------------------------------------------------------------------
# Flags and gin files.


def test_rewrite_gin_args():
    out = gin_flags.rewrite_gin_args(
        ["prog", "--gin.MODEL_DIR='/x'", "--gin_file=a.gin", "--gin.T5Config.emb_dim=8"]
    )
    assert out == [
        "prog",
        "--gin_bindings=MODEL_DIR = '/x'",
        "--gin_file=a.gin",
        "--gin_bindings=T5Config.emb_dim = 8",
    ]
    with pytest.raises(ValueError, match="NAME=VALUE"):
        gin_flags.rewrite_gin_args(["--gin.MODEL_DIR"])


@pytest.mark.parametrize("path", ENCODER_FILES, ids=lambda p: p.stem)
def test_encoder_gin_files(path):
    train_lib.register_configurables()
    gin_flags.parse_gin(
        ["runs/finetune.gin", str(path)],
        ["MODEL_DIR = '/tmp/unused'", "MIXTURE_OR_TASK_NAME = 'shapes_vqa'"],
    )
    ckpt = gin.query_parameter("%ENCODER_CHECKPOINT")
    assert isinstance(ckpt, str) and ckpt.split(":")[0].endswith(".npz")
    gin.bind_parameter("transfer.encoder.checkpoint", None)  # random init: no file needed
    spec = gin.get_configurable("transfer.encoder")()
    assert spec.name == path.stem and spec.checkpoint is None
    vit = spec.vit_config
    assert spec.resolution % vit["patch_size"][0] == 0
    assert set(vit) >= {"width", "depth", "mlp_dim", "num_heads", "patch_size", "pool_type"}
    # SigLIP-family and our encoders take pixels in [-1, 1]; CLIP its mean/std.
    from locca.models import pali

    clip = "clip" in path.stem
    np.testing.assert_allclose(spec.preprocessing.mean, pali.CLIP_MEAN if clip else 0.5)
    np.testing.assert_allclose(spec.preprocessing.std, pali.CLIP_STD if clip else 0.5)
    if "siglip" in path.stem:
        assert vit["pool_type"] == "map"
        # big_vision two-tower npz: the image tower is ":img"; HF-converted ones are single-tower.
        assert ckpt.endswith(".npz") if path.stem.endswith("_hf") else ckpt.endswith(":img")


def test_encoder_spec_clip_and_errors(tmp_path):
    spec = common.encoder(
        vit_config={"width": 8},
        resolution=32,
        value_range=None,
        mean=(0.4, 0.5, 0.6),
        std=(0.2, 0.3, 0.4),
    )
    assert spec.preprocessing.mean == (0.4, 0.5, 0.6) and spec.resolution == 32
    with pytest.raises(ValueError, match="no vit_config"):
        common.encoder(checkpoint=str(tmp_path / "enc.npz"))


# ---------------------------------------------------------------------------
# Loading an encoder npz at another resolution; the sidecar config check.

VIT_SMALL = dict(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=(8, 8), pool_type="gap")
LM_SMALL = dict(
    vocab_size=64,
    emb_dim=16,
    num_heads=2,
    num_encoder_layers=1,
    num_decoder_layers=1,
    head_dim=8,
    mlp_dim=32,
)


def _export_encoder(tmp_path, resolution=16):
    from checkpoints import bv_npz
    from locca.models import vit

    model = vit.Model(**VIT_SMALL)
    x = np.zeros((1, resolution, resolution, 3), np.float32)
    params = jax.tree.map(np.asarray, vit_params := model.init(jax.random.PRNGKey(3), x))
    del vit_params
    params = bv_npz._unbox(params["params"])
    path = tmp_path / "enc.npz"
    bv_npz.save_npz(path, params)
    return path, params


def test_encoder_checkpoint_loaded_with_posemb_resampling(tmp_path):
    path, saved = _export_encoder(tmp_path, resolution=16)  # 2 x 2 tokens
    enc = common.encoder(checkpoint=str(path), vit_config=VIT_SMALL, resolution=32)  # 4 x 4
    lm = common.language_model(config=common.default_t5_config(**LM_SMALL))
    bundle = common.build_model(encoder=enc, lm=lm)
    trainable, frozen, t_axes, f_axes = common.initial_params(bundle)
    assert set(frozen) == {"img"} and "img" not in trainable and set(f_axes) == {"img"}
    pe = frozen["img"]["pos_embedding"]
    assert pe.shape == (1, 16, 16) and saved["pos_embedding"].shape == (1, 4, 16)
    np.testing.assert_array_equal(
        frozen["img"]["embedding"]["kernel"], saved["embedding"]["kernel"]
    )
    # Resampling keeps the mean position embedding roughly (bilinear).
    assert abs(pe.mean() - saved["pos_embedding"].mean()) < 0.1
    # Trainable encoder: it moves to the trainable tree.
    bundle2 = common.build_model(encoder=enc, lm=lm, freeze_encoder=False)
    trainable2, frozen2, _, _ = common.initial_params(bundle2)
    assert frozen2 == {} and "img" in trainable2
    # A sidecar JSON that disagrees with the gin config is refused.
    (tmp_path / "enc.json").write_text(json.dumps({"model_config": {**VIT_SMALL, "width": 24}}))
    with pytest.raises(ValueError, match="disagrees"):
        common.encoder(checkpoint=str(path), vit_config=VIT_SMALL, resolution=32)
    # Without a gin config the sidecar's is used.
    (tmp_path / "enc.json").write_text(json.dumps({"model_config": VIT_SMALL}))
    assert common.encoder(checkpoint=str(path), resolution=32).vit_config["width"] == 16


# ---------------------------------------------------------------------------
# The CLI: outputs, SIGKILL + resume.


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted CLI run."""
    d = tmp_path_factory.mktemp("ref") / "model"
    _run(_train_cmd(d))
    return d


def test_cli_train_writes_checkpoints_metrics_predictions(reference_run):
    d = reference_run
    steps = common.checkpoint_steps(str(d))
    assert steps and steps[-1] == NUM_STEPS and len(steps) <= 3  # keep_checkpoints
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "loss" in x]
    assert train_lines and all(np.isfinite(x["loss"]) for x in train_lines)
    assert train_lines[-1]["loss"] < train_lines[0]["loss"]  # it learns something
    evals = [x for x in lines if "shapes_vqa/vqa_accuracy" in x]
    assert evals and evals[-1]["step"] == NUM_STEPS
    preds = (d / "predictions" / f"shapes_vqa_{NUM_STEPS}.jsonl").read_text().splitlines()
    assert len(preds) == 6
    rec = json.loads(preds[0])
    assert rec["inputs"].startswith("answer en ") and "prediction" in rec
    assert len(rec["target"]["answers"]) == 10
    assert (d / "config.gin").exists() and (d / "model_info.json").exists()
    info = json.loads((d / "model_info.json").read_text())
    assert info["encoder"]["name"] == "locca_tiny" and info["freeze_encoder"] is True


def test_cli_sigkill_then_resume_is_bitwise(reference_run, tmp_path):
    model_dir = tmp_path / "model"
    cmd = _train_cmd(model_dir)
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    killed_at = sigkill_after_checkpoint(proc, model_dir, min_step=3, timeout_s=240)
    assert 3 <= killed_at < NUM_STEPS, f"killed too late (step {killed_at})"
    _run(cmd)
    got, step = _final_params(model_dir)
    want, ref_step = _final_params(reference_run)
    assert step == ref_step == NUM_STEPS
    assert sorted(got) == sorted(want)
    for k in want:
        assert np.array_equal(got[k], want[k]), f"{k} differs after resume"


# ---------------------------------------------------------------------------
# Eval (every checkpoint) and infer, through their gin files, in-process.


def test_eval_every_checkpoint_and_exports(reference_run, tmp_path):
    from transfer import eval as eval_lib

    eval_lib.register_configurables()
    bindings = [b.split("=", 1)[0][len("--gin.") :] + " = " + b.split("=", 1)[1] for b in MICRO]
    gin_flags.parse_gin(
        ["runs/eval.gin", "encoders/locca_tiny.gin"],
        bindings
        + [
            f"CHECKPOINT_PATH = '{reference_run}'",
            f"EVAL_OUTPUT_DIR = '{tmp_path / 'eval'}'",
            f"EXPORT_DIR = '{tmp_path / 'export'}'",
            "transfer.evaluate.num_examples = 4",
            "transfer.evaluate.batch_size = 4",
        ],
    )
    results = gin.get_configurable("transfer.evaluate")()
    steps = common.checkpoint_steps(str(reference_run))
    assert sorted(results) == steps
    lines = (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == steps
    for s in steps:
        assert (tmp_path / "eval" / "predictions" / f"shapes_vqa_{s}.jsonl").exists()
        # The last step's predictions agree with the training run's evaluation.
    last = steps[-1]
    ours = [
        json.loads(x)["prediction"]
        for x in (tmp_path / "eval" / "predictions" / f"shapes_vqa_{last}.jsonl")
        .read_text()
        .split("\n")
        if x
    ]
    theirs = [
        json.loads(x)["prediction"]
        for x in (reference_run / "predictions" / f"shapes_vqa_{last}.jsonl")
        .read_text()
        .split("\n")
        if x
    ][:4]
    assert ours == theirs
    # Shapes ids are strings: no test-server file, and no crash.
    assert not list((tmp_path / "export").glob("*/*.json"))
    del eval_lib


def test_export_predictions(tmp_path):
    from transfer.eval import export_predictions

    recs = [
        {"index": 0, "question_id": 7, "postprocessed": "two"},
        {"index": 1, "question_id": 8, "postprocessed": "red"},
    ]
    path = export_predictions("shapes_vqa", recs, str(tmp_path))
    assert json.loads(pathlib.Path(path).read_text()) == [
        {"question_id": 7, "answer": "two"},
        {"question_id": 8, "answer": "red"},
    ]
    assert export_predictions("shapes_refexp", recs, str(tmp_path)) is None
    with pytest.raises(ValueError, match="no 'image_id'"):
        export_predictions("shapes_caption", [{"index": 0, "postprocessed": "x"}], str(tmp_path))


def test_infer_single_image_and_boxes(tmp_path):
    from PIL import Image

    from locca.boxes import BoxCodec
    from transfer import infer

    infer.register_configurables()
    bindings = [b.split("=", 1)[0][len("--gin.") :] + " = " + b.split("=", 1)[1] for b in MICRO]
    gin_flags.parse_gin(
        ["runs/infer.gin", "encoders/locca_tiny.gin"],
        bindings
        + [f"INFER_OUTPUT_DIR = '{tmp_path / 'out'}'", "transfer.infer.max_decode_len = 5"],
    )
    img = np.random.RandomState(0).randint(0, 256, (40, 50, 3)).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "scene.png")
    recs = gin.get_configurable("transfer.infer")(
        image=str(tmp_path / "scene.png"), prompt="caption en"
    )
    rec = json.loads((tmp_path / "out" / "prediction.json").read_text())
    assert rec["prompt"] == "caption en" and rec["prediction"] == recs[0]["prediction"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        gin.get_configurable("transfer.infer")(image=str(tmp_path / "nope.png"), prompt="x")
    # Box parsing and drawing (a random model rarely emits boxes).
    codec = BoxCodec(encoding="text", num_bins=500)
    text = codec.encode(np.array([0.1, 0.2, 0.5, 0.6]))
    boxes = infer._find_boxes(text, codec)
    np.testing.assert_allclose(boxes[0], [0.1, 0.2, 0.5, 0.6], atol=0.5 / 499 + 1e-9)
    assert infer._find_boxes("a red circle", codec) == []
    infer.draw_boxes(img, boxes, ["x"], str(tmp_path / "b.png"))
    drawn = np.asarray(Image.open(tmp_path / "b.png"))
    assert drawn.shape == (160, 200, 3)
    assert (drawn[..., 0] == 255).sum() > 50  # red outline pixels


def test_constant_baselines_vqa():
    from tasks.metrics.vqa import vqa_accuracy
    from transfer.eval import _TaskData, constant_baselines

    res = constant_baselines("shapes_vqa", num_examples=40, num_train_examples=200)["shapes_vqa"]
    mf, best = res["most_frequent/vqa_accuracy"], res["best_constant/vqa_accuracy"]
    assert 0 < mf <= best < 100
    # Recomputed by hand with the metric on the same examples.
    data = _TaskData(
        common.get_task("shapes_vqa"),
        split="validation",
        task_feature_lengths={"inputs": 64, "targets": 64},
        image_size=8,
        num_examples=40,
    )
    want = vqa_accuracy(data.targets, [res["most_frequent_text"]] * 40)
    assert abs(next(iter(want.values())) - mf) < 1e-9


def test_language_model_from_hf_checkpoint(shared_fixtures):
    from checkpoints import hf_t5

    ckpt = str(shared_fixtures / "hf_t5_v11")
    lm = common.language_model(checkpoint=ckpt)
    assert lm.config.vocab_size == 64 and lm.config.emb_dim == 32
    enc = common.encoder(vit_config=VIT_SMALL, resolution=16)
    trainable, frozen, _, _ = common.initial_params(common.build_model(encoder=enc, lm=lm))
    _, want = hf_t5.load_hf_t5(ckpt)
    got = jax.tree_util.tree_leaves_with_path(trainable["llm"])
    ref = dict(jax.tree_util.tree_leaves_with_path(want))
    assert len(got) == len(ref)
    for path, x in got:
        np.testing.assert_array_equal(x, ref[path])
    # A gin T5 config that disagrees with the checkpoint is refused.
    bad = common.default_t5_config(**{**LM_SMALL, "vocab_size": 128, "emb_dim": 32})
    with pytest.raises(ValueError, match="disagrees with checkpoint"):
        common.language_model(config=bad, checkpoint=ckpt)
