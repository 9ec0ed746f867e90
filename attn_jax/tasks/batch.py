"""The one container every task returns."""

from typing import NamedTuple

import jax


class Batch(NamedTuple):
  """One batch of a sequence-to-sequence (token-per-token) task.

  Attributes:
    inputs: int32 [batch_size, seq_len], the tokens the model reads.
    targets: int32 [batch_size, seq_len], the token the model must output at each position.
    eval_mask: bool [batch_size, seq_len], the positions whose accuracy is reported.

  Example:
    >>> batch = attn_jax.tasks.copy_memory(jax.random.key(0), batch_size=2, delay=5)
    >>> type(batch).__name__, batch.inputs.shape, batch.eval_mask.dtype
    ('Batch', (2, 25), dtype('bool'))
  """

  inputs: jax.Array
  targets: jax.Array
  eval_mask: jax.Array
