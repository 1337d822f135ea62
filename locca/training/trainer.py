"""The one trainer (pretraining and PaLI transfer): :func:`train`.

The loop: restore the latest checkpoint of ``model_dir`` (or initialise),
then for each update shard the host batch over the mesh, run the jitted step,
check the loss is finite, log, evaluate, checkpoint. Steps are counted in
optimiser updates: "step s" is the state after s updates; it consumed batch
index s - 1 of the ``batches`` stream. See docs/INTERFACES.md ("Trainer").
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
import tqdm
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from locca.training import partitioning
from locca.training.checkpointing import Checkpointer
from locca.training.step import make_train_step
from locca.training.train_state import TrainState, init_train_state
from locca.training.writers import MetricWriter

log = logging.getLogger(__name__)

Evaluator = Callable[[int, Any, Any], Mapping[str, float]]


class Trainer:
    """Sharded state initialisation and the jitted step for one model.

    Args:
      loss_fn: ``(params, frozen_params, batch, rng) -> (loss, aux dict)``.
      optimizer: an optax transformation (a ``ScheduledTransformation`` from
        ``make_optimizer`` also provides ``learning_rate_fn``).
      mesh: the device mesh (``partitioning.make_mesh``).
      param_logical_axes / frozen_logical_axes: pytrees of logical axis names
        (PartitionSpec or tuple per leaf, None or absent = replicated).
      rules: logical -> mesh axis rules.
    """

    def __init__(
        self,
        *,
        loss_fn,
        optimizer: optax.GradientTransformation,
        mesh: Mesh,
        param_logical_axes=None,
        frozen_logical_axes=None,
        rules: Sequence[tuple[str, Any]] = partitioning.DEFAULT_RULES,
        grad_accum_steps: int = 1,
        compute_dtype: str = "float32",
        learning_rate_fn: Callable | None = None,
    ):
        self.tx = optimizer
        self.mesh = mesh
        self.rules = rules
        self.param_logical_axes = param_logical_axes
        self.frozen_logical_axes = frozen_logical_axes
        self.learning_rate_fn = learning_rate_fn or getattr(optimizer, "learning_rate_fn", None)
        self._step = make_train_step(
            loss_fn,
            optimizer,
            grad_accum_steps=grad_accum_steps,
            compute_dtype=compute_dtype,
            learning_rate_fn=self.learning_rate_fn,
            mesh=mesh,
        )
        self._jit_step = None

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def state_shardings(self, params) -> TrainState:
        """NamedShardings of the TrainState for these params."""
        p_sh = partitioning.param_shardings(params, self.mesh, self.param_logical_axes, self.rules)
        abstract_opt = jax.eval_shape(self.tx.init, params)
        o_sh = partitioning.opt_state_shardings(abstract_opt, params, p_sh, self.mesh)
        rep = self.replicated()
        return TrainState(step=rep, params=p_sh, opt_state=o_sh, rng=rep)

    def abstract_state(self, params, seed: int = 0) -> TrainState:
        """TrainState of ShapeDtypeStructs carrying the target shardings."""
        shapes = jax.eval_shape(lambda p: init_train_state(p, self.tx, seed), params)
        return jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            shapes,
            self.state_shardings(params),
        )

    def init_state(self, params, seed: int) -> TrainState:
        """A fresh sharded state at step 0 (params copied bitwise)."""
        init = jax.jit(
            lambda p: init_train_state(p, self.tx, seed),
            out_shardings=self.state_shardings(params),
        )
        return init(params)

    def place_frozen(self, frozen_params):
        """Puts frozen params on the mesh (by their logical axes, else replicated)."""
        sh = partitioning.param_shardings(
            frozen_params, self.mesh, self.frozen_logical_axes, self.rules
        )
        return jax.device_put(frozen_params, sh)

    def step(self, state: TrainState, frozen_params, batch: Mapping[str, jax.Array]):
        """One update (jitted; the incoming ``state`` buffers are donated)."""
        if self._jit_step is None:
            out_sh = (jax.tree.map(lambda x: x.sharding, state), self.replicated())
            self._jit_step = jax.jit(self._step, out_shardings=out_sh, donate_argnums=(0,))
        return self._jit_step(state, frozen_params, batch)


class _Preemption:
    """SIGTERM -> a flag read at step boundaries (main thread only)."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def check(self) -> bool:
        if jax.process_count() > 1:  # every host stops at the same step
            from jax.experimental import multihost_utils

            flags = multihost_utils.process_allgather(np.asarray(self.requested))
            return bool(np.any(flags))
        return self.requested

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _mean_metrics(history: list[dict]) -> dict[str, float]:
    host = jax.device_get(history)
    out = {k: float(np.mean([h[k] for h in host])) for k in host[-1]}
    if "learning_rate" in out:  # the rate of the last update, not a mean
        out["learning_rate"] = float(host[-1]["learning_rate"])
    return out


