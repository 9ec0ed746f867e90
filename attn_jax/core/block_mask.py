"""Exact block sparsity for the chunked kernel: which (query block, key block) pairs can attend.

Everything that restricts who attends whom -- the padding that rounds the sequences up to whole
blocks, ``is_causal``, ``local_window_size``, sequence lengths, a dense ``mask`` and a ``mask_mod``
-- is a term of one boolean function of (batch, query head, query position, key position),
`allowed`. `summarize` evaluates that function one row of blocks at a time (at most
[block_q, kv_len] per head at once, never [q_len, kv_len]) and classifies every block pair:

- ``EMPTY``: no allowed pair; the kernel skips it (no matmul, no exponential);
- ``FULL``: every pair allowed; the kernel applies no per-element mask;
- ``PARTIAL``: the kernel evaluates `allowed` on the block and masks.

It also records the query rows that may see some key and the key positions some query may see:
the kernel zeroes the others before any arithmetic, so whatever they hold cannot leak.

A summary is exact: it comes from evaluating the function itself, never from sampling it. It is
computed at trace time, as concrete numpy, for the terms known then (padding, causal, window, and a
``mask_mod`` that closes over concrete values only); when some term is traced (sequence lengths, a
dense mask under ``jit``, a ``mask_mod`` over traced segment ids), a second summary of all terms is
computed on device at run time, inside the bound the static one gives.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from attn_jax.core import mods

Array = jax.Array
MaskMod = Callable[[Array, Array, Array, Array], Array]

EMPTY, PARTIAL, FULL = 0, 1, 2


class Layout(NamedTuple):
  """Static sizes and the static masking settings of one chunked call (hashable)."""

  q_len: int  # T before padding
  kv_len: int  # S before padding
  block_q: int
  block_k: int
  kv_heads: int  # K
  groups: int  # G = N // K
  is_causal: bool
  window: tuple[int, int] | None  # (left, right)

  @property
  def num_q_blocks(self) -> int:
    return -(-self.q_len // self.block_q)

  @property
  def num_k_blocks(self) -> int:
    return -(-self.kv_len // self.block_k)

  @property
  def padded_q_len(self) -> int:
    return self.num_q_blocks * self.block_q

  @property
  def padded_kv_len(self) -> int:
    return self.num_k_blocks * self.block_k


class Terms(NamedTuple):
  """The array-valued terms of the mask (None: absent).

  mask: bool [B|1, K|1, G|1, T_pad|1, S_pad|1]; q_lengths, kv_lengths: int32 [B];
  batch_index: int32 [B], the batch index each row stands for (``mask_mod``'s ``b``).
  """

  mask: Array | None
  q_lengths: Array | None
  kv_lengths: Array | None
  batch_index: Array


def _and(a, b):
  return b if a is None else a if b is None else a & b


def head_index(layout: Layout) -> np.ndarray:
  """int32 [1, K, G, 1, 1]: the query head n = k * G + g of each grouped position."""
  heads = np.arange(layout.kv_heads * layout.groups, dtype=np.int32)
  return heads.reshape(1, layout.kv_heads, layout.groups, 1, 1)


def allowed(layout: Layout, terms: Terms, mask_mod: MaskMod | None, q_start, num_q: int,
            k_start, num_k: int, *, dynamic: bool = True) -> Array | None:
  """Which pairs of queries [q_start, q_start + num_q) and keys [k_start, k_start + num_k) may
  attend: bool broadcastable to [B, K, G, num_q, num_k] (None: all of them).

  ``dynamic=False`` keeps the static terms only (padding, causal, window, ``mask_mod``).
  """
  q = (q_start + jnp.arange(num_q, dtype=jnp.int32))[:, None]  # [num_q, 1]
  kv = (k_start + jnp.arange(num_k, dtype=jnp.int32))[None, :]  # [1, num_k]
  result = None
  if layout.padded_q_len != layout.q_len:
    result = _and(result, q < layout.q_len)
  if layout.padded_kv_len != layout.kv_len:
    result = _and(result, kv < layout.kv_len)
  # The mods see real positions only: the padding rows/columns (masked above) are clamped onto
  # the last one, so no mod indexes past its arrays.
  b = terms.batch_index[:, None, None, None, None]
  h = head_index(layout)
  q_in = jnp.minimum(q, layout.q_len - 1)[None, None, None]
  kv_in = jnp.minimum(kv, layout.kv_len - 1)[None, None, None]
  # is_causal, local_window_size and the sequence lengths are the library's mods.
  static = [mods.causal() if layout.is_causal else None,
            mods.sliding_window(*layout.window) if layout.window is not None else None,
            mask_mod]
  dynamic_mods = []
  if dynamic and (terms.q_lengths is not None or terms.kv_lengths is not None):
    dynamic_mods.append(mods.padding(terms.q_lengths, terms.kv_lengths))
  for mod in static + dynamic_mods:
    if mod is not None:
      result = _and(result, mod(b, h, q_in, kv_in))
  if not dynamic:
    return result
  if terms.mask is not None:
    mask = terms.mask
    if mask.shape[3] > 1:
      mask = lax.dynamic_slice_in_dim(mask, q_start, num_q, axis=3)
    if mask.shape[4] > 1:
      mask = lax.dynamic_slice_in_dim(mask, k_start, num_k, axis=4)
    result = _and(result, mask)
  return result


class Summary(NamedTuple):
  """What `summarize` found (Bs = B where the mask depends on the batch, else 1).

  kind: int32 [Bs, nQ, nK] (EMPTY, PARTIAL, FULL); rows_seen: bool [Bs, K|1, G|1, T_pad];
  keys_seen: bool [Bs, K|1, S_pad]. Numpy when computed statically.
  """

  kind: Array
  rows_seen: Array
  keys_seen: Array


def summarize(layout: Layout, terms: Terms, mask_mod: MaskMod | None, *,
              dynamic: bool) -> Summary:
  """Evaluates `allowed` over the grid, one row of query blocks at a time (see the module doc)."""
  nq, nk, bq, bk = layout.num_q_blocks, layout.num_k_blocks, layout.block_q, layout.block_k
  s_pad = layout.padded_kv_len

  def one_row(i):
    a = allowed(layout, terms, mask_mod, i * bq, bq, 0, s_pad, dynamic=dynamic)
    a = jnp.reshape(a, (1,) * (5 - a.ndim) + a.shape)  # [Bx, Kx, Gx, bq, S_pad]
    a = jnp.broadcast_to(a, a.shape[:3] + (bq, s_pad))
    blocks = a.reshape(*a.shape[:4], nk, bk)
    any_ = jnp.any(blocks, axis=(1, 2, 3, 5))  # [Bx, nK]: some head, some pair
    all_ = jnp.all(blocks, axis=(1, 2, 3, 5))
    kind = jnp.where(all_, FULL, jnp.where(any_, PARTIAL, EMPTY)).astype(jnp.int32)
    return kind, jnp.any(a, axis=-1), jnp.any(a, axis=(2, 3))

  probe = allowed(layout, terms, mask_mod, 0, 1, 0, 1, dynamic=dynamic)
  if probe is None:  # nothing masks anything
    return Summary(np.full((1, nq, nk), FULL, np.int32), np.ones((1, 1, 1, bq * nq), bool),
                   np.ones((1, 1, s_pad), bool))
  # [nQ, Bx, nK], [nQ, Bx, Kx, Gx, bq], [nQ, Bx, Kx, S_pad]
  kind, rows, keys = lax.map(one_row, jnp.arange(nq, dtype=jnp.int32))
  rows = jnp.moveaxis(rows, 0, 3).reshape(*rows.shape[1:4], nq * bq)
  return Summary(jnp.swapaxes(kind, 0, 1), rows, jnp.any(keys, axis=0))


def static_summary(layout: Layout, batch: int, mask_mod: MaskMod | None) -> Summary:
  """The summary of the static terms, as numpy. ``mask_mod`` must close over concrete values."""
  terms = Terms(None, None, None, np.arange(batch, dtype=np.int32))
  with jax.ensure_compile_time_eval():
    summary = summarize(layout, terms, mask_mod, dynamic=False)
  return Summary(*(np.asarray(x) for x in summary))


def is_static(mask_mod: MaskMod | None, batch: int, layout: Layout) -> bool:
  """Whether ``mask_mod`` can be evaluated at trace time (it closes over no traced value)."""
  if mask_mod is None:
    return True
  with jax.ensure_compile_time_eval():
    out = mask_mod(jnp.zeros((batch, 1, 1, 1, 1), jnp.int32), head_index(layout),
                   jnp.zeros((1, 1, 1, 1, 1), jnp.int32), jnp.zeros((1, 1, 1, 1, 1), jnp.int32))
  return not isinstance(out, jax.core.Tracer)


class Plan(NamedTuple):
  """The order the kernel visits blocks in (Bs as in `Summary`).

  kind [Bs, nQ, nK]; forward: query block i visits key blocks fwd_order[b, i, :fwd_count[b, i]];
  backward: key block j visits query blocks bwd_order[b, j, :bwd_count[b, j]]. The loops run
  ``fwd_steps`` / ``bwd_steps`` (static) times and skip the steps past the count.
  """

  kind: Array
  fwd_order: Array
  fwd_count: Array
  bwd_order: Array
  bwd_count: Array


def plan(kind, bound_kind: np.ndarray) -> tuple[Plan, int, int]:
  """The visiting order for ``kind`` [Bs, nQ, nK] (numpy or traced), and the static trip counts
  from ``bound_kind`` (a static summary whose live blocks contain those of ``kind``)."""
  xp = np if isinstance(kind, np.ndarray) else jnp
  live = kind != EMPTY
  # A stable sort of "is empty" lists the live blocks first, in ascending order.
  fwd_order = xp.argsort(~live, axis=-1, stable=True).astype(np.int32)
  bwd_order = xp.argsort(~xp.swapaxes(live, 1, 2), axis=-1, stable=True).astype(np.int32)
  bound_live = bound_kind != EMPTY
  fwd_steps = int(bound_live.sum(axis=2).max(initial=0))
  bwd_steps = int(bound_live.sum(axis=1).max(initial=0))
  counts = (live.sum(axis=2).astype(np.int32), live.sum(axis=1).astype(np.int32))
  return (Plan(kind, fwd_order[..., :max(fwd_steps, 1)], counts[0],
               bwd_order[..., :max(bwd_steps, 1)], counts[1]), fwd_steps, bwd_steps)
