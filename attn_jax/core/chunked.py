"""Memory-efficient ("chunked") attention with its own VJP: no [q_len, kv_len] matrix is ever held.

The forward pass walks the keys block by block with the online softmax of Rabe & Staats 2021
("Self-attention does not need O(n^2) memory") and FlashAttention (Dao et al. 2022): per query row
it keeps a running maximum ``m``, a running denominator ``l`` and a running weighted sum of values,
rescaling them whenever ``m`` grows. It saves only the output and the per-row log-sum-exp
``lse = m + log(l)``. The backward pass (FlashAttention-2, Dao 2023) recomputes each block's
probabilities ``P = exp(logits - lse)`` and uses ``dLogits = P * (dP - rowsum(dO * O))``.

Layout inside: query blocks [nQ, B, K, G, bq, H] and key/value blocks [nK, B, K, bk, H], where the
N query heads are split into K key/value heads times G = N // K groups (grouped-query attention), so
no key/value head is ever repeated. Memory is O(q_len * block) for any mask.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array


class _Config(NamedTuple):
  """Static settings shared by the forward and the backward pass (hashable)."""

  q_len: int  # T before padding
  kv_len: int  # S before padding
  block_q: int
  block_k: int
  is_causal: bool
  window: tuple[int, int] | None  # (left, right)
  scale: float  # used by the dot fast path only
  score_fn: Callable | None  # None: the scaled dot product fast path

  @property
  def num_q_blocks(self) -> int:
    return -(-self.q_len // self.block_q)

  @property
  def num_k_blocks(self) -> int:
    return -(-self.kv_len // self.block_k)


# ----------------------------------------------------------------------------- block masks


def _block_ranges(cfg: _Config) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Which blocks can hold an allowed (query, key) pair under causal / local-window masking.

  Returns (key_lo, key_hi) [nQ]: query block i needs key blocks key_lo[i] <= j < key_hi[i];
  (query_lo, query_hi) [nK]: key block j is seen by query blocks query_lo[j] <= i < query_hi[j].
  Static numpy, so the loops below know their trip counts at trace time.
  """
  bq, bk, nq, nk = cfg.block_q, cfg.block_k, cfg.num_q_blocks, cfg.num_k_blocks
  q_first = np.arange(nq) * bq  # first / last query position of each query block
  q_last = np.minimum(q_first + bq, cfg.q_len) - 1
  k_first = np.arange(nk) * bk
  k_last = np.minimum(k_first + bk, cfg.kv_len) - 1
  # Allowed pairs satisfy lo_offset <= key - query <= hi_offset.
  lo_offset, hi_offset = -cfg.q_len - cfg.kv_len, cfg.q_len + cfg.kv_len  # no bound
  if cfg.window is not None:
    lo_offset, hi_offset = -cfg.window[0], cfg.window[1]
  if cfg.is_causal:
    hi_offset = min(hi_offset, 0)
  # Query block i and key block j overlap when some key - query difference lies in the range.
  diff_min = k_first[None, :] - q_last[:, None]  # [nQ, nK]
  diff_max = k_last[None, :] - q_first[:, None]
  live = (diff_max >= lo_offset) & (diff_min <= hi_offset)  # [nQ, nK]
  # Live blocks form one contiguous band per row and per column: keep its ends.
  def ends(live_rows):
    any_live = live_rows.any(axis=1)
    lo = np.where(any_live, live_rows.argmax(axis=1), 0)
    hi = np.where(any_live, live_rows.shape[1] - live_rows[:, ::-1].argmax(axis=1), 0)
    return lo.astype(np.int32), hi.astype(np.int32)

  key_lo, key_hi = ends(live)
  query_lo, query_hi = ends(live.T)
  return key_lo, key_hi, query_lo, query_hi


