"""The host-side training loop: jitted steps, logging, validation, early stopping, checkpoints,
resume, and where the time goes.

The loop never blocks on the device between log steps: metrics and the non-finite counters are
fetched only every ``log_every`` steps, which is also when a run that stayed non-finite for
``max_consecutive_nonfinite`` consecutive steps is stopped (the counters remember the worst streak,
so one that ends between two checks is still caught).

Every program is compiled ahead of time (``jit(...).lower(...).compile()``) so that a result can
say how much of its wall time was compilation and how much was training.
"""

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.training.program import (
    EVAL_STREAM,
    VALID_STREAM,
    NonFiniteStats,
    Program,
    TrainState,
)

Metrics = dict[str, float]
LogFn = Callable[[int, Metrics], None]


class NonFiniteError(RuntimeError):
  """Raised when training stays non-finite for too many consecutive steps.

  Example:
    >>> from attn_jax.training import NonFiniteStats
    >>> stats = NonFiniteStats(*np.array([12, 12, 88, 12, 88]))  # 12 steps from step 88
    >>> try:
    ...   check_nonfinite(stats, limit=10, step=100)
    ... except NonFiniteError as error:
    ...   print(type(error).__name__)
    NonFiniteError
  """


class Checkpointer(Protocol):
  """What the loop needs from a checkpointer (see `attn_jax.training.checkpoint`)."""

  def latest_step(self) -> int | None: ...

  def save(self, step: int, state: Any) -> None: ...

  def restore(self, step: int, like: Any) -> Any: ...


@dataclasses.dataclass
class TrainResult:
  """The outcome of `train` / `train_seeds`.

  Attributes:
    state: the final `TrainState` (stacked over seeds for `train_seeds`).
    eval_metrics: the held-out metrics at the last step (per-seed lists for `train_seeds`).
    num_params: the model's parameter count.
    start_step: the step training (re)started from.
    wall_s: seconds spent in this call.
    steps: the steps the state has taken (fewer than ``num_steps`` when every seed met
      ``stop_accuracy``).
    compile_s: seconds of ``wall_s`` spent initialising and compiling.
    train_s: seconds spent in the steps (periodic validation included).
    eval_s: seconds spent in the final evaluation.
    step_flops: XLA's count of one step's floating-point operations (all seeds), when the
      backend reports it.

  Example:
    >>> from attn_jax import nn, tasks, training
    >>> task = tasks.make_task(tasks.CopyMemorySpec(delay=5))  # L = 25, vocab 10
    >>> model_fn = lambda rngs: nn.TransformerEncoder(
    ...     vocab_size=10, max_len=25, num_layers=1, num_heads=2, d_model=8, d_ff=16, rngs=rngs)
    >>> config = training.TrainConfig(num_steps=3, batch_size=4, warmup_steps=1)
    >>> program = training.Program(model_fn, task, config)
    >>> result = training.train(program, seed=0)
    >>> result.start_step, result.steps, int(result.state.step)
    (0, 3, 3)
    >>> 0.0 <= result.eval_metrics["accuracy"] <= 1.0
    True
  """

  state: TrainState
  eval_metrics: dict[str, Any]
  num_params: int
  start_step: int
  wall_s: float
  steps: int = 0
  compile_s: float = 0.0
  train_s: float = 0.0
  eval_s: float = 0.0
  step_flops: float | None = None


def check_nonfinite(stats: NonFiniteStats, limit: int, step: int) -> None:
  """Raises `NonFiniteError` naming the steps if any streak of non-finite steps reached
  ``limit``.

  Args:
    stats: host values (numpy) of one seed's `NonFiniteStats`, or of several (stacked).
    limit: the longest streak of skipped (non-finite) steps allowed.
    step: the current step, for the message.

  Example:
    >>> from attn_jax.training import NonFiniteStats
    >>> check_nonfinite(NonFiniteStats(*np.array([3, 0, -1, 2, 40])), limit=10, step=100)
    >>> check_nonfinite(NonFiniteStats(*np.array([12, 12, 88, 12, 88])), limit=10, step=100)
    Traceback (most recent call last):
    ...
    attn_jax.training.loop.NonFiniteError: ...
  """
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


