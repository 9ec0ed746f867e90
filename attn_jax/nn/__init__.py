"""Flax NNX modules built on the functional core."""

from attn_jax.nn.attention import MultiHeadAttention
from attn_jax.nn.lstm import LSTMBaseline, LSTMLayer, LSTMWithAttention
from attn_jax.nn.mixers import MixerBlock, MixerModel, make_mixer
from attn_jax.nn.transformer import EncoderBlock, Mlp, TransformerEncoder

__all__ = [
    "EncoderBlock", "LSTMBaseline", "LSTMLayer", "LSTMWithAttention", "Mlp",
    "MixerBlock", "MixerModel", "make_mixer",
    "MultiHeadAttention", "TransformerEncoder",
]
