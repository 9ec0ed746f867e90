"""implementation="pallas" (Pallas interpret mode on CPU) against implementation="reference".

Small sizes (interpret mode is slow): T = S <= 64, blocks of 16 or 32, so that every call has
several blocks and the plan has EMPTY, PARTIAL and FULL ones. Outputs and gradients with respect to
query, key, value and every float array a mod closes over.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attn_jax
from attn_jax.core import mods, positional
from attn_jax.core.block_mask import EMPTY, FULL, PARTIAL
from attn_jax.core.pallas_attention import pallas_attention
from attn_jax.core.pallas_plan import from_block_kinds

B, T, N, K, H = 2, 64, 4, 2, 16
# On a GPU (Triton), a gradient into an array a mod indexes is refused (no gather / scatter there):
# tests/core/test_pallas_lowering.py checks that refusal.
indexed_gradient = pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="gradients into indexed mod arrays: interpret mode only")


def _inputs(dtype=jnp.float32, t=T, s=T, n=N, k=K, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(keys[0], (B, t, n, H), dtype)
  kv = lambda i: jax.random.normal(keys[i], (B, s, k, H), dtype)
  return q, kv(1), kv(2), jax.random.normal(keys[3], (B, t, n, H), jnp.float32)


def _check(q, k, v, d_out, floats=(), *, make_kwargs=lambda *floats: {}, atol=1e-5, **fixed):
  """pallas == reference, outputs and gradients (q, k, v and ``floats``, which
  ``make_kwargs(*floats)`` turns into keyword arguments, e.g. a mod closing over them)."""
  def run(impl):
    def loss(q, k, v, *floats):
      out = attn_jax.dot_product_attention(q, k, v, implementation=impl,
                                           **fixed, **make_kwargs(*floats))
      return jnp.sum(out.astype(jnp.float32) * d_out), out
    argnums = tuple(range(3 + len(floats)))
    return jax.jit(jax.value_and_grad(loss, argnums=argnums, has_aux=True))(q, k, v, *floats)

  (_, out), grads = run("pallas")
  (_, want), want_grads = run("reference")
  assert out.dtype == q.dtype
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(want, np.float32),
                             atol=atol, rtol=atol)
  for name, g, w in zip(["dq", "dk", "dv"] + [f"d_float{i}" for i in range(len(floats))], grads,
                        want_grads, strict=True):
    assert bool(jnp.all(jnp.isfinite(g))), name
    scale = max(1.0, float(jnp.max(jnp.abs(w.astype(jnp.float32)))))
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                               atol=atol * scale * 10, rtol=atol * 10, err_msg=name)
  return out, grads


def test_dense_grouped_heads():
  _check(*_inputs())


def test_causal_lengths_fully_masked_rows_and_nan_at_padding():
  q, k, v, d_out = _inputs(t=48, s=64)
  q_lengths, kv_lengths = jnp.array([48, 20]), jnp.array([64, 0])  # batch 1: no key at all
  kv_pad = jnp.arange(64)[None, :, None, None] >= kv_lengths[:, None, None, None]
  q_pad = jnp.arange(48)[None, :, None, None] >= q_lengths[:, None, None, None]
  k, v = jnp.where(kv_pad, jnp.nan, k), jnp.where(kv_pad, 1e30, v)
  q = jnp.where(q_pad, jnp.nan, q)
  out, (dq, dk, dv) = _check(q, k, v, d_out, is_causal=True, query_seq_lengths=q_lengths,
                             key_value_seq_lengths=kv_lengths)
  assert float(jnp.max(jnp.abs(out[1]))) == 0.0  # no key: zeros
  assert float(jnp.max(jnp.abs(dk[:, 20:][1]))) == 0.0


@pytest.mark.parametrize("window", [(5, 3), (0, 17)])
def test_local_window(window):
  _check(*_inputs(), local_window_size=window)


@indexed_gradient
def test_dense_mask_and_bias_gradient_into_bias():
  q, k, v, d_out = _inputs()
  mask = jax.random.bernoulli(jax.random.key(5), 0.7, (B, 1, T, T))
  bias = jax.random.normal(jax.random.key(6), (1, N, T, T))
  _check(q, k, v, d_out, (bias,), make_kwargs=lambda bias: {"bias": bias}, mask=mask)


@indexed_gradient
def test_documents_traced_segment_ids_with_alibi_slopes_gradient():
  q, k, v, d_out = _inputs()
  segments = jnp.array([[0] * 20 + [1] * 30 + [2] * 14, [0] * 64])
  slopes = positional.alibi_slopes(N)
  # segments are a jit argument here (traced): the block plan is computed on device.
  _check(q, k, v, d_out, (slopes, segments.astype(jnp.float32)),
         make_kwargs=lambda slopes, seg: {"score_mod": mods.alibi(slopes),
                                          "mask_mod": mods.document(seg.astype(jnp.int32))},
         is_causal=True)


@indexed_gradient
def test_relative_position_table_gradient_and_prefix_lm():
  q, k, v, d_out = _inputs()
  table = 0.1 * jax.random.normal(jax.random.key(7), (8, N))
  _check(q, k, v, d_out, (table,),
         make_kwargs=lambda table: {"score_mod": mods.relative_position(table, max_distance=32)},
         mask_mod=mods.prefix_lm(jnp.array([10, 40])))


@indexed_gradient
def test_softcap_gradient_with_or_and_masks():
  q, k, v, d_out = _inputs()
  mask_mod = mods.and_masks(mods.or_masks(mods.sliding_window(4, 4), mods.causal()),
                            mods.padding(None, jnp.array([60, 33])))
  _check(3.0 * q, k, v, d_out, (jnp.array(2.5),),
         make_kwargs=lambda cap: {"score_mod": mods.compose(mods.softcap(cap),
                                                            mods.alibi(jnp.ones(N) * 0.05))},
         mask_mod=mask_mod)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_inputs(dtype):
  _check(*_inputs(dtype), atol=2e-2, is_causal=True, score_mod=mods.softcap(5.0))


def test_cosine_score_unbatched_and_vmapped_calls():
  q, k, v, _ = _inputs()
  for impl_kwargs in ({"score": "cosine"}, {}):
    out = attn_jax.dot_product_attention(q[0], k[0], v[0], implementation="pallas",
                                         **impl_kwargs)
    want = attn_jax.dot_product_attention(q[0], k[0], v[0], implementation="reference",
                                          **impl_kwargs)
    np.testing.assert_allclose(out, want, atol=1e-5)
  vmapped = jax.vmap(lambda q, k, v: attn_jax.dot_product_attention(
      q, k, v, is_causal=True, implementation="pallas"))(q, k, v)
  want = attn_jax.dot_product_attention(q, k, v, is_causal=True, implementation="reference")
  np.testing.assert_allclose(vmapped, want, atol=1e-5)


def _sink_reference(q, k, v, sinks, mask):
  """Dense attention with one extra virtual key per head (logit sinks[h], no value)."""
  g = q.shape[2] // k.shape[2]
  k, v = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
  logits = jnp.einsum("btnh,bsnh->bnts", q, k) * q.shape[-1] ** -0.5
  logits = jnp.where(mask, logits, -jnp.inf)
  sink = jnp.broadcast_to(sinks[None, :, None, None], logits.shape[:3] + (1,))
  full = jnp.concatenate([logits, sink], axis=-1)
  lse = jax.nn.logsumexp(full, axis=-1)  # [B, N, T]
  p = jnp.exp(logits - lse[..., None])
  return jnp.einsum("bnts,bsnh->btnh", p, v), jnp.swapaxes(lse, 1, 2)


def test_sinks_and_residual_values_and_gradients():
  q, k, v, d_out = _inputs(t=32, s=48)
  sinks = jnp.array([0.5, -1.0, 2.0, 0.0])
  kv_lengths = jnp.array([48, 0])  # batch 1 sees no key: zeros, lse = the sink
  mask = (jnp.arange(48)[None, None, None, :] < kv_lengths[:, None, None, None]) & (
      jnp.arange(48)[None, :] <= jnp.arange(32)[:, None] + 8)
  d_lse = jax.random.normal(jax.random.key(9), (B, 32, N))

  def loss(fn, q, k, v, sinks):
    out, lse = fn(q, k, v, sinks)
    return jnp.sum(out * d_out) + jnp.sum(lse * d_lse), (out, lse)

  ours = lambda q, k, v, sinks: pallas_attention(
      q, k, v, sinks=sinks, return_residual=True, key_value_seq_lengths=kv_lengths,
      local_window_size=(48, 8), block_q=16, block_k=16)
  ref = lambda q, k, v, sinks: _sink_reference(q, k, v, sinks, mask)
  run = lambda fn: jax.jit(jax.value_and_grad(
      lambda *a: loss(fn, *a), argnums=(0, 1, 2, 3), has_aux=True))(q, k, v, sinks)
  (_, (out, lse)), grads = run(ours)
  (_, (want, want_lse)), want_grads = run(ref)
  np.testing.assert_allclose(out, want, atol=1e-5)
  np.testing.assert_allclose(lse, want_lse, atol=1e-5)
  np.testing.assert_allclose(lse[1], jnp.broadcast_to(sinks, (32, N)), atol=1e-6)
  for g, w in zip(grads, want_grads, strict=True):
    np.testing.assert_allclose(g, w, atol=1e-4)


def test_residual_without_sinks_matches_jax_nn_and_is_minus_inf_without_keys():
  q, k, v, _ = _inputs(t=32, s=32)
  kv_lengths = jnp.array([32, 0])
  _, lse = pallas_attention(q, k, v, return_residual=True, key_value_seq_lengths=kv_lengths)
  _, want = jax.nn.dot_product_attention(q[:1], k[:1], v[:1], return_residual=True)
  np.testing.assert_allclose(lse[:1], want, atol=1e-5)
  assert bool(jnp.all(jnp.isneginf(lse[1])))


@indexed_gradient
def test_gradients_are_deterministic():
  q, k, v, d_out = _inputs()
  slopes = positional.alibi_slopes(N)
  grad = jax.jit(jax.grad(lambda q, slopes: jnp.sum(d_out * pallas_attention(
      q, k, v, is_causal=True, score_mod=mods.alibi(slopes), block_q=16, block_k=16)),
      argnums=(0, 1)))
  first, second = grad(q, slopes), grad(q, slopes)
  for a, b in zip(first, second, strict=True):
    assert bool(jnp.all(a == b))


def test_block_lists_by_hand():
  # One query head pair (G = 2) merged: FULL only where both are FULL, EMPTY where both are.
  kinds = np.array([[[[FULL, EMPTY, PARTIAL], [FULL, FULL, EMPTY]],
                     [[FULL, EMPTY, EMPTY], [PARTIAL, FULL, EMPTY]]]])  # [1, 2, 2, 3]
  plan = from_block_kinds(kinds, 1, q_len=64, kv_len=96, block_q=32, block_k=32)
  np.testing.assert_array_equal(plan.kind[0, 0], [[FULL, EMPTY, PARTIAL], [PARTIAL, FULL, EMPTY]])
  np.testing.assert_array_equal(plan.fwd_count[0, 0], [2, 2])
  np.testing.assert_array_equal(plan.fwd_order[0, 0, :, :2], [[0, 2], [0, 1]])
  np.testing.assert_array_equal(plan.bwd_count[0, 0], [2, 1, 1])
  np.testing.assert_array_equal(plan.bwd_order[0, 0, 0, :2], [0, 1])
  # A last block past the length holds padding: never FULL.
  padded = from_block_kinds(np.full((1, 1, 2, 2), FULL), 1, q_len=40, kv_len=64, block_q=32,
                            block_k=32)
  np.testing.assert_array_equal(padded.kind[0, 0], [[FULL, FULL], [PARTIAL, PARTIAL]])


def test_the_walk_follows_the_plan():
  """The kernel visits exactly the listed blocks: a causal call whose kernel visits only the
  diagonal blocks equals attention restricted to those blocks (the EMPTY ones are not read)."""
  q, k, v, _ = _inputs(t=32, s=32)
  diagonal = lambda b, h, q_idx, kv_idx: (q_idx // 16) == (kv_idx // 16)
  out = pallas_attention(q, k, v, is_causal=True, mask_mod=diagonal, block_q=16, block_k=16)
  want = attn_jax.dot_product_attention(q, k, v, is_causal=True, mask_mod=diagonal,
                                        implementation="reference")
  np.testing.assert_allclose(out, want, atol=1e-5)
  plan_kinds = attn_jax.core.pallas_plan.plan_for_call(
      B, 32, 32, K, N // K, block_q=16, block_k=16,
      mask_mod=mods.and_masks(mods.causal(), diagonal)).kind
  np.testing.assert_array_equal(plan_kinds[0, 0], [[PARTIAL, EMPTY], [EMPTY, PARTIAL]])


def test_default_never_picks_pallas_and_other_backends_refuse(monkeypatch):
  q, k, v, _ = _inputs()
  assert attn_jax.select_implementation(q, k, v, is_causal=True) != "pallas"
  assert attn_jax.select_implementation(q, k, v, implementation="pallas") == "pallas"
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  with pytest.raises(ValueError, match="pallas.*TPU|pallas.*tpu"):
    attn_jax.select_implementation(q, k, v, implementation="pallas")


def test_block_mask_values_walked_as_they_are_and_combined():
  q, k, v, d_out = _inputs()
  segments = jnp.array([[0] * 20 + [1] * 30 + [2] * 14, [0] * 40 + [1] * 24])
  bm = attn_jax.create_block_mask(mods.document(segments), B, None, T, T, block_q=16,
                                  block_k=16)
  _check(q, k, v, d_out, block_mask=bm)  # its own plan and blocks
  _check(q, k, v, d_out, block_mask=bm, is_causal=True)  # joined with causal: a new plan


def test_rows_a_score_mod_sends_to_minus_inf_give_zeros_and_a_scalar_mask_mod_broadcasts():
  q, k, v, d_out = _inputs(t=32, s=32)
  kill_rows = lambda s, b, h, q_idx, kv_idx: jnp.where(q_idx < 5, -jnp.inf, s)
  everywhere = lambda b, h, q_idx, kv_idx: jnp.asarray(True)  # a 0-d mask_mod

  def loss(q, k, v, **kwargs):
    out = attn_jax.dot_product_attention(q, k, v, **kwargs)
    return jnp.sum(out * d_out), out

  grad = lambda **kw: jax.jit(jax.grad(functools.partial(loss, **kw), argnums=(0, 1, 2),
                                       has_aux=True))(q, k, v)
  grads, out = grad(implementation="pallas", score_mod=kill_rows, mask_mod=everywhere)
  want_grads, want = grad(implementation="reference",
                          mask_mod=lambda b, h, q_idx, kv_idx: q_idx >= 5)
  np.testing.assert_array_equal(out[:, :5], 0.0)
  np.testing.assert_allclose(out, want, atol=1e-5)
  for g, w in zip(grads, want_grads, strict=True):
    assert bool(jnp.all(jnp.isfinite(g)))
    np.testing.assert_allclose(g, w, atol=1e-4)


def test_sinks_and_residual_through_the_batched_api():
  q, k, v, d_out = _inputs(t=32, s=48)
  sinks = jnp.array([0.5, -1.0, 2.0, 0.0])
  kv_lengths = jnp.array([48, 0])  # batch 1 sees no key

  def run(impl):
    def loss(q, k, v, sinks):
      out, lse = attn_jax.dot_product_attention(
          q, k, v, implementation=impl, sinks=sinks, return_residual=True, is_causal=True,
          key_value_seq_lengths=kv_lengths)
      return jnp.sum(out * d_out) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0)), (out, lse)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(q, k, v, sinks)

  (_, (out, lse)), grads = run("pallas")
  (_, (want, want_lse)), want_grads = run("reference")
  np.testing.assert_allclose(out, want, atol=1e-5)
  np.testing.assert_allclose(lse, want_lse, atol=1e-5)
  for g, w in zip(grads, want_grads, strict=True):
    np.testing.assert_allclose(g, w, atol=1e-4)
