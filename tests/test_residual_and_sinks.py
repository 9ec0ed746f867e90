"""`return_residual` and `sinks` of `attn_jax.dot_product_attention`, on every implementation.

The residual is checked against jax.nn's own (``return_residual=True``) wherever a row sees a key,
against ``-inf`` where it sees none, and by its use: two calls over disjoint key sets merge into the
call over their union (outputs and gradients). Sinks are checked against a dense computation
written out here, gradients (into query, key, value and the sinks) against autodiff of it, and by
hand. The chunked kernel runs with small blocks and per-example block lists, so its online softmax
and its backward pass see several blocks.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attn_jax
from attn_jax.core import chunked, cudnn

B, T, S, N, K, H = 2, 12, 10, 4, 2, 8
IMPLEMENTATIONS = (None, "reference", "xla", "chunked")


def _draw(*shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _inputs():
  query, key, value = _draw(B, T, N, H), _draw(B, S, K, H, seed=1), _draw(B, S, K, H, seed=2)
  mask = np.random.default_rng(3).random((B, N, T, S)) < 0.6
  mask[0, :, 2] = False  # example 0, query 2 sees nothing (every head)
  mask[1, 1, 5] = False  # example 1, head 1, query 5 sees nothing
  return query, key, value, jnp.asarray(mask)


def _attention(implementation):
  if implementation == "chunked":  # several blocks and per-example block lists
    return functools.partial(chunked.chunked_attention, block_q=4, block_k=4)
  return functools.partial(attn_jax.dot_product_attention, implementation=implementation)


def _rows_seen(mask):  # [B, N, T, S] -> [B, T, N]
  return np.swapaxes(np.asarray(mask).any(-1), 1, 2)


def _dense(query, key, value, mask, sinks=None, bias=None):
  """The definition written out: -> (out [B, T, N, H], residual [B, T, N])."""
  groups = N // K
  key, value = jnp.repeat(key, groups, axis=2), jnp.repeat(value, groups, axis=2)
  logits = jnp.einsum("btnh,bsnh->bnts", query, key) / np.sqrt(H)
  if bias is not None:
    logits = logits + bias
  logits = jnp.where(mask, logits, -1e30)
  if sinks is not None:  # the sink as one more key, with no value
    sink = jnp.broadcast_to(sinks[None, :, None, None], (*logits.shape[:3], 1))
    logits = jnp.concatenate([logits, sink], axis=-1)
    value = jnp.concatenate([value, jnp.zeros_like(value[:, :1])], axis=1)
    mask = jnp.concatenate([jnp.broadcast_to(mask, logits.shape[:3] + (S,)),
                            jnp.ones(sink.shape, bool)], axis=-1)
  mask = jnp.broadcast_to(mask, logits.shape)
  finite = jax.nn.logsumexp(logits, axis=-1)  # masked logits are -1e30: exp gives exactly 0
  seen = jnp.any(mask, axis=-1)
  weights = jnp.where(mask, jnp.exp(logits - jnp.where(seen, finite, 0.0)[..., None]), 0.0)
  out = jnp.einsum("bnts,bsnh->btnh", weights, value)
  residual = jnp.where(seen, finite, -jnp.inf)  # [B, N, T]
  return out, jnp.swapaxes(residual, 1, 2)


# ----------------------------------------------------------------------------- residual


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=str)
def test_residual_equals_jax_nn_and_is_minus_inf_where_nothing_is_seen(implementation):
  query, key, value, mask = _inputs()
  out, residual = _attention(implementation)(query, key, value, mask=mask, return_residual=True)
  want_out, want = jax.nn.dot_product_attention(query, key, value, mask=mask,
                                                return_residual=True)
  assert residual.shape == (B, T, N) and residual.dtype == jnp.float32
  seen = _rows_seen(mask)
  np.testing.assert_allclose(np.where(seen, residual, 0.0), np.where(seen, want, 0.0), atol=1e-5)
  assert np.all(np.isneginf(np.asarray(residual)[~seen]))
  np.testing.assert_allclose(np.where(seen[..., None], out, 0.0),
                             np.where(seen[..., None], want_out, 0.0), atol=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=str)
def test_residual_unbatched_causal_with_score_mod(implementation):
  query, key, value, _ = _inputs()
  slopes = jnp.asarray([0.5, 0.25, 0.125, 1.0])
  mod = lambda s, b, h, q, kv: s - slopes[h] * jnp.abs(q - kv)
  bias = -slopes[:, None, None] * jnp.abs(jnp.arange(T)[:, None] - jnp.arange(S)[None, :])
  call = attn_jax.dot_product_attention
  if implementation == "chunked":
    call = functools.partial(call, implementation="chunked")
  else:
    call = functools.partial(call, implementation=implementation)
  out, residual = call(query[0], key[0], value[0], is_causal=True, score_mod=mod,
                       return_residual=True)
  want_out, want = jax.nn.dot_product_attention(query[0], key[0], value[0], bias=bias,
                                                is_causal=True, return_residual=True)
  assert residual.shape == (T, N)
  np.testing.assert_allclose(residual, want, atol=1e-5)
  np.testing.assert_allclose(out, want_out, atol=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=str)
def test_two_calls_over_disjoint_keys_merge_into_the_union(implementation):
  query, key, value, mask = _inputs()
  attention = functools.partial(_attention(implementation), return_residual=True)
  first = jnp.arange(S) < 4

  def merged(q, k, v):
    out1, lse1 = attention(q, k, v, mask=mask & first)
    out2, lse2 = attention(q, k, v, mask=mask & ~first)
    lse = jnp.logaddexp(lse1, lse2)
    # Rows that see nothing in either part: lse = -inf; their weights are 0.
    safe = jnp.where(jnp.isfinite(lse), lse, 0.0)
    w1 = jnp.where(jnp.isfinite(lse1), jnp.exp(lse1 - safe), 0.0)[..., None]
    w2 = jnp.where(jnp.isfinite(lse2), jnp.exp(lse2 - safe), 0.0)[..., None]
    return w1 * out1 + w2 * out2, lse

  union_out, union_lse = attention(query, key, value, mask=mask)
  out, lse = merged(query, key, value)
  np.testing.assert_allclose(out, union_out, atol=1e-5)
  np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(union_lse))
  seen = _rows_seen(mask)
  np.testing.assert_allclose(np.where(seen, lse, 0.0), np.where(seen, union_lse, 0.0), atol=1e-5)
  cotangent = _draw(B, T, N, H, seed=7)
  loss = lambda f: lambda *a: jnp.sum(f(*a)[0] * cotangent)
  got = jax.grad(loss(merged), argnums=(0, 1, 2))(query, key, value)
  want = jax.grad(loss(lambda *a: attention(*a, mask=mask)), argnums=(0, 1, 2))(
      query, key, value)
  for g, w in zip(got, want, strict=True):
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, w, atol=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=str)
def test_residual_gradients_equal_autodiff_of_logsumexp(implementation):
  query, key, value, mask = _inputs()
  seen = jnp.asarray(_rows_seen(mask))
  weight = _draw(B, T, N, seed=8)

  def loss(f):
    return lambda q, k, v: jnp.sum(jnp.where(seen, f(q, k, v)[1], 0.0) * weight)

  ours = lambda q, k, v: _attention(implementation)(q, k, v, mask=mask, return_residual=True)
  got = jax.grad(loss(ours), argnums=(0, 1, 2))(query, key, value)
  want = jax.grad(loss(lambda q, k, v: _dense(q, k, v, mask)), argnums=(0, 1, 2))(
      query, key, value)
  for g, w in zip(got, want, strict=True):
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, w, atol=1e-5)


# ----------------------------------------------------------------------------- sinks


def test_sinks_by_hand():
  # One key with logit 0 and a sink with logit 0: the key gets half the weight.
  query, key = jnp.zeros((1, 1, 4)), jnp.zeros((1, 1, 4))
  value = jnp.ones((1, 1, 4))
  for implementation in IMPLEMENTATIONS:
    out, residual = attn_jax.dot_product_attention(
        query, key, value, sinks=jnp.zeros(1), implementation=implementation,
        return_residual=True)
    np.testing.assert_allclose(out, 0.5, rtol=1e-6)
    np.testing.assert_allclose(residual, np.log(2.0), rtol=1e-6)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=str)
def test_sinks_equal_the_dense_definition_with_gradients(implementation):
  query, key, value, mask = _inputs()
  sinks = _draw(N, seed=4) * 2
  bias = _draw(1, N, T, S, seed=5)
  attention = functools.partial(_attention(implementation), bias=bias, mask=mask,
                                return_residual=True)
  out, residual = attention(query, key, value, sinks=sinks)
  want_out, want_residual = _dense(query, key, value, mask, sinks, bias)
  np.testing.assert_allclose(out, want_out, atol=1e-5)
  np.testing.assert_allclose(residual, want_residual, atol=1e-5)  # a sink: every row sees it
  seen = _rows_seen(mask)
  np.testing.assert_array_equal(np.asarray(out)[~seen], 0.0)  # no key: zeros
  cotangent = _draw(B, T, N, H, seed=6)
  loss = lambda f: lambda q, k, v, s: jnp.sum(f(q, k, v, s)[0] * cotangent)
  got = jax.grad(loss(lambda q, k, v, s: attention(q, k, v, sinks=s)), argnums=(0, 1, 2, 3))(
      query, key, value, sinks)
  want = jax.grad(loss(lambda q, k, v, s: _dense(q, k, v, mask, s, bias)),
                  argnums=(0, 1, 2, 3))(query, key, value, sinks)
  for g, w in zip(got, want, strict=True):
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, w, atol=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=str)
def test_sinks_under_jit_and_vmap(implementation):
  query, key, value, _ = _inputs()
  sinks = jnp.stack([_draw(N, seed=9), jnp.zeros(N)])
  call = jax.jit(jax.vmap(lambda s: _attention(implementation)(query, key, value, sinks=s,
                                                               is_causal=True)))
  got = call(sinks)
  causal = jnp.tril(jnp.ones((T, S), bool))
  for row, s in zip(got, sinks, strict=True):
    np.testing.assert_allclose(row, _dense(query, key, value, causal, s)[0], atol=1e-5)


@pytest.mark.parametrize("shape", [(N + 1,), (1, N), ()])
def test_sinks_of_the_wrong_shape_raise_naming_sinks(shape):
  query, key, value, _ = _inputs()
  for implementation in IMPLEMENTATIONS:
    with pytest.raises(ValueError, match=r"sinks.*\(4,\)"):
      _attention(implementation)(query, key, value, sinks=jnp.zeros(shape))
  with pytest.raises(ValueError, match="sinks"):
    attn_jax.dot_product_attention(query, key, value, sinks=jnp.zeros(N, jnp.int32))


def test_cudnn_refuses_sinks_and_residual_and_the_default_never_sends_them(monkeypatch):
  query, key, value, _ = (x.astype(jnp.bfloat16) for x in _inputs())
  monkeypatch.setattr(cudnn, "device_capability", lambda: (9, 0))
  monkeypatch.setattr(cudnn, "cudnn_version", lambda: 91000)
  assert attn_jax.select_implementation(query, key, value) == "cudnn"
  for kwargs, match in (({"sinks": jnp.zeros(N)}, "sinks"),
                        ({"return_residual": True}, "residual")):
    assert attn_jax.select_implementation(query, key, value, **kwargs) != "cudnn"
    with pytest.raises(ValueError, match=match):
      attn_jax.select_implementation(query, key, value, implementation="cudnn", **kwargs)
