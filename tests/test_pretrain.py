"""Pretraining entry point: flags, deterministic data, an end-to-end run, the evaluator."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf
from _kill import sigkill_after_checkpoint

from locca import boxes, pretrain_eval, region_text
from locca.boxes import BoxCodec, iou
from locca.models import locca
from transfer import gin_flags, pretrain

LENGTHS = {"cap": 40, "aref": 28, "gcap": 28}


@pytest.fixture(scope="module")
def small_task():
    from tasks import pretrain_tasks

    return pretrain_tasks.make_shapes_pretrain_task(
        "shapes_pretrain_test_small", resolution=32, num_train=48, num_validation=8, num_test=8
    )


def test_rewrite_gin_args():
    out = gin_flags.rewrite_gin_args(["--gin_file=a.gin", "--gin.TRAIN_STEPS=5", "--gin.X='a=b'"])
    assert out == ["--gin_file=a.gin", "--gin_bindings=TRAIN_STEPS = 5", "--gin_bindings=X = 'a=b'"]
    with pytest.raises(ValueError, match="--gin.NAME=VALUE"):
        gin_flags.rewrite_gin_args(["--gin.FOO"])


def test_distributed_only_when_multihost(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(1))
    assert not pretrain.maybe_initialize_distributed({})
    assert not pretrain.maybe_initialize_distributed({"SLURM_NTASKS": "1"})
    assert not calls
    assert pretrain.maybe_initialize_distributed({"SLURM_NTASKS": "4"})
    assert pretrain.maybe_initialize_distributed({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    assert pretrain.maybe_initialize_distributed({"TPU_WORKER_HOSTNAMES": "a,b"})
    assert len(calls) == 3


def test_batches_deterministic_and_resumable(small_task):
    batches = pretrain.make_batches(
        small_task, task_feature_lengths=LENGTHS, batch_size=4, image_size=32, seed=3
    )
    it = batches(0)
    run = [next(it) for _ in range(15)]  # > 1 epoch of 48 examples
    again = batches(0)
    for ref in run[:3]:
        got = next(again)
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k])
    resumed = batches(13)  # crosses the epoch boundary
    for ref in run[13:15]:
        got = next(resumed)
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k])
    b = run[0]
    assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.uint8
    for t in locca.TASKS:
        ki, kt, kw = locca.task_keys(t)
        assert b[kt].shape == (4, LENGTHS[t])
        np.testing.assert_array_equal(b[ki][:, 1:], b[kt][:, :-1])  # shifted right
        np.testing.assert_array_equal(b[ki][:, 0], 0)  # BOS = 0
        np.testing.assert_array_equal(b[kw], b[kt] != 0)
    # Different data seed -> different order.
    other = next(pretrain.make_batches(small_task, task_feature_lengths=LENGTHS, batch_size=4,
                                       image_size=32, seed=4)(0))  # fmt: skip
    assert not np.array_equal(other["image"], b["image"])


def test_split_prompts():
    assert region_text.split_aref("ARef : small red star : 1 2 3 4") == (
        "ARef : small red star :", "1 2 3 4"
    )  # fmt: skip
    assert region_text.split_gcap("GCap : 1 2 3 4 : the red star") == (
        "GCap : 1 2 3 4 :", "the red star"
    )  # fmt: skip
    assert region_text.split_aref("a caption") is None
    assert region_text.split_gcap("GCap : 1 2 3 4") is None
    # One owner writes and parses: round trips, on Python strings and TF string tensors
    # (the seqio preprocessor writes with tensors).
    for c, b in [("large blue star", "<loc0004><loc0011><loc0011><loc0017>"), ("a", "0 1 2 3")]:
        prompt, box = region_text.split_aref(region_text.aref_text(c, b))
        assert box == b and region_text.aref_region(prompt) == c
        prompt, region = region_text.split_gcap(region_text.gcap_text(b, c))
        assert region == c and prompt == f"GCap : {b} :"
        as_tensor = region_text.aref_text(tf.constant(c), tf.constant(b)).numpy().decode()
        assert as_tensor == region_text.aref_text(c, b)
    assert region_text.aref_region("GCap : 1 2 3 4 :") == ""
    np.testing.assert_allclose(boxes.mean_box([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]]),
                               [0.25, 0.25, 0.75, 0.75])  # fmt: skip


@pytest.fixture(scope="module")
def evaluator_and_params(small_task, tmp_path_factory):
    vocab = small_task.output_features["cap"].vocabulary
    model = locca.build_model(
        vocab_size=vocab.vocab_size,
        encoder_config=dict(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=(8, 8)),
        max_len=max(LENGTHS.values()),
    )
    params = locca.init_params(model, jax.random.PRNGKey(0), image_size=32, text_len=40)
    out = tmp_path_factory.mktemp("eval")

    def dataset_fn(split):
        return pretrain.make_dataset(
            small_task, split=split, task_feature_lengths=LENGTHS, batch_size=None,
            image_size=32, shuffle=False, num_epochs=1,
        )  # fmt: skip

    ev = pretrain_eval.PretrainEvaluator(
        model=model, task=small_task, dataset_fn=dataset_fn, task_feature_lengths=LENGTHS,
        image_size=32,
        model_dir=str(out), num_examples=8, batch_size=4, num_mean_box_examples=48, num_render=4,
    )  # fmt: skip
    return ev, params, out


def test_evaluator_metrics_and_png(evaluator_and_params):
    ev, params, out = evaluator_and_params
    m = ev(7, params, {})
    for t in locca.TASKS:
        np.testing.assert_allclose(m[f"val_loss_{t}"], np.log(ev.vocab.vocab_size), rtol=1e-4)
    assert m["aref_num_examples"] == 8
    gts = [g for g in ev.aref_gt if g is not None]
    assert len(gts) == 8
    # Baselines: whole image and the mean training box, scored on the same boxes.
    whole = np.mean([float(BoxCodec().decode("0 0 499 499") is not None) and
                     (np.prod(g[2:] - g[:2]) >= 0.5) for g in gts])  # fmt: skip
    assert m["aref_acc@0.5_whole_image"] == pytest.approx(whole)
    assert 0.0 <= m["aref_acc@0.5_mean_box"] <= 1.0
    assert np.all(ev.train_mean_box[2:] > ev.train_mean_box[:2])
    assert 0.0 <= m["aref_acc@0.5"] <= 1.0
    assert m["aref_acc@0.5_low"] <= m["aref_acc@0.5"] <= m["aref_acc@0.5_high"]
    # Region baselines from the image's own regions (no prompt read): the
    # largest region, and the expected hit rate of a random region.
    assert ev.region_boxes is not None and len(ev.region_boxes) == 8
    rows = [i for i, g in enumerate(ev.aref_gt) if g is not None]
    largest, random_hit = [], []
    for i in rows:
        r = ev.region_boxes[i]
        area = (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])
        largest.append(iou(r[np.argmax(area)], ev.aref_gt[i]) >= 0.5)
        random_hit.append(np.mean([iou(b, ev.aref_gt[i]) >= 0.5 for b in r]))
    assert m["aref_acc@0.5_largest_region"] == pytest.approx(np.mean(largest))
    assert m["aref_acc@0.5_random_region"] == pytest.approx(np.mean(random_hit))
    # The ground-truth box is one of the image's regions.
    assert all(h > 0 for h in random_hit)
    assert os.path.getsize(out / "samples" / "step_000007.png") > 1000


def test_evaluator_scores_an_oracle(evaluator_and_params, monkeypatch):
    """With generations replaced by the true box text, Acc@0.5 is 1."""
    ev, params, _ = evaluator_and_params
    # Keyed on (image, prompt): two scenes may share a prompt ("locate en red circle").
    truth = {
        (img.tobytes(), p): BoxCodec().encode(g)
        for img, p, g in zip(ev.data["image"], ev.aref_prompts, ev.aref_gt)
        if p
    }

    def oracle(params, images, prompts, max_len, banned=()):
        return [" " + truth[(im.tobytes(), p)] if p else "" for im, p in zip(images, prompts)]

    monkeypatch.setattr(ev, "generate", oracle)
    monkeypatch.setattr(ev, "num_render", 0)
    m = ev(1, params, {})
    assert m["aref_acc@0.5"] == 1.0 and m["aref_parse_rate"] == 1.0
    assert m["aref_mean_iou"] > 0.95

    monkeypatch.setattr(ev, "generate", lambda *a: ["no box here"] * len(a[2]))
    m = ev(1, params, {})
    assert m["aref_acc@0.5"] == 0.0 and m["aref_parse_rate"] == 0.0
    assert m["aref_num_unparsed"] == 8 and m["aref_num_degenerate"] == 0
    assert m["aref_acc@0.5_low"] == 0.0 and 0.0 < m["aref_acc@0.5_high"] < 0.5


def _entry_point_cmd(model_dir, *extra):
    return [
        sys.executable, "-m", "transfer.pretrain",
        "--gin_file=gin/pretrain/locca_tiny.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.tasks.make_shapes_pretrain_task.name='shapes_pretrain_test_e2e'",
        "--gin.tasks.make_shapes_pretrain_task.resolution=32",
        "--gin.tasks.make_shapes_pretrain_task.num_train=64",
        "--gin.tasks.make_shapes_pretrain_task.num_validation=8",
        "--gin.transfer.pretrain.image_size=32",
        "--gin.BATCH_SIZE=8",
        '--gin.transfer.pretrain.encoder_config={"width": 32, "depth": 2, "mlp_dim": 64, '
        '"num_heads": 2, "patch_size": 8}',
        '--gin.transfer.pretrain.evaluator_kwargs={"num_examples": 8, "batch_size": 8, '
        '"num_mean_box_examples": 16, "num_render": 2}',
        "--gin.transfer.make_optimizer.warmup_steps=2",
        "--gin.transfer.make_optimizer.lr=3e-3",
        "--gin.transfer.pretrain.log_every=1",
        "--gin.transfer.pretrain.progress=False",
        "--gin.transfer.pretrain.tensorboard=False",
        *extra,
    ]  # fmt: skip


ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_entry_point(model_dir, *extra):
    cmd = _entry_point_cmd(model_dir, *extra)
    res = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return [json.loads(line) for line in open(os.path.join(model_dir, "metrics.jsonl"))]


def test_entry_point_runs_and_loss_falls_on_fixed_batch(tmp_path):
    model_dir = tmp_path / "run"
    metrics = _run_entry_point(
        model_dir, "--gin.TRAIN_STEPS=30", "--gin.transfer.pretrain.fixed_batch=True"
    )
    assert sorted(os.listdir(model_dir / "checkpoints")) == ["30"]
    for name in ("config.gin", "model_config.json"):
        assert (model_dir / name).exists()
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 30
    assert losses[-1] < 0.75 * losses[0], losses  # 8 images, cosine to 0 over 30 steps
    final = metrics[-1]
    for key in ("val_loss_cap", "val_loss_aref", "val_loss_gcap", "aref_acc@0.5",
                "aref_acc@0.5_whole_image", "aref_acc@0.5_mean_box"):  # fmt: skip
        assert key in final
    assert (model_dir / "samples" / "step_000030.png").exists()

    # Export the encoder; load it back through bv_npz into a ViT; outputs equal.
    from checkpoints import bv_npz, export_encoder
    from locca.models import vit

    out = tmp_path / "enc.npz"
    side = export_encoder.export_encoder(str(model_dir), str(out))
    assert side["source"]["step"] == 30 and side["resolution"] == 32
    side2 = json.load(open(tmp_path / "enc.json"))
    cfg = {k: v for k, v in side2["vit_config"].items()}
    model = vit.Model(**{**cfg, "num_classes": None})
    image = jax.random.uniform(jax.random.PRNGKey(0), (2, 32, 32, 3), minval=-1, maxval=1)
    init = model.init(jax.random.PRNGKey(1), image)["params"]
    loaded = bv_npz.load_vit_params(init, str(out), cfg)
    params, step = export_encoder.read_params(str(model_dir))
    assert step == 30
    _, a = model.apply({"params": loaded}, image)
    _, b = model.apply({"params": params["encoder"]}, image)
    np.testing.assert_array_equal(np.asarray(a["encoded"]), np.asarray(b["encoded"]))
    flat = bv_npz.flatten(bv_npz.load_npz(str(out)))
    assert "Transformer/encoder_norm/scale" in flat and "embedding/kernel" in flat
    with pytest.raises(FileNotFoundError, match="no step 7"):
        export_encoder.read_params(str(model_dir), 7)


def test_sigkill_then_resume_is_bitwise(tmp_path):
    """python -m transfer.pretrain killed with SIGKILL after its first checkpoint, then
    started again with the same flags, ends with the parameters of an uninterrupted
    run bit for bit: the trainer state, the step's random keys (dropout, parallel
    prediction) and the data stream all resume at the checkpoint's step."""
    from checkpoints import export_encoder

    steps = 24
    flags = [f"--gin.TRAIN_STEPS={steps}", "--gin.transfer.pretrain.checkpoint_every=4",
             "--gin.transfer.pretrain.evaluate=False"]  # fmt: skip
    _run_entry_point(tmp_path / "reference", *flags)
    model_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        _entry_point_cmd(model_dir, *flags), cwd=REPO, env=ENV,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    killed_at = sigkill_after_checkpoint(proc, model_dir)
    assert killed_at < steps, f"killed too late (step {killed_at})"
    _run_entry_point(model_dir, *flags)
    got, step = export_encoder.read_params(str(model_dir))
    want, ref_step = export_encoder.read_params(str(tmp_path / "reference"))
    assert step == ref_step == steps
    flat_got = jax.tree_util.tree_flatten_with_path(got)[0]
    flat_want = jax.tree_util.tree_flatten_with_path(want)[0]
    assert [p for p, _ in flat_got] == [p for p, _ in flat_want]
    for (path, a), (_, b) in zip(flat_got, flat_want):
        assert np.array_equal(a, b), f"{jax.tree_util.keystr(path)} differs after resume"


