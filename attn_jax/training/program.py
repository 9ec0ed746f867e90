"""The pure training program: state, initialisation, one train step and held-out evaluation.

Everything here is a pure function of a `TrainState`, so the caller chooses how to run it:
`jax.jit` with the state donated for one seed, `jax.vmap` over a stacked state for several seeds.
A run's randomness is a function of (seed, step) alone:

- parameters from ``fold_in(key(seed), 0)``;
- the training batch of step ``s`` from ``fold_in(fold_in(key(seed), 1), s)``;
- held-out batch ``i`` from ``fold_in(fold_in(key(seed), 2), i)``, a stream training never uses
  (the reported evaluation);
- validation batch ``i`` from ``fold_in(fold_in(key(seed), 3), i)``, a third stream, for the
  periodic checks during training (learning curves, early stopping), so that the decision to stop
  never looks at the batches the reported accuracy is measured on;
- the model's dropout keys at step ``s`` are its initial keys folded with ``s``.

So a resumed run sees exactly the batches and dropout masks an uninterrupted one would.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from attn_jax.tasks import Task, token_cross_entropy
from attn_jax.training.config import TrainConfig
from attn_jax.training.flat import FlatLayout, TreeLayout
from attn_jax.training.optim import learning_rate_schedule, make_optimizer

Array = jax.Array
ModelFn = Callable[[nnx.Rngs], nnx.Module]

_INIT_STREAM, _TRAIN_STREAM = 0, 1
# The held-out streams `Program.evaluate` draws from.
EVAL_STREAM, VALID_STREAM = 2, 3


class NonFiniteStats(NamedTuple):
  """Counters of skipped updates (int32 scalars).

  Kept so that a streak that ends between two host checks is not missed.

  Attributes:
    total: the updates skipped so far.
    run: the current streak of consecutive non-finite steps.
    run_start: the step the current streak started at (-1: none).
    worst_run: the longest streak so far.
    worst_start: the step the longest streak started at.

  Example:
    >>> from attn_jax import nn, tasks, training
    >>> task = tasks.make_task(tasks.CopyMemorySpec(delay=5))  # L = 25, vocab 10
    >>> model_fn = lambda rngs: nn.TransformerEncoder(
    ...     vocab_size=10, max_len=25, num_layers=1, num_heads=2, d_model=8, d_ff=16, rngs=rngs)
    >>> config = training.TrainConfig(num_steps=3, batch_size=4, warmup_steps=1)
    >>> program = training.Program(model_fn, task, config)
    >>> int(program.init(0).nonfinite.total)  # no update skipped yet
    0
  """

  total: Array
  run: Array
  run_start: Array
  worst_run: Array
  worst_start: Array


class TrainState(NamedTuple):
  """All a run needs to continue; a pytree of arrays only, so orbax saves it as is.

  Attributes:
    step: int32 [], the number of steps taken (skipped updates included).
    seed_key: uint32 key data of ``jax.random.key(seed)``.
    params: float32 [num_params], the model's `nnx.Param`s as one vector (see `FlatLayout`).
    rest: the model's other variables except RNG keys (e.g. RNG counters).
    rng_key_data: the model's RNG keys at init, as uint32 key data.
    opt_state: the optax state (over the flat parameter vector).
    nonfinite: the `NonFiniteStats` of the updates skipped so far.

  Example:
    >>> from attn_jax import nn, tasks, training
    >>> task = tasks.make_task(tasks.CopyMemorySpec(delay=5))  # L = 25, vocab 10
    >>> model_fn = lambda rngs: nn.TransformerEncoder(
    ...     vocab_size=10, max_len=25, num_layers=1, num_heads=2, d_model=8, d_ff=16, rngs=rngs)
    >>> config = training.TrainConfig(num_steps=3, batch_size=4, warmup_steps=1)
    >>> program = training.Program(model_fn, task, config)
    >>> state = program.init(0)
    >>> int(state.step), state.params.shape == (program.num_params,)
    (0, True)
    >>> state, metrics = jax.jit(program.train_step)(state)
    >>> int(state.step), bool(metrics["finite"])
    (1, True)
  """

  step: Array
  seed_key: Array
  params: Array
  rest: Any
  rng_key_data: Any
  opt_state: Any
  nonfinite: NonFiniteStats


def _split_model(model: nnx.Module):
  """-> graphdef, params, rng keys, rest (every other variable, e.g. RNG counters)."""
  return nnx.split(model, nnx.Param, nnx.RngKey, ...)


def _update_nonfinite(stats: NonFiniteStats, finite: Array, step: Array) -> NonFiniteStats:
  run = jnp.where(finite, 0, stats.run + 1)
  run_start = jnp.where(finite, -1, jnp.where(stats.run == 0, step, stats.run_start))
  worse = run > stats.worst_run
  return NonFiniteStats(
      total=stats.total + (~finite).astype(jnp.int32),
      run=run,
      run_start=run_start,
      worst_run=jnp.where(worse, run, stats.worst_run),
      worst_start=jnp.where(worse, run_start, stats.worst_start),
  )


@dataclasses.dataclass(frozen=True, eq=False)
class Program:
  """Training of the models ``model_fn(rngs)`` builds on ``task`` under ``config``.

  ``model_fn`` must map ``nnx.Rngs`` to a module that maps tokens int32 [B, L] to logits
  [B, L, task.vocab_size]; dropout must follow ``model.train()`` / ``model.eval()``. Every
  method is a pure function of a `TrainState`, so it can be jitted, vmapped over seeds or laid
  out on a device mesh.

  Attributes:
    model_fn: ``rngs -> nnx.Module``, the model to train.
    task: the `attn_jax.tasks.Task` it trains on.
    config: the `TrainConfig`.
    flat_params: keep the parameters as one flat float32 vector (fast to compile on CPU), or
      as the model's own pytree (needed to shard heads over a mesh's model axis).

  Example:
    >>> from attn_jax import nn, tasks, training
    >>> task = tasks.make_task(tasks.CopyMemorySpec(delay=5))  # L = 25, vocab 10
    >>> model_fn = lambda rngs: nn.TransformerEncoder(
    ...     vocab_size=10, max_len=25, num_layers=1, num_heads=2, d_model=8, d_ff=16, rngs=rngs)
    >>> config = training.TrainConfig(num_steps=3, batch_size=4, warmup_steps=1)
    >>> program = training.Program(model_fn, task, config)
    >>> state = program.init(seed=0)
    >>> model = program.model(state)  # the nnx.Module the state holds
    >>> batch = program.train_batch(state)
    >>> model(batch.inputs).shape  # [B, L, vocab]
    (4, 25, 10)
    >>> sorted(program.evaluate(state))
    ['accuracy', 'exact_match', 'loss', 'loss_all_positions']
  """

  model_fn: ModelFn
  task: Task
  config: TrainConfig
  # One flat float32 vector (fast to compile on CPU), or the parameters' own pytree (needed to
  # shard heads over a mesh's model axis).
  flat_params: bool = True

  def __post_init__(self):
    abstract = nnx.eval_shape(lambda: self.model_fn(nnx.Rngs(0)))
    abstract.train()
    graphdef_train, abstract_params, _, _ = _split_model(abstract)
    abstract.eval()
    layout = (FlatLayout if self.flat_params else TreeLayout).of(abstract_params)
    # Weight decay (when enabled) applies to matrices only, not to biases and norm scales.
    decay_mask = layout.leaf_mask(lambda shape: len(shape) >= 2)
    setattr_ = functools.partial(object.__setattr__, self)
    setattr_("graphdef_train", graphdef_train)
    setattr_("graphdef_eval", _split_model(abstract)[0])
    setattr_("layout", layout)
    setattr_("optimizer", make_optimizer(self.config, decay_mask))
    setattr_("schedule", learning_rate_schedule(self.config))
    setattr_("key_impl", jax.random.key_impl(jax.random.key(0)))

  @property
  def num_params(self) -> int:
    return self.layout.size

  # ----- state -----------------------------------------------------------------------------
  def init(self, seed: int | Array) -> TrainState:
    """The state at step 0 of seed ``seed`` (traceable: jit or vmap it over seeds)."""
    seed_key = jax.random.key(seed)
    model = self.model_fn(nnx.Rngs(jax.random.fold_in(seed_key, _INIT_STREAM)))
    model.train()
    _, params, rng_keys, rest = _split_model(model)
    flat_params = self.layout.ravel(params)
    zero = jnp.zeros((), jnp.int32)
    return TrainState(
        step=zero,
        seed_key=jax.random.key_data(seed_key),
        params=flat_params,
        rest=rest,
        rng_key_data=jax.tree.map(jax.random.key_data, rng_keys),
        opt_state=self.optimizer.init(flat_params),
        nonfinite=NonFiniteStats(zero, zero, zero - 1, zero, zero - 1),
    )

  def model(self, state: TrainState, *, train: bool = False,
            params: Array | None = None) -> nnx.Module:
    """The model held by ``state`` (one seed), in eval mode unless ``train``; ``params``
    replaces ``state.params`` (e.g. a traced vector to differentiate)."""
    graphdef = self.graphdef_train if train else self.graphdef_eval
    params = state.params if params is None else params
    # copy=True: fresh Variables in the current trace, which the model may then mutate (its RNG
    # counters) even inside jax.grad.
    return nnx.merge(graphdef, self.layout.unravel(params), self._rng_keys(state, state.step),
                     state.rest, copy=True)

  def _wrap(self, key_data: Array) -> Array:
    return jax.random.wrap_key_data(key_data, impl=self.key_impl)

  def _rng_keys(self, state: TrainState, step: Array):
    return jax.tree.map(lambda d: jax.random.fold_in(self._wrap(d), step), state.rng_key_data)

  def train_batch(self, state: TrainState):
    """The batch step ``state.step`` trains on."""
    key = jax.random.fold_in(self._wrap(state.seed_key), _TRAIN_STREAM)
    return self.task.sample(jax.random.fold_in(key, state.step), self.config.batch_size)

  def eval_batch(self, seed_key_data: Array, index: Array, stream: int | Array = EVAL_STREAM):
    """Held-out batch ``index`` of ``stream`` (`EVAL_STREAM` or `VALID_STREAM`): the same
    batches at every evaluation of a run."""
    key = jax.random.fold_in(self._wrap(seed_key_data), stream)
    return self.task.sample(jax.random.fold_in(key, index), self.config.batch_size)

  # ----- steps -----------------------------------------------------------------------------
  def loss(self, params: Array, state: TrainState, batch) -> tuple[Array, tuple[Array, Any]]:
    """Cross-entropy averaged with ``task.loss_weights`` over ``batch``, for the flat
    ``params``; aux: (logits [B, L, vocab_size], the model's updated non-param variables)."""
    model = self.model(state, train=True, params=params)
    logits_BxLxV = model(batch.inputs)
    per_token_BxL = token_cross_entropy(logits_BxLxV, batch.targets)
    weights_BxL = self.task.loss_weights(batch)
    loss = jnp.sum(weights_BxL * per_token_BxL) / jnp.maximum(jnp.sum(weights_BxL), 1e-9)
    return loss, (logits_BxLxV, _split_model(model)[3])

  def train_step(self, state: TrainState) -> tuple[TrainState, dict[str, Array]]:
    """One update. A non-finite loss or gradient leaves params and optimizer state untouched
    and is counted in ``state.nonfinite``; the step counter (hence the data) moves on."""
    batch = self.train_batch(state)
    (loss, (logits, new_rest)), grads = jax.value_and_grad(self.loss, has_aux=True)(
        state.params, state, batch)
    finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    updates, new_opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)

    def keep_if_bad(new, old):
      return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

    new_state = TrainState(
        step=state.step + 1,
        seed_key=state.seed_key,
        params=keep_if_bad(new_params, state.params),
        rest=keep_if_bad(new_rest, state.rest),
        rng_key_data=state.rng_key_data,
        opt_state=keep_if_bad(new_opt_state, state.opt_state),
        nonfinite=_update_nonfinite(state.nonfinite, finite, state.step),
    )
    metrics = {
        "loss": loss,
        "accuracy": self.task.metrics(logits, batch)["accuracy"],
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": self.schedule(state.step),
        "finite": finite,
    }
    return new_state, metrics

  def evaluate(self, state: TrainState, stream: int | Array = EVAL_STREAM) -> dict[str, Array]:
    """The task's metrics averaged over ``config.eval_batches`` held-out batches of ``stream``
    (each batch has the same number of eval positions, so the mean of batch means is the
    overall mean). ``stream`` may be traced: one compiled program serves both streams."""

    def one_batch(index):
      batch = self.eval_batch(state.seed_key, index, stream)
      return self.task.metrics(self.model(state)(batch.inputs), batch)

    per_batch = jax.lax.map(one_batch, jnp.arange(self.config.eval_batches))
    return jax.tree.map(lambda x: jnp.mean(x, axis=0), per_batch)
