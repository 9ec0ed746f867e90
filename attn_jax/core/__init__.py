"""The functional core: pure, jit- and vmap-compatible attention primitives."""

from attn_jax.core import masks, mods, positional, scores
from attn_jax.core.attention import attend, combine, multi_head_attend
from attn_jax.core.scores import SCORES, ScoreFn, get_score
from attn_jax.core.softmax import masked_softmax

__all__ = [
    "SCORES", "ScoreFn", "attend", "combine", "get_score", "masked_softmax", "masks", "mods",
    "multi_head_attend", "positional", "scores",
]
