"""Task metrics and training-loss weights: values worked out by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax import tasks


def _memoryless_logits(batch, big=60.0):
  """Certain of the blank where the target is blank, uniform over the 8 symbols elsewhere."""
  seq_len = batch.inputs.shape[1]
  logits = np.full((*batch.inputs.shape, 10), -big, np.float32)
  logits[:, :seq_len - 10, 0] = big
  logits[:, seq_len - 10:, 1:9] = 0.0
  return jnp.asarray(logits)


@pytest.mark.parametrize("delay", [1, 30])
def test_memoryless_strategy_scores_the_published_baseline(delay):
  batch = tasks.copy_memory(jax.random.key(0), batch_size=4, delay=delay)
  metrics = tasks.copy_memory_metrics(_memoryless_logits(batch), batch)
  # 10 positions at ln 8, delay + 10 positions at ~0: 10 ln 8 / (delay + 20) over all positions,
  # ln 8 over the recalled ones.
  np.testing.assert_allclose(metrics["loss_all_positions"],
                             tasks.copy_memory_baseline_loss(delay), rtol=1e-5)
  np.testing.assert_allclose(metrics["loss_all_positions"], 10 * math.log(8) / (delay + 20),
                             rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], math.log(8), rtol=1e-5)
  reference = tasks.make_task(tasks.CopyMemorySpec(delay=delay)).reference
  np.testing.assert_allclose(reference["baseline_loss"], metrics["loss"], rtol=1e-5)
  np.testing.assert_allclose(reference["baseline_loss_all_positions"],
                             metrics["loss_all_positions"], rtol=1e-5)


def test_perfect_and_wrong_predictions():
  batch = tasks.copy_memory(jax.random.key(1), batch_size=3, delay=4)
  perfect = jax.nn.one_hot(batch.targets, 10) * 50.0
  metrics = tasks.copy_memory_metrics(perfect, batch)
  assert float(metrics["accuracy"]) == 1.0 and float(metrics["exact_match"]) == 1.0
  assert float(metrics["loss"]) < 1e-6 and float(metrics["loss_all_positions"]) < 1e-6
  # Break one recalled symbol of the first example: 29 of 30 symbols right, 2 of 3 blocks.
  wrong = np.asarray(perfect).copy()
  row, pos = 0, batch.inputs.shape[1] - 3
  target = int(batch.targets[row, pos])
  wrong[row, pos] = 0.0
  wrong[row, pos, 1 + target % 8] = 50.0  # another data symbol
  metrics = tasks.copy_memory_metrics(jnp.asarray(wrong), batch)
  np.testing.assert_allclose(metrics["accuracy"], 29 / 30)
  np.testing.assert_allclose(metrics["exact_match"], 2 / 3)


def test_mqar_metrics_count_query_positions_only():
  batch = tasks.mqar(jax.random.key(0), batch_size=2, seq_len=12, num_pairs=3, vocab_size=16)
  logits = np.zeros((2, 12, 16), np.float32)  # uniform: loss ln 16 at every query
  logits[0, :, 0] = 100.0  # example 0 predicts the blank everywhere (0 of 3 queries right)
  for b in range(2):
    for p in np.flatnonzero(batch.eval_mask[b]):
      if b == 1:
        logits[b, p, int(batch.targets[b, p])] = 100.0  # example 1: every query right
  metrics = tasks.mqar_metrics(jnp.asarray(logits), batch)
  np.testing.assert_allclose(metrics["accuracy"], 0.5)
  np.testing.assert_allclose(metrics["exact_match"], 0.5)
  np.testing.assert_allclose(metrics["loss"], 0.5 * 100.0, rtol=1e-4)  # 100 vs ~0 per query


def test_loss_weights_by_hand():
  spec = tasks.CopyMemorySpec(delay=10, recall_weight=0.9)
  task = tasks.make_task(spec)
  batch = task.sample(jax.random.key(0), 2)
  weights = np.asarray(task.loss_weights(batch))
  # 10 recall positions share 0.9 of each row, the other 20 share 0.1.
  np.testing.assert_allclose(weights[:, -10:], 0.09)
  np.testing.assert_allclose(weights[:, :-10], 0.1 / 20)
  uniform = tasks.make_task(tasks.CopyMemorySpec(delay=10, recall_weight=None))
  np.testing.assert_array_equal(uniform.loss_weights(batch), np.ones((2, 30)))
  mqar_task = tasks.make_task(tasks.MqarSpec(seq_len=12, num_pairs=3, vocab_size=16))
  mqar_batch = mqar_task.sample(jax.random.key(0), 2)
  np.testing.assert_array_equal(mqar_task.loss_weights(mqar_batch), mqar_batch.eval_mask)
  with pytest.raises(ValueError, match="recall_weight"):
    tasks.make_task(tasks.CopyMemorySpec(delay=10, recall_weight=1.5))


def test_task_bundles_state_their_distance_and_references():
  copy = tasks.make_task(tasks.CopyMemorySpec(delay=200))
  assert (copy.seq_len, copy.distance, copy.vocab_size) == (220, 200, 10)
  assert copy.chance_accuracy == 1 / 8
  np.testing.assert_allclose(copy.reference["baseline_loss_all_positions"],
                             10 * math.log(8) / 220)
  np.testing.assert_allclose(copy.reference["baseline_loss"], math.log(8))
  mqar_task = tasks.make_task(tasks.MqarSpec(seq_len=64, num_pairs=4, vocab_size=16))
  assert (mqar_task.seq_len, mqar_task.distance, mqar_task.chance_accuracy) == (64, 64, 1 / 8)
  # The value-set baseline: knowing which 4 values occur, not which key each belongs to.
  assert mqar_task.reference["value_set_accuracy"] == 1 / 4


def test_value_set_strategy_scores_one_over_num_pairs():
  """Uniform over the context's values at every query: accuracy ~1/N in expectation, loss ln N."""
  num_pairs = 4
  batch = tasks.mqar(jax.random.key(3), batch_size=256, seq_len=24, num_pairs=num_pairs,
                     vocab_size=16)
  inputs = np.asarray(batch.inputs)
  logits = np.full((*inputs.shape, 16), -1e4, np.float32)
  for b in range(inputs.shape[0]):
    logits[b, :, inputs[b, 1:2 * num_pairs:2]] = 0.0  # the N values of this context
  metrics = tasks.mqar_metrics(jnp.asarray(logits), batch)
  np.testing.assert_allclose(metrics["loss"], math.log(num_pairs), rtol=1e-5)
