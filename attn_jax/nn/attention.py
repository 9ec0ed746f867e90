"""`MultiHeadAttention`: parameters around the functional core.

The module owns the projections, the score's weights and the positional scheme; the math is the
core's. The dot, cosine and bilinear scores (the bilinear ``q^T W k`` is the dot product of the
queries ``W^T q``) run on `attn_jax.dot_product_attention` and its fast backends; the additive
score on the chunked kernel or the vmapped single-head `attend`; and whenever the weights are
returned or dropped out, the single-head path (`batched.reference_attention`). ALiBi and T5
relative positions are score mods and packed sequences (``segment_ids``) a block mask
(`attention_block_mask`, `attn_jax.core.block_mask`), so no dense [B, N, T, S] bias is ever built
for them; a model of several layers builds the block mask once per forward pass and hands it to
every layer (``block_mask=``).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from attn_jax.attention import dot_product_attention, select_implementation
from attn_jax.core import batched, chunked, masks, mods, positional, scores
from attn_jax.core.block_mask import BlockMask, create_block_mask

Array = jax.Array

POSITIONAL = ("none", *positional.IN_ATTENTION)  # the schemes applied inside attention


def attention_block_mask(segment_ids: Array, key_segment_ids: Array | None = None, *,
                         is_causal: bool = False) -> BlockMask:
  """The block mask of packed sequences: a query attends only keys of its own segment (and,
  with ``is_causal``, at or before its position). Build it once per forward pass and pass it to
  every layer's `MultiHeadAttention` as ``block_mask=``.

  segment_ids: int [B|1, T]; key_segment_ids: int [B|1, S] (default: the same, self-attention).
  Under ``jit`` the ids are traced and the plan is computed on device, once.

  Example:
    >>> import jax.numpy as jnp
    >>> ids = jnp.asarray([[0] * 4 + [1] * 4])
    >>> attention_block_mask(ids, is_causal=True).to_dense().shape
    (1, 1, 8, 8)
  """
  key_ids = segment_ids if key_segment_ids is None else key_segment_ids
  mask_mod = mods.and_masks(mods.document(segment_ids, key_ids),
                            mods.causal() if is_causal else None)
  batch = max(segment_ids.shape[0], key_ids.shape[0])
  return create_block_mask(mask_mod, batch if batch > 1 else None, None, segment_ids.shape[1],
                           key_ids.shape[1])


def _kernel_init(in_axis=0, out_axis=-1):
  # LeCun normal over the true fan-in, also for kernels with a [heads, head_dim] output.
  return nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis, out_axis)


class MultiHeadAttention(nnx.Module):
  """Multi-head attention with any score function and positional scheme; self or cross.

  Args:
    num_heads: query heads N.
    in_features: model width D of the inputs.
    num_kv_heads: key/value heads K (N a multiple of K; default N): grouped-query attention.
    head_dim: the width H of every head (default D // N).
    out_features: output width (default D).
    score: "dot" (scaled dot product), "cosine", "additive" (Bahdanau) or "bilinear" (Luong).
    score_hidden: hidden width of the additive score (default H).
    positional: "none", "rope" (rotates queries and keys), "alibi" (linear distance bias) or
      "relative" (T5 bucketed bias, a learned [num_buckets, N] table).
    dropout_rate: dropout on the attention weights (active in ``train()`` mode only).
    sinks: a learnable sink logit per query head (``self.sinks``, [num_heads], initialised to
      zeros: at the start each row also normalises over one extra key of logit 0 and no value),
      as in gpt-oss; see ``sinks`` of `attn_jax.dot_product_attention`.
    implementation: passed to `attn_jax.dot_product_attention` for the dot, cosine and bilinear
      scores; for the additive score None (chunked for long sequences), "reference" or "chunked".
    num_buckets: T5 buckets of the "relative" scheme (default 32).
    max_distance: the distance beyond which "relative" offsets share a bucket (default 128).
    use_bias: biases on the query, value and output projections (default True).
    rngs: the parameters' and dropout's random streams.

  Example:
    >>> mha = MultiHeadAttention(num_heads=4, num_kv_heads=2, in_features=16,
    ...                          positional="rope", rngs=nnx.Rngs(0))
    >>> x = jnp.ones((2, 10, 16))  # [B, T, D]
    >>> mha(x, is_causal=True).shape  # self-attention: [B, T, D]
    (2, 10, 16)
    >>> out, weights = mha(x, jnp.ones((2, 7, 16)), return_weights=True)  # cross-attention
    >>> out.shape, weights.shape  # [B, T, D], [B, N, T, S]
    ((2, 10, 16), (2, 4, 10, 7))
  """

  def __init__(
      self, *, num_heads: int, in_features: int, num_kv_heads: int | None = None,
      head_dim: int | None = None, out_features: int | None = None, score: str = "dot",
      score_hidden: int | None = None, positional: str = "none", num_buckets: int = 32,
      max_distance: int = 128, dropout_rate: float = 0.0, use_bias: bool = True,
      implementation: str | None = None, sinks: bool = False, rngs: nnx.Rngs):
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
    if score == "additive" and implementation not in (None, "reference", "chunked"):
      raise ValueError("the additive score runs on implementation None, 'reference' or "
                       f"'chunked'; got {implementation!r}")
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
    self.sinks = nnx.Param(jnp.zeros((num_heads,))) if sinks else None

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
      key_positions: Array | None = None, segment_ids: Array | None = None,
      key_segment_ids: Array | None = None, block_mask: BlockMask | None = None,
      return_weights: bool = False,
  ) -> Array | tuple[Array, Array]:
    """inputs_q: [B, T, D]; inputs_kv: [B, S, D] (None: self-attention, S = T).

    mask (bool, True = may attend) and bias: broadcastable to [B, N, T, S]. query_positions [B|1, T]
    and key_positions [B|1, S] feed the positional scheme (default 0..T-1 and 0..S-1).
    segment_ids: int [B|1, T], packed sequences: a query attends only keys of its own segment
    (key_segment_ids [B|1, S] for cross-attention; default the same ids); folded with
    ``is_causal`` into one block mask (`attention_block_mask`).
    block_mask: that block mask made once by the caller (a model reuses it across layers), in
    place of ``segment_ids``; it carries the causal masking too, ``is_causal`` then only sets the
    direction of relative positions.
    Returns [B, T, out_features], and with ``return_weights`` also the weights [B, N, T, S].
    """
    if inputs_q.ndim != 3 or (inputs_kv is not None and inputs_kv.ndim != 3):
      raise ValueError(
          f"expected inputs_q [B, T, D] and inputs_kv [B, S, D]; got {inputs_q.shape} and "
          f"{None if inputs_kv is None else inputs_kv.shape}")
    weight_dropout = self.attn_dropout.rate > 0 and not self.attn_dropout.deterministic
    # Dropout runs inside the chunked kernel (its keep mask drawn per block), unless the weights
    # are asked for or another implementation is: then on the returned weights.
    kernel_dropout = (weight_dropout and not return_weights
                      and self.implementation in (None, "chunked"))
    with_weights = return_weights or (weight_dropout and not kernel_dropout)
    # The dot path takes its 1/sqrt(H) in the query projection (and scale 1 after); RoPE is a
    # rotation and biases and score mods act on the scaled logits, so none of them notices.
    query_scale = self.head_dim**-0.5 if self.score == "dot" and not with_weights else None
    # [B, T, N, H], [B, S, K, H] x2
    query, key, value = self._project(inputs_q, inputs_kv, query_scale)
    if self.positional == "rope":
      default = lambda n: jnp.arange(n)[None]
      q_pos = default(query.shape[1]) if query_positions is None else query_positions
      k_pos = key_positions if key_positions is not None else (
          q_pos if inputs_kv is None else default(key.shape[1]))
      query, key = positional.apply_rope(query, q_pos), positional.apply_rope(key, k_pos)
    if key_positions is None and inputs_kv is None:
      key_positions = query_positions
    score_mod = self._position_mod(is_causal, query_positions, key_positions)
    if segment_ids is not None and block_mask is not None:
      raise ValueError("pass segment_ids or a block_mask made from them, not both")
    if segment_ids is not None:
      block_mask = attention_block_mask(segment_ids, key_segment_ids, is_causal=is_causal)
    masked_causal = is_causal and block_mask is None  # else the block mask carries it
    score, scale = self.score, (None if query_scale is None else 1.0)
    if score == "bilinear":
      # q^T W k = (W^T q) . k, scaled like the dot product so the two start equal.
      w = self.score_params.get_value()["w"] * self.head_dim**-0.5  # [N, H, H]
      query = jnp.einsum("btnd,nde->btne", query, w.astype(query.dtype))
      score, scale = "dot", 1.0
    if with_weights:
      out_BTNH, weights = self._attend_with_weights(query, key, value, bias, mask, masked_causal,
                                                    score, scale, score_mod, block_mask)
    elif kernel_dropout:
      out_BTNH = self._attend_chunked(query, key, value, bias, mask, masked_causal, score, scale,
                                      score_mod, block_mask, self.attn_dropout.rate,
                                      self.attn_dropout.rngs())
      weights = None
    elif score == "additive":
      out_BTNH, weights = self._attend_additive(query, key, value, bias, mask, masked_causal,
                                                score_mod, block_mask), None
    else:
      out_BTNH = dot_product_attention(
          query, key, value, bias, mask, is_causal=masked_causal, score=score, scale=scale,
          implementation=self.implementation, score_mod=score_mod, block_mask=block_mask,
          sinks=self._sinks())
      weights = None
    # [B, T, N, H] x [N, H, D_out] -> [B, T, D_out]
    out = jnp.einsum("btnh,nhd->btd", out_BTNH, self.out_kernel[...].astype(out_BTNH.dtype))
    if self.out_bias is not None:
      out = out + self.out_bias[...].astype(out.dtype)
    return (out, weights) if return_weights else out

  def _sinks(self) -> Array | None:
    return None if self.sinks is None else self.sinks[...]

  def _position_mod(self, is_causal, query_positions, key_positions) -> mods.ScoreMod | None:
    """ALiBi and T5 relative positions as score mods (None for the other schemes)."""
    if self.positional == "alibi":
      return mods.alibi(positional.alibi_slopes(self.num_heads), query_positions, key_positions)
    if self.positional == "relative":
      return mods.relative_position(
          self.relative_table[...], bidirectional=not is_causal, max_distance=self.max_distance,
          query_positions=query_positions, key_positions=key_positions)
    return None

  def _attend_additive(self, query, key, value, bias, mask, is_causal, score_mod, block_mask):
    """The additive score with per-head weights: the chunked kernel for long sequences (never
    the [T, S, hidden] tensor), else the vmapped single-head path."""
    as_4d = lambda x: None if x is None else jnp.reshape(x, (1,) * (4 - x.ndim) + x.shape)
    implementation = self.implementation
    if implementation is None:  # where the dot product would go chunked, so does this
      implementation = select_implementation(query, key, value, as_4d(bias), as_4d(mask),
                                             is_causal=is_causal)
    if implementation == "chunked":
      return self._attend_chunked(query, key, value, bias, mask, is_causal, "additive", None,
                                  score_mod, block_mask)
    return self._attend_with_weights(query, key, value, bias, mask, is_causal, "additive", None,
                                     score_mod, block_mask)[0]

  def _attend_chunked(self, query, key, value, bias, mask, is_causal, score, scale, score_mod,
                      block_mask, dropout_rate=0.0, dropout_rng=None):
    """Any score on the chunked kernel, with dropout inside it when ``dropout_rate`` > 0."""
    as_4d = lambda x: None if x is None else jnp.reshape(x, (1,) * (4 - x.ndim) + x.shape)
    score_fn = params = None
    dtype = query.dtype
    if score == "additive":
      score_fn, params = scores.additive, self.score_params.get_value()
    elif score == "cosine":  # the dot product of unit vectors, as attn_jax.dot_product_attention
      query, key = scores.l2_normalize(query), scores.l2_normalize(key)
      scale = self.head_dim**0.5 if scale is None else scale
    out = chunked.chunked_attention(
        query, key, value, bias=as_4d(bias), mask=as_4d(mask), is_causal=is_causal,
        scale=scale, score_fn=score_fn, score_params=params, params_per_head=params is not None,
        score_mod=score_mod, block_mask=block_mask, dropout_rate=dropout_rate,
        dropout_rng=dropout_rng, sinks=self._sinks())
    return out.astype(dtype)

  def _attend_with_weights(self, query, key, value, bias, mask, is_causal, score, scale,
                           score_mod, block_mask):
    """The vmapped single-head path; returns ([B, T, N, H], weights [B, N, T, S])."""
    q_len, kv_len = query.shape[1], key.shape[1]
    as_4d = lambda x: None if x is None else jnp.reshape(x, (1,) * (4 - x.ndim) + x.shape)
    mask = masks.and_masks(
        as_4d(mask), masks.make_causal_mask(q_len, kv_len) if is_causal else None,
        None if block_mask is None else block_mask.to_dense())
    params = None
    if score == "additive":
      score_fn, params = scores.additive, self.score_params.get_value()
    else:
      default = self.head_dim**-0.5 if score == "dot" else self.head_dim**0.5
      score_fn = batched.score_fn_for(score, default if scale is None else scale)
    out, weights = batched.reference_attention(
        query, key, value, as_4d(bias), mask, score_fn=score_fn, params=params,
        params_per_head=params is not None, score_mod=score_mod, sinks=self._sinks(),
        return_weights=True)
    if self.attn_dropout.rate > 0 and not self.attn_dropout.deterministic:
      # Dropout on the weights, then recombine: weights [B, N, T, S] x value [B, S, K, H].
      weights = self.attn_dropout(weights)
      out = _combine_grouped(weights, value).astype(query.dtype)
    return out, weights


def _combine_grouped(weights: Array, value: Array) -> Array:
  """weights [B, N, T, S], value [B, S, K, H] -> [B, T, N, H] (query head n reads kv n // G)."""
  batch, num_heads, q_len, kv_len = weights.shape
  num_kv_heads = value.shape[2]
  w_BKGTS = jnp.reshape(weights, (batch, num_kv_heads, num_heads // num_kv_heads, q_len, kv_len))
  out = jnp.einsum("bkgts,bskh->btkgh", w_BKGTS.astype(value.dtype), value)
  return jnp.reshape(out, (batch, q_len, num_heads, value.shape[-1]))
