"""Memory-efficient ("chunked") attention: no [q_len, kv_len] matrix is ever held.

The queries and keys are cut into blocks. Data flows one way: every mask argument (causal /
window masking, sequence lengths, a dense mask, a ``mask_mod``) becomes one block mask
(`attn_jax.core.block_mask`, which works out exactly which block pairs can attend), or the caller
passes one it made once; the kernel (`attn_jax.core.chunked_kernel`) walks its lists and visits
only those, with the online
softmax forward and a FlashAttention-2 backward of its own. Memory is O(q_len * block) for any
mask; a ``score_mod`` and a ``mask_mod`` run inside the kernel, block by block, and gradients flow
into the arrays they close over.

Example:
  >>> from attn_jax.core.chunked import chunked_attention
  >>> q = k = v = jax.random.normal(jax.random.key(0), (1, 256, 2, 16))  # [B, T, N, H]
  >>> out = chunked_attention(q, k, v, is_causal=True, block_q=64, block_k=64)
  >>> bool(jnp.allclose(out, jax.nn.dot_product_attention(q, k, v, is_causal=True), atol=1e-5))
  True
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from attn_jax.core import block_plan, chunked_kernel, mod_key, mods
from attn_jax.core.batched import group_heads
from attn_jax.core.block_mask import (  # noqa: F401 (re-exported: the kernel's block choice)
    AUTO_BLOCKS,
    BLOCK_OVERHEAD,
    DEFAULT_BLOCK,
    BlockMask,
    build,
    choose_blocks,
)
from attn_jax.core.block_plan import ModProgram
from attn_jax.core.chunked_kernel import Layout, Terms, Walk

Array = jax.Array

#: Query block size for dense and causal attention (256-1024 measured alike on CPU, L4096-L8192).
DEFAULT_BLOCK_Q = DEFAULT_BLOCK
#: Key block size for dense and causal attention.
DEFAULT_BLOCK_K = DEFAULT_BLOCK


def chunked_attention(
    query: Array, key: Array, value: Array, *, bias: Array | None = None,
    mask: Array | None = None, scale: float | None = None, is_causal: bool = False,
    query_seq_lengths: Array | None = None, key_value_seq_lengths: Array | None = None,
    local_window_size: int | tuple[int, int] | None = None, score_fn: Callable | None = None,
    score_params: Any = None, params_per_head: bool = False, score_mod: Callable | None = None,
    mask_mod: Callable | None = None, block_mask: BlockMask | None = None,
    block_q: int | None = None, block_k: int | None = None, sinks: Array | None = None,
    return_residual: bool = False, dropout_rate: float = 0.0, dropout_rng: Array | None = None,
) -> Array | tuple[Array, Array]:
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
  `attn_jax.dot_product_attention`. block_mask: a `attn_jax.core.block_mask.BlockMask` for these
  sizes, its plan walked as it is (with any other mask argument a new plan of both is made).
  block_q, block_k: block sizes; None lets the kernel choose (512, smaller for masks known to be
  sparse at trace time: see AUTO_BLOCKS; a block mask's own).
  sinks: float [num_heads], one sink logit per query head (a key with no value; gradients flow
  into it). return_residual: also return the residual [batch, q_len, num_heads], float32
  logsumexp of each row's allowed logits (and sink), -inf for a row that sees nothing.
  dropout_rate, dropout_rng: dropout on the attention weights (each kept weight scaled by
  1 / (1 - rate)) inside the kernel, with a PRNG key: the keep mask of each block is drawn from
  the key folded with (batch index, query head, query block, key block), the same bits in the
  forward and the backward pass (`dropout_keep_mask` assembles it densely, for checks).
  Returns [batch, q_len, num_heads, value_dim] in the query's dtype; query rows that may attend to
  no key are exactly zero, and key/value positions no query may see never enter the arithmetic.

  Example:
    >>> q = k = v = jax.random.normal(jax.random.key(0), (1, 128, 2, 8))  # [B, T, N, H]
    >>> out = chunked_attention(q, k, v, local_window_size=(16, 0), block_q=32, block_k=32)
    >>> ref = jax.nn.dot_product_attention(q, k, v, local_window_size=(16, 0))
    >>> bool(jnp.allclose(out, ref, atol=1e-5))
    True
  """
  mods.check_signature(score_mod, mask_mod)
  window = _check_args(query, key, value, bias, mask, scale, query_seq_lengths,
                       key_value_seq_lengths, local_window_size, score_fn, block_q, block_k)
  if block_mask is not None:
    block_mask.check_sizes(query.shape[0], query.shape[2], query.shape[1], key.shape[1])
  if sinks is not None and (jnp.shape(sinks) != (query.shape[2],)
                            or not jnp.issubdtype(jnp.result_type(sinks), jnp.floating)):
    raise ValueError(f"sinks must be float [num_heads] = ({query.shape[2]},); got "
                     f"{jnp.result_type(sinks)} {jnp.shape(sinks)}")
  if not 0.0 <= dropout_rate < 1.0 or (dropout_rate > 0 and dropout_rng is None):
    raise ValueError(f"dropout_rate must be in [0, 1), with a dropout_rng when > 0; got "
                     f"{dropout_rate} and {dropout_rng}")
  as_int32 = lambda x: None if x is None else jnp.asarray(x, jnp.int32)
  return attend(query, key, value, bias=bias, mask=mask,
                scale=None if scale is None else float(scale), is_causal=bool(is_causal),
                query_seq_lengths=as_int32(query_seq_lengths),
                key_value_seq_lengths=as_int32(key_value_seq_lengths), local_window_size=window,
                score_fn=score_fn, score_params=score_params, params_per_head=params_per_head,
                score_mod=score_mod, mask_mod=mask_mod, block_mask=block_mask, block_q=block_q,
                block_k=block_k, sinks=sinks, return_residual=bool(return_residual),
                dropout_rate=float(dropout_rate),
                dropout_rng=dropout_rng if dropout_rate > 0 else None)


