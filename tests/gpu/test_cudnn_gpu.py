"""cuDNN on a real NVIDIA GPU: the numbers, fully masked rows, padding garbage, gradients.

Skipped (with the reason) where no NVIDIA GPU with cuDNN is present;
`python -m benchmarks.gpu_check` runs these on a GPU machine. The grid is the one
`implementation=None` sends to cuDNN (bfloat16, head dims it supports, even lengths; causal,
windows, masks, biases, sequence lengths, grouped heads); each case is checked against attn_jax's
"reference" implementation.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attn_jax
from attn_jax.core import cudnn

pytestmark = pytest.mark.skipif(
    cudnn.device_capability() is None or cudnn.cudnn_version() is None,
    reason="needs an NVIDIA GPU with cuDNN (none here); `python -m benchmarks.gpu_check` on one")


@dataclasses.dataclass(frozen=True)
class Case:
  id: str
  batch: int = 2
  length: int = 256
  num_heads: int = 8
  num_kv_heads: int = 8
  head_dim: int = 64
  is_causal: bool = False
  window: tuple[int, int] | None = None
  mask: bool = False  # [B, 1, T, S], with a fully masked query row
  bias: bool = False  # [1, N, T, S]
  q_lengths: tuple[int, ...] | None = None
  kv_lengths: tuple[int, ...] | None = None

  def arrays(self, dtype=jnp.bfloat16):
    rng = np.random.default_rng(0)
    draw = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
    b, t, n, k, h = self.batch, self.length, self.num_heads, self.num_kv_heads, self.head_dim
    query, key, value = draw(b, t, n, h), draw(b, t, k, h), draw(b, t, k, h)
    mask = None
    if self.mask:
      mask = rng.random((b, 1, t, t)) < 0.7
      mask[0, 0, 3] = False  # query 3 of example 0 sees nothing
      mask = jnp.asarray(mask)
    bias = draw(1, n, t, t) if self.bias else None
    return query, key, value, bias, mask

  def kwargs(self):
    lengths = lambda x: None if x is None else jnp.asarray(x, jnp.int32)
    return dict(is_causal=self.is_causal, local_window_size=self.window,
                query_seq_lengths=lengths(self.q_lengths),
                key_value_seq_lengths=lengths(self.kv_lengths))

  def rows_ok(self) -> np.ndarray:
    """bool [B, T, N]: the query rows that may attend some key."""
    t = np.arange(self.length)[:, None]
    s = np.arange(self.length)[None, :]
    allowed = np.ones((self.batch, self.num_heads, self.length, self.length), bool)
    if self.mask:
      allowed &= np.asarray(self.arrays()[4])
    if self.is_causal:
      allowed &= s <= t
    if self.window is not None:
      allowed &= (s >= t - self.window[0]) & (s <= t + self.window[1])
    if self.q_lengths is not None:
      allowed &= t < np.asarray(self.q_lengths)[:, None, None, None]
    if self.kv_lengths is not None:
      allowed &= s < np.asarray(self.kv_lengths)[:, None, None, None]
    return np.swapaxes(allowed.any(-1), 1, 2)


CASES = [
    Case("plain"),
    Case("causal", is_causal=True),
    Case("gqa_causal_h128", num_heads=8, num_kv_heads=2, head_dim=128, is_causal=True),
    Case("causal_window_left", is_causal=True, window=(32, 0)),
    Case("causal_window_right", is_causal=True, window=(32, 16)),
    Case("mask", mask=True),
    Case("bias", bias=True),
    Case("mask_bias_causal", mask=True, bias=True, is_causal=True),
    Case("kv_lengths", kv_lengths=(256, 100)),
    Case("both_lengths_causal", is_causal=True, q_lengths=(200, 256), kv_lengths=(256, 64)),
    Case("lengths_causal_window", is_causal=True, q_lengths=(128, 256), kv_lengths=(256, 200),
         window=(16, 0)),
]


def _ids(case):
  return case.id


@functools.cache
def _grads(case: Case, implementation):
  kwargs = case.kwargs()

  def loss(query, key, value, bias, mask, cotangent):
    out = attn_jax.dot_product_attention(query, key, value, bias, mask, **kwargs,
                                         implementation=implementation)
    return jnp.sum(out.astype(jnp.float32) * cotangent), out

  return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))


def _cotangent(case):
  shape = (case.batch, case.length, case.num_heads, case.head_dim)
  return jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_the_default_sends_these_to_cudnn(case):
  query, key, value, bias, mask = case.arrays()
  assert attn_jax.select_implementation(query, key, value, bias, mask, **case.kwargs()) == "cudnn"


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_cudnn_equals_reference_and_zeros_fully_masked_rows(case):
  args = case.arrays()
  ok = case.rows_ok()
  cotangent = _cotangent(case)
  (dq, dk, dv), out = _grads(case, "cudnn")(*args, cotangent)
  (ref_dq, ref_dk, ref_dv), ref_out = _grads(case, "reference")(*args, cotangent)
  out, ref_out = (np.asarray(x, np.float32) for x in (out, ref_out))
  np.testing.assert_allclose(out[ok], ref_out[ok], atol=2e-2, rtol=0)
  np.testing.assert_array_equal(out[~ok], 0.0)
  for name, got, want in (("dq", dq, ref_dq), ("dk", dk, ref_dk), ("dv", dv, ref_dv)):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.all(np.isfinite(got)), name
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, atol=3e-2 * scale, rtol=0, err_msg=name)


@pytest.mark.parametrize("garbage", [np.nan, 1e30])
@pytest.mark.parametrize("case", [c for c in CASES if c.q_lengths or c.kv_lengths or c.mask],
                         ids=_ids)
def test_garbage_at_padding_leaks_nowhere(case, garbage):
  query, key, value, bias, mask = case.arrays()
  cotangent = _cotangent(case)
  t = np.arange(case.length)
  unseen_rows = ~case.rows_ok().any(-1)  # [B, T]
  unseen_keys = np.zeros((case.batch, case.length), bool)
  if case.kv_lengths is not None:
    unseen_keys |= t[None] >= np.asarray(case.kv_lengths)[:, None]
  poison = lambda x, where: jnp.where(jnp.asarray(where)[:, :, None, None], garbage, x)
  clean_grads, clean_out = _grads(case, "cudnn")(query, key, value, bias, mask, cotangent)
  grads, out = _grads(case, "cudnn")(poison(query, unseen_rows), poison(key, unseen_keys),
                                     poison(value, unseen_keys), bias, mask, cotangent)
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(clean_out, np.float32),
                             atol=1e-6, rtol=0)
  for got, want in zip(grads, clean_grads, strict=True):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=1e-2, rtol=0)


@pytest.mark.parametrize("case", [Case("noncausal_window", window=(32, 0)),
                                  Case("noncausal_lengths_window", kv_lengths=(256, 200),
                                       window=(16, 0))], ids=_ids)
def test_noncausal_window_is_not_sent_to_cudnn_and_jax_cudnn_is_probed(case):
  """The default keeps a sliding window without is_causal off cuDNN (jax PR #39576). The probe
  calls jax's cuDNN path directly: if it now equals the reference, the installed jax computes it
  right and `cudnn.NONCAUSAL_WINDOW_FIXED_IN_JAX` may be set (the warning says so)."""
  query, key, value, bias, mask = case.arrays()
  kwargs = case.kwargs()
  if not cudnn.noncausal_window_is_fixed():
    assert attn_jax.select_implementation(query, key, value, **kwargs) != "cudnn"
  got = jax.nn.dot_product_attention(query, key, value, implementation="cudnn", **kwargs)
  want = attn_jax.dot_product_attention(query, key, value, implementation="reference", **kwargs)
  ok = case.rows_ok()
  err = float(np.abs(np.asarray(got, np.float32) - np.asarray(want, np.float32))[ok].max())
  if err < 2e-2 and not cudnn.noncausal_window_is_fixed():
    import warnings  # noqa: PLC0415
    warnings.warn(f"jax {jax.__version__}'s cuDNN non-causal window equals the reference "
                  f"(max error {err:.3g}): the fix may be in; see NONCAUSAL_WINDOW_FIXED_IN_JAX",
                  stacklevel=1)
