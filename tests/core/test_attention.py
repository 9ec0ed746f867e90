"""Tests for attn_jax/core/attention.py: `combine`, `attend` (one head), `multi_head_attend`.

Three ways: values by hand (one query, two keys), an independent reference (flax.nnx's own
attention math), and equivalences between paths (vmapped heads == a Python loop over heads ==
the batched einsum of `core.batched.xla_attention`; grouped-query heads == repeated kv heads).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.nnx.nn.attention import dot_product_attention_weights as nnx_attention_weights

from attn_jax.core import batched, scores
from attn_jax.core.attention import attend, combine, multi_head_attend

E = np.e
T, S, H = 3, 5, 4  # q_len, kv_len, head_dim shared by the multi-head tests

# Jitted once per static configuration: eager vmap dispatches (and compiles) every primitive for
# each new head layout, which costs seconds on CPU. One test below checks jit == eager. The per-head
# loop stays eager: one head has the same shapes in every test, so its primitives compile once.
mha = jax.jit(multi_head_attend, static_argnames=("score_fn", "params_per_head", "return_weights"))


# ----------------------------------------------------------------------------- by hand


def test_combine_by_hand():
  weights = jnp.array([[0.25, 0.75], [1.0, 0.0]])
  value = jnp.array([[1.0, 2.0], [3.0, 4.0]])
  np.testing.assert_allclose(combine(weights, value), [[2.5, 3.5], [1.0, 2.0]], rtol=1e-6)
  assert combine(weights, value.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_combine_bad_shapes_raise_naming_shapes():
  with pytest.raises(ValueError, match=r"\(1, 3\).*\(2, 2\)"):
    combine(jnp.ones((1, 3)), jnp.ones((2, 2)))


QUERY = jnp.array([[1.0, 0.0]])  # one query
KEY = jnp.array([[1.0, 0.0], [0.0, 1.0]])  # two keys: logits (dot) [1, 0]
VALUE = jnp.array([[1.0, 0.0], [0.0, 1.0]])
ONE = functools.partial(scores.dot, scale=1.0)  # the plain product q . k


def test_attend_by_hand():
  out, weights = attend(QUERY, KEY, VALUE, score_fn=ONE, return_weights=True)
  np.testing.assert_allclose(weights, [[E / (1 + E), 1 / (1 + E)]], rtol=1e-6)
  np.testing.assert_allclose(out, [[E / (1 + E), 1 / (1 + E)]], rtol=1e-6)
  # The default score is the scaled dot product: logits [1/sqrt(2), 0].
  c = np.exp(2**-0.5)
  np.testing.assert_allclose(attend(QUERY, KEY, VALUE), [[c / (1 + c), 1 / (1 + c)]], rtol=1e-6)


def test_attend_by_hand_with_bias_and_mask():
  out = attend(QUERY, KEY, VALUE, score_fn=ONE, bias=jnp.array([0.0, 1.0]))
  np.testing.assert_allclose(out, [[0.5, 0.5]], rtol=1e-6)  # logits [1, 1]
  out, weights = attend(QUERY, KEY, VALUE, score_fn=ONE, mask=jnp.array([False, True]),
                        return_weights=True)
  np.testing.assert_array_equal(weights, [[0.0, 1.0]])
  np.testing.assert_array_equal(out, [[0.0, 1.0]])


def test_attend_fully_masked_row_gives_zeros():
  query = jnp.concatenate([QUERY, -QUERY])
  mask = jnp.array([[True, True], [False, False]])
  out, weights = attend(query, KEY, VALUE, mask=mask, return_weights=True)
  np.testing.assert_array_equal(out[1], [0.0, 0.0])
  np.testing.assert_array_equal(weights[1], [0.0, 0.0])
  np.testing.assert_allclose(weights[0].sum(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("garbage", [np.nan, 1e30])
def test_attend_garbage_in_unseen_key_value_rows_changes_nothing(garbage):
  key = jnp.concatenate([KEY, jnp.ones((1, 2))])  # row 2 is masked for every query
  value = jnp.concatenate([VALUE, jnp.ones((1, 2))])
  mask = jnp.array([True, True, False])
  poison = lambda x: x.at[2].set(garbage)
  loss = lambda q, k, v: jnp.sum(attend(q, k, v, mask=mask) * jnp.array([1.0, -2.0]))
  value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  clean_loss, clean_grads = value_and_grad(QUERY, key, value)
  dirty_loss, dirty_grads = value_and_grad(QUERY, poison(key), poison(value))
  np.testing.assert_array_equal(dirty_loss, clean_loss)
  for dirty, clean in zip(dirty_grads, clean_grads, strict=True):
    assert np.all(np.isfinite(dirty))
    np.testing.assert_array_equal(dirty, clean)


def test_attend_bfloat16_returns_query_dtype_and_float32_like_numbers():
  out, weights = attend(QUERY.astype(jnp.bfloat16), KEY.astype(jnp.bfloat16),
                        VALUE.astype(jnp.bfloat16), return_weights=True)
  assert out.dtype == jnp.bfloat16 and weights.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), attend(QUERY, KEY, VALUE), atol=1e-2)


def test_attend_mismatched_key_value_raises_naming_shapes():
  with pytest.raises(ValueError, match=r"\(2, 2\).*\(3, 2\)"):
    attend(QUERY, KEY, jnp.ones((3, 2)))


# ----------------------------------------------------------------------------- multi-head


def _qkv(rng, num_heads=2, num_kv_heads=2, dtype=jnp.float32):
  shapes = [(T, num_heads, H), (S, num_kv_heads, H), (S, num_kv_heads, H)]
  return [jnp.asarray(rng.standard_normal(s), dtype) for s in shapes]


def _mask_and_bias(rng, num_heads):
  """Per-head mask [N, T, S] with a fully masked row (head 0, query 1) and bias [N, T, S]."""
  mask = rng.random((num_heads, T, S)) < 0.6
  mask[:, :, 0] = True
  mask[0, 1] = False
  return jnp.asarray(mask), jnp.asarray(rng.standard_normal((num_heads, T, S)), jnp.float32)


def _loop_over_heads(query, key, value, *, params_of=lambda n: None, bias=None, mask=None,
                     score_fn=scores.dot):
  """The multi-head definition as a Python loop: head n reads kv head n // (N // K)."""
  groups = query.shape[1] // key.shape[1]
  outs = [attend(query[:, n], key[:, n // groups], value[:, n // groups], score_fn=score_fn,
                 params=params_of(n), bias=None if bias is None else bias[n],
                 mask=None if mask is None else mask[n])
          for n in range(query.shape[1])]
  return jnp.stack(outs, axis=1)  # [T, N, H]


@pytest.mark.parametrize("num_heads,num_kv_heads", [(2, 2), (4, 2), (4, 1)])
def test_vmapped_heads_equal_loop_over_heads_and_batched_einsum(rng, num_heads, num_kv_heads):
  query, key, value = _qkv(rng, num_heads, num_kv_heads)
  mask, bias = _mask_and_bias(rng, num_heads)
  out, weights = mha(query, key, value, bias=bias, mask=mask, return_weights=True)
  assert out.shape == (T, num_heads, H) and weights.shape == (num_heads, T, S)
  np.testing.assert_allclose(out, _loop_over_heads(query, key, value, bias=bias, mask=mask),
                             atol=1e-6)
  einsum_out = batched.xla_attention(query[None], key[None], value[None], bias[None],
                                     mask[None], scale=H**-0.5)[0]
  np.testing.assert_allclose(out, einsum_out, atol=1e-6)
  np.testing.assert_array_equal(out[1, 0], np.zeros(H))  # head 0, query 1: fully masked
  np.testing.assert_allclose(np.asarray(weights).sum(-1)[np.asarray(mask).any(-1)], 1.0,
                             rtol=1e-6)


def test_grouped_query_heads_equal_repeated_kv_heads(rng):
  query, key, value = _qkv(rng, num_heads=4, num_kv_heads=2)
  mask, bias = _mask_and_bias(rng, 4)
  repeat = functools.partial(jnp.repeat, repeats=2, axis=1)  # kv head k serves query heads 2k, 2k+1
  np.testing.assert_allclose(
      mha(query, key, value, bias=bias, mask=mask),
      mha(query, repeat(key), repeat(value), bias=bias, mask=mask), atol=1e-6)


def test_shared_bias_and_mask_broadcast_over_heads(rng):
  query, key, value = _qkv(rng, num_heads=4, num_kv_heads=2)
  mask, bias = _mask_and_bias(rng, 1)  # [1, T, S]
  full = lambda x: jnp.broadcast_to(x, (4, T, S))
  np.testing.assert_allclose(
      mha(query, key, value, bias=bias[0], mask=mask),
      mha(query, key, value, bias=full(bias), mask=full(mask)), atol=1e-6)


def _score_params(rng, name, lead=()):
  if name == "additive":
    return {"w_query": rng.standard_normal((*lead, H, 6)),
            "w_key": rng.standard_normal((*lead, H, 6)), "v": rng.standard_normal((*lead, 6))}
  return {"w": rng.standard_normal((*lead, H, H))}


@pytest.mark.parametrize("name", ["additive", "bilinear"])
@pytest.mark.parametrize("per_head", [False, True], ids=["shared", "per_head"])
def test_parameterised_scores_through_multi_head_attend(rng, name, per_head):
  query, key, value = _qkv(rng, num_heads=4, num_kv_heads=2)
  mask, _ = _mask_and_bias(rng, 4)
  params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32),
                        _score_params(rng, name, lead=(4,) if per_head else ()))
  score_fn = scores.get_score(name)
  out = mha(query, key, value, score_fn=score_fn, params=params,
                          params_per_head=per_head, mask=mask)
  params_of = ((lambda n: jax.tree.map(lambda p: p[n], params)) if per_head
               else (lambda n: params))
  expected = _loop_over_heads(query, key, value, params_of=params_of, mask=mask,
                              score_fn=score_fn)
  np.testing.assert_allclose(out, expected, atol=1e-5)
  if per_head:  # the heads really use different weights
    shared = mha(query, key, value, score_fn=score_fn, mask=mask,
                               params=jax.tree.map(lambda p: p[0], params))
    assert not np.allclose(out[:, 1:], shared[:, 1:], atol=1e-3)