def attend(query, key, value, *, score_mod, mask_mod, **kwargs) -> Array:
  """`chunked_attention` without the argument checks (the batched API validates once).

  The mods reach the compiled program keyed by what they compute (`attn_jax.core.mod_key`): a
  mod reading changed Python state is traced anew, an identical fresh closure is not.

  Example:
    >>> q = jnp.ones((1, 8, 2, 4))
    >>> out = attend(q, q, q, bias=None, mask=None, scale=None, is_causal=True,
    ...              query_seq_lengths=None, key_value_seq_lengths=None, local_window_size=None,
    ...              score_fn=None, score_params=None, params_per_head=False, score_mod=None,
    ...              mask_mod=None, block_q=None, block_k=None)
    >>> out.shape
    (1, 8, 2, 4)
  """
  grid = (query.shape[0], query.shape[2], query.shape[1], key.shape[1])
  score_key, score_arrays = mod_key.key_mod(score_mod, grid, score=True)
  mask_key, mask_arrays = mod_key.key_mod(mask_mod, grid, score=False)
  return _attend(query, key, value, score_mod=score_key, mask_mod=mask_key,
                 score_mod_arrays=score_arrays, mask_mod_arrays=mask_arrays, **kwargs)


# Jitted with its settings static: eager calls then reuse one compiled program per configuration
# instead of re-tracing the loops (and recompiling) at every call. Takes validated arguments.
@functools.partial(jax.jit, static_argnames=(
    "scale", "is_causal", "local_window_size", "score_fn", "params_per_head", "score_mod",
    "mask_mod", "block_q", "block_k", "return_residual", "dropout_rate"))
