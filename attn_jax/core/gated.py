"""A gated recurrence with data-dependent decay: the scalar-gated state of Mamba-2 / SSD (Dao & Gu
2024), the simplest gated linear attention (Yang et al. 2023, with one gate per head)::

    S_t = a_t S_{t-1} + k_t v_t^T     [Dk, Dv]       o_t = q_t^T S_t       a_t = exp(log_decay_t)

``log_decay_t <= 0`` is computed from the input at step ``t``, so the state forgets as fast as
the data says. Unrolled, ``o_t = sum_{s <= t} exp(c_t - c_s) (q_t . k_s) v_s`` with ``c`` the
cumulative sum of ``log_decay``: a masked, decayed quadratic form.

Three forms, one head and one example (lift with `jax.vmap`): `gated_quadratic` (the O(L^2)
masked form), `gated_recurrent` (the recurrence, a `lax.scan`) and `gated_chunked` (quadratic
inside chunks, the state carried between chunks, as SSD's chunked algorithm).

Example:
  >>> from attn_jax.core import gated
  >>> q = k = v = jnp.ones((3, 1))  # [L, Dk], [L, Dk], [L, Dv]
  >>> log_decay = jnp.log(jnp.array([1.0, 0.5, 0.5]))  # [L]
  >>> gated.gated_recurrent(q, k, v, log_decay).tolist()
  [[1.0], [1.5], [1.75]]
"""

import jax
import jax.numpy as jnp
from jax import lax

from attn_jax.core.linear_attention import pad_to_chunks

Array = jax.Array


def _check(query: Array, key: Array, value: Array, log_decay: Array) -> None:
  length = query.shape[0]
  if (query.ndim != 2 or query.shape != key.shape or value.ndim != 2
      or value.shape[0] != length or log_decay.shape != (length,)):
    raise ValueError("expected query [L, Dk], key [L, Dk], value [L, Dv], log_decay [L]; got "
                     f"{query.shape}, {key.shape}, {value.shape}, {log_decay.shape}")


def _decay_matrix(cumulative_L: Array) -> Array:
  """``exp(c_t - c_s)`` for s <= t, 0 above the diagonal: [L] -> [L, L]."""
  length = cumulative_L.shape[0]
  causal_LxL = jnp.tril(jnp.ones((length, length), bool))
  # The double where keeps the gradient finite: exp never sees the (positive) upper triangle.
  diff_LxL = jnp.where(causal_LxL, cumulative_L[:, None] - cumulative_L[None, :], 0.0)
  return jnp.where(causal_LxL, jnp.exp(diff_LxL), 0.0)


def gated_quadratic(query: Array, key: Array, value: Array, log_decay: Array) -> Array:
  """The masked, decayed O(L^2) form: query, key [L, Dk], value [L, Dv], log_decay [L] (<= 0)
  -> [L, Dv].

  Example:
    >>> import jax.numpy as jnp
    >>> q = k = jnp.ones((2, 1)); v = jnp.array([[1.0], [1.0]])
    >>> gated_quadratic(q, k, v, jnp.log(jnp.array([1.0, 0.5]))).tolist()  # 0.5 * 1 + 1
    [[1.0], [1.5]]
  """
  _check(query, key, value, log_decay)
  weights_LxL = (query @ key.T) * _decay_matrix(jnp.cumsum(log_decay))
  return weights_LxL @ value


def gated_recurrent(query: Array, key: Array, value: Array, log_decay: Array) -> Array:
  """The recurrence over the state S [Dk, Dv]: [L, Dk] x2, [L, Dv], [L] -> [L, Dv].

  Example:
    >>> import jax.numpy as jnp
    >>> q = k = jnp.ones((2, 1)); v = jnp.array([[1.0], [1.0]])
    >>> gated_recurrent(q, k, v, jnp.log(jnp.array([1.0, 0.5]))).tolist()
    [[1.0], [1.5]]
  """
  _check(query, key, value, log_decay)

  def step(s_KxV, inputs):
    q_K, k_K, v_V, log_a = inputs
    s_KxV = jnp.exp(log_a) * s_KxV + k_K[:, None] * v_V[None, :]
    return s_KxV, q_K @ s_KxV

  init = jnp.zeros((key.shape[-1], value.shape[-1]), value.dtype)
  return lax.scan(step, init, (query, key, value, log_decay))[1]


def gated_chunked(query: Array, key: Array, value: Array, log_decay: Array, *,
                  chunk_size: int = 64) -> Array:
  """Quadratic inside chunks of ``chunk_size`` positions, the decayed state carried between
  chunks: [L, Dk] x2, [L, Dv], [L] -> [L, Dv]. Any L (the last chunk is padded: zero keys and
  values, no decay, after every real position).

  Example:
    >>> import jax.numpy as jnp
    >>> q = k = jnp.ones((3, 1)); v = jnp.ones((3, 1))
    >>> gated_chunked(q, k, v, jnp.log(jnp.array([1.0, 0.5, 0.5])), chunk_size=2).tolist()
    [[1.0], [1.5], [1.75]]
  """
  _check(query, key, value, log_decay)
  length = query.shape[0]
  q_NxCxK, k_NxCxK = pad_to_chunks(query, chunk_size), pad_to_chunks(key, chunk_size)
  v_NxCxV, log_a_NxC = pad_to_chunks(value, chunk_size), pad_to_chunks(log_decay, chunk_size)

  def step(s_KxV, inputs):
    q_CxK, k_CxK, v_CxV, log_a_C = inputs
    cumulative_C = jnp.cumsum(log_a_C)  # decay from the chunk's start to each position
    intra_CxV = ((q_CxK @ k_CxK.T) * _decay_matrix(cumulative_C)) @ v_CxV
    inter_CxV = jnp.exp(cumulative_C)[:, None] * (q_CxK @ s_KxV)
    # Each key's decay from its position to the chunk's end, then the chunk's total decay.
    to_end_C = jnp.exp(cumulative_C[-1] - cumulative_C)
    s_KxV = jnp.exp(cumulative_C[-1]) * s_KxV + (k_CxK * to_end_C[:, None]).T @ v_CxV
    return s_KxV, intra_CxV + inter_CxV

  init = jnp.zeros((key.shape[-1], value.shape[-1]), value.dtype)
  out_NxCxV = lax.scan(step, init, (q_NxCxK, k_NxCxK, v_NxCxV, log_a_NxC))[1]
  return out_NxCxV.reshape(-1, value.shape[-1])[:length]
