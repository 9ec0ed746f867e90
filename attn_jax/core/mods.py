"""Programmable attention: score and mask modifications ("mods"), as in PyTorch's FlexAttention.

Two kinds of function, written with elementwise ``jnp`` code as if for scalars::

    mask_mod(b, h, q_idx, kv_idx) -> bool           # True = may attend
    score_mod(score, b, h, q_idx, kv_idx) -> score  # on the float32 logit, before masking

``b`` is the batch index, ``h`` the query head (0 to N-1), ``q_idx`` / ``kv_idx`` positions: int32
arrays that broadcast against each other and against ``score``. A mod may close over arrays
(segment ids, slopes, tables); `attn_jax.dot_product_attention` differentiates into the float
ones. Every implementation takes them ("reference", "xla": on the dense grid; "chunked": block by
block, skipping the blocks a mask_mod rules out).

This module holds the library of mods (each a few lines), the combinators, and the dense
evaluation that defines what a mod means on the full [B, N, T, S] grid. The attention masks of
`attn_jax.core.masks` and the ``is_causal`` / ``local_window_size`` / sequence-length arguments
are these same functions.

Example:
  >>> from attn_jax.core import mods
  >>> q = k = v = jax.random.normal(jax.random.key(0), (1, 8, 2, 16))  # [B, T, N, H]
  >>> out = attn_jax.dot_product_attention(q, k, v, mask_mod=mods.causal())
  >>> bool(jnp.allclose(out, attn_jax.dot_product_attention(q, k, v, is_causal=True), atol=1e-6))
  True
"""

import functools
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp

from attn_jax.core import positional

Array = jax.Array
#: ``mask_mod(b, h, q_idx, kv_idx) -> bool`` (True = may attend).
MaskMod = Callable[[Array, Array, Array, Array], Array]
#: ``score_mod(score, b, h, q_idx, kv_idx) -> score``.
ScoreMod = Callable[[Array, Array, Array, Array, Array], Array]


# ----------------------------------------------------------------------------- mask mods


def causal() -> MaskMod:
  """Query i attends keys j <= i (top-left aligned, as ``is_causal``).

  Example:
    >>> dense_mask(causal(), 1, 1, 3, 3)[0, 0].astype(int)
    Array([[1, 0, 0],
           [1, 1, 0],
           [1, 1, 1]], dtype=int32)
  """
  return lambda b, h, q_idx, kv_idx: kv_idx <= q_idx


def sliding_window(left: int, right: int = 0) -> MaskMod:
  """Query i attends keys i - left <= j <= i + right (``local_window_size=(left, right)``).

  Example:
    >>> dense_mask(sliding_window(1), 1, 1, 4, 4)[0, 0].astype(int)
    Array([[1, 0, 0, 0],
           [1, 1, 0, 0],
           [0, 1, 1, 0],
           [0, 0, 1, 1]], dtype=int32)
  """
  if left < 0 or right < 0:
    raise ValueError(f"sliding_window needs left, right >= 0; got ({left}, {right})")
  return lambda b, h, q_idx, kv_idx: (kv_idx >= q_idx - left) & (kv_idx <= q_idx + right)


def _lookup(x: Array, b: Array, idx: Array) -> Array:
  """x[b, idx] for x [B|1, L] (a size-1 batch axis is shared by every example); b and idx
  broadcast against each other."""
  return x[0, idx] if x.shape[0] == 1 else x[b, idx]


def padding(query_seq_lengths: Array | None = None,
            key_value_seq_lengths: Array | None = None) -> MaskMod:
  """Positions at or past an example's length are padding (the ``*_seq_lengths`` arguments).

  query_seq_lengths, key_value_seq_lengths: int [B] (None: no padding on that side).

  Example:
    >>> mod = padding(key_value_seq_lengths=jnp.array([2]))  # example 0 has 2 valid keys
    >>> dense_mask(mod, 1, 1, 1, 4)[0, 0].astype(int)
    Array([[1, 1, 0, 0]], dtype=int32)
  """
  def mod(b, h, q_idx, kv_idx):
    ok = jnp.ones((), bool)
    if query_seq_lengths is not None:
      ok = ok & (q_idx < jnp.asarray(query_seq_lengths)[b])
    if key_value_seq_lengths is not None:
      ok = ok & (kv_idx < jnp.asarray(key_value_seq_lengths)[b])
    return ok

  return mod