def _block_mask(cfg: _Config, i, j, mask, q_lengths, kv_lengths) -> Array | None:
  """The allowed pairs of query block i and key block j: bool [B|1, K|1, G|1, bq, bk], or None.

  Combines the padding added to reach whole blocks, causal, local window, sequence lengths and the
  explicit mask [B|1, K|1, G|1, T|1, S|1] (sliced, never broadcast to full size).
  """
  q_pos = (i * cfg.block_q + jnp.arange(cfg.block_q))[:, None]  # [bq, 1]
  k_pos = (j * cfg.block_k + jnp.arange(cfg.block_k))[None, :]  # [1, bk]
  allowed = None

  def both(a, b):  # None stands for "all allowed"
    return b if a is None else a if b is None else a & b

  if cfg.num_q_blocks * cfg.block_q != cfg.q_len:
    allowed = both(allowed, q_pos < cfg.q_len)
  if cfg.num_k_blocks * cfg.block_k != cfg.kv_len:
    allowed = both(allowed, k_pos < cfg.kv_len)
  if cfg.is_causal:
    allowed = both(allowed, k_pos <= q_pos)
  if cfg.window is not None:
    left, right = cfg.window
    allowed = both(allowed, (k_pos >= q_pos - left) & (k_pos <= q_pos + right))
  if q_lengths is not None:
    allowed = both(allowed, q_pos < q_lengths[:, None, None, None, None])
  if kv_lengths is not None:
    allowed = both(allowed, k_pos < kv_lengths[:, None, None, None, None])
  return both(allowed, _slice_block(cfg, mask, i, j))


def _slice_block(cfg: _Config, x: Array | None, i, j) -> Array | None:
  """Block (i, j) of x [..., T|1, S|1] -> [..., bq|1, bk|1]; a size-1 axis is broadcast, not cut."""
  if x is None:
    return None
  if x.shape[-2] > 1:
    x = lax.dynamic_slice_in_dim(x, i * cfg.block_q, cfg.block_q, axis=x.ndim - 2)
  if x.shape[-1] > 1:
    x = lax.dynamic_slice_in_dim(x, j * cfg.block_k, cfg.block_k, axis=x.ndim - 1)
  return x


def _add_block(cfg: _Config, total: Array, block: Array, i, j) -> Array:
  """total [..., T|1, S|1] += block [..., bq, bk], summed over the axes where total has size 1."""
  axes = tuple(a for a in range(block.ndim) if total.shape[a] == 1 and block.shape[a] > 1)
  block = jnp.sum(block, axis=axes, keepdims=True).astype(total.dtype)
  starts = [0] * (total.ndim - 2) + [
      i * cfg.block_q if total.shape[-2] > 1 else 0, j * cfg.block_k if total.shape[-1] > 1 else 0]
  current = lax.dynamic_slice(total, starts, block.shape)
  return lax.dynamic_update_slice(total, current + block, starts)


# ----------------------------------------------------------------------------- logits


def _stat_dtype(x: Array):
  # Softmax statistics in at least float32: bf16 exponentials lose most of their digits.
  return jnp.promote_types(x.dtype, jnp.float32)


def _rows(x: Array) -> Array:
  # [B, K, G, bq, ...] -> [B, K, G*bq, ...]: a free reshape that makes every block product a plain
  # batched matmul (a G axis between the batch and row axes costs a transposed copy per block).
  return x.reshape(x.shape[0], x.shape[1], -1, *x.shape[4:])


def _logits(cfg: _Config, q_blk: Array, k_blk: Array, params: Any) -> Array:
  """q_blk [B, K, G, bq, H], k_blk [B, K, bk, H] -> logits [B, K, G, bq, bk] (float32 or wider)."""
  dtype = _stat_dtype(q_blk)
  if cfg.score_fn is None:
    # [B, K, G*bq, H] x [B, K, bk, H] -> [B, K, G*bq, bk]: one batched matmul, keys shared by G.
    logits = jnp.einsum("bkqh,bksh->bkqs", _rows(q_blk), k_blk, preferred_element_type=dtype)
    return logits.reshape(*q_blk.shape[:-1], -1) * jnp.asarray(cfg.scale, dtype)
  # Any single-head score function, lifted over groups (key shared), kv heads and batch.
  per_group = jax.vmap(cfg.score_fn, in_axes=(0, None, None))
  per_batch = jax.vmap(jax.vmap(per_group, in_axes=(0, 0, None)), in_axes=(0, 0, None))
  return per_batch(q_blk, k_blk, params).astype(dtype)


