"""The blocked attention kernel behind `attn_jax.core.chunked`: forward, backward, custom VJP.

Forward: for each query block, the key blocks of its walk (`Walk`, from a
`attn_jax.core.block_mask.BlockMask`) with the online
softmax of Rabe & Staats 2021 and FlashAttention (Dao et al. 2022): per query row a running
maximum ``m``, denominator ``l`` and weighted sum of values, rescaled whenever ``m`` grows; only the
output and the per-row log-sum-exp ``lse = m + log(l)`` are saved. Backward (FlashAttention-2, Dao
2023): for each key block, the query blocks that see it; each block's probabilities are recomputed
as ``P = exp(logits - lse)`` and ``dLogits = P * (dP - rowsum(dO * O))``.

EMPTY blocks cost no matmul and no exponential, FULL ones no per-element mask. Layout: query blocks
[nQ, B, K, G, bq, H], key/value blocks [nK, B, K, bk, H]: the N query heads are split into K
key/value heads times G = N // K groups (grouped-query attention), so no key/value head is repeated.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from attn_jax.core import block_plan
from attn_jax.core.block_plan import EMPTY, ModProgram

Array = jax.Array


class Layout(NamedTuple):
  """Static sizes of one chunked call (hashable)."""

  q_len: int  # T before padding
  kv_len: int  # S before padding
  block_q: int
  block_k: int
  kv_heads: int  # K
  groups: int  # G = N // K

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


class Walk(NamedTuple):
  """The blocks one batch row (or every row alike) visits, from a block mask (int32 arrays).

  kind [nQ, nK] (EMPTY, PARTIAL, FULL); forward: query block i visits key blocks
  kv_indices[i, :kv_count[i]]; backward: key block j visits query blocks q_indices[j, :q_count[j]].
  """

  kind: Array
  kv_count: Array
  kv_indices: Array
  q_count: Array
  q_indices: Array


class Terms(NamedTuple):
  """The array-valued mask terms: dense bool [B|1, K|1, G|1, T_pad|1, S_pad|1] or None; the mask
  mod's closed-over arrays; batch_index int32 [B], the batch index each row stands for."""

  dense: Array | None
  mask_consts: tuple
  batch_index: Array


class Config(NamedTuple):
  """Static settings shared by the forward and the backward pass."""

  layout: Layout
  scale: float  # the dot score's scale (score_fn None)
  score_fn: Callable | None  # single-head score(q [bq, H], k [bk, H], params) -> [bq, bk]
  params_per_head: bool  # score params carry leading [K, G] axes
  score_mod: Callable | None  # (consts, score, b, h, q, kv) -> score, see `convert`
  mask_program: ModProgram | None  # (consts, b, h, q, kv) -> bool
  mask_batch: bool  # whether the mask depends on b (else evaluated at b = 0)
  mask_heads: bool  # whether the mask depends on h (else at h = 0)
  fwd_steps: int  # static trip counts: at least every kv_count / q_count of the walk
  bwd_steps: int
  dropout_rate: float = 0.0  # dropout on the attention weights, keep mask from `dropout_keep`
  dropout_impl: Any = None  # the PRNG implementation of the dropout key (jax.random.key_impl)


def dropout_keep(cfg: Config, seed: Array, batch_index: Array, i, j) -> Array:
  """The dropout keep mask of block (i, j): bool [B, K, G, bq, bk], True with probability
  1 - rate, drawn from the key ``seed`` (key data) folded with (batch index, query head, i, j):
  the same bits in the forward and the backward pass, whichever rows are walked together."""
  lay = cfg.layout
  base = jax.random.wrap_key_data(seed, impl=cfg.dropout_impl)
  heads = jnp.arange(lay.kv_heads * lay.groups, dtype=jnp.int32)

  def one(b, n):
    key = base
    for x in (b, n, i, j):
      key = jax.random.fold_in(key, x)
    return jax.random.bernoulli(key, 1.0 - cfg.dropout_rate, (lay.block_q, lay.block_k))

  keep = jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None))(batch_index, heads)
  return keep.reshape(batch_index.shape[0], lay.kv_heads, lay.groups, lay.block_q, lay.block_k)


