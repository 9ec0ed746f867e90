"""The optimizer: AdamW with linear warmup, cosine decay and global-norm clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attn_jax.training.config import TrainConfig


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
  """0 -> ``learning_rate`` linearly over ``warmup_steps``, then cosine to
  ``learning_rate * end_lr_fraction`` at ``num_steps``.

  Args:
    config: the training settings.

  Returns:
    An optax schedule: step -> learning rate.

  Example:
    >>> from attn_jax.training import TrainConfig
    >>> schedule = learning_rate_schedule(
    ...     TrainConfig(num_steps=100, learning_rate=1e-2, warmup_steps=10))
    >>> [round(float(schedule(step)), 4) for step in (0, 5, 10, 100)]
    [0.0, 0.005, 0.01, 0.001]
  """
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=config.learning_rate,
      warmup_steps=config.warmup_steps,
      decay_steps=config.num_steps,
      end_value=config.learning_rate * config.end_lr_fraction,
  )


def _decay_weights(rate: float, mask: jax.Array | np.ndarray) -> optax.GradientTransformation:
  """Adds ``rate * mask * params`` to the updates (decoupled weight decay, elementwise mask)."""

  def update(updates, state, params):
    # ``mask`` is a vector for flat parameters, or a pytree (of scalars) mirroring them.
    masks = mask if isinstance(mask, (float, np.ndarray, jax.Array)) else None
    if masks is not None:
      return jax.tree.map(lambda u, p: u + rate * jnp.asarray(masks, u.dtype) * p, updates,
                          params), state
    return jax.tree.map(lambda u, p, m: u + rate * m * p, updates, params, mask), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(config: TrainConfig,
                   decay_mask: float | jax.Array | np.ndarray | None = None,
                   ) -> optax.GradientTransformation:
  """Clipping, Adam scaling, decoupled weight decay, the schedule (AdamW, Loshchilov & Hutter).

  Clipping comes first, so one bad batch cannot blow Adam's moment estimates up. ``decay_mask``
  (1 where weight decay applies, e.g. only on matrices) must match the parameters' structure;
  None decays everything.

  Args:
    config: the training settings (clipping, Adam's b2, weight decay, the schedule).
    decay_mask: where weight decay applies: a scalar, an array like the (flat) parameters, or
      a pytree of scalars mirroring them; None: everywhere.

  Returns:
    An optax gradient transformation.

  Example:
    >>> import optax
    >>> from attn_jax.training import TrainConfig
    >>> tx = make_optimizer(TrainConfig(num_steps=10, learning_rate=0.1, warmup_steps=1))
    >>> params = jnp.ones(3)
    >>> updates, _ = tx.update(jnp.array([1.0, -2.0, 0.5]), tx.init(params), params)
    >>> optax.apply_updates(params, updates)  # step 0 of the warmup: learning rate 0
    Array([1., 1., 1.], dtype=float32)
  """
  parts = []
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(optax.scale_by_adam(b2=config.adam_b2))
  if config.weight_decay > 0:
    parts.append(_decay_weights(config.weight_decay, 1.0 if decay_mask is None else decay_mask))
  parts.append(optax.scale_by_learning_rate(learning_rate_schedule(config)))
  return optax.chain(*parts)
