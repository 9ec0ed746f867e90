"""The masked, numerically stable softmax: the second step of attention."""

import jax
import jax.numpy as jnp

Array = jax.Array


def masked_softmax(logits: Array, mask: Array | None = None, axis: int = -1) -> Array:
  """Softmax over ``axis`` restricted to the positions where ``mask`` is True.

  logits: [..., kv_len] (any float dtype); mask: bool, broadcastable to ``logits`` (True = may
  attend). Returns weights of the logits' shape and dtype: each row sums to 1 over its allowed
  positions, and a row with no allowed position is all zeros (not NaN, not uniform).

  - Computed in float32 for low-precision inputs (bf16 exponentials lose most of their digits)
    and cast back.
  - Stable for huge logits: the row maximum over *allowed* positions is subtracted first.
  - The "double where": masked logits are replaced *before* the exponential, so whatever they
    hold (NaN, +-inf, 1e30) reaches neither the value nor the gradient; masked weights are then
    set to exactly zero *after* it, so a fully masked row has zero weights and zero, finite
    gradients.
  """
  dtype = logits.dtype
  x = logits.astype(jnp.promote_types(dtype, jnp.float32))
  if mask is None:
    return jax.nn.softmax(x, axis=axis).astype(dtype)
  mask = jnp.broadcast_to(mask, x.shape)
  x = jnp.where(mask, x, -jnp.inf)  # first where: garbage never enters exp
  x_max = jnp.max(x, axis=axis, keepdims=True)
  # A fully masked row has max -inf; shifting by 0 keeps exp(-inf - 0) = 0 instead of NaN.
  x_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(x_max), x_max, 0.0))
  unnormalized = jnp.where(mask, jnp.exp(x - x_max), 0.0)  # second where: exact zeros
  denom = jnp.sum(unnormalized, axis=axis, keepdims=True)
  # Fully masked rows have denom 0: divide by 1 instead, leaving zeros with zero gradient.
  weights = unnormalized / jnp.where(denom > 0, denom, 1.0)
  return weights.astype(dtype)
