"""Batched multi-head implementations behind `attn_jax.dot_product_attention`.

Both take the arguments already validated and made 4-D, with every mask (explicit, causal, window,
sequence lengths) folded into one boolean ``mask`` broadcastable to
[batch, num_heads, q_len, kv_len]:

- `reference_attention`: the single-head `attend` vmapped over heads and batch — the readable
  definition, literally.
- `xla_attention`: the same math as one batched einsum per step, grouped-query heads folded into
  the einsum instead of repeated key/value heads; what XLA fuses best.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp

from attn_jax.core import mods, scores
from attn_jax.core.attention import multi_head_attend
from attn_jax.core.softmax import softmax_with_residual

Array = jax.Array


def score_fn_for(score: str, scale: float) -> scores.ScoreFn:
  """The single-head score function for the batched API's ``score`` name and ``scale``."""
  if score == "dot":
    return functools.partial(scores.dot, scale=scale)
  if score == "cosine":
    return functools.partial(scores.cosine, scale=scale)
  raise ValueError(f"score must be 'dot' or 'cosine'; got {score!r}")


def _batch_axis(x: Array | None) -> tuple[Array | None, int | None]:
  if x is None or x.shape[0] != 1:
    return x, (None if x is None else 0)
  return x[0], None


def reference_attention(
    query: Array, key: Array, value: Array, bias: Array | None, mask: Array | None, *,
    scale: float | None = None, score: str = "dot", score_fn: scores.ScoreFn | None = None,
    params: Any = None, params_per_head: bool = False, score_mod=None, sinks=None,
    return_weights: bool = False, return_residual: bool = False,
) -> Array | tuple[Array, ...]:
  """The single-head `attend`, vmapped over heads and batch.

  query [B, T, N, H], key/value [B, S, K, H]; bias/mask [B|1, N|1, T|1, S|1] -> [B, T, N, H], and
  with ``return_weights`` also the weights [B, N, T, S]. ``score_fn`` (with ``params``, shared or
  per head, see `multi_head_attend`) overrides the named ``score`` with ``scale``; it is how the
  parameterised scores (additive, bilinear) run over a batch. ``score_mod(score, b, h, q_idx,
  kv_idx)`` (`attn_jax.core.mods`) sees each head's logits [T, S] with its batch and head index.
  sinks: float [N], one sink logit per query head. With ``return_residual`` the residual
  [B, T, N] (float32 logsumexp per row, -inf for a row that sees nothing) comes last.
  """
  if score_fn is None:
    score_fn = score_fn_for(score, query.shape[-1] ** -0.5 if scale is None else scale)
  fn = functools.partial(multi_head_attend, score_fn=score_fn, params_per_head=params_per_head,
                         sinks=sinks, return_weights=return_weights,
                         return_residual=return_residual)
  bias, bias_axis = _batch_axis(bias)
  mask, mask_axis = _batch_axis(mask)

  def one_example(q, k, v, b, m, example):
    return fn(q, k, v, params=params, bias=b, mask=m, score_mod=score_mod, batch_index=example)

  batched = jax.vmap(one_example, in_axes=(0, 0, 0, bias_axis, mask_axis, 0))
  return batched(query, key, value, bias, mask, jnp.arange(query.shape[0], dtype=jnp.int32))