def _attend(query, key, value, *, bias, mask, scale, is_causal, query_seq_lengths,
            key_value_seq_lengths, local_window_size, score_fn, score_params, params_per_head,
            score_mod, mask_mod, score_mod_arrays, mask_mod_arrays, block_q, block_k,
            block_mask=None, sinks=None, return_residual=False, dropout_rate=0.0,
            dropout_rng=None) -> Array | tuple[Array, Array]:
  score_mod = mod_key.rebind(score_mod, score_mod_arrays)
  mask_mod = mod_key.rebind(mask_mod, mask_mod_arrays)
  batch, q_len, num_heads, head_dim = query.shape
  _, kv_len, kv_heads, _ = value.shape
  groups = num_heads // kv_heads
  extra = (mask, query_seq_lengths, key_value_seq_lengths, mask_mod)
  if block_mask is None or is_causal or local_window_size is not None or any(
      x is not None for x in extra):
    block_mask = call_block_mask(
        batch, q_len, kv_len, num_heads, is_causal=is_causal, local_window_size=local_window_size,
        query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths,
        mask=mask, mask_mod=mask_mod, block_q=block_q, block_k=block_k, base=block_mask)
  layout = Layout(q_len=q_len, kv_len=kv_len, block_q=block_mask.block_q,
                  block_k=block_mask.block_k, kv_heads=kv_heads, groups=groups)
  pad = lambda x, value: _pad_blocks(layout, group_heads(x, kv_heads), value)
  bias, dense = pad(bias, 0), pad(block_mask.dense, False)  # [B|1, K|1, G|1, T_pad|1, S_pad|1]
  if score_params is not None and params_per_head:  # [N, ...] -> [K, G, ...]
    score_params = jax.tree.map(lambda p: p.reshape(kv_heads, groups, *p.shape[1:]), score_params)
  terms = Terms(dense, block_mask.mask_consts, jnp.arange(batch, dtype=jnp.int32))
  walk, per_batch = _walk(block_mask)

  # Zero what no key may see and the keys no query may see *before* any arithmetic, with `where`:
  # a NaN there would otherwise leak through 0 * NaN in the matmuls (and into the gradients).
  query = _zero_unseen_rows(query, block_mask.rows_seen)
  keys_seen = _keys_seen_per_kv_head(block_mask.keys_seen, layout)
  key, value = _zero_unseen_keys(key, keys_seen), _zero_unseen_keys(value, keys_seen)
  cfg = chunked_kernel.Config(
      layout=layout, scale=float(head_dim**-0.5 if scale is None else scale), score_fn=score_fn,
      params_per_head=params_per_head and score_params is not None, score_mod=None,
      mask_program=block_mask.program, mask_batch=block_mask.batch is not None,
      mask_heads=block_mask.num_heads is not None, fwd_steps=max(block_mask.max_kv_blocks, 1),
      bwd_steps=max(block_mask.max_q_blocks, 1))
  if sinks is not None:  # [N] -> [K, G]
    sinks = jnp.reshape(jnp.asarray(sinks, jnp.promote_types(query.dtype, jnp.float32)),
                        (kv_heads, groups))
  seed = None
  if dropout_rate > 0:
    cfg = cfg._replace(dropout_rate=dropout_rate, dropout_impl=jax.random.key_impl(dropout_rng))
    seed = jax.random.key_data(dropout_rng)
  run = functools.partial(_run, cfg, score_mod, score_params, sinks, seed)
  if not per_batch:
    out = run(query, key, value, bias, terms, jax.tree.map(lambda x: x[0], walk))
  else:
    # One row of the batch at a time, each with its own block lists. Arrays shared by the batch
    # (size-1 batch axis) are closed over rather than mapped.
    def one_row(xs):
      q, k, v, index, row_walk, bias_row, dense_row = xs
      row_terms = Terms(dense if dense_row is None else dense_row[None], terms.mask_consts,
                        index[None])
      out, residual = run(q[None], k[None], v[None],
                          bias if bias_row is None else bias_row[None], row_terms, row_walk)
      return out[0], residual[0]

    mapped = lambda x: x if x is not None and x.shape[0] > 1 else None
    out = lax.map(one_row, (query, key, value, terms.batch_index, walk, mapped(bias),
                            mapped(dense)))
  out, residual = out
  if return_residual:
    return out[:, :q_len], residual[:, :q_len]
  return out[:, :q_len]


