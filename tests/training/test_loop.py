"""The host loop: vmapped seeds against separate runs, checkpoint round trips, kill and resume."""

import jax
import numpy as np
import pytest

from attn_jax.tasks import CopyMemorySpec, make_task
from attn_jax.training import (
    Checkpointer,
    Program,
    TrainConfig,
    make_model,
    model_spec,
    train,
    train_seeds,
)
from attn_jax.training.program import EVAL_STREAM, VALID_STREAM


def _program(num_steps=4, **train_kw):
  spec = model_spec("transformer", d_model=8, num_heads=2, d_ff=16, num_layers=1)
  task = make_task(CopyMemorySpec(delay=3))
  config = TrainConfig(num_steps=num_steps, batch_size=4, warmup_steps=1, log_every=1,
                       eval_batches=2, **train_kw)
  return Program(lambda rngs: make_model(spec, vocab_size=task.vocab_size,
                                         max_len=task.seq_len, rngs=rngs), task, config)


def test_vmapped_seeds_match_separate_runs():
  program = _program()
  together = train_seeds(program, [0, 3])
  for index, seed in enumerate((0, 3)):
    alone = train(program, seed)
    for name, value in alone.eval_metrics.items():
      np.testing.assert_allclose(together.eval_metrics[name][index], value, rtol=1e-4,
                                 atol=1e-5, err_msg=name)
    np.testing.assert_allclose(together.state.params[index], alone.state.params, rtol=1e-4,
                               atol=1e-5)


def test_checkpoint_round_trip_is_exact(tmp_path):
  program = _program()
  state = jax.jit(program.init)(0)
  state, _ = jax.jit(program.train_step)(state)
  checkpointer = Checkpointer(str(tmp_path))
  checkpointer.save(1, state)
  assert checkpointer.latest_step() == 1
  fresh = jax.jit(program.init)(5)  # only its structure is used
  restored = checkpointer.restore(1, fresh)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
    assert np.asarray(a).dtype == np.asarray(b).dtype
    np.testing.assert_array_equal(a, b)
  checkpointer.close()


class _Killed(Exception):
  pass


def test_killed_run_resumes_to_the_same_end(tmp_path):
  """N steps straight vs. killed after the N/2 checkpoint and restarted: identical logs/state."""
  program = _program(num_steps=6, checkpoint_every=3)
  logs_straight = []
  straight = train(program, 0, on_log=lambda s, m: logs_straight.append((s, m)))

  def die_at_step_5(step, metrics):
    if step == 5:
      raise _Killed
  with pytest.raises(_Killed):
    train(program, 0, checkpointer=Checkpointer(str(tmp_path)), on_log=die_at_step_5)
  logs_resumed = []
  resumed = train(program, 0, checkpointer=Checkpointer(str(tmp_path)),
                  on_log=lambda s, m: logs_resumed.append((s, m)))
  assert resumed.start_step == 3
  assert logs_resumed == logs_straight[3:]  # steps 4..6, bit for bit
  assert resumed.eval_metrics == straight.eval_metrics
  np.testing.assert_array_equal(resumed.state.params, straight.state.params)


def test_early_stop_once_every_seed_is_solved_and_resume_stays_stopped(tmp_path):
  """stop_accuracy ends training at the first validation check every seed meets; a resumed
  run that had stopped trains no further, and the reported metrics come from the eval stream."""
  # A threshold of 1e-6 is met at the first check (step 2), whatever the model has learnt.
  program = _program(num_steps=8, eval_every=2, stop_accuracy=1e-6, checkpoint_every=4)
  logs = []
  result = train(program, 0, checkpointer=Checkpointer(str(tmp_path)),
                 on_log=lambda step, m: logs.append(step))
  assert result.steps == 2 and logs[-1] == 2
  assert result.compile_s > 0 and result.train_s > 0
  again = train(program, 0, checkpointer=Checkpointer(str(tmp_path)))
  assert again.start_step == 2 and again.steps == 2
  assert again.eval_metrics == result.eval_metrics
  together = train_seeds(program, [0, 1])
  assert together.steps == 2
  # Validation and evaluation are different batches.
  state = jax.jit(program.init)(0)
  eval_batch = program.eval_batch(state.seed_key, 0, EVAL_STREAM)
  valid_batch = program.eval_batch(state.seed_key, 0, VALID_STREAM)
  assert not np.array_equal(eval_batch.inputs, valid_batch.inputs)


def test_no_stop_without_a_threshold():
  program = _program(num_steps=4, eval_every=1)
  evals = []
  result = train(program, 0, on_eval=lambda step, m: evals.append(step))
  assert result.steps == 4 and evals == [1, 2, 3, 4]
