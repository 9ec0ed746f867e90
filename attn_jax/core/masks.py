"""Boolean attention masks: True = may attend.

Every mask here is laid out like the ``mask`` argument of ``jax.nn.dot_product_attention``:
broadcastable to ``[batch, num_heads, q_len, kv_len]``. Masks that do not depend on the example
have a leading ``[1, 1, ...]``; masks that do (padding, segments) are ``[batch, 1, q_len, kv_len]``.
Combine them with ``and_masks`` / ``or_masks``, which broadcast and skip ``None``.

All functions are pure and jit-compatible: sizes (``q_len``, ``kv_len``, ``window``) are static
Python ints, while lengths and segment ids may be traced arrays.

Example:
  >>> from attn_jax.core import masks
  >>> mask = masks.and_masks(masks.make_causal_mask(4), masks.make_local_mask(4, 4, (1, 0)))
  >>> mask.shape, int(mask.sum())  # each query sees itself and the key before it
  ((1, 1, 4, 4), 7)
"""

import functools
import operator

import jax
import jax.numpy as jnp

from attn_jax.core import mods

Array = jax.Array


def _static_size(value, name: str) -> int:
  """A non-negative Python int; sizes fix array shapes, so they cannot be traced."""
  try:
    size = operator.index(value)
  except TypeError as e:
    raise ValueError(f"{name} must be a static non-negative int, got {value!r}") from e
  if size < 0:
    raise ValueError(f"{name} must be a non-negative int, got {size}")
  return size


def make_causal_mask(q_len: int, kv_len: int | None = None) -> Array:
  """Causal mask, top-left aligned: query i sees keys j <= i.

  The same mask ``jax.nn.dot_product_attention(..., is_causal=True)`` builds,
  ``tril(ones((q_len, kv_len)))``. With ``kv_len > q_len`` the extra keys at the end are never
  visible; with ``kv_len < q_len`` the last queries see every key.

  Args:
    q_len: number of queries T (a static int).
    kv_len: number of keys S (a static int); defaults to ``q_len``.

  Returns:
    bool [1, 1, q_len, kv_len], True where query i may attend key j.

  Example:
    >>> make_causal_mask(3)[0, 0].astype(int)
    Array([[1, 0, 0],
           [1, 1, 0],
           [1, 1, 1]], dtype=int32)
  """
  q_len = _static_size(q_len, "q_len")
  kv_len = q_len if kv_len is None else _static_size(kv_len, "kv_len")
  return mods.dense_mask(mods.causal(), 1, 1, q_len, kv_len)


def _check_lengths(lengths, name: str) -> Array:
  lengths = jnp.asarray(lengths)
  if lengths.ndim != 1:
    raise ValueError(f"{name} must be [batch], got shape {lengths.shape}")
  if not jnp.issubdtype(lengths.dtype, jnp.integer):
    raise ValueError(f"{name} must hold integers, got dtype {lengths.dtype}")
  return lengths


def make_padding_mask(
    q_len: int,
    kv_len: int,
    query_seq_lengths: Array | None = None,
    key_value_seq_lengths: Array | None = None,
) -> Array:
  """Padding mask from per-example lengths, as jax.nn's ``*_seq_lengths`` arguments.

  Query t of example b may attend key s iff ``t < query_seq_lengths[b]`` and
  ``s < key_value_seq_lengths[b]``; a missing length means "no padding on that side". A padded
  query row is therefore fully masked (the attention core turns it into zeros).

  Args:
    q_len: number of queries T (a static int).
    kv_len: number of keys S (a static int).
    query_seq_lengths: int [batch], the valid queries of each example, or None (no padding).
    key_value_seq_lengths: int [batch], the valid keys of each example, or None (no padding).

  Returns:
    bool [batch, 1, q_len, kv_len]; [1, 1, q_len, kv_len] (all True) if both lengths are None.

  Example:
    >>> mask = make_padding_mask(2, 4, key_value_seq_lengths=jnp.array([3, 1]))
    >>> mask.shape
    (2, 1, 2, 4)
    >>> mask[:, 0, 0].astype(int)  # what query 0 of each example sees
    Array([[1, 1, 1, 0],
           [1, 0, 0, 0]], dtype=int32)
  """
  q_len = _static_size(q_len, "q_len")
  kv_len = _static_size(kv_len, "kv_len")
  if query_seq_lengths is not None:
    query_seq_lengths = _check_lengths(query_seq_lengths, "query_seq_lengths")
  if key_value_seq_lengths is not None:
    key_value_seq_lengths = _check_lengths(key_value_seq_lengths, "key_value_seq_lengths")
  if query_seq_lengths is not None and key_value_seq_lengths is not None and (
      query_seq_lengths.shape != key_value_seq_lengths.shape):
    raise ValueError(
        "query_seq_lengths and key_value_seq_lengths must share [batch]: got "
        f"{query_seq_lengths.shape} and {key_value_seq_lengths.shape}")
  given = [x for x in (query_seq_lengths, key_value_seq_lengths) if x is not None]
  batch = given[0].shape[0] if given else 1
  mask = mods.dense_mask(mods.padding(query_seq_lengths, key_value_seq_lengths), batch, 1, q_len,
                         kv_len)
  return jnp.broadcast_to(mask, (batch, 1, q_len, kv_len))