def document(query_segment_ids: Array, key_segment_ids: Array | None = None) -> MaskMod:
  """Packed sequences: attend only to keys of the query's own segment (document).

  query_segment_ids: int [B|1, T]; key_segment_ids: int [B|1, S] (default: the query's, for
  self-attention). Combine with `causal` for packed causal language modelling.

  Example:
    >>> mod = document(jnp.array([[0, 0, 1]]))  # two packed documents
    >>> dense_mask(mod, 1, 1, 3, 3)[0, 0].astype(int)
    Array([[1, 1, 0],
           [1, 1, 0],
           [0, 0, 1]], dtype=int32)
  """
  q_ids = jnp.asarray(query_segment_ids)
  kv_ids = q_ids if key_segment_ids is None else jnp.asarray(key_segment_ids)
  if q_ids.ndim != 2 or kv_ids.ndim != 2:
    raise ValueError(f"segment ids must be [batch, length]; got {q_ids.shape} and {kv_ids.shape}")
  return lambda b, h, q_idx, kv_idx: _lookup(q_ids, b, q_idx) == _lookup(kv_ids, b, kv_idx)


def prefix_lm(prefix_lengths: Array | int) -> MaskMod:
  """Prefix language model: bidirectional over each example's first ``prefix_lengths`` tokens,
  causal after them (Raffel et al. 2020). prefix_lengths: int, or int [B].

  Example:
    >>> dense_mask(prefix_lm(2), 1, 1, 4, 4)[0, 0].astype(int)  # the first 2 tokens see each other
    Array([[1, 1, 0, 0],
           [1, 1, 0, 0],
           [1, 1, 1, 0],
           [1, 1, 1, 1]], dtype=int32)
  """
  prefix = jnp.asarray(prefix_lengths)

  def mod(b, h, q_idx, kv_idx):
    length = prefix if prefix.ndim == 0 else prefix[b]
    return (kv_idx <= q_idx) | (kv_idx < length)

  return mod


def and_masks(*mods: MaskMod | None) -> MaskMod | None:
  """Pairs every mod allows (None entries skipped; None if none is left).

  Example:
    >>> mod = and_masks(causal(), None, sliding_window(1))
    >>> int(dense_mask(mod, 1, 1, 4, 4).sum())  # each query: itself and the key before
    7
  """
  mods = [m for m in mods if m is not None]
  if not mods:
    return None
  return lambda *index: functools.reduce(jnp.logical_and, (m(*index) for m in mods))


def or_masks(*mods: MaskMod) -> MaskMod:
  """Pairs some mod allows.

  Example:
    >>> mod = or_masks(causal(), lambda b, h, q_idx, kv_idx: kv_idx == 0)
    >>> dense_mask(mod, 1, 1, 2, 3)[0, 0].astype(int)
    Array([[1, 0, 0],
           [1, 1, 0]], dtype=int32)
  """
  return lambda *index: functools.reduce(jnp.logical_or, (m(*index) for m in mods))


# ----------------------------------------------------------------------------- score mods


def _positions(positions: Array | None, b: Array, idx: Array) -> Array:
  """Position of ``idx`` in example ``b``: idx itself, or positions [B|1, L] looked up."""
  return idx if positions is None else _lookup(jnp.asarray(positions), b, idx)


