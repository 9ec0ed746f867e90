"""TransformerEncoder, LSTMBaseline, LSTMWithAttention: shapes, params, causality, parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attn_jax.nn import LSTMBaseline, LSTMLayer, LSTMWithAttention, TransformerEncoder

VOCAB, LEN = 11, 12


def _tokens(batch=2, length=LEN, seed=0):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, VOCAB)


def _count(model) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _encoder(**kw):
  args = dict(vocab_size=VOCAB, max_len=16, num_layers=2, num_heads=2, d_model=8, d_ff=16,
              dropout_rate=0.0, rngs=nnx.Rngs(0))
  return TransformerEncoder(**(args | kw))




@pytest.mark.parametrize("positional", ["sinusoidal", "learned", "rope", "alibi", "relative",
                                        "none"])
def test_encoder_shapes_and_param_count(positional):
  model = _encoder(positional=positional)
  logits, attention = model(_tokens(), return_attention=True)
  assert logits.shape == (2, LEN, VOCAB) and logits.dtype == jnp.float32
  assert len(attention) == 2 and attention[0].shape == (2, 2, LEN, LEN)
  d, ff, layers = 8, 16, 2
  block = (2 * 2 * d) + (d * 3 * d + 2 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d)
  expected = VOCAB * d + layers * block + 2 * d + (d * VOCAB + VOCAB)
  expected += {"learned": 16 * d, "relative": layers * 32 * 2}.get(positional, 0)
  assert _count(model) == expected


@pytest.mark.parametrize("model_fn", [
    lambda: _encoder(causal=True),
    lambda: _encoder(causal=True, positional="rope"),
    lambda: LSTMBaseline(vocab_size=VOCAB, hidden_size=8, num_layers=2, rngs=nnx.Rngs(0)),
    lambda: LSTMWithAttention(vocab_size=VOCAB, hidden_size=8, rngs=nnx.Rngs(0)),
])
def test_causal_receptive_field_by_gradient(model_fn):
  """Output i depends on inputs j <= i only: zero gradient from every later position."""
  model = model_fn()
  tokens = _tokens(batch=1)
  embed = model.embed if hasattr(model, "embed") else model.lstm.embed
  table = embed.embedding[...]
  one_hot = jax.nn.one_hot(tokens, VOCAB)
  i = 5

  def loss(one_hot):
    def lookup(tokens):
      del tokens
      return one_hot @ table
    return _with_lookup(model, embed, lookup, tokens)[0, i].sum()

  grad = jax.grad(loss)(one_hot)
  per_position = np.abs(np.asarray(grad)).sum(-1)[0]
  assert np.all(np.isfinite(per_position))
  assert np.all(per_position[i + 1:] == 0.0)
  assert per_position[:i + 1].sum() > 0.0


def _with_lookup(model, embed, lookup, tokens):
  """Run model with embed's lookup replaced by ``lookup`` (restored afterwards)."""
  cls = type(embed)
  original = cls.__call__
  cls.__call__ = lambda self, tokens: lookup(tokens) if self is embed else original(self, tokens)
  try:
    return model(tokens)
  finally:
    cls.__call__ = original


def test_non_causal_encoder_sees_the_future():
  model = _encoder()
  tokens = _tokens(batch=1)
  changed = tokens.at[0, -1].set((tokens[0, -1] + 1) % VOCAB)
  assert not np.allclose(model(tokens)[0, 0], model(changed)[0, 0])


def test_encoder_dropout_inactive_in_eval():
  model = _encoder(dropout_rate=0.3)
  tokens = _tokens()
  assert not np.allclose(model(tokens), model(tokens))
  model.eval()
  np.testing.assert_array_equal(model(tokens), model(tokens))


def test_encoder_jit_matches_eager():
  model = _encoder(positional="rope")
  tokens = _tokens()
  np.testing.assert_allclose(nnx.jit(lambda m, t: m(t))(model, tokens), model(tokens),
                             atol=1e-5)