def _dropped(cfg: Config, seed, batch_index, i, j, x: Array) -> Array:
  """x [B, K, G, bq, bk] with the dropped entries zeroed and the kept ones scaled by
  1 / (1 - rate) (identity without dropout)."""
  if not cfg.dropout_rate:
    return x
  keep = dropout_keep(cfg, seed, batch_index, i, j)
  return jnp.where(keep, x * jnp.asarray(1.0 / (1.0 - cfg.dropout_rate), x.dtype),
                   jnp.zeros((), x.dtype))


def convert(fn: Callable, *example_args) -> tuple[Callable, list]:
  """``fn`` as ``call(consts, *args)`` plus the arrays it closes over (``consts``).

  The kernel's VJP must receive every array it differentiates (and every traced array it reads)
  as an explicit argument; a mod closes over its arrays. Tracing ``fn`` once at the block shapes
  ``example_args`` hoists them all, traced or not, float or int.
  """
  # A fresh wrapper: make_jaxpr caches on the function's identity and would return the program
  # of an earlier trace, from before the Python state the mod reads changed.
  closed = jax.make_jaxpr(lambda *a: fn(*a))(*example_args)
  consts = list(closed.consts)

  def call(consts, *args):
    return jax.core.eval_jaxpr(closed.jaxpr, consts, *args)[0]

  return call, consts


def block_indices(layout: Layout, batch_index: Array, i, j):
  """Index arrays of block (i, j): b [B,1,1,1,1], h [1,K,G,1,1], q [1,1,1,bq,1], kv [1,1,1,1,bk].

  Positions past the sequence (the padding of the last blocks, masked anyway) are clamped onto the
  last one, so a mod never indexes past its arrays.
  """
  q = jnp.minimum(i * layout.block_q + jnp.arange(layout.block_q, dtype=jnp.int32),
                  layout.q_len - 1)[:, None]
  kv = jnp.minimum(j * layout.block_k + jnp.arange(layout.block_k, dtype=jnp.int32),
                   layout.kv_len - 1)[None, :]
  return (batch_index[:, None, None, None, None], head_index(layout), q[None, None, None],
          kv[None, None, None])


def head_index(layout: Layout) -> Array:
  """int32 [1, K, G, 1, 1]: the query head n = k * G + g of each grouped position."""
  heads = jnp.arange(layout.kv_heads * layout.groups, dtype=jnp.int32)
  return heads.reshape(1, layout.kv_heads, layout.groups, 1, 1)


def _stat_dtype(x: Array):
  # Softmax statistics in at least float32: bf16 exponentials lose most of their digits.
  return jnp.promote_types(x.dtype, jnp.float32)


def _rows(x: Array) -> Array:
  # [B, K, G, bq, ...] -> [B, K, G*bq, ...]: a free reshape that makes every block product a plain
  # batched matmul (a G axis between the batch and row axes costs a transposed copy per block).
  return x.reshape(x.shape[0], x.shape[1], -1, *x.shape[4:])


def _einsum(spec: str, a: Array, b: Array, dtype) -> Array:
  """A block product accumulating in ``dtype`` (float32 or wider).

  The operands keep the input dtype (bf16 stays bf16, as in FlashAttention-2), except on CPU:
  XLA:CPU has no BF16 x BF16 = F32 dot (a vmapped bf16 backward failed with "Unsupported element
  type for DotThunk"), so there low-precision operands are upcast to float32 first.
  """
  if jax.default_backend() == "cpu" and jnp.finfo(a.dtype).bits < 32:
    a, b = a.astype(dtype), b.astype(dtype)
  return jnp.einsum(spec, a, b, preferred_element_type=dtype)


def _t_matmul(rows: Array, other_rows: Array, dtype) -> Array:
  """rows^T @ other_rows: [B, K, R, H] x [B, K, R, S] -> [B, K, H, S], contracting the rows.

  Written as an explicit transpose of the small [R, H] operand and a plain matmul: XLA:CPU runs
  a matmul contracting both operands' leading axis about 2x slower than this.
  """
  # [B, K, H, R] x [B, K, R, S] -> [B, K, H, S]
  return _einsum("bkhr,bkrs->bkhs", jnp.swapaxes(rows, -1, -2), other_rows, dtype)