def _solved(metrics: dict[str, Any], threshold: float) -> bool:
  """Every seed's validation accuracy reached ``threshold`` (never, for threshold 0)."""
  return threshold > 0 and bool(np.all(np.asarray(metrics["accuracy"]) >= threshold))


def _flops(compiled) -> float | None:
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 (not every backend implements it)
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) if flops is not None and flops >= 0 else None


@dataclasses.dataclass
class _Compiled:
  step: Any
  validate: Any
  evaluate: Any
  compile_s: float
  step_flops: float | None


def _compile(step_fn, validate_fn, eval_fn, state) -> _Compiled:
  """Compiles the three programs for ``state``'s shapes (the time is the caller's compile_s)."""
  start = time.perf_counter()
  step = step_fn.lower(state).compile()
  validate = validate_fn.lower(state).compile()
  evaluate = eval_fn.lower(state).compile()
  return _Compiled(step, validate, evaluate, time.perf_counter() - start, _flops(step))


def _run(program: Program, state: TrainState, start: int, fns: _Compiled, *,
         on_log: LogFn | None, on_eval: LogFn | None,
         checkpointer: Checkpointer | None) -> tuple[TrainState, dict[str, Any], int, float]:
  """The steps from ``start``; -> (state, final held-out metrics, steps taken, train seconds)."""
  config = program.config
  started = time.perf_counter()
  done = start
  stop = False
  if start > 0 and config.eval_every > 0 and start % config.eval_every == 0:
    # A resumed run that had already met stop_accuracy at its last check stopped there.
    stop = _solved(_to_host(fns.validate(state)), config.stop_accuracy)
  for step in range(start, config.num_steps):
    if stop:
      break
    state, metrics = fns.step(state)
    done = step + 1
    validate = config.eval_every > 0 and (done % config.eval_every == 0
                                          or done == config.num_steps)
    valid = _to_host(fns.validate(state)) if validate else None
    stop = valid is not None and _solved(valid, config.stop_accuracy)
    if stop or _should(config.log_every, done, config.num_steps):
      stats = jax.device_get(state.nonfinite)
      check_nonfinite(stats, config.max_consecutive_nonfinite, done)
      host = _to_host(metrics)
      host["nonfinite_total"] = np.asarray(stats.total).tolist()
      if on_log is not None:
        on_log(done, host)
    if valid is not None and on_eval is not None:
      on_eval(done, valid)
    if checkpointer is not None and (stop or _should(config.checkpoint_every, done,
                                                     config.num_steps)):
      checkpointer.save(done, state)
  jax.block_until_ready(state)
  return state, fns.evaluate(state), done, time.perf_counter() - started


def _finish(program, state, start, fns, started, init_s, **kwargs) -> TrainResult:
  state, eval_metrics, done, train_s = _run(program, state, start, fns, **kwargs)
  eval_started = time.perf_counter()
  eval_metrics = _to_host(eval_metrics)
  return TrainResult(
      state, eval_metrics, program.num_params, start, time.perf_counter() - started,
      steps=done, compile_s=init_s + fns.compile_s, train_s=train_s,
      eval_s=time.perf_counter() - eval_started, step_flops=fns.step_flops)


