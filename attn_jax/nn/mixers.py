"""Sequence mixers of the recall zoo, and one model whose mixer is a parameter.

Every model of the zoo is the same `MixerModel`: token embedding, pre-LayerNorm blocks, final
LayerNorm, per-token classifier; a block is ``x + mixer(conv(LN(x)))`` then ``x + Mlp(LN(x))``,
where ``conv`` is a short causal depthwise convolution shared by every mixer (as Based, Mamba and
gated linear attention use one): the models differ in the mixer alone. Each mixer maps
[B, L, D] -> [B, L, D] causally and reports ``state_size(seq_len)``: the floats of recurrent state
one sequence needs at length ``seq_len`` (for softmax attention its key-value cache).

Mixers (`MIXERS`): softmax attention and sliding-window attention (`MultiHeadAttention` with
RoPE, causal; the window through `attn_jax.core.masks.make_local_mask`), linear attention
(``elu + 1``), Based's Taylor linear attention, a scalar-gated recurrence with data-dependent
decay (`attn_jax.core.gated`) and the LSTM (`LSTMLayer`).
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from attn_jax.core import gated, masks
from attn_jax.core import linear_attention as la
from attn_jax.nn.attention import MultiHeadAttention
from attn_jax.nn.lstm import LSTMLayer
from attn_jax.nn.transformer import Mlp

Array = jax.Array

MIXERS = ("attention", "sliding_window", "linear_attention", "based", "gated_linear", "lstm")


def _kernel(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int) -> nnx.Param:
  return nnx.Param(jax.random.normal(rngs.params(), shape) * fan_in**-0.5)


class SoftmaxAttentionMixer(nnx.Module):
  """Causal softmax attention over every past key or the last ``window`` keys; ``positional``
  "rope" or "none" (causal attention can tell positions apart without one).

  State: the key-value cache, ``2 * min(window, L) * num_heads * head_dim`` floats.
  """

  def __init__(self, *, d_model: int, num_heads: int, window: int | None = None,
               positional: str = "rope", rngs: nnx.Rngs):
    if window is not None and window < 1:
      raise ValueError(f"window must be >= 1 or None, got {window!r}")
    self.window, self.d_model = window, d_model
    self.attention = MultiHeadAttention(num_heads=num_heads, in_features=d_model,
                                        positional=positional, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    seq_len = x.shape[1]
    mask = None
    if self.window is not None:  # itself and the window - 1 keys before it
      mask = masks.make_local_mask(seq_len, seq_len, (self.window - 1, 0))
    return self.attention(x, mask=mask, is_causal=True)

  def state_size(self, seq_len: int) -> int:
    keys = seq_len if self.window is None else min(self.window, seq_len)
    return 2 * keys * self.d_model


class LinearAttentionMixer(nnx.Module):
  """Causal linear attention, ``num_heads`` heads with keys of width ``key_dim`` and values of
  width ``d_model / num_heads``, run in chunks (`attn_jax.core.linear_attention`).

  ``feature_map``: "elu" (Katharopoulos et al. 2020) or "taylor" (Based). State per head: the
  ``[F, Dv]`` matrix and the ``[F]`` normaliser, ``F = feature_dim(feature_map, key_dim)``.
  """

  def __init__(self, *, d_model: int, num_heads: int, key_dim: int, feature_map: str = "elu",
               chunk_size: int = 64, rngs: nnx.Rngs):
    if d_model % num_heads:
      raise ValueError(f"num_heads ({num_heads}) must divide d_model ({d_model})")
    self.feature_width = la.feature_dim(feature_map, key_dim)  # checks the name
    self.num_heads, self.key_dim, self.head_dim = num_heads, key_dim, d_model // num_heads
    self.feature_map, self.chunk_size = feature_map, chunk_size
    self.query_kernel = _kernel(rngs, (d_model, num_heads, key_dim), d_model)
    self.key_kernel = _kernel(rngs, (d_model, num_heads, key_dim), d_model)
    self.value_kernel = _kernel(rngs, (d_model, num_heads, self.head_dim), d_model)
    self.out_kernel = _kernel(rngs, (num_heads, self.head_dim, d_model), d_model)

  def __call__(self, x: Array) -> Array:
    # [B, L, D] x [D, N, K] -> [B, L, N, K]
    query = jnp.einsum("bld,dnk->blnk", x, self.query_kernel[...])
    key = jnp.einsum("bld,dnk->blnk", x, self.key_kernel[...])
    value = jnp.einsum("bld,dnh->blnh", x, self.value_kernel[...])
    one_head = functools.partial(la.linear_attention_chunked, chunk_size=self.chunk_size,
                                 feature_map=la.FEATURE_MAPS[self.feature_map])
    # One head of one example, lifted over heads (axis 1 of [L, N, .]) and the batch.
    out_BLNH = jax.vmap(jax.vmap(one_head, in_axes=1, out_axes=1))(query, key, value)
    return jnp.einsum("blnh,nhd->bld", out_BLNH, self.out_kernel[...])

  def state_size(self, seq_len: int) -> int:
    del seq_len  # fixed
    return self.num_heads * (self.feature_width * self.head_dim + self.feature_width)


class GatedLinearMixer(nnx.Module):
  """The scalar-gated recurrence of `attn_jax.core.gated` (Mamba-2-style, one data-dependent
  decay per head and step), run in chunks.

  ``log_decay = log_sigmoid(x W_a + b_a) / 16``: the temperature of gated linear attention (Yang
  et al. 2023), which with ``b_a = 2`` starts every head with a half-life of ~90 steps. State
  per head: the ``[key_dim, Dv]`` matrix.
  """

  def __init__(self, *, d_model: int, num_heads: int, key_dim: int, chunk_size: int = 64,
               rngs: nnx.Rngs):
    if d_model % num_heads:
      raise ValueError(f"num_heads ({num_heads}) must divide d_model ({d_model})")
    self.num_heads, self.key_dim, self.head_dim = num_heads, key_dim, d_model // num_heads
    self.chunk_size = chunk_size
    self.query_kernel = _kernel(rngs, (d_model, num_heads, key_dim), d_model)
    self.key_kernel = _kernel(rngs, (d_model, num_heads, key_dim), d_model)
    self.value_kernel = _kernel(rngs, (d_model, num_heads, self.head_dim), d_model)
    self.decay_kernel = _kernel(rngs, (d_model, num_heads), d_model)
    self.decay_bias = nnx.Param(jnp.full((num_heads,), 2.0))
    self.out_kernel = _kernel(rngs, (num_heads, self.head_dim, d_model), d_model)

  def __call__(self, x: Array) -> Array:
    query = jnp.einsum("bld,dnk->blnk", x, self.query_kernel[...])
    # Keys scaled by 1/sqrt(key_dim), as attention's logits are.
    key = jnp.einsum("bld,dnk->blnk", x, self.key_kernel[...]) * self.key_dim**-0.5
    value = jnp.einsum("bld,dnh->blnh", x, self.value_kernel[...])
    gate_BLN = jnp.einsum("bld,dn->bln", x, self.decay_kernel[...]) + self.decay_bias[...]
    log_decay_BLN = jax.nn.log_sigmoid(gate_BLN) / 16.0
    one_head = functools.partial(gated.gated_chunked, chunk_size=self.chunk_size)
    out_BLNH = jax.vmap(jax.vmap(one_head, in_axes=1, out_axes=1))(query, key, value,
                                                                    log_decay_BLN)
    return jnp.einsum("blnh,nhd->bld", out_BLNH, self.out_kernel[...])

  def state_size(self, seq_len: int) -> int:
    del seq_len
    return self.num_heads * self.key_dim * self.head_dim


class LstmMixer(nnx.Module):
  """One LSTM layer of width ``d_model`` (`LSTMLayer`). State: h and c, ``2 * d_model``."""

  def __init__(self, *, d_model: int, rngs: nnx.Rngs):
    self.d_model = d_model
    self.lstm = LSTMLayer(d_model, d_model, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    return self.lstm(x)

  def state_size(self, seq_len: int) -> int:
    del seq_len
    return 2 * self.d_model


def make_mixer(mixer: str, *, d_model: int, num_heads: int = 2, key_dim: int = 16,
               window: int = 16, chunk_size: int = 64, positional: str = "rope",
               rngs: nnx.Rngs) -> nnx.Module:
  """The mixer named ``mixer`` (one of `MIXERS`), [B, L, d_model] -> [B, L, d_model].

  Example:
    >>> from flax import nnx
    >>> make_mixer("lstm", d_model=8, rngs=nnx.Rngs(0)).state_size(100)
    16
  """
  if mixer in ("attention", "sliding_window"):
    return SoftmaxAttentionMixer(d_model=d_model, num_heads=num_heads,
                                 window=window if mixer == "sliding_window" else None,
                                 positional=positional, rngs=rngs)
  if mixer in ("linear_attention", "based"):
    return LinearAttentionMixer(d_model=d_model, num_heads=num_heads, key_dim=key_dim,
                                feature_map="elu" if mixer == "linear_attention" else "taylor",
                                chunk_size=chunk_size, rngs=rngs)
  if mixer == "gated_linear":
    return GatedLinearMixer(d_model=d_model, num_heads=num_heads, key_dim=key_dim,
                            chunk_size=chunk_size, rngs=rngs)
  if mixer == "lstm":
    return LstmMixer(d_model=d_model, rngs=rngs)
  raise ValueError(f"mixer must be one of {MIXERS}, got {mixer!r}")


class ShortConv(nnx.Module):
  """Causal depthwise convolution over the last ``kernel_size`` positions: [B, L, D] -> [B, L, D].
  Starts as the identity (weight 1 on the current position, 0 on the earlier ones)."""

  def __init__(self, *, d_model: int, kernel_size: int, rngs: nnx.Rngs):
    del rngs
    self.kernel = nnx.Param(jnp.zeros((kernel_size, d_model)).at[0].set(1.0))

  def __call__(self, x: Array) -> Array:
    kernel_KxD = self.kernel[...]
    seq_len = x.shape[1]
    padded = jnp.pad(x, ((0, 0), (kernel_KxD.shape[0] - 1, 0), (0, 0)))
    # out_t = sum_j w_j * x_{t-j}
    return sum(kernel_KxD[j] * padded[:, kernel_KxD.shape[0] - 1 - j:][:, :seq_len]
               for j in range(kernel_KxD.shape[0]))


class MixerBlock(nnx.Module):
  """Pre-LayerNorm block: ``x + mixer(conv(LN(x)))``, then ``x + Mlp(LN(x))``. [B, L, D].

  Example:
    >>> from attn_jax.nn.mixers import make_mixer
    >>> block = MixerBlock(mixer=make_mixer("attention", d_model=16, rngs=nnx.Rngs(0)),
    ...                    d_model=16, d_ff=32, short_conv=4, rngs=nnx.Rngs(0))
    >>> block(jnp.ones((2, 8, 16))).shape  # [B, L, D]
    (2, 8, 16)
  """

  def __init__(self, *, mixer: nnx.Module, d_model: int, d_ff: int, short_conv: int,
               rngs: nnx.Rngs):
    self.mixer_norm = nnx.LayerNorm(d_model, rngs=rngs)
    self.conv = ShortConv(d_model=d_model, kernel_size=short_conv, rngs=rngs) \
        if short_conv > 1 else None
    self.mixer = mixer
    self.mlp_norm = nnx.LayerNorm(d_model, rngs=rngs)
    self.mlp = Mlp(d_model=d_model, d_ff=d_ff, dropout_rate=0.0, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    h = self.mixer_norm(x)
    if self.conv is not None:
      h = self.conv(h)
    x = x + self.mixer(h)
    return x + self.mlp(self.mlp_norm(x))


class MixerModel(nnx.Module):
  """Tokens int [B, L] -> logits [B, L, vocab_size] through ``num_layers`` `MixerBlock`s whose
  mixer is ``mixer`` (one of `MIXERS`; the keywords of `make_mixer` size it).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> model = MixerModel(vocab_size=10, max_len=32, d_model=8, num_layers=2, d_ff=16,
    ...                    mixer="sliding_window", window=4, rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 32), jnp.int32)).shape
    (2, 32, 10)
    >>> model.state_size(32)  # 2 layers x (window 2 w d + the convolution's 3 d)
    176
  """

  def __init__(self, *, vocab_size: int, max_len: int, d_model: int, num_layers: int,
               d_ff: int, mixer: str, num_heads: int = 2, key_dim: int = 16, window: int = 16,
               chunk_size: int = 64, short_conv: int = 4, positional: str = "rope",
               rngs: nnx.Rngs):
    if min(vocab_size, max_len, d_model, num_layers, d_ff) <= 0 or short_conv < 0:
      raise ValueError("vocab_size, max_len, d_model, num_layers and d_ff must be positive and "
                       f"short_conv >= 0; got {vocab_size}, {max_len}, {d_model}, {num_layers}, "
                       f"{d_ff}, {short_conv}")
    self.max_len, self.mixer_name = max_len, mixer
    self.embed = nnx.Embed(vocab_size, d_model, rngs=rngs)
    self.blocks = nnx.List([
        MixerBlock(mixer=make_mixer(mixer, d_model=d_model, num_heads=num_heads,
                                    key_dim=key_dim, window=window, chunk_size=chunk_size,
                                    positional=positional, rngs=rngs),
                   d_model=d_model, d_ff=d_ff, short_conv=short_conv, rngs=rngs)
        for _ in range(num_layers)])
    self.final_norm = nnx.LayerNorm(d_model, rngs=rngs)
    self.classifier = nnx.Linear(d_model, vocab_size, rngs=rngs)

  def __call__(self, tokens: Array) -> Array:
    if tokens.ndim != 2 or tokens.shape[1] > self.max_len:
      raise ValueError(f"tokens must be [B, L] with L <= max_len {self.max_len}; got "
                       f"{tokens.shape}")
    x = self.embed(tokens)  # [B, L, D]
    for block in self.blocks:
      x = block(x)
    return self.classifier(self.final_norm(x))  # [B, L, vocab_size]

  def state_size(self, seq_len: int) -> int:
    """Floats of recurrent state per sequence at length ``seq_len``, summed over the layers: each
    mixer's, plus the short convolution's last ``short_conv - 1`` inputs."""
    return sum(block.mixer.state_size(seq_len)
               + (0 if block.conv is None else (block.conv.kernel.shape[0] - 1)
                  * block.conv.kernel.shape[1])
               for block in self.blocks)