def call_block_mask(batch: int, q_len: int, kv_len: int, num_heads: int, *,
                    is_causal: bool = False, local_window_size: tuple[int, int] | None = None,
                    query_seq_lengths=None, key_value_seq_lengths=None, mask=None, mask_mod=None,
                    block_q: int | None = None, block_k: int | None = None,
                    base: BlockMask | None = None) -> BlockMask:
  """The block mask `chunked_attention` builds for a call with these masks (mask: bool
  broadcastable to [B, N, T, S]; the rest as there; ``base``: a block mask AND-ed in, whose
  blocks are kept). The blocks, when not given: ``base``'s, else those `choose_blocks` picks for
  the terms known at trace time (windows, a static ``mask_mod``), else DEFAULT_BLOCK.

  Example:
    >>> bm = call_block_mask(1, 2048, 2048, 4, local_window_size=(128, 0))
    >>> bm.block_q, bm.max_kv_blocks  # small blocks for a narrow band, 3 per query block
    (64, 3)
  """
  as_int32 = lambda x: None if x is None else jnp.asarray(x, jnp.int32)
  static = mods.and_masks(mods.causal() if is_causal else None,
                          mods.sliding_window(*local_window_size) if local_window_size else None)
  user_static = mask_mod is not None and not _closes_over_tracers(mask_mod)
  if base is not None and block_q is None and block_k is None:
    block_q, block_k = base.block_q, base.block_k
  elif block_q is None and block_k is None:
    if local_window_size is not None or user_static:
      program, consts = ModProgram.trace(mods.and_masks(static, mask_mod if user_static else None))
      block_q, block_k = choose_blocks(program, consts, batch=None, num_heads=None, q_len=q_len,
                                       kv_len=kv_len)
    else:  # dense or causal: the large blocks
      block_q, block_k = DEFAULT_BLOCK, DEFAULT_BLOCK
  lengths = (as_int32(query_seq_lengths), as_int32(key_value_seq_lengths))
  combined = mods.and_masks(
      static, None if base is None else base.mask_mod, mask_mod,
      mods.padding(*lengths) if any(x is not None for x in lengths) else None)
  depends_b, depends_h = _dependence(combined, batch, num_heads)
  depends_b |= any(x is not None for x in lengths)
  if mask is not None:
    mask = jnp.reshape(mask, (1,) * (4 - jnp.ndim(mask)) + jnp.shape(mask))
    depends_b, depends_h = depends_b or mask.shape[0] > 1, depends_h or mask.shape[1] > 1
  program, consts = (None, []) if combined is None else ModProgram.trace(combined)
  blocks = dict(q_len=q_len, kv_len=kv_len, block_q=block_q or DEFAULT_BLOCK_Q,
                block_k=block_k or DEFAULT_BLOCK_K)
  bound = None
  traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((consts, mask)))
  if traced:  # the loops' static trip counts, from the terms known at trace time
    known = mods.and_masks(static, mask_mod if user_static else None)
    known_program, known_consts = (None, []) if known is None else ModProgram.trace(known)
    if not any(isinstance(c, jax.core.Tracer) for c in known_consts):
      bound = build(known_program, known_consts, None, batch=None, num_heads=None, **blocks)
  return build(program, consts, mask, batch=batch if depends_b else None,
               num_heads=num_heads if depends_h else None, bound=bound, **blocks)


def dropout_keep_mask(dropout_rng: Array, dropout_rate: float, batch: int, num_heads: int,
                      q_len: int, kv_len: int, block_q: int, block_k: int) -> Array:
  """The keep mask ``chunked_attention(dropout_rate=, dropout_rng=)`` draws, assembled densely:
  bool [B, N, T, S], for blocks of block_q x block_k (those of the call's block mask).

  Example:
    >>> import jax
    >>> keep = dropout_keep_mask(jax.random.key(0), 0.5, 1, 2, 64, 64, 32, 32)
    >>> keep.shape, 0.4 < float(keep.mean()) < 0.6
    ((1, 2, 64, 64), True)
  """
  layout = Layout(q_len, kv_len, min(block_q, q_len), min(block_k, kv_len), num_heads, 1)
  cfg = chunked_kernel.Config(layout, 1.0, None, False, None, None, False, False, 1, 1,
                              dropout_rate, jax.random.key_impl(dropout_rng))
  seed, rows = jax.random.key_data(dropout_rng), jnp.arange(batch, dtype=jnp.int32)
  block = lambda i, j: chunked_kernel.dropout_keep(cfg, seed, rows, i, j)[:, :, 0]
  nq, nk = layout.num_q_blocks, layout.num_k_blocks
  # [nQ, nK, B, N, bq, bk] -> [B, N, nQ, bq, nK, bk]
  keep = jax.vmap(lambda i: jax.vmap(lambda j: block(i, j))(jnp.arange(nk)))(jnp.arange(nq))
  keep = keep.transpose(2, 3, 0, 4, 1, 5).reshape(batch, num_heads, nq * layout.block_q, -1)
  return keep[:, :, :q_len, :kv_len]


def _closes_over_tracers(mask_mod) -> bool:
  _, consts = ModProgram.trace(mask_mod)
  return any(isinstance(c, jax.core.Tracer) for c in consts)


def _dependence(mask_mod, batch: int, num_heads: int) -> tuple[bool, bool]:
  """Whether ``mask_mod``'s output varies along b / h (its broadcast shape on the index grid)."""
  if mask_mod is None:
    return False, False
  one = jax.ShapeDtypeStruct((1, 1, 1, 1), jnp.int32)
  out = jax.eval_shape(mask_mod, jax.ShapeDtypeStruct((batch, 1, 1, 1), jnp.int32),
                       jax.ShapeDtypeStruct((1, num_heads, 1, 1), jnp.int32), one, one)
  shape = (1,) * (4 - len(out.shape)) + tuple(out.shape)
  return shape[0] > 1, shape[1] > 1


