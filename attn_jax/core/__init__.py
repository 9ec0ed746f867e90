"""The functional core: pure, jit- and vmap-compatible attention primitives.

Attention for one head of one example is three steps, each a function here: a score
(`attn_jax.core.scores`), `masked_softmax`, and `combine`; `attend` chains them, and
`multi_head_attend` maps it over heads with `jax.vmap`.

Example:
  >>> from attn_jax import core
  >>> q = k = v = jax.random.normal(jax.random.key(0), (5, 8))  # [T, H], one head
  >>> weights = core.masked_softmax(core.scores.dot(q, k))  # [T, S], rows sum to 1
  >>> out = core.combine(weights, v)  # [T, H]
  >>> bool(jnp.allclose(out, core.attend(q, k, v), atol=1e-6))
  True
"""

from attn_jax.core import gated, linear_attention, masks, mods, positional, scores
from attn_jax.core.attention import attend, combine, multi_head_attend
from attn_jax.core.block_mask import BlockMask, create_block_mask
from attn_jax.core.scores import SCORES, ScoreFn, get_score
from attn_jax.core.softmax import masked_softmax

__all__ = [
    "SCORES", "BlockMask", "ScoreFn", "attend", "combine", "create_block_mask", "gated",
    "get_score", "linear_attention",
    "masked_softmax", "masks", "mods",
    "multi_head_attend", "positional", "scores",
]