def alibi(slopes: Array, query_positions: Array | None = None,
          key_positions: Array | None = None) -> ScoreMod:
  """ALiBi (Press et al. 2022): ``score - slopes[h] * |key_pos - query_pos|``.

  slopes: float [N] (`attn_jax.core.positional.alibi_slopes`, or learnable); positions: int
  [B|1, T] / [B|1, S] (default 0..T-1). Symmetric, as `positional.alibi_bias`; with a causal mask
  it is the paper's decoder form.

  Example:
    >>> mod = alibi(jnp.array([0.5]))  # one head, slope 1/2
    >>> b, h, q_idx, kv_idx = grid_index(1, 1, 1, 3)
    >>> mod(jnp.zeros((1, 1, 1, 3)), b, h, q_idx, kv_idx)[0, 0]  # query 0 against keys 0, 1, 2
    Array([[ 0. , -0.5, -1. ]], dtype=float32)
  """
  def mod(score, b, h, q_idx, kv_idx):
    distance = jnp.abs(_positions(key_positions, b, kv_idx)
                       - _positions(query_positions, b, q_idx)).astype(score.dtype)
    return score - jnp.asarray(slopes)[h].astype(score.dtype) * distance

  return mod


def relative_position(table: Array, *, bidirectional: bool = True, max_distance: int = 128,
                      query_positions: Array | None = None,
                      key_positions: Array | None = None) -> ScoreMod:
  """T5 relative position bias (Raffel et al. 2020): ``score + table[bucket(kv - q), h]``.

  table: float [num_buckets, N] (learnable); buckets as `positional.relative_position_bucket`.

  Example:
    >>> table = jnp.zeros((32, 1)).at[0].set(1.0)  # [buckets, heads]: +1 at offset 0
    >>> mod = relative_position(table)
    >>> b, h, q_idx, kv_idx = grid_index(1, 1, 3, 3)
    >>> mod(jnp.zeros((1, 1, 3, 3)), b, h, q_idx, kv_idx)[0, 0]
    Array([[1., 0., 0.],
           [0., 1., 0.],
           [0., 0., 1.]], dtype=float32)
  """
  table = jnp.asarray(table)

  def mod(score, b, h, q_idx, kv_idx):
    relative = _positions(key_positions, b, kv_idx) - _positions(query_positions, b, q_idx)
    bucket = positional.relative_position_bucket(
        relative, bidirectional=bidirectional, num_buckets=table.shape[0],
        max_distance=max_distance)
    return score + table[bucket, h].astype(score.dtype)

  return mod


def softcap(cap: float | Array) -> ScoreMod:
  """Soft-capping (Gemma 2): ``cap * tanh(score / cap)``, logits kept within (-cap, cap).

  cap: a positive float, or a float array (it may be learnt: gradients flow into it).

  Example:
    >>> cap = softcap(5.0)  # 5 tanh(score / 5): scores stay in (-5, 5)
    >>> b = h = q = kv = jnp.int32(0)
    >>> round(float(cap(jnp.float32(10.0), b, h, q, kv)), 2)  # 5 tanh(2)
    4.82
  """
  if isinstance(cap, int | float) and not cap > 0:
    raise ValueError(f"softcap needs cap > 0; got {cap}")
  return lambda score, b, h, q_idx, kv_idx: cap * jnp.tanh(score / cap)


def compose(*mods: ScoreMod | None) -> ScoreMod | None:
  """Score mods applied left to right (None entries skipped; None if none is left).

  Example:
    >>> mod = compose(alibi(jnp.array([0.5])), None, softcap(1.0))  # ALiBi, then soft-capping
    >>> b, h, q_idx, kv_idx = grid_index(1, 1, 1, 3)
    >>> scores = mod(jnp.ones((1, 1, 1, 3)), b, h, q_idx, kv_idx)[0, 0, 0]  # tanh(1 - |j| / 2)
    >>> [round(x, 3) for x in scores.tolist()]
    [0.762, 0.462, 0.0]
  """
  mods = [m for m in mods if m is not None]
  if not mods:
    return None

  def mod(score, *index):
    for m in mods:
      score = m(score, *index)
    return score

  return mod


# ----------------------------------------------------------------------------- on the dense grid


