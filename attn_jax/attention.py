"""`attn_jax.dot_product_attention`: a drop-in for `jax.nn.dot_product_attention`.

Same arguments and layouts as jax.nn, with attn_jax's guarantees on top: fully masked query rows
give zeros (jax.nn returns the mean of the value rows), garbage at padding never leaks into outputs
or gradients, a ``score`` switch (scaled dot product or cosine), and an ``implementation`` switch
whose default picks the fastest implementation valid for the arguments on the current backend.
"""

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.core import batched, chunked, cudnn, masks, scores

Array = jax.Array
Implementation = Literal["reference", "xla", "cudnn", "chunked"]
IMPLEMENTATIONS = ("reference", "xla", "cudnn", "chunked")
SCORES = scores.PARAMETER_FREE  # the scores taken by name here (weighted ones: the modules)

# The default dispatch, after cuDNN (where it applies, see `cudnn.unsupported_reason`):
#
# - CPU: chunked from T * S = 1024^2 logits per head, where it is also the faster kernel (see
#   benchmarks/README.md for the measured rows), or from CHUNKED_MIN_LOGITS per call; XLA below.
# - Accelerators (GPU, TPU): a memory rule until a measurement says better. The XLA path keeps the
#   float32 logits and probabilities of every [B, N, T, S] entry for the backward pass,
#   XLA_BYTES_PER_LOGIT bytes per entry; the default moves to chunked when that would exceed
#   ACCELERATOR_MEMORY_FRACTION of the device's free memory (`Device.memory_stats`). A device that
#   reports no memory statistics falls back to CHUNKED_MIN_LOGITS.
CHUNKED_MIN_LOGITS = 2**26  # 256 MiB per float32 buffer
CHUNKED_MIN_CPU_LOGITS_PER_HEAD = 2**20
XLA_BYTES_PER_LOGIT = 8
ACCELERATOR_MEMORY_FRACTION = 0.5


def device_free_bytes() -> int | None:
  """Free memory of the default device (bytes_limit - bytes_in_use), None if it does not say."""
  try:
    stats = jax.devices()[0].memory_stats()
  except (RuntimeError, NotImplementedError, AttributeError):
    return None
  if not stats or "bytes_limit" not in stats:
    return None
  return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


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


def _validate(query, key, value, bias, mask, query_seq_lengths, key_value_seq_lengths,
              local_window_size, score, implementation):
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
  if score not in SCORES:
    raise ValueError(f"score must be one of {SCORES}; got {score!r}")
  if implementation is not None and implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be None or one of {IMPLEMENTATIONS}; got "
                     f"{implementation!r}")
  return query, key, value, bias, mask, *lengths, local_window_size


def _default_scale(score: str, head_dim: int, scale: float | None) -> float:
  if scale is not None:
    return scale
  # "dot": 1/sqrt(H) (Vaswani et al.). "cosine": logits are cos * scale, so scale is an inverse
  # temperature; sqrt(H) gives the typical logit size of the scaled dot product on unit-variance
  # inputs, so switching score keeps the softmax equally sharp.
  return head_dim**-0.5 if score == "dot" else head_dim**0.5


def _combined_mask(mask, is_causal, query_seq_lengths, key_value_seq_lengths,
                   local_window_size, q_len, kv_len):
  """Every mask kind folded into one boolean [B|1, N|1, T, S], or None."""
  return masks.and_masks(
      mask,
      masks.make_causal_mask(q_len, kv_len) if is_causal else None,
      masks.make_local_mask(q_len, kv_len, local_window_size) if local_window_size else None,
      masks.make_padding_mask(q_len, kv_len, query_seq_lengths, key_value_seq_lengths)
      if query_seq_lengths is not None or key_value_seq_lengths is not None else None,
  )


def _choose(query, key, value, bias, mask, *, score, is_causal, local_window_size,
            has_seq_lengths) -> str:
  """The fastest implementation valid for these (validated, 4-D) arguments on this backend."""
  if cudnn.unsupported_reason(query, key, value, bias, mask, score=score, is_causal=is_causal,
                              local_window_size=local_window_size,
                              has_seq_lengths=has_seq_lengths) is None:
    return "cudnn"
  batch, q_len, num_heads, _ = query.shape
  per_head = q_len * key.shape[1]
  logits = batch * num_heads * per_head
  if jax.default_backend() == "cpu":
    cpu_chunked = per_head >= CHUNKED_MIN_CPU_LOGITS_PER_HEAD or logits >= CHUNKED_MIN_LOGITS
    return "chunked" if cpu_chunked else "xla"
  free = device_free_bytes()
  if free is None:
    return "chunked" if logits >= CHUNKED_MIN_LOGITS else "xla"
  too_big = logits * XLA_BYTES_PER_LOGIT > ACCELERATOR_MEMORY_FRACTION * free
  return "chunked" if too_big else "xla"


def select_implementation(
    query, key, value, bias=None, mask=None, *, is_causal: bool = False,
    query_seq_lengths=None, key_value_seq_lengths=None, local_window_size=None,
    score: str = "dot", implementation: Implementation | None = None) -> str:
  """Which implementation `dot_product_attention` would run for these arguments.

  Takes the same arguments; returns one of ``IMPLEMENTATIONS``, or raises the ValueError the call
  would raise (bad shapes, or a requested implementation that cannot serve the arguments).
  """
  query, key, value, bias, mask, q_lengths, kv_lengths, local_window_size = _validate(
      query, key, value, bias, mask, query_seq_lengths, key_value_seq_lengths,
      local_window_size, score, implementation)
  return _resolve(implementation, query, key, value, bias, mask, score=score,
                  is_causal=is_causal, local_window_size=local_window_size,
                  has_seq_lengths=q_lengths is not None or kv_lengths is not None)


