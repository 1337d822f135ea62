"""Multi-host training on 2 CPU processes (jax.distributed, gloo) equals a 1-process run.

Two worker processes (tests/_multihost_worker.py) form a jax.distributed
cluster on localhost and run a tiny transfer fine-tune and a tiny pretraining
run through the real entry functions; a third process runs the same on its
own with the same global batch and ``num_shards=2`` (the data stream of two
hosts). Checked: each process reads its own half of every global batch (its
own data shard: no example is read by both), every training example is read
exactly once per epoch (transfer task: no shuffle buffer, so epochs are
sharp), the global batches equal the 1-process run's, and so do the loss
trajectories and the final parameters (float tolerance: the 2-process gradient
is an all-reduce of two partial sums).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import _multihost_worker as worker  # noqa: E402

PER_PROCESS = worker.BATCH_SIZE // 2
EPOCH_STEPS = worker.NUM_TRAIN // worker.BATCH_SIZE


# ---------------------------------------------------------------------------
# The pipeline alone, hosts simulated in one process (fast).


def _ids_fn(shard_index, num_shards):
    """Shard j of V: example ids j, j + V, j + 2V, ... (infinite)."""
    import tensorflow as tf

    return tf.data.Dataset.range(shard_index, 1 << 40, num_shards).map(lambda i: {"id": i})


def _take(batches, start, n):
    it = batches(start)
    return [next(it)["id"] for _ in range(n)]


def _make(batch_size, num_shards, process_index, process_count):
    from locca.data import pipeline

    return pipeline.make_batches(
        _ids_fn, batch_size=batch_size, num_shards=num_shards,
        process_index=process_index, process_count=process_count,
    )  # fmt: skip


@pytest.mark.parametrize("num_processes", [1, 2, 4])
def test_pipeline_global_batch_independent_of_process_count(num_processes):
    ref = _take(_make(8, 4, 0, 1), 0, 5)
    per = [_take(_make(8, 4, i, num_processes), 0, 5) for i in range(num_processes)]
    for s in range(5):
        assert all(p[s].shape == (8 // num_processes,) for p in per)
        np.testing.assert_array_equal(np.concatenate([p[s] for p in per]), ref[s])
    # Shard j fills rows [2j, 2j + 2) of every batch; 5 batches read ids 0..39 once.
    np.testing.assert_array_equal(ref[0], [0, 4, 1, 5, 2, 6, 3, 7])
    np.testing.assert_array_equal(np.sort(np.concatenate(ref)), np.arange(40))
    last = num_processes - 1  # resume: batches(3) starts at batch 3
    np.testing.assert_array_equal(_take(_make(8, 4, last, num_processes), 3, 2), per[last][3:5])


def test_pipeline_default_one_shard_per_process_and_errors():
    from locca.data import pipeline

    b = _take(pipeline.make_batches(_ids_fn, batch_size=4, process_index=1, process_count=2), 0, 2)
    np.testing.assert_array_equal(b, [[1, 3], [5, 7]])  # shard 1 of 2
    with pytest.raises(ValueError, match="batch_size 6 is not divisible by the 4 processes"):
        pipeline.make_batches(_ids_fn, batch_size=6, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="num_shards 3 is not a positive multiple of the 2"):
        pipeline.make_batches(_ids_fn, batch_size=6, num_shards=3, process_index=0,
                              process_count=2)  # fmt: skip
    with pytest.raises(ValueError, match="batch_size 4 is not divisible by num_shards 8"):
        pipeline.make_batches(_ids_fn, batch_size=4, num_shards=8, process_index=0,
                              process_count=2)  # fmt: skip
    with pytest.raises(ValueError, match="start_step must be >= 0"):
        pipeline.make_batches(_ids_fn, batch_size=4, process_index=0, process_count=1)(-1)


# ---------------------------------------------------------------------------
# Two real processes.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"  # compile time dominates; same in all runs
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs the 3 worker processes (~3.5 CPU-minutes, mostly XLA compiles: slow tests)."""
    root = tmp_path_factory.mktemp("multihost")
    multi, single = root / "two_processes", root / "one_process"
    port = _free_port()
    script = str(REPO / "tests" / "_multihost_worker.py")
    cmds = [
        [sys.executable, script, str(multi), f"--process_id={i}", "--num_processes=2",
         f"--port={port}"]
        for i in range(2)
    ] + [[sys.executable, script, str(single), "--num_shards=2"]]  # fmt: skip
    procs = [
        subprocess.Popen(c, env=_env(), cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for c in cmds
    ]  # fmt: skip
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=600)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for c, p, out in zip(cmds, procs, outs):
        assert p.returncode == 0, f"{c[2:]} failed ({p.returncode}):\n{out[-5000:]}"
    return multi, single


