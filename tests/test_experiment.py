"""Experiment runner: interrupted grids resume only their missing cells; the
table writers agree (Markdown / CSV / JSON)."""

import json
import os

import pytest

from transfer import experiment
from transfer import report as report_lib

ENCODER_GIN = """
ENCODER_CHECKPOINT = None
transfer.encoder:
  name = "{name}"
  checkpoint = %ENCODER_CHECKPOINT
  vit_config = {{"width": 16, "depth": 1, "mlp_dim": 32, "num_heads": 2,
                "patch_size": 16, "pool_type": "gap", "posemb": "learn"}}
  resolution = 32
"""

# A handful of steps on tiny models; evaluation on 4 examples.
BINDINGS = [
    "TRAIN_STEPS = 2",
    "WARMUP_STEPS = 1",
    "BATCH_SIZE = 2",
    "VOCAB_SIZE = 2304",
    "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 8}",
    "NUM_EVAL_EXAMPLES = 4",
    "EVAL_BATCH_SIZE = 4",
    "CHECKPOINT_EVERY = 0",
    "transfer.train.log_every = 1",
    "transfer.train.tensorboard = False",
    "transfer.train.progress = False",
]


class Interrupt(Exception):
    pass


@pytest.fixture()
def encoders(tmp_path):
    files = []
    for name in ("enc_a", "enc_b"):
        p = tmp_path / f"{name}.gin"
        p.write_text(ENCODER_GIN.format(name=name))
        files.append(str(p))
    return files


@pytest.fixture(autouse=True)
def _compilation_cache(tmp_path_factory):
    """Identical cells of the two encoders share compiled steps (as in the demo)."""
    import jax

    d = tmp_path_factory.getbasetemp() / "jax_cache"
    old = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(d))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    jax.config.update("jax_compilation_cache_dir", old)


def _run(exp_dir, encoders, on_cell=None):
    return experiment.run_experiment(
        experiment_dir=str(exp_dir),
        encoders=encoders,
        tasks=["shapes_tally", "shapes_vqa"],
        mode="per_task",
        bindings=BINDINGS,
        on_cell=on_cell,
    )


def _lines(path):
    with open(path) as f:
        return f.read().splitlines()


def test_interrupted_experiment_finishes_only_missing_cells(tmp_path, encoders):
    exp = tmp_path / "exp"
    seen = []

    def stop_after_first(rec):
        seen.append((rec["encoder"], rec["task"]))
        raise Interrupt

    with pytest.raises(Interrupt):
        _run(exp, encoders, on_cell=stop_after_first)
    assert seen == [("enc_a", "shapes_tally")]
    first = experiment.cell_path(str(exp), "enc_a", "shapes_tally")
    first_rec = json.loads(open(first).read())
    first_metrics = os.path.join(first_rec["model_dir"], "metrics.jsonl")
    n_lines, mtime = len(_lines(first_metrics)), os.stat(first).st_mtime_ns
    # The interrupted table already shows the finished cell, and only it.
    partial = json.loads((exp / "table.json").read_text())
    vals = {r["encoder"]: r["values"] for r in partial["rows"]}
    assert vals["enc_a"]["shapes_tally/tally_simple"] is not None
    assert vals["enc_b"]["shapes_tally/tally_simple"] is None

    out = _run(exp, encoders)
    assert out["skipped"] == [("enc_a", "shapes_tally")]
    assert out["trained"] == [
        ("enc_a", "shapes_vqa"),
        ("enc_b", "shapes_tally"),
        ("enc_b", "shapes_vqa"),
    ]
    # The recorded cell was neither retrained nor rewritten.
    assert len(_lines(first_metrics)) == n_lines
    assert os.stat(first).st_mtime_ns == mtime
    table = out["table"]
    keys = [c["key"] for c in table["columns"]]
    assert keys == [
        "shapes_tally/tally_simple",
        "shapes_tally/tally_complex",
        "shapes_vqa/vqa_accuracy",
    ]
    for row in table["rows"]:
        assert all(row["values"][k] is not None for k in keys), row
    for ext in ("md", "csv", "json", "png"):
        assert (exp / f"table.{ext}").is_file()

    # A third run has nothing to do.
    again = _run(exp, encoders)
    assert again["trained"] == [] and len(again["skipped"]) == 4
    assert again["table"] == table


def _table():
    cols = [
        dict(key="t1/cider", label="Caption CIDEr", task="t1", metric="cider", scale=1.0),
        dict(key="t2/anls", label="ST-VQA ANLS", task="t2", metric="anls", scale=100.0),
        dict(key="t3/acc@0.5", label="REC Acc@0.5", task="t3", metric="acc@0.5", scale=1.0),
    ]
    cells = {
        ("a", "t1"): {"cider": 12.3456, "cider_low": 10.0, "cider_high": 14.6912},
        ("a", "t2"): {"anls": 0.123456},
        ("b", "t1"): {"cider": 0.004},
        ("b", "t2"): {"anls": 1.0},
        ("b", "t3"): {"acc@0.5": 87.5, "acc@0.5_low": 80.25, "acc@0.5_high": 92.5},
    }
    return report_lib.make_table("T", ["a", "b"], cols, cells)


