"""The model factory: a model name and plain typed settings -> an `nnx.Module`.

The three sequence models of `attn_jax.nn` map tokens int32 [B, L] to logits [B, L, vocab_size];
the task fixes ``vocab_size`` and ``max_len``, the spec everything else.
"""

import dataclasses

from flax import nnx

from attn_jax import nn
from attn_jax.core.positional import SCHEMES as POSITIONAL_SCHEMES


@dataclasses.dataclass(frozen=True)
class TransformerSpec:
  """`attn_jax.nn.TransformerEncoder` settings (pre-LayerNorm encoder blocks).

  Example:
    >>> model = make_model(TransformerSpec(d_model=16, num_heads=2, d_ff=32), vocab_size=10,
    ...                    max_len=20, rngs=nnx.Rngs(0))
    >>> type(model).__name__, model(jnp.zeros((1, 20), jnp.int32)).shape
    ('TransformerEncoder', (1, 20, 10))
  """

  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  d_ff: int = 128
  dropout_rate: float = 0.0
  positional: str = "learned"
  causal: bool = False

  def __post_init__(self):
    _check_positive(self, "d_model", "num_layers", "num_heads", "d_ff")
    if self.d_model % self.num_heads:
      raise ValueError(f"transformer.num_heads ({self.num_heads}) must divide transformer."
                       f"d_model ({self.d_model})")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"transformer.dropout_rate must lie in [0, 1), got {self.dropout_rate!r}")
    if self.positional not in POSITIONAL_SCHEMES:
      raise ValueError(f"transformer.positional must be one of {POSITIONAL_SCHEMES}, got "
                       f"{self.positional!r}")


@dataclasses.dataclass(frozen=True)
class LstmSpec:
  """`attn_jax.nn.LSTMBaseline` settings.

  Example:
    >>> model = make_model(LstmSpec(hidden_size=8), vocab_size=10, max_len=20, rngs=nnx.Rngs(0))
    >>> type(model).__name__, model(jnp.zeros((1, 20), jnp.int32)).shape
    ('LSTMBaseline', (1, 20, 10))
  """

  hidden_size: int = 128
  num_layers: int = 1

  def __post_init__(self):
    _check_positive(self, "hidden_size", "num_layers")


@dataclasses.dataclass(frozen=True)
class LstmAttentionSpec:
  """`attn_jax.nn.LSTMWithAttention` settings. ``attention_hidden`` is the width of the additive
  score (0: hidden_size); "chunked" attention never holds the [L, L, attention_hidden] tensor
  the "reference" path builds.

  Example:
    >>> spec = LstmAttentionSpec(hidden_size=8, score="dot", attention_hidden=4)
    >>> model = make_model(spec, vocab_size=10, max_len=20, rngs=nnx.Rngs(0))
    >>> type(model).__name__, model(jnp.zeros((1, 20), jnp.int32)).shape
    ('LSTMWithAttention', (1, 20, 10))
  """

  hidden_size: int = 128
  attention_hidden: int = 0
  attention_implementation: str = "chunked"
  # "additive" (Bahdanau) or "dot" (Luong's multiplicative score, low rank; much cheaper at
  # long lengths: [L, L] logits instead of [L, L, attention_hidden]).
  score: str = "additive"

  def __post_init__(self):
    _check_positive(self, "hidden_size")
    if self.score not in ("additive", "dot"):
      raise ValueError(f"lstm_attention.score must be 'additive' or 'dot', got {self.score!r}")
    if not isinstance(self.attention_hidden, int) or self.attention_hidden < 0:
      raise ValueError("lstm_attention.attention_hidden must be an int >= 0, got "
                       f"{self.attention_hidden!r}")
    if self.attention_implementation not in ("reference", "chunked"):
      raise ValueError("lstm_attention.attention_implementation must be 'reference' or "
                       f"'chunked', got {self.attention_implementation!r}")