def test_encoder_rejects_bad_input():
  with pytest.raises(ValueError, match="d_model"):
    _encoder(num_heads=3)
  with pytest.raises(ValueError, match="max_len"):
    _encoder()(_tokens(length=20))
  with pytest.raises(ValueError, match=r"\[B, L\]"):
    _encoder()(jnp.zeros((LEN,), jnp.int32))


def test_lstm_layer_matches_flax_lstm_cell():
  """The fused LSTM layer equals nnx.RNN(nnx.LSTMCell) with the same weights."""
  cell = nnx.LSTMCell(3, 4, rngs=nnx.Rngs(0))
  ours = LSTMLayer(3, 4, rngs=nnx.Rngs(1))
  gates = "ifgo"
  ours.input_kernel[...] = jnp.concatenate(
      [getattr(cell, "i" + g if g != "f" else "if_").kernel[...] for g in gates], axis=1)
  ours.recurrent_kernel[...] = jnp.concatenate(
      [getattr(cell, "h" + g).kernel[...] for g in gates], axis=1)
  ours.bias[...] = jnp.concatenate([getattr(cell, "h" + g).bias[...] for g in gates])
  x = jax.random.normal(jax.random.key(0), (2, 7, 3))
  expected = nnx.RNN(cell)(x)
  np.testing.assert_allclose(ours(x), expected, atol=1e-5)


def test_lstm_shapes_and_param_count():
  model = LSTMBaseline(vocab_size=VOCAB, hidden_size=8, num_layers=2, rngs=nnx.Rngs(0))
  assert model(_tokens()).shape == (2, LEN, VOCAB)
  lstm = lambda d, h: d * 4 * h + h * 4 * h + 4 * h
  assert _count(model) == VOCAB * 8 + lstm(8, 8) + lstm(8, 8) + 8 * VOCAB + VOCAB


def test_lstm_with_attention_weights_are_causal_distributions():
  model = LSTMWithAttention(vocab_size=VOCAB, hidden_size=8, rngs=nnx.Rngs(0))
  logits, weights = model(_tokens(), return_weights=True)
  assert logits.shape == (2, LEN, VOCAB) and weights.shape == (2, LEN, LEN)
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
  assert np.all(np.triu(np.asarray(weights[0]), k=1) == 0.0)
  np.testing.assert_allclose(model(_tokens()), logits, atol=1e-6)


