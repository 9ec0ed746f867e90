"""The training program: each model x task trains, runs are reproducible, bad steps are skipped."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.tasks import CopyMemorySpec, MqarSpec, make_task
from attn_jax.training import (
    NonFiniteError,
    Program,
    TrainConfig,
    make_model,
    model_spec,
    train,
)

TINY = {"transformer": {"d_model": 8, "num_heads": 2, "d_ff": 16, "num_layers": 1},
        "lstm": {"hidden_size": 8}, "lstm_attention": {"hidden_size": 8}}
TASKS = {"copy_memory": CopyMemorySpec(delay=4), "mqar": MqarSpec(seq_len=12, num_pairs=2,
                                                                  vocab_size=16)}


def _program(model="transformer", task="copy_memory", num_steps=4, **train_kw):
  spec = model_spec(model, **TINY[model])
  task = make_task(TASKS[task])
  config = TrainConfig(num_steps=num_steps, batch_size=4, warmup_steps=1, log_every=1,
                       eval_batches=1, **train_kw)
  return Program(lambda rngs: make_model(spec, vocab_size=task.vocab_size,
                                         max_len=task.seq_len, rngs=rngs), task, config)


def _losses(program, seed=0):
  step = jax.jit(program.train_step)
  state = jax.jit(program.init)(seed)
  losses = []
  for _ in range(program.config.num_steps):
    state, metrics = step(state)
    losses.append(np.asarray(metrics["loss"]))
  return state, losses


@pytest.mark.parametrize("model", ["transformer", "lstm", "lstm_attention"])
@pytest.mark.parametrize("task", ["copy_memory", "mqar"])
def test_every_model_trains_on_every_task(model, task):
  result = train(_program(model, task, num_steps=3), seed=0)
  assert np.isfinite(result.eval_metrics["loss"])
  assert 0.0 <= result.eval_metrics["accuracy"] <= 1.0
  assert int(result.state.step) == 3 and result.num_params > 0


def test_one_seed_gives_bitwise_identical_losses():
  _, first = _losses(_program())
  _, second = _losses(_program())
  for a, b in zip(first, second, strict=True):
    assert a.tobytes() == b.tobytes()
  _, other_seed = _losses(_program(), seed=1)
  assert first[0].tobytes() != other_seed[0].tobytes()


def test_nonfinite_gradients_are_skipped_and_counted():
  program = _program(num_steps=3)
  state = jax.jit(program.init)(0)
  step = jax.jit(program.train_step)
  state, _ = step(state)
  params_before = np.asarray(jax.tree.leaves(state.params)[0]).copy()
  # Inject NaN gradients: NaN loss weights for this one step.
  nan_program = dataclasses.replace(program, task=dataclasses.replace(
      program.task, loss_weights=lambda batch: jnp.full(batch.inputs.shape, jnp.nan)))
  state, metrics = jax.jit(nan_program.train_step)(state)
  assert not bool(metrics["finite"])
  np.testing.assert_array_equal(jax.tree.leaves(state.params)[0], params_before)  # untouched
  assert int(state.nonfinite.total) == 1 and int(state.step) == 2
  state, metrics = step(state)  # a clean step trains again
  assert bool(metrics["finite"]) and int(state.nonfinite.total) == 1
  assert not np.array_equal(jax.tree.leaves(state.params)[0], params_before)


def test_run_that_stays_nonfinite_stops_naming_the_step():
  program = _program(num_steps=6, max_consecutive_nonfinite=3)
  nan_program = dataclasses.replace(program, task=dataclasses.replace(
      program.task, loss_weights=lambda batch: jnp.full(batch.inputs.shape, jnp.nan)))
  with pytest.raises(NonFiniteError, match="step 0"):
    train(nan_program, seed=0)
