"""Tests for attn_jax/core/masks.py: literal masks, parity with jax.nn's masks, jit, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.core import masks


@functools.partial(jax.jit, static_argnames=("is_causal", "local_window_size"))
def _nn_attention(query, key, value, **kwargs):
  """jax.nn's XLA attention, jitted once per configuration (eager dispatch is slow on CPU)."""
  return jax.nn.dot_product_attention(query, key, value, implementation="xla", **kwargs)


def _jax_nn_mask(batch, q_len, kv_len, **mask_kwargs):
  """The mask jax.nn.dot_product_attention builds for ``mask_kwargs``, read off its output.

  With zero queries every allowed logit is 0 and every masked one is a huge negative number, so
  the softmax is uniform over the allowed keys and exactly 0 elsewhere. Taking value = identity
  (head_dim = kv_len) makes output[b, t, 0, :] the weight row, whose support is the mask.
  Returns bool [batch, 1, q_len, kv_len].
  """
  query = jnp.zeros((batch, q_len, 1, kv_len), jnp.float32)
  key = jnp.zeros((batch, kv_len, 1, kv_len), jnp.float32)
  value = jnp.broadcast_to(jnp.eye(kv_len)[None, :, None, :], (batch, kv_len, 1, kv_len))
  out = _nn_attention(query, key, value, **mask_kwargs)
  return np.asarray(out[:, :, 0, :] > 0)[:, None]  # [batch, 1, q_len, kv_len]


def _random_qkv(batch, q_len, kv_len, num_heads=2, head_dim=4, seed=0):
  rng = np.random.default_rng(seed)
  query = rng.standard_normal((batch, q_len, num_heads, head_dim), np.float32)
  key = rng.standard_normal((batch, kv_len, num_heads, head_dim), np.float32)
  value = rng.standard_normal((batch, kv_len, num_heads, head_dim), np.float32)
  return jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)


# ---------------------------------------------------------------------------------------------
# Values written by hand.


def test_causal_mask_literal():
  np.testing.assert_array_equal(
      masks.make_causal_mask(3, 4)[0, 0],
      [[1, 0, 0, 0],
       [1, 1, 0, 0],
       [1, 1, 1, 0]])
  np.testing.assert_array_equal(
      masks.make_causal_mask(4, 2)[0, 0],
      [[1, 0],
       [1, 1],
       [1, 1],
       [1, 1]])
  square = masks.make_causal_mask(3)
  assert square.shape == (1, 1, 3, 3) and square.dtype == jnp.bool_
  np.testing.assert_array_equal(square[0, 0], [[1, 0, 0], [1, 1, 0], [1, 1, 1]])


def test_padding_mask_literal():
  mask = masks.make_padding_mask(3, 4, jnp.array([2, 3]), jnp.array([3, 1]))
  assert mask.shape == (2, 1, 3, 4) and mask.dtype == jnp.bool_
  np.testing.assert_array_equal(
      mask[:, 0],
      [[[1, 1, 1, 0],
        [1, 1, 1, 0],
        [0, 0, 0, 0]],
       [[1, 0, 0, 0],
        [1, 0, 0, 0],
        [1, 0, 0, 0]]])
  kv_only = masks.make_padding_mask(2, 3, key_value_seq_lengths=jnp.array([2]))
  np.testing.assert_array_equal(kv_only[0, 0], [[1, 1, 0], [1, 1, 0]])
  q_only = masks.make_padding_mask(2, 3, query_seq_lengths=jnp.array([1]))
  np.testing.assert_array_equal(q_only[0, 0], [[1, 1, 1], [0, 0, 0]])
  no_padding = masks.make_padding_mask(2, 3)
  assert no_padding.shape == (1, 1, 2, 3) and bool(no_padding.all())


def test_segment_mask_literal():
  mask = masks.make_segment_mask(jnp.array([[1, 1, 2, 2], [3, 3, 3, 0]]))
  assert mask.shape == (2, 1, 4, 4)
  np.testing.assert_array_equal(
      mask[:, 0],
      [[[1, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 1, 1],
        [0, 0, 1, 1]],
       [[1, 1, 1, 0],
        [1, 1, 1, 0],
        [1, 1, 1, 0],
        [0, 0, 0, 1]]])
  cross = masks.make_segment_mask(jnp.array([[1, 2]]), jnp.array([[2, 2, 1]]))
  np.testing.assert_array_equal(cross[0, 0], [[0, 0, 1], [1, 1, 0]])


