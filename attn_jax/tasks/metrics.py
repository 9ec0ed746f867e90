"""Per-token metrics shared by the tasks, and each task's report.

All metrics reduce in float32 and are jittable; every function takes logits
``[batch, seq_len, vocab_size]`` and a `Batch` whose arrays are ``[batch, seq_len]``.
"""

import jax
import jax.numpy as jnp

from attn_jax.tasks.batch import Batch

Array = jax.Array


def token_cross_entropy(logits: Array, targets: Array) -> Array:
  """Cross-entropy per position: logits [B, L, V], targets int [B, L] -> float32 [B, L]."""
  if logits.shape[:-1] != targets.shape:
    raise ValueError(
        f"logits must be [batch, seq_len, vocab_size] over targets [batch, seq_len]; got "
        f"logits {logits.shape} and targets {targets.shape}")
  log_probs_BxLxV = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs_BxLxV, targets[..., None], axis=-1)[..., 0]


def masked_mean(values: Array, mask: Array) -> Array:
  """Mean of ``values`` over the positions where ``mask`` is True (0 when none is)."""
  mask = jnp.broadcast_to(mask, values.shape)
  total = jnp.sum(jnp.where(mask, values, 0.0))
  return total / jnp.maximum(jnp.sum(mask), 1)


def eval_accuracy(logits: Array, batch: Batch) -> Array:
  """Fraction of ``eval_mask`` positions whose argmax equals the target."""
  correct_BxL = jnp.argmax(logits, axis=-1) == batch.targets
  return masked_mean(correct_BxL.astype(jnp.float32), batch.eval_mask)


def exact_match(logits: Array, batch: Batch) -> Array:
  """Fraction of examples whose every ``eval_mask`` position is right (the whole block)."""
  correct_BxL = jnp.argmax(logits, axis=-1) == batch.targets
  row_ok_B = jnp.all(correct_BxL | ~batch.eval_mask, axis=-1)
  return jnp.mean(row_ok_B.astype(jnp.float32))


def copy_memory_metrics(logits: Array, batch: Batch) -> dict[str, Array]:
  """copy_memory report: ``loss`` is the cross-entropy on the 10 recalled positions (the
  memoryless strategy scores ln 8 there), ``loss_all_positions`` the cross-entropy over all
  ``delay + 20`` positions (the quantity of Arjovsky et al. 2016, comparable to
  `copy_memory_baseline_loss` when the blank targets are trained too), ``accuracy`` per-symbol
  accuracy on the recalled positions (chance 1/8), ``exact_match`` the fraction of examples with
  the whole 10-symbol block right."""
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
  fraction of examples with every query right."""
  return {
      "loss": masked_mean(token_cross_entropy(logits, batch.targets), batch.eval_mask),
      "accuracy": eval_accuracy(logits, batch),
      "exact_match": exact_match(logits, batch),
  }
