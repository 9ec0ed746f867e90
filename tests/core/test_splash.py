"""implementation="splash" (jax's TPU splash attention, in Pallas interpret mode on CPU) against
implementation="reference": outputs and gradients. Slow in interpret mode: two calls only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attn_jax
from attn_jax.core import mods

B, T, N, K, H = 1, 128, 4, 2, 32


def _inputs():
  keys = jax.random.split(jax.random.key(0), 4)
  return (jax.random.normal(keys[0], (B, T, N, H)), jax.random.normal(keys[1], (B, T, K, H)),
          jax.random.normal(keys[2], (B, T, K, H)), jax.random.normal(keys[3], (B, T, N, H)))


@pytest.mark.parametrize("kwargs", [
    dict(is_causal=True, local_window_size=(40, 0)),
    # a static mask_mod (two documents), per head: head 0 also sees nothing past position 100
    dict(mask_mod=mods.and_masks(mods.document(jnp.array([[0] * 50 + [1] * 78])),
                                 lambda b, h, q_idx, kv_idx: (h > 0) | (q_idx < 100))),
], ids=["grouped_causal_window", "documents_fully_masked_rows"])
def test_splash_equals_reference(kwargs):
  q, k, v, d_out = _inputs()

  def run(impl):
    loss = lambda q, k, v: jnp.sum(d_out * attn_jax.dot_product_attention(
        q, k, v, implementation=impl, **kwargs))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)

  (value, grads), (want, want_grads) = run("splash"), run("reference")
  np.testing.assert_allclose(value, want, rtol=1e-4, atol=1e-4)
  for g, w in zip(grads, want_grads, strict=True):
    np.testing.assert_allclose(g, w, atol=1e-4)


def test_what_splash_refuses():
  q, k, v, _ = _inputs()
  refuse = lambda **kw: pytest.raises(ValueError, match="splash")
  with refuse():
    attn_jax.select_implementation(q, k, v, implementation="splash",
                                   key_value_seq_lengths=jnp.array([100]))
  with refuse():
    attn_jax.select_implementation(q, k, v, implementation="splash", score_mod=mods.softcap(5.0))
  with refuse():
    attn_jax.select_implementation(q[:, :100], k[:, :100], v[:, :100], implementation="splash")
  assert attn_jax.select_implementation(q, k, v, is_causal=True) != "splash"  # never the default
