"""Recurrent baselines: a stacked LSTM, and an LSTM whose outputs attend over its own past states.

Written for speed on long sequences:

- time-major inside ([L, B, ...]): the scan walks the leading axis, so no per-step transposes;
- all timesteps' input projections happen in one matmul before the recurrence, and the four gates
  are one fused [hidden, 4 * hidden] matmul per step;
- `lstm_recurrence` has a hand-written backward pass: the per-step work is one elementwise
  fusion and one matmul, and the recurrent kernel's gradient is a single [L * B]-deep matmul
  after the loop instead of L small accumulations; its buffers are updated in place;
- `LSTMBaseline` folds the first layer's input projection into the embedding table when the
  vocabulary is small next to the number of tokens (see `LSTMBaseline`).
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from attn_jax.attention import attention_weights, dot_product_attention
from attn_jax.core import batched, scores

Array = jax.Array


def _gates(z_BG: Array, hidden: int):
  """Pre-activations [B, 4H] (input, forget, cell, output) -> the four activations [B, H]."""
  return (jax.nn.sigmoid(z_BG[:, :hidden]), jax.nn.sigmoid(z_BG[:, hidden:2 * hidden]),
          jnp.tanh(z_BG[:, 2 * hidden:3 * hidden]), jax.nn.sigmoid(z_BG[:, 3 * hidden:]))


def _recurrence(gates_in_LBG: Array, recurrent_HG: Array, h0_BH: Array, c0_BH: Array,
                save: bool):
  """The forward loop from (h0, c0); with ``save`` also the residuals of the backward pass."""
  seq_len, batch, four_h = gates_in_LBG.shape
  hidden = four_h // 4
  dtype = gates_in_LBG.dtype
  w_HG = recurrent_HG.astype(dtype)  # the buffers hold one dtype: the inputs'
  h0_BH, c0_BH = h0_BH.astype(dtype), c0_BH.astype(dtype)
  if seq_len == 0:
    empty_LBH = jnp.zeros((0, batch, hidden), dtype)
    return empty_LBH, (empty_LBH, empty_LBH, gates_in_LBG, recurrent_HG, h0_BH)

  def step(t, carry):
    h_BH, c_BH, buf_LBG, h_LBH, c_prev_LBH = carry
    i, f, g, o = _gates(buf_LBG[t] + h_BH @ w_HG, hidden)
    if save:  # c_{t-1}, and the activations over step t's slot of the (dead) input gates
      c_prev_LBH = lax.dynamic_update_index_in_dim(c_prev_LBH, c_BH, t, 0)
      buf_LBG = lax.dynamic_update_index_in_dim(buf_LBG, jnp.concatenate([i, f, g, o], -1), t, 0)
    c_BH = f * c_BH + i * g
    h_BH = o * jnp.tanh(c_BH)
    return h_BH, c_BH, buf_LBG, lax.dynamic_update_index_in_dim(h_LBH, h_BH, t, 0), c_prev_LBH

  zeros_LBH = jnp.zeros((seq_len, batch, hidden), dtype)
  # fori_loop with explicit buffers rather than scan's stacked outputs: XLA updates them in place,
  # where scan would allocate (and zero) fresh [L, B, 4H] buffers.
  _, _, acts_LBG, h_LBH, c_prev_LBH = lax.fori_loop(
      0, seq_len, step, (h0_BH, c0_BH, gates_in_LBG, zeros_LBH, zeros_LBH if save else None))
  return h_LBH, (h_LBH, c_prev_LBH, acts_LBG, recurrent_HG, h0_BH)


@jax.custom_vjp
def _lstm_recurrence(gates_in_LBG, recurrent_HG, h0_BH, c0_BH):
  return _recurrence(gates_in_LBG, recurrent_HG, h0_BH, c0_BH, save=False)[0]


def lstm_recurrence(gates_in_LBG: Array, recurrent_HG: Array,
                    initial_state: tuple[Array, Array] | None = None) -> Array:
  """The LSTM recurrence, given every step's input contribution.

  gates_in: [L, B, 4H] (x_t W_in + b, gates ordered input, forget, cell, output);
  recurrent: [H, 4H]; initial_state: (h0, c0), each [B, H] (None: zeros). Returns the hidden
  states [L, B, H]. Equal to a `lax.scan` of the cell; its VJP is hand-written (forward-mode
  differentiation is not supported).
  """
  if initial_state is None:
    zeros_BH = jnp.zeros(gates_in_LBG.shape[1:2] + (recurrent_HG.shape[0],), gates_in_LBG.dtype)
    initial_state = (zeros_BH, zeros_BH)
  return _lstm_recurrence(gates_in_LBG, recurrent_HG, *initial_state)


def _recurrence_fwd(gates_in_LBG, recurrent_HG, h0_BH, c0_BH):
  out, residuals = _recurrence(gates_in_LBG, recurrent_HG, h0_BH, c0_BH, save=True)
  # Empty arrays carry the initial state's own dtypes, for its cotangents.
  return out, (residuals, jnp.zeros((0,), h0_BH.dtype), jnp.zeros((0,), c0_BH.dtype))


def _recurrence_bwd(saved, dh_LBH):
  (h_LBH, c_prev_LBH, acts_LBG, recurrent_HG, h0_BH), h0_like, c0_like = saved
  h0_dtype, c0_dtype = h0_like.dtype, c0_like.dtype
  seq_len, batch, hidden = h_LBH.shape
  if seq_len == 0:
    return (jnp.zeros_like(acts_LBG), jnp.zeros_like(recurrent_HG),
            jnp.zeros(h0_BH.shape, h0_dtype), jnp.zeros(h0_BH.shape, c0_dtype))
  dh_LBH = dh_LBH.astype(h_LBH.dtype)
  w_HG = recurrent_HG.astype(h_LBH.dtype)

  def step(k, carry):
    t = seq_len - 1 - k
    dh_next_BH, dc_next_BH, dz_next_BG, buf_LBG = carry
    # Write step t+1's gate gradient first, into the slot the previous iteration read, then read
    # slot t: every read of the buffer follows its write, so XLA updates it in place (reading
    # first makes it copy all [L, B, 4H] of it every step).
    buf_LBG = lax.dynamic_update_index_in_dim(buf_LBG, dz_next_BG, jnp.minimum(t + 1, seq_len - 1),
                                              0)
    acts_BG = buf_LBG[t]
    i, f, g, o = (acts_BG[:, j * hidden:(j + 1) * hidden] for j in range(4))
    c_prev_BH = c_prev_LBH[t]
    tanh_c_BH = jnp.tanh(f * c_prev_BH + i * g)
    dh_BH = dh_LBH[t] + dh_next_BH
    dc_BH = dc_next_BH + dh_BH * o * (1 - tanh_c_BH * tanh_c_BH)
    # d(pre-activation) of each gate: sigmoid' = s (1 - s), tanh' = 1 - t^2.
    dz_BG = jnp.concatenate([dc_BH * g * i * (1 - i), dc_BH * c_prev_BH * f * (1 - f),
                             dc_BH * i * (1 - g * g), dh_BH * tanh_c_BH * o * (1 - o)], -1)
    return dz_BG @ w_HG.T, dc_BH * f, dz_BG, buf_LBG

  zeros_BH = jnp.zeros((batch, hidden), h_LBH.dtype)
  # The gate gradients overwrite the saved activations slot by slot (last step first). After
  # step 0 the carry holds the gradients of the initial state: dh0 = dz_0 W^T, dc0 = dc_0 f_0.
  dh0_BH, dc0_BH, dz_first_BG, buf_LBG = lax.fori_loop(
      0, seq_len, step, (zeros_BH, zeros_BH, acts_LBG[seq_len - 1], acts_LBG))
  dz_LBG = lax.dynamic_update_index_in_dim(buf_LBG, dz_first_BG, 0, 0)
  h_prev_LBH = jnp.concatenate([h0_BH[None], h_LBH[:-1]], axis=0)
  # One [L * B]-deep matmul for the recurrent kernel: sum_t h_{t-1}^T dz_t -> [H, 4H].
  d_recurrent_HG = jnp.einsum("lbh,lbg->hg", h_prev_LBH, dz_LBG)
  return (dz_LBG, d_recurrent_HG.astype(recurrent_HG.dtype), dh0_BH.astype(h0_dtype),
          dc0_BH.astype(c0_dtype))


_lstm_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


class LSTMLayer(nnx.Module):
  """One LSTM layer over a whole sequence (Hochreiter & Schmidhuber 1997, with a forget gate).

  [B, L, in_features] -> outputs [B, L, hidden_size] (or [L, B, ...] with ``time_major``). Gates
  are ordered (input, forget, cell, output); the forget gate's bias starts at 1 (Jozefowicz et
  al. 2015) so memories persist early in training.

  Args:
    in_features: the input width D.
    hidden_size: the state width H.
    rngs: the parameters' random streams.

  Example:
    >>> layer = LSTMLayer(3, 8, rngs=nnx.Rngs(0))
    >>> x = jnp.ones((2, 5, 3))  # [B, L, in_features]
    >>> layer(x).shape  # [B, L, H]
    (2, 5, 8)
    >>> h0 = c0 = jnp.zeros((2, 8))
    >>> bool(jnp.allclose(layer(x, initial_state=(h0, c0)), layer(x)))  # None is zeros
    True
  """

  def __init__(self, in_features: int, hidden_size: int, *, rngs: nnx.Rngs):
    self.hidden_size = hidden_size
    self.input_kernel = nnx.Param(
        nnx.initializers.lecun_normal()(rngs.params(), (in_features, 4 * hidden_size)))
    self.recurrent_kernel = nnx.Param(
        nnx.initializers.orthogonal()(rngs.params(), (hidden_size, 4 * hidden_size)))
    self.bias = nnx.Param(jnp.zeros((4 * hidden_size,)).at[hidden_size:2 * hidden_size].set(1.0))

  def input_gates(self, x_LBD: Array) -> Array:
    """Every step's input contribution in one matmul: [L, B, D] -> [L, B, 4H]."""
    seq_len, batch, in_features = x_LBD.shape
    # A plain 2-D matmul on the contiguous [L * B, D] view: no transposed operands for XLA.
    gates = jnp.reshape(x_LBD, (seq_len * batch, in_features)) @ self.input_kernel[...]
    return jnp.reshape(gates + self.bias[...], (seq_len, batch, 4 * self.hidden_size))

  def __call__(self, x: Array, *, time_major: bool = False,
               initial_state: tuple[Array, Array] | None = None) -> Array:
    """x: [B, L, in_features] (or [L, B, in_features]) -> hidden states [B, L, H] (or [L, B, H]),
    from ``initial_state`` (h0, c0), each [B, H] (None: zeros)."""
    x_LBD = x if time_major else jnp.swapaxes(x, 0, 1)
    h_LBH = lstm_recurrence(self.input_gates(x_LBD), self.recurrent_kernel[...], initial_state)
    return h_LBH if time_major else jnp.swapaxes(h_LBH, 0, 1)


