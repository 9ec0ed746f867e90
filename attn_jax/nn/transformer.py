"""A small pre-LayerNorm Transformer encoder that maps tokens to per-token logits."""

import jax
import jax.numpy as jnp
from flax import nnx

from attn_jax.core import positional as pos
from attn_jax.core.block_mask import BlockMask
from attn_jax.nn.attention import MultiHeadAttention, attention_block_mask

Array = jax.Array



class Mlp(nnx.Module):
  """Position-wise feed-forward: Linear -> GELU -> dropout -> Linear. [B, L, D] -> [B, L, D].

  Args:
    d_model: the input and output width D.
    d_ff: the hidden width.
    dropout_rate: dropout on the hidden units (active in ``train()`` mode only).
    rngs: the parameters' and dropout's random streams.

  Example:
    >>> mlp = Mlp(d_model=8, d_ff=32, dropout_rate=0.0, rngs=nnx.Rngs(0))
    >>> mlp(jnp.ones((2, 5, 8))).shape  # [B, L, D] -> [B, L, D]
    (2, 5, 8)
  """

  def __init__(self, *, d_model: int, d_ff: int, dropout_rate: float, rngs: nnx.Rngs):
    self.up = nnx.Linear(d_model, d_ff, rngs=rngs)
    self.down = nnx.Linear(d_ff, d_model, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    """x: [B, L, D] -> [B, L, D], each position on its own."""
    return self.down(self.dropout(jax.nn.gelu(self.up(x))))


class EncoderBlock(nnx.Module):
  """Pre-LayerNorm block (Xiong et al. 2020): x + Attn(LN(x)), then x + Mlp(LN(x)).

  Args:
    d_model: the width D of the block's input and output.
    num_heads: query heads N of its `MultiHeadAttention`.
    d_ff: the hidden width of its `Mlp`.
    dropout_rate: dropout on the attention weights and on both residual branches.
    positional: the positional scheme; the absolute ones ("sinusoidal", "learned") are added
      to the embedding outside the block, so the block's attention sees "none" for them.
    score: the attention score ("dot", "cosine", "additive", "bilinear").
    num_kv_heads: key/value heads K (None: N).
    implementation: passed to `MultiHeadAttention`.
    rngs: the parameters' and dropout's random streams.

  Example:
    >>> block = EncoderBlock(d_model=16, num_heads=2, d_ff=32, dropout_rate=0.0,
    ...                      positional="none", score="dot", num_kv_heads=None,
    ...                      implementation=None, rngs=nnx.Rngs(0))
    >>> x = jnp.ones((2, 6, 16))  # [B, L, D]
    >>> y, weights = block(x, mask=None, is_causal=True, positions=jnp.arange(6)[None],
    ...                    return_weights=True)
    >>> y.shape, weights.shape  # [B, L, D], [B, N, L, L]
    ((2, 6, 16), (2, 2, 6, 6))
  """

  def __init__(self, *, d_model: int, num_heads: int, d_ff: int, dropout_rate: float,
               positional: str, score: str, num_kv_heads: int | None,
               implementation: str | None, rngs: nnx.Rngs):
    self.attn_norm = nnx.LayerNorm(d_model, rngs=rngs)
    self.attention = MultiHeadAttention(
        num_heads=num_heads, num_kv_heads=num_kv_heads, in_features=d_model, score=score,
        positional=positional if positional not in pos.ABSOLUTE else "none",
        dropout_rate=dropout_rate, implementation=implementation, rngs=rngs)
    self.mlp_norm = nnx.LayerNorm(d_model, rngs=rngs)
    self.mlp = Mlp(d_model=d_model, d_ff=d_ff, dropout_rate=dropout_rate, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def __call__(self, x: Array, *, mask: Array | None, is_causal: bool, positions: Array,
               segment_ids: Array | None = None, block_mask: BlockMask | None = None,
               return_weights: bool = False):
    """x: [B, L, D] -> [B, L, D] (and the attention weights [B, N, L, L]). block_mask: the
    packed-sequence mask with causality, made once for every block (`attention_block_mask`)."""
    attended = self.attention(self.attn_norm(x), mask=mask, is_causal=is_causal,
                              query_positions=positions, segment_ids=segment_ids,
                              block_mask=block_mask, return_weights=return_weights)
    attended, weights = attended if return_weights else (attended, None)
    x = x + self.dropout(attended)
    x = x + self.dropout(self.mlp(self.mlp_norm(x)))
    return (x, weights) if return_weights else x


class TransformerEncoder(nnx.Module):
  """Token embedding + positions -> pre-LN blocks -> final LayerNorm -> per-token classifier.

  Maps int tokens [B, L] (L <= max_len) to logits [B, L, vocab_size].

  Args:
    vocab_size: V, the token vocabulary (inputs and output classes).
    max_len: the longest sequence L accepted (sizes the learned position table).
    num_layers: the number of `EncoderBlock` layers.
    num_heads: query heads N of every attention layer (must divide ``d_model``).
    d_model: the model width D; each head has width D / N.
    d_ff: the hidden width of every `Mlp`.
    dropout_rate: dropout on the embeddings, the attention weights and every residual branch
      (active in ``train()`` mode only). Default 0.
    positional: "sinusoidal" (default) or "learned" (absolute, added to the embedding), "rope",
      "alibi", "relative" (inside every attention layer) or "none".
    causal: each position attends only to itself and earlier ones (a decoder-only LM).
      Default False (an encoder).
    score: the attention score of every layer ("dot", the default, "cosine", "additive",
      "bilinear").
    num_kv_heads: key/value heads K for grouped-query attention (N a multiple of K; default N).
    implementation: passed to every `MultiHeadAttention` (None: the fastest valid one).
    rngs: the parameters' and dropout's random streams.

  Example:
    >>> model = TransformerEncoder(vocab_size=10, max_len=32, num_layers=2, num_heads=4,
    ...                            d_model=16, d_ff=32, positional="rope", causal=True,
    ...                            rngs=nnx.Rngs(0))
    >>> tokens = jnp.zeros((3, 32), jnp.int32)  # [B, L]
    >>> logits, attention = model(tokens, return_attention=True)
    >>> logits.shape, len(attention), attention[0].shape
    ((3, 32, 10), 2, (3, 4, 32, 32))
  """

  def __init__(
      self, *, vocab_size: int, max_len: int, num_layers: int, num_heads: int, d_model: int,
      d_ff: int, dropout_rate: float = 0.0, positional: str = "sinusoidal", causal: bool = False,
      score: str = "dot", num_kv_heads: int | None = None, implementation: str | None = None,
      rngs: nnx.Rngs):
    if positional not in pos.SCHEMES:
      raise ValueError(f"positional must be one of {pos.SCHEMES}; got {positional!r}")
    if d_model % num_heads:
      raise ValueError(f"num_heads ({num_heads}) must divide d_model ({d_model})")
    if min(vocab_size, max_len, num_layers, d_ff) <= 0 or not 0.0 <= dropout_rate < 1.0:
      raise ValueError(
          "vocab_size, max_len, num_layers and d_ff must be positive and dropout_rate in [0, 1); "
          f"got {vocab_size}, {max_len}, {num_layers}, {d_ff}, {dropout_rate}")
    self.vocab_size, self.max_len, self.d_model = vocab_size, max_len, d_model
    self.positional, self.causal = positional, causal
    self.embed = nnx.Embed(vocab_size, d_model, rngs=rngs)
    self.position_table = nnx.Param(
        nnx.initializers.normal(0.02)(rngs.params(), (max_len, d_model))) \
        if positional == "learned" else None
    self.embed_dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.blocks = nnx.List([
        EncoderBlock(d_model=d_model, num_heads=num_heads, d_ff=d_ff, dropout_rate=dropout_rate,
                     positional=positional, score=score, num_kv_heads=num_kv_heads,
                     implementation=implementation, rngs=rngs)
        for _ in range(num_layers)])
    self.final_norm = nnx.LayerNorm(d_model, rngs=rngs)
    self.classifier = nnx.Linear(d_model, vocab_size, rngs=rngs)

  def __call__(self, tokens: Array, *, mask: Array | None = None,
               positions: Array | None = None, segment_ids: Array | None = None,
               return_attention: bool = False):
    """tokens: int [B, L]; mask: bool broadcastable to [B, N, L, L] (e.g. padding);
    positions: int [B|1, L] (default 0..L-1); segment_ids: int [B|1, L] for packed sequences
    (each token attends only within its segment; pass positions restarting per segment too).

    Returns logits [B, L, vocab_size], and with ``return_attention`` also a list with every
    layer's attention weights [B, N, L, L].
    """
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [B, L]; got {tokens.shape}")
    seq_len = tokens.shape[1]
    if seq_len > self.max_len:
      raise ValueError(f"sequence length {seq_len} exceeds max_len {self.max_len}")
    if positions is None:
      positions = jnp.arange(seq_len)[None]  # [1, L]
    x = self.embed(tokens)  # [B, L, D]
    if self.positional == "sinusoidal":
      x = x + pos.sinusoidal_embedding(positions, self.d_model).astype(x.dtype)
    elif self.positional == "learned":
      x = x + pos.learned_embedding(self.position_table[...], positions).astype(x.dtype)
    x = self.embed_dropout(x)
    # Packed sequences: one block plan per forward pass, from the ids and causality, that every
    # layer reuses (computed on device when the ids are traced).
    block_mask = None if segment_ids is None else attention_block_mask(
        segment_ids, is_causal=self.causal)
    attention = []
    for block in self.blocks:
      x = block(x, mask=mask, is_causal=self.causal, positions=positions,
                block_mask=block_mask, return_weights=return_attention)
      if return_attention:
        x, weights = x
        attention.append(weights)
    logits = self.classifier(self.final_norm(x))  # [B, L, vocab_size]
    return (logits, attention) if return_attention else logits
