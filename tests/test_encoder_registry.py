"""Every encoder gin file of the registry (gin/encoders/*.gin) drives a real transfer run.

For each file the test makes a checkpoint in the format that file expects, then
fine-tunes a micro PaLI on ``shapes_vqa`` through the gin entry point, parsed as
``python -m transfer.train --gin_file=gin/runs/finetune.gin --gin_file=<encoder file>
--gin_file=gin/tasks/shapes_vqa.gin --gin.NAME=VALUE ...`` parses its flags (in-process:
``rewrite_gin_args`` -> ``gin_flags.parse_gin`` -> the ``transfer.train`` configurable; gin is
cleared between files). 3 steps of batch 4, one evaluation at the end on 4 validation
examples. Checked: finite losses, the final eval line, model_info.json, the encoder
frozen and bitwise equal to the checkpoint's arrays as the training loop hands them
to its evaluator (the same tree every train step gets), the file's preprocessing kept.

Checkpoint recipes (a new encoder file must match one, else its case fails):

* ``bv_two_tower``: big_vision SigLIP/SigLIP 2 (``ENCODER_CHECKPOINT`` ends with
  ``:img``): a two-tower npz, ``img/...`` = our ViT (the file's pool_type, so the MAP
  head is there) and ``txt/...`` arbitrary arrays beside it, loaded via ``path.npz:img``.
* ``ours``: our export format, made by ``checkpoints.export_encoder.export_encoder``
  from an orbax pretraining-style checkpoint (npz + sidecar JSON).
* ``hf_clip`` / ``hf_siglip``: tests/data/hf_{clip,siglip}_tiny converted by
  ``python -m checkpoints.hf_{clip,siglip} DIR --out X.npz``; ``vit_config = None``
  (read from the sidecar) and the tiny's resolution, the file's pixel normalisation.

Paper-scale files (width > 64 or resolution > 64) are too heavy for CPU tests: their
``transfer.encoder.vit_config`` is overridden with a shrunk config of the same family
(pool_type, posemb and options such as pre_norm/mlp_act/ln_eps kept) whose size is that
of this test's tiny checkpoint of the same pool_type (MAP: the HF SigLIP tiny, width 32,
depth 2, 4 heads, MLP 64, patch 8 at 32 px; GAP: locca_tiny, width 64, depth 4, 4 heads,
MLP 256, patch 8 at 64 px; other pool types: width 32, depth 1, 2 heads, MLP 64, patch 16
at 32 px), so that with the module's persistent XLA cache they reuse compiled programs.
Our tiny encoders run at their exact architecture and resolution.
"""

from __future__ import annotations

import json
import pathlib
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gin
from checkpoints import bv_npz, export_encoder, hf_clip, hf_siglip
from locca.models import vit
from transfer import gin_flags
from transfer import train as train_lib

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("clean_gin")]

REPO = pathlib.Path(__file__).resolve().parents[1]
ENCODER_FILES = sorted((REPO / "gin" / "encoders").glob("*.gin"))


# Recipes of the files whose checkpoint is not a big_vision two-tower ":img" npz.
RECIPES = {
    "locca_tiny": "ours",
    "cap_tiny": "ours",
    "cappa_tiny": "ours",
    "locca_l14_224": "ours",
    "clip_l14_224": "hf_clip",
    "siglip_b16_224_hf": "hf_siglip",
}
HF_TINY = {"hf_clip": "tests/data/hf_clip_tiny", "hf_siglip": "tests/data/hf_siglip_tiny"}
HF_EXPORT = {"hf_clip": hf_clip.main, "hf_siglip": hf_siglip.main}
# Paper-scale files run shrunk, per pool_type to the size of this test's tiny checkpoint of
# that family, so their runs reuse the XLA programs already compiled for it (see
# _compilation_cache; each distinct architecture costs ~15 s of compiles on 2 cores).
SHRUNK = {  # pool_type -> (ViT size, resolution)
    "map": (dict(width=32, depth=2, mlp_dim=64, num_heads=4, patch_size=8), 32),  # HF SigLIP tiny
    "gap": (dict(width=64, depth=4, mlp_dim=256, num_heads=4, patch_size=8), 64),  # locca_tiny
}
SHRUNK_OTHER = (dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=16), 32)
STEPS = 3