def test_local_mask_literal():
  np.testing.assert_array_equal(
      masks.make_local_mask(5, 5, (1, 2))[0, 0],
      [[1, 1, 1, 0, 0],
       [1, 1, 1, 1, 0],
       [0, 1, 1, 1, 1],
       [0, 0, 1, 1, 1],
       [0, 0, 0, 1, 1]])
  np.testing.assert_array_equal(
      masks.make_local_mask(3, 4, 1)[0, 0],
      [[1, 1, 0, 0],
       [1, 1, 1, 0],
       [0, 1, 1, 1]])
  # (left, 0) is causal sliding-window attention.
  np.testing.assert_array_equal(
      masks.make_local_mask(4, 4, (1, 0))[0, 0],
      [[1, 0, 0, 0],
       [1, 1, 0, 0],
       [0, 1, 1, 0],
       [0, 0, 1, 1]])


def test_combinators():
  causal = masks.make_causal_mask(3)
  padding = masks.make_padding_mask(3, 3, key_value_seq_lengths=jnp.array([3, 2]))
  both = masks.and_masks(causal, None, padding)
  assert both.shape == (2, 1, 3, 3)
  np.testing.assert_array_equal(
      both[:, 0],
      [[[1, 0, 0], [1, 1, 0], [1, 1, 1]],
       [[1, 0, 0], [1, 1, 0], [1, 1, 0]]])
  either = masks.or_masks(causal, masks.make_local_mask(3, 3, (0, 1)))
  np.testing.assert_array_equal(either[0, 0], [[1, 1, 0], [1, 1, 1], [1, 1, 1]])
  assert masks.and_masks() is None
  assert masks.and_masks(None, None) is None
  assert masks.or_masks() is None
  np.testing.assert_array_equal(masks.and_masks(None, causal), causal)


# ---------------------------------------------------------------------------------------------
# Parity with the masks jax.nn.dot_product_attention builds internally.


@pytest.mark.parametrize("q_len, kv_len", [(4, 4), (3, 5), (5, 3)])
def test_causal_matches_jax_nn(q_len, kv_len):
  np.testing.assert_array_equal(
      _jax_nn_mask(1, q_len, kv_len, is_causal=True), masks.make_causal_mask(q_len, kv_len))


@pytest.mark.parametrize("window", [(1, 2), (2, 0), (0, 0), 1])
def test_local_matches_jax_nn(window):
  np.testing.assert_array_equal(
      _jax_nn_mask(1, 6, 6, local_window_size=window), masks.make_local_mask(6, 6, window))


def test_causal_and_local_outputs_match_jax_nn():
  """Random inputs: jax.nn with is_causal / local_window_size == jax.nn with our explicit mask."""
  query, key, value = _random_qkv(2, 4, 6, seed=1)
  expected = _nn_attention(query, key, value, is_causal=True)
  got = _nn_attention(query, key, value, mask=masks.make_causal_mask(4, 6))
  np.testing.assert_allclose(got, expected, atol=1e-6)
  expected = _nn_attention(query, key, value, local_window_size=(1, 2))
  got = _nn_attention(query, key, value, mask=masks.make_local_mask(4, 6, (1, 2)))
  np.testing.assert_allclose(got, expected, atol=1e-6)


def test_padding_matches_jax_nn():
  q_len, kv_len = 4, 5
  q_lengths = jnp.array([4, 2, 1], jnp.int32)
  kv_lengths = jnp.array([5, 3, 1], jnp.int32)
  lengths = dict(query_seq_lengths=q_lengths, key_value_seq_lengths=kv_lengths)
  mask = masks.make_padding_mask(q_len, kv_len, q_lengths, kv_lengths)
  np.testing.assert_array_equal(_jax_nn_mask(3, q_len, kv_len, **lengths), mask)
  np.testing.assert_array_equal(
      _jax_nn_mask(3, q_len, kv_len, key_value_seq_lengths=kv_lengths),
      masks.make_padding_mask(q_len, kv_len, key_value_seq_lengths=kv_lengths))

  query, key, value = _random_qkv(3, q_len, kv_len, seed=2)
  expected = _nn_attention(query, key, value, **lengths)
  got = _nn_attention(query, key, value, mask=mask)
  # jax.nn zeroes padded query rows, while an explicit mask leaves them fully masked (uniform
  # weights in jax.nn): compare the valid rows only, and check the padded rows really are padded.
  valid = np.arange(q_len)[None, :] < np.asarray(q_lengths)[:, None]  # [batch, q_len]
  np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(expected)[valid], atol=1e-6)
  assert not np.asarray(mask)[:, 0][~valid].any()


