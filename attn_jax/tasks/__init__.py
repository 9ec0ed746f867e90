"""Synthetic long-range tasks: pure functions of a PRNG key returning a `Batch`.

A run's data is a function of (seed, step) alone, so training is reproducible and resumable with
no iterator state.

Example:
  >>> from attn_jax import tasks
  >>> batch = tasks.copy_memory(jax.random.key(0), batch_size=4, delay=50)
  >>> batch.inputs.shape == (4, tasks.copy_memory_seq_len(50))
  True
  >>> task = tasks.make_task(tasks.MqarSpec(seq_len=32, num_pairs=4, vocab_size=16))
  >>> task.sample(jax.random.key(1), 2).inputs.shape
  (2, 32)
"""

from attn_jax.tasks.batch import Batch
from attn_jax.tasks.copy_memory import (
    copy_memory,
    copy_memory_baseline_loss,
    copy_memory_seq_len,
)
from attn_jax.tasks.metrics import (
    copy_memory_metrics,
    eval_accuracy,
    exact_match,
    masked_mean,
    mqar_metrics,
    token_cross_entropy,
)
from attn_jax.tasks.mqar import mqar
from attn_jax.tasks.registry import (
    CopyMemorySpec,
    MqarSpec,
    SelectiveCopySpec,
    Task,
    TaskSpec,
    make_task,
)
from attn_jax.tasks.selective_copy import order_free_accuracy, selective_copy

__all__ = [
    "Batch",
    "CopyMemorySpec",
    "MqarSpec",
    "SelectiveCopySpec",
    "Task",
    "TaskSpec",
    "copy_memory",
    "copy_memory_baseline_loss",
    "copy_memory_metrics",
    "copy_memory_seq_len",
    "eval_accuracy",
    "exact_match",
    "make_task",
    "masked_mean",
    "mqar",
    "mqar_metrics",
    "order_free_accuracy",
    "selective_copy",
    "token_cross_entropy",
]