def _vocab_size() -> int:
    from locca.vocab import default_vocabulary

    return -(-default_vocabulary().vocab_size // 128) * 128


def _run_flags(encoder_file, model_dir):
    """The CLI flags of the run, as a user types them (a micro T5; 3 steps of batch 4)."""
    return [
        "--gin_file=gin/runs/finetune.gin",
        f"--gin_file={encoder_file}",
        "--gin_file=gin/tasks/shapes_vqa.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        *RUN_FLAGS,
    ]


RUN_FLAGS = [
    f"--gin.T5Config.vocab_size={_vocab_size()}",
    "--gin.T5Config.emb_dim=32",
    "--gin.T5Config.num_heads=2",
    "--gin.T5Config.num_encoder_layers=1",
    "--gin.T5Config.num_decoder_layers=1",
    "--gin.T5Config.head_dim=16",
    "--gin.T5Config.mlp_dim=64",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 8}",
    f"--gin.TRAIN_STEPS={STEPS}",
    "--gin.WARMUP_STEPS=1",
    "--gin.BATCH_SIZE=4",
    "--gin.CHECKPOINT_EVERY=1000",
    "--gin.EVAL_EVERY=1000",  # evaluate at the end only
    "--gin.NUM_EVAL_EXAMPLES=4",
    "--gin.transfer.train.eval_batch_size=4",
    "--gin.transfer.train.tensorboard=False",
    "--gin.transfer.train.progress=False",
    "--gin.transfer.train.log_every=1",
]


def _parse_like_cli(argv):
    """transfer.train's flag handling: --gin.X=Y rewritten, then gin_flags.parse_gin."""
    files, bindings = [], []
    for arg in gin_flags.rewrite_gin_args(argv):
        name, value = arg.split("=", 1)
        {"--gin_file": files, "--gin_bindings": bindings}[name].append(value)
    train_lib.register_configurables()
    gin_flags.parse_gin(files, bindings)


def _file_spec(path):
    """(ENCODER_CHECKPOINT, the file's own EncoderSpec without loading a checkpoint)."""
    _parse_like_cli(
        [
            "--gin_file=gin/runs/finetune.gin",
            f"--gin_file={path}",
            "--gin.MODEL_DIR='unused'",
            "--gin.MIXTURE_OR_TASK_NAME='shapes_vqa'",
        ]
    )
    ckpt = gin.query_parameter("%ENCODER_CHECKPOINT")
    gin.bind_parameter("transfer.encoder.checkpoint", None)
    spec = gin.get_configurable("transfer.encoder")()
    gin.clear_config()
    return ckpt, spec


def _recipe(stem, ckpt):
    if isinstance(ckpt, str) and ckpt.endswith(":img"):
        return "bv_two_tower"
    if stem not in RECIPES:
        pytest.fail(
            f"gin/encoders/{stem}.gin (ENCODER_CHECKPOINT={ckpt!r}) has no checkpoint recipe "
            f"in tests/test_encoder_registry.py: add it to RECIPES"
        )
    return RECIPES[stem]


def _vit_params(cfg, resolution, seed):
    """Random arrays in our ViT's parameter tree (shapes traced only; no init compile)."""
    p = cfg["patch_size"]
    model = vit.Model(**{**cfg, "patch_size": (p, p), "num_classes": None})
    x = jnp.zeros((1, resolution, resolution, 3), jnp.float32)
    shapes = bv_npz._unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"])
    rng = np.random.default_rng(seed)
    flat = {
        k: (float(k.endswith("scale")) + 0.05 * rng.normal(size=s.shape)).astype(np.float32)
        for k, s in bv_npz.flatten(shapes).items()
    }
    return bv_npz.unflatten(flat)


def _make_checkpoint(recipe, tmp, stem, cfg, resolution):
    """-> (path to bind as ENCODER_CHECKPOINT, flat {name: array} the encoder must get)."""
    seed = zlib.crc32(stem.encode()) % 2**31
    if recipe == "bv_two_tower":
        img = _vit_params(cfg, resolution, seed)
        rng = np.random.default_rng(seed + 1)
        txt = {
            "Embed_0": {"embedding": rng.normal(size=(50, 8)).astype(np.float32)},
            "head": {"kernel": rng.normal(size=(8, 4)).astype(np.float32)},
        }
        path = tmp / f"{stem}.npz"
        bv_npz.save_npz(path, {"img": img, "txt": txt})
        flat = bv_npz.load_npz_flat(path)
        assert any(k.startswith("txt/") for k in flat) and any(k.startswith("img/") for k in flat)
        if cfg["pool_type"] == "map":
            assert "img/MAPHead_0/probe" in flat
        return f"{path}:img", bv_npz.flatten(img)
    if recipe == "ours":
        import orbax.checkpoint as ocp

        run = tmp / "pretrain"
        params = {"encoder": _vit_params(cfg, resolution, seed), "decoder": {"w": np.ones(3)}}
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(run / "checkpoints" / "7" / "state", {"step": 7, "params": params})
        (run / "model_config.json").write_text(
            json.dumps({"vit_config": cfg, "image_size": resolution})
        )
        path = tmp / f"{stem}.npz"
        side = export_encoder.export_encoder(str(run), str(path))
        assert side["vit_config"] == cfg and side["source"]["step"] == 7
        return str(path), bv_npz.flatten(params["encoder"])
    path = tmp / f"{stem}.npz"
    assert HF_EXPORT[recipe]([str(REPO / HF_TINY[recipe]), "--out", str(path)]) == 0
    return str(path), bv_npz.load_npz_flat(path)


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
    """A persistent XLA cache for this module only: files of one architecture (our tiny
    encoders and shrunk locca_l14_224; the shrunk SigLIPs and the HF SigLIP tiny) compile
    the same programs, so later cases load them instead of recompiling (9 runs: ~90 s
    instead of ~210 s on 2 cores). Restored afterwards."""
    from jax._src import compilation_cache

    keys = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    old = {k: getattr(jax.config, k) for k in keys}
    new = (str(tmp_path_factory.mktemp("xla_cache")), 0.0, 0)
    for k, v in zip(keys, new, strict=True):
        jax.config.update(k, v)
    compilation_cache.reset_cache()
    yield
    for k, v in old.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()


