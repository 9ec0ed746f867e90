"""Typed task settings and the `Task` bundle the training loop consumes.

The experiment layer turns a config into a `CopyMemorySpec` or `MqarSpec`; `make_task` binds the
static sizes and returns everything the training loop needs to know about the task, so the loop
never branches on a task's name.
"""

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from attn_jax.tasks.batch import Batch
from attn_jax.tasks.copy_memory import (
    NUM_DATA_SYMBOLS,
    VOCAB_SIZE,
    check_copy_memory_args,
    copy_memory,
    copy_memory_baseline_loss,
    copy_memory_seq_len,
)
from attn_jax.tasks.metrics import copy_memory_metrics, mqar_metrics
from attn_jax.tasks.mqar import check_mqar_args, mqar
from attn_jax.tasks.selective_copy import (
    check_selective_copy_args,
    order_free_accuracy,
    selective_copy,
)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CopyMemorySpec:
  """copy_memory settings: ``delay`` >= 1 (blanks plus delimiter between symbols and recall).

  ``recall_weight`` is the share of the training loss carried by the 10 recall positions; the
  other ``delay + 10`` positions (blank targets) share the rest. The default 1.0 trains the
  recall positions only, as MQAR trains its queries only (Zoology's labels are -100 elsewhere):
  the blank targets carry no information about memory, and their gradients slow the LSTM down
  (docs/experiments.md has the measurements). ``None`` is the plain mean over all positions
  (Arjovsky et al. 2016), in which the recall positions weigh 10 / (delay + 20), 2% at delay
  500. The reported ``loss`` is the recall positions' cross-entropy whatever the weights.

  Example:
    >>> task = make_task(CopyMemorySpec(delay=20))
    >>> task.seq_len, task.distance, task.chance_accuracy
    (40, 20, 0.125)
  """

  delay: int = 100
  recall_weight: float | None = 1.0


@dataclasses.dataclass(frozen=True)
class MqarSpec:
  """MQAR settings (see `attn_jax.tasks.mqar`); ``distractors``: random non-value tokens at the
  non-query positions after the context (Zoology's ``random_non_queries``) instead of blanks.

  Example:
    >>> task = make_task(MqarSpec(seq_len=32, num_pairs=4, vocab_size=16, distractors=True))
    >>> task.sample(jax.random.key(0), 2).inputs.shape
    (2, 32)
  """

  seq_len: int = 64
  num_pairs: int = 4
  vocab_size: int = 64
  distractors: bool = False


@dataclasses.dataclass(frozen=True)
class SelectiveCopySpec:
  """Selective-copying settings (see `attn_jax.tasks.selective_copy`): ``num_tokens`` data
  tokens from ``num_symbols`` symbols among ``context_len`` positions, then copied in order.

  Example:
    >>> task = make_task(SelectiveCopySpec(context_len=48, num_tokens=8, num_symbols=8))
    >>> task.seq_len, task.vocab_size, task.chance_accuracy
    (56, 10, 0.125)
  """

  context_len: int = 48
  num_tokens: int = 8
  num_symbols: int = 8


TaskSpec = CopyMemorySpec | MqarSpec | SelectiveCopySpec


@dataclasses.dataclass(frozen=True)
class Task:
  """A task with its static sizes bound.

  - sample(key, batch_size) -> Batch with arrays [batch_size, seq_len].
  - metrics(logits [B, L, vocab_size], batch) -> dict of float32 scalars, with at least
    ``loss`` and ``accuracy`` (per-token accuracy on ``eval_mask``).
  - loss_weights(batch) -> float32 [B, L]: the training loss is sum(w * ce) / sum(w).
  - distance: the dependency length a sweep plots against (copy: delay; mqar: seq_len).
  - chance_accuracy: the accuracy of a model that ignores the context.
  - reference: constants worth reporting beside the metrics (e.g. the memoryless baseline loss).

  Example:
    >>> task = make_task(CopyMemorySpec(delay=5))
    >>> batch = task.sample(jax.random.key(0), 4)
    >>> metrics = task.metrics(jnp.zeros((4, task.seq_len, task.vocab_size)), batch)
    >>> sorted(metrics)[:2], task.loss_weights(batch).shape
    (['accuracy', 'exact_match'], (4, 25))
  """

  name: str
  sample: Callable[[Array, int], Batch]
  metrics: Callable[[Array, Batch], dict[str, Array]]
  loss_weights: Callable[[Batch], Array]
  vocab_size: int
  seq_len: int
  distance: int
  chance_accuracy: float
  reference: dict[str, float]


def _uniform_weights(batch: Batch) -> Array:
  return jnp.ones(batch.targets.shape, jnp.float32)


def _eval_weights(batch: Batch) -> Array:
  return batch.eval_mask.astype(jnp.float32)


def _recall_weights(batch: Batch, *, recall_weight: float) -> Array:
  """Each row's eval positions share ``recall_weight``, its other positions the rest."""
  eval_BxL = batch.eval_mask.astype(jnp.float32)
  num_eval_Bx1 = jnp.maximum(jnp.sum(eval_BxL, axis=1, keepdims=True), 1.0)
  num_other_Bx1 = jnp.maximum(jnp.sum(1.0 - eval_BxL, axis=1, keepdims=True), 1.0)
  return (recall_weight * eval_BxL / num_eval_Bx1
          + (1.0 - recall_weight) * (1.0 - eval_BxL) / num_other_Bx1)


