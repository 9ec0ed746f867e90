"""Tests for attn_jax/core/positional.py: hand values, references, dtypes, jit, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.core import positional

# ---------------------------------------------------------------------------------------------
# Sinusoidal embedding.


def test_sinusoidal_by_hand():
  emb = positional.sinusoidal_embedding(jnp.array([0, 1]), 4)
  assert emb.shape == (2, 4) and emb.dtype == jnp.float32
  # dim 4: frequencies 1 and 1/10000^(2/4) = 1/100; sines first, then cosines.
  np.testing.assert_allclose(emb[0], [0.0, 0.0, 1.0, 1.0], atol=1e-7)
  np.testing.assert_allclose(
      emb[1], [math.sin(1.0), math.sin(0.01), math.cos(1.0), math.cos(0.01)], rtol=1e-6)


def _paper_sinusoidal(positions, dim, max_timescale=10000.0):
  """Vaswani et al. 2017, literally: PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(...)."""
  pe = np.zeros(positions.shape + (dim,))
  for idx in np.ndindex(positions.shape):
    for i in range(dim // 2):
      angle = positions[idx] / max_timescale ** (2 * i / dim)
      pe[idx + (2 * i,)] = math.sin(angle)
      pe[idx + (2 * i + 1,)] = math.cos(angle)
  return pe


def test_sinusoidal_matches_paper_formula():
  positions = np.array([[0, 3, 17, 250], [5, 6, 7, 1000]])
  dim = 8
  ref = _paper_sinusoidal(positions, dim)
  emb = np.asarray(positional.sinusoidal_embedding(jnp.asarray(positions), dim))
  assert emb.shape == (2, 4, dim)
  # Our layout is the paper's with the sines gathered first and the cosines second.
  np.testing.assert_allclose(emb[..., : dim // 2], ref[..., 0::2], atol=1e-4)
  np.testing.assert_allclose(emb[..., dim // 2 :], ref[..., 1::2], atol=1e-4)
  np.testing.assert_allclose(
      positional.sinusoidal_embedding(jnp.asarray(positions), dim, max_timescale=100.0)[..., :4],
      _paper_sinusoidal(positions, dim, max_timescale=100.0)[..., 0::2], atol=1e-4)


def test_sinusoidal_offsets_dtype_jit():
  table = positional.sinusoidal_embedding(jnp.arange(10), 6)
  packed = jnp.array([[3, 4, 0, 1]])  # an offset sequence and a restarted one
  np.testing.assert_allclose(positional.sinusoidal_embedding(packed, 6)[0], table[packed[0]])
  bf16 = positional.sinusoidal_embedding(packed, 6, dtype=jnp.bfloat16)
  assert bf16.dtype == jnp.bfloat16
  jitted = jax.jit(positional.sinusoidal_embedding, static_argnums=1)(packed, 6)
  np.testing.assert_allclose(jitted, positional.sinusoidal_embedding(packed, 6), atol=1e-6)
  with pytest.raises(ValueError, match="dim must be a positive even int, got 5"):
    positional.sinusoidal_embedding(packed, 5)


# ---------------------------------------------------------------------------------------------
# Learned embedding.


def test_learned_embedding_gather_and_grad():
  table = jnp.arange(12.0).reshape(6, 2)
  positions = jnp.array([[0, 5, 2], [1, 1, 3]])
  emb = positional.learned_embedding(table, positions)
  assert emb.shape == (2, 3, 2)
  np.testing.assert_array_equal(emb[0], [[0, 1], [10, 11], [4, 5]])
  np.testing.assert_array_equal(emb[1], [[2, 3], [2, 3], [6, 7]])
  jitted = jax.jit(positional.learned_embedding)(table, positions)
  np.testing.assert_array_equal(jitted, emb)
  # The gradient of a gather is a scatter-add: each row receives its number of uses.
  grad = jax.grad(lambda t: positional.learned_embedding(t, positions).sum())(table)
  np.testing.assert_array_equal(grad[:, 0], [1, 2, 1, 1, 0, 1])


def test_learned_embedding_out_of_range():
  table = jnp.ones((4, 3))
  with pytest.raises(ValueError, match=r"\[0, 4\).*\(4, 3\).*\[0, 4\]"):
    positional.learned_embedding(table, jnp.array([0, 4]))
  with pytest.raises(ValueError, match=r"range \[-1, 2\]"):
    positional.learned_embedding(table, jnp.array([-1, 2]))
  # Under jit the check cannot run: out-of-range rows (negative ones included) come back NaN.
  out = jax.jit(positional.learned_embedding)(table, jnp.array([0, 4, -1, 3]))
  np.testing.assert_array_equal(np.isnan(out).all(axis=-1), [False, True, True, False])
  np.testing.assert_array_equal(np.asarray(out)[[0, 3]], 1.0)
  with pytest.raises(ValueError, match="integers"):
    positional.learned_embedding(table, jnp.array([0.0, 1.0]))
  with pytest.raises(ValueError, match=r"\[max_len, dim\].*\(4,\)"):
    positional.learned_embedding(jnp.ones(4), jnp.array([0]))


# ---------------------------------------------------------------------------------------------
# RoPE.


def _rotation(angle):
  return np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])


def test_rope_2d_is_rotation():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((5, 3, 2)).astype(np.float32)  # [seq_len, num_heads, 2]
  positions = np.array([0, 1, 2, 7, 30])
  out = np.asarray(positional.apply_rope(jnp.asarray(x), jnp.asarray(positions)))
  for t, m in enumerate(positions):
    for h in range(3):
      # head_dim 2: one pair, theta = 1, so position m rotates by m radians.
      np.testing.assert_allclose(out[t, h], _rotation(m) @ x[t, h], atol=1e-5)
  np.testing.assert_allclose(
      positional.apply_rope(jnp.array([[[1.0, 0.0]]]), jnp.array([1]))[0, 0],
      [math.cos(1.0), math.sin(1.0)], rtol=1e-6)


def test_rope_4d_block_rotation():
  # head_dim 4: features (0, 2) rotate by m * 1 and features (1, 3) by m / 100.
  x = np.array([0.3, -1.2, 0.7, 2.0], np.float32)
  m = 3
  rot = np.zeros((4, 4))
  rot[np.ix_([0, 2], [0, 2])] = _rotation(m * 1.0)
  rot[np.ix_([1, 3], [1, 3])] = _rotation(m / 100.0)
  out = positional.apply_rope(jnp.asarray(x)[None, None], jnp.array([m]))[0, 0]
  np.testing.assert_allclose(out, rot @ x, atol=1e-5)


def test_rope_matches_complex_reference():
  """Rotate-half RoPE is multiplication of (x_k + i x_{k+d/2}) by exp(i m theta_k)."""
  rng = np.random.default_rng(1)
  head_dim, max_wavelength = 8, 500.0
  x = rng.standard_normal((2, 4, 3, head_dim)).astype(np.float32)  # [batch, seq, heads, dim]
  positions = np.array([[0, 1, 2, 3], [9, 10, 0, 1]])
  theta = max_wavelength ** (-2.0 * np.arange(head_dim // 2) / head_dim)
  z = x[..., : head_dim // 2] + 1j * x[..., head_dim // 2 :]
  z = z * np.exp(1j * positions[:, :, None, None] * theta)
  ref = np.concatenate([z.real, z.imag], axis=-1)
  out = positional.apply_rope(jnp.asarray(x), jnp.asarray(positions), max_wavelength)
  np.testing.assert_allclose(out, ref, atol=1e-5)
  jitted = jax.jit(positional.apply_rope)(jnp.asarray(x), jnp.asarray(positions), max_wavelength)
  np.testing.assert_allclose(jitted, out, atol=1e-6)


def test_rope_relative_property():
  rng = np.random.default_rng(2)
  q = jnp.asarray(rng.standard_normal((1, 1, 16)), jnp.float32)  # [seq, heads, head_dim]
  k = jnp.asarray(rng.standard_normal((1, 1, 16)), jnp.float32)

  def score(m, n):
    rq = positional.apply_rope(q, jnp.array([m]))
    rk = positional.apply_rope(k, jnp.array([n]))
    return float(jnp.sum(rq * rk))

  assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-4)
  assert score(5, 2) == pytest.approx(score(3, 0), abs=1e-4)
  assert abs(score(5, 2) - score(5, 3)) > 1e-2  # the score does depend on m - n
  # Rotations keep norms, and position 0 is the identity.
  np.testing.assert_allclose(
      jnp.linalg.norm(positional.apply_rope(q, jnp.array([7]))), jnp.linalg.norm(q), rtol=1e-5)
  np.testing.assert_allclose(positional.apply_rope(q, jnp.array([0])), q)


def test_rope_broadcast_and_packing():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 5, 2, 4)), jnp.float32)
  shared = positional.apply_rope(x, jnp.arange(5))
  batched = positional.apply_rope(x, jnp.broadcast_to(jnp.arange(5), (2, 5)))
  np.testing.assert_allclose(shared, batched)
  # A packed row [0, 1, 2 | 0, 1] rotates its second segment like a fresh sequence.
  packed = positional.apply_rope(x, jnp.array([0, 1, 2, 0, 1]))
  fresh = positional.apply_rope(x[:, 3:], jnp.arange(2))
  np.testing.assert_allclose(packed[:, 3:], fresh, atol=1e-6)


def test_rope_bf16():
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((3, 2, 8)), jnp.float32)
  positions = jnp.array([1, 50, 1000])
  out16 = positional.apply_rope(x.astype(jnp.bfloat16), positions)
  assert out16.dtype == jnp.bfloat16 and out16.shape == x.shape
  # sin/cos in float32: the only error is bf16 rounding of the input and output.
  ref = positional.apply_rope(x.astype(jnp.bfloat16).astype(jnp.float32), positions)
  np.testing.assert_allclose(out16.astype(jnp.float32), ref, atol=2e-2, rtol=1e-2)


def test_rope_errors():
  with pytest.raises(ValueError, match="head_dim must be a positive even int, got 3"):
    positional.apply_rope(jnp.ones((2, 1, 3)), jnp.arange(2))
  with pytest.raises(ValueError, match=r"\[\.\.\., seq_len, num_heads, head_dim\].*\(2, 4\)"):
    positional.apply_rope(jnp.ones((2, 4)), jnp.arange(2))
  with pytest.raises(ValueError, match=r"seq_len=2.*\(2, 1, 4\).*\(3,\)"):
    positional.apply_rope(jnp.ones((2, 1, 4)), jnp.arange(3))
  with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 2\)"):
    positional.apply_rope(jnp.ones((2, 2, 1, 4)), jnp.ones((3, 2), jnp.int32))


# ---------------------------------------------------------------------------------------------
# ALiBi.


def _official_alibi_slopes(n):
  """The recursive recipe from github.com/ofirpress/attention_with_linear_biases."""

  def power_of_2(n):
    start = 2 ** (-(2 ** -(math.log2(n) - 3)))
    return [start * start**i for i in range(n)]

  if math.log2(n).is_integer():
    return power_of_2(n)
  closest = 2 ** math.floor(math.log2(n))
  return power_of_2(closest) + _official_alibi_slopes(2 * closest)[0::2][: n - closest]


def test_alibi_slopes_by_hand_and_reference():
  np.testing.assert_allclose(positional.alibi_slopes(8), [2.0**-i for i in range(1, 9)])
  # 6 heads: the 4-head slopes, then the odd-indexed slopes of the 8-head sequence.
  np.testing.assert_allclose(
      positional.alibi_slopes(6), [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])
  for n in range(1, 25):
    np.testing.assert_allclose(positional.alibi_slopes(n), _official_alibi_slopes(n), rtol=1e-6)
  with pytest.raises(ValueError, match="num_heads"):
    positional.alibi_slopes(0)


def test_alibi_bias():
  bias = positional.alibi_bias(2, jnp.arange(3), jnp.arange(4))
  assert bias.shape == (2, 3, 4) and bias.dtype == jnp.float32
  distance = np.array([[0, 1, 2, 3], [1, 0, 1, 2], [2, 1, 0, 1]])
  np.testing.assert_allclose(bias[0], -distance / 16)  # 2 heads: slopes 2^-4 and 2^-8
  np.testing.assert_allclose(bias[1], -distance / 256)
  # Only differences of positions matter, and leading dims broadcast: [2, T] x [S] -> [2, N, T, S].
  shifted = positional.alibi_bias(2, jnp.array([[0, 1, 2], [5, 6, 7]]), jnp.array([0, 1, 2, 3]))
  assert shifted.shape == (2, 2, 3, 4)
  np.testing.assert_allclose(shifted[0], bias)
  np.testing.assert_allclose(
      jax.jit(positional.alibi_bias, static_argnums=0)(2, jnp.arange(3), jnp.arange(4)), bias)
  with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 4\)"):
    positional.alibi_bias(2, jnp.zeros((2, 3)), jnp.zeros((3, 4)))


# ---------------------------------------------------------------------------------------------
# T5 relative position buckets and bias.


def test_t5_buckets_by_hand():
  # Bidirectional, 32 buckets, max_distance 128: 16 per side, exact below 8, then
  # 8 + int(log(n / 8) / log(16) * 8), capped at 15; keys after the query add 16.
  rel = jnp.array([0, -1, -7, -8, -15, -16, -32, -64, -127, -128, -1000, 1, 7, 8, 16, 200])
  np.testing.assert_array_equal(
      positional.relative_position_bucket(rel),
      [0, 1, 7, 8, 9, 10, 12, 14, 15, 15, 15, 17, 23, 24, 26, 31])
  # Unidirectional: future keys share bucket 0; exact below 16, then 16 + int(log(n/16)/log(8)*16).
  rel = jnp.array([3, 0, -5, -15, -16, -32, -64, -100, -128, -5000])
  np.testing.assert_array_equal(
      positional.relative_position_bucket(rel, bidirectional=False),
      [0, 0, 5, 15, 16, 21, 26, 30, 31, 31])


@pytest.mark.parametrize(
    "bidirectional, num_buckets, max_distance", [(True, 32, 128), (False, 32, 128), (True, 16, 40)])
def test_t5_buckets_match_hf_formula(bidirectional, num_buckets, max_distance, hf_t5_bucket):
  rel = np.arange(-300, 301)
  expected = [hf_t5_bucket(int(r), bidirectional, num_buckets, max_distance) for r in rel]
  bucket_fn = jax.jit(
      positional.relative_position_bucket,
      static_argnames=("bidirectional", "num_buckets", "max_distance"))
  got = bucket_fn(
      jnp.asarray(rel), bidirectional=bidirectional, num_buckets=num_buckets,
      max_distance=max_distance)
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(got, expected)


def test_relative_position_bias(hf_t5_bucket):
  num_buckets, num_heads = 32, 3
  table = jnp.arange(num_buckets * num_heads, dtype=jnp.float32).reshape(num_buckets, num_heads)
  query_positions, key_positions = jnp.arange(3), jnp.arange(5)
  bias = np.asarray(positional.relative_position_bias(table, query_positions, key_positions))
  assert bias.shape == (num_heads, 3, 5)
  for t in range(3):
    for s in range(5):
      # Relative position is key - query, as in T5.
      bucket = hf_t5_bucket(s - t, True, num_buckets, 128)
      np.testing.assert_array_equal(bias[:, t, s], np.asarray(table)[bucket])
  # By hand: query 0 / key 1 is offset +1 -> bucket 17; query 2 / key 0 is -2 -> bucket 2.
  np.testing.assert_array_equal(bias[:, 0, 1], table[17])
  np.testing.assert_array_equal(bias[:, 2, 0], table[2])
  bias_fn = jax.jit(positional.relative_position_bias, static_argnames="bidirectional")
  offsets = jnp.array([[0], [10]])  # [batch, 1]: the second example starts at position 10
  batched = bias_fn(table, offsets + jnp.arange(3), offsets + jnp.arange(5))
  assert batched.shape == (2, num_heads, 3, 5)
  np.testing.assert_array_equal(batched[1], bias)
  causal = bias_fn(table, query_positions, key_positions, bidirectional=False)
  np.testing.assert_array_equal(causal[:, 0, 4], table[0])  # future key -> bucket 0
  with pytest.raises(ValueError, match=r"num_buckets=16.*\(32, 3\)"):
    positional.relative_position_bias(table, query_positions, key_positions, num_buckets=16)
  with pytest.raises(ValueError, match=r"\[num_buckets, num_heads\].*\(32,\)"):
    positional.relative_position_bias(table[:, 0], query_positions, key_positions)
  with pytest.raises(ValueError, match="integers"):
    positional.relative_position_bucket(jnp.array([0.5]))