class LSTMBaseline(nnx.Module):
  """Embedding -> stacked LSTM -> per-token classifier: int tokens [B, L] -> logits [B, L, V].

  Runs time-major inside and transposes only the logits. ``fold_embedding`` (default: when
  ``4 * vocab_size <= B * L``) computes the first layer's input gates as rows of the table
  ``embedding @ W_in + b`` [V, 4H] looked up per token, which equals ``embed(tokens) @ W_in + b``
  but costs a [V, D] x [D, 4H] matmul instead of a [B * L, D] x [D, 4H] one (forward and
  backward); the rule folds only where that saves at least three quarters of the work.

  Args:
    vocab_size: V, the token vocabulary (inputs and outputs).
    hidden_size: H, the state width of every layer.
    num_layers: stacked LSTM layers.
    embed_dim: the embedding width (default ``hidden_size``).
    fold_embedding: fold the embedding into the first layer's input gates (None: when it saves
      work, see above); the result is the same either way.
    rngs: the parameters' random streams.

  Example:
    >>> model = LSTMBaseline(vocab_size=10, hidden_size=16, num_layers=2, rngs=nnx.Rngs(0))
    >>> tokens = jnp.zeros((4, 7), jnp.int32)  # [B, L]
    >>> model(tokens).shape  # logits [B, L, V]
    (4, 7, 10)
    >>> model.hidden_states(tokens).shape  # time-major [L, B, H]
    (7, 4, 16)
  """

  def __init__(self, *, vocab_size: int, hidden_size: int, num_layers: int = 1,
               embed_dim: int | None = None, fold_embedding: bool | None = None,
               rngs: nnx.Rngs):
    if min(vocab_size, hidden_size, num_layers) <= 0:
      raise ValueError(f"vocab_size, hidden_size and num_layers must be positive; got "
                       f"{vocab_size}, {hidden_size}, {num_layers}")
    embed_dim = hidden_size if embed_dim is None else embed_dim
    self.vocab_size, self.fold_embedding = vocab_size, fold_embedding
    self.embed = nnx.Embed(vocab_size, embed_dim, rngs=rngs)
    self.layers = nnx.List([
        LSTMLayer(embed_dim if i == 0 else hidden_size, hidden_size, rngs=rngs)
        for i in range(num_layers)])
    self.classifier = nnx.Linear(hidden_size, vocab_size, rngs=rngs)

  def hidden_states(self, tokens: Array,
                    initial_states: Sequence[tuple[Array, Array]] | None = None) -> Array:
    """tokens: int [B, L] -> the last layer's hidden states, time-major [L, B, H].

    initial_states: one (h0, c0) per layer, each [B, H] (None: every layer starts at zeros).
    """
    if initial_states is None:
      initial_states = [None] * len(self.layers)
    if len(initial_states) != len(self.layers):
      raise ValueError(f"initial_states needs one (h0, c0) per layer ({len(self.layers)}); got "
                       f"{len(initial_states)}")
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [B, L]; got {tokens.shape}")
    first = self.layers[0]
    fold = self.fold_embedding
    if fold is None:
      fold = 4 * self.vocab_size <= tokens.size
    if fold:
      table_VG = self.embed.embedding[...] @ first.input_kernel[...] + first.bias[...]
      gates_LBG = jnp.take(table_VG, tokens.T, axis=0)  # [L, B, 4H]
    else:
      gates_LBG = first.input_gates(jnp.swapaxes(self.embed(tokens), 0, 1))
    x_LBH = lstm_recurrence(gates_LBG, first.recurrent_kernel[...], initial_states[0])
    for layer, state in zip(self.layers[1:], initial_states[1:], strict=True):
      x_LBH = layer(x_LBH, time_major=True, initial_state=state)
    return x_LBH

  def __call__(self, tokens: Array,
               initial_states: Sequence[tuple[Array, Array]] | None = None) -> Array:
    """tokens: int [B, L] -> logits [B, L, vocab_size]; initial_states as in `hidden_states`."""
    # Classify time-major and transpose the [L, B, V] logits: V is the narrowest axis in sight.
    return jnp.swapaxes(self.classifier(self.hidden_states(tokens, initial_states)), 0, 1)


