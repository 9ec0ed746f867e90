"""Tests for attn_jax/core/softmax.py: `masked_softmax` by hand, against jax.nn, and at the edges.

The edges are the reason the function exists: fully masked rows (zeros with zero, finite
gradients), huge logits, garbage (NaN, +-1e30, +-inf) at masked positions, and bf16 inputs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from attn_jax.core.softmax import masked_softmax

E = np.e


def test_by_hand_without_mask():
  np.testing.assert_allclose(masked_softmax(jnp.array([0.0, 1.0])), np.array([1, E]) / (1 + E),
                             rtol=1e-6)


def test_by_hand_with_mask():
  logits = jnp.array([[0.0, 1.0, 100.0], [2.0, 2.0, 2.0]])
  mask = jnp.array([[True, True, False], [True, False, True]])
  expected = np.array([[1, E, 0], [0.5, 0, 0.5]]) / np.array([[1 + E], [1]])
  got = masked_softmax(logits, mask)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert got[0, 2] == 0.0 and got[1, 1] == 0.0  # masked weights are exact zeros


def test_mask_broadcasts_and_axis_argument(rng):
  logits = jnp.asarray(rng.standard_normal((4, 5)), jnp.float32)
  mask_1S = jnp.array([[True, False, True, True, False]])
  np.testing.assert_allclose(masked_softmax(logits, mask_1S),
                             masked_softmax(logits, jnp.broadcast_to(mask_1S, (4, 5))), rtol=0)
  np.testing.assert_allclose(masked_softmax(logits.T, mask_1S.T, axis=0),
                             masked_softmax(logits, mask_1S).T, rtol=1e-6)


@pytest.fixture
def logits_and_mask(rng):
  """Logits [3, 4, 6] and a mask with random holes, row [0, 1] fully masked, row [2, 3] full."""
  logits = rng.standard_normal((3, 4, 6)).astype(np.float32)
  mask = rng.random((3, 4, 6)) < 0.6
  mask[0, 1] = False
  mask[2, 3] = True
  return jnp.asarray(logits), jnp.asarray(mask)


def test_matches_jax_nn_softmax_where_on_rows_with_an_allowed_position(logits_and_mask):
  logits, mask = logits_and_mask
  got = np.asarray(masked_softmax(logits, mask))
  expected = np.asarray(jnp.where(mask, jax.nn.softmax(logits, where=mask), 0.0))
  ok = np.asarray(mask).any(-1)
  assert (~ok).sum() >= 1 and ok.sum() >= 10
  np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got[ok].sum(-1), 1.0, rtol=1e-6)


def test_fully_masked_rows_are_zeros_with_zero_finite_gradient(logits_and_mask, rng):
  logits, mask = logits_and_mask
  np.testing.assert_array_equal(masked_softmax(logits, mask)[0, 1], np.zeros(6))
  cotangent = jnp.asarray(rng.standard_normal(logits.shape), jnp.float32)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(masked_softmax(x, mask) * cotangent)))(logits)
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(grad[0, 1], np.zeros(6))
  np.testing.assert_array_equal(np.asarray(grad)[~np.asarray(mask)], 0.0)
  all_masked = jnp.zeros((2, 3), bool)
  np.testing.assert_array_equal(masked_softmax(logits[0, :2, :3], all_masked), np.zeros((2, 3)))


def test_huge_logits_are_stable(logits_and_mask):
  logits, mask = logits_and_mask
  big = logits * 1e4
  got = np.asarray(masked_softmax(big, mask))
  assert np.all(np.isfinite(got))
  expected = np.asarray(jnp.where(mask, jax.nn.softmax(big, where=mask), 0.0))
  ok = np.asarray(mask).any(-1)
  np.testing.assert_allclose(got[ok], expected[ok], atol=1e-6)
  np.testing.assert_allclose(got[ok].sum(-1), 1.0, rtol=1e-6)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(masked_softmax(x, mask)[..., 0])))(big)
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("garbage", [np.nan, 1e30, -1e30, np.inf, -np.inf])
def test_garbage_at_masked_logits_changes_neither_value_nor_gradient(
    garbage, logits_and_mask, rng):
  logits, mask = logits_and_mask
  poisoned = jnp.where(mask, logits, garbage)
  cotangent = jnp.asarray(rng.standard_normal(logits.shape), jnp.float32)
  value_and_grad = jax.jit(jax.value_and_grad(
      lambda x: jnp.sum(masked_softmax(x, mask) * cotangent)))
  np.testing.assert_array_equal(masked_softmax(poisoned, mask), masked_softmax(logits, mask))
  (clean_value, clean_grad), (value, grad) = value_and_grad(logits), value_and_grad(poisoned)
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(value, clean_value)
  np.testing.assert_array_equal(grad, clean_grad)


def _bf16_internal_softmax(logits):
  # What masked_softmax would give if it did its arithmetic in bf16: the contrast for the test.
  shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
  unnormalized = jnp.exp(shifted)
  return unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True)


def test_bfloat16_in_bfloat16_out_computed_in_float32(logits_and_mask):
  logits, mask = logits_and_mask
  logits_bf16 = (logits * 3).astype(jnp.bfloat16)
  got = masked_softmax(logits_bf16, mask)
  assert got.dtype == jnp.bfloat16
  in_f32 = masked_softmax(logits_bf16.astype(jnp.float32), mask).astype(jnp.bfloat16)
  np.testing.assert_array_equal(got.astype(jnp.float32), in_f32.astype(jnp.float32))
  # The comparison can tell the two apart: bf16 arithmetic rounds differently somewhere.
  assert np.any(np.asarray(_bf16_internal_softmax(logits_bf16) != masked_softmax(logits_bf16)))


@pytest.mark.usefixtures("x64")
def test_check_grads_order_2_in_float64(rng):
  logits = jnp.asarray(rng.standard_normal((3, 4)), jnp.float64)
  mask = jnp.array([[True, False, True, True], [False] * 4, [True] * 4])
  assert masked_softmax(logits, mask).dtype == jnp.float64
  # Jitted: check_grads traces jvp-of-jvp and vjp-of-vjp; one compile each beats eager dispatch.
  check_grads(jax.jit(lambda x: masked_softmax(x, mask)), (logits,), order=2, modes=("fwd", "rev"))
