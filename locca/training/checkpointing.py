"""Orbax checkpoints of the train state.

Layout: ``model_dir/checkpoints/<step>/state`` (orbax ``CheckpointManager``,
atomic: a step directory appears only when complete; keeps the newest
``keep`` steps). A checkpoint holds ``{step, params, opt_state, rng}`` only.
Frozen parameters are not saved: they come from their own checkpoint (e.g. the
encoder's npz) and the caller must pass the same ones when resuming.

Faults (docs: issue 12):
* a kill during a write leaves only ``<step>.orbax-checkpoint-tmp*`` (removed on
  the next start); the previous step stays the latest and restorable;
* :meth:`Checkpointer.restore_latest` detects an unreadable (corrupted,
  truncated) latest step, warns, moves it aside to ``<step>.corrupt-<time>``
  and falls back to the previous step; with no readable step it stops with an
  error naming each failure (and moves nothing). A checkpoint of another
  model (structure / shapes differ) is never "corrupt": that is an error;
* ``lock=True`` (the trainer) holds ``model_dir/checkpoints.lock`` (an
  ``flock`` plus the owner's pid/host/time): a second run on the same
  model_dir refuses with a message naming the owner; a lock left by a dead
  process is free again (the kernel drops an flock with its process).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

import jax
import orbax.checkpoint as ocp

from locca.training.train_state import TrainState

log = logging.getLogger(__name__)

LOCK_FILE = "checkpoints.lock"


class RunLockedError(RuntimeError):
    """Another live run holds this model_dir."""


class RunLock:
    """An exclusive, crash-safe lock on ``model_dir`` (local filesystems).

    ``fcntl.flock`` on ``model_dir/checkpoints.lock``: held while the process
    lives, released by the kernel when it dies (no stale lock after SIGKILL).
    The file records ``{pid, host, started}`` of the owner for the error
    message of a second run.
    """

    def __init__(self, model_dir: str):
        import fcntl

        os.makedirs(model_dir, exist_ok=True)
        self.path = os.path.join(model_dir, LOCK_FILE)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = self._owner()
            os.close(self._fd)
            self._fd = None
            raise RunLockedError(
                f"{model_dir} is in use by another run ({owner}; lock file {self.path}): "
                "two runs on one MODEL_DIR would overwrite each other's checkpoints; "
                "wait for it to finish, stop it, or use another MODEL_DIR"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(info).encode(), 0)

    def _owner(self) -> str:
        try:
            with open(self.path) as f:
                info = json.load(f)
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
            return f"pid {info['pid']} on {info['host']}, started {when}"
        except (OSError, ValueError, KeyError, TypeError):
            return "owner unknown"

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _tree_signature(tree) -> dict[str, tuple]:
    """{path: shape} of a pytree of arrays / ShapeDtypeStructs / orbax metadata."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): tuple(getattr(v, "shape", ()) or ()) for p, v in flat}


