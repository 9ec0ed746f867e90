"""Per-token metrics shared by the tasks, and each task's report.

All metrics reduce in float32 and are jittable; every function takes logits
``[batch, seq_len, vocab_size]`` and a `Batch` whose arrays are ``[batch, seq_len]``.

Example:
  >>> batch = attn_jax.tasks.copy_memory(jax.random.key(0), batch_size=4, delay=5)
  >>> perfect = jax.nn.one_hot(batch.targets, 10) * 100.0  # logits [4, 25, 10]
  >>> float(attn_jax.tasks.copy_memory_metrics(perfect, batch)["accuracy"])
  1.0
"""

import jax
import jax.numpy as jnp

from attn_jax.tasks.batch import Batch

Array = jax.Array


def token_cross_entropy(logits: Array, targets: Array) -> Array:
  """Cross-entropy per position, computed in float32.

  Args:
    logits: [B, L, V].
    targets: int [B, L].

  Returns:
    float32 [B, L]: ``-log softmax(logits)[target]`` at each position.

  Example:
    >>> token_cross_entropy(jnp.zeros((1, 2, 4)), jnp.array([[0, 3]]))  # uniform: ln 4
    Array([[1.3862944, 1.3862944]], dtype=float32)
  """
  if logits.shape[:-1] != targets.shape:
    raise ValueError(
        f"logits must be [batch, seq_len, vocab_size] over targets [batch, seq_len]; got "
        f"logits {logits.shape} and targets {targets.shape}")
  log_probs_BxLxV = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs_BxLxV, targets[..., None], axis=-1)[..., 0]


def masked_mean(values: Array, mask: Array) -> Array:
  """Mean of ``values`` over the positions where ``mask`` is True (0 when none is).

  Args:
    values: float [...].
    mask: bool, broadcastable to ``values``.

  Returns:
    A float32 scalar.

  Example:
    >>> masked_mean(jnp.array([1.0, 2.0, 6.0]), jnp.array([True, False, True]))
    Array(3.5, dtype=float32)
  """
  mask = jnp.broadcast_to(mask, values.shape)
  total = jnp.sum(jnp.where(mask, values, 0.0))
  return total / jnp.maximum(jnp.sum(mask), 1)


def eval_accuracy(logits: Array, batch: Batch) -> Array:
  """Fraction of ``eval_mask`` positions whose argmax equals the target.

  Args:
    logits: [B, L, V].
    batch: the `Batch` the logits were computed on.

  Returns:
    A float32 scalar in [0, 1].

  Example:
    >>> batch = Batch(jnp.zeros((1, 3), int), jnp.array([[0, 1, 2]]),
    ...               jnp.array([[False, True, True]]))
    >>> logits = jax.nn.one_hot(jnp.array([[2, 1, 0]]), 3)  # right at position 1 only
    >>> eval_accuracy(logits, batch)
    Array(0.5, dtype=float32)
  """
  correct_BxL = jnp.argmax(logits, axis=-1) == batch.targets
  return masked_mean(correct_BxL.astype(jnp.float32), batch.eval_mask)


def exact_match(logits: Array, batch: Batch) -> Array:
  """Fraction of examples whose every ``eval_mask`` position is right (the whole block).

  Args:
    logits: [B, L, V].
    batch: the `Batch` the logits were computed on.

  Returns:
    A float32 scalar in [0, 1].

  Example:
    >>> batch = Batch(jnp.zeros((2, 2), int), jnp.array([[1, 1], [1, 1]]),
    ...               jnp.ones((2, 2), bool))
    >>> logits = jax.nn.one_hot(jnp.array([[1, 1], [1, 0]]), 2)  # example 1 has a miss
    >>> exact_match(logits, batch)
    Array(0.5, dtype=float32)
  """
  correct_BxL = jnp.argmax(logits, axis=-1) == batch.targets
  row_ok_B = jnp.all(correct_BxL | ~batch.eval_mask, axis=-1)
  return jnp.mean(row_ok_B.astype(jnp.float32))


def copy_memory_metrics(logits: Array, batch: Batch) -> dict[str, Array]:
  """copy_memory report: ``loss`` is the cross-entropy on the 10 recalled positions (the
  memoryless strategy scores ln 8 there), ``loss_all_positions`` the cross-entropy over all
  ``delay + 20`` positions (the quantity of Arjovsky et al. 2016, comparable to
  `copy_memory_baseline_loss` when the blank targets are trained too), ``accuracy`` per-symbol
  accuracy on the recalled positions (chance 1/8), ``exact_match`` the fraction of examples with
  the whole 10-symbol block right.

  Args:
    logits: [B, L, V] with ``L = delay + 20`` and ``V = 10``.
    batch: the copy_memory `Batch` the logits were computed on.

  Returns:
    A dict of float32 scalars: ``loss``, ``loss_all_positions``, ``accuracy``, ``exact_match``.

  Example:
    >>> batch = attn_jax.tasks.copy_memory(jax.random.key(0), batch_size=8, delay=5)
    >>> metrics = copy_memory_metrics(jnp.zeros((8, 25, 10)), batch)  # uniform logits
    >>> round(float(metrics["loss"]), 4)  # ln 10
    2.3026
  """
  per_token_BxL = token_cross_entropy(logits, batch.targets)
  return {
      "loss": masked_mean(per_token_BxL, batch.eval_mask),
      "loss_all_positions": jnp.mean(per_token_BxL),
      "accuracy": eval_accuracy(logits, batch),
      "exact_match": exact_match(logits, batch),
  }


def mqar_metrics(logits: Array, batch: Batch) -> dict[str, Array]:
  """MQAR report: ``loss`` is the cross-entropy at the query positions (the only positions with
  something to predict, as in Zoology), ``accuracy`` per-query accuracy, ``exact_match`` the
  fraction of examples with every query right.

  Args:
    logits: [B, L, V].
    batch: the MQAR `Batch` the logits were computed on.

  Returns:
    A dict of float32 scalars: ``loss``, ``accuracy``, ``exact_match``.

  Example:
    >>> batch = attn_jax.tasks.mqar(jax.random.key(0), batch_size=4, seq_len=16,
    ...                             num_pairs=2, vocab_size=8)
    >>> metrics = mqar_metrics(jax.nn.one_hot(batch.targets, 8) * 50.0, batch)
    >>> float(metrics["accuracy"]), float(metrics["exact_match"])
    (1.0, 1.0)
  """
  return {
      "loss": masked_mean(token_cross_entropy(logits, batch.targets), batch.eval_mask),
      "accuracy": eval_accuracy(logits, batch),
      "exact_match": exact_match(logits, batch),
  }