def _resolve(implementation, query, key, value, bias, mask, *, score, is_causal,
             local_window_size, has_seq_lengths) -> str:
  if implementation is None:
    return _choose(query, key, value, bias, mask, score=score, is_causal=is_causal,
                   local_window_size=local_window_size, has_seq_lengths=has_seq_lengths)
  if implementation == "cudnn":
    reason = cudnn.unsupported_reason(query, key, value, bias, mask, score=score,
                                      is_causal=is_causal, local_window_size=local_window_size,
                                      has_seq_lengths=has_seq_lengths)
    if reason is not None:
      raise ValueError(f"implementation='cudnn' cannot serve these arguments: {reason}")
  return implementation


def dot_product_attention(
    query, key, value, bias=None, mask=None, *, scale: float | None = None,
    is_causal: bool = False, query_seq_lengths=None, key_value_seq_lengths=None,
    local_window_size: int | Sequence[int] | None = None, score: str = "dot",
    implementation: Implementation | None = None) -> Array:
  """Multi-head attention over a batch; a drop-in for `jax.nn.dot_product_attention`.

  Args:
    query: [B, T, N, H] (or unbatched [T, N, H]).
    key, value: [B, S, K, H] (or [S, K, H]); N a multiple of K (grouped-query attention: query
      head n reads key/value head n // (N // K)). query, key and value share one float dtype.
    bias: float, broadcastable to [B, N, T, S]; added to the logits.
    mask: bool, broadcastable to [B, N, T, S]; True = may attend.
    scale: for ``score="dot"`` the logit scale, default 1/sqrt(H); for ``score="cosine"`` the
      inverse temperature, default sqrt(H) (logits then lie in [-sqrt(H), sqrt(H)]).
    is_causal: query i attends keys j <= i (top-left aligned, as jax.nn).
    query_seq_lengths, key_value_seq_lengths: int [B]; positions at or past the length are padding.
    local_window_size: int or (left, right): query i attends keys i - left <= j <= i + right.
    score: "dot" (scaled dot product) or "cosine" (query and key L2-normalised per head).
    implementation: None (the fastest valid on this backend: cuDNN on NVIDIA GPUs where it
      applies, else XLA, or chunked for large T * S), "reference" (the single-head definition,
      vmapped), "xla", "cudnn" or "chunked" (memory-efficient: no [T, S] matrix held at once).
      A requested implementation that cannot serve the arguments raises ValueError.

  Returns:
    [B, T, N, H] (or [T, N, H]) in the query's dtype. Query rows that may attend no key are zeros.
  """
  unbatched = jnp.ndim(query) == 3
  query, key, value, bias, mask, q_lengths, kv_lengths, window = _validate(
      query, key, value, bias, mask, query_seq_lengths, key_value_seq_lengths,
      local_window_size, score, implementation)
  chosen = _resolve(implementation, query, key, value, bias, mask, score=score,
                    is_causal=is_causal, local_window_size=window,
                    has_seq_lengths=q_lengths is not None or kv_lengths is not None)
  scale = _default_scale(score, query.shape[-1], scale)
  q_len, kv_len = query.shape[1], key.shape[1]
  if chosen == "chunked":
    q, k = query, key
    if score == "cosine":  # the dot product of unit vectors; normalised in float32
      q, k = scores.l2_normalize(query), scores.l2_normalize(key)
    out = chunked.attend(
        q, k, value, bias=bias, mask=mask, scale=float(scale), is_causal=bool(is_causal),
        query_seq_lengths=q_lengths, key_value_seq_lengths=kv_lengths, local_window_size=window,
        score_fn=None, score_params=None, params_per_head=False, score_mod=None, mask_mod=None,
        block_q=chunked.DEFAULT_BLOCK_Q, block_k=chunked.DEFAULT_BLOCK_K).astype(query.dtype)
  else:
    combined = _combined_mask(mask, is_causal, q_lengths, kv_lengths, window, q_len, kv_len)
    if chosen == "cudnn":
      out = cudnn.cudnn_attention(
          query, key, value, bias, mask, combined_mask=combined, scale=scale,
          is_causal=is_causal, query_seq_lengths=q_lengths, key_value_seq_lengths=kv_lengths,
          local_window_size=window)
    elif chosen == "reference":
      out = batched.reference_attention(query, key, value, bias, combined, scale=scale,
                                        score=score)
    else:
      out = batched.xla_attention(query, key, value, bias, combined, scale=scale, score=score)
  return out[0] if unbatched else out


def attention_weights(
    query, key, bias=None, mask=None, *, scale: float | None = None, is_causal: bool = False,
    score: str = "dot") -> Array:
  """The attention weights `dot_product_attention` uses: [B, N, T, S] (or [N, T, S]).

  query: [B, T, N, H] (or [T, N, H]); key: [B, S, K, H] (or [S, K, H]); bias, mask, scale,
  is_causal and score as in `dot_product_attention`. Rows sum to 1; fully masked rows are zeros.
  Returned in float32 (or wider), the precision the softmax is computed in.
  """
  unbatched = jnp.ndim(query) == 3
  query, key, _, bias, mask, _, _, _ = _validate(
      query, key, key, bias, mask, None, None, None, score, None)
  scale = _default_scale(score, query.shape[-1], scale)
  batch, q_len, num_heads, _ = query.shape
  combined = _combined_mask(mask, is_causal, None, None, None, q_len, key.shape[1])
  weights = batched.xla_weights(query, key, bias, combined, scale=scale, score=score)
  # (grouped) -> [B, N, T, S]
  weights = jnp.reshape(weights, (batch, num_heads, q_len, key.shape[1]))
  return weights[0] if unbatched else weights