def _logits_vjp(cfg: _Config, q_blk: Array, k_blk: Array, params: Any):
  """Logits and a function mapping dLogits to (dq [B,K,G,bq,H], dk_t [B,K,H,bk], dparams).

  dk comes transposed: see `_t_matmul`.
  """
  dtype = _stat_dtype(q_blk)
  if cfg.score_fn is None:
    logits = _logits(cfg, q_blk, k_blk, params)

    def logits_vjp(d_logits):
      # The matmul inputs keep the input dtype (bf16 stays bf16, as in FlashAttention-2);
      # the products accumulate in float32.
      d_scaled = _rows((d_logits * jnp.asarray(cfg.scale, dtype)).astype(q_blk.dtype))
      # [B, K, G*bq, bk] x [B, K, bk, H] -> [B, K, G*bq, H]
      dq = jnp.einsum("bkqs,bksh->bkqh", d_scaled, k_blk, preferred_element_type=dtype)
      dk_t = _t_matmul(_rows(q_blk), d_scaled, dtype)  # [B, K, H, bk]
      return dq.reshape(q_blk.shape), dk_t, None

    return logits, logits_vjp
  # Upcast first so that the per-block gradients come back in float32 for accumulation.
  logits, logits_vjp = jax.vjp(
      lambda q, k, p: _logits(cfg, q, k, p), q_blk.astype(dtype), k_blk.astype(dtype), params)

  def transposed_vjp(d_logits):
    dq, dk, dparams = logits_vjp(d_logits)
    return dq, jnp.swapaxes(dk, -1, -2), dparams

  return logits, transposed_vjp


def _t_matmul(rows: Array, other_rows: Array, dtype) -> Array:
  """rows^T @ other_rows: [B, K, R, H] x [B, K, R, S] -> [B, K, H, S], contracting the rows.

  Written as an explicit transpose of the small [R, H] operand and a plain matmul: XLA:CPU runs
  a matmul contracting both operands' leading axis about 2x slower than this.
  """
  # [B, K, H, R] x [B, K, R, S] -> [B, K, H, S]
  return jnp.einsum("bkhr,bkrs->bkhs", jnp.swapaxes(rows, -1, -2), other_rows,
                    preferred_element_type=dtype)


def _masked(logits: Array, bias_blk: Array | None, allowed: Array | None) -> Array:
  if bias_blk is not None:
    logits = logits + bias_blk.astype(logits.dtype)
  if allowed is not None:
    # `where`, not an additive mask: whatever a masked logit holds (NaN, 1e30) is dropped here.
    logits = jnp.where(allowed, logits, -jnp.inf)
  return logits


# ----------------------------------------------------------------------------- forward


def _forward(cfg, q_blocks, k_blocks, v_blocks, bias, mask, q_lengths, kv_lengths, params):
  """-> out [nQ, B, K, G, bq, Hv] (query dtype), lse [nQ, B, K, G, bq] (statistics dtype)."""
  dtype = _stat_dtype(q_blocks)
  key_lo, key_hi, _, _ = _block_ranges(cfg)
  num_steps = int((key_hi - key_lo).max(initial=0))
  _, batch, kv_heads, groups, bq, _ = q_blocks.shape
  row_shape = (batch, kv_heads, groups, bq)

  def key_block(i, q_blk, j, stats):
    m, denom, acc = stats  # [B, K, G, bq], [B, K, G, bq], [B, K, G, bq, Hv]
    logits = _logits(cfg, q_blk, k_blocks[j], params)
    logits = _masked(
        logits, _slice_block(cfg, bias, i, j), _block_mask(cfg, i, j, mask, q_lengths, kv_lengths))
    m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
    # Rows with no allowed key so far keep m = -inf; shift them by 0 so exp gives 0, not NaN.
    m_safe = jnp.where(jnp.isneginf(m_new), 0.0, m_new)
    p = jnp.exp(logits - m_safe[..., None])  # [B, K, G, bq, bk]; masked entries exactly 0
    rescale = jnp.exp(m - m_safe)
    # [B, K, G*bq, bk] x [B, K, bk, Hv] -> [B, K, G*bq, Hv]
    pv = jnp.einsum("bkqs,bksh->bkqh", _rows(p.astype(v_blocks.dtype)), v_blocks[j],
                    preferred_element_type=dtype).reshape(acc.shape)
    return m_new, denom * rescale + jnp.sum(p, axis=-1), acc * rescale[..., None] + pv

  def query_block(xs):
    i, q_blk, lo, hi = xs

    def step(stats, t):
      j = jnp.minimum(lo + t, cfg.num_k_blocks - 1)
      # Blocks entirely outside the causal / window band are skipped, not computed and masked.
      stats = lax.cond(lo + t < hi, lambda s: key_block(i, q_blk, j, s), lambda s: s, stats)
      return stats, None

    init = (jnp.full(row_shape, -jnp.inf, dtype), jnp.zeros(row_shape, dtype),
            jnp.zeros((*row_shape, v_blocks.shape[-1]), dtype))
    (m, denom, acc), _ = lax.scan(step, init, jnp.arange(num_steps))
    has_keys = denom > 0  # false for fully masked rows: output 0, lse 0 (any finite value works)
    safe_denom = jnp.where(has_keys, denom, 1.0)
    out = acc / safe_denom[..., None]
    lse = jnp.where(has_keys, m + jnp.log(safe_denom), 0.0)
    return out.astype(q_blocks.dtype), lse

  indices = jnp.arange(cfg.num_q_blocks)
  return lax.map(query_block, (indices, q_blocks, jnp.asarray(key_lo), jnp.asarray(key_hi)))


