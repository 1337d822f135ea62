"""Learning-rate schedules as multipliers of the peak learning rate.

Every schedule is a function ``step -> multiplier`` (float32 scalar, jit-able)
where ``step`` is the number of optimiser updates already applied (0 for the
first update). The learning rate of an update is ``peak_lr * multiplier``.
Warmup is linear, ``min(1, step / warmup_steps)`` (big_vision convention:
the first update, step 0, has a multiplier of 0).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

Schedule = Callable[[jnp.ndarray | int], jnp.ndarray]

SCHEDULES = ("constant", "cosine", "linear", "rsqrt")


def make_schedule(
    schedule: str = "cosine",
    *,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    min_multiplier: float = 0.0,
    timescale: int = 10_000,
    cooldown_steps: int = 0,
) -> Schedule:
    """Returns ``step -> multiplier`` in [0, 1].

    Args:
      schedule: "constant", "cosine" (half cosine from 1 to ``min_multiplier``
        between ``warmup_steps`` and ``total_steps``), "linear" (linear decay to
        ``min_multiplier`` at ``total_steps``) or "rsqrt" (``1/sqrt`` decay with
        ``timescale`` after warmup: ``sqrt(timescale / (step - warmup + timescale))``).
      warmup_steps: linear warmup length in updates.
      total_steps: the last update index + 1; required by cosine and linear
        (and by a cooldown).
      min_multiplier: the end value of cosine/linear decays.
      timescale: rsqrt decay timescale in updates.
      cooldown_steps: linear cooldown to 0 over the last ``cooldown_steps``
        updates (any schedule; big_vision style).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if schedule in ("cosine", "linear") or cooldown_steps:
        if total_steps is None or total_steps <= warmup_steps:
            raise ValueError(
                f"schedule {schedule!r} needs total_steps > warmup_steps "
                f"(got total_steps={total_steps}, warmup_steps={warmup_steps})"
            )

    def fn(step):
        step = jnp.asarray(step, jnp.float32)
        if schedule == "constant":
            mult = jnp.ones_like(step)
        elif schedule == "rsqrt":
            mult = jnp.sqrt(timescale / (jnp.maximum(step - warmup_steps, 0.0) + timescale))
        else:
            frac = (step - warmup_steps) / float(total_steps - warmup_steps)
            frac = jnp.clip(frac, 0.0, 1.0)
            if schedule == "cosine":
                decay = 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
            else:
                decay = 1.0 - frac
            mult = min_multiplier + (1.0 - min_multiplier) * decay
        if warmup_steps:
            mult = mult * jnp.minimum(1.0, step / warmup_steps)
        if cooldown_steps:
            mult = mult * jnp.clip((total_steps - step) / cooldown_steps, 0.0, 1.0)
        return mult

    return fn
