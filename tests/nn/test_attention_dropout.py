"""MultiHeadAttention(dropout_rate > 0) in training mode: dropout inside the chunked kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attn_jax.core import chunked
from attn_jax.nn import MultiHeadAttention


def _dense_twin(mha, x, keep, rate, is_causal):
  """The module's computation written densely, dropout fed the given keep mask [B, N, T, T]."""
  query, key, value = mha._project(x, None, mha.head_dim**-0.5)  # [B, T, N, H], [B, T, K, H]
  groups = mha.num_heads // mha.num_kv_heads
  key, value = jnp.repeat(key, groups, axis=2), jnp.repeat(value, groups, axis=2)
  logits = jnp.einsum("btnh,bsnh->bnts", query, key)
  if is_causal:
    t = x.shape[1]
    logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, -jnp.inf)
  weights = jnp.where(keep, jax.nn.softmax(logits, axis=-1) / (1 - rate), 0.0)
  out = jnp.einsum("bnts,bsnh->btnh", weights, value)
  return jnp.einsum("btnh,nhd->btd", out, mha.out_kernel[...]) + mha.out_bias[...]


@pytest.mark.parametrize("num_kv_heads", [4, 2])
def test_training_dropout_equals_the_dense_path_fed_the_same_mask(num_kv_heads):
  rate = 0.4
  mha = MultiHeadAttention(num_heads=4, num_kv_heads=num_kv_heads, in_features=16,
                           dropout_rate=rate, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 9, 16))
  twin_key = nnx.clone(mha).attn_dropout.rngs()  # the key the module draws next
  keep = chunked.dropout_keep_mask(twin_key, rate, 2, 4, 9, 9, 512, 512)

  def loss(module, x, dense):
    out = _dense_twin(module, x, keep, rate, True) if dense else module(x, is_causal=True)
    return jnp.sum(jnp.sin(out)), out

  grads_twin, out_twin = nnx.grad(loss, has_aux=True)(nnx.clone(mha), x, True)
  grads, out = nnx.grad(loss, has_aux=True)(mha, x, False)
  np.testing.assert_allclose(out, out_twin, atol=1e-5)
  for got, want in zip(jax.tree.leaves(nnx.state(grads, nnx.Param)),
                       jax.tree.leaves(nnx.state(grads_twin, nnx.Param)), strict=True):
    np.testing.assert_allclose(got, want, atol=1e-5)
  assert 0.5 < float(keep.mean()) < 0.7  # about 1 - rate kept on this small grid


def test_training_dropout_runs_in_blockwise_memory():
  length = 2048

  def temp_bytes(implementation):  # a training step's gradient, compiled
    mha = MultiHeadAttention(num_heads=2, in_features=32, dropout_rate=0.1,
                             implementation=implementation, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(mha)

    def step(state, x):
      module = nnx.merge(graphdef, state)
      grads = nnx.grad(lambda m: jnp.mean(m(x, is_causal=True) ** 2))(module)
      return nnx.state(grads, nnx.Param)

    x = jax.ShapeDtypeStruct((1, length, 32), jnp.float32)
    return jax.jit(step).lower(state, x).compile().memory_analysis().temp_size_in_bytes

  kernel, dense = temp_bytes(None), temp_bytes("reference")  # "reference": dense weights
  assert kernel < 2 * length * length * 4 / 2  # half of one [N, T, T] float32 buffer
  assert kernel < dense / 8