# ----------------------------------------------------------------------------- backward


def _backward(cfg, residuals, d_out):
  """FlashAttention-2 backward: outer loop over key blocks, inner over the query blocks seeing them.

  d_out: [nQ, B, K, G, bq, Hv]. dK and dV of a key block accumulate in the inner loop's carry;
  dQ [nQ, B, K, G, bq, H] (O(q_len * head_dim)), dBias and dParams accumulate across the outer loop.
  """
  q_blocks, k_blocks, v_blocks, bias, mask, q_lengths, kv_lengths, params, out, lse = residuals
  dtype = _stat_dtype(q_blocks)
  _, _, query_lo, query_hi = _block_ranges(cfg)
  num_steps = int((query_hi - query_lo).max(initial=0))
  # delta = rowsum(dO * O) = rowsum(P * dP): the softmax Jacobian's correction term per row.
  delta = jnp.sum(d_out.astype(dtype) * out.astype(dtype), axis=-1)  # [nQ, B, K, G, bq]

  def block_grads(i, j, k_blk, v_blk):
    q_blk, do_blk = q_blocks[i], d_out[i]  # [B, K, G, bq, H], [B, K, G, bq, Hv]
    logits, logits_vjp = _logits_vjp(cfg, q_blk, k_blk, params)
    logits = _masked(
        logits, _slice_block(cfg, bias, i, j), _block_mask(cfg, i, j, mask, q_lengths, kv_lengths))
    p = jnp.exp(logits - lse[i][..., None])  # [B, K, G, bq, bk]; masked entries exactly 0
    # dV^T = dO^T P: [B, K, G*bq, Hv] x [B, K, G*bq, bk] -> [B, K, Hv, bk] (summed over G too)
    dv_t = _t_matmul(_rows(do_blk), _rows(p.astype(do_blk.dtype)), dtype)
    # [B, K, G*bq, Hv] x [B, K, bk, Hv] -> [B, K, G*bq, bk]
    dp = jnp.einsum("bkqh,bksh->bkqs", _rows(do_blk), v_blk, preferred_element_type=dtype)
    dp = dp.reshape(p.shape)
    d_logits = p * (dp - delta[i][..., None])
    dq, dk_t, dparams = logits_vjp(d_logits)
    return dq, dk_t, dv_t, (None if bias is None else d_logits), dparams

  def key_block(carry, xs):
    j, k_blk, v_blk, lo, hi = xs

    def step(inner, t):
      dk_acc, dv_acc, dq_acc, dbias_acc, dparams_acc = inner  # dK, dV: [B, K, H|Hv, bk]
      i = jnp.minimum(lo + t, cfg.num_q_blocks - 1)
      compute = lambda: block_grads(i, j, k_blk, v_blk)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(compute))
      # Query blocks outside the causal / window band are skipped, not computed and masked.
      dq, dk_t, dv_t, d_logits, dparams = lax.cond(lo + t < hi, compute, lambda: zeros)
      if d_logits is not None:
        dbias_acc = _add_block(cfg, dbias_acc, d_logits, i, j)
      dparams_acc = jax.tree.map(lambda a, d: a + d.astype(a.dtype), dparams_acc, dparams)
      return (dk_acc + dk_t, dv_acc + dv_t, dq_acc.at[i].add(dq), dbias_acc, dparams_acc), None

    transposed = lambda x: jnp.zeros(jnp.swapaxes(x, -1, -2).shape, dtype)
    init = (transposed(k_blk), transposed(v_blk), *carry)
    (dk_t, dv_t, *carry), _ = lax.scan(step, init, jnp.arange(num_steps))
    return tuple(carry), (jnp.swapaxes(dk_t, -1, -2), jnp.swapaxes(dv_t, -1, -2))

  carry = (
      jnp.zeros(q_blocks.shape, dtype),
      None if bias is None else jnp.zeros(bias.shape, dtype),
      jax.tree.map(lambda x: jnp.zeros(x.shape, _stat_dtype(x)), params),
  )
  xs = (jnp.arange(cfg.num_k_blocks), k_blocks, v_blocks, jnp.asarray(query_lo),
        jnp.asarray(query_hi))
  (dq, dbias, dparams), (dk, dv) = lax.scan(key_block, carry, xs)
  cast = lambda d, x: None if d is None else d.astype(x.dtype)
  return (cast(dq, q_blocks), cast(dk, k_blocks), cast(dv, v_blocks), cast(dbias, bias),
          None, None, None, jax.tree.map(cast, dparams, params))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention_blocks(cfg, q_blocks, k_blocks, v_blocks, bias, mask, q_lengths, kv_lengths,
                      params):
  return _forward(cfg, q_blocks, k_blocks, v_blocks, bias, mask, q_lengths, kv_lengths, params)[0]