def make_segment_mask(query_segment_ids: Array, key_segment_ids: Array | None = None) -> Array:
  """Mask for packed sequences: attend only to keys carrying the query's segment id.

  Padding is not special: if padding carries an id of its own (commonly 0), padding attends to
  padding; combine with a padding mask to exclude it.

  Args:
    query_segment_ids: int [batch, q_len], the segment (document) of each query.
    key_segment_ids: int [batch, kv_len]; defaults to ``query_segment_ids`` (self-attention).

  Returns:
    bool [batch, 1, q_len, kv_len], True where the query's and the key's segment ids are equal.

  Example:
    >>> make_segment_mask(jnp.array([[1, 1, 2]]))[0, 0].astype(int)  # two packed documents
    Array([[1, 1, 0],
           [1, 1, 0],
           [0, 0, 1]], dtype=int32)
  """
  query_segment_ids = jnp.asarray(query_segment_ids)
  key_segment_ids = (
      query_segment_ids if key_segment_ids is None else jnp.asarray(key_segment_ids))
  if query_segment_ids.ndim != 2:
    raise ValueError(
        f"query_segment_ids must be [batch, q_len], got shape {query_segment_ids.shape}")
  if key_segment_ids.ndim != 2:
    raise ValueError(
        f"key_segment_ids must be [batch, kv_len], got shape {key_segment_ids.shape}")
  if query_segment_ids.shape[0] != key_segment_ids.shape[0]:
    raise ValueError(
        "segment ids must share the batch size: got query_segment_ids "
        f"{query_segment_ids.shape} and key_segment_ids {key_segment_ids.shape}")
  batch, q_len, kv_len = (*query_segment_ids.shape, key_segment_ids.shape[1])
  return mods.dense_mask(mods.document(query_segment_ids, key_segment_ids), batch, 1, q_len,
                         kv_len)


def make_local_mask(q_len: int, kv_len: int, window: int | tuple[int, int]) -> Array:
  """Sliding-window mask, as jax.nn's ``local_window_size``.

  Query i sees keys j with ``i - left <= j <= i + right``, where ``window`` is ``(left, right)``
  or one int used for both sides. ``(left, 0)`` is causal sliding-window attention (each query sees
  itself and the ``left`` keys before it).

  Args:
    q_len: number of queries T (a static int).
    kv_len: number of keys S (a static int).
    window: ``(left, right)``, or one int for both sides; static ints >= 0.

  Returns:
    bool [1, 1, q_len, kv_len].

  Example:
    >>> make_local_mask(4, 4, (1, 0))[0, 0].astype(int)  # itself and the one key before
    Array([[1, 0, 0, 0],
           [1, 1, 0, 0],
           [0, 1, 1, 0],
           [0, 0, 1, 1]], dtype=int32)
  """
  q_len = _static_size(q_len, "q_len")
  kv_len = _static_size(kv_len, "kv_len")
  if isinstance(window, tuple | list):
    if len(window) != 2:
      raise ValueError(f"window must be an int or (left, right), got {window!r}")
    left, right = window
  else:
    left = right = window
  left = _static_size(left, "window (left)")
  right = _static_size(right, "window (right)")
  return mods.dense_mask(mods.sliding_window(left, right), 1, 1, q_len, kv_len)


def _combine(op, masks: tuple, name: str) -> Array | None:
  present = [jnp.asarray(m) for m in masks if m is not None]
  if not present:
    return None
  for m in present:
    if m.dtype != jnp.bool_:
      raise ValueError(f"{name} takes boolean masks, got dtype {m.dtype} (shape {m.shape})")
  shapes = [m.shape for m in present]
  try:
    jnp.broadcast_shapes(*shapes)
  except ValueError as e:
    raise ValueError(f"{name}: mask shapes {shapes} do not broadcast together") from e
  return functools.reduce(op, present)


def and_masks(*masks: Array | None) -> Array | None:
  """Positions allowed by every mask (``None`` entries are skipped).

  Args:
    *masks: bool arrays broadcastable together, e.g. [1, 1, T, S] and [B, 1, T, S], or None.

  Returns:
    Their broadcast logical AND, or None when no mask is given.

  Example:
    >>> causal = make_causal_mask(3)  # [1, 1, 3, 3]
    >>> padded = make_padding_mask(3, 3, key_value_seq_lengths=jnp.array([2]))  # [1, 1, 3, 3]
    >>> and_masks(causal, None, padded)[0, 0].astype(int)
    Array([[1, 0, 0],
           [1, 1, 0],
           [1, 1, 0]], dtype=int32)
  """
  return _combine(jnp.logical_and, masks, "and_masks")


def or_masks(*masks: Array | None) -> Array | None:
  """Positions allowed by any mask (``None`` entries are skipped).

  Args:
    *masks: bool arrays broadcastable together, e.g. [1, 1, T, S] and [B, 1, T, S], or None.

  Returns:
    Their broadcast logical OR, or None when no mask is given.

  Example:
    >>> prefix = make_local_mask(3, 3, (3, 3)) & (jnp.arange(3) < 2)  # keys 0, 1: everyone
    >>> or_masks(make_causal_mask(3), prefix)[0, 0].astype(int)  # a prefix-LM mask
    Array([[1, 1, 0],
           [1, 1, 0],
           [1, 1, 1]], dtype=int32)
  """
  return _combine(jnp.logical_or, masks, "or_masks")