def test_lstm_recurrence_custom_backward_matches_scan_autodiff():
  """The hand-written backward pass of the fused recurrence equals autodiff through lax.scan."""
  from attn_jax.nn.lstm import lstm_recurrence

  hidden = 4
  gates_in = jax.random.normal(jax.random.key(0), (6, 2, 4 * hidden))  # [L, B, 4H]
  recurrent = 0.5 * jax.random.normal(jax.random.key(1), (hidden, 4 * hidden))

  def scan_reference(gates_in, recurrent):
    def step(carry, g):
      h, c = carry
      i, f, gg, o = jnp.split(g + h @ recurrent, 4, axis=-1)
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      return (h, c), h
    zeros = jnp.zeros((gates_in.shape[1], hidden))
    return jax.lax.scan(step, (zeros, zeros), gates_in)[1]

  np.testing.assert_allclose(lstm_recurrence(gates_in, recurrent),
                             scan_reference(gates_in, recurrent), atol=1e-6)
  cotangent = jax.random.normal(jax.random.key(2), (6, 2, hidden))
  loss = lambda f: lambda g, r: jnp.sum(f(g, r) * cotangent)
  ours = jax.grad(loss(lstm_recurrence), (0, 1))(gates_in, recurrent)
  ref = jax.grad(loss(scan_reference), (0, 1))(gates_in, recurrent)
  for a, b in zip(ours, ref, strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_lstm_folded_embedding_equals_lookup_then_projection():
  tokens = _tokens(batch=4, length=LEN)
  kw = dict(vocab_size=VOCAB, hidden_size=8, num_layers=2, rngs=nnx.Rngs(0))
  folded = LSTMBaseline(fold_embedding=True, **kw)
  plain = LSTMBaseline(fold_embedding=False, **(kw | {"rngs": nnx.Rngs(0)}))
  np.testing.assert_allclose(folded(tokens), plain(tokens), atol=1e-5)
  grad = lambda m: nnx.grad(lambda m: jnp.sum(m(tokens) ** 2))(m)
  for a, b in zip(jax.tree.leaves(grad(folded)), jax.tree.leaves(grad(plain)), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_lstm_recurrence_from_an_initial_state_matches_scan_autodiff():
  """A nonzero (h0, c0): values and all four gradients equal autodiff through lax.scan."""
  from attn_jax.nn.lstm import lstm_recurrence

  hidden, batch = 4, 3
  keys = jax.random.split(jax.random.key(7), 5)
  gates_in = jax.random.normal(keys[0], (5, batch, 4 * hidden))
  recurrent = 0.5 * jax.random.normal(keys[1], (hidden, 4 * hidden))
  h0, c0 = (jax.random.normal(k, (batch, hidden)) for k in keys[2:4])

  def scan_reference(gates_in, recurrent, h0, c0):
    def step(carry, g):
      h, c = carry
      i, f, gg, o = jnp.split(g + h @ recurrent, 4, axis=-1)
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      return (h, c), h
    return jax.lax.scan(step, (h0, c0), gates_in)[1]

  ours_fn = lambda g, r, h, c: lstm_recurrence(g, r, (h, c))
  args = (gates_in, recurrent, h0, c0)
  np.testing.assert_allclose(ours_fn(*args), scan_reference(*args), atol=1e-6)
  cotangent = jax.random.normal(keys[4], (5, batch, hidden))
  loss = lambda f: lambda *a: jnp.sum(f(*a) * cotangent)
  ours = jax.grad(loss(ours_fn), (0, 1, 2, 3))(*args)
  ref = jax.grad(loss(scan_reference), (0, 1, 2, 3))(*args)
  for a, b in zip(ours, ref, strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5)
  # An explicit zero state is the default state.
  zeros = jnp.zeros((batch, hidden))
  np.testing.assert_array_equal(lstm_recurrence(gates_in, recurrent, (zeros, zeros)),
                                lstm_recurrence(gates_in, recurrent))


def test_lstm_baseline_takes_one_initial_state_per_layer():
  model = LSTMBaseline(vocab_size=VOCAB, hidden_size=8, num_layers=2, rngs=nnx.Rngs(0))
  tokens = _tokens()
  zeros = jnp.zeros((tokens.shape[0], 8))
  np.testing.assert_array_equal(model(tokens, [(zeros, zeros)] * 2), model(tokens))
  assert not np.allclose(model(tokens, [(zeros + 1, zeros), (zeros, zeros)]), model(tokens))
  with pytest.raises(ValueError, match="one"):
    model(tokens, [(zeros, zeros)])


def test_lstm_with_dot_attention_is_causal_and_matches_its_weights():
  model = LSTMWithAttention(vocab_size=VOCAB, hidden_size=8, attention_hidden=4, score="dot",
                            rngs=nnx.Rngs(0))
  tokens = _tokens()
  logits, weights = model(tokens, return_weights=True)
  assert logits.shape == (2, LEN, VOCAB) and weights.shape == (2, LEN, LEN)
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
  assert np.all(np.triu(np.asarray(weights[0]), k=1) == 0.0)
  np.testing.assert_allclose(model(tokens), logits, atol=1e-5)  # fused path == weights path
  # Causal: changing every token after position t changes no logit at or before t.
  t = LEN // 2
  changed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 1) % VOCAB)
  np.testing.assert_allclose(model(changed)[:, :t + 1], logits[:, :t + 1], atol=1e-6)
  assert not np.allclose(model(changed)[:, t + 1:], logits[:, t + 1:])