def _rows(run_dir, job, process_id):
    return json.loads((run_dir / job / f"rows_{process_id}.json").read_text())


def _losses(run_dir, job):
    lines = [json.loads(x) for x in (run_dir / job / "metrics.jsonl").read_text().splitlines()]
    return np.array([x["loss"] for x in lines if "loss" in x])


def _params(run_dir, job):
    with np.load(run_dir / job / "params.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _check_shards_and_global_batches(multi, single, job, steps):
    p0, p1, ref = _rows(multi, job, 0), _rows(multi, job, 1), _rows(single, job, 0)
    assert len(p0) == len(p1) == len(ref) == steps
    for s in range(steps):
        assert len(p0[s]) == len(p1[s]) == PER_PROCESS, (
            f"step {s}: processes read {len(p0[s])} and {len(p1[s])} rows; expected "
            f"global batch {worker.BATCH_SIZE} / 2 processes = {PER_PROCESS}"
        )
        assert p0[s] + p1[s] == ref[s], f"step {s}: global batch differs from the 1-process run"
    seen0 = {r for b in p0 for r in b}
    seen1 = {r for b in p1 for r in b}
    assert not seen0 & seen1, f"{len(seen0 & seen1)} examples read by both processes"


def _check_training_equal(multi, single, job, steps):
    want, got = _losses(single, job), _losses(multi, job)
    assert len(want) == len(got) == steps
    np.testing.assert_allclose(got, want, rtol=2e-5, err_msg=f"{job}: loss trajectory")
    want, got = _params(single, job), _params(multi, job)
    assert sorted(got) == sorted(want)
    # atol 5e-5: the 2-process gradient is an all-reduce of two partial sums, and Adam
    # divides a tiny gradient (a rarely seen token's embedding row) by its own size, so
    # float noise can reach ~1e-5 after a few steps (seen: 1.4e-5 on 1 of 73,120 entries).
    # A data or sharding error moves parameters by a whole step (lr 3e-3), 60x more.
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=5e-5, err_msg=f"{job}: {k}")


@pytest.mark.slow
def test_transfer_each_example_read_once_per_epoch_across_processes(runs):
    from locca.data.shapes import ShapesWorld

    multi, _ = runs
    world = ShapesWorld(resolution=worker.RESOLUTION, seed=0)
    train_ids = sorted(worker.row_id(world.scene(i).image) for i in range(worker.NUM_TRAIN))
    assert len(set(train_ids)) == worker.NUM_TRAIN
    p0, p1 = _rows(multi, "transfer", 0), _rows(multi, "transfer", 1)
    for e in range(worker.TRANSFER_STEPS // EPOCH_STEPS):
        steps = range(e * EPOCH_STEPS, (e + 1) * EPOCH_STEPS)
        read = sorted(r for s in steps for r in p0[s] + p1[s])
        assert read == train_ids, f"epoch {e}: not every training example read exactly once"


@pytest.mark.slow
def test_transfer_shards_and_global_batches(runs):
    _check_shards_and_global_batches(*runs, "transfer", worker.TRANSFER_STEPS)


@pytest.mark.slow
def test_transfer_training_equals_one_process(runs):
    _check_training_equal(*runs, "transfer", worker.TRANSFER_STEPS)


@pytest.mark.slow
def test_pretrain_shards_and_global_batches(runs):
    _check_shards_and_global_batches(*runs, "pretrain", worker.PRETRAIN_STEPS)


@pytest.mark.slow
def test_pretrain_training_equals_one_process(runs):
    _check_training_equal(*runs, "pretrain", worker.PRETRAIN_STEPS)
