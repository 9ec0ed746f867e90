"""Block masks in the modules: TransformerEncoder builds one per forward pass from segment ids
and causality, every layer reuses it; MultiHeadAttention(block_mask=) equals segment_ids=."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attn_jax.core import block_plan, masks
from attn_jax.nn import MultiHeadAttention, TransformerEncoder
from attn_jax.nn.attention import attention_block_mask

IDS = jnp.asarray([[0, 0, 0, 1, 1, 2, 2, 2, 2, 2], [0, 1, 1, 1, 1, 1, 1, 2, 2, 2]])


def test_block_mask_equals_segment_ids_and_the_dense_mask():
  x = jax.random.normal(jax.random.key(0), (2, 10, 8))
  for implementation in ("xla", "chunked"):
    mha = MultiHeadAttention(num_heads=2, in_features=8, implementation=implementation,
                             rngs=nnx.Rngs(0))
    want = mha(x, mask=masks.make_segment_mask(IDS), is_causal=True)
    np.testing.assert_allclose(mha(x, segment_ids=IDS, is_causal=True), want, atol=1e-5)
    bm = attention_block_mask(IDS, is_causal=True)
    np.testing.assert_allclose(mha(x, block_mask=bm, is_causal=True), want, atol=1e-5)


def test_encoder_plans_once_per_forward_pass(monkeypatch):
  calls = []
  summarize = block_plan.summarize
  monkeypatch.setattr(block_plan, "summarize", lambda *a: calls.append(1) or summarize(*a))
  model = TransformerEncoder(vocab_size=11, max_len=16, num_layers=3, num_heads=2, d_model=8,
                             d_ff=16, causal=True, implementation="chunked", rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, 11)
  positions = jnp.asarray([[0, 1, 2, 0, 1, 0, 1, 2, 3, 4], [0, 0, 1, 2, 3, 4, 5, 0, 1, 2]])

  @jax.jit
  def forward(tokens, ids):
    return model(tokens, positions=positions, segment_ids=ids)

  packed = forward(tokens, IDS)
  assert len(calls) == 1  # one plan for the three layers, computed on device (ids traced)
  # Each packed row equals its documents run one by one.
  for row in range(2):
    for doc in range(3):
      where = np.flatnonzero(np.asarray(IDS[row]) == doc)
      alone = model(tokens[row:row + 1, where], positions=positions[row:row + 1, where])
      np.testing.assert_allclose(packed[row, where], alone[0], atol=1e-4)
