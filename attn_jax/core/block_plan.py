"""How a block mask is computed: a mask mod as a pure program, evaluated a row of blocks at a time.

A ``mask_mod(b, h, q_idx, kv_idx)`` may close over arrays (segment ids, lengths), traced or not.
`ModProgram.trace` turns it into a program of its four int32 scalar indices plus those arrays as
explicit operands (``consts``), so that the arrays can travel as pytree leaves of a
`attn_jax.core.block_mask.BlockMask` (created in one jitted function, used in another) while the
program, compared by what it computes, stays static. `evaluate` runs the program on index arrays
of any broadcasting shapes, one ``vmap`` per axis: each operation is batched only over the axes its
inputs vary along, so ``kv_idx <= q_idx`` costs a [T, S] comparison, not a [B, N, T, S] one.

`summarize` classifies every (batch, head, query block, key block) as EMPTY (no pair allowed),
PARTIAL or FULL (every pair allowed), evaluating at most [B, N, block_q, kv_len] at once, and
records the query rows that may see some key and the keys some query may see. `walk_lists` turns
the kinds into the block lists the kernels walk. Everything runs on numpy-backed concrete arrays
at trace time when nothing is traced, and on device otherwise.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

EMPTY, PARTIAL, FULL = 0, 1, 2


class ModProgram:
  """A mask mod as ``program(consts, b, h, q_idx, kv_idx) -> bool``, its arrays made operands.

  Equal (and equally hashed) when two mods compute the same thing: the same traced program
  (printed) on operands of the same shapes and dtypes, whatever the operands' values.
  """

  def __init__(self, jaxpr, const_types: tuple):
    self.jaxpr = jaxpr
    self._key = (str(jaxpr), const_types)

  @staticmethod
  def trace(mask_mod: Callable) -> tuple["ModProgram", list]:
    """-> (program, consts). Raises ValueError unless ``mask_mod`` maps four int32 scalars to a
    bool scalar (elementwise code)."""
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    closed = jax.make_jaxpr(lambda *index: jnp.asarray(mask_mod(*index)))(*[scalar] * 4)
    out = closed.out_avals[0]
    if out.shape != () or out.dtype != jnp.bool_:
      raise ValueError(
          "a block mask's mask_mod must be elementwise: on four int32 scalars (b, h, q_idx, "
          "kv_idx) "
          f"it must return a bool scalar; got {out.dtype} {out.shape}")
    consts = list(closed.consts)
    types = tuple((tuple(np.shape(c)), str(jnp.result_type(c))) for c in consts)
    return ModProgram(closed.jaxpr, types), consts

  def __call__(self, consts: Sequence, b, h, q_idx, kv_idx) -> Array:
    scalar_fn = lambda *index: jax.core.eval_jaxpr(self.jaxpr, list(consts), *index)[0]
    return evaluate(scalar_fn, b, h, q_idx, kv_idx)

  def __eq__(self, other):
    return isinstance(other, ModProgram) and self._key == other._key

  def __hash__(self):
    return hash(self._key)


def evaluate(scalar_fn: Callable, *index) -> Array:
  """``scalar_fn`` on index arrays that broadcast against each other: -> their broadcast shape,
  size 1 along the axes no index varies along. One vmap per axis, over the indices that vary."""
  ndim = max(jnp.ndim(x) for x in index)
  index = [jnp.reshape(x, (1,) * (ndim - jnp.ndim(x)) + jnp.shape(x)) for x in index]

  def along(axis, xs):
    if axis == ndim:
      return scalar_fn(*xs)
    varies = [x.shape[0] > 1 for x in xs]
    inner = lambda *ys: along(axis + 1, ys)
    if not any(varies):
      return inner(*(x[0] for x in xs))[None]
    return jax.vmap(inner, in_axes=[0 if v else None for v in varies])(
        *(x if v else x[0] for x, v in zip(xs, varies, strict=True)))

  return along(0, index)


def allowed(sizes, program: ModProgram | None, consts, dense, b, h, q_start, num_q: int, k_start,
            num_k: int) -> Array | None:
  """Which pairs of queries [q_start, q_start + num_q) and keys [k_start, k_start + num_k) may
  attend: bool broadcastable to ``h.shape[:-2] + (num_q, num_k)`` with ``b`` in front (None: all).

  sizes: (q_len, kv_len, padded_q_len, padded_kv_len); positions past q_len / kv_len (the padding
  of the last blocks) are masked, and clamped onto the last position before the mod sees them, so
  no mod indexes past its arrays. dense: bool [..., T_pad|1, S_pad|1] shaped like ``h`` in front.
  """
  q_len, kv_len, q_pad, kv_pad = sizes
  q = (q_start + jnp.arange(num_q, dtype=jnp.int32))[:, None]  # [num_q, 1]
  kv = (k_start + jnp.arange(num_k, dtype=jnp.int32))[None, :]  # [1, num_k]
  terms = []
  if q_pad != q_len:
    terms.append(q < q_len)
  if kv_pad != kv_len:
    terms.append(kv < kv_len)
  if program is not None:
    lead = (1,) * (jnp.ndim(h) - 2)
    q_in = jnp.minimum(q, q_len - 1).reshape(lead + (num_q, 1))
    kv_in = jnp.minimum(kv, kv_len - 1).reshape(lead + (1, num_k))
    terms.append(program(consts, b, h, q_in, kv_in))
  if dense is not None:
    if dense.shape[-2] > 1:
      dense = lax.dynamic_slice_in_dim(dense, q_start, num_q, axis=dense.ndim - 2)
    if dense.shape[-1] > 1:
      dense = lax.dynamic_slice_in_dim(dense, k_start, num_k, axis=dense.ndim - 1)
    terms.append(dense)
  if not terms:
    return None
  result = terms[0]
  for term in terms[1:]:
    result = result & term
  return result


def summarize(shape, blocks, program: ModProgram | None, consts, dense) -> tuple[Any, Any, Any]:
  """-> kind int8 [Bm, Hm, nQ, nK], rows_seen bool [Bm, Hm, T], keys_seen bool [Bm, Hm, S].

  shape: (Bm, Hm, T, S), the sizes the mask depends on (1 where it does not); blocks: (bq, bk);
  dense: bool [Bm|1, Hm|1, T_pad|1, S_pad|1] or None. One row of query blocks at a time.
  """
  bm, hm, q_len, kv_len = shape
  bq, bk = blocks
  nq, nk = -(-q_len // bq), -(-kv_len // bk)
  sizes = (q_len, kv_len, nq * bq, nk * bk)
  if program is None and dense is None and sizes[2:] == (q_len, kv_len):
    return (np.full((bm, hm, nq, nk), FULL, np.int8), np.ones((bm, hm, q_len), bool),
            np.ones((bm, hm, kv_len), bool))
  b = jnp.arange(bm, dtype=jnp.int32).reshape(bm, 1, 1, 1)
  h = jnp.arange(hm, dtype=jnp.int32).reshape(1, hm, 1, 1)

  def one_row(i):
    a = allowed(sizes, program, consts, dense, b, h, i * bq, bq, 0, sizes[3])
    a = jnp.broadcast_to(a, (bm, hm, bq, sizes[3]))
    per_block = a.reshape(bm, hm, bq, nk, bk)
    any_, all_ = jnp.any(per_block, axis=(2, 4)), jnp.all(per_block, axis=(2, 4))  # [Bm, Hm, nK]
    kind = jnp.where(all_, FULL, jnp.where(any_, PARTIAL, EMPTY)).astype(jnp.int8)
    return kind, jnp.any(a, axis=3), jnp.any(a, axis=2)

  # [nQ, Bm, Hm, nK], [nQ, Bm, Hm, bq], [nQ, Bm, Hm, S_pad]
  kind, rows, keys = lax.map(one_row, jnp.arange(nq, dtype=jnp.int32))
  rows = jnp.moveaxis(rows, 0, 2).reshape(bm, hm, nq * bq)[..., :q_len]
  return jnp.moveaxis(kind, 0, 2), rows, jnp.any(keys, axis=0)[..., :kv_len]


def walk_lists(kind) -> tuple[Any, Any, Any, Any]:
  """kind [..., nQ, nK] (numpy or jax) -> (kv_count [..., nQ], kv_indices [..., nQ, nK],
  q_count [..., nK], q_indices [..., nK, nQ]), int32: the live (non-EMPTY) key blocks of each
  query block in ascending order, then the rest; and the live query blocks of each key block."""
  xp = np if isinstance(kind, np.ndarray) else jnp
  live = kind != EMPTY
  # A stable sort of "is empty" lists the live blocks first, in ascending order.
  kv_indices = xp.argsort(~live, axis=-1, stable=True).astype(np.int32)
  q_indices = xp.argsort(~xp.swapaxes(live, -1, -2), axis=-1, stable=True).astype(np.int32)
  return (live.sum(axis=-1).astype(np.int32), kv_indices, live.sum(axis=-2).astype(np.int32),
          q_indices)


def union(kind, axes) -> Any:
  """The kinds a kernel that visits several heads (or batch rows) at once walks: FULL where FULL
  for all of them, EMPTY where EMPTY for all of them, else PARTIAL; ``axes`` kept with size 1."""
  xp = np if isinstance(kind, np.ndarray) else jnp
  low, high = kind.min(axis=axes, keepdims=True), kind.max(axis=axes, keepdims=True)
  return xp.where(low == FULL, FULL, xp.where(high == EMPTY, EMPTY, PARTIAL)).astype(np.int8)
