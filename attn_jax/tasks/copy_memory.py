"""The copying-memory task (Arjovsky, Shah & Bengio 2016, "Unitary Evolution RNNs", section 4.1).

The model reads 10 data symbols, waits ``delay`` steps, sees a delimiter and must then write the
10 symbols back, in order. Layout of one example (``L = delay + 20``)::

    position   0..9          10..delay+8      delay+9      delay+10..L-1
    inputs     s_0..s_9      blank (0)        delim (9)    blank (0)
    targets    blank (0) for positions 0..delay+9          s_0..s_9

Tokens: 0 blank, 1-8 data, 9 delimiter (vocab_size 10). The output block sits ``delay + 10``
positions after the symbols it recalls, so ``delay`` is the distance the model must bridge.

A memoryless model that outputs blanks everywhere and the uniform distribution over the 8 data
symbols on the last 10 positions reaches the cross-entropy ``10 ln 8 / (delay + 20)`` (averaged
over all positions); that is the baseline an LSTM is stuck at for long delays (Arjovsky et al.
2016, figure 1; Bai et al. 2018, table 1).
"""

import math

import jax
import jax.numpy as jnp

from attn_jax.tasks.batch import Batch

BLANK = 0
DELIMITER = 9
NUM_DATA_SYMBOLS = 8
COPY_LENGTH = 10
VOCAB_SIZE = 10


def copy_memory_seq_len(delay: int) -> int:
  """Sequence length ``L = delay + 20`` of a copy_memory example.

  Args:
    delay: the task's delay (``delay - 1`` blanks and the delimiter between the symbols and
      their recall).

  Returns:
    The sequence length.

  Example:
    >>> copy_memory_seq_len(50)
    70
  """
  return delay + 2 * COPY_LENGTH


def check_copy_memory_args(*, batch_size: int, delay: int) -> None:
  """Raises ValueError unless ``batch_size >= 1`` and ``delay >= 1`` (static sizes)."""
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"copy_memory: batch_size must be a positive int, got {batch_size!r}")
  if not isinstance(delay, int) or delay < 1:
    # delay - 1 blanks separate the symbols from the delimiter: delay 0 has no layout.
    raise ValueError(f"copy_memory: delay must be an int >= 1, got {delay!r}")


def copy_memory(key: jax.Array, *, batch_size: int, delay: int) -> Batch:
  """Samples a copy_memory batch.

  Args:
    key: a PRNG key; the batch is a function of it alone.
    batch_size: the number of sequences (a static int >= 1).
    delay: a static int >= 1; each recalled symbol is ``delay + 10`` positions after its source.

  Returns:
    Batch(inputs int32 [batch_size, L], targets int32 [batch_size, L], eval_mask bool
    [batch_size, L]) with ``L = delay + 20``; eval_mask is True on the last 10 positions.

  Example:
    >>> batch = copy_memory(jax.random.key(0), batch_size=2, delay=5)
    >>> batch.inputs.shape
    (2, 25)
    >>> bool((batch.targets[:, -10:] == batch.inputs[:, :10]).all())  # recall the 10 symbols
    True
    >>> int(batch.eval_mask[0].sum())
    10
  """
  check_copy_memory_args(batch_size=batch_size, delay=delay)
  seq_len = copy_memory_seq_len(delay)
  symbols_BxC = jax.random.randint(
      key, (batch_size, COPY_LENGTH), 1, NUM_DATA_SYMBOLS + 1, dtype=jnp.int32)

  def blanks(length):
    return jnp.full((batch_size, length), BLANK, jnp.int32)

  inputs_BxL = jnp.concatenate([
      symbols_BxC,
      blanks(delay - 1),
      jnp.full((batch_size, 1), DELIMITER, jnp.int32),
      blanks(COPY_LENGTH),
  ], axis=1)
  targets_BxL = jnp.concatenate([blanks(delay + COPY_LENGTH), symbols_BxC], axis=1)
  eval_mask_BxL = jnp.broadcast_to(jnp.arange(seq_len) >= seq_len - COPY_LENGTH,
                                   (batch_size, seq_len))
  return Batch(inputs_BxL, targets_BxL, eval_mask_BxL)


def copy_memory_baseline_loss(delay: int) -> float:
  """Cross-entropy of the memoryless strategy, averaged over all ``delay + 20`` positions.

  Blanks are predicted with certainty (loss 0) and each of the 10 recalled symbols with the
  uniform distribution over the 8 data symbols (loss ln 8): ``10 ln 8 / (delay + 20)``.

  Args:
    delay: the task's delay.

  Returns:
    The memoryless cross-entropy per position, in nats.

  Example:
    >>> round(copy_memory_baseline_loss(1000), 4)  # Bai et al. 2018's LSTM at T = 1000
    0.0204
  """
  return COPY_LENGTH * math.log(NUM_DATA_SYMBOLS) / copy_memory_seq_len(delay)
