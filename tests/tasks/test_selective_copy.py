"""Selective copying: the layout of its docstring, purity, encoder safety, baselines; the
registry's task for it and for the zoo's MQAR difficulties."""

import itertools

import jax
import numpy as np
import pytest

from attn_jax import tasks

CONTEXT, TOKENS, SYMBOLS = 20, 5, 6


def _batch(seed=0, batch_size=64):
  return tasks.selective_copy(jax.random.key(seed), batch_size=batch_size, context_len=CONTEXT,
                              num_tokens=TOKENS, num_symbols=SYMBOLS)


def test_layout_by_hand():
  inputs, targets, mask = (np.asarray(x) for x in _batch())
  assert inputs.shape == targets.shape == mask.shape == (64, CONTEXT + TOKENS)
  assert inputs.dtype == np.int32 and mask.dtype == np.bool_
  for row in range(64):
    context = inputs[row, :CONTEXT]
    data = context[context != 0]
    assert len(data) == TOKENS and np.all((data >= 1) & (data <= SYMBOLS))
    np.testing.assert_array_equal(targets[row, CONTEXT:], data)  # in order of position
  np.testing.assert_array_equal(inputs[:, CONTEXT:], SYMBOLS + 1)  # markers: encoder-safe
  np.testing.assert_array_equal(targets[:, :CONTEXT], 0)
  np.testing.assert_array_equal(mask, np.arange(CONTEXT + TOKENS)[None].repeat(64, 0) >= CONTEXT)
  # The data positions vary between examples (that is what makes the copying selective).
  positions = {tuple(np.flatnonzero(inputs[row, :CONTEXT])) for row in range(64)}
  assert len(positions) > 32


def test_pure_function_of_the_key_and_jittable():
  np.testing.assert_array_equal(_batch(1).inputs, _batch(1).inputs)
  assert not np.array_equal(_batch(1).inputs, _batch(2).inputs)
  jitted = jax.jit(tasks.selective_copy,
                   static_argnames=("batch_size", "context_len", "num_tokens", "num_symbols"))
  np.testing.assert_array_equal(
      jitted(jax.random.key(1), batch_size=64, context_len=CONTEXT, num_tokens=TOKENS,
             num_symbols=SYMBOLS).inputs, _batch(1).inputs)


def test_bad_sizes():
  with pytest.raises(ValueError, match="context_len >= 9"):
    tasks.selective_copy(jax.random.key(0), batch_size=1, context_len=8, num_tokens=9,
                         num_symbols=4)
  with pytest.raises(ValueError, match="num_symbols"):
    tasks.make_task(tasks.SelectiveCopySpec(num_symbols=0))


@pytest.mark.parametrize("n, s", [(1, 5), (2, 2), (3, 3), (4, 2)])
def test_order_free_accuracy_by_enumeration(n, s):
  counts = [max(seq.count(x) for x in set(seq)) for seq in itertools.product(range(s), repeat=n)]
  assert tasks.order_free_accuracy(n, s) == pytest.approx(np.mean(counts) / n, abs=1e-12)


def test_registry_task():
  task = tasks.make_task(tasks.SelectiveCopySpec(context_len=CONTEXT, num_tokens=TOKENS,
                                                 num_symbols=SYMBOLS))
  assert (task.name, task.vocab_size, task.seq_len) == ("selective_copy", SYMBOLS + 2,
                                                        CONTEXT + TOKENS)
  assert task.chance_accuracy == pytest.approx(1 / SYMBOLS)
  assert task.chance_accuracy < task.reference["value_set_accuracy"] < 1
  batch = task.sample(jax.random.key(0), 4)
  np.testing.assert_array_equal(task.loss_weights(batch), batch.eval_mask)
  # A model that outputs the targets scores 1.
  perfect = jax.nn.one_hot(batch.targets, task.vocab_size) * 10.0
  assert float(task.metrics(perfect, batch)["accuracy"]) == 1.0


@pytest.mark.parametrize("seq_len, num_pairs", [(64, 4), (128, 8), (256, 16)])
def test_zoo_mqar_difficulties(seq_len, num_pairs):
  task = tasks.make_task(tasks.MqarSpec(seq_len=seq_len, num_pairs=num_pairs, vocab_size=64,
                                        distractors=True))
  batch = task.sample(jax.random.key(0), 8)
  assert batch.inputs.shape == (8, seq_len)
  assert np.all(np.asarray(batch.eval_mask).sum(axis=1) == num_pairs)
  assert task.reference["value_set_accuracy"] == pytest.approx(1 / num_pairs)
