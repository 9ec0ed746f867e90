"""Validation of the batched API's arguments, once per call, before any dispatch.

`validate` checks shapes and dtypes (raising ValueError naming the expected and the received
shapes), makes everything 4-D and returns an `Arguments` the implementations take as they are.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.core import mods
from attn_jax.core.block_mask import BlockMask

Array = jax.Array
#: The implementations `attn_jax.dot_product_attention` can be asked for by name.
IMPLEMENTATIONS = ("reference", "xla", "cudnn", "chunked", "pallas", "splash")


class Arguments(NamedTuple):
  """A validated call: query [B, T, N, H], key/value [B, S, K, H], bias/mask 4-D broadcastable to
  [B, N, T, S], int32 [B] lengths, the window as (left, right)."""

  query: Array
  key: Array
  value: Array
  bias: Array | None
  mask: Array | None
  query_seq_lengths: Array | None
  key_value_seq_lengths: Array | None
  local_window_size: tuple[int, int] | None
  is_causal: bool
  score: str
  score_mod: Any
  mask_mod: Any
  block_mask: Any = None  # attn_jax.core.block_mask.BlockMask

  @property
  def has_seq_lengths(self) -> bool:
    return self.query_seq_lengths is not None or self.key_value_seq_lengths is not None

  @property
  def has_mods(self) -> bool:
    return self.score_mod is not None or self.mask_mod is not None or self.block_mask is not None


def _ensure_4d(x: Array | None, name: str) -> Array | None:
  if x is None:
    return None
  x = jnp.asarray(x)
  if x.ndim > 4:
    raise ValueError(f"{name} must broadcast to [B, N, T, S] (at most 4-D); got shape {x.shape}")
  return jnp.reshape(x, (1,) * (4 - x.ndim) + x.shape)


def _check_broadcast(x: Array | None, target: tuple[int, ...], name: str) -> None:
  if x is not None and any(d not in (1, t) for d, t in zip(x.shape, target, strict=True)):
    raise ValueError(
        f"{name} must broadcast to [B, N, T, S] = {target}; got shape {x.shape}")


def validate(query, key, value, bias=None, mask=None, *, query_seq_lengths=None,
             key_value_seq_lengths=None, local_window_size=None, is_causal=False, score="dot",
             scores=("dot", "cosine"), implementation=None, score_mod=None,
             mask_mod=None, block_mask=None) -> Arguments:
  """Make everything 4-D and check it; returns the normalised arguments."""
  query, key, value = (jnp.asarray(x) for x in (query, key, value))
  if query.ndim not in (3, 4) or key.ndim != query.ndim or value.ndim != query.ndim:
    raise ValueError(
        "expected query [B, T, N, H] and key/value [B, S, K, H] (or unbatched [T, N, H] and "
        f"[S, K, H]); got query {query.shape}, key {key.shape}, value {value.shape}")
  if query.ndim == 3:
    query, key, value = query[None], key[None], value[None]
  batch, q_len, num_heads, head_dim = query.shape
  _, kv_len, num_kv_heads, _ = key.shape
  if key.shape[0] != batch or key.shape[-1] != head_dim or value.shape != key.shape:
    raise ValueError(
        f"expected key and value [B, S, K, H] = [{batch}, S, K, {head_dim}] (the query's B and H, "
        f"same shape for both); got query {query.shape}, key {key.shape}, value {value.shape}")
  if num_heads % num_kv_heads:
    raise ValueError(
        f"the query's heads N must be a multiple of the key/value heads K; got query "
        f"{query.shape} (N={num_heads}) and key {key.shape} (K={num_kv_heads})")
  for name, x in (("query", query), ("key", key), ("value", value)):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"{name} must be floating point; got {x.dtype}")
  if not query.dtype == key.dtype == value.dtype:
    raise ValueError(
        f"query, key and value must share a dtype; got {query.dtype}, {key.dtype}, {value.dtype}")
  target = (batch, num_heads, q_len, kv_len)
  bias, mask = _ensure_4d(bias, "bias"), _ensure_4d(mask, "mask")
  _check_broadcast(bias, target, "bias")
  _check_broadcast(mask, target, "mask")
  if bias is not None and not jnp.issubdtype(bias.dtype, jnp.floating):
    raise ValueError(f"bias must be floating point; got {bias.dtype}")
  if mask is not None and mask.dtype != jnp.bool_:
    raise ValueError(f"mask must be boolean (True = may attend); got {mask.dtype}")
  lengths = []
  for name, x in (("query_seq_lengths", query_seq_lengths),
                  ("key_value_seq_lengths", key_value_seq_lengths)):
    if x is not None:
      x = jnp.asarray(x)
      if x.shape != (batch,) or not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(f"{name} must be integer [B] = ({batch},); got {x.dtype} {x.shape}")
      x = x.astype(jnp.int32)
    lengths.append(x)
  if local_window_size is not None:
    if isinstance(local_window_size, int | np.integer):
      local_window_size = (int(local_window_size), int(local_window_size))
    if len(local_window_size) != 2 or min(local_window_size) < 0:
      raise ValueError(
          f"local_window_size must be an int or (left, right) >= 0; got {local_window_size}")
    local_window_size = tuple(int(w) for w in local_window_size)
  if score not in scores:
    raise ValueError(f"score must be one of {scores}; got {score!r}")
  if implementation is not None and implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be None or one of {IMPLEMENTATIONS}; got "
                     f"{implementation!r}")
  mods.check(score_mod, mask_mod, target)
  if block_mask is not None:
    if not isinstance(block_mask, BlockMask):
      raise ValueError(f"block_mask must come from attn_jax.create_block_mask; got {block_mask!r}")
    block_mask.check_sizes(batch, num_heads, q_len, kv_len)
  return Arguments(query, key, value, bias, mask, *lengths, local_window_size, bool(is_causal),
                   score, score_mod, mask_mod, block_mask)


def validate_sinks(sinks, num_heads: int) -> Array | None:
  """``sinks`` as a float [num_heads] array (one sink logit per query head), or None; raises
  ValueError naming ``sinks`` and the expected and received shapes otherwise."""
  if sinks is None:
    return None
  sinks = jnp.asarray(sinks)
  if sinks.shape != (num_heads,) or not jnp.issubdtype(sinks.dtype, jnp.floating):
    raise ValueError(
        f"sinks must be float [N] = ({num_heads},), one logit per query head; got {sinks.dtype} "
        f"{sinks.shape}")
  return sinks
