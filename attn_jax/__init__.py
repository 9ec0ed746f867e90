"""attn_jax: the attention mechanism as composable JAX functions, with Flax NNX modules on top.

``import attn_jax`` pulls in jax, flax, optax, chex and numpy only; the experiment side (absl,
ml_collections, orbax, matplotlib, tqdm) is imported by `attn_jax.training` and `experiments`.
"""

from attn_jax import core, nn
from attn_jax.attention import (
    IMPLEMENTATIONS,
    attention_weights,
    dot_product_attention,
    select_implementation,
)

__version__ = "0.1.0"

__all__ = [
    "IMPLEMENTATIONS", "attention_weights", "core", "dot_product_attention", "nn",
    "select_implementation",
]