def _resolve(v):
    """Evaluates gin macro references (also inside dicts/tuples)."""
    import gin

    if isinstance(v, gin.config.ConfigurableReference):
        return _resolve(v.scoped_configurable_fn())
    if isinstance(v, dict):
        return {k: _resolve(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_resolve(x) for x in v)
    return v


@pytest.mark.parametrize(
    "name,enc_params,dec_layers,tasks,p",
    [
        ("locca_l14", 303_176_704, 12, ("cap", "aref", "gcap"), 0.5),
        ("cappa_b16", None, 6, ("cap",), 0.75),
        ("cap_tiny", None, 2, ("cap",), 0.0),
    ],
)
def test_gin_configs_build(name, enc_params, dec_layers, tasks, p):
    """The gin files parse; the model they describe builds (shapes only)."""
    import gin

    gin.clear_config()
    try:
        pretrain.parse_gin([f"pretrain/{name}.gin"], ["MODEL_DIR = '/nonexistent'"])

        def q(name):
            return _resolve(gin.query_parameter(name))

        enc = q("transfer.pretrain.encoder_config")
        assert tuple(q("transfer.pretrain.tasks")) == tasks
        assert q("transfer.pretrain.parallel_prob") == p
        vocab = q("transfer.pretrain.vocab_size") or 2028
        size = q("transfer.pretrain.image_size")
        lengths = q("transfer.pretrain.task_feature_lengths")
        if "tiny" not in name:
            assert (size, vocab, q("%BATCH_SIZE")) == (224, 32000, 8192)
            assert max(lengths.values()) == 64
            assert q("transfer.make_optimizer.name") == "adafactor"
            assert q("transfer.make_optimizer.warmup_steps") == 10000
            assert q("transfer.make_optimizer.beta2_cap") == 0.999
    finally:
        gin.clear_config()
    enc = dict(enc)
    if enc.get("patch_size"):
        enc["patch_size"] = (enc["patch_size"],) * 2
    n = max(lengths.values())
    model = locca.build_model(vocab_size=vocab, encoder_config=enc, max_len=n)
    shapes = jax.eval_shape(
        lambda r: locca.init_params(model, r, image_size=size, text_len=n), jax.random.PRNGKey(0)
    )
    if enc_params is not None:
        assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["encoder"])) == enc_params
    assert len([k for k in shapes["decoder"] if k.startswith("encoderblock_")]) == dec_layers


