"""`attn_jax.dot_product_attention`: a drop-in for `jax.nn.dot_product_attention`.

Same arguments and layouts as jax.nn, with attn_jax's guarantees on top: fully masked query rows
give zeros (jax.nn returns the mean of the value rows), garbage at padding never leaks into outputs
or gradients, a ``score`` switch (scaled dot product or cosine), programmable attention
(``score_mod`` / ``mask_mod``, `attn_jax.core.mods`), and an ``implementation`` switch whose
default picks the fastest implementation valid for the arguments on the current backend.
"""

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp

from attn_jax._arguments import IMPLEMENTATIONS as IMPLEMENTATIONS  # re-exported
from attn_jax._arguments import Arguments, validate, validate_sinks
from attn_jax.core import batched, chunked, cudnn, masks, mods, pallas_attention, scores, splash
from attn_jax.core.block_mask import BlockMask

Array = jax.Array
Implementation = Literal["reference", "xla", "cudnn", "chunked", "pallas", "splash"]
SCORES = scores.PARAMETER_FREE  # the scores taken by name here (weighted ones: the modules)

# The default dispatch, after cuDNN (where it applies, see `cudnn.unsupported_reason`):
#
# - CPU: chunked from T * S = 1024^2 logits per head, or from CHUNKED_MIN_LOGITS per call; XLA
#   below. Measured forward + backward (benchmarks/README.md): chunked takes about half XLA's time
#   at L1024 and a fifth at L8192, and holds no [T, S] buffer; at B8 L256 (one block) the two tie
#   and XLA compiles faster.
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


def _default_scale(score: str, head_dim: int, scale: float | None) -> float:
  if scale is not None:
    return scale
  # "dot": 1/sqrt(H) (Vaswani et al.). "cosine": logits are cos * scale, so scale is an inverse
  # temperature; sqrt(H) gives the typical logit size of the scaled dot product on unit-variance
  # inputs, so switching score keeps the softmax equally sharp.
  return head_dim**-0.5 if score == "dot" else head_dim**0.5


def _combined_mask(args: Arguments) -> Array | None:
  """Every mask kind (explicit, causal, window, lengths, mask_mod) folded into one boolean
  [B|1, N|1, T, S], or None: what the dense implementations take."""
  batch, q_len, num_heads, _ = args.query.shape
  kv_len = args.key.shape[1]
  return masks.and_masks(
      args.mask,
      masks.make_causal_mask(q_len, kv_len) if args.is_causal else None,
      masks.make_local_mask(q_len, kv_len, args.local_window_size)
      if args.local_window_size else None,
      masks.make_padding_mask(q_len, kv_len, args.query_seq_lengths, args.key_value_seq_lengths)
      if args.has_seq_lengths else None,
      None if args.mask_mod is None else mods.dense_mask(args.mask_mod, batch, num_heads, q_len,
                                                         kv_len),
      None if args.block_mask is None else args.block_mask.to_dense(),
  )


def _cudnn_reason(args: Arguments, *, has_sinks: bool = False, return_residual: bool = False,
                  has_dropout: bool = False) -> str | None:
  return cudnn.unsupported_reason(
      args.query, args.key, args.value, args.bias, args.mask, score=args.score,
      is_causal=args.is_causal, local_window_size=args.local_window_size,
      has_seq_lengths=args.has_seq_lengths, has_mods=args.has_mods, has_sinks=has_sinks,
      return_residual=return_residual, has_dropout=has_dropout)


