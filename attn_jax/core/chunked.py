"""Memory-efficient ("chunked") attention: no [q_len, kv_len] matrix is ever held.

The queries and keys are cut into blocks; `attn_jax.core.block_mask` works out, exactly, which
block pairs can attend (from causal / window masking, sequence lengths, a dense mask and a
``mask_mod``), and the kernel (`attn_jax.core.chunked_kernel`) visits only those, with the online
softmax forward and a FlashAttention-2 backward of its own. Memory is O(q_len * block) for any
mask; a ``score_mod`` and a ``mask_mod`` run inside the kernel, block by block, and gradients flow
into the arrays they close over.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from attn_jax.core import block_mask, chunked_kernel, mods
from attn_jax.core.batched import group_heads
from attn_jax.core.block_mask import EMPTY, FULL, PARTIAL, Layout, Terms

Array = jax.Array

#: Query block size for dense and causal attention (256-1024 measured alike on CPU, L4096-L8192).
DEFAULT_BLOCK_Q = 512
#: Key block size for dense and causal attention.
DEFAULT_BLOCK_K = 512
#: Block sizes tried when the caller leaves them to the kernel (block_q = block_k = None). A mask
#: known at trace time to be sparse (a sliding window, static documents) may take smaller blocks,
#: which waste less of a band's edges: the choice minimises the attended area of the live blocks
#: plus BLOCK_OVERHEAD pairs per visited block.
AUTO_BLOCKS = (512, 256, 128, 64)
#: The fixed cost of visiting a block, in attended pairs (a loop step and the rescaling of the
#: running sums). Fitted on CPU to a causal window of 256 at L16384, forward + backward: 64-blocks
#: 0.24 s, 128-blocks 0.29-0.33 s, 512-blocks 0.68 s.
BLOCK_OVERHEAD = 32 * 32


def chunked_attention(
    query: Array, key: Array, value: Array, *, bias: Array | None = None,
    mask: Array | None = None, scale: float | None = None, is_causal: bool = False,
    query_seq_lengths: Array | None = None, key_value_seq_lengths: Array | None = None,
    local_window_size: int | tuple[int, int] | None = None, score_fn: Callable | None = None,
    score_params: Any = None, params_per_head: bool = False, score_mod: Callable | None = None,
    mask_mod: Callable | None = None, block_q: int | None = None,
    block_k: int | None = None,
) -> Array:
  """Attention with O(q_len * block) memory, the same numbers as `jax.nn.dot_product_attention`.

  query: [batch, q_len, num_heads, head_dim]; key: [batch, kv_len, kv_heads, head_dim];
  value: [batch, kv_len, kv_heads, value_dim], num_heads a multiple of kv_heads (query head n uses
  kv head n // (num_heads // kv_heads)). bias (float) and mask (bool, True = may attend): 4-D,
  broadcastable to [batch, num_heads, q_len, kv_len]; never broadcast to that size here.
  is_causal: query i sees keys j <= i (top-left aligned, as jax.nn). query_seq_lengths /
  key_value_seq_lengths: int [batch]. local_window_size: (left, right), or one int for both:
  query i sees keys i - left <= j <= i + right.
  score_fn: None for ``scale * q . k`` (``scale`` a Python float, default 1/sqrt(head_dim)); or a
  single-head score ``score_fn(q [bq, head_dim], k [bk, head_dim], score_params) -> [bq, bk]``
  from `attn_jax.core.scores` (its settings bound by functools.partial; ``scale`` must be None),
  whose ``score_params`` receive gradients too; shared by every head, or with a leading
  [num_heads] axis on every leaf when ``params_per_head``.
  score_mod(score, b, h, q_idx, kv_idx) -> score and mask_mod(b, h, q_idx, kv_idx) -> bool: see
  `attn_jax.dot_product_attention`.
  block_q, block_k: block sizes; None lets the kernel choose (512, smaller for masks known to be
  sparse at trace time: see AUTO_BLOCKS).
  Returns [batch, q_len, num_heads, value_dim] in the query's dtype; query rows that may attend to
  no key are exactly zero, and key/value positions no query may see never enter the arithmetic.
  """
  mods.check_signature(score_mod, mask_mod)
  window = _check_args(query, key, value, bias, mask, scale, query_seq_lengths,
                       key_value_seq_lengths, local_window_size, score_fn, block_q, block_k)
  as_int32 = lambda x: None if x is None else jnp.asarray(x, jnp.int32)
  return attend(query, key, value, bias=bias, mask=mask,
                scale=None if scale is None else float(scale), is_causal=bool(is_causal),
                query_seq_lengths=as_int32(query_seq_lengths),
                key_value_seq_lengths=as_int32(key_value_seq_lengths), local_window_size=window,
                score_fn=score_fn, score_params=score_params, params_per_head=params_per_head,
                score_mod=score_mod, mask_mod=mask_mod, block_q=block_q, block_k=block_k)


# Jitted with its settings static: eager calls then reuse one compiled program per configuration
# instead of re-tracing the loops (and recompiling) at every call. Takes validated arguments.
@functools.partial(jax.jit, static_argnames=(
    "scale", "is_causal", "local_window_size", "score_fn", "params_per_head", "score_mod",
    "mask_mod", "block_q", "block_k"))
def attend(query, key, value, *, bias, mask, scale, is_causal, query_seq_lengths,
           key_value_seq_lengths, local_window_size, score_fn, score_params, params_per_head,
           score_mod, mask_mod, block_q, block_k) -> Array:
  """`chunked_attention` without the argument checks (the batched API validates once)."""
  batch, q_len, num_heads, head_dim = query.shape
  _, kv_len, kv_heads, _ = value.shape
  groups = num_heads // kv_heads
  layout = _layout(batch, q_len, kv_len, kv_heads, groups, is_causal, local_window_size,
                   mask_mod, block_q, block_k)
  pad = lambda x, value: _pad_blocks(layout, group_heads(x, kv_heads), value)
  bias, mask = pad(bias, 0), pad(mask, False)  # [B|1, K|1, G|1, T_pad|1, S_pad|1]
  if score_params is not None and params_per_head:  # [N, ...] -> [K, G, ...]
    score_params = jax.tree.map(lambda p: p.reshape(kv_heads, groups, *p.shape[1:]), score_params)
  terms = Terms(mask, query_seq_lengths, key_value_seq_lengths, jnp.arange(batch, dtype=jnp.int32))
  summary, plan, fwd_steps, bwd_steps, per_batch = _plan(layout, terms, mask_mod, batch)

  # Zero what no key may see and the keys no query may see *before* any arithmetic, with `where`:
  # a NaN there would otherwise leak through 0 * NaN in the matmuls (and into the gradients).
  query = _zero_unseen_rows(query, summary.rows_seen, layout)
  key = _zero_unseen_keys(key, summary.keys_seen)
  value = _zero_unseen_keys(value, summary.keys_seen)
  cfg = chunked_kernel.Config(
      layout=layout, scale=float(head_dim**-0.5 if scale is None else scale), score_fn=score_fn,
      params_per_head=params_per_head and score_params is not None, score_mod=None,
      mask_mod=None, fwd_steps=fwd_steps, bwd_steps=bwd_steps)
  run = functools.partial(_run, cfg, score_mod, mask_mod, score_params)
  if not per_batch:
    out = run(query, key, value, bias, terms, jax.tree.map(lambda x: x[0], plan))
  else:
    # One row of the batch at a time, each with its own block lists. Arrays shared by the batch
    # (size-1 batch axis) are closed over rather than mapped.
    def one_row(xs):
      row, bias_row, mask_row = xs[:-2], xs[-2], xs[-1]
      q, k, v, q_lengths, kv_lengths, index, row_plan = row
      lift = lambda x: None if x is None else x[None]
      row_terms = Terms(mask if mask_row is None else mask_row[None], lift(q_lengths),
                        lift(kv_lengths), index[None])
      return run(q[None], k[None], v[None], bias if bias_row is None else bias_row[None],
                 row_terms, row_plan)[0]

    mapped = lambda x: x if x is not None and x.shape[0] > 1 else None
    out = lax.map(one_row, (query, key, value, terms.q_lengths, terms.kv_lengths,
                            terms.batch_index, plan, mapped(bias), mapped(mask)))
  return out[:, :q_len]


class BlockPlan(NamedTuple):
  """How the kernel will visit the blocks of a call (see `block_plan`).

  kind: int32 [Bs, nQ, nK], `block_mask.EMPTY` (skipped: no matmul, no exponential), PARTIAL or
  FULL (no per-element mask), Bs = B when the blocks are chosen per example, else 1; numpy when
  known at trace time. fwd_steps / bwd_steps: the static trip counts of the two loops.
  """

  kind: Any
  per_batch: bool
  fwd_steps: int
  bwd_steps: int
  block_q: int
  block_k: int


def block_plan(batch: int, q_len: int, kv_len: int, num_heads: int,
               num_kv_heads: int | None = None, *, is_causal: bool = False,
               local_window_size: tuple[int, int] | None = None, query_seq_lengths=None,
               key_value_seq_lengths=None, mask=None, mask_mod=None,
               block_q: int | None = None, block_k: int | None = None) -> BlockPlan:
  """The block plan `chunked_attention` runs with for these sizes and masks (mask: bool
  broadcastable to [B, N, T, S]; the rest as there). For inspection and tests."""
  kv_heads = num_heads if num_kv_heads is None else num_kv_heads
  layout = _layout(batch, q_len, kv_len, kv_heads, num_heads // kv_heads, is_causal,
                   local_window_size, mask_mod, block_q, block_k)
  if mask is not None:
    mask = jnp.reshape(mask, (1,) * (4 - jnp.ndim(mask)) + jnp.shape(mask))
    mask = _pad_blocks(layout, group_heads(jnp.asarray(mask), kv_heads), False)
  as_int32 = lambda x: None if x is None else jnp.asarray(x, jnp.int32)
  terms = Terms(mask, as_int32(query_seq_lengths), as_int32(key_value_seq_lengths),
                jnp.arange(batch, dtype=jnp.int32))
  _, plan, fwd_steps, bwd_steps, per_batch = _plan(layout, terms, mask_mod, batch)
  return BlockPlan(plan.kind, per_batch, fwd_steps, bwd_steps, layout.block_q, layout.block_k)


def _layout(batch, q_len, kv_len, kv_heads, groups, is_causal, window, mask_mod, block_q,
            block_k) -> Layout:
  """The blocks of a call: as given, or (both None) the cheapest of AUTO_BLOCKS for the mask
  known at trace time."""
  make = lambda bq, bk: Layout(q_len=q_len, kv_len=kv_len, block_q=min(bq, q_len),
                               block_k=min(bk, kv_len), kv_heads=kv_heads, groups=groups,
                               is_causal=is_causal, window=window)
  if block_q is not None or block_k is not None:
    return make(block_q or DEFAULT_BLOCK_Q, block_k or DEFAULT_BLOCK_K)
  static_mod = block_mask.is_static(mask_mod, batch, make(1, 1))
  if window is None and not (static_mod and mask_mod is not None):
    return make(DEFAULT_BLOCK_Q, DEFAULT_BLOCK_K)  # dense or causal: the large blocks

  def cost(layout):
    kind = block_mask.static_summary(layout, batch, mask_mod if static_mod else None).kind
    live = int((kind != EMPTY).sum())
    return live * (layout.block_q * layout.block_k + BLOCK_OVERHEAD)

  candidates = [make(b, b) for b in AUTO_BLOCKS]
  return min(candidates, key=cost)  # the first (largest) among equals


def _plan(layout: Layout, terms: Terms, mask_mod, batch: int):
  """-> (summary, plan, fwd_steps, bwd_steps, per_batch): which blocks the kernel visits."""
  # The static summary bounds the loops; a second one on device refines it where terms are traced.
  static_mod = block_mask.is_static(mask_mod, batch, layout)
  bound = block_mask.static_summary(layout, batch, mask_mod if static_mod else None)
  dynamic = not static_mod or any(x is not None for x in terms[:3])
  summary = block_mask.summarize(layout, terms, mask_mod, dynamic=True) if dynamic else bound
  kind = summary.kind
  # Per-example block lists pay off only when there are several blocks to choose from.
  per_batch = kind.shape[0] > 1 and layout.num_q_blocks * layout.num_k_blocks > 1
  if kind.shape[0] > 1 and not per_batch:
    kind = _union_over_batch(kind)
  plan, fwd_steps, bwd_steps = block_mask.plan(kind, bound.kind)
  return summary, plan, fwd_steps, bwd_steps, per_batch


def _run(cfg, score_mod, mask_mod, score_params, query, key, value, bias, terms, plan):
  """Blocks, converts the mods at the block shapes, runs the kernel, unblocks.

  -> [B, T_pad, N, Hv].
  """
  layout = cfg.layout
  batch, _, num_heads, _ = query.shape
  nq, nk, bq, bk = layout.num_q_blocks, layout.num_k_blocks, layout.block_q, layout.block_k
  index = chunked_kernel.block_indices(layout, terms.batch_index, 0, 0)
  mods = {}
  if score_mod is not None:
    example = jax.ShapeDtypeStruct((batch, layout.kv_heads, layout.groups, bq, bk), jnp.float32)
    mods["score_mod"], score_float, score_other = _convert_split(score_mod, example, *index)
  else:
    score_float, score_other = [], []
  if mask_mod is not None:
    mods["mask_mod"], mask_float, mask_other = _convert_split(mask_mod, *index)
    mask_consts = (mask_float, mask_other)
  else:
    mask_consts = None
  cfg = cfg._replace(**mods)
  kv_heads, groups = layout.kv_heads, layout.groups
  query = _pad_axis(query, 1, nq * bq, 0)
  # [B, nQ * bq, N, H] -> [B, nQ, bq, K, G, H] -> [nQ, B, K, G, bq, H]
  q_blocks = query.reshape(batch, nq, bq, kv_heads, groups, -1).transpose(1, 0, 3, 4, 2, 5)
  # [B, nK * bk, K, H] -> [B, nK, bk, K, H] -> [nK, B, K, bk, H]
  to_blocks = lambda x: _pad_axis(x, 1, nk * bk, 0).reshape(batch, nk, bk, kv_heads, -1)
  k_blocks = to_blocks(key).transpose(1, 0, 3, 2, 4)
  v_blocks = to_blocks(value).transpose(1, 0, 3, 2, 4)
  out = chunked_kernel.attend_blocks(cfg, q_blocks, k_blocks, v_blocks, bias, score_params,
                                     score_float, score_other, terms, mask_consts, plan)
  # [nQ, B, K, G, bq, Hv] -> [B, nQ, bq, K, G, Hv] -> [B, T_pad, N, Hv]
  return out.transpose(1, 0, 4, 2, 3, 5).reshape(batch, nq * bq, num_heads, -1)


def _convert_split(fn, *example_args):
  """`chunked_kernel.convert`, with the closed-over arrays split into float ones (differentiated)
  and the others: -> (call((float_consts, other_consts), *args), float_consts, other_consts)."""
  call, consts = chunked_kernel.convert(fn, *example_args)
  is_float = [jnp.issubdtype(jnp.result_type(c), jnp.inexact) for c in consts]

  def split_call(pair, *args):
    floats, others = iter(pair[0]), iter(pair[1])
    return call([next(floats) if f else next(others) for f in is_float], *args)

  return (split_call, [c for c, f in zip(consts, is_float, strict=True) if f],
          [c for c, f in zip(consts, is_float, strict=True) if not f])


def _union_over_batch(kind):
  """[B, nQ, nK] -> [1, nQ, nK]: FULL where FULL for every row, EMPTY where EMPTY for every row."""
  xp = np if isinstance(kind, np.ndarray) else jnp
  low, high = kind.min(axis=0, keepdims=True), kind.max(axis=0, keepdims=True)
  return xp.where(low == FULL, FULL, xp.where(high == EMPTY, EMPTY, PARTIAL)).astype(np.int32)


def _zero_unseen_rows(query: Array, rows_seen, layout: Layout) -> Array:
  """query [B, T, N, H] with the rows ``rows_seen`` [B|1, K|1, G|1, T_pad] marks False set to 0."""
  if isinstance(rows_seen, np.ndarray) and rows_seen.all():
    return query
  bs, kx, gx, _ = rows_seen.shape
  if kx * gx > 1:  # per head: [B|1, K, G, T_pad] -> [B|1, T_pad, N]
    shape = (bs, layout.kv_heads, layout.groups, rows_seen.shape[-1])
    rows_seen = jnp.broadcast_to(rows_seen, shape)
    seen = jnp.transpose(rows_seen, (0, 3, 1, 2)).reshape(bs, -1, query.shape[2])
  else:
    seen = rows_seen[:, 0, 0, :, None]  # [B|1, T_pad, 1]
  return jnp.where(seen[:, :query.shape[1], :, None], query, jnp.zeros((), query.dtype))


def _zero_unseen_keys(x: Array, keys_seen) -> Array:
  """key or value [B, S, K, H] with the positions ``keys_seen`` [B|1, K|1, S_pad] marks False set
  to 0."""
  if isinstance(keys_seen, np.ndarray) and keys_seen.all():
    return x
  seen = jnp.swapaxes(keys_seen, 1, 2)[:, :x.shape[1]]  # [B|1, S, K|1]
  return jnp.where(seen[..., None], x, jnp.zeros((), x.dtype))


def _pad_axis(x: Array, axis: int, size: int, value) -> Array:
  if x.shape[axis] in (1, size):
    return x  # size 1 broadcasts: nothing to pad
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def _pad_blocks(layout: Layout, x: Array | None, value) -> Array | None:
  """[..., T|1, S|1] padded to [..., T_pad|1, S_pad|1] with ``value``."""
  if x is None:
    return None
  x = _pad_axis(x, x.ndim - 2, layout.padded_q_len, value)
  return _pad_axis(x, x.ndim - 1, layout.padded_kv_len, value)


def _check_args(query, key, value, bias, mask, scale, q_lengths, kv_lengths, window, score_fn,
                block_q, block_k) -> tuple[int, int] | None:
  """Raises ValueError naming expected and received shapes; returns the window as (left, right)."""
  if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
    raise ValueError(
        "expected query [B, T, N, H], key [B, S, K, H], value [B, S, K, Hv]; got query "
        f"{query.shape}, key {key.shape}, value {value.shape}")
  (b, t, n, h), (_, s, k, _) = query.shape, key.shape
  if value.shape[:3] != key.shape[:3] or key.shape[0] != b or n % k:
    raise ValueError(
        f"expected key [{b}, S, K, H] and value [{b}, S, K, Hv] with {n} query heads a multiple "
        f"of K; got key {key.shape}, value {value.shape}")
  if score_fn is None and key.shape[-1] != h:
    raise ValueError(f"dot scores need key [{b}, {s}, {k}, {h}]; got key {key.shape}")
  full = (b, n, t, s)
  for name, x in (("bias", bias), ("mask", mask)):
    if x is not None and (
        x.ndim != 4 or any(d not in (1, f) for d, f in zip(x.shape, full, strict=True))):
      raise ValueError(f"{name} must be 4-D and broadcastable to {full}; got {x.shape}")
  if mask is not None and mask.dtype != jnp.bool_:
    raise ValueError(f"mask must be bool; got {mask.dtype}")
  for name, x in (("query_seq_lengths", q_lengths), ("key_value_seq_lengths", kv_lengths)):
    if x is not None and (x.shape != (b,) or not jnp.issubdtype(x.dtype, jnp.integer)):
      raise ValueError(f"{name} must be int [{b}]; got {x.dtype} {x.shape}")
  if score_fn is not None and scale is not None:
    raise ValueError("scale applies to the dot score only; bind it into score_fn instead")
  if t < 1 or s < 1:
    raise ValueError(
        f"need at least one query and one key; got query {query.shape}, key {key.shape}")
  if any(b is not None and b < 1 for b in (block_q, block_k)):
    raise ValueError(f"block sizes must be positive; got block_q={block_q}, block_k={block_k}")
  if window is None:
    return None
  left, right = (window, window) if isinstance(window, int) else window
  return int(left), int(right)