def test_combined_matches_jax_nn():
  """is_causal + window + kv lengths together equal and_masks of the three makers."""
  q_len = kv_len = 6
  kv_lengths = jnp.array([6, 4], jnp.int32)
  kwargs = dict(is_causal=True, local_window_size=(2, 1), key_value_seq_lengths=kv_lengths)
  mask = masks.and_masks(
      masks.make_causal_mask(q_len, kv_len),
      masks.make_local_mask(q_len, kv_len, (2, 1)),
      masks.make_padding_mask(q_len, kv_len, key_value_seq_lengths=kv_lengths))
  np.testing.assert_array_equal(_jax_nn_mask(2, q_len, kv_len, **kwargs), mask)
  query, key, value = _random_qkv(2, q_len, kv_len, seed=3)
  expected = _nn_attention(query, key, value, **kwargs)
  got = _nn_attention(query, key, value, mask=mask)
  np.testing.assert_allclose(got, expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# jit: sizes static, lengths and segment ids traced.


def test_jit_matches_eager():
  q_lengths, kv_lengths = jnp.array([1, 3]), jnp.array([2, 4])
  padding = jax.jit(masks.make_padding_mask, static_argnums=(0, 1))
  np.testing.assert_array_equal(
      padding(3, 4, q_lengths, kv_lengths), masks.make_padding_mask(3, 4, q_lengths, kv_lengths))

  ids = jnp.array([[0, 0, 1, 1, 1]])
  np.testing.assert_array_equal(jax.jit(masks.make_segment_mask)(ids), masks.make_segment_mask(ids))

  causal = jax.jit(masks.make_causal_mask, static_argnums=(0, 1))
  np.testing.assert_array_equal(causal(3, 5), masks.make_causal_mask(3, 5))
  local = jax.jit(masks.make_local_mask, static_argnums=(0, 1, 2))
  np.testing.assert_array_equal(local(4, 4, (1, 2)), masks.make_local_mask(4, 4, (1, 2)))

  combined = jax.jit(lambda lengths: masks.and_masks(
      masks.make_causal_mask(3), masks.make_padding_mask(3, 3, key_value_seq_lengths=lengths)))
  np.testing.assert_array_equal(
      combined(jnp.array([2]))[0, 0], [[1, 0, 0], [1, 1, 0], [1, 1, 0]])


# ---------------------------------------------------------------------------------------------
# Errors.


def test_padding_errors():
  with pytest.raises(ValueError, match=r"query_seq_lengths must be \[batch\].*\(2, 1\)"):
    masks.make_padding_mask(3, 3, query_seq_lengths=jnp.ones((2, 1), jnp.int32))
  with pytest.raises(ValueError, match=r"key_value_seq_lengths must be \[batch\].*\(\)"):
    masks.make_padding_mask(3, 3, key_value_seq_lengths=jnp.array(2))
  with pytest.raises(ValueError, match="integers.*float32"):
    masks.make_padding_mask(3, 3, query_seq_lengths=jnp.array([1.0]))
  with pytest.raises(ValueError, match=r"share \[batch\].*\(2,\).*\(3,\)"):
    masks.make_padding_mask(3, 3, jnp.array([1, 2]), jnp.array([1, 2, 3]))
  with pytest.raises(ValueError, match="q_len"):
    masks.make_padding_mask(-1, 3)


def test_segment_errors():
  with pytest.raises(ValueError, match=r"query_segment_ids must be \[batch, q_len\].*\(4,\)"):
    masks.make_segment_mask(jnp.array([1, 1, 2, 2]))
  with pytest.raises(ValueError, match=r"key_segment_ids must be \[batch, kv_len\].*\(1, 2, 3\)"):
    masks.make_segment_mask(jnp.ones((1, 2), jnp.int32), jnp.ones((1, 2, 3), jnp.int32))
  with pytest.raises(ValueError, match=r"batch size.*\(2, 3\).*\(1, 3\)"):
    masks.make_segment_mask(jnp.ones((2, 3), jnp.int32), jnp.ones((1, 3), jnp.int32))


def test_size_and_window_errors():
  with pytest.raises(ValueError, match="window"):
    masks.make_local_mask(3, 3, -1)
  with pytest.raises(ValueError, match=r"window \(right\)"):
    masks.make_local_mask(3, 3, (1, -2))
  with pytest.raises(ValueError, match=r"\(left, right\)"):
    masks.make_local_mask(3, 3, (1, 2, 3))
  with pytest.raises(ValueError, match="static"):
    masks.make_local_mask(3, 3, 1.5)
  with pytest.raises(ValueError, match="kv_len"):
    masks.make_causal_mask(3, -2)
  with pytest.raises(ValueError, match="static"):
    jax.jit(masks.make_causal_mask)(3)


def test_combinator_errors():
  with pytest.raises(ValueError, match=r"\(1, 1, 3, 3\).*\(1, 1, 4, 4\)"):
    masks.and_masks(masks.make_causal_mask(3), masks.make_causal_mask(4))
  with pytest.raises(ValueError, match="boolean.*float32"):
    masks.or_masks(masks.make_causal_mask(3), jnp.ones((3, 3)))
