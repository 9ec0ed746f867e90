"""The masked, numerically stable softmax: the second step of attention."""

import jax
import jax.numpy as jnp

Array = jax.Array


def masked_softmax(logits: Array, mask: Array | None = None, axis: int = -1, *,
                   sink: Array | None = None) -> Array:
  """Softmax over ``axis`` restricted to the positions where ``mask`` is True.

  logits: [..., kv_len] (any float dtype); mask: bool, broadcastable to ``logits`` (True = may
  attend); sink: optional float logit of a virtual position with no value (attention sinks),
  broadcastable to ``logits`` with ``axis`` of size 1. Returns weights of the logits' shape and
  dtype: each row sums to 1 over its allowed positions (less the sink's share), and a row with no
  allowed position, or whose allowed logits are all ``-inf``, is all zeros (not NaN, not uniform).

  - Computed in float32 for low-precision inputs (bf16 exponentials lose most of their digits)
    and cast back.
  - Stable for huge logits: the row maximum over *allowed* positions is subtracted first.
  - The "double where": masked logits are replaced *before* the exponential, so whatever they
    hold (NaN, +-inf, 1e30) reaches neither the value nor the gradient; masked weights are then
    set to exactly zero *after* it, so a fully masked row has zero weights and zero, finite
    gradients.
  - No infinity is ever formed (masked logits are replaced by finite values, not ``-inf``), so
    ``jax_debug_infs`` stays quiet.

  Example:
    >>> import jax.numpy as jnp
    >>> logits = jnp.array([[0.0, 0.0], [1.0, 2.0]])
    >>> masked_softmax(logits, jnp.array([[True, True], [False, False]])).tolist()
    [[0.5, 0.5], [0.0, 0.0]]
  """
  return softmax_with_residual(logits, mask, axis, sink=sink)[0]


def softmax_with_residual(logits: Array, mask: Array | None = None, axis: int = -1, *,
                          sink: Array | None = None) -> tuple[Array, Array]:
  """`masked_softmax` and its log-normaliser: ``(weights, residual)``.

  residual: float32 (or wider), the logits' shape without ``axis``: ``logsumexp`` over the allowed
  positions (and the sink), ``-inf`` for a row that sees nothing (no allowed finite logit, no
  sink). Then ``weights = exp(logits - residual)`` at the allowed positions.

  Example:
    >>> import jax.numpy as jnp
    >>> weights, residual = softmax_with_residual(jnp.array([0.0, 0.0]), sink=jnp.array([0.0]))
    >>> weights.tolist(), round(float(residual), 4)
    ([0.3333333432674408, 0.3333333432674408], 1.0986)
  """
  dtype = logits.dtype
  x = logits.astype(jnp.promote_types(dtype, jnp.float32))
  lowest = jnp.finfo(x.dtype).min  # finite: jax_debug_infs sees no -inf
  if mask is None:
    # No mask: exp(-inf - max) = 0 already; only a row whose logits are all -inf needs a shift.
    allowed = None
    x_max = jnp.max(x, axis=axis, keepdims=True)
    seen = x_max > lowest  # false for a row of -inf (compared, no -inf constant formed)
  else:
    # Masked logits become the lowest finite value, not -inf: whatever they held (NaN, 1e30)
    # never enters the exponential, and exp(lowest - max) is exactly 0.
    allowed = jnp.broadcast_to(mask, x.shape)
    x = jnp.where(allowed, x, lowest)
    x_max = jnp.max(x, axis=axis, keepdims=True)
    # A row that sees nothing, or whose allowed logits are all -inf (a score_mod may set them).
    seen = x_max > lowest
  if sink is not None:
    sink = jnp.asarray(sink, x.dtype)
    x_max = jnp.where(seen, jnp.maximum(x_max, sink), sink)
    seen = jnp.ones_like(seen)
  # A row that sees nothing shifts by 0; the shift carries no gradient (softmax is invariant).
  x_max = jax.lax.stop_gradient(jnp.where(seen, x_max, 0.0))
  if allowed is None and sink is None:
    # The plain case: jax.nn.softmax (its cheaper custom derivative), zeros for a row of -inf.
    weights = jax.nn.softmax(jnp.where(seen, x, 0.0), axis=axis) * seen
    residual = x_max + jnp.log(jnp.sum(jnp.exp(x - x_max), axis=axis, keepdims=True))
    return weights.astype(dtype), jnp.squeeze(residual, axis)  # log(0) = -inf: a row of -inf
  unnormalized = jnp.exp(x - x_max)
  if allowed is not None:  # exact zeros at masked entries (exp(lowest - max) is 0 already)
    unnormalized = jnp.where(allowed, unnormalized, 0.0)
  denom = jnp.sum(unnormalized, axis=axis, keepdims=True)
  if sink is not None:
    denom = denom + jnp.exp(sink - x_max)
  # Rows that see nothing have denom 0: divide by 1 instead, leaving zeros with zero gradient.
  has_mass = denom > 0
  safe_denom = jnp.where(has_mass, denom, 1.0)
  weights = unnormalized / safe_denom
  # -inf where the row sees nothing, formed as log(0) so that no -inf literal exists (it would trip
  # jax_debug_infs on every call, not only on the rows that need it).
  residual = x_max + jnp.log(safe_denom) + jnp.log(has_mass.astype(x.dtype))
  return weights.astype(dtype), jnp.squeeze(residual, axis)