def _sample_copy(key: Array, batch_size: int, *, delay: int) -> Batch:
  return copy_memory(key, batch_size=batch_size, delay=delay)


def _sample_selective_copy(key: Array, batch_size: int, *, context_len: int, num_tokens: int,
                           num_symbols: int) -> Batch:
  return selective_copy(key, batch_size=batch_size, context_len=context_len,
                        num_tokens=num_tokens, num_symbols=num_symbols)


def _sample_mqar(key: Array, batch_size: int, *, seq_len: int, num_pairs: int,
                 vocab_size: int, distractors: bool) -> Batch:
  return mqar(key, batch_size=batch_size, seq_len=seq_len, num_pairs=num_pairs,
              vocab_size=vocab_size, distractors=distractors)


def make_task(spec: TaskSpec) -> Task:
  """Validates ``spec`` (ValueError naming the bad value) and returns its `Task`.

  The training loss: copy_memory weighs positions as ``spec.recall_weight`` says; mqar trains
  on the query positions only, as Zoology does (its labels are -100 elsewhere): the other
  targets are blanks that carry no information about recall.

  Example:
    >>> task = make_task(CopyMemorySpec(delay=50))
    >>> task.name, task.seq_len, task.vocab_size
    ('copy_memory', 70, 10)
  """
  if isinstance(spec, CopyMemorySpec):
    check_copy_memory_args(batch_size=1, delay=spec.delay)
    if spec.recall_weight is None:
      weights = _uniform_weights
    elif 0.0 < spec.recall_weight <= 1.0:
      weights = functools.partial(_recall_weights, recall_weight=float(spec.recall_weight))
    else:
      raise ValueError("copy_memory: recall_weight must lie in (0, 1] or be None, got "
                       f"{spec.recall_weight!r}")
    return Task(
        name="copy_memory",
        sample=functools.partial(_sample_copy, delay=spec.delay),
        metrics=copy_memory_metrics,
        loss_weights=weights,
        vocab_size=VOCAB_SIZE,
        seq_len=copy_memory_seq_len(spec.delay),
        distance=spec.delay,
        chance_accuracy=1.0 / NUM_DATA_SYMBOLS,
        # The memoryless strategy (blanks right, a uniform guess over the 8 symbols at the
        # recall positions): ln 8 per recalled symbol, 10 ln 8 / L over all positions.
        reference={"baseline_loss": math.log(NUM_DATA_SYMBOLS),
                   "baseline_loss_all_positions": copy_memory_baseline_loss(spec.delay)},
    )
  if isinstance(spec, MqarSpec):
    check_mqar_args(batch_size=1, seq_len=spec.seq_len, num_pairs=spec.num_pairs,
                    vocab_size=spec.vocab_size)
    if not isinstance(spec.distractors, bool):
      raise ValueError(f"mqar: distractors must be a bool, got {spec.distractors!r}")
    num_values = spec.vocab_size - spec.vocab_size // 2
    return Task(
        name="mqar",
        sample=functools.partial(_sample_mqar, seq_len=spec.seq_len, num_pairs=spec.num_pairs,
                                 vocab_size=spec.vocab_size, distractors=spec.distractors),
        metrics=mqar_metrics,
        loss_weights=_eval_weights,
        vocab_size=spec.vocab_size,
        seq_len=spec.seq_len,
        distance=spec.seq_len,
        # Uniform over the value tokens: what a model that ignores the context can do.
        chance_accuracy=1.0 / num_values,
        # A model that learns which values occur in the context but not which key each belongs
        # to guesses among the num_pairs values (loss ln num_pairs): recall starts above it.
        reference={"num_pairs": float(spec.num_pairs),
                   "value_set_accuracy": 1.0 / spec.num_pairs},
    )
  if isinstance(spec, SelectiveCopySpec):
    check_selective_copy_args(batch_size=1, context_len=spec.context_len,
                              num_tokens=spec.num_tokens, num_symbols=spec.num_symbols)
    return Task(
        name="selective_copy",
        sample=functools.partial(_sample_selective_copy, context_len=spec.context_len,
                                 num_tokens=spec.num_tokens, num_symbols=spec.num_symbols),
        # Per-token and whole-block accuracy on the copied positions, as copy_memory reports.
        metrics=mqar_metrics,
        # Trained on the copied positions only (the blank targets carry nothing to recall).
        loss_weights=_eval_weights,
        vocab_size=spec.num_symbols + 2,
        seq_len=spec.context_len + spec.num_tokens,
        distance=spec.context_len + spec.num_tokens,
        chance_accuracy=1.0 / spec.num_symbols,
        # A model that keeps the set of data tokens but not their order.
        reference={"num_tokens": float(spec.num_tokens),
                   "value_set_accuracy": order_free_accuracy(spec.num_tokens,
                                                             spec.num_symbols)},
    )
  raise ValueError(f"unknown task spec {spec!r}: expected CopyMemorySpec, MqarSpec or "
                   "SelectiveCopySpec")