def _attention_blocks_fwd(cfg, *args):
  out, lse = _forward(cfg, *args)
  return out, (*args, out, lse)  # beyond the inputs: the output and the log-sum-exp, O(T) each


_attention_blocks.defvjp(_attention_blocks_fwd, _backward)


# ----------------------------------------------------------------------------- public entry point

DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_K = 512


# Jitted with its settings static: eager calls then reuse one compiled program per configuration
# instead of re-tracing the loops (and recompiling) at every call.
@functools.partial(jax.jit, static_argnames=(
    "scale", "is_causal", "local_window_size", "score_fn", "block_q", "block_k"))
def chunked_attention(
    query: Array, key: Array, value: Array, *, bias: Array | None = None,
    mask: Array | None = None, scale: float | None = None, is_causal: bool = False,
    query_seq_lengths: Array | None = None, key_value_seq_lengths: Array | None = None,
    local_window_size: int | tuple[int, int] | None = None, score_fn: Callable | None = None,
    score_params: Any = None, block_q: int = DEFAULT_BLOCK_Q, block_k: int = DEFAULT_BLOCK_K,
) -> Array:
  """Attention with O(q_len * block) memory, the same numbers as `jax.nn.dot_product_attention`.

  query: [batch, q_len, num_heads, head_dim]; key: [batch, kv_len, kv_heads, head_dim];
  value: [batch, kv_len, kv_heads, value_dim], num_heads a multiple of kv_heads (query head n uses
  kv head n // (num_heads // kv_heads)). bias (float) and mask (bool, True = may attend): 4-D,
  broadcastable to [batch, num_heads, q_len, kv_len]; never broadcast to that size here.
  is_causal: query i sees keys j <= i (top-left aligned, as jax.nn). query_seq_lengths /
  key_value_seq_lengths: int32 [batch]. local_window_size: a tuple (left, right), or one int for
  both: query i sees keys i - left <= j <= i + right.
  score_fn: None for ``scale * q . k`` (``scale`` a Python float, default 1/sqrt(head_dim)); or a
  single-head score ``score_fn(q [bq, head_dim], k [bk, head_dim], score_params) -> [bq, bk]``
  from `attn_jax.core.scores` (its settings bound by functools.partial; ``scale`` must be None),
  whose ``score_params`` receive gradients too.
  Returns [batch, q_len, num_heads, value_dim] in the query's dtype; query rows that may attend to
  no key are exactly zero, and key/value positions no query may see never enter the arithmetic.
  """
  window = _check_args(query, key, value, bias, mask, scale, query_seq_lengths,
                       key_value_seq_lengths, local_window_size, score_fn, block_q, block_k)
  batch, q_len, num_heads, _ = query.shape
  _, kv_len, kv_heads, _ = value.shape
  groups = num_heads // kv_heads
  cfg = _Config(
      q_len=q_len, kv_len=kv_len, block_q=min(block_q, q_len), block_k=min(block_k, kv_len),
      is_causal=bool(is_causal), window=window,
      scale=float(query.shape[-1] ** -0.5 if scale is None else scale), score_fn=score_fn)
  bias = _grouped(cfg, bias, kv_heads, groups, pad_value=0)  # [B|1, K|1, G|1, T|1, S|1]
  mask = _grouped(cfg, mask, kv_heads, groups, pad_value=False)

  # Zero the key/value positions no query may see *before* any arithmetic, with `where`: a NaN
  # there would otherwise leak through 0 * NaN in the matmuls (and into the gradients).
  visible = _visible_keys(cfg, mask, query_seq_lengths, key_value_seq_lengths)  # [B|1, S|1, K|1]
  if visible is not None:
    key = jnp.where(visible[..., None], key, 0)
    value = jnp.where(visible[..., None], value, 0)

  nq, nk, bq, bk = cfg.num_q_blocks, cfg.num_k_blocks, cfg.block_q, cfg.block_k
  query = _pad_axis(query, 1, nq * bq, 0)
  # [B, nQ * bq, N, H] -> [B, nQ, bq, K, G, H] -> [nQ, B, K, G, bq, H]
  q_blocks = query.reshape(batch, nq, bq, kv_heads, groups, -1).transpose(1, 0, 3, 4, 2, 5)
  # [B, nK * bk, K, H] -> [B, nK, bk, K, H] -> [nK, B, K, bk, H]
  k_blocks = _pad_axis(key, 1, nk * bk, 0).reshape(batch, nk, bk, kv_heads, -1)
  k_blocks = k_blocks.transpose(1, 0, 3, 2, 4)
  v_blocks = _pad_axis(value, 1, nk * bk, 0).reshape(batch, nk, bk, kv_heads, -1)
  v_blocks = v_blocks.transpose(1, 0, 3, 2, 4)

  out = _attention_blocks(cfg, q_blocks, k_blocks, v_blocks, bias, mask, query_seq_lengths,
                          key_value_seq_lengths, score_params)  # [nQ, B, K, G, bq, Hv]
  # [nQ, B, K, G, bq, Hv] -> [B, nQ, bq, K, G, Hv] -> [B, T, N, Hv]
  out = out.transpose(1, 0, 4, 2, 3, 5).reshape(batch, nq * bq, num_heads, -1)
  return out[:, :q_len]


