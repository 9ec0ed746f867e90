"""Positional schemes: absolute embeddings, rotary embeddings and relative biases.

Every function takes explicit integer ``positions`` rather than assuming ``arange(seq_len)``, so
packed sequences (positions restarting per segment), offsets (decoding from step k) and
left-padding all work. Biases come out as ``[..., num_heads, q_len, kv_len]``, ready to be passed
as ``bias`` to ``dot_product_attention`` (broadcastable to ``[batch, num_heads, q_len, kv_len]``).

Example:
  >>> from attn_jax.core import positional
  >>> x = jnp.ones((1, 6, 2, 8))  # [batch, seq_len, num_heads, head_dim]
  >>> bias = positional.alibi_bias(2, jnp.arange(6), jnp.arange(6))  # [heads, T, S]
  >>> attn_jax.dot_product_attention(x, x, x, bias=bias).shape
  (1, 6, 2, 8)
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

#: Absolute positional schemes: embeddings added to the token embedding.
ABSOLUTE = ("sinusoidal", "learned")
#: Schemes applied inside every attention layer (rotations, score mods).
IN_ATTENTION = ("rope", "alibi", "relative")
#: Every positional-scheme name of the toolkit (modules, configs).
SCHEMES = ("none", *ABSOLUTE, *IN_ATTENTION)


def _check_positive_even(value: int, name: str) -> None:
  if value <= 0 or value % 2:
    raise ValueError(f"{name} must be a positive even int, got {value}")


def sinusoidal_embedding(
    positions: Array, dim: int, max_timescale: float = 10000.0,
    dtype: jnp.dtype = jnp.float32) -> Array:
  """Fixed sinusoidal embedding (Vaswani et al. 2017, section 3.5).

  Frequencies are the paper's ``1 / max_timescale^(2i / dim)`` for ``i < dim / 2``. Layout: the
  sines fill the first half and the cosines the second half (``[sin(p w_0..), cos(p w_0..)]``,
  as in tensor2tensor and the Flax lm1b example) rather than the paper's interleaving; the two
  differ only by a fixed permutation of the features.

  Args:
    positions: int (or float) [..., seq_len].
    dim: the embedding width, an even int.
    max_timescale: the longest wavelength, ``10000`` in the paper.
    dtype: the dtype of the result (computed in float32).

  Returns:
    [..., seq_len, dim] in ``dtype``.

  Example:
    >>> emb = sinusoidal_embedding(jnp.arange(4), 6)  # [seq_len=4, dim=6]
    >>> emb.shape
    (4, 6)
    >>> emb[0]  # position 0: sin 0 = 0, cos 0 = 1
    Array([0., 0., 0., 1., 1., 1.], dtype=float32)
  """
  _check_positive_even(dim, "dim")
  half = dim // 2
  inv_freq = max_timescale ** (-np.arange(half, dtype=np.float32) * 2.0 / dim)  # [dim/2]
  # [..., seq_len, 1] * [dim/2] -> [..., seq_len, dim/2]
  angles = jnp.asarray(positions, jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1).astype(dtype)


def learned_embedding(table: Array, positions: Array) -> Array:
  """Look up learned absolute position embeddings: ``table[positions]``.

  Out-of-range positions raise ``ValueError`` when ``positions`` is concrete. Under ``jit`` they
  cannot be checked, and the row comes back as NaN (not silently clamped to the last row, jnp's
  default), so the error still shows up in the loss.

  Args:
    table: [max_len, dim], one learned row per position.
    positions: int [..., seq_len] in ``[0, max_len)``.

  Returns:
    [..., seq_len, dim] in the table's dtype.

  Example:
    >>> table = jnp.arange(6.0).reshape(3, 2)  # [max_len=3, dim=2]
    >>> learned_embedding(table, jnp.array([2, 0]))
    Array([[4., 5.],
           [0., 1.]], dtype=float32)
  """
  table = jnp.asarray(table)
  if table.ndim != 2:
    raise ValueError(f"table must be [max_len, dim], got shape {table.shape}")
  positions = jnp.asarray(positions)
  if not jnp.issubdtype(positions.dtype, jnp.integer):
    raise ValueError(f"positions must hold integers, got dtype {positions.dtype}")
  try:
    concrete = np.asarray(positions)
  except jax.errors.TracerArrayConversionError:
    concrete = None  # traced under jit: out-of-range rows become NaN below
  if concrete is not None and concrete.size and (
      concrete.min() < 0 or concrete.max() >= table.shape[0]):
    raise ValueError(
        f"positions must lie in [0, {table.shape[0]}) for table {table.shape}; got range "
        f"[{concrete.min()}, {concrete.max()}]")
  # mode="fill" with no negative wrapping: any out-of-range index reads the fill value (NaN).
  return table.at[positions].get(mode="fill", wrap_negative_indices=False)


def apply_rope(x: Array, positions: Array, max_wavelength: float = 10000.0) -> Array:
  """Rotary position embedding (Su et al. 2021, RoFormer), rotate-half convention.

  Feature ``k`` is paired with feature ``k + head_dim/2`` (as in Gemma and LLaMA, not the
  paper's adjacent pairs) and each pair is rotated by the angle ``position * theta_k`` with
  ``theta_k = max_wavelength^(-2k / head_dim)``. Then ``<rope(q, m), rope(k, n)>`` depends on the
  positions only through ``m - n``.

  Args:
    x: queries or keys, [..., seq_len, num_heads, head_dim] with head_dim even.
    positions: [..., seq_len], broadcastable against x's leading [..., seq_len] (e.g.
      [seq_len] for a whole batch).
    max_wavelength: the base of the angles' geometric sequence.

  Returns:
    x's shape and dtype; sin/cos and the rotation are computed in float32.

  Example:
    >>> q = jnp.ones((5, 1, 4))  # [seq_len, num_heads, head_dim]: the same vector everywhere
    >>> r = apply_rope(q, jnp.arange(5))[:, 0]  # [5, 4]
    >>> scores = r @ r.T  # depends on m - n only: constant along each diagonal
    >>> bool(jnp.allclose(jnp.diagonal(scores, 1), scores[0, 1], atol=1e-5))
    True
  """
  if x.ndim < 3:
    raise ValueError(f"x must be [..., seq_len, num_heads, head_dim], got shape {x.shape}")
  head_dim = x.shape[-1]
  _check_positive_even(head_dim, "head_dim")
  positions = jnp.asarray(positions)
  if positions.ndim < 1 or positions.shape[-1] != x.shape[-3]:
    raise ValueError(
        f"positions must be [..., seq_len] with seq_len={x.shape[-3]} for x {x.shape}, "
        f"got shape {positions.shape}")
  try:
    jnp.broadcast_shapes(positions.shape, x.shape[:-2])
  except ValueError as e:
    raise ValueError(
        f"positions {positions.shape} do not broadcast against x's [..., seq_len] "
        f"{x.shape[:-2]}") from e
  freq_exponents = 2.0 * np.arange(head_dim // 2, dtype=np.float32) / head_dim
  inv_freq = jnp.asarray(max_wavelength ** -freq_exponents, jnp.float32)  # [head_dim/2]
  # [..., seq_len, 1, 1] * [head_dim/2] -> [..., seq_len, 1, head_dim/2]: shared by every head.
  angles = positions.astype(jnp.float32)[..., None, None] * inv_freq
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x32 = x.astype(jnp.float32)
  first, second = jnp.split(x32, 2, axis=-1)  # each [..., seq_len, num_heads, head_dim/2]
  rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return rotated.astype(x.dtype)


def alibi_slopes(num_heads: int) -> Array:
  """Per-head ALiBi slopes (Press et al. 2022).

  For a power of two ``n``, head i (1-based) gets ``2^(-8 i / n)``: 8 heads -> 1/2, 1/4, ...,
  1/256. Otherwise, following the paper's code, take the slopes for the largest power of two
  ``c < n`` and add every other slope of the ``2c`` sequence, ``2^(-4 i / c)`` for odd i, until
  there are ``n``.

  Args:
    num_heads: the number of heads, a positive int.

  Returns:
    float32 [num_heads].

  Example:
    >>> alibi_slopes(4)
    Array([0.25      , 0.0625    , 0.015625  , 0.00390625], dtype=float32)
  """
  if num_heads <= 0:
    raise ValueError(f"num_heads must be a positive int, got {num_heads}")
  closest = 2 ** math.floor(math.log2(num_heads))
  slopes = [2.0 ** (-8.0 * i / closest) for i in range(1, closest + 1)]
  slopes += [2.0 ** (-4.0 * i / closest) for i in range(1, 2 * (num_heads - closest), 2)]
  return jnp.asarray(slopes, jnp.float32)


def _relative_positions(query_positions: Array, key_positions: Array) -> Array:
  """``key - query``: [..., T] and [..., S] -> [..., T, S] (leading dims broadcast)."""
  query_positions = jnp.asarray(query_positions)
  key_positions = jnp.asarray(key_positions)
  if query_positions.ndim < 1 or key_positions.ndim < 1:
    raise ValueError(
        "query_positions and key_positions must be [..., q_len] and [..., kv_len], got shapes "
        f"{query_positions.shape} and {key_positions.shape}")
  try:
    jnp.broadcast_shapes(query_positions.shape[:-1], key_positions.shape[:-1])
  except ValueError as e:
    raise ValueError(
        f"leading dims of query_positions {query_positions.shape} and key_positions "
        f"{key_positions.shape} do not broadcast") from e
  return key_positions[..., None, :] - query_positions[..., :, None]


def alibi_bias(num_heads: int, query_positions: Array, key_positions: Array) -> Array:
  """ALiBi bias ``-slope_h * |i - j|`` (Press et al. 2022).

  Symmetric (encoder) form: distance is penalised in both directions. The paper's causal form,
  ``-slope * (i - j)`` for ``j <= i``, is this bias restricted by a causal mask, so causal users
  combine it with ``make_causal_mask``.

  Args:
    num_heads: the number of heads (one slope each, `alibi_slopes`).
    query_positions: int [..., q_len].
    key_positions: int [..., kv_len] (leading dims broadcast with the queries').

  Returns:
    float32 [..., num_heads, q_len, kv_len].

  Example:
    >>> alibi_bias(2, jnp.arange(3), jnp.arange(3))[0]  # head 0 of 2: slope 1/16
    Array([[-0.    , -0.0625, -0.125 ],
           [-0.0625, -0.    , -0.0625],
           [-0.125 , -0.0625, -0.    ]], dtype=float32)
  """
  distance = jnp.abs(_relative_positions(query_positions, key_positions)).astype(jnp.float32)
  # [num_heads, 1, 1] * [..., 1, q_len, kv_len] -> [..., num_heads, q_len, kv_len]
  return -alibi_slopes(num_heads)[:, None, None] * distance[..., None, :, :]


def relative_position_bucket(
    relative_position: Array, *, bidirectional: bool = True, num_buckets: int = 32,
    max_distance: int = 128) -> Array:
  """T5's bucketing of ``key_position - query_position`` (Raffel et al. 2020).

  The mesh-tensorflow / Hugging Face formula, float32 included so the buckets match exactly:
  when bidirectional, half the buckets hold positive offsets (keys after the query); within a
  half, offsets below ``max_exact = buckets_per_half / 2`` get a bucket each, and larger ones
  share logarithmically wider buckets up to ``max_distance``, beyond which all share the last.
  Unidirectional: keys after the query (offset > 0) all fall in bucket 0.

  Args:
    relative_position: int [...], ``key_position - query_position``.
    bidirectional: whether keys after the query get buckets of their own (an encoder).
    num_buckets: the number of buckets, both directions together when bidirectional.
    max_distance: offsets at or beyond it share the last bucket of their direction.

  Returns:
    int32 [...] in ``[0, num_buckets)``.

  Example:
    >>> relative_position_bucket(jnp.array([-100, -3, 0, 3, 100]), num_buckets=8, max_distance=16)
    Array([3, 2, 0, 6, 7], dtype=int32)
  """
  relative_position = jnp.asarray(relative_position)
  if not jnp.issubdtype(relative_position.dtype, jnp.integer):
    raise ValueError(f"relative_position must hold integers, got {relative_position.dtype}")
  relative_position = relative_position.astype(jnp.int32)
  total_buckets = num_buckets
  bucket = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    bucket += (relative_position > 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(relative_position)
  else:
    n = jnp.maximum(-relative_position, 0)
  max_exact = num_buckets // 2
  if max_exact <= 0 or max_distance <= max_exact:
    raise ValueError(
        f"need num_buckets per direction >= 2 and max_distance > {max_exact}; got num_buckets="
        f"{total_buckets}, max_distance={max_distance}")
  # max(n, max_exact) only keeps log(0) out of the branch `where` discards anyway.
  n_large = jnp.maximum(n, max_exact).astype(jnp.float32)
  large = max_exact + (
      jnp.log(n_large / max_exact) / math.log(max_distance / max_exact)
      * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return bucket + jnp.where(n < max_exact, n, large)


def relative_position_bias(
    table: Array, query_positions: Array, key_positions: Array, *, bidirectional: bool = True,
    num_buckets: int | None = None, max_distance: int = 128) -> Array:
  """T5 relative position bias: one learned scalar per (bucket, head).

  Args:
    table: [num_buckets, num_heads], the learned biases.
    query_positions: int [..., q_len].
    key_positions: int [..., kv_len] (leading dims broadcast with the queries').
    bidirectional: as in `relative_position_bucket`.
    num_buckets: defaults to ``table.shape[0]``; must equal it when given.
    max_distance: as in `relative_position_bucket`.

  Returns:
    [..., num_heads, q_len, kv_len] in the table's dtype.

  Example:
    >>> table = jnp.zeros((8, 2)).at[0].set(1.0)  # bucket 0 (offset 0): bias 1
    >>> relative_position_bias(table, jnp.arange(3), jnp.arange(3))[0]
    Array([[1., 0., 0.],
           [0., 1., 0.],
           [0., 0., 1.]], dtype=float32)
  """
  table = jnp.asarray(table)
  if table.ndim != 2:
    raise ValueError(f"table must be [num_buckets, num_heads], got shape {table.shape}")
  if num_buckets is None:
    num_buckets = table.shape[0]
  if table.shape[0] != num_buckets:
    raise ValueError(
        f"table must be [num_buckets={num_buckets}, num_heads], got shape {table.shape}")
  buckets = relative_position_bucket(
      _relative_positions(query_positions, key_positions), bidirectional=bidirectional,
      num_buckets=num_buckets, max_distance=max_distance)  # [..., q_len, kv_len]
  bias = table[buckets]  # [..., q_len, kv_len, num_heads]
  return jnp.moveaxis(bias, -1, -3)  # [..., num_heads, q_len, kv_len]
