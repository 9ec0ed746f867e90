"""attn_jax: the attention mechanism as composable JAX functions, with Flax NNX modules on top.

``import attn_jax`` pulls in jax, flax, optax, chex and numpy only, and makes `attn_jax.core`,
`attn_jax.nn` and `attn_jax.tasks` available. `attn_jax.training` is not imported here:
``import attn_jax.training`` when you train (it imports orbax only to checkpoint).

Example:
  >>> import attn_jax
  >>> q = k = v = jax.random.normal(jax.random.key(0), (2, 16, 4, 8))  # [B, T, N, H]
  >>> out = attn_jax.dot_product_attention(q, k, v, is_causal=True)
  >>> bool(jnp.allclose(out, jax.nn.dot_product_attention(q, k, v, is_causal=True), atol=1e-5))
  True
  >>> attn_jax.attention_weights(q, k, is_causal=True).shape  # [B, N, T, S]
  (2, 4, 16, 16)
"""

from attn_jax import core, nn, tasks
from attn_jax.attention import (
    IMPLEMENTATIONS,
    attention_weights,
    dot_product_attention,
    select_implementation,
)
from attn_jax.core.block_mask import BlockMask, create_block_mask

__version__ = "0.1.0"

__all__ = [
    "IMPLEMENTATIONS", "BlockMask", "attention_weights", "core", "create_block_mask",
    "dot_product_attention", "nn",
    "select_implementation", "tasks",
]