def _scores(cfg: Config, q_blk: Array, k_blk: Array, params: Any, with_vjp: bool):
  """Raw scores [B, K, G, bq, bk] (float32 or wider) of q_blk [B, K, G, bq, H] and
  k_blk [B, K, bk, H]; with ``with_vjp`` also d_scores -> (dq, dk^T [B, K, H, bk], dparams)."""
  dtype = _stat_dtype(q_blk)
  if cfg.score_fn is None:
    # [B, K, G*bq, H] x [B, K, bk, H] -> [B, K, G*bq, bk]: one batched matmul, keys shared by G.
    scores = _einsum("bkqh,bksh->bkqs", _rows(q_blk), k_blk, dtype)
    scores = scores.reshape(*q_blk.shape[:-1], -1) * jnp.asarray(cfg.scale, dtype)

    def dot_vjp(d_scores):
      # The matmul inputs keep the input dtype (bf16 stays bf16, as in FlashAttention-2); the
      # products accumulate in float32.
      d_scaled = _rows((d_scores * jnp.asarray(cfg.scale, dtype)).astype(q_blk.dtype))
      # [B, K, G*bq, bk] x [B, K, bk, H] -> [B, K, G*bq, H]
      dq = _einsum("bkqs,bksh->bkqh", d_scaled, k_blk, dtype)
      return dq.reshape(q_blk.shape), _t_matmul(_rows(q_blk), d_scaled, dtype), None

    return scores, dot_vjp if with_vjp else None
  # A single-head score function lifted over groups (key shared), kv heads and batch.
  p_axis = 0 if cfg.params_per_head else None
  per_group = jax.vmap(cfg.score_fn, in_axes=(0, None, p_axis))
  per_batch = jax.vmap(jax.vmap(per_group, in_axes=(0, 0, p_axis)), in_axes=(0, 0, None))
  fn = lambda q, k, p: per_batch(q, k, p).astype(dtype)
  if not with_vjp:
    return fn(q_blk, k_blk, params), None
  # Upcast first so that the per-block gradients come back in float32 for accumulation.
  scores, vjp = jax.vjp(fn, q_blk.astype(dtype), k_blk.astype(dtype), params)

  def fn_vjp(d_scores):
    dq, dk, dparams = vjp(d_scores)
    return dq, jnp.swapaxes(dk, -1, -2), dparams

  return scores, fn_vjp


def _logits(cfg, i, j, q_blk, k_blk, bias_blk, params, mod_args, allowed, with_vjp):
  """The masked logits of block (i, j) and, with ``with_vjp``, d_logits -> (dq, dk^T, dparams,
  d_bias_block, d_score_consts). ``mod_args`` = (float consts, other consts, batch_index)."""
  scores, scores_vjp = _scores(cfg, q_blk, k_blk, params, with_vjp)
  x = scores if bias_blk is None else scores + bias_blk.astype(scores.dtype)
  mod_vjp = None
  if cfg.score_mod is not None:
    float_consts, other_consts, batch_index = mod_args
    index = block_indices(cfg.layout, batch_index, i, j)

    def modded(x, float_consts):
      if allowed is not None:  # a masked logit (garbage, 1e30) never reaches the mod
        x = jnp.where(allowed, x, 0.0)
      out = cfg.score_mod((float_consts, other_consts), x, *index)
      return jnp.broadcast_to(out, x.shape).astype(x.dtype)

    if with_vjp:
      x, mod_vjp = jax.vjp(modded, x, float_consts)
    else:
      x = modded(x, float_consts)
  # `where`, not an additive mask: whatever a masked logit holds (NaN, 1e30) is dropped here.
  logits = x if allowed is None else jnp.where(allowed, x, -jnp.inf)
  if not with_vjp:
    return logits, None

  def vjp(d_logits):  # zero at masked entries already: P is exactly 0 there
    d_x, d_consts = mod_vjp(d_logits) if mod_vjp is not None else (d_logits, [])
    dq, dk_t, dparams = scores_vjp(d_x)
    return dq, dk_t, dparams, d_x, d_consts

  return logits, vjp


def _slice_block(cfg: Config, x: Array | None, i, j) -> Array | None:
  """Block (i, j) of x [..., T|1, S|1] -> [..., bq|1, bk|1]; a size-1 axis is broadcast, not cut."""
  if x is None:
    return None
  if x.shape[-2] > 1:
    x = lax.dynamic_slice_in_dim(x, i * cfg.layout.block_q, cfg.layout.block_q, axis=x.ndim - 2)
  if x.shape[-1] > 1:
    x = lax.dynamic_slice_in_dim(x, j * cfg.layout.block_k, cfg.layout.block_k, axis=x.ndim - 1)
  return x


