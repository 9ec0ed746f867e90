"""`MultiHeadAttention`: parameters around the functional core.

The module owns the projections, the score's weights and the positional scheme; the math is the
core's: `attn_jax.dot_product_attention` for the dot and cosine scores (fast, fused backends), and
the single-head `attend` vmapped over heads (`batched.reference_attention`) for the parameterised
scores (additive, bilinear), for attention-weight dropout and whenever the weights are returned.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from attn_jax.attention import dot_product_attention
from attn_jax.core import batched, masks, positional, scores

Array = jax.Array

POSITIONAL = ("none", *positional.IN_ATTENTION)  # the schemes applied inside attention


def _kernel_init(in_axis=0, out_axis=-1):
  # LeCun normal over the true fan-in, also for kernels with a [heads, head_dim] output.
  return nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis, out_axis)


class MultiHeadAttention(nnx.Module):
  """Multi-head attention with any score function and positional scheme; self or cross.

  Args:
    num_heads: query heads N. num_kv_heads: key/value heads K (N a multiple of K; default N).
    in_features: model width D of the inputs. head_dim: H (default D // N).
    out_features: output width (default D).
    score: "dot" (scaled dot product), "cosine", "additive" (Bahdanau) or "bilinear" (Luong).
    score_hidden: hidden width of the additive score (default H).
    positional: "none", "rope" (rotates queries and keys), "alibi" (linear distance bias) or
      "relative" (T5 bucketed bias, a learned [num_buckets, N] table).
    dropout_rate: dropout on the attention weights (active in ``train()`` mode only).
    implementation: passed to `attn_jax.dot_product_attention` for the dot and cosine scores.
  """

  def __init__(
      self, *, num_heads: int, in_features: int, num_kv_heads: int | None = None,
      head_dim: int | None = None, out_features: int | None = None, score: str = "dot",
      score_hidden: int | None = None, positional: str = "none", num_buckets: int = 32,
      max_distance: int = 128, dropout_rate: float = 0.0, use_bias: bool = True,
      implementation: str | None = None, rngs: nnx.Rngs):
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    if num_heads <= 0 or num_kv_heads <= 0 or num_heads % num_kv_heads:
      raise ValueError(f"num_kv_heads ({num_kv_heads}) must divide num_heads ({num_heads})")
    if head_dim is None:
      if in_features % num_heads:
        raise ValueError(f"num_heads ({num_heads}) must divide in_features ({in_features})")
      head_dim = in_features // num_heads
    if score not in scores.SCORES:
      raise ValueError(f"score must be one of {tuple(scores.SCORES)}; got {score!r}")
    if positional not in POSITIONAL:
      raise ValueError(f"positional must be one of {POSITIONAL}; got {positional!r}")
    if positional == "rope" and head_dim % 2:
      raise ValueError(f"rope needs an even head_dim; got {head_dim}")
    self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
    self.score, self.positional, self.implementation = score, positional, implementation
    self.num_buckets, self.max_distance = num_buckets, max_distance
    out_features = in_features if out_features is None else out_features
    key = rngs.params
    # One fused projection for query, key and value heads, grouped by key/value head:
    # [D, K, G + 2, H] holds, for kv head k, its G query heads, then its key and its value. A
    # shard of the K axis (the model axis of a device mesh) thus owns whole groups: attention runs
    # on each device with no exchange of activations. Self-attention runs it as one matmul;
    # cross-attention slices it (queries from one input, key/value from another).
    groups = num_heads // num_kv_heads
    self.qkv_kernel = nnx.Param(_kernel_init(0, (1, 2, 3))(
        key(), (in_features, num_kv_heads, groups + 2, head_dim)))
    # Biases for queries and values only: a key bias adds q . b_k to every logit of a row, which
    # the softmax ignores; its gradient is rounding noise that Adam would blow up to full steps.
    self.query_bias = nnx.Param(jnp.zeros((num_heads, head_dim))) if use_bias else None
    self.value_bias = nnx.Param(jnp.zeros((num_kv_heads, head_dim))) if use_bias else None
    self.out_kernel = nnx.Param(_kernel_init((0, 1), 2)(key(), (num_heads, head_dim,
                                                                 out_features)))
    self.out_bias = nnx.Param(jnp.zeros((out_features,))) if use_bias else None
    if score == "additive":
      hidden = head_dim if score_hidden is None else score_hidden
      self.score_params = nnx.Param({
          "w_query": _kernel_init(1, 2)(key(), (num_heads, head_dim, hidden)),
          "w_key": _kernel_init(1, 2)(key(), (num_heads, head_dim, hidden)),
          "v": _kernel_init(1, 0)(key(), (num_heads, hidden)),
      })
    elif score == "bilinear":
      # Identity start: the bilinear score begins as the (unscaled) dot product.
      self.score_params = nnx.Param({"w": jnp.tile(jnp.eye(head_dim), (num_heads, 1, 1))})
    else:
      self.score_params = None
    self.relative_table = nnx.Param(jnp.zeros((num_buckets, num_heads))) \
        if positional == "relative" else None
    self.attn_dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def _project(self, inputs_q: Array, inputs_kv: Array | None, query_scale: float | None = None):
    """-> query [B, T, N, H], key [B, S, K, H], value [B, S, K, H].

    ``query_scale`` multiplies the query heads' kernel and bias ([D, N, H] numbers) rather than
    the [B, N, T, S] logits downstream: one less pass over the largest tensor of the layer.
    """
    n, k = self.num_heads, self.num_kv_heads
    g = n // k
    w = self.qkv_kernel[...]  # [D, K, G + 2, H]
    if query_scale is not None:
      w = jnp.concatenate([w[:, :, :g] * jnp.asarray(query_scale, w.dtype), w[:, :, g:]], axis=2)
    if inputs_kv is None:
      # [B, T, D] x [D, K, P, H] -> [B, T, K, P, H], P = G + 2
      qkv = jnp.einsum("btd,dkph->btkph", inputs_q, w.astype(inputs_q.dtype))
      # split, not three slices: its transpose is one concatenate, where slices' is three pads.
      query, key, value = jnp.split(qkv, [g, g + 1], axis=3)
    else:
      query = jnp.einsum("btd,dkgh->btkgh", inputs_q, w[:, :, :g].astype(inputs_q.dtype))
      kv = jnp.einsum("bsd,dkph->bskph", inputs_kv, w[:, :, g:].astype(inputs_kv.dtype))
      key, value = jnp.split(kv, [1], axis=3)
    batch, q_len = query.shape[:2]
    # [B, T, K, G, H] -> [B, T, N, H] (head n = k * G + g); [B, S, K, 1, H] -> [B, S, K, H]
    query = query.reshape(batch, q_len, n, -1)
    key, value = key[:, :, :, 0], value[:, :, :, 0]
    if self.query_bias is not None:
      query_bias = self.query_bias[...]
      if query_scale is not None:
        query_bias = query_bias * jnp.asarray(query_scale, query_bias.dtype)
      query = query + query_bias.astype(query.dtype)
      value = value + self.value_bias[...].astype(value.dtype)
    return query, key, value

  def __call__(
      self, inputs_q: Array, inputs_kv: Array | None = None, *, mask: Array | None = None,
      bias: Array | None = None, is_causal: bool = False, query_positions: Array | None = None,
      key_positions: Array | None = None, return_weights: bool = False,
  ) -> Array | tuple[Array, Array]:
    """inputs_q: [B, T, D]; inputs_kv: [B, S, D] (None: self-attention, S = T).

    mask (bool, True = may attend) and bias: broadcastable to [B, N, T, S]. query_positions [B|1, T]
    and key_positions [B|1, S] feed the positional scheme (default 0..T-1 and 0..S-1).
    Returns [B, T, out_features], and with ``return_weights`` also the weights [B, N, T, S].
    """
    if inputs_q.ndim != 3 or (inputs_kv is not None and inputs_kv.ndim != 3):
      raise ValueError(
          f"expected inputs_q [B, T, D] and inputs_kv [B, S, D]; got {inputs_q.shape} and "
          f"{None if inputs_kv is None else inputs_kv.shape}")
    weight_dropout = self.attn_dropout.rate > 0 and not self.attn_dropout.deterministic
    fast = self.score in ("dot", "cosine") and not (return_weights or weight_dropout)
    # The fast dot path takes its 1/sqrt(H) in the query projection (and scale=1 below); RoPE is a
    # rotation and biases are added to the logits after scaling, so neither notices.
    query_scale = self.head_dim**-0.5 if fast and self.score == "dot" else None
    # [B, T, N, H], [B, S, K, H] x2
    query, key, value = self._project(inputs_q, inputs_kv, query_scale)
    q_len, kv_len = query.shape[1], key.shape[1]
    if query_positions is None:
      query_positions = jnp.arange(q_len)[None]
    if key_positions is None:
      key_positions = query_positions if inputs_kv is None else jnp.arange(kv_len)[None]
    if self.positional == "rope":
      query = positional.apply_rope(query, query_positions)
      key = positional.apply_rope(key, key_positions)
    elif self.positional in ("alibi", "relative"):
      if self.positional == "alibi":
        pos_bias = positional.alibi_bias(self.num_heads, query_positions, key_positions)
      else:
        pos_bias = positional.relative_position_bias(
            self.relative_table[...], query_positions, key_positions,
            bidirectional=not is_causal, num_buckets=self.num_buckets,
            max_distance=self.max_distance)
      bias = pos_bias if bias is None else bias + pos_bias  # [B|1, N, T, S]

    if fast:
      out_BTNH = dot_product_attention(
          query, key, value, bias, mask, is_causal=is_causal, score=self.score,
          scale=None if query_scale is None else 1.0, implementation=self.implementation)
      weights = None
    else:
      out_BTNH, weights = self._attend_with_weights(query, key, value, bias, mask, is_causal)
    # [B, T, N, H] x [N, H, D_out] -> [B, T, D_out]
    out = jnp.einsum("btnh,nhd->btd", out_BTNH, self.out_kernel[...].astype(out_BTNH.dtype))
    if self.out_bias is not None:
      out = out + self.out_bias[...].astype(out.dtype)
    return (out, weights) if return_weights else out

  def _attend_with_weights(self, query, key, value, bias, mask, is_causal):
    """The vmapped single-head path; returns ([B, T, N, H], weights [B, N, T, S])."""
    q_len, kv_len = query.shape[1], key.shape[1]
    mask = None if mask is None else jnp.reshape(mask, (1,) * (4 - mask.ndim) + mask.shape)
    mask = masks.and_masks(mask, masks.make_causal_mask(q_len, kv_len) if is_causal else None)
    bias = None if bias is None else jnp.reshape(bias, (1,) * (4 - bias.ndim) + bias.shape)
    if self.score in ("dot", "cosine"):
      scale = self.head_dim**-0.5 if self.score == "dot" else self.head_dim**0.5
      score_fn, params = batched.score_fn_for(self.score, scale), None
    else:
      score_fn = scores.get_score(self.score)
      params = self.score_params.get_value()
      if self.score == "bilinear":  # scale like the dot product so the two start equal
        score_fn = _scaled(score_fn, self.head_dim**-0.5)
    out, weights = batched.reference_attention(
        query, key, value, bias, mask, score_fn=score_fn, params=params,
        params_per_head=params is not None, return_weights=True)
    if self.attn_dropout.rate > 0 and not self.attn_dropout.deterministic:
      # Dropout on the weights, then recombine: weights [B, N, T, S] x value [B, S, K, H].
      weights = self.attn_dropout(weights)
      out = _combine_grouped(weights, value).astype(query.dtype)
    return out, weights


def _scaled(score_fn, scale):
  @functools.wraps(score_fn)
  def fn(query, key, params):
    return score_fn(query, key, params) * scale
  return fn


def _combine_grouped(weights: Array, value: Array) -> Array:
  """weights [B, N, T, S], value [B, S, K, H] -> [B, T, N, H] (query head n reads kv n // G)."""
  batch, num_heads, q_len, kv_len = weights.shape
  num_kv_heads = value.shape[2]
  w_BKGTS = jnp.reshape(weights, (batch, num_kv_heads, num_heads // num_kv_heads, q_len, kv_len))
  out = jnp.einsum("bkgts,bskh->btkgh", w_BKGTS.astype(value.dtype), value)
  return jnp.reshape(out, (batch, q_len, num_heads, value.shape[-1]))
