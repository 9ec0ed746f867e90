"""Attending: score -> bias/mask -> masked softmax -> weighted combination.

The primitive is written for one head of one example (Equinox's habit) and lifted to many heads and
a batch with `jax.vmap`, so the readable single-head code *is* the multi-head definition.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp

from attn_jax.core import mods
from attn_jax.core.scores import ScoreFn, dot
from attn_jax.core.softmax import softmax_with_residual

Array = jax.Array


def combine(weights: Array, value: Array) -> Array:
  """Weighted combination of value rows: the third step of attention.

  weights: [q_len, kv_len], value: [kv_len, value_dim] -> [q_len, value_dim], in the value's dtype.

  Example:
    >>> weights = jnp.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])  # [T=2, S=3]
    >>> value = jnp.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])  # [S=3, 2]
    >>> combine(weights, value)
    Array([[2., 1.],
           [5., 5.]], dtype=float32)
  """
  if weights.ndim != 2 or value.ndim != 2 or weights.shape[-1] != value.shape[0]:
    raise ValueError(
        "combine takes weights [q_len, kv_len] and value [kv_len, value_dim]; "
        f"got weights {weights.shape} and value {value.shape}")
  # [q_len, kv_len] x [kv_len, value_dim] -> [q_len, value_dim]
  return jnp.einsum("ts,sd->td", weights.astype(value.dtype), value)


def attend(
    query: Array,
    key: Array,
    value: Array,
    *,
    score_fn: ScoreFn = dot,
    params: Any = None,
    bias: Array | None = None,
    mask: Array | None = None,
    score_mod: mods.ScoreMod | None = None,
    mask_mod: mods.MaskMod | None = None,
    batch_index: int | Array = 0,
    head_index: int | Array = 0,
    sink: Array | None = None,
    return_weights: bool = False,
    return_residual: bool = False,
) -> Array | tuple[Array, ...]:
  """Single-head attention for one example.

  query: [q_len, key_dim], key: [kv_len, key_dim], value: [kv_len, value_dim];
  bias: float, mask: bool (True = may attend), both broadcastable to [q_len, kv_len];
  score_mod(score, b, h, q_idx, kv_idx) -> score, applied after the bias, before the mask, and
  mask_mod(b, h, q_idx, kv_idx) -> bool, AND-ed with ``mask``: the signatures of every level
  (`attn_jax.core.mods`), here with ``b = batch_index`` and ``h = head_index`` (int32 scalars,
  default 0), q_idx [q_len, 1] and kv_idx [1, kv_len].
  sink: a float scalar, the logit of a virtual key with no value (attention sinks, gpt-oss;
  Xiao et al. 2023): ``p_j = exp(l_j) / (exp(sink) + sum_j exp(l_j))``.
  Returns the output [q_len, value_dim] in the query's dtype, then with ``return_weights`` the
  weights [q_len, kv_len] (rows sum to 1, less the sink's share; fully masked rows are all zeros,
  and so is their output), then with ``return_residual`` the residual [q_len] (float32: the
  logsumexp of each row's allowed logits and the sink, -inf for a row that sees nothing).

  Example:
    >>> import jax.numpy as jnp
    >>> q, k = jnp.ones((1, 4)), jnp.zeros((2, 4))
    >>> out, residual = attend(q, k, jnp.eye(2), sink=jnp.log(2.0), return_residual=True)
    >>> out.tolist(), round(float(residual[0]), 4)  # weights 1/4 each, the sink takes half
    ([[0.25, 0.25]], 1.3863)
  """
  if key.shape[0] != value.shape[0]:
    raise ValueError(
        f"key and value must share kv_len: got key {key.shape} and value {value.shape}")
  mods.check_signature(score_mod, mask_mod)
  q_len, kv_len = query.shape[0], key.shape[0]
  b = jnp.asarray(batch_index, jnp.int32)
  h = jnp.asarray(head_index, jnp.int32)
  q_idx = jnp.arange(q_len, dtype=jnp.int32)[:, None]  # [T, 1]
  kv_idx = jnp.arange(kv_len, dtype=jnp.int32)[None, :]  # [1, S]
  if mask_mod is not None:
    allowed = jnp.broadcast_to(mask_mod(b, h, q_idx, kv_idx), (q_len, kv_len))
    mask = allowed if mask is None else jnp.logical_and(mask, allowed)
  if mask is not None:
    mask = jnp.broadcast_to(mask, (query.shape[0], key.shape[0]))
    # A key/value row no query may see could hold anything (padding: NaN, 1e30). Zero it with a
    # `where` before any arithmetic: 0 * NaN = NaN, so masking the weights alone would leak it
    # into the output (value) and into the query's gradient (key).
    seen_S1 = jnp.any(mask, axis=0)[:, None]
    key = jnp.where(seen_S1, key, jnp.zeros((), key.dtype))
    value = jnp.where(seen_S1, value, jnp.zeros((), value.dtype))
    # Likewise a query row that may see nothing (query padding) must not reach the keys' gradient.
    query = jnp.where(jnp.any(mask, axis=1)[:, None], query, jnp.zeros((), query.dtype))
  logits = score_fn(query, key, params)  # [q_len, kv_len], float32 or wider
  if bias is not None:
    logits = logits + bias.astype(logits.dtype)
  if score_mod is not None:
    if mask is not None:  # a masked logit (garbage, 1e30) never reaches the mod
      logits = jnp.where(mask, logits, jnp.zeros((), logits.dtype))
    modded = score_mod(logits, b, h, q_idx, kv_idx)
    logits = jnp.broadcast_to(modded, logits.shape).astype(logits.dtype)
  sink = None if sink is None else jnp.reshape(sink, (1, 1))
  weights, residual = softmax_with_residual(logits, mask, sink=sink)  # [q_len, kv_len], [q_len]
  out = combine(weights, value).astype(query.dtype)
  extra = (weights.astype(query.dtype),) * return_weights + (residual,) * return_residual
  return (out, *extra) if extra else out


def multi_head_attend(
    query: Array,
    key: Array,
    value: Array,
    *,
    score_fn: ScoreFn = dot,
    params: Any = None,
    params_per_head: bool = False,
    bias: Array | None = None,
    mask: Array | None = None,
    score_mod: mods.ScoreMod | None = None,
    mask_mod: mods.MaskMod | None = None,
    batch_index: int | Array = 0,
    sinks: Array | None = None,
    return_weights: bool = False,
    return_residual: bool = False,
) -> Array | tuple[Array, ...]:
  """`attend` vmapped over heads, with grouped-query heads.

  query: [q_len, num_heads, key_dim]; key: [kv_len, num_kv_heads, key_dim];
  value: [kv_len, num_kv_heads, value_dim], num_heads a multiple of num_kv_heads (query head n
  reads key/value head n // (num_heads // num_kv_heads)); bias, mask broadcastable to
  [num_heads, q_len, kv_len]; params: shared by all heads, or with a leading [num_heads] axis on
  every leaf when ``params_per_head``; score_mod(score, b, h, q_idx, kv_idx) and
  mask_mod(b, h, q_idx, kv_idx) as in `attend`, h the query head's index, b ``batch_index``;
  sinks: float [num_heads], one sink logit per query head (see `attend`).
  Returns [q_len, num_heads, value_dim], then with ``return_weights`` the weights
  [num_heads, q_len, kv_len], then with ``return_residual`` the residual [q_len, num_heads].

  Example:
    >>> q = jax.random.normal(jax.random.key(0), (5, 4, 8))  # [T, N=4 heads, H]
    >>> kv = jax.random.normal(jax.random.key(1), (7, 2, 8))  # [S, K=2 kv heads, H]
    >>> multi_head_attend(q, kv, kv).shape  # grouped-query: heads 0, 1 read kv head 0
    (5, 4, 8)
  """
  num_heads, num_kv_heads = query.shape[1], key.shape[1]
  if query.ndim != 3 or key.ndim != 3 or value.ndim != 3 or num_heads % num_kv_heads:
    raise ValueError(
        "multi_head_attend takes query [q_len, num_heads, key_dim] and key/value "
        "[kv_len, num_kv_heads, dim] with num_kv_heads dividing num_heads; got query "
        f"{query.shape}, key {key.shape}, value {value.shape}")
  groups = num_heads // num_kv_heads
  q_len, kv_len = query.shape[0], key.shape[0]

  def per_head(x: Array | None) -> tuple[Array | None, int | None]:
    # [heads or 1, q_len, kv_len] -> ([num_kv_heads, groups, q_len, kv_len], vmap axis 0), or
    # ([q_len, kv_len], None) when it is shared by all heads.
    if x is None:
      return None, None
    x = jnp.reshape(x, (1,) * (3 - x.ndim) + x.shape) if x.ndim < 3 else x
    if x.ndim != 3 or x.shape[0] not in (1, num_heads):
      raise ValueError(
          f"bias/mask must broadcast to [num_heads, q_len, kv_len] = {(num_heads, q_len, kv_len)}"
          f"; got shape {x.shape}")
    x = jnp.broadcast_to(x, (x.shape[0], q_len, kv_len))
    if x.shape[0] == 1:
      return x[0], None
    return jnp.reshape(x, (num_kv_heads, groups, q_len, kv_len)), 0

  (bias, bias_axis), (mask, mask_axis) = per_head(bias), per_head(mask)
  # [T, N, D] -> [K, G, T, D]: head n = k * groups + g reads key/value head k.
  q_KGTD = jnp.reshape(jnp.swapaxes(query, 0, 1), (num_kv_heads, groups, q_len, -1))
  k_KSD, v_KSD = jnp.swapaxes(key, 0, 1), jnp.swapaxes(value, 0, 1)
  params_axis = 0 if params_per_head else None
  if params_per_head:
    params = jax.tree.map(lambda p: jnp.reshape(p, (num_kv_heads, groups) + p.shape[1:]), params)

  mods.check_signature(score_mod, mask_mod)
  fn = functools.partial(attend, score_fn=score_fn, score_mod=score_mod, mask_mod=mask_mod,
                         batch_index=batch_index, return_weights=return_weights,
                         return_residual=return_residual)

  def one_head(q, k, v, p, b, m, head, sink):
    return fn(q, k, v, params=p, bias=b, mask=m, head_index=head, sink=sink)

  head_KG = jnp.arange(num_heads, dtype=jnp.int32).reshape(num_kv_heads, groups)
  sinks_axis = None if sinks is None else 0
  if sinks is not None:
    sinks = jnp.reshape(sinks, (num_kv_heads, groups))
  axes = (params_axis, bias_axis, mask_axis, 0, sinks_axis)
  # Inner vmap: the query heads of one group share a key/value head; outer: over kv heads.
  group = jax.vmap(one_head, in_axes=(0, None, None, *axes))
  heads = jax.vmap(group, in_axes=(0, 0, 0, *axes))
  result = heads(q_KGTD, k_KSD, v_KSD, params, bias, mask, head_KG, sinks)
  result = result if isinstance(result, tuple) else (result,)
  out = jnp.swapaxes(jnp.reshape(result[0], (num_heads, q_len, -1)), 0, 1)  # [T, N, Dv]
  extra = []
  if return_weights:
    extra.append(jnp.reshape(result[1], (num_heads, q_len, kv_len)))  # [N, T, S]
  if return_residual:
    extra.append(jnp.reshape(result[-1], (num_heads, q_len)).T)  # [T, N]
  return (out, *extra) if extra else out
