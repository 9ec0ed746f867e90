"""MultiHeadAttention: parity with flax.nnx, shapes, masks, scores, positions, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attn_jax.nn import MultiHeadAttention


def _inputs(*shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


def _copy_from_flax(flax_mha: nnx.MultiHeadAttention, ours: MultiHeadAttention) -> None:
  """Load flax's separate q/k/v/out weights into our fused [D, K, G + 2, H] kernel."""
  query, key, value = (getattr(flax_mha, name).kernel[...] for name in ("query", "key", "value"))
  d, n, h = query.shape  # flax: [D, N, H] each, N = K here (no grouped heads)
  ours.qkv_kernel[...] = jnp.concatenate(
      [query.reshape(d, n, 1, h), key[:, :, None], value[:, :, None]], axis=2)
  # Random biases (flax starts them at zero) so the parity covers them; flax's key bias is a
  # softmax no-op that attn_jax omits, so it may hold anything.
  keys = jax.random.split(jax.random.key(7), 3)
  for k, name in zip(keys, ["query", "key", "value"], strict=True):
    getattr(flax_mha, name).bias[...] = jax.random.normal(k, getattr(flax_mha, name).bias.shape)
  ours.query_bias[...] = flax_mha.query.bias[...]
  ours.value_bias[...] = flax_mha.value.bias[...]
  ours.out_kernel[...] = flax_mha.out.kernel[...]
  ours.out_bias[...] = flax_mha.out.bias[...]


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_flax_nnx_multi_head_attention(cross, causal):
  flax_mha = nnx.MultiHeadAttention(num_heads=4, in_features=16, decode=False,
                                    rngs=nnx.Rngs(0))
  ours = MultiHeadAttention(num_heads=4, in_features=16, rngs=nnx.Rngs(1))
  _copy_from_flax(flax_mha, ours)
  x = _inputs(2, 6, 16)
  y = _inputs(2, 6, 16, seed=1) if cross else None
  mask = jnp.tril(jnp.ones((6, 6), bool))[None, None] if causal else None
  expected = flax_mha(x, y, mask=mask)
  np.testing.assert_allclose(ours(x, y, is_causal=causal), expected, atol=1e-5)
  np.testing.assert_allclose(ours(x, y, mask=mask), expected, atol=1e-5)
  out, weights = ours(x, y, mask=mask, return_weights=True)
  np.testing.assert_allclose(out, expected, atol=1e-5)
  assert weights.shape == (2, 4, 6, 6)
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)


def test_shapes_cross_attention_and_grouped_heads():
  mha = MultiHeadAttention(num_heads=4, num_kv_heads=2, in_features=16, out_features=8,
                           rngs=nnx.Rngs(0))
  out, weights = mha(_inputs(3, 5, 16), _inputs(3, 7, 16, seed=1), return_weights=True)
  assert out.shape == (3, 5, 8) and weights.shape == (3, 4, 5, 7)
  # Parameters: fused qkv [16, 2, 2 + 2, 4], query bias [4, 4], value bias [2, 4], out [4, 4, 8],
  # out bias [8].
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(mha, nnx.Param)))
  assert n_params == 16 * 8 * 4 + 4 * 4 + 2 * 4 + 4 * 4 * 8 + 8


def test_grouped_query_heads_read_their_key_value_head():
  """The [D, K, G + 2, H] kernel: query head n = k * G + g, then key and value of head k, which
  jax.nn's grouped-query attention (query head n reads kv head n // G) must agree with."""
  mha = MultiHeadAttention(num_heads=4, num_kv_heads=2, in_features=8, use_bias=False,
                           rngs=nnx.Rngs(0))
  x = _inputs(2, 5, 8)
  w = mha.qkv_kernel[...]  # [D, K, G + 2, H] = [8, 2, 4, 2]
  query = jnp.einsum("btd,dkgh->btkgh", x, w[:, :, :2]).reshape(2, 5, 4, 2)
  key = jnp.einsum("btd,dkh->btkh", x, w[:, :, 2])
  value = jnp.einsum("btd,dkh->btkh", x, w[:, :, 3])
  heads = jax.nn.dot_product_attention(query, key, value, implementation="xla")
  expected = jnp.einsum("btnh,nhd->btd", heads, mha.out_kernel[...])
  np.testing.assert_allclose(mha(x), expected, atol=1e-5)
  np.testing.assert_allclose(mha(x, _inputs(2, 7, 8, seed=1)).shape, (2, 5, 8))