@pytest.mark.parametrize("num_heads,num_kv_heads", [(2, 2), (4, 2)])
def test_matches_flax_nnx_attention_on_rows_with_an_allowed_key(rng, num_heads, num_kv_heads):
  query, key, value = _qkv(rng, num_heads, num_kv_heads)
  mask, bias = _mask_and_bias(rng, num_heads)
  # dropout_rate > 0 with deterministic=True: no dropout, but it keeps flax on its own einsum and
  # softmax instead of forwarding to jax.nn.dot_product_attention: an independent reference.
  expected = nnx.dot_product_attention(query, key, value, bias=bias, mask=mask, dropout_rate=0.5,
                                       deterministic=True)
  expected_weights = nnx_attention_weights(
      query, key, bias=bias, mask=mask, dropout_rate=0.5, deterministic=True)
  out, weights = mha(query, key, value, bias=bias, mask=mask, return_weights=True)
  ok_NT = np.asarray(mask).any(-1)  # [N, T]
  np.testing.assert_allclose(np.asarray(out)[ok_NT.T], np.asarray(expected)[ok_NT.T], atol=1e-5)
  np.testing.assert_allclose(np.asarray(weights)[ok_NT], np.asarray(expected_weights)[ok_NT],
                             atol=1e-6)


def test_multi_head_attend_jit_equals_eager(rng):
  query, key, value = _qkv(rng, num_heads=4, num_kv_heads=2)
  mask, bias = _mask_and_bias(rng, 4)
  eager = multi_head_attend(query, key, value, bias=bias, mask=mask)
  jitted = mha(query, key, value, bias=bias, mask=mask)
  np.testing.assert_allclose(jitted, eager, atol=1e-6)


