"""implementation="pallas" compiled for an NVIDIA GPU (Triton): numbers, gradients, memory.

Skipped (with the reason) where no NVIDIA GPU is present; `python -m benchmarks.gpu_check` runs
these on a GPU machine (with `tests/core/test_pallas.py`, which then compiles for the device too).
bfloat16 at L1024 H128, against attn_jax's "reference" implementation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attn_jax
from attn_jax.core import cudnn, mods, positional

pytestmark = pytest.mark.skipif(
    cudnn.device_capability() is None,
    reason="needs an NVIDIA GPU (none here); `python -m benchmarks.gpu_check` on one")

B, T, N, K, H = 2, 1024, 8, 2, 128
SEGMENTS = jnp.repeat(jnp.arange(8, dtype=jnp.int32), T // 8)[None]
CASES = {
    "causal": dict(is_causal=True),
    "dense": {},
    "lengths_window": dict(query_seq_lengths=jnp.array([T, 300]),
                           key_value_seq_lengths=jnp.array([700, T]), local_window_size=(128, 64)),
    "documents": dict(is_causal=True, mask_mod=mods.document(SEGMENTS)),
    "alibi": dict(is_causal=True, score_mod=mods.alibi(positional.alibi_slopes(N))),
    "softcap_relative": dict(score_mod=mods.compose(
        mods.relative_position(0.1 * jnp.ones((32, N))), mods.softcap(20.0))),
}


def _inputs(dtype=jnp.bfloat16):
  rng = np.random.default_rng(0)
  draw = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
  return draw(B, T, N, H), draw(B, T, K, H), draw(B, T, K, H), draw(B, T, N, H)


def _grads(impl, kwargs):
  def loss(q, k, v, d_out):
    out = attn_jax.dot_product_attention(q, k, v, implementation=impl, **kwargs)
    return jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32)), out
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_pallas_equals_reference_on_the_gpu(case):
  args = _inputs()
  (dq, dk, dv), out = _grads("pallas", CASES[case])(*args)
  (rq, rk, rv), ref = _grads("reference", CASES[case])(*args)
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=2e-2)
  for name, got, want in (("dq", dq, rq), ("dk", dk, rk), ("dv", dv, rv)):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.all(np.isfinite(got)), name
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, atol=3e-2 * scale, err_msg=name)


def test_pallas_memory_is_linear_in_length():
  """The compiled forward + backward holds no [T, S] buffer: its temporary memory at L16384 is
  within a few times the O(T) inputs, not the 16 GiB of float32 logits per head row."""
  length = 16384
  q = jax.ShapeDtypeStruct((1, length, 16, 128), jnp.bfloat16)
  fn = lambda q, k, v: jax.vjp(lambda q, k, v: attn_jax.dot_product_attention(
      q, k, v, is_causal=True, implementation="pallas"), q, k, v)[1](q)
  analysis = jax.jit(fn).lower(q, q, q).compile().memory_analysis()
  inputs_bytes = 3 * length * 16 * 128 * 2
  assert analysis.temp_size_in_bytes < 16 * inputs_bytes, analysis
