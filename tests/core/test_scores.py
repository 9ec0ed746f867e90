"""Tests for attn_jax/core/scores.py: literal values, a numpy reference, shapes, dtypes, lookup.

Every score takes query [q_len, key_dim], key [kv_len, key_dim] and params, and returns logits
[q_len, kv_len]; the hand-worked cases use 2x2 arrays so the expected numbers can be read off.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.core import scores

Q = jnp.array([[1.0, 2.0], [3.0, 4.0]])
K = jnp.array([[1.0, 1.0], [2.0, -1.0]])
# Q @ K.T, worked out by hand: [1+2, 2-2], [3+4, 6-4].
QK = np.array([[3.0, 0.0], [7.0, 2.0]])


# ----------------------------------------------------------------------------- by hand


def test_dot_by_hand_scale_one_is_the_plain_product():
  np.testing.assert_allclose(scores.dot(Q, K, scale=1.0), QK, rtol=1e-6)


def test_dot_by_hand_default_scale_is_inverse_sqrt_key_dim():
  np.testing.assert_allclose(scores.dot(Q, K), QK / np.sqrt(2.0), rtol=1e-6)


def test_dot_by_hand_scale_override():
  expected = np.array([[1.5, 0.0], [3.5, 1.0]])
  np.testing.assert_allclose(scores.dot(Q, K, scale=0.5), expected, rtol=1e-6)
  bound = functools.partial(scores.dot, scale=0.5)  # the pipeline's calling convention
  np.testing.assert_allclose(bound(Q, K, None), expected, rtol=1e-6)


def test_cosine_by_hand():
  query = jnp.array([[3.0, 4.0], [1.0, 0.0]])  # unit: [.6, .8], [1, 0]
  key = jnp.array([[4.0, 3.0], [0.0, 2.0]])  # unit: [.8, .6], [0, 1]
  cos = np.array([[0.96, 0.8], [0.8, 0.0]])
  np.testing.assert_allclose(scores.cosine(query, key), cos * np.sqrt(2.0), rtol=1e-5)
  np.testing.assert_allclose(scores.cosine(query, key, scale=10.0), cos * 10.0, rtol=1e-5)


def test_additive_by_hand():
  query = jnp.array([[1.0, 0.0]])
  key = jnp.array([[0.0, 1.0], [2.0, 0.0]])
  params = {"w_query": jnp.eye(2), "w_key": jnp.eye(2), "v": jnp.array([2.0, 1.0])}
  # W_q q + W_k k = [1, 1] and [3, 0]; v . tanh(.) = 2 tanh(1) + tanh(1), 2 tanh(3) + tanh(0).
  expected = np.array([[3 * np.tanh(1.0), 2 * np.tanh(3.0)]])
  np.testing.assert_allclose(scores.additive(query, key, params), expected, rtol=1e-6)


def test_bilinear_by_hand():
  query = jnp.array([[1.0, 2.0]])
  w = jnp.array([[1.0, 0.0], [1.0, 1.0]])  # q^T W = [1 + 2, 2] = [3, 2]
  key = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  np.testing.assert_allclose(scores.bilinear(query, key, {"w": w}), [[3.0, 2.0, 5.0]], rtol=1e-6)


# ----------------------------------------------------------------------------- numpy reference


def _np_normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def pair(rng):
  return rng.standard_normal((3, 4)), rng.standard_normal((5, 4))


def test_parameter_free_scores_match_numpy(pair):
  query, key = pair
  q, k = jnp.asarray(query, jnp.float32), jnp.asarray(key, jnp.float32)
  np.testing.assert_allclose(scores.dot(q, k, scale=1.0), query @ key.T, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(scores.dot(q, k), query @ key.T / 2.0, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      scores.dot(q, k, scale=0.3), 0.3 * query @ key.T, rtol=1e-5, atol=1e-6)
  expected_cos = _np_normalize(query) @ _np_normalize(key).T
  np.testing.assert_allclose(scores.cosine(q, k), 2.0 * expected_cos, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(scores.cosine(q, k, scale=7.0), 7.0 * expected_cos, rtol=1e-5,
                             atol=1e-6)


def test_additive_matches_numpy_with_different_query_and_key_dims(rng):
  query, key = rng.standard_normal((3, 6)), rng.standard_normal((5, 4))
  params = {"w_query": rng.standard_normal((6, 8)), "w_key": rng.standard_normal((4, 8)),
            "v": rng.standard_normal(8)}
  expected = np.array([[np.tanh(params["w_query"].T @ q + params["w_key"].T @ k) @ params["v"]
                        for k in key] for q in query])
  got = scores.additive(jnp.asarray(query, jnp.float32), jnp.asarray(key, jnp.float32),
                        jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params))
  assert got.shape == (3, 5)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_bilinear_matches_numpy_with_different_query_and_key_dims(rng):
  query, key = rng.standard_normal((3, 6)), rng.standard_normal((5, 4))
  w = rng.standard_normal((6, 4))
  expected = np.array([[q @ w @ k for k in key] for q in query])
  got = scores.bilinear(*(jnp.asarray(x, jnp.float32) for x in (query, key)),
                        {"w": jnp.asarray(w, jnp.float32)})
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- cosine specifics


def test_cosine_logits_lie_in_minus_scale_to_scale_and_reach_both_ends(rng):
  query = jnp.asarray(1e3 * rng.standard_normal((6, 8)), jnp.float32)  # norm plays no role
  key = jnp.concatenate([query[:1] * 1e-2, -query[:1] * 5.0, query[1:]], axis=0)
  for scale in (None, 0.5, 30.0):
    bound = np.sqrt(8.0) if scale is None else scale
    logits = np.asarray(scores.cosine(query, key, scale=scale))
    assert np.all(np.abs(logits) <= bound * (1 + 1e-6))
    np.testing.assert_allclose(logits[0, :2], [bound, -bound], rtol=1e-5)


def test_cosine_zero_vector_gives_finite_logits_and_gradients():
  query = jnp.array([[0.0, 0.0], [1.0, 2.0]])
  key = jnp.array([[0.0, 0.0], [3.0, -1.0]])
  logits = scores.cosine(query, key)
  np.testing.assert_array_equal(logits[0], [0.0, 0.0])
  np.testing.assert_array_equal(logits[:, 0], [0.0, 0.0])
  loss = lambda q, k: jnp.sum(scores.cosine(q, k) ** 2 + scores.cosine(q, k))
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(query, key)
  for g in grads:
    assert np.all(np.isfinite(g))


# ----------------------------------------------------------------------------- dtypes, vmap


@pytest.mark.parametrize("fn", [scores.dot, functools.partial(scores.dot, scale=1.0),
                                scores.cosine], ids=["dot", "dot_scale_one", "cosine"])
def test_bfloat16_inputs_give_float32_logits(fn, pair):
  query, key = (jnp.asarray(x, jnp.bfloat16) for x in pair)
  logits = fn(query, key, None)
  assert logits.dtype == jnp.float32
  expected = fn(query.astype(jnp.float32), key.astype(jnp.float32), None)
  np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-6)


def test_dot_vmapped_over_heads_equals_batched_einsum(rng):
  query, key = rng.standard_normal((3, 2, 4)), rng.standard_normal((5, 2, 4))  # [T|S, N, D]
  got = jax.vmap(scores.dot, in_axes=(1, 1, None))(
      jnp.asarray(query, jnp.float32), jnp.asarray(key, jnp.float32), None)  # [N, T, S]
  np.testing.assert_allclose(got, np.einsum("tnd,snd->nts", query, key) / 2.0, rtol=1e-5,
                             atol=1e-6)


# ----------------------------------------------------------------------------- errors, lookup


@pytest.mark.parametrize("fn", [scores.dot, functools.partial(scores.dot, scale=1.0),
                                scores.cosine], ids=["dot", "dot_scale_one", "cosine"])
def test_mismatched_key_dim_raises_naming_shapes(fn):
  with pytest.raises(ValueError, match=r"\(3, 4\).*\(5, 6\)"):
    fn(jnp.ones((3, 4)), jnp.ones((5, 6)), None)


@pytest.mark.parametrize("name", list(scores.SCORES))
def test_not_one_head_raises_naming_shapes(name):
  params = {"w_query": jnp.ones((4, 2)), "w_key": jnp.ones((4, 2)), "v": jnp.ones(2),
            "w": jnp.ones((4, 4))}
  with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
    scores.get_score(name)(jnp.ones((2, 3, 4)), jnp.ones((5, 4)), params)


def test_bilinear_wrong_weight_shape_raises_naming_shapes():
  with pytest.raises(ValueError, match=r"\(4, 6\).*\(6, 4\)"):
    scores.bilinear(jnp.ones((3, 4)), jnp.ones((5, 6)), {"w": jnp.ones((6, 4))})


def test_get_score_returns_the_registered_functions():
  # "dot" means the scaled dot product, as in the batched API and the modules.
  assert list(scores.SCORES) == ["dot", "cosine", "additive", "bilinear"]
  for name, fn in [("dot", scores.dot), ("cosine", scores.cosine),
                   ("additive", scores.additive), ("bilinear", scores.bilinear)]:
    assert scores.get_score(name) is fn
  assert set(scores.PARAMETER_FREE) <= set(scores.SCORES)


def test_get_score_old_scaled_dot_name_points_at_dot_with_scale():
  with pytest.raises(ValueError, match="'dot'.*scale"):
    scores.get_score("scaled_dot")
  assert not hasattr(scores, "scaled_dot")


def test_get_score_unknown_name_raises_listing_known_names():
  with pytest.raises(ValueError, match="'nope'.*bilinear"):
    scores.get_score("nope")