@pytest.mark.parametrize("shapes,match", [
    (((T, 3, H), (S, 2, H), (S, 2, H)), r"\(3, 3, 4\).*\(5, 2, 4\)"),  # 3 heads, 2 kv heads
    (((T, 2, H), (S, 2, H), (S, 2)), r"\(5, 2\)"),  # value not 3-D
])
def test_multi_head_attend_bad_shapes_raise_naming_shapes(shapes, match):
  with pytest.raises(ValueError, match=match):
    multi_head_attend(*(jnp.ones(s) for s in shapes))


def test_multi_head_attend_bad_mask_shape_raises_naming_it():
  query, key, value = (jnp.ones(s) for s in [(T, 4, H), (S, 2, H), (S, 2, H)])
  with pytest.raises(ValueError, match=r"\(2, 3, 5\)"):  # 2 mask heads for 4 query heads
    multi_head_attend(query, key, value, mask=jnp.ones((2, T, S), bool))


# ----------------------------------------------------------------------------- mods: one signature


def test_attend_score_mod_sees_indices_by_hand():
  # score + 10 * kv_idx + 100 * b + 1000 * h, with b = 3, h = 2 given: logits [1, 0] + [0, 10]
  # + 3300 -> weights softmax([1, 10]).
  mod = lambda s, b, h, q, kv: s + 10.0 * kv + 100.0 * b + 1000.0 * h
  out, weights = attend(QUERY, KEY, VALUE, score_fn=ONE, score_mod=mod, batch_index=3,
                        head_index=2, return_weights=True)
  expected = np.exp([1.0, 10.0]) / np.exp([1.0, 10.0]).sum()
  np.testing.assert_allclose(weights[0], expected, rtol=1e-5)
  # b = h = 0 by default: a mod that reads them sees zeros.
  seen = attend(QUERY, KEY, VALUE, score_mod=lambda s, b, h, q, kv: s + 0.0 * b + h,
                return_weights=True)[1]
  np.testing.assert_allclose(seen, attend(QUERY, KEY, VALUE, return_weights=True)[1], rtol=1e-6)