def group_heads(x: Array | None, num_kv_heads: int) -> Array | None:
  """[B|1, N|1, T|1, S|1] -> [B|1, K|1, G|1, T|1, S|1]: query head n = k * G + g reads key/value
  head k (G = N // K). None stays None."""
  if x is None:
    return None
  b, n, t, s = x.shape
  if n == 1:
    return x.reshape(b, 1, 1, t, s)
  return x.reshape(b, num_kv_heads, n // num_kv_heads, t, s)


def xla_logits(query: Array, key: Array, *, scale: float, score: str = "dot") -> Array:
  """Float32 logits from query [B, T, N, H] and key [B, S, K, H]: [B, N, T, S] when N == K,
  else [B, K, G, T, S] (query head n = k * G + g reads key/value head k)."""
  batch, q_len, num_heads, head_dim = query.shape
  num_kv_heads = key.shape[2]
  if score == "cosine":
    query, key = scores.l2_normalize(query), scores.l2_normalize(key)
  elif score != "dot":
    raise ValueError(f"score must be 'dot' or 'cosine'; got {score!r}")
  logits_dtype = jnp.promote_types(query.dtype, jnp.float32)
  if num_heads == num_kv_heads:
    # The 4-D einsum: a unit group axis costs XLA:CPU ~8% (a slower dot layout).
    # [B, T, N, H] x [B, S, N, H] -> [B, N, T, S]
    logits = jnp.einsum("btnh,bsnh->bnts", query, key, preferred_element_type=logits_dtype)
  else:
    q_BTKGH = jnp.reshape(query, (batch, q_len, num_kv_heads, num_heads // num_kv_heads,
                                  head_dim))
    # [B, T, K, G, H] x [B, S, K, H] -> [B, K, G, T, S]
    logits = jnp.einsum("btkgh,bskh->bkgts", q_BTKGH, key, preferred_element_type=logits_dtype)
  return logits * jnp.asarray(scale, logits_dtype)


def kv_seen(mask: Array | None) -> Array | None:
  """[B|1, S] (or None): True where at least one query of some head may attend the kv position."""
  return None if mask is None else jnp.any(mask, axis=(1, 2))


def xla_weights(
    query: Array, key: Array, bias: Array | None, mask: Array | None, *, scale: float,
    score: str = "dot", score_mod=None, sinks=None,
    return_residual: bool = False) -> Array | tuple[Array, Array]:
  """Attention weights (float32), fully masked rows all zero: [B, N, T, S] when N == K, else
  [B, K, G, T, S]. ``score_mod`` (`attn_jax.core.mods`) modifies the logits after the bias;
  ``sinks`` [N] adds one sink logit per query head to each row's normaliser. With
  ``return_residual`` also the residual [B, T, N] (float32 logsumexp, -inf where nothing is seen).
  """
  seen_BS11 = None if mask is None else kv_seen(mask)[:, :, None, None]
  if seen_BS11 is not None:
    key = jnp.where(seen_BS11, key, jnp.zeros((), key.dtype))  # see `attend`: where, not multiply
    rows_BT11 = jnp.any(mask, axis=(1, 3))[:, :, None, None]  # query rows that may see a key
    query = jnp.where(rows_BT11, query, jnp.zeros((), query.dtype))
  num_kv_heads = key.shape[2]
  groups = query.shape[2] // num_kv_heads
  logits = xla_logits(query, key, scale=scale, score=score)
  # The logits are 4-D without grouped-query heads (see `xla_logits`), 5-D with them.
  grouped = (lambda x: x) if groups == 1 else functools.partial(group_heads,
                                                                 num_kv_heads=num_kv_heads)
  if bias is not None:
    logits = logits + grouped(bias).astype(logits.dtype)
  mask = grouped(mask)
  if score_mod is not None:
    if mask is not None:  # a masked logit (garbage, 1e30) never reaches the mod
      logits = jnp.where(mask, logits, jnp.zeros((), logits.dtype))
    batch, q_len, num_heads = query.shape[:3]
    b, h, q_idx, kv_idx = mods.grid_index(batch, num_heads, q_len, key.shape[1])
    if logits.ndim == 5:  # grouped: [B, K, G, T, S]; query head n = k * G + g
      b, q_idx, kv_idx = b[..., None], q_idx[:, None], kv_idx[:, None]
      h = h.reshape(1, num_kv_heads, groups, 1, 1)
    logits = jnp.broadcast_to(score_mod(logits, b, h, q_idx, kv_idx), logits.shape)
    logits = logits.astype(jnp.promote_types(query.dtype, jnp.float32))
  sink = None
  if sinks is not None:  # [N] -> [1, N, 1, 1] or [1, K, G, 1, 1], like the logits' heads
    sink = jnp.reshape(sinks, (1, *logits.shape[1:-2], 1, 1))
  weights, residual = softmax_with_residual(logits, mask, sink=sink)
  if not return_residual:
    return weights
  batch, q_len = query.shape[:2]
  # [B, N, T] or [B, K, G, T] -> [B, T, N]
  residual = jnp.swapaxes(jnp.reshape(residual, (batch, -1, q_len)), 1, 2)
  return weights, residual


def xla_attention(
    query: Array, key: Array, value: Array, bias: Array | None, mask: Array | None, *,
    scale: float, score: str = "dot", score_mod=None, sinks=None, return_residual: bool = False,
) -> Array | tuple[Array, Array]:
  """query [B, T, N, H], key/value [B, S, K, H]; bias/mask [B|1, N|1, T|1, S|1] -> [B, T, N, H]
  (and with ``return_residual`` the residual [B, T, N]); sinks [N] as in `xla_weights`."""
  batch, q_len, num_heads, _ = query.shape
  weights = xla_weights(query, key, bias, mask, scale=scale, score=score, score_mod=score_mod,
                        sinks=sinks, return_residual=return_residual)
  if return_residual:
    weights, residual = weights
  if mask is not None:
    value = jnp.where(kv_seen(mask)[:, :, None, None], value, jnp.zeros((), value.dtype))
  if weights.ndim == 4:
    # [B, N, T, S] x [B, S, N, H] -> [B, T, N, H]
    out = jnp.einsum("bnts,bsnh->btnh", weights.astype(value.dtype), value)
  else:
    # [B, K, G, T, S] x [B, S, K, H] -> [B, T, K, G, H]
    out = jnp.einsum("bkgts,bskh->btkgh", weights.astype(value.dtype), value)
  out = jnp.reshape(out, (batch, q_len, num_heads, value.shape[-1])).astype(query.dtype)
  return (out, residual) if return_residual else out