def _add_block(cfg: Config, total: Array, block: Array, i, j) -> Array:
  """total [..., T|1, S|1] += block [..., bq, bk], summed over the axes where total has size 1."""
  axes = tuple(a for a in range(block.ndim) if total.shape[a] == 1 and block.shape[a] > 1)
  block = jnp.sum(block, axis=axes, keepdims=True).astype(total.dtype)
  lay = cfg.layout
  zero = jnp.zeros((), jnp.int32)  # int32 starts, also under jax_enable_x64
  starts = [zero] * (total.ndim - 2) + [i * lay.block_q if total.shape[-2] > 1 else zero,
                                        j * lay.block_k if total.shape[-1] > 1 else zero]
  current = lax.dynamic_slice(total, starts, block.shape)
  return lax.dynamic_update_slice(total, current + block, starts)


def _allowed(cfg: Config, terms: Terms, i, j):
  """bool broadcastable to [B, K, G, bq, bk]: the pairs of block (i, j) that may attend."""
  lay = cfg.layout
  zero = jnp.zeros((1, 1, 1, 1, 1), jnp.int32)
  b = terms.batch_index[:, None, None, None, None] if cfg.mask_batch else zero
  h = head_index(lay) if cfg.mask_heads else zero
  sizes = (lay.q_len, lay.kv_len, lay.padded_q_len, lay.padded_kv_len)
  return block_plan.allowed(sizes, cfg.mask_program, terms.mask_consts, terms.dense, b, h,
                            i * lay.block_q, lay.block_q, j * lay.block_k, lay.block_k)


def _forward(cfg, q_blocks, k_blocks, v_blocks, bias, sinks, params, score_float, score_other,
             terms, walk, seed):
  """-> out [nQ, B, K, G, bq, Hv] (query dtype), lse [nQ, B, K, G, bq] (statistics dtype; 0 for a
  row that sees nothing) and whether each row saw something (a key or a sink). ``seed``: the
  dropout key's data, or None."""
  dtype = _stat_dtype(q_blocks)
  _, batch, kv_heads, groups, bq, _ = q_blocks.shape
  row_shape = (batch, kv_heads, groups, bq)
  mod_args = (score_float, score_other, terms.batch_index)

  def key_block(i, q_blk, j, stats, masked):
    m, denom, acc = stats  # [B, K, G, bq], [B, K, G, bq], [B, K, G, bq, Hv]
    allowed = _allowed(cfg, terms, i, j) if masked else None
    logits, _ = _logits(cfg, i, j, q_blk, k_blocks[j], _slice_block(cfg, bias, i, j), params,
                        mod_args, allowed, with_vjp=False)
    m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
    # Rows with no allowed key so far keep m = -inf; shift them by 0 so exp gives 0, not NaN.
    m_safe = jnp.where(jnp.isneginf(m_new), 0.0, m_new)
    p = jnp.exp(logits - m_safe[..., None])  # [B, K, G, bq, bk]; masked entries exactly 0
    rescale = jnp.exp(m - m_safe)
    # Dropout acts on the normalised weights: the denominator sums the undropped p.
    p_dropped = _dropped(cfg, seed, terms.batch_index, i, j, p)
    # [B, K, G*bq, bk] x [B, K, bk, Hv] -> [B, K, G*bq, Hv]
    pv = _einsum("bkqs,bksh->bkqh", _rows(p_dropped.astype(v_blocks.dtype)), v_blocks[j], dtype)
    pv = pv.reshape(acc.shape)
    return m_new, denom * rescale + jnp.sum(p, axis=-1), acc * rescale[..., None] + pv

  def query_block(xs):
    i, q_blk = xs

    def step(stats, t):  # the t-th live key block of the row, or past the count: skipped
      j = walk.kv_indices[i, t]
      kind = jnp.where(t < walk.kv_count[i], walk.kind[i, j], EMPTY)
      branches = [lambda s: s,  # EMPTY: skipped, not computed and masked
                  lambda s: key_block(i, q_blk, j, s, masked=True),
                  lambda s: key_block(i, q_blk, j, s, masked=False)]
      return lax.switch(kind, branches, stats), None

    # A sink is a key with logit sinks[k, g] and no value: the running maximum starts at it, the
    # denominator at its exp(0) = 1, the weighted sum at 0.
    if sinks is None:
      m0, l0 = jnp.full(row_shape, -jnp.inf, dtype), jnp.zeros(row_shape, dtype)
    else:
      m0 = jnp.broadcast_to(sinks.astype(dtype)[None, :, :, None], row_shape)
      l0 = jnp.ones(row_shape, dtype)
    init = (m0, l0, jnp.zeros((*row_shape, v_blocks.shape[-1]), dtype))
    # A scan of static length (not a while loop of the count): the backward pass stays
    # differentiable, for gradients of gradients.
    (m, denom, acc), _ = lax.scan(step, init, jnp.arange(cfg.fwd_steps, dtype=jnp.int32))
    has_keys = denom > 0  # false for fully masked rows: output 0, lse 0 (any finite value works)
    safe_denom = jnp.where(has_keys, denom, 1.0)
    out = acc / safe_denom[..., None]
    lse = jnp.where(has_keys, m + jnp.log(safe_denom), 0.0)
    return out.astype(q_blocks.dtype), lse, has_keys

  return lax.map(query_block, (jnp.arange(cfg.layout.num_q_blocks, dtype=jnp.int32), q_blocks))