def _boxed_to_axes(tree, axes):
    """Unboxes flax ``Partitioned`` leaves; their names are the logical axes
    unless ``axes`` is given explicitly."""
    is_boxed = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
    if not any(is_boxed(x) for x in jax.tree.leaves(tree, is_leaf=is_boxed)):
        return tree, axes
    plain, found = partitioning.logical_axes_from_boxed(tree)
    return plain, axes if axes is not None else found


def train(
    *,
    model_dir: str,
    init_params,
    loss_fn,
    optimizer: optax.GradientTransformation,
    batches: Callable[[int], Iterator[Mapping[str, np.ndarray]]],
    num_steps: int,
    frozen_params=None,
    seed: int = 0,
    grad_accum_steps: int = 1,
    checkpoint_every: int | None = 1000,
    keep_checkpoints: int | None = 3,
    log_every: int = 50,
    evaluators: Sequence[Evaluator] = (),
    eval_every: int | None = None,
    mesh: Mesh | None = None,
    mesh_shape: Mapping[str, int] | Sequence[int] | None = None,
    logical_axis_rules: Sequence[tuple[str, Any]] = partitioning.DEFAULT_RULES,
    param_logical_axes=None,
    frozen_logical_axes=None,
    compute_dtype: str = "float32",
    learning_rate_fn: Callable | None = None,
    progress: bool = True,
    tensorboard: bool = True,
    exit_on_preemption: bool = True,
    async_checkpointing: bool = True,
) -> TrainState:
    """Trains ``init_params`` for ``num_steps`` updates; resumes from ``model_dir``.

    Args:
      model_dir: checkpoints (``checkpoints/<step>``), ``metrics.jsonl`` and
        TensorBoard events go here. If it holds a checkpoint, training resumes
        from the latest one (``init_params`` then only give structure/shapes).
      init_params: trainable parameters (nested dict, float32 master weights;
        flax ``Partitioned`` boxes are unboxed and their names used as logical
        axes).
      loss_fn: ``(params, frozen_params, batch, rng) -> (loss, aux)``; loss a
        float scalar, aux a dict of float scalars (logged). Must be jit-able.
      optimizer: optax transformation (e.g. ``make_optimizer(...)``).
      batches: ``start_step -> iterator`` of host-local numpy batches (dicts of
        arrays with the per-process batch on axis 0); it must yield batch index
        ``start_step`` first, deterministically, so a resumed run is bitwise
        equal to an uninterrupted one.
      num_steps: total number of updates (including those before a resume).
      frozen_params: parameters used by the loss but never trained: no
        gradients, no optimiser state, not checkpointed (pass the same ones
        when resuming).
      seed: the base PRNG key is ``PRNGKey(seed)``; update s uses
        ``fold_in(key, s)`` (micro-batch i of it ``fold_in(that, i)``).
      grad_accum_steps: micro-batches per update (the batch axis must divide).
      checkpoint_every: save every N updates (and always at the end and on
        SIGTERM); None/0 = only then. keep_checkpoints: newest N kept.
      log_every: log (mean over the interval) every N updates and at the end.
      evaluators: ``(step, params, frozen_params) -> {name: float}``, run every
        ``eval_every`` updates (default ``checkpoint_every``) and at the end.
      mesh / mesh_shape / logical_axis_rules: the device mesh (default: all
        devices on "data") and the logical -> mesh rules.
      param_logical_axes / frozen_logical_axes: logical axis names per
        parameter (None or missing leaves: replicated).
      compute_dtype: "float32" or "bfloat16" (cast inside the step; master
        weights and optimiser state stay float32).
      learning_rate_fn: ``step -> lr`` for logging (default: the optimizer's).
      progress: tqdm bar on process 0. tensorboard: also write event files.
      exit_on_preemption: on SIGTERM, save and ``raise SystemExit(0)``; if
        False, save and return the state.

    Returns:
      The final TrainState (sharded jax arrays).

    Raises:
      FloatingPointError: a non-finite loss; names the step, the last good
        checkpoint is left intact (a state after a non-finite loss is never saved).
    """
    init_params, param_logical_axes = _boxed_to_axes(init_params, param_logical_axes)
    frozen_params, frozen_logical_axes = _boxed_to_axes(frozen_params or {}, frozen_logical_axes)
    mesh = mesh if mesh is not None else partitioning.make_mesh(mesh_shape)
    trainer = Trainer(
        loss_fn=loss_fn,
        optimizer=optimizer,
        mesh=mesh,
        param_logical_axes=param_logical_axes,
        frozen_logical_axes=frozen_logical_axes,
        rules=logical_axis_rules,
        grad_accum_steps=grad_accum_steps,
        compute_dtype=compute_dtype,
        learning_rate_fn=learning_rate_fn,
    )
    ckpt = Checkpointer(model_dir, keep=keep_checkpoints, async_save=async_checkpointing, lock=True)
    try:
        state = None
        if ckpt.latest_step() is not None:  # newest readable step (falls back past damaged ones)
            state = ckpt.restore_latest(trainer.abstract_state(init_params, seed))
        if state is None:
            state = trainer.init_state(init_params, seed)
        else:
            log.info("resuming from %s step %d", ckpt.directory, int(jax.device_get(state.step)))
        frozen = trainer.place_frozen(frozen_params)
    except BaseException:
        ckpt.close()
        raise
    loop = _Loop(
        trainer=trainer,
        ckpt=ckpt,
        writer=MetricWriter(model_dir, tensorboard=tensorboard),
        num_steps=num_steps,
        checkpoint_every=checkpoint_every or 0,
        log_every=max(1, log_every),
        evaluators=list(evaluators),
        eval_every=(eval_every if eval_every is not None else checkpoint_every) or 0,
        progress=progress,
        exit_on_preemption=exit_on_preemption,
    )
    try:
        return loop.run(state, frozen, batches)
    finally:
        loop.close()


