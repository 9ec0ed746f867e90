"""The functional core: pure, jit- and vmap-compatible attention primitives."""

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