@pytest.mark.parametrize(("score", "positional"), [
    ("dot", "none"), ("cosine", "none"), ("additive", "none"), ("bilinear", "none"),
    ("dot", "rope"), ("dot", "alibi"), ("dot", "relative"), ("additive", "rope"),
])
def test_scores_and_positions_causal_by_gradient(score, positional):
  """No gradient flows from positions j > i into output i under a causal mask."""
  mha = MultiHeadAttention(num_heads=2, in_features=8, score=score, positional=positional,
                           rngs=nnx.Rngs(0))
  if positional == "relative":  # a zero table (its init) could hide a bucket or causality bug
    mha.relative_table[...] = _inputs(*mha.relative_table.shape, seed=3)
  x = _inputs(1, 6, 8)
  i = 2
  grad = jax.grad(lambda x: mha(x, is_causal=True)[0, i].sum())(x)
  assert np.all(np.isfinite(grad))
  assert np.all(grad[0, i + 1:] == 0.0)
  assert np.any(grad[0, :i + 1] != 0.0)
  # The fast path and the explicit-weights path agree.
  np.testing.assert_allclose(mha(x, is_causal=True), mha(x, is_causal=True,
                                                          return_weights=True)[0], atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_relative_positions_equal_an_explicit_t5_bias(causal, hf_t5_bucket):
  """The learned T5 table, bucketed bidirectionally for the encoder and one-way when causal,
  equals the same attention given the bias built from Hugging Face's bucket formula."""
  num_buckets, max_distance, heads, length = 8, 6, 2, 9
  kwargs = dict(num_heads=heads, in_features=8, num_buckets=num_buckets,
                max_distance=max_distance)
  relative = MultiHeadAttention(positional="relative", rngs=nnx.Rngs(0), **kwargs)
  plain = MultiHeadAttention(positional="none", rngs=nnx.Rngs(0), **kwargs)  # same weights
  table = np.asarray(_inputs(num_buckets, heads, seed=3))
  relative.relative_table[...] = jnp.asarray(table)
  bias = np.zeros((1, heads, length, length), np.float32)
  for t in range(length):
    for s in range(length):
      bias[0, :, t, s] = table[hf_t5_bucket(s - t, not causal, num_buckets, max_distance)]
  x = _inputs(2, length, 8)
  np.testing.assert_allclose(relative(x, is_causal=causal),
                             plain(x, bias=jnp.asarray(bias), is_causal=causal), atol=1e-5)
  # Every bucket the pattern uses receives gradient, in both directions when bidirectional.
  grads = nnx.grad(lambda module: module(x, is_causal=causal).sum())(relative)
  grad = np.asarray(grads["relative_table"][...])
  used = {hf_t5_bucket(d, not causal, num_buckets, max_distance)
          for d in range(-length + 1, length) if not (causal and d > 0)}
  assert all(np.any(grad[b] != 0) for b in used)


def test_bilinear_starts_as_dot():
  """The bilinear score's identity initialisation makes it equal the scaled dot product."""
  dot = MultiHeadAttention(num_heads=2, in_features=8, score="dot", rngs=nnx.Rngs(0))
  bil = MultiHeadAttention(num_heads=2, in_features=8, score="bilinear", rngs=nnx.Rngs(0))
  x = _inputs(2, 5, 8)
  np.testing.assert_allclose(bil(x), dot(x), atol=1e-5)


def test_rope_is_relative():
  """With RoPE and no content, shifting every position by the same offset changes nothing."""
  mha = MultiHeadAttention(num_heads=2, in_features=8, positional="rope", rngs=nnx.Rngs(0))
  x = _inputs(1, 5, 8)
  positions = jnp.arange(5)[None]
  np.testing.assert_allclose(mha(x, query_positions=positions),
                             mha(x, query_positions=positions + 7), atol=1e-5)


def test_dropout_active_in_train_inactive_in_eval():
  mha = MultiHeadAttention(num_heads=2, in_features=8, dropout_rate=0.5, rngs=nnx.Rngs(0))
  x = _inputs(2, 5, 8)
  train_a, train_b = mha(x), mha(x)
  assert not np.allclose(train_a, train_b)  # fresh dropout masks each call
  mha.eval()
  np.testing.assert_array_equal(mha(x), mha(x))
  no_dropout = MultiHeadAttention(num_heads=2, in_features=8, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(mha(x), no_dropout(x), atol=1e-6)


def test_fully_masked_query_rows_are_bias_only():
  mha = MultiHeadAttention(num_heads=2, in_features=8, rngs=nnx.Rngs(0))
  x = _inputs(1, 4, 8)
  mask = jnp.ones((1, 1, 4, 4), bool).at[:, :, 1].set(False)
  out = mha(x, mask=mask)
  # A fully masked row attends to nothing: its output is the output projection's bias alone.
  np.testing.assert_allclose(out[0, 1], mha.out_bias[...], atol=1e-6)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="num_kv_heads"):
    MultiHeadAttention(num_heads=4, num_kv_heads=3, in_features=16, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="in_features"):
    MultiHeadAttention(num_heads=3, in_features=16, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="score"):
    MultiHeadAttention(num_heads=2, in_features=16, score="nope", rngs=nnx.Rngs(0))
  mha = MultiHeadAttention(num_heads=2, in_features=8, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"\(5, 8\)"):
    mha(jnp.zeros((5, 8)))


# ----------------------------------------------------------------------------- mods in the module


@pytest.mark.parametrize("positional", ["alibi", "relative"])
def test_alibi_and_relative_positions_on_the_chunked_kernel_equal_xla(positional):
  """Score mods on every path: chunked (several blocks, no dense bias) equals XLA, gradients into
  the relative table included."""
  make = lambda implementation: MultiHeadAttention(
      num_heads=2, in_features=8, positional=positional, implementation=implementation,
      rngs=nnx.Rngs(0))
  chunked, xla = make("chunked"), make("xla")
  if positional == "relative":
    for mha in (chunked, xla):
      mha.relative_table[...] = _inputs(*mha.relative_table.shape, seed=3)
  x = _inputs(2, 600, 8)  # two 512-blocks per side
  for causal in (False, True):
    np.testing.assert_allclose(chunked(x, is_causal=causal), xla(x, is_causal=causal),
                               atol=2e-5)
  loss = lambda module: jnp.sum(module(x, is_causal=True) ** 2)
  got, want = nnx.grad(loss)(chunked), nnx.grad(loss)(xla)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4)
  if positional == "relative":
    assert np.any(np.asarray(got["relative_table"][...]) != 0)


