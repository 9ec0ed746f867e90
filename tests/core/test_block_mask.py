"""Tests for attn_jax/core/block_mask.py and block_plan.py: the block mask as a value.

to_dense against the mod on the full grid, sparsity counted by hand, the plan's lists, block_mask=
against mask_mod= on every implementation (outputs and gradients, into a score mod's arrays too),
creation under jit from traced segment ids and passing between jitted functions without
recompiling, size checks, the repr.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attn_jax
from attn_jax.core import mods, positional
from attn_jax.core.block_mask import EMPTY, FULL, PARTIAL, BlockMask, create_block_mask

B, T, N, K, H = 2, 24, 4, 2, 8
BLOCK = 8
SEGMENTS = jnp.asarray(np.repeat([[0, 1, 2], [0, 0, 1]], [9, 7, 8], axis=1), jnp.int32)  # [B, T]


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  draw = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  return draw(B, T, N, H), draw(B, T, K, H), draw(B, T, K, H), draw(B, T, N, H)


def _per_head(b, h, q_idx, kv_idx):  # head h sees keys within 2 + 3 h of the query
  return jnp.abs(q_idx - kv_idx) <= 2 + 3 * h


def test_to_dense_equals_the_mod_on_the_full_grid():
  packed = mods.and_masks(mods.document(SEGMENTS), mods.causal())
  for mod, batch, heads in ((packed, B, None), (_per_head, None, N), (mods.causal(), None, None)):
    bm = create_block_mask(mod, batch, heads, T, T - 3, block_q=BLOCK, block_k=5)
    want = jnp.broadcast_to(mods.dense_mask(mod, batch or 1, heads or 1, T, T - 3),
                            bm.shape)
    np.testing.assert_array_equal(bm.to_dense(), want)
    assert bm.to_dense().shape == ((batch or 1), (heads or 1), T, T - 3)


def test_causal_sparsity_and_lists_counted_by_hand():
  bm = create_block_mask(mods.causal(), None, None, 16, 16, block_q=4, block_k=4)
  e, p, f = EMPTY, PARTIAL, FULL
  np.testing.assert_array_equal(bm.kind[0, 0], [[p, e, e, e], [f, p, e, e], [f, f, p, e],
                                                [f, f, f, p]])
  assert bm.sparsity() == 6 / 16  # the 6 blocks above the diagonal
  np.testing.assert_array_equal(bm.kv_count[0, 0], [1, 2, 3, 4])
  np.testing.assert_array_equal(bm.kv_indices[0, 0, 2, :3], [0, 1, 2])
  np.testing.assert_array_equal(bm.q_count[0, 0], [4, 3, 2, 1])
  np.testing.assert_array_equal(bm.q_indices[0, 0, 1, :3], [1, 2, 3])
  assert (bm.max_kv_blocks, bm.max_q_blocks) == (4, 4)
  # Rows past a 14-long sequence padded to 16 are masked: the last diagonal block stays partial.
  ragged = create_block_mask(mods.causal(), None, None, 14, 14, block_q=4, block_k=4)
  assert ragged.kind[0, 0, 3, 3] == PARTIAL and ragged.sparsity() == 6 / 16


def test_repr_draws_the_grid():
  text = repr(create_block_mask(mods.causal(), None, None, 8, 8, block_q=4, block_k=4))
  assert text.splitlines()[0] == ("BlockMask(batch=None, num_heads=None, q_len=8, kv_len=8, "
                                  "block=(4, 4), sparsity=25.00%)")
  assert text.splitlines()[-2:] == ["░░", "██░░"]


@pytest.mark.parametrize("implementation", ["reference", "xla", "chunked"])
def test_block_mask_equals_mask_mod_outputs_and_gradients(implementation):
  query, key, value, d_out = _inputs()
  slopes = jnp.asarray(positional.alibi_slopes(N))
  mask_mod = mods.and_masks(mods.document(SEGMENTS), mods.causal(), _per_head)
  bm = create_block_mask(mask_mod, B, N, T, T, block_q=BLOCK, block_k=BLOCK)

  def run(q, k, v, s, **masking):
    return attn_jax.dot_product_attention(q, k, v, score_mod=mods.alibi(s),
                                          implementation=implementation, **masking)

  results = []
  for masking in ({"mask_mod": mask_mod}, {"block_mask": bm}):
    out, vjp = jax.vjp(lambda q, k, v, s, m=masking: run(q, k, v, s, **m), query, key, value,
                       slopes)
    results.append((out, *vjp(d_out)))
  for got, want in zip(results[1], results[0], strict=True):
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)
  assert float(jnp.abs(results[0][-1]).max()) > 0  # the slopes do receive a gradient


def test_block_mask_with_other_mask_arguments_is_their_and():
  query, key, value, _ = _inputs(1)
  bm = create_block_mask(mods.document(SEGMENTS), B, None, T, T, block_q=BLOCK, block_k=BLOCK)
  lengths = jnp.asarray([20, 13])
  kwargs = dict(is_causal=True, key_value_seq_lengths=lengths)
  for implementation in ("xla", "chunked"):
    got = attn_jax.dot_product_attention(query, key, value, block_mask=bm,
                                         implementation=implementation, **kwargs)
    want = attn_jax.dot_product_attention(query, key, value, mask_mod=mods.document(SEGMENTS),
                                          implementation="xla", **kwargs)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)


def test_created_under_jit_from_traced_ids_and_passed_between_jitted_functions():
  query, key, value, _ = _inputs(2)
  traces = []

  @jax.jit
  def make(segment_ids):
    traces.append("make")
    return create_block_mask(mods.and_masks(mods.document(segment_ids), mods.causal()), B, None,
                             T, T, block_q=BLOCK, block_k=BLOCK)

  @jax.jit
  def attend(q, k, v, block_mask):
    traces.append("attend")
    return attn_jax.dot_product_attention(q, k, v, block_mask=block_mask,
                                          implementation="chunked")

  other = jnp.asarray(np.repeat([[0, 1], [0, 1]], [12, 12], axis=1), jnp.int32)
  for ids in (SEGMENTS, other):
    bm = make(ids)
    assert isinstance(bm, BlockMask) and not isinstance(bm.kind, np.ndarray)  # made on device
    want = attn_jax.dot_product_attention(
        query, key, value, mask_mod=mods.and_masks(mods.document(ids), mods.causal()),
        implementation="xla")
    np.testing.assert_allclose(attend(query, key, value, bm), want, atol=2e-5, rtol=2e-5)
    # Device plan == numpy plan of the same concrete ids.
    eager = create_block_mask(mods.and_masks(mods.document(ids), mods.causal()), B, None, T, T,
                              block_q=BLOCK, block_k=BLOCK)
    np.testing.assert_array_equal(bm.kind, eager.kind)
  assert traces == ["make", "attend"]  # new segment ids: no retrace, no recompile


def test_equal_concrete_mods_share_one_compiled_program():
  query, key, value, _ = _inputs(3)
  traces = []

  @jax.jit
  def attend(q, k, v, block_mask):
    traces.append(1)
    return attn_jax.dot_product_attention(q, k, v, block_mask=block_mask,
                                          implementation="chunked")

  for ids in (SEGMENTS, SEGMENTS[::-1]):  # new closures over new concrete values
    bm = create_block_mask(mods.document(ids), B, None, T, T, block_q=BLOCK, block_k=BLOCK)
    assert isinstance(bm.kind, np.ndarray)  # planned in numpy
    want = attn_jax.dot_product_attention(query, key, value, mask_mod=mods.document(ids),
                                          implementation="xla")
    np.testing.assert_allclose(attend(query, key, value, bm), want, atol=2e-5, rtol=2e-5)
  assert len(traces) == 1


def test_wrong_sizes_and_cudnn_raise():
  query, key, value, _ = _inputs()
  bm = create_block_mask(mods.causal(), 3, None, T, T + 1)
  with pytest.raises(ValueError, match=r"batch 3 \(the call's 2\).*kv_len 25 \(the call's 24\)"):
    attn_jax.dot_product_attention(query, key, value, block_mask=bm)
  ok = create_block_mask(mods.causal(), None, None, T, T)
  with pytest.raises(ValueError, match="cudnn"):
    attn_jax.dot_product_attention(query, key, value, block_mask=ok, implementation="cudnn")
  with pytest.raises(ValueError, match="elementwise"):
    create_block_mask(lambda b, h, q, kv: jnp.ones((4, 4), bool), None, None, T, T)


def test_blocks_chosen_for_a_static_window():
  bm = create_block_mask(mods.sliding_window(256, 0), None, None, 16384, 16384)
  assert (bm.block_q, bm.block_k, bm.max_kv_blocks) == (64, 64, 5)