def _walk(block_mask: BlockMask) -> tuple[Walk, bool]:
  """The lists the kernel walks, [Bw, ...] with Bw = Bm when per batch row, else 1. The kernel
  visits every head of a block at once: with a per-head mask it walks the union of the heads
  (whose counts ``max_kv_blocks`` / ``max_q_blocks`` bound)."""
  nq, nk = block_mask.num_blocks
  kind = block_mask.kind
  per_batch = kind.shape[0] > 1 and nq * nk > 1
  lists = (block_mask.kv_count, block_mask.kv_indices, block_mask.q_count, block_mask.q_indices)
  if kind.shape[1] > 1 or (kind.shape[0] > 1 and not per_batch):
    kind = block_plan.union(kind, (1,) if per_batch else (0, 1))
    lists = block_plan.walk_lists(kind)
  as_int32 = lambda x: jnp.asarray(x[:, 0], jnp.int32)
  return Walk(as_int32(kind), *(as_int32(x) for x in lists)), per_batch


def _run(cfg, score_mod, score_params, sinks, seed, query, key, value, bias, terms, walk):
  """Blocks, converts the score mod at the block shapes, runs the kernel, unblocks.

  -> out [B, T_pad, N, Hv], residual [B, T_pad, N] (float32 log-sum-exp; -inf: nothing seen).
  """
  layout = cfg.layout
  batch, _, num_heads, _ = query.shape
  nq, nk, bq, bk = layout.num_q_blocks, layout.num_k_blocks, layout.block_q, layout.block_k
  index = chunked_kernel.block_indices(layout, terms.batch_index, 0, 0)
  if score_mod is not None:
    example = jax.ShapeDtypeStruct((batch, layout.kv_heads, layout.groups, bq, bk), jnp.float32)
    converted, score_float, score_other = _convert_split(score_mod, example, *index)
    cfg = cfg._replace(score_mod=converted)
  else:
    score_float, score_other = [], []
  kv_heads, groups = layout.kv_heads, layout.groups
  query = _pad_axis(query, 1, nq * bq, 0)
  # [B, nQ * bq, N, H] -> [B, nQ, bq, K, G, H] -> [nQ, B, K, G, bq, H]
  q_blocks = query.reshape(batch, nq, bq, kv_heads, groups, -1).transpose(1, 0, 3, 4, 2, 5)
  # [B, nK * bk, K, H] -> [B, nK, bk, K, H] -> [nK, B, K, bk, H]
  to_blocks = lambda x: _pad_axis(x, 1, nk * bk, 0).reshape(batch, nk, bk, kv_heads, -1)
  k_blocks = to_blocks(key).transpose(1, 0, 3, 2, 4)
  v_blocks = to_blocks(value).transpose(1, 0, 3, 2, 4)
  out, residual = chunked_kernel.attend_blocks(cfg, q_blocks, k_blocks, v_blocks, bias, sinks,
                                               score_params, score_float, score_other, terms,
                                               walk, seed)
  # [nQ, B, K, G, bq, Hv] -> [B, nQ, bq, K, G, Hv] -> [B, T_pad, N, Hv]
  # [nQ, B, K, G, bq] -> [B, nQ, bq, K, G] -> [B, T_pad, N]
  residual = residual.transpose(1, 0, 4, 2, 3).reshape(batch, nq * bq, num_heads)
  return out.transpose(1, 0, 4, 2, 3, 5).reshape(batch, nq * bq, num_heads, -1), residual


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


def _zero_unseen_rows(query: Array, rows_seen) -> Array:
  """query [B, T, N, H] with the rows ``rows_seen`` [Bm, Hm, T] marks False set to 0."""
  if isinstance(rows_seen, np.ndarray) and rows_seen.all():
    return query
  seen = jnp.swapaxes(rows_seen, 1, 2)  # [Bm, T, Hm]
  return jnp.where(seen[..., None], query, jnp.zeros((), query.dtype))


def _keys_seen_per_kv_head(keys_seen, layout: Layout):
  """[Bm, Hm, S] (per query head) -> [Bm, K|1, S]: the positions some head of the group sees."""
  if keys_seen.shape[1] == 1:
    return keys_seen
  xp = np if isinstance(keys_seen, np.ndarray) else jnp
  grouped = keys_seen.reshape(keys_seen.shape[0], layout.kv_heads, layout.groups, -1)
  return xp.any(grouped, axis=2)


def _zero_unseen_keys(x: Array, keys_seen) -> Array:
  """key or value [B, S, K, H] with the positions ``keys_seen`` [Bm, K|1, S] marks False set
  to 0."""
  if isinstance(keys_seen, np.ndarray) and keys_seen.all():
    return x
  seen = jnp.swapaxes(keys_seen, 1, 2)  # [Bm, S, K|1]
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
