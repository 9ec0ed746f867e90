"""The Pallas kernels lower through Pallas's Triton lowering for CUDA, on a machine without a GPU.

`jax.jit(...).trace(...).lower(lowering_platforms=("cuda",))` runs the kernel-to-Triton-IR
lowering in Python (the PTX compilation happens later, on a GPU); a primitive Triton lacks (a
gather, a boolean reduction, a concatenation) fails here. What this cannot check: that the
kernels compile to PTX, run, and are fast; those are the GPU tests' and `benchmarks.gpu_check`'s.
"""

import jax
import jax.numpy as jnp
import pytest

from attn_jax.core import mods
from attn_jax.core.pallas_attention import pallas_attention

B, T, N, K, H = 2, 256, 4, 2, 64
Q = jax.ShapeDtypeStruct((B, T, N, H), jnp.bfloat16)
KV = jax.ShapeDtypeStruct((B, T, K, H), jnp.bfloat16)
SEGMENTS = jnp.repeat(jnp.arange(4), T // 4)[None]

CASES = {
    "causal": dict(is_causal=True),
    "lengths_window": dict(key_value_seq_lengths=jnp.array([100, 256]),
                           query_seq_lengths=jnp.array([256, 30]), local_window_size=(30, 5)),
    "documents_alibi": dict(is_causal=True, mask_mod=mods.document(SEGMENTS),
                            score_mod=mods.alibi(jnp.linspace(0.1, 1.0, N))),
    "relative_softcap": dict(mask=jnp.ones((1, 1, T, T), bool), score_mod=mods.compose(
        mods.relative_position(jnp.ones((8, N))), mods.softcap(30.0))),
}


def _lower(fn, *args):
  try:
    lowered = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))
  except ImportError as e:  # pragma: no cover - a jaxlib without the Triton bindings
    pytest.skip(f"no Pallas Triton lowering in this jaxlib: {e}")
  return lowered.as_text().count("xla.gpu.triton")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_and_backward_lower_to_triton(case):
  attend = lambda q, k, v: pallas_attention(q, k, v, interpret=False, **CASES[case])
  grads = lambda q, k, v: jax.grad(lambda *a: attend(*a).astype(jnp.float32).sum(),
                                   argnums=(0, 1, 2))(q, k, v)
  assert _lower(grads, Q, KV, KV) == 3  # forward, dK / dV, dQ


def test_gradient_into_a_scalar_a_mod_closes_over_lowers():
  def grads(q, k, v, cap):
    out = pallas_attention(q, k, v, is_causal=True, interpret=False, score_mod=mods.softcap(cap))
    return out.astype(jnp.float32).sum()

  assert _lower(jax.grad(grads, argnums=(0, 3)), Q, KV, KV,
                jax.ShapeDtypeStruct((), jnp.float32)) == 3


def test_gradient_into_an_indexed_array_is_refused_on_gpu():
  def grads(q, k, v, slopes):
    out = pallas_attention(q, k, v, interpret=False, score_mod=mods.alibi(slopes))
    return out.astype(jnp.float32).sum()

  with pytest.raises(ValueError, match="Triton has no gather"):
    _lower(jax.grad(grads, argnums=3), Q, KV, KV, jax.ShapeDtypeStruct((N,), jnp.float32))


def test_sizes_that_are_not_powers_of_two_lower():
  """T = 200 (padded to whole blocks), head_dim 80 (zero-padded to 128), G = 2 of 6 heads."""
  q = jax.ShapeDtypeStruct((1, 200, 6, 80), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((1, 200, 3, 80), jnp.bfloat16)
  attend = lambda q, k, v: pallas_attention(q, k, v, is_causal=True, interpret=False,
                                            mask_mod=mods.document(jnp.zeros((1, 200), int)))
  grads = lambda q, k, v: jax.grad(lambda *a: attend(*a).astype(jnp.float32).sum(),
                                   argnums=(0, 1, 2))(q, k, v)
  assert _lower(grads, q, kv, kv) == 3