def test_unshuffled_dataset_is_deterministic(small_task):
    """Held-out examples (and their sampled regions) are the same in every run."""

    def first():
        ds = pretrain.make_dataset(
            small_task, split="validation", task_feature_lengths=LENGTHS, batch_size=8,
            image_size=32, shuffle=False, num_epochs=1,
        )  # fmt: skip
        return next(ds.as_numpy_iterator())

    a, b = first(), first()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_patches_overlapping_matches_pixel_check():
    rng = np.random.default_rng(0)
    for _ in range(50):
        grid = int(rng.integers(2, 9))
        y = np.sort(rng.uniform(0, 1, 2))
        x = np.sort(rng.uniform(0, 1, 2))
        box = np.array([y[0], x[0], y[1], x[1]])
        got = pretrain_eval._patches_overlapping(box, grid).reshape(grid, grid)
        # Cell by cell: a cell overlaps when both of its intervals meet the box's with
        # positive length.
        want = np.zeros((grid, grid), bool)
        for i in range(grid):
            for j in range(grid):
                dy = min(box[2], (i + 1) / grid) - max(box[0], i / grid)
                dx = min(box[3], (j + 1) / grid) - max(box[1], j / grid)
                want[i, j] = dy > 0 and dx > 0
        np.testing.assert_array_equal(got, want)


