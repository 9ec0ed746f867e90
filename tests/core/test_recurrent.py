"""Linear attention and the gated recurrence: chunked == quadratic == recurrence (outputs and
gradients), hand-worked values, causality by gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.core import gated
from attn_jax.core import linear_attention as la

LENGTH, DK, DV = 13, 3, 4  # 13: no chunk size below divides it


def _inputs(seed=0, length=LENGTH):
  q, k, v, a = jax.random.split(jax.random.key(seed), 4)
  return (jax.random.normal(q, (length, DK)), jax.random.normal(k, (length, DK)),
          jax.random.normal(v, (length, DV)),
          jax.nn.log_sigmoid(2.0 + jax.random.normal(a, (length,))))


def _linear_forms(feature_map):
  fm = la.FEATURE_MAPS[feature_map]
  return {
      "quadratic": functools.partial(la.linear_attention_quadratic, feature_map=fm),
      "recurrent": functools.partial(la.linear_attention_recurrent, feature_map=fm),
      **{f"chunked{c}": functools.partial(la.linear_attention_chunked, feature_map=fm,
                                          chunk_size=c) for c in (1, 4, 5, 13, 16)},
  }


def _gated_forms():
  return {"quadratic": gated.gated_quadratic, "recurrent": gated.gated_recurrent,
          **{f"chunked{c}": functools.partial(gated.gated_chunked, chunk_size=c)
             for c in (1, 4, 5, 13, 16)}}


def _loss(fn, *args):
  weights = jnp.cos(jnp.arange(LENGTH * DV, dtype=jnp.float32)).reshape(LENGTH, DV)
  return jnp.sum(weights * fn(*args))


@pytest.mark.parametrize("feature_map", ["elu", "taylor"])
def test_linear_attention_forms_agree_outputs_and_gradients(feature_map):
  q, k, v, _ = _inputs()
  forms = _linear_forms(feature_map)
  want = forms["quadratic"](q, k, v)
  want_grads = jax.grad(functools.partial(_loss, forms["quadratic"]), argnums=(0, 1, 2))(q, k, v)
  for name, fn in forms.items():
    np.testing.assert_allclose(fn(q, k, v), want, atol=1e-5, rtol=1e-5, err_msg=name)
    grads = jax.grad(functools.partial(_loss, fn), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(grads, want_grads, strict=True):
      np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4, err_msg=name)


def test_gated_forms_agree_outputs_and_gradients():
  args = _inputs(1)
  forms = _gated_forms()
  want = forms["quadratic"](*args)
  want_grads = jax.grad(functools.partial(_loss, forms["quadratic"]), argnums=(0, 1, 2, 3))(*args)
  for name, fn in forms.items():
    np.testing.assert_allclose(fn(*args), want, atol=1e-5, rtol=1e-5, err_msg=name)
    grads = jax.grad(functools.partial(_loss, fn), argnums=(0, 1, 2, 3))(*args)
    for g, w in zip(grads, want_grads, strict=True):
      np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4, err_msg=name)


def test_linear_attention_by_hand():
  # phi = elu + 1 of zero keys and queries is 1: the outputs are running means of v.
  v = jnp.array([[2.0], [4.0], [9.0]])
  zeros = jnp.zeros((3, 2))
  np.testing.assert_allclose(la.linear_attention_quadratic(zeros, zeros, v)[:, 0],
                             [2.0, 3.0, 5.0], rtol=1e-5)
  # Unnormalised, they are running sums times phi(q) . phi(k) = 2 (two features of 1).
  np.testing.assert_allclose(
      la.linear_attention_chunked(zeros, zeros, v, chunk_size=2, normalize=False)[:, 0],
      [4.0, 12.0, 30.0], rtol=1e-5)


def test_taylor_kernel_is_the_second_order_expansion():
  q, k, _, _ = _inputs(2)
  s = (q @ k.T) / jnp.sqrt(DK)
  np.testing.assert_allclose(la.taylor(q) @ la.taylor(k).T, 1 + s + s**2 / 2, rtol=1e-5,
                             atol=1e-5)
  assert la.taylor(q).shape == (LENGTH, la.feature_dim("taylor", DK))


def test_gated_by_hand():
  # Decays 1, 1/2, 1/4 on q = k = v = 1: o = 1, 1/2 + 1, (3/2) / 4 + 1.
  ones = jnp.ones((3, 1))
  log_a = jnp.log(jnp.array([1.0, 0.5, 0.25]))
  for fn in _gated_forms().values():
    np.testing.assert_allclose(fn(ones, ones, ones, log_a)[:, 0], [1.0, 1.5, 1.375], rtol=1e-5)


@pytest.mark.parametrize("name", ["linear", "taylor", "gated"])
def test_causal_by_gradient(name):
  q, k, v, a = _inputs(3)
  if name == "gated":
    fn = lambda q, k, v, a: gated.gated_chunked(q, k, v, a, chunk_size=4)
  else:
    fm = la.FEATURE_MAPS["elu" if name == "linear" else "taylor"]
    fn = lambda q, k, v, a: la.linear_attention_chunked(q, k, v, feature_map=fm, chunk_size=4)
  t = 6
  grads = jax.grad(lambda *xs: jnp.sum(fn(*xs)[t]), argnums=(0, 1, 2, 3))(q, k, v, a)
  for g in grads if name == "gated" else grads[:3]:  # linear attention has no decay
    assert np.all(np.asarray(g)[t + 1:] == 0.0)  # nothing after t reaches output t
    assert np.any(np.asarray(g)[: t + 1] != 0.0)
  assert np.any(np.asarray(grads[0])[t] != 0.0)  # its own query does


def test_shape_errors_and_vmap_over_heads():
  q, k, v, a = _inputs()
  with pytest.raises(ValueError, match="expected query"):
    la.linear_attention_chunked(q, k[:-1], v)
  with pytest.raises(ValueError, match="chunk_size"):
    la.linear_attention_chunked(q, k, v, chunk_size=0)
  with pytest.raises(ValueError, match="log_decay"):
    gated.gated_chunked(q, k, v, a[:-1])
  # Heads by vmap over a [L, N, D] axis equal one call per head.
  heads = jnp.stack([q, q * 2], axis=1), jnp.stack([k, -k], axis=1), jnp.stack([v, v], axis=1)
  out = jax.vmap(la.linear_attention_chunked, in_axes=1, out_axes=1)(*heads)
  for h in range(2):
    np.testing.assert_allclose(out[:, h], la.linear_attention_quadratic(
        heads[0][:, h], heads[1][:, h], heads[2][:, h]), atol=1e-5)
