"""The host-side training loop: jitted steps, logging, held-out evaluation, checkpoints, resume.

The loop never blocks on the device between log steps: metrics and the non-finite counters are
fetched only every ``log_every`` steps, which is also when a run that stayed non-finite for
``max_consecutive_nonfinite`` consecutive steps is stopped (the counters remember the worst streak,
so one that ends between two checks is still caught).
"""

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.training.program import NonFiniteStats, Program, TrainState

Metrics = dict[str, float]
LogFn = Callable[[int, Metrics], None]


class NonFiniteError(RuntimeError):
  """Raised when training stays non-finite for too many consecutive steps."""


class Checkpointer(Protocol):
  """What the loop needs from a checkpointer (see `attn_jax.training.checkpoint`)."""

  def latest_step(self) -> int | None: ...

  def save(self, step: int, state: Any) -> None: ...

  def restore(self, step: int, like: Any) -> Any: ...


@dataclasses.dataclass
class TrainResult:
  """state: the final `TrainState` (stacked over seeds for `train_seeds`); eval_metrics: the
  held-out metrics at the last step (per seed lists for `train_seeds`); start_step: the step
  training (re)started from; wall_s: seconds spent in this call, compilation included."""

  state: TrainState
  eval_metrics: dict[str, Any]
  num_params: int
  start_step: int
  wall_s: float


def check_nonfinite(stats: NonFiniteStats, limit: int, step: int) -> None:
  """Raises `NonFiniteError` naming the steps if any streak of non-finite steps reached
  ``limit``. ``stats`` holds host values (numpy) of one seed or of several (stacked)."""
  worst = np.atleast_1d(np.asarray(stats.worst_run))
  if np.any(worst >= limit):
    seed_index = int(np.argmax(worst))
    first = int(np.atleast_1d(np.asarray(stats.worst_start))[seed_index])
    raise NonFiniteError(
        f"non-finite loss or gradients at every step from step {first} to step "
        f"{first + limit - 1} ({limit} consecutive skipped updates; checked at step {step}, "
        f"{int(np.atleast_1d(np.asarray(stats.total))[seed_index])} skipped in all)")


def _to_host(metrics: dict[str, jax.Array]) -> dict[str, Any]:
  host = jax.device_get(metrics)
  return {k: (float(v) if np.ndim(v) == 0 else [float(x) for x in np.asarray(v)])
          for k, v in host.items()}


def _should(every: int, done: int, last: int) -> bool:
  return done == last or (every > 0 and done % every == 0)


def _run(program: Program, state: TrainState, start: int, step_fn, eval_fn, *,
         on_log: LogFn | None, on_eval: LogFn | None,
         checkpointer: Checkpointer | None) -> tuple[TrainState, dict[str, Any]]:
  config = program.config
  eval_metrics = None
  for step in range(start, config.num_steps):
    state, metrics = step_fn(state)
    done = step + 1
    if _should(config.log_every, done, config.num_steps):
      stats = jax.device_get(state.nonfinite)
      check_nonfinite(stats, config.max_consecutive_nonfinite, done)
      host = _to_host(metrics)
      host["nonfinite_total"] = np.asarray(stats.total).tolist()
      if on_log is not None:
        on_log(done, host)
    if _should(config.eval_every, done, config.num_steps):
      eval_metrics = _to_host(eval_fn(state))
      if on_eval is not None:
        on_eval(done, eval_metrics)
    if checkpointer is not None and _should(config.checkpoint_every, done, config.num_steps):
      checkpointer.save(done, state)
  if eval_metrics is None:  # resumed a finished run: its final evaluation is deterministic
    eval_metrics = _to_host(eval_fn(state))
  return state, eval_metrics


def train(program: Program, seed: int, *, checkpointer: Checkpointer | None = None,
          on_log: LogFn | None = None, on_eval: LogFn | None = None,
          mesh: Any = None) -> TrainResult:
  """Trains one seed for ``program.config.num_steps`` steps, resuming from the checkpointer's
  latest step if it has one. ``on_log(step, metrics)`` receives the training metrics of every
  ``log_every``-th step, ``on_eval(step, metrics)`` the held-out metrics. With a ``mesh``
  (`attn_jax.training.sharding.make_mesh`) the batch is split over its ``data`` axis and the
  state laid out by `sharding.state_shardings`; a checkpoint restores onto any mesh."""
  start_time = time.perf_counter()
  if mesh is None:
    # The state is donated: its buffers are reused for the next state (no copy per step).
    step_fn = jax.jit(program.train_step, donate_argnums=0)
    eval_fn = jax.jit(program.evaluate)
    state = jax.jit(program.init)(seed)
  else:
    from attn_jax.training.sharding import shard_program  # noqa: PLC0415

    fns = shard_program(program, mesh)
    step_fn, eval_fn, state = fns.train_step, fns.evaluate, fns.init(seed)
  start = 0
  if checkpointer is not None:
    latest = checkpointer.latest_step()
    if latest is not None:
      state = checkpointer.restore(latest, state)
      start = latest
  num_params = program.num_params
  state, eval_metrics = _run(program, state, start, step_fn, eval_fn, on_log=on_log,
                             on_eval=on_eval, checkpointer=checkpointer)
  return TrainResult(state, eval_metrics, num_params, start, time.perf_counter() - start_time)


def train_seeds(program: Program, seeds: Sequence[int], *, on_log: LogFn | None = None,
                on_eval: LogFn | None = None) -> TrainResult:
  """Trains several seeds of one configuration as one vmapped program.

  The per-seed states are stacked on a leading axis and every step runs all seeds at once,
  which pays off where one seed leaves the hardware idle (small matmuls inside an LSTM's
  sequential scan). Each seed's numbers match `train(program, seed)` up to float reassociation.
  Metrics passed to the callbacks and returned are lists with one entry per seed.
  """
  start_time = time.perf_counter()
  step_fn = jax.jit(jax.vmap(program.train_step), donate_argnums=0)
  eval_fn = jax.jit(jax.vmap(program.evaluate))
  state = jax.jit(jax.vmap(program.init))(jnp.asarray(list(seeds), jnp.int32))
  num_params = program.num_params
  state, eval_metrics = _run(program, state, 0, step_fn, eval_fn, on_log=on_log,
                             on_eval=on_eval, checkpointer=None)
  return TrainResult(state, eval_metrics, num_params, 0, time.perf_counter() - start_time)