def train(program: Program, seed: int, *, checkpointer: Checkpointer | None = None,
          on_log: LogFn | None = None, on_eval: LogFn | None = None,
          mesh: Any = None) -> TrainResult:
  """Trains one seed for ``program.config.num_steps`` steps (fewer if it meets
  ``stop_accuracy``), resuming from the checkpointer's latest step if it has one.
  ``on_log(step, metrics)`` receives the training metrics of every ``log_every``-th step,
  ``on_eval(step, metrics)`` the validation metrics of every ``eval_every``-th step. With a
  ``mesh`` (`attn_jax.training.sharding.make_mesh`) the batch is split over its ``data`` axis and
  the state laid out by `sharding.state_shardings`; a checkpoint restores onto any mesh.

  Args:
    program: what to train (model, task, settings).
    seed: the run's seed; the data of step ``s`` is a function of ``(seed, s)`` alone.
    checkpointer: saves every ``checkpoint_every`` steps and at the end, and is resumed from.
    on_log: called as ``on_log(step, metrics)`` with the training metrics.
    on_eval: called as ``on_eval(step, metrics)`` with the validation metrics.
    mesh: a device mesh to train on, or None (one device).

  Returns:
    A `TrainResult`.

  Example:
    >>> from attn_jax import nn, tasks, training
    >>> task = tasks.make_task(tasks.CopyMemorySpec(delay=5))  # L = 25, vocab 10
    >>> model_fn = lambda rngs: nn.TransformerEncoder(
    ...     vocab_size=10, max_len=25, num_layers=1, num_heads=2, d_model=8, d_ff=16, rngs=rngs)
    >>> config = training.TrainConfig(num_steps=3, batch_size=4, warmup_steps=1)
    >>> program = training.Program(model_fn, task, config)
    >>> result = training.train(program, seed=0)
    >>> result.steps, result.num_params == program.num_params
    (3, True)
  """
  started = time.perf_counter()
  seed_array = jnp.asarray(seed, jnp.int32)
  if mesh is None:
    init_fn = jax.jit(program.init)
    # The state is donated: its buffers are reused for the next state (no copy per step).
    step_fn = jax.jit(program.train_step, donate_argnums=0)
    eval_fn = jax.jit(program.evaluate)
    validate_fn = jax.jit(lambda state: program.evaluate(state, VALID_STREAM))
  else:
    from attn_jax.training import sharding  # noqa: PLC0415

    fns = sharding.shard_program(program, mesh)
    init_fn, step_fn, eval_fn, validate_fn = fns.init, fns.train_step, fns.evaluate, fns.validate
  state = init_fn(seed_array)
  start = 0
  if checkpointer is not None:
    latest = checkpointer.latest_step()
    if latest is not None:
      state = checkpointer.restore(latest, state)
      start = latest
  jax.block_until_ready(state)
  init_s = time.perf_counter() - started
  compiled = _compile(step_fn, validate_fn, eval_fn, state)
  return _finish(program, state, start, compiled, started, init_s, on_log=on_log,
                 on_eval=on_eval, checkpointer=checkpointer)


def train_seeds(program: Program, seeds: Sequence[int], *, on_log: LogFn | None = None,
                on_eval: LogFn | None = None) -> TrainResult:
  """Trains several seeds of one configuration as one vmapped program.

  The per-seed states are stacked on a leading axis and every step runs all seeds at once,
  which pays off where one seed leaves the hardware idle (small matmuls inside an LSTM's
  sequential scan). Each seed's numbers match `train(program, seed)` up to float reassociation
  (and all seeds stop together: once every one of them meets ``stop_accuracy``). Metrics passed
  to the callbacks and returned are lists with one entry per seed.

  Args:
    program: what to train.
    seeds: the seeds, trained side by side.
    on_log: as in `train`, with per-seed lists.
    on_eval: as in `train`, with per-seed lists.

  Returns:
    A `TrainResult` whose state is stacked over the seeds.

  Example:
    >>> from attn_jax import nn, tasks, training
    >>> task = tasks.make_task(tasks.CopyMemorySpec(delay=5))  # L = 25, vocab 10
    >>> model_fn = lambda rngs: nn.TransformerEncoder(
    ...     vocab_size=10, max_len=25, num_layers=1, num_heads=2, d_model=8, d_ff=16, rngs=rngs)
    >>> config = training.TrainConfig(num_steps=3, batch_size=4, warmup_steps=1)
    >>> program = training.Program(model_fn, task, config)
    >>> result = training.train_seeds(program, [0, 1])
    >>> len(result.eval_metrics["accuracy"]), result.state.step.tolist()
    (2, [3, 3])
  """
  started = time.perf_counter()
  step_fn = jax.jit(jax.vmap(program.train_step), donate_argnums=0)
  eval_fn = jax.jit(jax.vmap(lambda state: program.evaluate(state, EVAL_STREAM)))
  validate_fn = jax.jit(jax.vmap(lambda state: program.evaluate(state, VALID_STREAM)))
  state = jax.jit(jax.vmap(program.init))(jnp.asarray(list(seeds), jnp.int32))
  jax.block_until_ready(state)
  init_s = time.perf_counter() - started
  compiled = _compile(step_fn, validate_fn, eval_fn, state)
  return _finish(program, state, 0, compiled, started, init_s, on_log=on_log, on_eval=on_eval,
                 checkpointer=None)
