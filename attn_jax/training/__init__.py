"""Training: typed settings, the model factory, the pure training program and the host loop.

orbax (checkpoints) is imported only when `Checkpointer` is instantiated.
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
