"""Training: typed settings, the model factory, the pure training program and the host loop.

orbax (checkpoints) is imported only when `Checkpointer` is instantiated.

Example:
  A Transformer trained for 3 steps on copying memory, evaluated on held-out batches:

  >>> from attn_jax import nn, tasks, training
  >>> task = tasks.make_task(tasks.CopyMemorySpec(delay=5))
  >>> model_fn = lambda rngs: nn.TransformerEncoder(
  ...     vocab_size=10, max_len=25, num_layers=1, num_heads=2, d_model=8, d_ff=16, rngs=rngs)
  >>> program = training.Program(model_fn, task, training.TrainConfig(
  ...     num_steps=3, batch_size=4, warmup_steps=1))
  >>> result = training.train(program, seed=0)
  >>> result.steps, sorted(result.eval_metrics)
  (3, ['accuracy', 'exact_match', 'loss', 'loss_all_positions'])
"""

from attn_jax.training.checkpoint import Checkpointer
from attn_jax.training.config import TrainConfig
from attn_jax.training.loop import NonFiniteError, TrainResult, check_nonfinite, train, train_seeds
from attn_jax.training.models import (
    MODEL_SPECS,
    LstmAttentionSpec,
    LstmSpec,
    MixerSpec,
    ModelSpec,
    TransformerSpec,
    make_model,
    model_spec,
)
from attn_jax.training.optim import learning_rate_schedule, make_optimizer
from attn_jax.training.program import NonFiniteStats, Program, TrainState

__all__ = [
    "MODEL_SPECS",
    "Checkpointer",
    "LstmAttentionSpec",
    "LstmSpec",
    "MixerSpec",
    "ModelSpec",
    "NonFiniteError",
    "NonFiniteStats",
    "Program",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "TransformerSpec",
    "check_nonfinite",
    "learning_rate_schedule",
    "make_model",
    "make_optimizer",
    "model_spec",
    "train",
    "train_seeds",
]
