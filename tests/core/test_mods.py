"""Programmable attention: every mod on every implementation against its dense twin.

A mask mod's twin is the same call with the dense ``mask`` obtained by evaluating the mod on the
full index grid; an additive score mod's twin is `jax.nn.dot_product_attention` with the dense
``bias`` evaluated the same way (an independent reference); any score mod's twin is the dense
computation written out here. Outputs, gradients with respect to query, key and value, and
gradients into the arrays the mods close over (slopes, tables) must all agree. Then: exact block
sparsity (the blocks the chunked kernel skips are exactly the empty ones, for random segment ids
and windows), jit / vmap / grad, fully masked rows, bad mods, cuDNN's refusal, memory.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import attn_jax
from attn_jax.core import chunked, mods, positional
from attn_jax.core.block_mask import EMPTY, FULL

B, T, N, K, H = 2, 24, 4, 2, 8
BLOCK = 8  # 3 x 3 blocks on the chunked path
IMPLEMENTATIONS = ("reference", "xla", "chunked", None)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  draw = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  return draw(B, T, N, H), draw(B, T, K, H), draw(B, T, K, H), draw(B, T, N, H)


SEGMENTS = jnp.asarray(np.repeat([[0, 1, 2], [0, 0, 1]], [9, 7, 8], axis=1), jnp.int32)  # [B, T]
SLOPES = jnp.asarray(positional.alibi_slopes(N))
TABLE = jnp.asarray(np.random.default_rng(5).standard_normal((8, N)), jnp.float32)


def _attention(implementation):
  """attn_jax with the given implementation; "chunked" with small blocks, so that several block
  pairs (some skipped) are in play."""
  if implementation == "chunked":
    return functools.partial(chunked.chunked_attention, block_q=BLOCK, block_k=BLOCK)
  return functools.partial(attn_jax.dot_product_attention, implementation=implementation)


MASK_MODS = {
    "causal": lambda: mods.causal(),
    "sliding_window": lambda: mods.sliding_window(5, 2),
    "document": lambda: mods.document(SEGMENTS),
    "document_causal": lambda: mods.and_masks(mods.document(SEGMENTS), mods.causal()),
    "prefix_lm": lambda: mods.prefix_lm(jnp.asarray([5, 13])),
    "padding": lambda: mods.padding(jnp.asarray([24, 10]), jnp.asarray([17, 24])),
    "or_masks": lambda: mods.or_masks(mods.sliding_window(1, 1), mods.document(SEGMENTS)),
}


@functools.cache
def _mask_case(name, implementation):
  mask_mod = MASK_MODS[name]()
  dense = mods.dense_mask(mask_mod, B, N, T, T)
  attention = _attention(implementation)

  def loss(query, key, value, cotangent, use_mod):
    if use_mod:
      out = attention(query, key, value, mask_mod=mask_mod)
    else:
      out = attention(query, key, value, mask=jnp.broadcast_to(dense, (B, N, T, T)))
    return jnp.sum(out * cotangent), out

  grads = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)
  return jax.jit(functools.partial(grads, use_mod=True)), jax.jit(
      functools.partial(grads, use_mod=False)), np.asarray(jnp.broadcast_to(dense, (B, N, T, T)))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=str)
@pytest.mark.parametrize("name", sorted(MASK_MODS))
def test_mask_mod_equals_its_dense_mask(name, implementation):
  with_mod, with_mask, dense = _mask_case(name, implementation)
  args = _inputs()
  grads, out = with_mod(*args)
  twin_grads, twin_out = with_mask(*args)
  np.testing.assert_allclose(out, twin_out, atol=1e-5, rtol=0)
  for got, want in zip(grads, twin_grads, strict=True):
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  dead_rows = ~np.swapaxes(dense.any(-1), 1, 2)  # [B, T, N]
  np.testing.assert_array_equal(np.asarray(out)[dead_rows], 0.0)


def test_mask_mods_by_hand():
  dense = lambda mod, **kw: np.asarray(mods.dense_mask(mod, 1, 1, 4, 4, **kw))[0, 0]
  np.testing.assert_array_equal(dense(mods.causal()), np.tril(np.ones((4, 4), bool)))
  np.testing.assert_array_equal(dense(mods.sliding_window(1, 0)),
                                [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]])
  np.testing.assert_array_equal(dense(mods.prefix_lm(2)),
                                [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
  np.testing.assert_array_equal(dense(mods.document(jnp.asarray([[0, 0, 1, 1]]))),
                                [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])


# ----------------------------------------------------------------------------- score mods

SCORE_MODS = {  # name -> (make(closed-over array) -> score_mod, the array, additive?)
    "alibi": (lambda slopes: mods.alibi(slopes), SLOPES, True),
    "relative_bidirectional": (lambda table: mods.relative_position(table, max_distance=12),
                               TABLE, True),
    "relative_causal": (lambda table: mods.relative_position(table, bidirectional=False,
                                                             max_distance=12), TABLE, True),
    "softcap": (lambda cap: mods.softcap(cap), 2.0, False),
    "alibi_then_softcap": (lambda slopes: mods.compose(mods.alibi(slopes), mods.softcap(3.0)),
                           SLOPES, False),
}
CAUSAL_SCORE_MODS = {"relative_causal"}


def _dense_twin(query, key, value, score_mod, *, is_causal):
  """The dense computation, written out: logits, the mod on the full grid, masked softmax."""
  key, value = jnp.repeat(key, N // K, axis=2), jnp.repeat(value, N // K, axis=2)
  logits = jnp.einsum("btnh,bsnh->bnts", query, key) * H**-0.5
  logits = jnp.broadcast_to(score_mod(logits, *mods.grid_index(B, N, T, T)), logits.shape)
  if is_causal:
    logits = jnp.where(jnp.tril(jnp.ones((T, T), bool)), logits, -jnp.inf)
  weights = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("bnts,bsnh->btnh", weights, value)


@functools.cache
def _score_case(name, implementation, twin):
  make, _, _ = SCORE_MODS[name]
  is_causal = name in CAUSAL_SCORE_MODS
  attention = _attention(implementation)

  def loss(query, key, value, closed, cotangent):
    if twin == "mod":
      out = attention(query, key, value, is_causal=is_causal, score_mod=make(closed))
    elif twin == "dense":
      out = _dense_twin(query, key, value, make(closed), is_causal=is_causal)
    else:  # jax.nn with the mod evaluated into a dense bias
      bias = make(closed)(jnp.zeros((1, N, T, T)), *mods.grid_index(1, N, T, T))
      out = jax.nn.dot_product_attention(query, key, value, jnp.broadcast_to(bias, (1, N, T, T)),
                                         is_causal=is_causal, implementation="xla")
    return jnp.sum(out * cotangent), out

  return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=str)
@pytest.mark.parametrize("name", sorted(SCORE_MODS))
def test_score_mod_equals_its_dense_twin_with_gradients_into_closed_over_arrays(name,
                                                                                implementation):
  _, closed, additive = SCORE_MODS[name]
  query, key, value, cotangent = _inputs(1)
  args = (query, key, value, jnp.asarray(closed, jnp.float32), cotangent)
  grads, out = _score_case(name, implementation, "mod")(*args)
  twins = ["dense", "jax.nn"] if additive else ["dense"]
  for twin in twins:
    twin_grads, twin_out = _score_case(name, None, twin)(*args)
    np.testing.assert_allclose(out, twin_out, atol=1e-5, rtol=0, err_msg=twin)
    for what, got, want in zip(("d_query", "d_key", "d_value", "d_closed"), grads, twin_grads,
                               strict=True):
      np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5, err_msg=f"{twin}: {what}")
  assert np.any(np.asarray(grads[3]) != 0)  # the closed-over array really learns


def test_softcap_bounds_the_logits_and_alibi_by_hand():
  score = jnp.asarray([-100.0, 0.0, 1.0, 100.0])
  capped = mods.softcap(5.0)(score, 0, 0, 0, 0)
  np.testing.assert_allclose(capped, 5 * np.tanh(np.asarray(score) / 5), rtol=1e-6)
  assert np.all(np.abs(capped) <= 5.0)  # (tanh rounds to 1 in float32 far out)
  # Two heads have slopes 2^-4 and 2^-8 (Press et al.): distance 3 costs 3/16 and 3/256.
  alibi = mods.alibi(positional.alibi_slopes(2))
  np.testing.assert_allclose(alibi(jnp.zeros(()), 0, 0, 5, 2), -3 / 16, rtol=1e-6)
  np.testing.assert_allclose(alibi(jnp.zeros(()), 0, 1, 2, 5), -3 / 256, rtol=1e-6)


# ----------------------------------------------------------------------------- block sparsity


def _expected_kinds(allowed, block, per_batch):
  """Exact block classification from a dense bool [B, N, T, S] (numpy)."""
  b, n, t, s = allowed.shape
  nq, nk = -(-t // block), -(-s // block)
  padded = np.zeros((b, n, nq * block, nk * block), bool)
  padded[:, :, :t, :s] = allowed
  blocks = padded.reshape(b, n, nq, block, nk, block)
  live = blocks.any(axis=(1, 3, 5))  # [B, nQ, nK]
  full = blocks.all(axis=(1, 3, 5))
  if not per_batch:
    live, full = live.any(0, keepdims=True), full.all(0, keepdims=True)
  return np.where(full, FULL, np.where(live, 1, EMPTY))


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_skipped_blocks_are_exactly_the_empty_ones(data):
  length = data.draw(st.integers(9, 40))
  batch = data.draw(st.integers(1, 2))
  segments = np.sort(np.asarray(data.draw(st.lists(
      st.lists(st.integers(0, 4), min_size=length, max_size=length),
      min_size=batch, max_size=batch))), axis=1)
  window = data.draw(st.none() | st.tuples(st.integers(0, 12), st.integers(0, 12)))
  causal = data.draw(st.booleans())
  traced = data.draw(st.booleans())  # segment ids known at trace time, or only on device
  mask_mod = mods.document(jnp.asarray(segments))
  kwargs = dict(is_causal=causal, local_window_size=window, block_q=8, block_k=8)
  walked = lambda bm: chunked._walk(bm)[0].kind  # what the kernel walks: [B|1, nQ, nK]
  if traced:
    plan = jax.jit(lambda ids: walked(chunked.call_block_mask(
        batch, length, length, 2, mask_mod=mods.document(ids), **kwargs)))(segments)
  else:
    result = chunked.call_block_mask(batch, length, length, 2, mask_mod=mask_mod, **kwargs)
    assert isinstance(result.kind, np.ndarray)  # derived at trace time
    plan = walked(result)
  per_batch = batch > 1 and -(-length // 8) > 1
  allowed = np.asarray(jnp.broadcast_to(mods.dense_mask(
      mods.and_masks(mask_mod, mods.causal() if causal else None,
                     mods.sliding_window(*window) if window else None),
      batch, 2, length, length), (batch, 2, length, length)))
  np.testing.assert_array_equal(np.asarray(plan), _expected_kinds(allowed, 8, per_batch))


def test_document_blocks_skipped_and_full_blocks_unmasked():
  ids = jnp.asarray(np.repeat(np.arange(4), 16)[None], jnp.int32)  # 4 documents of 16
  plan = chunked.call_block_mask(1, 64, 64, 2, mask_mod=mods.document(ids), block_q=16,
                                 block_k=16)
  np.testing.assert_array_equal(plan.kind[0, 0], np.eye(4, dtype=int) * FULL)  # 12 of 16 skipped
  assert (plan.max_kv_blocks, plan.max_q_blocks) == (1, 1)


# ----------------------------------------------------------------------------- transformations


def test_jit_vmap_and_grad_over_closed_over_arrays():
  query, key, value, _ = _inputs(2)

  def attend(slopes, segment_ids):
    mod = mods.alibi(slopes)
    return chunked.chunked_attention(query, key, value, score_mod=mod, block_q=BLOCK,
                                     block_k=BLOCK, mask_mod=mods.document(segment_ids)).sum()

  def dense(slopes, segment_ids):
    bias = mods.alibi(slopes)(jnp.zeros((1, N, T, T)), *mods.grid_index(1, N, T, T))
    mask = mods.dense_mask(mods.document(segment_ids), B, N, T, T)
    return jax.nn.dot_product_attention(query, key, value, bias, mask).sum()

  slopes = jnp.stack([SLOPES, 2 * SLOPES, SLOPES[::-1]])
  ids = jnp.stack([SEGMENTS, SEGMENTS[::-1], jnp.zeros_like(SEGMENTS)])
  got = jax.jit(jax.vmap(jax.value_and_grad(attend)))(slopes, ids)
  want = jax.vmap(jax.value_and_grad(dense))(slopes, ids)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-5)


def test_fully_masked_rows_are_zero_with_finite_gradients():
  query, key, value, _ = _inputs(3)
  # Query 3 of example 0 may see nothing: its segment id appears among no keys.
  q_ids = SEGMENTS.at[0, 3].set(9)
  mod = mods.document(q_ids, SEGMENTS)
  for implementation in IMPLEMENTATIONS:
    attention = functools.partial(_attention(implementation), mask_mod=mod)
    out = attention(query, key, value)
    np.testing.assert_array_equal(out[0, 3], 0.0)
    loss = lambda q, k, v, attention=attention: jnp.sum(jnp.sin(attention(q, k, v)))
    grads = jax.grad(loss, argnums=(0, 1, 2))(query, key, value)
    assert all(np.all(np.isfinite(g)) for g in grads)
    np.testing.assert_array_equal(grads[0][0, 3], 0.0)


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("kind", "mod", "match"), [
    ("mask_mod", lambda b, h, q, kv: (kv <= q).astype(jnp.int32), r"bool.*\[B, N, T, S\].*int32"),
    ("mask_mod", lambda b, h, q, kv: jnp.ones((3,), bool), r"\(2, 4, 24, 24\).*\(3,\)"),
    ("score_mod", lambda s, b, h, q, kv: s > 0, r"float.*bool"),
    ("score_mod", lambda s, b, h, q, kv: jnp.zeros((2, 4, 24, 24, 2)), r"\(2, 4, 24, 24, 2\)"),
    ("score_mod", "not callable", "callable"),
])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=str)
def test_mods_returning_the_wrong_dtype_or_shape_raise(kind, mod, match, implementation):
  query, key, value, _ = _inputs()
  with pytest.raises(ValueError, match=match):
    attn_jax.dot_product_attention(query, key, value, implementation=implementation,
                                   **{kind: mod})


@pytest.mark.parametrize(("kind", "mod", "match"), [
    ("score_mod", lambda logits: logits, r"score, b, h, q_idx, kv_idx"),
    ("score_mod", lambda logits, head: logits, r"score, b, h, q_idx, kv_idx"),
    ("mask_mod", lambda q_idx, kv_idx: kv_idx <= q_idx, r"b, h, q_idx, kv_idx"),
])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=str)
def test_old_style_mods_raise_type_error_naming_the_signature(kind, mod, match, implementation):
  query, key, value, _ = _inputs()
  with pytest.raises(TypeError, match=match):
    _attention(implementation)(query, key, value, **{kind: mod})


def test_cudnn_refuses_mods_and_the_default_never_sends_them_there(monkeypatch):
  query, key, value, _ = (x.astype(jnp.bfloat16) for x in _inputs())
  from attn_jax.core import cudnn

  monkeypatch.setattr(cudnn, "device_capability", lambda: (9, 0))
  monkeypatch.setattr(cudnn, "cudnn_version", lambda: 91000)
  assert attn_jax.select_implementation(query, key, value, is_causal=True) == "cudnn"
  for kind, mod in (("mask_mod", mods.causal()), ("score_mod", mods.softcap(5.0))):
    assert attn_jax.select_implementation(query, key, value, **{kind: mod}) != "cudnn"
    with pytest.raises(ValueError, match="score_mod or mask_mod"):
      attn_jax.select_implementation(query, key, value, implementation="cudnn", **{kind: mod})


# ----------------------------------------------------------------------------- memory


@pytest.mark.parametrize("mod", ["document", "alibi", "relative"])
def test_chunked_holds_no_attention_matrix_for_any_mod(mod):
  length, heads = 2048, 2
  spec = jax.ShapeDtypeStruct((1, length, heads, 16), jnp.float32)
  ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
  table = jax.ShapeDtypeStruct((32, heads), jnp.float32)

  def loss(q, k, v, ids, table):
    score_mod = {"alibi": mods.alibi(table[0]),
                 "relative": mods.relative_position(table)}.get(mod)
    mask_mod = mods.document(ids) if mod == "document" else None
    out = chunked.chunked_attention(q, k, v, score_mod=score_mod, mask_mod=mask_mod,
                                    block_q=256, block_k=256)
    return jnp.sum(out**2)

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 4))).lower(
      spec, spec, spec, ids, table).compile()
  one_head_matrix = length * length * 4
  assert compiled.memory_analysis().temp_size_in_bytes < one_head_matrix / 2