def _choose(args: Arguments, **facts) -> str:
  """The fastest implementation valid for these (validated) arguments on this backend; ``facts``
  (has_sinks, return_residual, has_dropout) as `_cudnn_reason` takes them."""
  if _cudnn_reason(args, **facts) is None:
    return "cudnn"
  batch, q_len, num_heads, _ = args.query.shape
  per_head = q_len * args.key.shape[1]
  logits = batch * num_heads * per_head
  if jax.default_backend() == "cpu":
    cpu_chunked = per_head >= CHUNKED_MIN_CPU_LOGITS_PER_HEAD or logits >= CHUNKED_MIN_LOGITS
    return "chunked" if cpu_chunked else "xla"
  free = device_free_bytes()
  if free is None:
    return "chunked" if logits >= CHUNKED_MIN_LOGITS else "xla"
  too_big = logits * XLA_BYTES_PER_LOGIT > ACCELERATOR_MEMORY_FRACTION * free
  return "chunked" if too_big else "xla"


def _resolve(implementation, args: Arguments, **facts) -> str:
  if implementation is None:
    return _choose(args, **facts)
  if implementation == "cudnn":
    reason = _cudnn_reason(args, **facts)
    if reason is not None:
      raise ValueError(f"implementation='cudnn' cannot serve these arguments: {reason}")
  if implementation == "pallas":  # never the default: no GPU measurement says it is ahead yet
    reason = pallas_attention.unsupported_reason()
    if reason is not None:
      raise ValueError(f"implementation='pallas' cannot serve these arguments: {reason}")
  if implementation == "splash":  # by name only until a TPU measurement says more
    reason = splash.unsupported_reason(
        args.query, args.key, score=args.score, bias=args.bias, mask=args.mask,
        has_seq_lengths=args.has_seq_lengths, score_mod=args.score_mod, mask_mod=_all_mods(args))
    if reason is None and any(facts.values()):
      reason = "splash is called here without sinks, residual or dropout"
    if reason is not None:
      raise ValueError(f"implementation='splash' cannot serve these arguments: {reason}")
  return implementation


def _all_mods(args: Arguments):
  """The mask_mod and the block mask's mod as one mask_mod (or None)."""
  return mods.and_masks(args.mask_mod,
                        None if args.block_mask is None else args.block_mask.mask_mod)


def select_implementation(
    query, key, value, bias=None, mask=None, *, is_causal: bool = False,
    query_seq_lengths=None, key_value_seq_lengths=None, local_window_size=None,
    score: str = "dot", implementation: Implementation | None = None, score_mod=None,
    mask_mod=None, block_mask=None, sinks=None, return_residual: bool = False) -> str:
  """Which implementation `dot_product_attention` would run for these arguments.

  Takes the same arguments; returns one of ``IMPLEMENTATIONS``, or raises the ValueError the call
  would raise (bad shapes, or a requested implementation that cannot serve the arguments).

  Example:
    >>> q = jnp.zeros((1, 128, 4, 64))  # [B, T, N, H]
    >>> select_implementation(q, q, q) in IMPLEMENTATIONS
    True
    >>> select_implementation(q, q, q, implementation="chunked")
    'chunked'
  """
  args = validate(query, key, value, bias, mask, query_seq_lengths=query_seq_lengths,
                  key_value_seq_lengths=key_value_seq_lengths,
                  local_window_size=local_window_size, is_causal=is_causal, score=score,
                  scores=SCORES, implementation=implementation, score_mod=score_mod,
                  mask_mod=mask_mod, block_mask=block_mask)
  validate_sinks(sinks, args.query.shape[2])
  return _resolve(implementation, args, has_sinks=sinks is not None,
                  return_residual=bool(return_residual))


