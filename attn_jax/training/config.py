"""Plain typed training settings. The experiment layer builds one from a config file; the
library never reads a ConfigDict."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How one model is trained on one task.

  The learning rate warms up linearly from 0 over ``warmup_steps`` and then follows a cosine
  decay to ``learning_rate * end_lr_fraction`` at ``num_steps``; gradients are clipped to a
  global norm of ``grad_clip_norm`` (0 disables clipping) before AdamW. Every field is
  checked when the config is made; a bad value raises ValueError naming it.

  Attributes:
    num_steps: the training budget in steps.
    batch_size: sequences per step.
    learning_rate: the peak learning rate.
    warmup_steps: steps of linear warmup from 0 (< ``num_steps``).
    end_lr_fraction: the learning rate at ``num_steps``, as a fraction of the peak.
    weight_decay: AdamW's decoupled weight decay, on matrices only.
    adam_b2: Adam's second-moment decay.
    grad_clip_norm: the global gradient norm clipped to (0: no clipping).
    eval_every: validation every so many steps (0: never).
    eval_batches: batches of the held-out evaluation and of each validation.
    stop_accuracy: stop once every seed's validation accuracy reaches it (0: never).
    log_every: training metrics every so many steps.
    checkpoint_every: a checkpoint every so many steps and at the end (0: only at the end).
    max_consecutive_nonfinite: consecutive non-finite steps (skipped) before `NonFiniteError`.

  Example:
    >>> config = TrainConfig(num_steps=100, learning_rate=1e-2, warmup_steps=10)
    >>> config.batch_size, config.grad_clip_norm
    (32, 1.0)
    >>> TrainConfig(num_steps=10, warmup_steps=10)
    Traceback (most recent call last):
    ...
    ValueError: train.warmup_steps (10) must be < train.num_steps (10)
  """

  num_steps: int = 1000
  batch_size: int = 32
  learning_rate: float = 1e-3
  warmup_steps: int = 50
  end_lr_fraction: float = 0.1
  weight_decay: float = 0.0
  adam_b2: float = 0.99
  grad_clip_norm: float = 1.0
  # Held-out evaluation: `eval_batches` batches of `batch_size` from a key stream disjoint from
  # the training stream, at the end; every `eval_every` steps (0: never) the same number of
  # batches from a separate validation stream is checked (learning curves, early stopping).
  eval_every: int = 0
  eval_batches: int = 4
  # Stop once every seed's validation accuracy reaches this (0: train all `num_steps`). The
  # budget stays `num_steps`: a run that has solved its task stops spending it.
  stop_accuracy: float = 0.0
  log_every: int = 50
  # Checkpoint every `checkpoint_every` steps and at the end (0: only at the end).
  checkpoint_every: int = 0
  # Stop with an error once this many consecutive steps had a non-finite loss or gradient.
  max_consecutive_nonfinite: int = 10

  def __post_init__(self):
    positive = ("num_steps", "batch_size", "eval_batches", "log_every",
                "max_consecutive_nonfinite")
    non_negative = ("warmup_steps", "eval_every", "checkpoint_every")
    for name in positive:
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"train.{name} must be an int >= 1, got {value!r}")
    for name in non_negative:
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"train.{name} must be an int >= 0, got {value!r}")
    if not self.learning_rate > 0:
      raise ValueError(f"train.learning_rate must be > 0, got {self.learning_rate!r}")
    if not 0.0 <= self.end_lr_fraction <= 1.0:
      raise ValueError(f"train.end_lr_fraction must lie in [0, 1], got {self.end_lr_fraction!r}")
    if not 0.0 <= self.adam_b2 < 1.0:
      raise ValueError(f"train.adam_b2 must lie in [0, 1), got {self.adam_b2!r}")
    if self.weight_decay < 0 or self.grad_clip_norm < 0:
      raise ValueError(
          "train.weight_decay and train.grad_clip_norm must be >= 0, got "
          f"{self.weight_decay!r} and {self.grad_clip_norm!r}")
    if not 0.0 <= self.stop_accuracy <= 1.0:
      raise ValueError(f"train.stop_accuracy must lie in [0, 1], got {self.stop_accuracy!r}")
    if self.stop_accuracy > 0 and self.eval_every == 0:
      raise ValueError("train.stop_accuracy > 0 needs train.eval_every > 0 (the validation "
                       "checks it stops on)")
    if self.warmup_steps >= self.num_steps:
      raise ValueError(
          f"train.warmup_steps ({self.warmup_steps}) must be < train.num_steps "
          f"({self.num_steps})")
