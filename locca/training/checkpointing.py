"""Orbax checkpoints of the train state.

Layout: ``model_dir/checkpoints/<step>/state`` (orbax ``CheckpointManager``,
atomic: a step directory appears only when complete; keeps the newest
``keep`` steps). A checkpoint holds ``{step, params, opt_state, rng}`` only.
Frozen parameters are not saved: they come from their own checkpoint (e.g. the
encoder's npz) and the caller must pass the same ones when resuming.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from locca.training.train_state import TrainState


class Checkpointer:
    """Saves/restores :class:`TrainState` under ``model_dir/checkpoints``."""

    def __init__(self, model_dir: str, *, keep: int | None = 3, async_save: bool = True):
        if "://" not in str(model_dir):  # local path; keep gs://... URLs as they are
            model_dir = os.path.abspath(model_dir)
        self.directory = os.path.join(str(model_dir), "checkpoints")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=1,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state",)
        )

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
            restored = self._manager.restore(
                int(step),
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state.to_dict())),
            )
        except Exception as e:  # orbax errors do not say which run or what was expected
            raise ValueError(
                f"cannot restore {self.directory}/{step}: the checkpoint does not match the "
                f"trainable params / optimiser of this run ("
                f"{len(jax.tree.leaves(abstract_state.params))} trainable arrays): {e}"
            ) from e
        return TrainState.from_dict(restored["state"])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