def test_registry_is_covered():
    stems = {p.stem for p in ENCODER_FILES}
    assert set(RECIPES) <= stems, sorted(set(RECIPES) - stems)  # no stale recipes
    assert {"siglip_b16_224", "siglip2_b16_224", "locca_tiny", "clip_l14_224"} <= stems


@pytest.mark.parametrize("path", ENCODER_FILES, ids=lambda p: p.stem)
def test_transfer_run_with_encoder_file(path, tmp_path, monkeypatch):
    from transfer import eval as eval_lib

    ckpt_default, file_spec = _file_spec(path)
    recipe = _recipe(path.stem, ckpt_default)
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in file_spec.vit_config.items()}
    cfg["patch_size"] = cfg["patch_size"][0]
    resolution = file_spec.resolution
    overrides = []
    if recipe in HF_TINY:
        with open(REPO / HF_TINY[recipe] / "config.json") as f:
            resolution = json.load(f)["image_size"]
        overrides = ["--gin.transfer.encoder.vit_config=None"]
    elif cfg["width"] > 64 or resolution > 64:  # paper scale: shrunk, same family
        size, resolution = SHRUNK.get(cfg["pool_type"], SHRUNK_OTHER)
        cfg = {**cfg, **size}
        overrides = [f"--gin.transfer.encoder.vit_config={cfg!r}"]
    ckpt, want = _make_checkpoint(recipe, tmp_path, path.stem, cfg, resolution)

    # The frozen tree the training loop passes to its evaluator (= to every train step).
    seen = []
    call = eval_lib.InferenceEvaluator.__call__

    def spy(self, step, params, frozen):
        seen.append((step, set(params), jax.tree.map(np.asarray, frozen)))
        return call(self, step, params, frozen)

    monkeypatch.setattr(eval_lib.InferenceEvaluator, "__call__", spy)

    model_dir = tmp_path / "model"
    argv = _run_flags(path, model_dir)
    _parse_like_cli(
        argv
        + [
            f"--gin.ENCODER_CHECKPOINT='{ckpt}'",
            f"--gin.transfer.encoder.resolution={resolution}",
            *overrides,
        ]
    )
    spec = gin.get_configurable("transfer.encoder")()
    state = gin.get_configurable("transfer.train")()
    gin.clear_config()

    # The encoder: the file's name and pixel normalisation; architecture exact or shrunk.
    assert spec.name == file_spec.name == path.stem and spec.checkpoint == ckpt
    assert spec.preprocessing.mean == file_spec.preprocessing.mean
    assert spec.preprocessing.std == file_spec.preprocessing.std
    assert spec.resolution == resolution
    if recipe == "hf_clip":
        assert spec.preprocessing.mean == hf_clip.CLIP_MEAN
    else:
        assert spec.preprocessing.mean == spec.preprocessing.std == (0.5, 0.5, 0.5)
    keep = {k: v for k, v in file_spec.vit_config.items() if k not in SHRUNK_OTHER[0]}
    assert {k: spec.vit_config.get(k) for k in keep} == keep, (spec.vit_config, keep)
    if recipe not in HF_TINY and not overrides:
        assert spec.vit_config == file_spec.vit_config and resolution == file_spec.resolution

    # Run outputs.
    lines = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x]
    assert len(losses) == STEPS and all(np.isfinite(losses)), losses
    evals = [x for x in lines if "shapes_vqa/vqa_accuracy" in x]
    assert [x["step"] for x in evals] == [STEPS]
    preds = (model_dir / "predictions" / f"shapes_vqa_{STEPS}.jsonl").read_text().splitlines()
    assert len(preds) == 4
    info = json.loads((model_dir / "model_info.json").read_text())
    assert info["encoder"]["name"] == path.stem and info["encoder"]["checkpoint"] == ckpt
    assert info["freeze_encoder"] is True
    assert info["encoder"]["mean"] == list(file_spec.preprocessing.mean)

    # The encoder was frozen and is, bitwise, the checkpoint's arrays.
    assert int(state.step) == STEPS and "img" not in state.params
    assert len(seen) == 1 and seen[0][0] == STEPS and "img" not in seen[0][1]
    got = bv_npz.flatten(seen[0][2]["img"])
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == np.float32 and np.array_equal(got[k], v), k