def _backward(cfg, residuals, d_out):
  """Outer loop over key blocks, inner over the query blocks that see them.

  d_out: [nQ, B, K, G, bq, Hv]. dK and dV of a key block accumulate in the inner loop's carry;
  dQ [nQ, B, K, G, bq, H] (O(q_len * head_dim)), dBias, dParams and the score mod's closed-over
  float arrays accumulate across the outer loop.
  """
  (q_blocks, k_blocks, v_blocks, bias, sinks, params, score_float, score_other, terms, walk, seed,
   out, lse, seen) = residuals
  d_out, d_residual = d_out
  # A row that sees nothing has the constant residual -inf: its cotangent (NaN, say, from a
  # logaddexp of two -inf) is dropped, with `where`.
  d_residual = jnp.where(seen, d_residual, 0.0)
  dtype = _stat_dtype(q_blocks)
  mod_args = (score_float, score_other, terms.batch_index)
  # delta = rowsum(dO * O) = rowsum(P * dP): the softmax Jacobian's correction term per row. The
  # residual's cotangent adds P * d_residual to dLogits (d lse / d l_ij = P_ij): delta less it.
  delta = jnp.sum(d_out.astype(dtype) * out.astype(dtype), axis=-1)  # [nQ, B, K, G, bq]
  delta = delta - d_residual.astype(dtype)
  d_sinks = None
  if sinks is not None:
    # The sink's probability per row is exp(sink - lse); its value is 0, so dP_sink = 0 and
    # dSink = sum over rows of P_sink * (0 - delta).
    p_sink = jnp.exp(sinks.astype(dtype)[None, None, :, :, None] - lse)
    d_sinks = -jnp.sum(p_sink * delta, axis=(0, 1, 4)).astype(sinks.dtype)  # [K, G]

  def block_grads(i, j, k_blk, v_blk, masked):
    q_blk, do_blk = q_blocks[i], d_out[i]  # [B, K, G, bq, H], [B, K, G, bq, Hv]
    allowed = _allowed(cfg, terms, i, j) if masked else None
    logits, logits_vjp = _logits(cfg, i, j, q_blk, k_blk, _slice_block(cfg, bias, i, j), params,
                                 mod_args, allowed, with_vjp=True)
    p = jnp.exp(logits - lse[i][..., None])  # [B, K, G, bq, bk]; masked entries exactly 0
    # With dropout (mask M scaled by 1 / (1 - rate)): O = (P * M) V, so dV = (P * M)^T dO,
    # dP = M * (dO V^T), and rowsum(P * dP) = rowsum(dO * O) = delta still.
    drop = functools.partial(_dropped, cfg, seed, terms.batch_index, i, j)
    # dV^T = dO^T P: [B, K, G*bq, Hv] x [B, K, G*bq, bk] -> [B, K, Hv, bk] (summed over G too)
    dv_t = _t_matmul(_rows(do_blk), _rows(drop(p).astype(do_blk.dtype)), dtype)
    # [B, K, G*bq, Hv] x [B, K, bk, Hv] -> [B, K, G*bq, bk]
    dp = _einsum("bkqh,bksh->bkqs", _rows(do_blk), v_blk, dtype)
    d_logits = p * (drop(dp.reshape(p.shape)) - delta[i][..., None])
    dq, dk_t, dparams, d_bias, d_consts = logits_vjp(d_logits)
    return dq, dk_t, dv_t, (None if bias is None else d_bias), dparams, d_consts

  def key_block(carry, xs):
    j, k_blk, v_blk = xs

    def step(inner, t):  # the t-th live query block of the column, or past the count: skipped
      dk_acc, dv_acc, dq_acc, dbias_acc, dparams_acc, dconsts_acc = inner
      i = walk.q_indices[j, t]
      kind = jnp.where(t < walk.q_count[j], walk.kind[i, j], EMPTY)
      compute = functools.partial(block_grads, i, j, k_blk, v_blk)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                           jax.eval_shape(lambda: compute(masked=True)))
      dq, dk_t, dv_t, d_bias, dparams, d_consts = lax.switch(
          kind, [lambda: zeros, lambda: compute(masked=True), lambda: compute(masked=False)])
      if d_bias is not None:
        dbias_acc = _add_block(cfg, dbias_acc, d_bias, i, j)
      add = lambda acc, d: jax.tree.map(lambda a, x: a + x.astype(a.dtype), acc, d)
      return (dk_acc + dk_t, dv_acc + dv_t, dq_acc.at[i].add(dq), dbias_acc,
              add(dparams_acc, dparams), add(dconsts_acc, d_consts)), None

    transposed = lambda x: jnp.zeros(jnp.swapaxes(x, -1, -2).shape, dtype)
    init = (transposed(k_blk), transposed(v_blk), *carry)
    (dk_t, dv_t, *carry), _ = lax.scan(step, init, jnp.arange(cfg.bwd_steps, dtype=jnp.int32))
    return tuple(carry), (jnp.swapaxes(dk_t, -1, -2), jnp.swapaxes(dv_t, -1, -2))

  zeros_like = lambda tree: jax.tree.map(lambda x: jnp.zeros(x.shape, _stat_dtype(x)), tree)
  carry = (jnp.zeros(q_blocks.shape, dtype), None if bias is None else zeros_like(bias),
           zeros_like(params), zeros_like(score_float))
  xs = (jnp.arange(cfg.layout.num_k_blocks, dtype=jnp.int32), k_blocks, v_blocks)
  (dq, dbias, dparams, dconsts), (dk, dv) = lax.scan(key_block, carry, xs)
  cast = lambda d, x: None if d is None else d.astype(x.dtype)
  return (cast(dq, q_blocks), cast(dk, k_blocks), cast(dv, v_blocks), cast(dbias, bias),
          d_sinks, jax.tree.map(cast, dparams, params), jax.tree.map(cast, dconsts, score_float),
          None, None, None, None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def attend_blocks(cfg: Config, q_blocks, k_blocks, v_blocks, bias, sinks, params, score_float,
                  score_other, terms: Terms, walk: Walk, seed=None):
  """Blocked attention: q_blocks [nQ, B, K, G, bq, H], k/v_blocks [nK, B, K, bk, H|Hv] ->
  (out [nQ, B, K, G, bq, Hv], residual [nQ, B, K, G, bq]: the float32 log-sum-exp of each row,
  -inf for a row that sees nothing). ``bias`` [B|1, K|1, G|1, T_pad|1, S_pad|1]; ``sinks``
  [K, G] float (one sink logit per query head) or None; ``params`` the score function's;
  ``score_float`` / ``score_other`` the score mod's closed-over float / other arrays
  (differentiated / not); ``terms`` the mask's array terms; ``walk`` for one batch row (or
  all); ``seed``: the dropout key's data (uint32) when ``cfg.dropout_rate`` > 0."""
  out, lse, seen = _forward(cfg, q_blocks, k_blocks, v_blocks, bias, sinks, params, score_float,
                            score_other, terms, walk, seed)
  return out, _residual(lse, seen)


def _residual(lse, seen):
  # -inf where the row sees nothing, formed as log(0): no -inf literal for jax_debug_infs.
  return lse + jnp.log(seen.astype(lse.dtype))


def _attend_blocks_fwd(cfg, *args):
  out, lse, seen = _forward(cfg, *args)
  # Beyond the inputs: the output and the log-sum-exp, O(T) each.
  return (out, _residual(lse, seen)), (*args, out, lse, seen)


attend_blocks.defvjp(_attend_blocks_fwd, _backward)