class _Loop:
    """The host-side loop of :func:`train` (one object so ``run`` stays short)."""

    def __init__(
        self,
        *,
        trainer: Trainer,
        ckpt: Checkpointer,
        writer: MetricWriter,
        num_steps,
        checkpoint_every,
        log_every,
        evaluators,
        eval_every,
        progress,
        exit_on_preemption,
    ):
        self.trainer, self.ckpt, self.writer = trainer, ckpt, writer
        self.num_steps = num_steps
        self.checkpoint_every, self.log_every = checkpoint_every, log_every
        self.evaluators, self.eval_every = evaluators, eval_every
        self.progress = progress and jax.process_index() == 0
        self.exit_on_preemption = exit_on_preemption
        self._unchecked: list[tuple[int, jax.Array]] = []  # (step, loss) not yet checked
        self._history: list[dict] = []  # device metrics since the last log
        self._pbar = None
        self._batch_size = None  # global batch size (examples per update)
        self._closed = False

    def run(self, state: TrainState, frozen, batches) -> TrainState:
        start = int(jax.device_get(state.step))
        if start >= self.num_steps:
            log.info("step %d >= num_steps %d: nothing to train", start, self.num_steps)
            return state
        self._pbar = tqdm.tqdm(
            total=self.num_steps,
            initial=start,
            desc="train",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        it = iter(batches(start))
        self._timer = None  # (time, step) of the last timing mark
        with _Preemption() as preemption:
            for step in range(start + 1, self.num_steps + 1):
                state, metrics = self.trainer.step(state, frozen, self._next_batch(it, start, step))
                self._check_finite(keep_last=True)  # the previous step's loss, 1 step behind
                self._unchecked.append((step, metrics["loss"]))
                self._history.append(metrics)
                self._pbar.update(1)
                if self._timer is None:  # time from the end of the first (compiling) step
                    jax.block_until_ready(metrics)
                    self._timer = (time.perf_counter(), step)
                last = step == self.num_steps
                scalars = {}  # one metrics line per step: train metrics and evaluations
                if step % self.log_every == 0 or last:
                    scalars.update(self._train_metrics(step))
                if self.evaluators and ((self.eval_every and step % self.eval_every == 0) or last):
                    scalars.update(self._evaluate(step, state, frozen))
                self.writer.write_scalars(step, scalars)
                stop = preemption.check()
                if stop or last or (self.checkpoint_every and step % self.checkpoint_every == 0):
                    self._check_finite()
                    self.ckpt.save(step, state)
                if stop:
                    return self._preempted(step, state)
        self.ckpt.wait()
        return state

    def _next_batch(self, it, start, step):
        try:
            batch = next(it)
        except StopIteration:
            raise ValueError(
                f"batches({start}) ended after {step - 1 - start} batches; "
                f"{self.num_steps - start} were needed to reach num_steps={self.num_steps}"
            ) from None
        batch = partitioning.shard_batch(batch, self.trainer.mesh)
        self._batch_size = next(iter(batch.values())).shape[0] if batch else None
        return batch

    def _check_finite(self, keep_last: bool = False) -> None:
        todo = self._unchecked[:-1] if keep_last else self._unchecked
        for step, loss in todo:
            value = float(jax.device_get(loss))
            if not math.isfinite(value):
                self.ckpt.wait()  # an in-flight save of an earlier (good) step completes
                raise FloatingPointError(
                    f"non-finite loss {value} at step {step} (batch index {step - 1}); "
                    f"training stopped; last good checkpoint: step {self.ckpt.latest_step()} "
                    f"in {self.ckpt.directory}"
                )
        self._unchecked = self._unchecked[len(todo) :]

    def _train_metrics(self, step: int) -> dict[str, float]:
        """Means over the steps since the last log, timing, ETA (checks the losses)."""
        self._check_finite()
        scalars = _mean_metrics(self._history)
        self._history = []
        t0, s0 = self._timer
        now = time.perf_counter()
        if step > s0:
            step_time = (now - t0) / (step - s0)
            batch_size = self._batch_size
            scalars["step_time_s"] = step_time
            if batch_size:
                scalars["examples_per_sec"] = batch_size / step_time
            scalars["eta_s"] = step_time * (self.num_steps - step)
            self._timer = (now, step)
        self._pbar.set_postfix(loss=f"{scalars['loss']:.4g}", refresh=False)
        log.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
        return scalars

    def _evaluate(self, step: int, state: TrainState, frozen) -> dict[str, float]:
        """Runs the evaluators; their time is excluded from the step timing."""
        self._check_finite()  # never evaluate (or report) a state after a non-finite loss
        t0 = time.perf_counter()
        out = {}
        for evaluator in self.evaluators:
            results = dict(evaluator(step, state.params, frozen))
            clash = set(results) & set(out)
            if clash:
                raise ValueError(f"evaluators return the same metric names {sorted(clash)}")
            out.update({k: float(v) for k, v in results.items()})
        elapsed = time.perf_counter() - t0
        out["eval_time_s"] = elapsed
        if self._timer is not None:
            self._timer = (self._timer[0] + elapsed, self._timer[1])
        log.info("step %d eval: %s", step, out)
        return out

    def _preempted(self, step: int, state: TrainState) -> TrainState:
        self.ckpt.wait()
        msg = (
            f"SIGTERM received: saved checkpoint at step {step} in {self.ckpt.directory}; "
            "exiting (rerun the same command to resume)"
        )
        log.warning(msg)
        print(msg, flush=True)
        if self.exit_on_preemption:
            self.close()
            raise SystemExit(0)
        return state

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.writer.close()
        self.ckpt.close()
