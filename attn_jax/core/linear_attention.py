"""Causal linear attention (Katharopoulos et al. 2020, "Transformers are RNNs").

Softmax attention's ``exp(q . k)`` is replaced by a kernel ``phi(q) . phi(k)``, so the causal
output of query ``t`` is a ratio of running sums over the past::

    S_t = S_{t-1} + phi(k_t) v_t^T     [F, Dv]     z_t = z_{t-1} + phi(k_t)     [F]
    o_t = phi(q_t)^T S_t / (phi(q_t)^T z_t + eps)

The state ``(S, z)`` has a fixed size, ``F * Dv + F`` floats per head, whatever the length: this
is what the recall zoo compares against softmax attention's growing key-value cache.

Three forms of the same function, for one head and one example (lift with `jax.vmap`):

- `linear_attention_quadratic`: the O(L^2) masked form ``tril(phi(Q) phi(K)^T) V`` (the
  readable definition);
- `linear_attention_recurrent`: the token-by-token recurrence above, as a `lax.scan`;
- `linear_attention_chunked`: the form fast kernels use: quadratic inside chunks of ``C``
  positions, the state carried from chunk to chunk by a `lax.scan` (``L / C`` steps).

Feature maps: `elu_plus_one` (Katharopoulos et al. 2020) and `taylor` (the second-order Taylor
expansion of ``exp`` of Based, Arora et al. 2024): both positive, so the normaliser never
vanishes.

Example:
  >>> from attn_jax.core import linear_attention as la
  >>> la.feature_dim("taylor", 4)  # 1 + d + d^2
  21
  >>> la.pad_to_chunks(jnp.ones((5, 3)), 4).shape  # [L / C, C, ...]
  (2, 4, 3)
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
FeatureMap = Callable[[Array], Array]


def elu_plus_one(x: Array) -> Array:
  """``elu(x) + 1`` (Katharopoulos et al. 2020): [..., D] -> [..., D], positive.

  Example:
    >>> import jax.numpy as jnp
    >>> elu_plus_one(jnp.array([0.0, 1.0])).tolist()
    [1.0, 2.0]
  """
  return jax.nn.elu(x) + 1.0


def taylor(x: Array) -> Array:
  """Based's feature map (Arora et al. 2024): [..., D] -> [..., 1 + D + D^2] with
  ``phi(q) . phi(k) = 1 + s + s^2 / 2`` for ``s = q . k / sqrt(D)``, the second-order Taylor
  expansion of ``exp(s)``; positive for every ``s``.

  Example:
    >>> import jax.numpy as jnp
    >>> q, k = jnp.array([1.0, 0.0, 0.0, 0.0]), jnp.array([2.0, 0.0, 0.0, 0.0])
    >>> round(float(taylor(q) @ taylor(k)), 6)  # s = 2 / 2 = 1: 1 + 1 + 1/2
    2.5
  """
  dim = x.shape[-1]
  x = x * dim**-0.25  # so that phi(q) . phi(k) sees q . k / sqrt(D)
  second = (x[..., :, None] * x[..., None, :]).reshape(*x.shape[:-1], dim * dim) * 0.5**0.5
  return jnp.concatenate([jnp.ones(x.shape[:-1] + (1,), x.dtype), x, second], axis=-1)


FEATURE_MAPS: dict[str, FeatureMap] = {"elu": elu_plus_one, "taylor": taylor}


def feature_dim(feature_map: str, key_dim: int) -> int:
  """The width ``F`` of ``FEATURE_MAPS[feature_map]`` on keys of width ``key_dim``.

  Example:
    >>> feature_dim("elu", 16), feature_dim("taylor", 16)
    (16, 273)
  """
  if feature_map == "elu":
    return key_dim
  if feature_map == "taylor":
    return 1 + key_dim + key_dim * key_dim
  raise ValueError(f"feature_map must be one of {tuple(FEATURE_MAPS)}, got {feature_map!r}")


def _check(query: Array, key: Array, value: Array) -> None:
  if (query.ndim != 2 or query.shape != key.shape or value.ndim != 2
      or value.shape[0] != query.shape[0]):
    raise ValueError("expected query [L, Dk], key [L, Dk], value [L, Dv]; got "
                     f"{query.shape}, {key.shape}, {value.shape}")


def _finish(numerator: Array, denominator: Array, normalize: bool, eps: float) -> Array:
  return numerator / (denominator[..., None] + eps) if normalize else numerator


def linear_attention_quadratic(query: Array, key: Array, value: Array, *,
                               feature_map: FeatureMap = elu_plus_one, normalize: bool = True,
                               eps: float = 1e-6) -> Array:
  """The masked O(L^2) form: query, key [L, Dk], value [L, Dv] -> [L, Dv].

  Example:
    >>> import jax.numpy as jnp
    >>> q = k = jnp.zeros((2, 1)); v = jnp.array([[1.0], [3.0]])
    >>> linear_attention_quadratic(q, k, v).round(4).tolist()  # running means of v
    [[1.0], [2.0]]
  """
  _check(query, key, value)
  phi_q_LxF, phi_k_LxF = feature_map(query), feature_map(key)
  causal_LxL = jnp.tril(jnp.ones((query.shape[0],) * 2, bool))
  scores_LxL = jnp.where(causal_LxL, phi_q_LxF @ phi_k_LxF.T, 0.0)
  return _finish(scores_LxL @ value, jnp.sum(scores_LxL, axis=-1), normalize, eps)


def linear_attention_recurrent(query: Array, key: Array, value: Array, *,
                               feature_map: FeatureMap = elu_plus_one, normalize: bool = True,
                               eps: float = 1e-6) -> Array:
  """The token-by-token recurrence over the state (S [F, Dv], z [F]): [L, Dk] x2, [L, Dv] ->
  [L, Dv].

  Example:
    >>> import jax.numpy as jnp
    >>> q = k = jnp.zeros((2, 1)); v = jnp.array([[1.0], [3.0]])
    >>> linear_attention_recurrent(q, k, v).round(4).tolist()
    [[1.0], [2.0]]
  """
  _check(query, key, value)
  phi_q_LxF, phi_k_LxF = feature_map(query), feature_map(key)

  def step(carry, inputs):
    s_FxV, z_F = carry
    phi_q_F, phi_k_F, v_V = inputs
    s_FxV = s_FxV + phi_k_F[:, None] * v_V[None, :]
    z_F = z_F + phi_k_F
    return (s_FxV, z_F), (phi_q_F @ s_FxV, phi_q_F @ z_F)

  width = phi_k_LxF.shape[-1]
  init = (jnp.zeros((width, value.shape[-1]), value.dtype), jnp.zeros((width,), value.dtype))
  _, (numerator_LxV, denominator_L) = lax.scan(step, init, (phi_q_LxF, phi_k_LxF, value))
  return _finish(numerator_LxV, denominator_L, normalize, eps)


def pad_to_chunks(x: Array, chunk_size: int) -> Array:
  """[L, ...] -> [L / C, C, ...], zero-padded at the end up to a multiple of ``chunk_size``.
  Causal forms may pad at the end: no real position ever reads a later one.

  Example:
    >>> pad_to_chunks(jnp.arange(5.0), 2)  # [L=5] -> [3, 2], one zero of padding
    Array([[0., 1.],
           [2., 3.],
           [4., 0.]], dtype=float32)
  """
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
  length = x.shape[0]
  padded = -(-length // chunk_size) * chunk_size
  x = jnp.pad(x, [(0, padded - length)] + [(0, 0)] * (x.ndim - 1))
  return x.reshape(padded // chunk_size, chunk_size, *x.shape[1:])


def linear_attention_chunked(query: Array, key: Array, value: Array, *, chunk_size: int = 64,
                             feature_map: FeatureMap = elu_plus_one, normalize: bool = True,
                             eps: float = 1e-6) -> Array:
  """Quadratic inside chunks of ``chunk_size`` positions, the state (S, z) carried between
  chunks: [L, Dk] x2, [L, Dv] -> [L, Dv]. Any L (the last chunk is padded).

  Example:
    >>> import jax.numpy as jnp
    >>> q = k = jnp.zeros((3, 1)); v = jnp.array([[1.0], [3.0], [5.0]])
    >>> linear_attention_chunked(q, k, v, chunk_size=2).round(4).tolist()
    [[1.0], [2.0], [3.0]]
  """
  _check(query, key, value)
  length = query.shape[0]
  phi_q_NxCxF = pad_to_chunks(feature_map(query), chunk_size)
  # Padded keys sit after every real query, so phi(0) != 0 there changes nothing.
  phi_k_NxCxF = pad_to_chunks(feature_map(key), chunk_size)
  v_NxCxV = pad_to_chunks(value, chunk_size)
  causal_CxC = jnp.tril(jnp.ones((chunk_size, chunk_size), bool))

  def step(carry, inputs):
    s_FxV, z_F = carry
    phi_q_CxF, phi_k_CxF, v_CxV = inputs
    scores_CxC = jnp.where(causal_CxC, phi_q_CxF @ phi_k_CxF.T, 0.0)
    numerator_CxV = scores_CxC @ v_CxV + phi_q_CxF @ s_FxV
    denominator_C = jnp.sum(scores_CxC, axis=-1) + phi_q_CxF @ z_F
    new = (s_FxV + phi_k_CxF.T @ v_CxV, z_F + jnp.sum(phi_k_CxF, axis=0))
    return new, (numerator_CxV, denominator_C)

  width = phi_k_NxCxF.shape[-1]
  init = (jnp.zeros((width, value.shape[-1]), value.dtype), jnp.zeros((width,), value.dtype))
  _, (numerator, denominator) = lax.scan(step, init, (phi_q_NxCxF, phi_k_NxCxF, v_NxCxV))
  out = _finish(numerator, denominator, normalize, eps)  # [N, C, Dv]
  return out.reshape(-1, value.shape[-1])[:length]