def test_box_token_probe_uniform_attention_and_zero_head():
    """Probe invariants: with the cross-attention queries zeroed the attention is uniform,
    so its mass on the box equals the box's patch fraction; with the zero-initialised head
    no location token is ever the arg-max (teacher-forced accuracy 0)."""
    from tasks import pretrain_tasks

    task = pretrain_tasks.make_shapes_pretrain_task(
        "shapes_pretrain_test_loc32", resolution=32, num_train=16, num_validation=8,
        num_test=8, box_encoding="loc", num_bins=32,
    )  # fmt: skip
    model = locca.build_model(
        vocab_size=task.output_features["cap"].vocabulary.vocab_size,
        encoder_config=dict(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=(8, 8)),
        max_len=max(LENGTHS.values()),
    )
    params = locca.init_params(model, jax.random.PRNGKey(0), image_size=32, text_len=40)
    for name, block in params["decoder"].items():
        if name.startswith("encoderblock_"):
            q = block["CrossAttn"]["query"]["kernel"]
            block["CrossAttn"]["query"]["kernel"] = np.zeros_like(q)

    def dataset_fn(split):
        return pretrain.make_dataset(
            task, split=split, task_feature_lengths=LENGTHS, batch_size=None,
            image_size=32, shuffle=False, num_epochs=1,
        )  # fmt: skip

    ev = pretrain_eval.PretrainEvaluator(
        model=model, task=task, dataset_fn=dataset_fn, task_feature_lengths=LENGTHS,
        image_size=32, num_examples=8, batch_size=8, num_mean_box_examples=8, num_render=0,
        box_encoding="loc", num_bins=32, num_probe=8,
    )  # fmt: skip
    m = ev.box_token_probe(params)
    codec = BoxCodec("loc", 32)
    fractions = [pretrain_eval._patches_overlapping(codec.decode(codec.encode(g)), 4).mean()
                 for g in ev.aref_gt[:8]]  # fmt: skip
    assert m["aref_xattn_in_box_uniform"] == pytest.approx(np.mean(fractions))
    for layer in range(model.decoder.depth):
        assert m[f"aref_xattn_in_box_l{layer}"] == pytest.approx(np.mean(fractions), abs=1e-5)
        assert m[f"aref_xattn_in_box_max_l{layer}"] == pytest.approx(np.mean(fractions), abs=1e-5)
    for k in ("ymin", "xmin", "ymax", "xmax"):
        assert m[f"aref_tf_acc_{k}"] == 0.0
    # Split by object count: every held-out example lands in exactly one group.
    full = ev(0, params)
    counts = [v for k, v in full.items() if k.startswith("aref_count_objects")]
    assert sum(counts) == 8
    # ... and the groups' baselines, weighted by their sizes, are the overall ones.
    groups = [k[len("aref_count_objects") :] for k in full if k.startswith("aref_count_objects")]
    for base in ("largest_region", "random_region"):
        weighted = sum(
            full[f"aref_count_objects{g}"] * full[f"aref_acc@0.5_objects{g}_{base}"] for g in groups
        )
        assert weighted / 8 == pytest.approx(full[f"aref_acc@0.5_{base}"])