@dataclasses.dataclass(frozen=True)
class MixerSpec:
  """`attn_jax.nn.MixerModel` settings: the recall zoo's shared block around ``mixer`` (one of
  `attn_jax.nn.mixers.MIXERS`). ``d_ff`` 0 means ``2 * d_model``; ``key_dim`` sizes the keys of
  the linear and gated mixers, ``window`` the sliding window, ``short_conv`` the causal
  convolution every block has (0: none).

  Example:
    >>> from flax import nnx
    >>> spec = MixerSpec(mixer="lstm", d_model=16, num_layers=1, short_conv=0)
    >>> make_model(spec, vocab_size=10, max_len=32, rngs=nnx.Rngs(0)).state_size(32)
    32
  """

  mixer: str = "attention"
  d_model: int = 32
  num_layers: int = 2
  d_ff: int = 0
  num_heads: int = 2
  key_dim: int = 16
  window: int = 16
  chunk_size: int = 64
  short_conv: int = 4
  # The attention mixers' positions: "rope" or "none".
  positional: str = "rope"

  def __post_init__(self):
    if self.positional not in ("rope", "none"):
      raise ValueError(f"{self.mixer}.positional must be 'rope' or 'none', got "
                       f"{self.positional!r}")
    if self.mixer not in nn.mixers.MIXERS:
      raise ValueError(f"mixer must be one of {nn.mixers.MIXERS}, got {self.mixer!r}")
    for name in ("d_model", "num_layers", "num_heads", "key_dim", "window", "chunk_size"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{self.mixer}.{name} must be an int >= 1, got {value!r}")
    for name in ("d_ff", "short_conv"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{self.mixer}.{name} must be an int >= 0, got {value!r}")
    if self.d_model % self.num_heads:
      raise ValueError(f"{self.mixer}.num_heads ({self.num_heads}) must divide d_model "
                       f"({self.d_model})")


ModelSpec = TransformerSpec | LstmSpec | LstmAttentionSpec | MixerSpec

# The names configs use, and the spec each one takes.
MODEL_SPECS: dict[str, type] = {
    "transformer": TransformerSpec,
    "lstm": LstmSpec,
    "lstm_attention": LstmAttentionSpec,
}


def _check_positive(spec, *names: str) -> None:
  section = next(k for k, v in MODEL_SPECS.items() if v is type(spec))
  for name in names:
    value = getattr(spec, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{section}.{name} must be an int >= 1, got {value!r}")


def model_spec(name: str, **settings) -> ModelSpec:
  """The spec of model ``name`` (transformer | lstm | lstm_attention) with ``settings``.

  Example:
    >>> model_spec("lstm", hidden_size=64)
    LstmSpec(hidden_size=64, num_layers=1)
  """
  if name not in MODEL_SPECS:
    raise ValueError(f"unknown model {name!r}: expected one of {tuple(MODEL_SPECS)}")
  return MODEL_SPECS[name](**settings)


def make_model(spec: ModelSpec, *, vocab_size: int, max_len: int, rngs: nnx.Rngs) -> nnx.Module:
  """Builds the model ``spec`` describes for a task with ``vocab_size`` tokens and sequences of
  at most ``max_len`` positions.

  Example:
    >>> model = make_model(model_spec("transformer", d_model=16, num_heads=2, d_ff=32),
    ...                    vocab_size=10, max_len=20, rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 20), jnp.int32)).shape  # logits [B, L, vocab_size]
    (2, 20, 10)
  """
  if isinstance(spec, TransformerSpec):
    return nn.TransformerEncoder(
        vocab_size=vocab_size, max_len=max_len, num_layers=spec.num_layers,
        num_heads=spec.num_heads, d_model=spec.d_model, d_ff=spec.d_ff,
        dropout_rate=spec.dropout_rate, positional=spec.positional, causal=spec.causal,
        rngs=rngs)
  if isinstance(spec, LstmSpec):
    return nn.LSTMBaseline(vocab_size=vocab_size, hidden_size=spec.hidden_size,
                           num_layers=spec.num_layers, rngs=rngs)
  if isinstance(spec, LstmAttentionSpec):
    return nn.LSTMWithAttention(
        vocab_size=vocab_size, hidden_size=spec.hidden_size,
        attention_hidden=spec.attention_hidden or None,
        attention_implementation=spec.attention_implementation, score=spec.score, rngs=rngs)
  if isinstance(spec, MixerSpec):
    return nn.MixerModel(
        vocab_size=vocab_size, max_len=max_len, d_model=spec.d_model,
        num_layers=spec.num_layers, d_ff=spec.d_ff or 2 * spec.d_model, mixer=spec.mixer,
        num_heads=spec.num_heads, key_dim=spec.key_dim, window=spec.window,
        chunk_size=spec.chunk_size, short_conv=spec.short_conv, positional=spec.positional,
        rngs=rngs)
  raise ValueError(f"unknown model spec {spec!r}: expected one of {tuple(MODEL_SPECS)}")