class Checkpointer:
    """Saves/restores :class:`TrainState` under ``model_dir/checkpoints``."""

    def __init__(
        self,
        model_dir: str,
        *,
        keep: int | None = 3,
        async_save: bool = True,
        lock: bool = False,
    ):
        local = "://" not in str(model_dir)
        if local:  # local path; keep gs://... URLs as they are
            model_dir = os.path.abspath(model_dir)
        self.directory = os.path.join(str(model_dir), "checkpoints")
        # Before the manager (which removes unfinished temporary directories:
        # they may be another live run's write in progress).
        self._lock = (
            RunLock(str(model_dir)) if lock and local and jax.process_index() == 0 else None
        )
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=1,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        try:
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=("state",)
            )
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            raise

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: TrainState) -> None:
        """Starts saving (async); the step directory appears when complete."""
        if step in self._manager.all_steps():
            return
        self._manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state.to_dict())),
            force=True,
        )

    def restore(self, step: int, abstract_state: TrainState) -> TrainState:
        """Restores ``step`` onto the shapes/dtypes/shardings of
        ``abstract_state`` (a TrainState of ``jax.ShapeDtypeStruct`` with
        ``sharding``)."""
        try:
            return self._read(step, abstract_state)
        except Exception as e:  # orbax errors do not say which run or what was expected
            raise ValueError(
                f"cannot restore {self.directory}/{step}: the checkpoint does not match the "
                f"trainable params / optimiser of this run ("
                f"{len(jax.tree.leaves(abstract_state.params))} trainable arrays): {e}"
            ) from e

    def _read(self, step: int, abstract_state: TrainState) -> TrainState:
        restored = self._manager.restore(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state.to_dict())),
        )
        return TrainState.from_dict(restored["state"])

    def _mismatch(self, step: int, abstract_state: TrainState) -> str | None:
        """How ``step``'s saved params / shapes differ from ``abstract_state``
        (None: they agree). Raises if the metadata cannot be read."""
        absl_log = logging.getLogger("absl")
        level = absl_log.level
        absl_log.setLevel(logging.ERROR)  # "metadata file does not exist" chatter
        try:
            with ocp.StandardCheckpointer() as c:
                meta = c.metadata(os.path.join(self.directory, str(int(step)), "state"))
        finally:
            absl_log.setLevel(level)
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)
        if not isinstance(tree, dict) or "params" not in tree:
            raise ValueError(f"no params in the checkpoint metadata ({type(tree).__name__})")
        want = abstract_state.to_dict()
        got_p, want_p = _tree_signature(tree["params"]), _tree_signature(want["params"])
        parts = []
        missing, extra = sorted(set(want_p) - set(got_p)), sorted(set(got_p) - set(want_p))
        if missing:
            parts.append(f"params missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"unexpected params {extra[:3]}{'...' if len(extra) > 3 else ''}")
        shapes = [
            f"{k}: saved {got_p[k]}, expected {want_p[k]}"
            for k in want_p
            if k in got_p and got_p[k] != want_p[k]
        ]
        if shapes:
            parts.append(f"param shapes differ ({'; '.join(shapes[:3])})")
        if not parts:
            got_all = sorted(_tree_signature(tree).values())
            want_all = sorted(_tree_signature(want).values())
            if got_all != want_all:
                parts.append(
                    f"optimiser state differs ({len(got_all)} saved arrays, "
                    f"{len(want_all)} expected)"
                )
        return ", ".join(parts) or None

    def restore_latest(self, abstract_state: TrainState) -> TrainState | None:
        """The newest readable checkpoint (None when there is none).

        An unreadable newer step (corrupted, truncated) is reported, moved
        aside (``<step>.corrupt-<time>``, nothing deleted) once an older
        readable one is found, and the older one is restored. No readable
        step: ValueError naming each failure (nothing moved). A step saved by
        another model (structure/shapes differ from ``abstract_state``):
        ValueError, nothing moved.
        """
        steps = sorted(self.all_steps(), reverse=True)
        failures = []
        for step in steps:
            path = os.path.join(self.directory, str(step))
            try:
                mismatch = self._mismatch(step, abstract_state)
            except Exception as e:  # unreadable metadata: a damaged checkpoint
                failures.append((step, f"metadata unreadable: {type(e).__name__}: {e}"))
                log.warning("checkpoint %s is unreadable (%s)", path, failures[-1][1])
                continue
            if mismatch is not None:
                raise ValueError(
                    f"cannot restore {path}: the checkpoint does not match the trainable "
                    f"params / optimiser of this run ({mismatch}); resume with the "
                    "configuration that wrote it, or use another MODEL_DIR"
                )
            try:  # the metadata matches this run, so a failure here is damaged array data
                state = self._read(step, abstract_state)
            except Exception as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                failures.append(
                    (
                        step,
                        "array data unreadable (a truncated or corrupted file under "
                        f"{path}/state): {type(e).__name__}: {first[:300]}",
                    )
                )
                log.warning("checkpoint %s is unreadable (%s)", path, failures[-1][1])
                continue
            if failures:
                self._set_aside([s for s, _ in failures])
                log.warning(
                    "resuming from %s: newer checkpoint(s) %s were unreadable and moved aside",
                    path,
                    [s for s, _ in failures],
                )
            return state
        if failures:
            raise ValueError(
                f"no readable checkpoint in {self.directory}: "
                + "; ".join(f"step {s}: {why}" for s, why in failures)
                + " (nothing was changed; move the damaged step folders away to start "
                "from the previous one, or use another MODEL_DIR)"
            )
        return None

    def _set_aside(self, steps) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for step in steps:
            src = os.path.join(self.directory, str(step))
            dst = f"{src}.corrupt-{stamp}"
            os.rename(src, dst)
            log.warning("moved unreadable checkpoint %s to %s", src, dst)
        self._manager.reload()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        try:
            self._manager.wait_until_finished()
            self._manager.close()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None