def dot_product_attention(
    query, key, value, bias=None, mask=None, *, scale: float | None = None,
    is_causal: bool = False, query_seq_lengths=None, key_value_seq_lengths=None,
    local_window_size: int | Sequence[int] | None = None, score: str = "dot",
    implementation: Implementation | None = None, score_mod: mods.ScoreMod | None = None,
    mask_mod: mods.MaskMod | None = None, block_mask: BlockMask | None = None,
    return_residual: bool = False, sinks=None) -> Array | tuple[Array, Array]:
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
      vmapped), "xla", "cudnn", "chunked" (memory-efficient: no [T, S] matrix held at once) or
      "pallas" (the chunked semantics as a Pallas kernel: compiled on a GPU, interpreted on
      CPU, for tests; never picked by default) or "splash" (jax's TPU splash attention, for
      masks known at trace time; by name only). A requested implementation that cannot serve
      the arguments raises ValueError.
    score_mod: ``score_mod(score, b, h, q_idx, kv_idx) -> score`` on the float32 logit
      (``scale * q . k``, plus ``bias``), before masking and the softmax.
    mask_mod: ``mask_mod(b, h, q_idx, kv_idx) -> bool`` (True = may attend), AND-ed with every
      other mask argument. Both mods (see `attn_jax.core.mods`) take int32 index arrays that
      broadcast against each other (b: batch, h: query head, then positions), are written with
      elementwise jnp code, and may close over arrays; gradients flow into the float ones. The
      "chunked" implementation skips the blocks a mask_mod rules out and never holds a [T, S]
      array; "cudnn" takes no mods.
    block_mask: a `attn_jax.create_block_mask` value for these sizes; equivalent to passing its
      mask_mod (AND-ed with every other mask argument), with the block plan computed once where
      it was created: "chunked" walks it as it is (given alone; with other mask arguments it
      plans both again), "reference" and "xla" evaluate its mod on the grid; "cudnn" takes none.
    return_residual: as jax.nn's: also return the residual [B, T, N] (or [T, N]), float32, the
      log of each query row's softmax normaliser: logsumexp of the logits (after score_mod) over
      the keys the row may attend, plus the sink term; -inf for a row that sees nothing. Two
      calls over disjoint key sets merge into the call over their union:
      ``lse = logaddexp(lse1, lse2); out = exp(lse1 - lse) out1 + exp(lse2 - lse) out2``.
    sinks: float [N], one learnable logit per query head (attention sinks, gpt-oss; Xiao et al.
      2023): every row also normalises over a virtual key with logit ``sinks[h]`` and no value,
      ``p_ij = exp(l_ij) / (exp(sinks[h]) + sum_j exp(l_ij))``; gradients flow into it. A row
      that may attend no key gives zeros. "cudnn" takes none.

  Returns:
    [B, T, N, H] (or [T, N, H]) in the query's dtype, and with ``return_residual`` also the
    residual. Query rows that may attend no key are zeros.

  Example:
    >>> q = k = v = jax.random.normal(jax.random.key(0), (2, 64, 4, 16))  # [B, T, N, H]
    >>> out = dot_product_attention(q, k, v, is_causal=True)  # [B, T, N, H]
    >>> ref = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    >>> bool(jnp.allclose(out, ref, atol=1e-5))
    True
    >>> chunked = dot_product_attention(q, k, v, is_causal=True, implementation="chunked")
    >>> bool(jnp.allclose(chunked, ref, atol=1e-5))
    True
  """
  unbatched = jnp.ndim(query) == 3
  args = validate(query, key, value, bias, mask, query_seq_lengths=query_seq_lengths,
                  key_value_seq_lengths=key_value_seq_lengths,
                  local_window_size=local_window_size, is_causal=is_causal, score=score,
                  scores=SCORES, implementation=implementation, score_mod=score_mod,
                  mask_mod=mask_mod, block_mask=block_mask)
  sinks = validate_sinks(sinks, args.query.shape[2])
  return_residual = bool(return_residual)
  chosen = _resolve(implementation, args, has_sinks=sinks is not None,
                    return_residual=return_residual)
  scale = _default_scale(score, args.query.shape[-1], scale)
  q, k = args.query, args.key
  if chosen in ("chunked", "pallas") and score == "cosine":
    # The dot product of unit vectors; normalised in float32.
    q, k = scores.l2_normalize(q), scores.l2_normalize(k)
  if chosen == "pallas":
    out = pallas_attention.pallas_attention(
        q, k, args.value, bias=args.bias, mask=args.mask, scale=float(scale),
        is_causal=args.is_causal, query_seq_lengths=args.query_seq_lengths,
        key_value_seq_lengths=args.key_value_seq_lengths,
        local_window_size=args.local_window_size, score_mod=score_mod, mask_mod=mask_mod,
        block_mask=block_mask, sinks=sinks, return_residual=return_residual)
  elif chosen == "splash":
    out = splash.splash_attention(q, k, args.value, scale=float(scale), is_causal=args.is_causal,
                                  local_window_size=args.local_window_size,
                                  mask_mod=_all_mods(args))
  elif chosen == "chunked":
    out = chunked.attend(
        q, k, args.value, bias=args.bias, mask=args.mask, scale=float(scale),
        is_causal=args.is_causal, query_seq_lengths=args.query_seq_lengths,
        key_value_seq_lengths=args.key_value_seq_lengths,
        local_window_size=args.local_window_size, score_fn=None, score_params=None,
        params_per_head=False, score_mod=score_mod, mask_mod=mask_mod,
        block_mask=block_mask, block_q=None, block_k=None, sinks=sinks,
        return_residual=return_residual)
  else:
    combined = _combined_mask(args)
    if chosen == "cudnn":
      out = cudnn.cudnn_attention(
          args.query, args.key, args.value, args.bias, args.mask, combined_mask=combined,
          scale=scale, is_causal=args.is_causal, query_seq_lengths=args.query_seq_lengths,
          key_value_seq_lengths=args.key_value_seq_lengths,
          local_window_size=args.local_window_size)
    elif chosen == "reference":
      out = batched.reference_attention(args.query, args.key, args.value, args.bias, combined,
                                        scale=scale, score=score, score_mod=score_mod,
                                        sinks=sinks, return_residual=return_residual)
    else:
      out = batched.xla_attention(args.query, args.key, args.value, args.bias, combined,
                                  scale=scale, score=score, score_mod=score_mod, sinks=sinks,
                                  return_residual=return_residual)
  out, residual = out if return_residual else (out, None)
  out = out.astype(args.query.dtype)
  if unbatched:
    out, residual = out[0], None if residual is None else residual[0]
  return (out, residual) if return_residual else out


def attention_weights(
    query, key, bias=None, mask=None, *, scale: float | None = None, is_causal: bool = False,
    score: str = "dot", score_mod: mods.ScoreMod | None = None,
    mask_mod: mods.MaskMod | None = None) -> Array:
  """The attention weights `dot_product_attention` uses: [B, N, T, S] (or [N, T, S]).

  query: [B, T, N, H] (or [T, N, H]); key: [B, S, K, H] (or [S, K, H]); bias, mask, scale,
  is_causal, score and the mods as in `dot_product_attention`. Rows sum to 1; fully masked rows
  are zeros. Returned in float32 (or wider), the precision the softmax is computed in.

  Example:
    >>> q = k = jax.random.normal(jax.random.key(0), (1, 4, 2, 8))  # [B, T, N, H]
    >>> w = attention_weights(q, k, is_causal=True)  # [B, N, T, S]
    >>> w.shape, bool(jnp.allclose(w.sum(-1), 1.0)), float(w[0, 0, 0, 1])
    ((1, 2, 4, 4), True, 0.0)
  """
  unbatched = jnp.ndim(query) == 3
  args = validate(query, key, key, bias, mask, is_causal=is_causal, score=score, scores=SCORES,
                  score_mod=score_mod, mask_mod=mask_mod)
  scale = _default_scale(score, args.query.shape[-1], scale)
  batch, q_len, num_heads, _ = args.query.shape
  weights = batched.xla_weights(args.query, args.key, args.bias, _combined_mask(args),
                                scale=scale, score=score, score_mod=score_mod)
  # (grouped) -> [B, N, T, S]
  weights = jnp.reshape(weights, (batch, num_heads, q_len, args.key.shape[1]))
  return weights[0] if unbatched else weights