def grid_index(batch: int, num_heads: int, q_len: int, kv_len: int):
  """int32 b [B,1,1,1], h [1,N,1,1], q_idx [1,1,T,1], kv_idx [1,1,1,S]: the full index grid.

  Example:
    >>> [x.shape for x in grid_index(2, 4, 8, 16)]  # b, h, q_idx, kv_idx
    [(2, 1, 1, 1), (1, 4, 1, 1), (1, 1, 8, 1), (1, 1, 1, 16)]
  """
  arange = lambda n, axis: jnp.arange(n, dtype=jnp.int32).reshape(
      [n if a == axis else 1 for a in range(4)])
  return arange(batch, 0), arange(num_heads, 1), arange(q_len, 2), arange(kv_len, 3)


def dense_mask(mask_mod: MaskMod, batch: int, num_heads: int, q_len: int, kv_len: int) -> Array:
  """``mask_mod`` on the full grid: bool broadcastable to [B, N, T, S] (size 1 on the axes it
  does not depend on). The definition the chunked kernel reproduces block by block.

  Example:
    >>> dense_mask(causal(), 2, 4, 8, 8).shape  # causality depends on neither b nor h
    (1, 1, 8, 8)
  """
  mask = jnp.asarray(mask_mod(*grid_index(batch, num_heads, q_len, kv_len)))
  # Any shape that broadcasts to the grid (a 0-d `noop_mask` included) becomes 4-D.
  return jnp.reshape(mask, (1,) * (4 - mask.ndim) + mask.shape)


def check_signature(score_mod: ScoreMod | None = None, mask_mod: MaskMod | None = None) -> None:
  """Raises TypeError unless the mods take the one signature of every level:
  ``score_mod(score, b, h, q_idx, kv_idx)`` and ``mask_mod(b, h, q_idx, kv_idx)``.

  Catches the older single-head spellings (``score_mod(logits)``, ``score_mod(logits, head)``).

  Example:
    >>> check_signature(score_mod=softcap(30.0))  # the one signature: nothing to say
    >>> try:
    ...   check_signature(score_mod=lambda logits, head: logits)
    ... except TypeError as e:
    ...   print(str(e)[:60])
    score_mod must take (score, b, h, q_idx, kv_idx) -> score, t
  """
  for name, fn, params in (("score_mod", score_mod, "score, b, h, q_idx, kv_idx"),
                           ("mask_mod", mask_mod, "b, h, q_idx, kv_idx")):
    if fn is None or not callable(fn):
      continue
    try:
      signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read (some builtins): trust the caller
      continue
    try:
      signature.bind(*range(params.count(",") + 1))
    except TypeError:
      raise TypeError(
          f"{name} must take ({params}) -> {'score' if name == 'score_mod' else 'bool'}, the one "
          f"signature of every level (single head: b = h = 0); got {name}{signature}") from None


def check(score_mod: ScoreMod | None, mask_mod: MaskMod | None, shape: tuple[int, ...]) -> None:
  """Raises ValueError unless the mods return what they must on a grid of ``shape``
  [B, N, T, S]: a bool (mask_mod) or float (score_mod) array broadcastable to it.

  Example:
    >>> check(None, causal(), (1, 2, 4, 4))
    >>> check(None, lambda b, h, q_idx, kv_idx: q_idx * 1.0, (1, 2, 4, 4))
    Traceback (most recent call last):
    ...
    ValueError: ...
  """
  check_signature(score_mod, mask_mod)
  index = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in grid_index(*shape)]
  for name, fn, args, want in (
      ("mask_mod", mask_mod, index, "bool"),
      ("score_mod", score_mod, [jax.ShapeDtypeStruct(shape, jnp.float32), *index], "float")):
    if fn is None:
      continue
    if not callable(fn):
      raise ValueError(f"{name} must be callable; got {fn!r}")
    out = jax.eval_shape(fn, *args)
    dtype, out_shape = jnp.dtype(out.dtype), tuple(out.shape)
    ok_dtype = dtype == jnp.bool_ if want == "bool" else jnp.issubdtype(dtype, jnp.floating)
    try:
      ok_shape = jnp.broadcast_shapes(out_shape, shape) == shape
    except ValueError:
      ok_shape = False
    if not (ok_dtype and ok_shape):
      raise ValueError(
          f"{name} must return a {want} array broadcastable to the grid [B, N, T, S] = {shape}; "
          f"got {dtype} {out_shape}")