def test_table_writers_agree(tmp_path):
    table = _table()
    paths = report_lib.write_table(table, str(tmp_path / "table"))
    md = report_lib.read_markdown(open(paths["md"]).read().split("\n", 2)[2])
    csv = report_lib.read_csv(open(paths["csv"]).read())
    js = json.loads(open(paths["json"]).read())
    from_json = {r["encoder"]: [r["values"][c["key"]] for c in js["columns"]] for r in js["rows"]}
    assert md == csv == from_json
    assert from_json == {"a": [12.35, 12.35, None], "b": [0.0, 100.0, 87.5]}
    # 95% intervals (scaled and rounded like the values) where the metric gave one
    assert [r["intervals"] for r in js["rows"]] == [
        {"t1/cider": [10.0, 14.69]},
        {"t3/acc@0.5": [80.25, 92.5]},
    ]
    md_text = open(paths["md"]).read()
    assert "| a | 12.35 [10.00, 14.69] | 12.35 | - |" in md_text
    assert "| b | 0.00 | 100.00 | 87.50 [80.25, 92.50] |" in md_text
    # Headers carry the same labels in the same order.
    header = open(paths["csv"]).readline().strip().split(",")
    assert header[1:] == [c["label"] for c in js["columns"]]
    assert report_lib.write_bar_chart(js, str(tmp_path / "t.png"))


def test_default_columns_and_bad_inputs(tmp_path, encoders):
    cols = report_lib.default_columns(
        "shapes_tally",
        {"tally_accuracy": 1, "tally_complex": 3, "tally_simple": 2, "eval_seconds": 4},
    )
    assert [c["metric"] for c in cols] == ["tally_simple", "tally_complex"]
    cols = report_lib.default_columns("rec_protocol:shapes_refexp", {"test/acc@0.5": 50.0})
    assert cols[0]["key"] == "rec_protocol:shapes_refexp/test/acc@0.5"
    # Splits in a canonical order, whatever the order of the metric keys (a cell read
    # back from JSON vs one just computed): validation before test, unknown ones last.
    fresh = {"validation/acc@0.5": 1, "test/acc@0.5": 2, "extra/acc@0.5": 3}
    for metrics in (fresh, dict(sorted(fresh.items())), dict(reversed(fresh.items()))):
        cols = report_lib.default_columns("rec_protocol:shapes_refexp", metrics)
        assert [c["metric"] for c in cols] == [
            "validation/acc@0.5",
            "test/acc@0.5",
            "extra/acc@0.5",
        ]
    with pytest.raises(ValueError, match="mode"):
        experiment.run_experiment(
            experiment_dir=str(tmp_path), encoders=encoders, tasks=["x"], mode="bogus"
        )
    with pytest.raises(FileNotFoundError, match="nope.gin"):
        experiment.run_experiment(experiment_dir=str(tmp_path), encoders=["nope.gin"], tasks=["x"])
    with pytest.raises(ValueError, match="unknown encoders"):
        experiment.run_experiment(
            experiment_dir=str(tmp_path),
            encoders=encoders,
            tasks=["x"],
            encoder_bindings={"enc_c": []},
        )


def test_finetune_config_per_task_cells():
    """A per-task cell: its run folder, the gin files in order (base, encoder, task file,
    eval) and the bindings in the order the fingerprint hashes them."""
    kw = dict(
        mode="per_task",
        mixture=None,
        base_gin_files=["runs/finetune.gin"],
        eval_gin_files=["experiments/cell_eval.gin"],
        bindings=["TRAIN_STEPS = 2", "ENCODER_CHECKPOINT = 'e.npz'"],
        task_bindings={"shapes_vqa": ["LABEL_SMOOTHING = 0.1"]},
    )
    model_dir, files, b = experiment._finetune_config(
        "exp", "enc", "encoders/enc.gin", ["shapes_vqa"], **kw
    )
    assert model_dir == os.path.join("exp", experiment.RUNS_DIR, "enc", "shapes_vqa")
    assert files == ["runs/finetune.gin", "encoders/enc.gin", "experiments/cell_eval.gin"]
    assert b == [
        f"MODEL_DIR = {model_dir!r}",
        "MIXTURE_OR_TASK_NAME = 'shapes_vqa'",
        "EVAL_EVERY = 0",
        "TRAIN_STEPS = 2",
        "ENCODER_CHECKPOINT = 'e.npz'",
        "LABEL_SMOOTHING = 0.1",
    ]
    # A task gin file binds the task itself: it joins the files, no MIXTURE binding.
    _, files, b = experiment._finetune_config(
        "exp", "enc", "encoders/enc.gin", ["tasks/shapes_tally.gin"], **kw
    )
    assert files[2] == "tasks/shapes_tally.gin" and not any("MIXTURE" in x for x in b)