def _pad_axis(x: Array, axis: int, size: int, value) -> Array:
  if x.shape[axis] in (1, size):
    return x  # size 1 broadcasts: nothing to pad
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def _grouped(cfg: _Config, x: Array | None, kv_heads: int, groups: int, pad_value):
  """[B|1, N|1, T|1, S|1] -> [B|1, K|1, G|1, T|1, S|1], T and S padded to whole blocks."""
  if x is None:
    return None
  b, n, t, s = x.shape
  x = x.reshape(b, kv_heads, groups, t, s) if n > 1 else x.reshape(b, 1, 1, t, s)
  x = _pad_axis(x, 3, cfg.num_q_blocks * cfg.block_q, pad_value)
  return _pad_axis(x, 4, cfg.num_k_blocks * cfg.block_k, pad_value)


def _visible_keys(cfg: _Config, mask, q_lengths, kv_lengths) -> Array | None:
  """bool [B|1, S|1, K|1]: the key positions some query may see; None when all are.

  Exact for causal, window and sequence lengths (a key is visible when the range of queries that
  may see it is non-empty); an explicit mask counts a key visible when the mask allows it for some
  query, even if causal / window masking then hides it from that query.
  """
  k_pos = np.arange(cfg.kv_len)
  first_query = k_pos if cfg.is_causal else np.zeros_like(k_pos)  # [S]
  last_query = np.full_like(k_pos, cfg.q_len - 1)
  if cfg.window is not None:
    first_query = np.maximum(first_query, k_pos - cfg.window[1])
    last_query = np.minimum(last_query, k_pos + cfg.window[0])
  if q_lengths is None:
    structural = (first_query <= last_query)[None]  # [1, S], static
    visible = None if structural.all() else jnp.asarray(structural)
  else:
    visible = first_query <= jnp.minimum(last_query, q_lengths[:, None] - 1)  # [B, S]
  if kv_lengths is not None:
    in_length = k_pos < kv_lengths[:, None]  # [B, S]
    visible = in_length if visible is None else visible & in_length
  visible = None if visible is None else visible[..., None]  # [B|1, S, 1]
  if mask is not None:
    # [B|1, K|1, G|1, T|1, S_pad|1] -> [B|1, S|1, K|1]
    allowed = jnp.any(mask[..., :cfg.kv_len], axis=(2, 3)).transpose(0, 2, 1)
    visible = allowed if visible is None else visible & allowed
  return visible


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
  if block_q < 1 or block_k < 1:
    raise ValueError(f"block sizes must be positive; got block_q={block_q}, block_k={block_k}")
  if window is None:
    return None
  left, right = (window, window) if isinstance(window, int) else window
  return int(left), int(right)
