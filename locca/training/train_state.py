"""The train state: what a checkpoint holds.

``TrainState(step, params, opt_state, rng)``: ``step`` is the number of
optimiser updates applied (int32 scalar), ``params`` the trainable float32
master weights, ``opt_state`` the optax state for exactly those params, and
``rng`` the run's base PRNG key (raw uint32[2]); the key of update ``s``
(0-based) is ``fold_in(rng, s)``, so it does not depend on resumption.
Frozen parameters are *not* part of the train state.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array

    def to_dict(self) -> dict:
        return {
            "step": self.step,
            "params": self.params,
            "opt_state": self.opt_state,
            "rng": self.rng,
        }

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        return cls(step=d["step"], params=d["params"], opt_state=d["opt_state"], rng=d["rng"])


def init_train_state(params, tx, seed: int) -> TrainState:
    """A fresh state at step 0 (jit-able: ``tx.init`` runs on ``params``)."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.PRNGKey(seed),
    )
