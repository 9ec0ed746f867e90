"""Flax NNX modules built on the functional core.

Example:
  >>> from attn_jax import nn
  >>> model = nn.TransformerEncoder(vocab_size=10, max_len=32, num_layers=2, num_heads=4,
  ...                               d_model=16, d_ff=32, rngs=nnx.Rngs(0))
  >>> logits, attention = model(jnp.zeros((3, 32), jnp.int32), return_attention=True)
  >>> logits.shape, len(attention), attention[0].shape  # per layer [B, N, L, L]
  ((3, 32, 10), 2, (3, 4, 32, 32))
"""

from attn_jax.nn.attention import MultiHeadAttention
from attn_jax.nn.lstm import LSTMBaseline, LSTMLayer, LSTMWithAttention
from attn_jax.nn.mixers import MixerBlock, MixerModel, make_mixer
from attn_jax.nn.transformer import EncoderBlock, Mlp, TransformerEncoder

__all__ = [
    "EncoderBlock", "LSTMBaseline", "LSTMLayer", "LSTMWithAttention", "Mlp",
    "MixerBlock", "MixerModel", "make_mixer",
    "MultiHeadAttention", "TransformerEncoder",
]