class LSTMWithAttention(nnx.Module):
  """An LSTM whose output at each step attends over its own states so far (Bahdanau's bridge).

  States h_1..h_L come from the LSTM; step t's query h_t scores every h_j, j <= t, with the
  additive score v . tanh(W_q h_t + W_k h_j) (Bahdanau et al. 2015); the context
  c_t = sum_j a_tj h_j joins h_t in an attentional hidden state tanh(W_c [h_t; c_t]) (Luong et
  al. 2015) that feeds the classifier. int tokens [B, L] -> logits [B, L, vocab_size].

  Args:
    attention_hidden: width of the score (default hidden_size).
    score: "additive" (Bahdanau's v . tanh(W_q h_t + W_k h_j), over the states themselves) or
      "dot": one scaled dot-product head of width A = attention_hidden over the states (query
      W_q h_t, key W_k h_j, value W_v h_j, all [H, A]; Luong's multiplicative score in low-rank
      form), whose context has width A. The dot head holds [L, L] logits per example where the
      additive score holds [L, L, A] and mixes [L, L] x [L, H]: several times cheaper on long
      sequences.
    attention_implementation: "reference" (additive: the vmapped single-head path, holding
      [L, L, A] per example; dot: `attn_jax.dot_product_attention`'s default) or "chunked" (the
      memory-efficient kernel, for either score).
    vocab_size: V, the token vocabulary.
    hidden_size: H, the LSTM's state width.
    num_layers: stacked LSTM layers under the attention.
    rngs: the parameters' random streams.

  Example:
    >>> model = LSTMWithAttention(vocab_size=10, hidden_size=16, score="dot",
    ...                           attention_hidden=8, rngs=nnx.Rngs(0))
    >>> logits, weights = model(jnp.zeros((2, 6), jnp.int32), return_weights=True)
    >>> logits.shape, weights.shape  # [B, L, V], causal weights [B, L, L]
    ((2, 6, 10), (2, 6, 6))
    >>> bool(jnp.allclose(weights.sum(-1), 1.0)), float(weights[0, 0, 1])  # step 0 sees itself
    (True, 0.0)
  """

  def __init__(self, *, vocab_size: int, hidden_size: int, num_layers: int = 1,
               attention_hidden: int | None = None, attention_implementation: str = "reference",
               score: str = "additive", rngs: nnx.Rngs):
    if attention_implementation not in ("reference", "chunked"):
      raise ValueError(f"attention_implementation must be 'reference' or 'chunked'; got "
                       f"{attention_implementation!r}")
    if score not in ("additive", "dot"):
      raise ValueError(f"score must be 'additive' or 'dot'; got {score!r}")
    self.lstm = LSTMBaseline(vocab_size=vocab_size, hidden_size=hidden_size,
                             num_layers=num_layers, rngs=rngs)
    hidden = hidden_size if attention_hidden is None else attention_hidden
    init = nnx.initializers.lecun_normal()
    params = {"w_query": init(rngs.params(), (hidden_size, hidden)),
              "w_key": init(rngs.params(), (hidden_size, hidden))}
    if score == "additive":
      params["v"] = nnx.initializers.normal(hidden**-0.5)(rngs.params(), (hidden,))
    else:
      params["w_value"] = init(rngs.params(), (hidden_size, hidden))
    self.score_params = nnx.Param(params)
    context_size = hidden_size if score == "additive" else hidden
    self.attentional = nnx.Linear(hidden_size + context_size, hidden_size, rngs=rngs)
    self.attention_implementation = attention_implementation
    self.score = score

  def __call__(self, tokens: Array, *, return_weights: bool = False):
    """tokens: int [B, L] -> logits [B, L, vocab_size] (and weights [B, L, L] if asked)."""
    x = jnp.swapaxes(self.lstm.hidden_states(tokens), 0, 1)  # [B, L, H]
    states_BL1H = x[:, :, None, :]  # one head: [B, L, 1, H]
    params = self.score_params.get_value()
    seq_len = tokens.shape[1]
    weights = None
    if self.score == "dot":
      context, weights = self._dot_attention(x, params, return_weights)
    elif self.attention_implementation == "chunked" and not return_weights:
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

  def _dot_attention(self, x_BLH: Array, params, return_weights: bool):
    """The dot head: -> context [B, L, 1, A] (and weights [B, 1, L, L] if asked)."""
    # One head of width A: [B, L, H] x [H, A] -> [B, L, 1, A] for queries, keys and values.
    query_BL1A, key_BL1A, value_BL1A = (
        (x_BLH @ params[name])[:, :, None, :] for name in ("w_query", "w_key", "w_value"))
    if return_weights:
      weights_B1LL = attention_weights(query_BL1A, key_BL1A, is_causal=True)
      # [B, 1, L, L] x [B, L, 1, A] -> [B, L, 1, A]
      return jnp.einsum("bnts,bsna->btna", weights_B1LL, value_BL1A), weights_B1LL
    implementation = "chunked" if self.attention_implementation == "chunked" else None
    return dot_product_attention(query_BL1A, key_BL1A, value_BL1A, is_causal=True,
                                 implementation=implementation), None
