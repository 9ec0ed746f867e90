"""Tests for attn_jax/core/chunked.py: parity with jax.nn and a dense einsum reference (outputs and
gradients), a value worked out by hand, float64 gradient checks, masking invariants, memory."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from attn_jax.core import mods, scores
from attn_jax.core.block_mask import EMPTY, FULL, PARTIAL
from attn_jax.core.chunked import call_block_mask, chunked_attention
from attn_jax.core.chunked import dropout_keep_mask as chunked_dropout_keep_mask

# ----------------------------------------------------------------------------- references


def full_mask(batch, num_heads, q_len, kv_len, *, mask=None, is_causal=False,
              query_seq_lengths=None, key_value_seq_lengths=None, local_window_size=None):
  """Every masking option folded into one dense bool [B, N, T, S], position by position."""
  i = np.arange(q_len)[:, None]
  j = np.arange(kv_len)[None, :]
  allowed = np.ones((batch, num_heads, q_len, kv_len), bool)
  if mask is not None:
    allowed &= np.asarray(mask)
  if is_causal:
    allowed &= j <= i
  if local_window_size is not None:
    left, right = local_window_size
    allowed &= (j >= i - left) & (j <= i + right)
  if query_seq_lengths is not None:
    allowed &= i < np.asarray(query_seq_lengths)[:, None, None, None]
  if key_value_seq_lengths is not None:
    allowed &= j < np.asarray(key_value_seq_lengths)[:, None, None, None]
  return jnp.asarray(allowed)


def dense_attention(query, key, value, allowed, *, bias=None, scale=None, score_fn=None,
                    params=None):
  """The plain einsum definition: query [B,T,N,H], key/value [B,S,K,H|Hv], allowed [B,N,T,S].

  Rows with no allowed key are zero (double where: finite gradients there too).
  """
  groups = query.shape[2] // key.shape[2]
  key, value = jnp.repeat(key, groups, axis=2), jnp.repeat(value, groups, axis=2)
  if score_fn is None:
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    logits = jnp.einsum("btnh,bsnh->bnts", query.astype(jnp.float32), key.astype(jnp.float32))
    logits = logits * scale
  else:
    per_head = jax.vmap(score_fn, in_axes=(1, 1, None))  # over heads of [T, N, H] / [S, N, H]
    logits = jax.vmap(per_head, in_axes=(0, 0, None))(query, key, params)
  if bias is not None:
    logits = logits + bias
  logits = jnp.where(allowed, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  unnormalised = jnp.where(allowed, jnp.exp(logits - row_max), 0.0)
  total = jnp.sum(unnormalised, axis=-1, keepdims=True)
  weights = unnormalised / jnp.where(total > 0, total, 1.0)
  out = jnp.einsum("bnts,bsnh->btnh", weights, value.astype(jnp.float32))
  return out.astype(query.dtype)


@functools.partial(jax.jit, static_argnames=("is_causal", "local_window_size"))
def _nn_attention(query, key, value, **kwargs):
  return jax.nn.dot_product_attention(query, key, value, implementation="xla", **kwargs)


def _outputs_and_grads(fn, args, d_out):
  """fn(*args) and the gradients of <fn(*args), d_out> w.r.t. every arg, one jit per call."""
  def run(args, d_out):
    out, vjp = jax.vjp(fn, *args)
    return out, vjp(d_out)
  return jax.jit(run)(args, d_out)


# ----------------------------------------------------------------------------- parity grid

# (name, shapes, options, blocks): shapes (B, T, S, N, K, H); blocks (block_q, block_k). Each case
# folds several features together (one compile each): T, S not multiples of the blocks, T != S.
CASES = [
    ("no_mask", (2, 16, 16, 2, 2, 8), {}, (8, 8)),
    ("causal_window_lengths_gqa", (2, 13, 21, 4, 2, 8),
     {"is_causal": True, "local_window_size": (5, 0), "query_seq_lengths": [13, 5],
      "key_value_seq_lengths": [21, 9]}, (4, 8)),
    ("mask_bias_window", (2, 14, 10, 2, 2, 8),
     {"mask": "random", "bias": "random", "local_window_size": (3, 2)}, (4, 4)),
]


def _make_case(shapes, options, dtype=jnp.float32, seed=0):
  batch, q_len, kv_len, num_heads, kv_heads, head_dim = shapes
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
  query = normal(batch, q_len, num_heads, head_dim)
  key, value = normal(batch, kv_len, kv_heads, head_dim), normal(batch, kv_len, kv_heads, head_dim)
  kwargs = dict(options)
  for name in ("query_seq_lengths", "key_value_seq_lengths"):
    if name in kwargs:
      kwargs[name] = jnp.asarray(kwargs[name], jnp.int32)
  if kwargs.get("mask") == "random":  # [B, 1, T, S]; the last query row of batch 0 fully masked
    mask = rng.random((batch, 1, q_len, kv_len)) < 0.6
    mask[0, 0, -1] = False
    kwargs["mask"] = jnp.asarray(mask)
  bias_kind = kwargs.pop("bias", None)
  bias = None
  if bias_kind == "random":  # [1, N, T, S]
    bias = normal(1, num_heads, q_len, kv_len).astype(jnp.float32)
  return query, key, value, bias, kwargs


@pytest.mark.parametrize("name, shapes, options, blocks", CASES, ids=[c[0] for c in CASES])
def test_matches_jax_nn_and_dense_reference(name, shapes, options, blocks):
  query, key, value, bias, kwargs = _make_case(shapes, options)
  batch, q_len, kv_len, num_heads = shapes[:4]
  allowed = full_mask(batch, num_heads, q_len, kv_len, **kwargs)
  mask_kwargs = {k: v for k, v in kwargs.items() if k != "mask"}
  chunked = functools.partial(chunked_attention, block_q=blocks[0], block_k=blocks[1], **kwargs)
  reference = functools.partial(dense_attention, allowed=allowed)
  d_out = jnp.asarray(np.random.default_rng(1).standard_normal(query.shape), jnp.float32)
  args = (query, key, value) if bias is None else (query, key, value, bias)
  with_bias = lambda f: (lambda q, k, v, b=None: f(q, k, v, bias=b))
  out, grads = _outputs_and_grads(with_bias(chunked), args, d_out)
  ref_out, ref_grads = _outputs_and_grads(with_bias(reference), args, d_out)

  # jax.nn agrees on every row that may attend somewhere (it averages values on the others).
  nn_out = _nn_attention(query, key, value, bias=bias, mask=kwargs.get("mask"), **mask_kwargs)
  live_rows = np.asarray(allowed.any(-1)).transpose(0, 2, 1)[..., None]  # [B, T, N, 1]
  np.testing.assert_allclose(np.where(live_rows, out, 0), np.where(live_rows, nn_out, 0), atol=1e-5)
  np.testing.assert_array_equal(np.where(live_rows, 0, out), 0)  # dead rows: exact zeros
  np.testing.assert_allclose(out, ref_out, atol=1e-5)
  for grad, ref_grad in zip(grads, ref_grads, strict=True):
    np.testing.assert_allclose(grad, ref_grad, atol=1e-4, rtol=1e-4)


def test_bfloat16_matches_jax_nn():
  shapes = (2, 13, 21, 4, 2, 16)
  options = {"is_causal": True, "key_value_seq_lengths": [21, 9]}
  query, key, value, _, kwargs = _make_case(shapes, options, dtype=jnp.bfloat16)
  chunked = functools.partial(chunked_attention, block_q=4, block_k=8, **kwargs)
  d_out = jnp.asarray(np.random.default_rng(1).standard_normal(query.shape), jnp.bfloat16)
  out, grads = _outputs_and_grads(chunked, (query, key, value), d_out)
  assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
  np.testing.assert_allclose(
      np.asarray(out, np.float32), np.asarray(_nn_attention(query, key, value, **kwargs),
                                              np.float32), atol=2e-2)
  # Gradients against the float32 reference on the same (bf16-rounded) inputs.
  allowed = full_mask(2, 4, 13, 21, **kwargs)
  upcast = [x.astype(jnp.float32) for x in (query, key, value)]
  _, ref_grads = _outputs_and_grads(
      functools.partial(dense_attention, allowed=allowed), upcast, d_out.astype(jnp.float32))
  for grad, ref_grad in zip(grads, ref_grads, strict=True):
    np.testing.assert_allclose(np.asarray(grad, np.float32), ref_grad, atol=5e-2, rtol=2e-2)


# ----------------------------------------------------------------------------- by hand, float64


def test_value_worked_out_by_hand():
  # One query [1], keys [0] and [1] with scale 1: logits [0, 1], weights [1, e] / (1 + e).
  query = jnp.ones((1, 1, 1, 1))
  key = jnp.asarray([0.0, 1.0]).reshape(1, 2, 1, 1)
  value = jnp.eye(2).reshape(1, 2, 1, 2)  # value_dim 2: the output is the weight row itself
  out = jax.jit(lambda q, k, v: chunked_attention(q, k, v, scale=1.0, block_k=1))(query, key, value)
  np.testing.assert_allclose(out[0, 0, 0], [1 / (1 + np.e), np.e / (1 + np.e)], rtol=1e-6)


def test_static_plan_skips_blocks_outside_the_band():
  E, P, F = EMPTY, PARTIAL, FULL
  causal = call_block_mask(1, 16, 16, 1, is_causal=True, block_q=4, block_k=4)
  assert isinstance(causal.kind, np.ndarray)  # worked out at trace time
  # Diagonal blocks partial, blocks below full, blocks above never visited.
  np.testing.assert_array_equal(causal.kind[0, 0], [[P, E, E, E], [F, P, E, E], [F, F, P, E],
                                                    [F, F, F, P]])
  np.testing.assert_array_equal(causal.kv_count[0, 0], [1, 2, 3, 4])  # block i: key blocks <= i
  np.testing.assert_array_equal(causal.q_count[0, 0], [4, 3, 2, 1])
  np.testing.assert_array_equal(causal.q_indices[0, 0, 2, :2], [2, 3])
  # Window (left 4, right 0) over blocks of 4: query block i needs key blocks i - 1 and i.
  window = call_block_mask(1, 16, 16, 1, local_window_size=(4, 0), block_q=4, block_k=4)
  np.testing.assert_array_equal(window.kind[0, 0], [[P, E, E, E], [P, P, E, E], [E, P, P, E],
                                                    [E, E, P, P]])
  assert window.kv_count.max() == 2
  np.testing.assert_array_equal(window.kv_indices[0, 0, :, :2], [[0, 1], [0, 1], [1, 2], [2, 3]])


@pytest.mark.usefixtures("x64")
def test_check_grads_float64():
  rng = np.random.default_rng(0)
  query = jnp.asarray(rng.standard_normal((1, 5, 2, 3)))
  key, value = (jnp.asarray(rng.standard_normal((1, 6, 1, 3))) for _ in range(2))
  bias = jnp.asarray(rng.standard_normal((1, 2, 1, 6)))  # broadcast over T: dBias sums over it
  # custom_vjp has no forward mode: reverse mode, and reverse over reverse for order 2.
  # Order 1 with every moving part (causal, ragged blocks, grouped heads, broadcast bias) ...
  attend = jax.jit(
      lambda q, k, v, b: chunked_attention(q, k, v, bias=b, is_causal=True, block_q=2, block_k=4))
  assert attend(query, key, value, bias).dtype == jnp.float64
  check_grads(attend, (query, key, value, bias), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
  # ... order 2 (the backward rule differentiated again) on a one-block case, to keep it fast.
  check_grads(jax.jit(chunked_attention), (query, key, value), order=2, modes=["rev"],
              atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- masking invariants


# One configuration shared by the two tests below: B2 T7 S9 N2 K1 (multi-query), blocks 4x4.
MASK = np.ones((2, 1, 7, 9), bool)
MASK[1, 0, 2] = False  # query 2 of batch 1 may attend to nothing
MASK[0, :, :, 6] = False  # key 6 of batch 0 is masked for every query
Q_LENGTHS = np.asarray([7, 5], np.int32)  # queries 5, 6 of batch 1 are padding
KV_LENGTHS = np.asarray([9, 4], np.int32)  # keys 4.. of batch 1 are padding


@jax.jit
@chex.assert_max_traces(n=1)  # repeated calls (both tests, clean and poisoned inputs): one trace
def _masked_outputs_and_grads(query, key, value, bias):
  attend = lambda q, k, v, b: chunked_attention(
      q, k, v, bias=b, mask=jnp.asarray(MASK), query_seq_lengths=jnp.asarray(Q_LENGTHS),
      key_value_seq_lengths=jnp.asarray(KV_LENGTHS), block_q=4, block_k=4)
  loss = lambda *args: jnp.sum(jnp.sin(attend(*args)))
  return attend(query, key, value, bias), jax.grad(loss, argnums=(0, 1, 2, 3))(
      query, key, value, bias)


def _masked_inputs(make_qkv):
  query, key, value = make_qkv(batch=2, q_len=7, kv_len=9, num_heads=2, num_kv_heads=1)
  bias = np.random.default_rng(0).standard_normal((2, 2, 7, 9)).astype(np.float32)
  return query, key, value, bias


def test_fully_masked_rows_are_zero_with_finite_gradients(make_qkv):
  query, key, value, bias = _masked_inputs(make_qkv)
  out, grads = _masked_outputs_and_grads(query, key, value, bias)
  dead = np.zeros((2, 7), bool)  # [B, T]
  dead[1, [2, 5, 6]] = True
  np.testing.assert_array_equal(np.asarray(out)[dead], 0)
  assert np.all(np.asarray(out)[~dead] != 0)
  assert all(np.all(np.isfinite(g)) for g in grads)
  np.testing.assert_array_equal(np.asarray(grads[0])[dead], 0)  # dead rows get no gradient


def test_garbage_where_no_query_looks_changes_nothing(make_qkv):
  query, key, value, bias = _masked_inputs(make_qkv)
  clean = _masked_outputs_and_grads(query, key, value, bias)
  hidden = np.zeros((2, 9), bool)  # [B, S]: key/value positions no query may see
  hidden[1, 4:] = True
  hidden[0, 6] = True
  poisoned_key = jnp.where(hidden[:, :, None, None], jnp.nan, key)
  poisoned_value = jnp.where(hidden[:, :, None, None], jnp.nan, value)
  masked_out = ~np.asarray(full_mask(2, 2, 7, 9, mask=MASK, query_seq_lengths=Q_LENGTHS,
                                     key_value_seq_lengths=KV_LENGTHS))
  huge_bias = np.where(masked_out, np.float32(1e30) * np.sign(bias), bias)
  dirty = _masked_outputs_and_grads(query, poisoned_key, poisoned_value, huge_bias)
  for a, b in zip(jax.tree.leaves(clean), jax.tree.leaves(dirty), strict=True):
    np.testing.assert_array_equal(a, b)
  _, (_, d_key, d_value, d_bias) = clean
  np.testing.assert_array_equal(np.asarray(d_key)[hidden], 0)
  np.testing.assert_array_equal(np.asarray(d_value)[hidden], 0)
  np.testing.assert_array_equal(np.asarray(d_bias)[masked_out], 0)


# ----------------------------------------------------------------------------- scores, paths


SCORE_CASES = {
    "cosine": (functools.partial(scores.cosine, scale=3.0), lambda rng: None),
    "additive": (scores.additive, lambda rng: {
        "w_query": rng.standard_normal((8, 5)), "w_key": rng.standard_normal((8, 5)),
        "v": rng.standard_normal(5)}),
    "bilinear": (scores.bilinear, lambda rng: {"w": rng.standard_normal((8, 8)) * 0.3}),
}


@pytest.mark.parametrize("score_name", sorted(SCORE_CASES))
def test_scores_match_dense(score_name):
  score_fn, make_params = SCORE_CASES[score_name]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), make_params(rng))
  # No masks (those are the same code for every score): several blocks, grouped heads.
  query, key, value, _, _ = _make_case((2, 8, 12, 4, 2, 8), {})
  allowed = full_mask(2, 4, 8, 12)
  chunked = lambda q, k, v, p: chunked_attention(
      q, k, v, score_fn=score_fn, score_params=p, block_q=4, block_k=4)
  reference = lambda q, k, v, p: dense_attention(
      q, k, v, allowed, score_fn=score_fn, params=p)
  d_out = jnp.asarray(rng.standard_normal(query.shape), jnp.float32)
  out, grads = _outputs_and_grads(chunked, (query, key, value, params), d_out)
  ref_out, ref_grads = _outputs_and_grads(reference, (query, key, value, params), d_out)
  np.testing.assert_allclose(out, ref_out, atol=1e-5)
  for grad, ref_grad in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
    np.testing.assert_allclose(grad, ref_grad, atol=1e-4, rtol=1e-4)


def test_memory_grows_with_blocks_not_with_the_attention_matrix():
  # Forward + backward at T = S = 2048: XLA's temporaries stay far below one [N, T, S] float32
  # buffer (16 MiB here; jax.nn's XLA path needs several of them).
  spec = jax.ShapeDtypeStruct((1, 2048, 2, 16), jnp.float32)
  loss = lambda q, k, v: jnp.sum(
      chunked_attention(q, k, v, is_causal=True, block_q=256, block_k=256) ** 2)
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(spec, spec, spec).compile()
  attention_matrix_bytes = 2 * 2048 * 2048 * 4
  assert compiled.memory_analysis().temp_size_in_bytes < attention_matrix_bytes / 3


def test_blocks_chosen_for_the_mask_known_at_trace_time():
  plan = lambda **kw: call_block_mask(1, 16384, 16384, 4, **kw)
  assert (plan().block_q, plan(is_causal=True).block_q) == (512, 512)  # dense, causal: large
  # A 256 window: 512-blocks would compute a band 4x wider than the window, 64-blocks 1.25x.
  window = plan(local_window_size=(256, 0))
  assert (window.block_q, window.block_k, window.kv_count.max()) == (64, 64, 5)
  assert plan(mask_mod=mods.sliding_window(256, 0)).block_q == 64  # the same, as a mod
  assert plan(local_window_size=(256, 0), block_q=512, block_k=512).block_q == 512  # as asked
  # Traced lengths do not change the blocks: they are chosen at trace time.
  lengths = jnp.asarray([100])
  assert plan(key_value_seq_lengths=lengths).block_q == 512



# ----------------------------------------------------------------------------- dropout


def _dense_dropout(query, key, value, keep, rate, *, is_causal):
  """Dense attention with dropout on the weights: softmax, then keep / (1 - rate), then V."""
  b, t, n, _ = query.shape
  allowed = full_mask(b, n, t, key.shape[1], is_causal=is_causal)
  groups = n // key.shape[2]
  k, v = jnp.repeat(key, groups, axis=2), jnp.repeat(value, groups, axis=2)
  logits = jnp.einsum("btnh,bsnh->bnts", query, k) * query.shape[-1] ** -0.5
  weights = jax.nn.softmax(jnp.where(allowed, logits, -jnp.inf), axis=-1)
  weights = jnp.where(keep, weights / (1 - rate), 0.0)
  return jnp.einsum("bnts,bsnh->btnh", weights, v)


def test_dropout_equals_the_dense_path_fed_the_same_mask():
  rng = np.random.default_rng(0)
  draw = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  query, key, value, d_out = draw(2, 13, 4, 8), draw(2, 13, 2, 8), draw(2, 13, 2, 8), draw(
      2, 13, 4, 8)
  rate, dropout_rng = 0.3, jax.random.key(7)
  keep = chunked_dropout_keep_mask(dropout_rng, rate, 2, 4, 13, 13, 4, 8)
  chunked_fn = lambda q, k, v: chunked_attention(q, k, v, is_causal=True, block_q=4, block_k=8,
                                                 dropout_rate=rate, dropout_rng=dropout_rng)
  dense_fn = lambda q, k, v: _dense_dropout(q, k, v, keep, rate, is_causal=True)
  got = _outputs_and_grads(chunked_fn, (query, key, value), d_out)
  want = _outputs_and_grads(dense_fn, (query, key, value), d_out)
  chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)
  # Another key, another mask; rate 0 is no dropout.
  other = chunked_attention(query, key, value, is_causal=True, block_q=4, block_k=8,
                            dropout_rate=rate, dropout_rng=jax.random.key(8))
  assert float(jnp.abs(other - got[0]).max()) > 1e-2


def test_dropout_keep_rate_and_blocks_independent():
  keep = chunked_dropout_keep_mask(jax.random.key(0), 0.25, 2, 2, 256, 256, 64, 64)
  assert abs(float(keep.mean()) - 0.75) < 0.01  # 262,144 draws: 4 sigma is 0.0034
  blocks = np.asarray(keep).reshape(2, 2, 4, 64, 4, 64)
  # Every (batch, head, query block, key block) draws its own bits.
  flat = blocks.transpose(0, 1, 2, 4, 3, 5).reshape(-1, 64 * 64)
  assert len({row.tobytes() for row in flat}) == flat.shape[0]


def test_dropout_trains_long_sequences_in_blockwise_memory():
  spec = jax.ShapeDtypeStruct((1, 2048, 2, 16), jnp.float32)
  loss = lambda q, k, v, r: jnp.sum(chunked_attention(
      q, k, v, is_causal=True, block_q=256, block_k=256, dropout_rate=0.1, dropout_rng=r) ** 2)
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(
      spec, spec, spec, jax.random.key(0)).compile()
  assert compiled.memory_analysis().temp_size_in_bytes < 2 * 2048 * 2048 * 4 / 3