@pytest.mark.parametrize("positional", ["alibi", "relative"])
def test_position_mods_hold_no_dense_bias(positional):
  """Forward + backward at L 4096 on the chunked path: far below one [T, S] float32 matrix
  (a dense [N, T, S] bias would take 128 MiB here; the kernel's temporaries are ~10 MiB)."""
  length = 4096
  mha = MultiHeadAttention(num_heads=2, in_features=16, positional=positional,
                           implementation="chunked", rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(mha, nnx.Param, ...)
  loss = lambda params, x: jnp.sum(nnx.merge(graphdef, params, rest)(x, is_causal=True) ** 2)
  x = jax.ShapeDtypeStruct((1, length, 16), jnp.float32)
  compiled = jax.jit(jax.grad(loss)).lower(params, x).compile()
  assert compiled.memory_analysis().temp_size_in_bytes < length * length * 4 / 2


def test_segment_ids_equal_the_explicit_segment_mask():
  from attn_jax.core import masks

  mha = MultiHeadAttention(num_heads=2, in_features=8, rngs=nnx.Rngs(0))
  x = _inputs(2, 9, 8)
  ids = jnp.asarray([[0, 0, 0, 1, 1, 2, 2, 2, 2], [0, 1, 1, 1, 1, 1, 1, 2, 2]])
  expected = mha(x, mask=masks.make_segment_mask(ids))
  np.testing.assert_allclose(mha(x, segment_ids=ids), expected, atol=1e-6)
  chunked = MultiHeadAttention(num_heads=2, in_features=8, implementation="chunked",
                               rngs=nnx.Rngs(0))
  np.testing.assert_allclose(chunked(x, segment_ids=ids, is_causal=True),
                             mha(x, mask=masks.make_segment_mask(ids), is_causal=True), atol=1e-5)


@pytest.mark.parametrize("score", ["additive", "bilinear"])
def test_weighted_scores_on_the_chunked_kernel_equal_the_reference(score):
  """Per-head weights on the chunked path (additive: the score function inside the kernel;
  bilinear: the dot product of W^T q) equal the vmapped single-head definition, gradients
  included."""
  make = lambda implementation: MultiHeadAttention(
      num_heads=4, num_kv_heads=2, in_features=16, score=score, implementation=implementation,
      rngs=nnx.Rngs(0))
  chunked, reference = make("chunked"), make("reference")
  for mha in (chunked, reference):  # per-head weights that differ between heads
    mha.score_params.set_value(jax.tree.map(
        lambda p: p + 0.3 * _inputs(*p.shape, seed=4), mha.score_params.get_value()))
  x = _inputs(2, 40, 16)
  loss = lambda module: jnp.sum(jnp.sin(module(x, is_causal=True)))
  np.testing.assert_allclose(chunked(x, is_causal=True), reference(x, is_causal=True), atol=1e-5)
  # The single-head definition with the score function itself, head by head.
  out, weights = reference(x, is_causal=True, return_weights=True)
  np.testing.assert_allclose(out, reference(x, is_causal=True), atol=1e-5)
  got, want = nnx.grad(loss)(chunked), nnx.grad(loss)(reference)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("score", ["dot", "additive"])
def test_sinks_are_a_learnable_parameter_passed_to_every_path(score):
  make = lambda implementation, sinks=True: MultiHeadAttention(
      num_heads=4, num_kv_heads=2, in_features=16, score=score, implementation=implementation,
      sinks=sinks, rngs=nnx.Rngs(0))
  assert make(None, sinks=False).sinks is None
  modules = {name: make(name) for name in ("reference", "chunked")}
  for module in modules.values():
    np.testing.assert_array_equal(module.sinks[...], np.zeros(4))  # initialised to zeros
    module.sinks[...] = jnp.array([-1.0, 0.0, 1.0, 3.0])
  x = _inputs(2, 10, 16)
  outs = {name: module(x, is_causal=True) for name, module in modules.items()}
  np.testing.assert_allclose(outs["chunked"], outs["reference"], atol=1e-5)
  # The weights path (single head, vmapped) carries the sinks too: rows sum to less than 1.
  out, weights = modules["reference"](x, is_causal=True, return_weights=True)
  np.testing.assert_allclose(out, outs["reference"], atol=1e-5)
  assert np.all(np.asarray(weights.sum(-1)) < 1.0)
  # A sink at -1e9 takes no weight: the module without sinks.
  plain = make("reference", sinks=False)
  modules["reference"].sinks[...] = jnp.full(4, -1e9)
  np.testing.assert_allclose(modules["reference"](x), plain(x), atol=1e-6)
  modules["reference"].sinks[...] = jnp.array([-1.0, 0.0, 1.0, 3.0])
  loss = lambda module: jnp.sum(jnp.sin(module(x, is_causal=True)))
  got, want = nnx.grad(loss)(modules["chunked"]), nnx.grad(loss)(modules["reference"])
  assert np.all(np.abs(np.asarray(want.sinks[...])) > 0)
  np.testing.assert_allclose(got.sinks[...], want.sinks[...], atol=1e-5)
