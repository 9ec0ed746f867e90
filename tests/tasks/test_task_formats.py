"""Task layouts exactly as the task docstrings (and the public API) state them."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax import tasks


def test_copy_memory_layout_by_hand():
  delay = 7
  batch = tasks.copy_memory(jax.random.key(0), batch_size=3, delay=delay)
  seq_len = delay + 20
  for x in batch:
    assert x.shape == (3, seq_len)
  assert batch.inputs.dtype == jnp.int32 and batch.targets.dtype == jnp.int32
  assert batch.eval_mask.dtype == jnp.bool_
  inputs, targets, mask = (np.asarray(x) for x in batch)
  symbols = inputs[:, :10]
  assert np.all((symbols >= 1) & (symbols <= 8))
  # inputs: 10 symbols, delay - 1 blanks, the delimiter 9, 10 blanks.
  np.testing.assert_array_equal(inputs[:, 10:10 + delay - 1], 0)
  np.testing.assert_array_equal(inputs[:, 10 + delay - 1], 9)
  np.testing.assert_array_equal(inputs[:, 10 + delay:], 0)
  # targets: delay + 10 blanks, then the 10 symbols; eval_mask on the last 10 positions.
  np.testing.assert_array_equal(targets[:, :delay + 10], 0)
  np.testing.assert_array_equal(targets[:, delay + 10:], symbols)
  np.testing.assert_array_equal(mask, np.arange(seq_len)[None].repeat(3, 0) >= seq_len - 10)


def test_copy_memory_is_a_pure_function_of_the_key():
  a = tasks.copy_memory(jax.random.key(1), batch_size=4, delay=5)
  b = tasks.copy_memory(jax.random.key(1), batch_size=4, delay=5)
  c = tasks.copy_memory(jax.random.key(2), batch_size=4, delay=5)
  np.testing.assert_array_equal(a.inputs, b.inputs)
  assert not np.array_equal(a.inputs, c.inputs)
  jitted = jax.jit(tasks.copy_memory, static_argnames=("batch_size", "delay"))
  np.testing.assert_array_equal(jitted(jax.random.key(1), batch_size=4, delay=5).inputs, a.inputs)


def test_copy_memory_baseline_loss():
  assert tasks.copy_memory_baseline_loss(100) == pytest.approx(10 * math.log(8) / 120)


@pytest.mark.parametrize(("seq_len", "num_pairs", "vocab_size"), [(16, 4, 32), (64, 8, 64),
                                                                  (36, 12, 64)])
def test_mqar_layout(seq_len, num_pairs, vocab_size):
  batch = tasks.mqar(jax.random.key(0), batch_size=8, seq_len=seq_len, num_pairs=num_pairs,
                     vocab_size=vocab_size)
  inputs, targets, mask = (np.asarray(x) for x in batch)
  assert inputs.shape == targets.shape == mask.shape == (8, seq_len)
  half = vocab_size // 2
  for x, y, m in zip(inputs, targets, mask, strict=True):
    keys, values = x[0:2 * num_pairs:2], x[1:2 * num_pairs:2]
    assert np.all((keys >= 1) & (keys < half)) and len(set(keys)) == num_pairs
    assert np.all((values >= half) & (values < vocab_size))
    pairs = dict(zip(keys.tolist(), values.tolist(), strict=True))
    query_positions = np.flatnonzero(m)
    assert len(query_positions) == num_pairs and query_positions.min() >= 2 * num_pairs
    # Every key is queried once, and the target there is that key's value.
    assert sorted(x[query_positions].tolist()) == sorted(keys.tolist())
    for p in query_positions:
      assert y[p] == pairs[int(x[p])]
    # Encoder-safe: no value token anywhere after the context.
    assert np.all(x[2 * num_pairs:] < half)
    np.testing.assert_array_equal(y[~m], 0)


def test_mqar_rejects_pairs_that_do_not_fit():
  with pytest.raises(ValueError):
    tasks.mqar(jax.random.key(0), batch_size=2, seq_len=10, num_pairs=6, vocab_size=64)
  with pytest.raises(ValueError):
    tasks.mqar(jax.random.key(0), batch_size=2, seq_len=64, num_pairs=8, vocab_size=10)
  with pytest.raises(ValueError):
    tasks.copy_memory(jax.random.key(0), batch_size=2, delay=0)


@pytest.mark.parametrize(("seq_len", "num_pairs", "vocab_size"), [(24, 4, 16), (64, 8, 64)])
def test_mqar_distractors_fill_non_queries_with_non_value_tokens(seq_len, num_pairs, vocab_size):
  plain = tasks.mqar(jax.random.key(5), batch_size=16, seq_len=seq_len, num_pairs=num_pairs,
                     vocab_size=vocab_size)
  noisy = tasks.mqar(jax.random.key(5), batch_size=16, seq_len=seq_len, num_pairs=num_pairs,
                     vocab_size=vocab_size, distractors=True)
  half, context = vocab_size // 2, 2 * num_pairs
  inputs, mask = np.asarray(noisy.inputs), np.asarray(noisy.eval_mask)
  # Pairs, query positions, queried keys and targets are those of the plain batch.
  np.testing.assert_array_equal(inputs[:, :context], np.asarray(plain.inputs)[:, :context])
  np.testing.assert_array_equal(mask, plain.eval_mask)
  np.testing.assert_array_equal(noisy.targets, plain.targets)
  np.testing.assert_array_equal(inputs[mask], np.asarray(plain.inputs)[mask])
  # Encoder-safe: every token after the context, query or distractor, lies below V/2 ...
  after = inputs[:, context:]
  assert np.all((after >= 0) & (after < half))
  # ... and the distractors are random tokens of [0, V/2), not blanks: many distinct ones.
  distractors = inputs[:, context:][~mask[:, context:]]
  assert len(np.unique(distractors)) == half
  assert np.mean(distractors == 0) < 0.5