def test_attend_mask_mod_equals_dense_mask():
  mask_mod = lambda b, h, q, kv: kv >= 1
  got = attend(QUERY, KEY, VALUE, mask_mod=mask_mod)
  np.testing.assert_array_equal(got, attend(QUERY, KEY, VALUE, mask=jnp.array([False, True])))


def test_multi_head_attend_score_mod_h_is_the_query_head(rng):
  query, key, value = _qkv(rng, 4, 2)
  slopes = jnp.array([0.1, 0.5, 1.0, 2.0])
  mod = lambda s, b, h, q, kv: s - slopes[h] * jnp.abs(q - kv)
  got = multi_head_attend(query, key, value, score_mod=mod)
  distance = jnp.abs(jnp.arange(T)[:, None] - jnp.arange(S)[None, :])
  bias = -slopes[:, None, None] * distance  # [N, T, S]
  np.testing.assert_allclose(got, _loop_over_heads(query, key, value, bias=bias), atol=1e-6)


@pytest.mark.parametrize("old", [lambda logits: logits, lambda logits, head: logits])
def test_old_style_score_mod_raises_type_error_naming_the_signature(rng, old):
  with pytest.raises(TypeError, match=r"score, b, h, q_idx, kv_idx"):
    attend(QUERY, KEY, VALUE, score_mod=old)
  query, key, value = _qkv(rng)
  with pytest.raises(TypeError, match=r"score, b, h, q_idx, kv_idx"):
    multi_head_attend(query, key, value, score_mod=old)


def test_short_mask_mod_raises_type_error_naming_the_signature():
  with pytest.raises(TypeError, match=r"b, h, q_idx, kv_idx"):
    attend(QUERY, KEY, VALUE, mask_mod=lambda q, kv: q >= kv)
