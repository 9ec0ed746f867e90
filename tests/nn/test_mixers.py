"""The recall zoo's mixers and `MixerModel`: shapes, jit, vmapped seeds, causality by gradient,
state sizes worked out by hand, and the sliding window against full attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attn_jax.nn import mixers

D, L, HEADS, KEY_DIM = 8, 12, 2, 4


def _model(mixer, **kw):
  settings = {"vocab_size": 11, "max_len": L, "d_model": D, "num_layers": 2, "d_ff": 16,
              "mixer": mixer, "num_heads": HEADS, "key_dim": KEY_DIM, "window": 3,
              "chunk_size": 5, **kw}
  return mixers.MixerModel(**settings, rngs=nnx.Rngs(0))


def _tokens(seed=0, batch=2):
  return jax.random.randint(jax.random.key(seed), (batch, L), 0, 11)


@pytest.mark.parametrize("mixer", mixers.MIXERS)
def test_shapes_jit_and_causality_by_gradient(mixer):
  model = _model(mixer)
  tokens = _tokens()
  logits = model(tokens)
  assert logits.shape == (2, L, 11) and np.all(np.isfinite(logits))
  np.testing.assert_allclose(nnx.jit(lambda m, t: m(t))(model, tokens), logits, atol=1e-5)
  # Output t depends on the embeddings of positions <= t only.
  embedded = model.embed(tokens)

  def from_embeddings(x):
    for block in model.blocks:
      x = block(x)
    return model.classifier(model.final_norm(x))

  t = 6
  grad = jax.grad(lambda x: jnp.sum(from_embeddings(x)[:, t]))(embedded)
  assert np.all(np.asarray(grad)[:, t + 1:] == 0.0), mixer
  assert np.any(np.asarray(grad)[:, :t + 1] != 0.0), mixer


@pytest.mark.parametrize("mixer", mixers.MIXERS)
def test_vmapped_seeds_equal_one_seed_at_a_time(mixer):
  tokens = _tokens(1)

  def logits(seed):
    return mixers.MixerModel(vocab_size=11, max_len=L, d_model=D, num_layers=1, d_ff=16,
                             mixer=mixer, num_heads=HEADS, key_dim=KEY_DIM, window=3,
                             chunk_size=5, rngs=nnx.Rngs(jax.random.key(seed)))(tokens)

  stacked = jax.vmap(logits)(jnp.arange(2))
  for seed in range(2):
    np.testing.assert_allclose(stacked[seed], logits(seed), atol=1e-5, rtol=1e-5)


def test_state_sizes_by_hand():
  conv = 3 * D  # the short convolution keeps its last 3 inputs, per layer
  head_dim = D // HEADS
  by_hand = {
      "attention": 2 * L * D + conv,  # the KV cache: keys and values of every position
      "sliding_window": 2 * 3 * D + conv,  # the last w = 3 keys and values
      "linear_attention": HEADS * (KEY_DIM * head_dim + KEY_DIM) + conv,
      "based": HEADS * ((1 + KEY_DIM + KEY_DIM**2) * head_dim + 1 + KEY_DIM + KEY_DIM**2) + conv,
      "gated_linear": HEADS * KEY_DIM * head_dim + conv,
      "lstm": 2 * D + conv,  # h and c
  }
  for mixer, size in by_hand.items():
    assert _model(mixer).state_size(L) == 2 * size, mixer  # two layers
  assert _model("sliding_window", window=100).state_size(L) == _model("attention").state_size(L)
  assert _model("lstm", short_conv=0).state_size(1000) == 2 * 2 * D


def test_sliding_window_covering_the_sequence_is_full_attention():
  tokens = _tokens(2)
  full = _model("attention")(tokens)
  np.testing.assert_allclose(_model("sliding_window", window=L)(tokens), full, atol=1e-5)
  assert not np.allclose(_model("sliding_window", window=2)(tokens), full, atol=1e-3)


def test_sliding_window_sees_exactly_its_window():
  mixer = mixers.SoftmaxAttentionMixer(d_model=D, num_heads=HEADS, window=3, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (1, L, D))
  grad = jax.grad(lambda x: jnp.sum(mixer(x)[0, 8]))(x)
  seen = np.any(np.asarray(grad)[0] != 0.0, axis=-1)
  assert seen.tolist() == [i in (6, 7, 8) for i in range(L)]


def test_bad_mixer_names_and_sizes():
  with pytest.raises(ValueError, match="mixer must be one of"):
    _model("convolution")
  with pytest.raises(ValueError, match="must divide"):
    mixers.LinearAttentionMixer(d_model=7, num_heads=2, key_dim=4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="max_len"):
    _model("lstm")(jnp.zeros((1, L + 1), jnp.int32))
