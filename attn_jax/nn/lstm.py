"""Recurrent baselines: a stacked LSTM, and an LSTM whose outputs attend over its own past states.

`LSTMLayer` is written for speed on long sequences: all timesteps' input projections happen in one
matmul before the scan, and the four gates are one fused [hidden, 4 * hidden] matmul per step, so
the sequential part of the computation is as small as it can be.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from attn_jax.core import batched, scores

Array = jax.Array


class LSTMLayer(nnx.Module):
  """One LSTM layer over a whole sequence (Hochreiter & Schmidhuber 1997, with a forget gate).

  [B, L, in_features] -> outputs [B, L, hidden_size]. Gates are ordered (input, forget, cell,
  output); the forget gate's bias starts at 1 (Jozefowicz et al. 2015) so memories persist early
  in training.
  """

  def __init__(self, in_features: int, hidden_size: int, *, rngs: nnx.Rngs):
    self.hidden_size = hidden_size
    self.input_kernel = nnx.Param(
        nnx.initializers.lecun_normal()(rngs.params(), (in_features, 4 * hidden_size)))
    self.recurrent_kernel = nnx.Param(
        nnx.initializers.orthogonal()(rngs.params(), (hidden_size, 4 * hidden_size)))
    self.bias = nnx.Param(jnp.zeros((4 * hidden_size,)).at[hidden_size:2 * hidden_size].set(1.0))

  def __call__(self, x: Array) -> Array:
    """x: [B, L, in_features] -> hidden states [B, L, hidden_size] (zero initial state)."""
    batch = x.shape[0]
    # One matmul for every timestep's input contribution: [B, L, D] x [D, 4H] -> [L, B, 4H].
    gates_in_LBG = jnp.einsum("bld,dg->lbg", x, self.input_kernel[...]) + self.bias[...]
    recurrent = self.recurrent_kernel[...]

    def step(carry, gates_in_BG):
      h, c = carry
      gates = gates_in_BG + h @ recurrent  # [B, 4H]: the one sequential matmul per step
      i, f, g, o = jnp.split(gates, 4, axis=-1)
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      return (h, c), h

    zeros = jnp.zeros((batch, self.hidden_size), gates_in_LBG.dtype)
    _, h_LBH = jax.lax.scan(step, (zeros, zeros), gates_in_LBG)
    return jnp.swapaxes(h_LBH, 0, 1)  # [B, L, H]


class LSTMBaseline(nnx.Module):
  """Embedding -> stacked LSTM -> per-token classifier: int tokens [B, L] -> logits [B, L, V]."""

  def __init__(self, *, vocab_size: int, hidden_size: int, num_layers: int = 1,
               embed_dim: int | None = None, rngs: nnx.Rngs):
    if min(vocab_size, hidden_size, num_layers) <= 0:
      raise ValueError(f"vocab_size, hidden_size and num_layers must be positive; got "
                       f"{vocab_size}, {hidden_size}, {num_layers}")
    embed_dim = hidden_size if embed_dim is None else embed_dim
    self.embed = nnx.Embed(vocab_size, embed_dim, rngs=rngs)
    self.layers = nnx.List([
        LSTMLayer(embed_dim if i == 0 else hidden_size, hidden_size, rngs=rngs)
        for i in range(num_layers)])
    self.classifier = nnx.Linear(hidden_size, vocab_size, rngs=rngs)

  def __call__(self, tokens: Array) -> Array:
    """tokens: int [B, L] -> logits [B, L, vocab_size]."""
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [B, L]; got {tokens.shape}")
    x = self.embed(tokens)
    for layer in self.layers:
      x = layer(x)
    return self.classifier(x)


class LSTMWithAttention(nnx.Module):
  """An LSTM whose output at each step attends over its own states so far (Bahdanau's bridge).

  States h_1..h_L come from the LSTM; step t's query h_t scores every h_j, j <= t, with the
  additive score v . tanh(W_q h_t + W_k h_j) (Bahdanau et al. 2015); the context
  c_t = sum_j a_tj h_j joins h_t in an attentional hidden state tanh(W_c [h_t; c_t]) (Luong et
  al. 2015) that feeds the classifier. int tokens [B, L] -> logits [B, L, vocab_size].

  Args:
    attention_hidden: width of the additive score (default hidden_size).
    attention_implementation: "reference" (the vmapped single-head path; holds [L, L,
      attention_hidden] per example) or "chunked" (the memory-efficient kernel).
  """

  def __init__(self, *, vocab_size: int, hidden_size: int, num_layers: int = 1,
               attention_hidden: int | None = None, attention_implementation: str = "reference",
               rngs: nnx.Rngs):
    if attention_implementation not in ("reference", "chunked"):
      raise ValueError(f"attention_implementation must be 'reference' or 'chunked'; got "
                       f"{attention_implementation!r}")
    self.lstm = LSTMBaseline(vocab_size=vocab_size, hidden_size=hidden_size,
                             num_layers=num_layers, rngs=rngs)
    hidden = hidden_size if attention_hidden is None else attention_hidden
    init = nnx.initializers.lecun_normal()
    self.score_params = nnx.Param({
        "w_query": init(rngs.params(), (hidden_size, hidden)),
        "w_key": init(rngs.params(), (hidden_size, hidden)),
        "v": nnx.initializers.normal(hidden**-0.5)(rngs.params(), (hidden,)),
    })
    self.attentional = nnx.Linear(2 * hidden_size, hidden_size, rngs=rngs)
    self.attention_implementation = attention_implementation

  def __call__(self, tokens: Array, *, return_weights: bool = False):
    """tokens: int [B, L] -> logits [B, L, vocab_size] (and weights [B, L, L] if asked)."""
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [B, L]; got {tokens.shape}")
    x = self.lstm.embed(tokens)
    for layer in self.lstm.layers:
      x = layer(x)
    states_BL1H = x[:, :, None, :]  # one head: [B, L, 1, H]
    params = self.score_params.get_value()
    seq_len = tokens.shape[1]
    weights = None
    if self.attention_implementation == "chunked" and not return_weights:
      from attn_jax.core.chunked import chunked_attention  # noqa: PLC0415

      context = chunked_attention(states_BL1H, states_BL1H, states_BL1H, is_causal=True,
                                  score_fn=scores.additive, score_params=params)
    else:
      causal_11LL = jnp.tril(jnp.ones((seq_len, seq_len), bool))[None, None]
      context, weights = batched.reference_attention(
          states_BL1H, states_BL1H, states_BL1H, None, causal_11LL,
          score_fn=functools.partial(scores.additive), params=params, return_weights=True)
    attended = jnp.tanh(self.attentional(jnp.concatenate([x, context[:, :, 0]], axis=-1)))
    logits = self.lstm.classifier(attended)
    return (logits, weights[:, 0]) if return_weights else logits
