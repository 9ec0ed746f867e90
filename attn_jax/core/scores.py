"""Score functions: the first step of attention, for one head.

Every score shares one calling convention so that any of them plugs into the same pipeline
(`attend`, the vmapped multi-head path, the chunked kernel, the modules)::

    score_fn(query: [q_len, key_dim], key: [kv_len, key_dim], params) -> logits [q_len, kv_len]

`params` is a pytree of weights (`None` for the parameter-free scores). Static settings such as a
scale are bound with keyword arguments (``functools.partial(dot, scale=0.5)``), so the
pipeline only ever passes ``(query, key, params)``.

Example:
  >>> from attn_jax.core import scores
  >>> q, k = jnp.ones((2, 4)), jnp.ones((3, 4))  # [T, d], [S, d]
  >>> scores.dot(q, k).shape, float(scores.dot(q, k)[0, 0])  # 4 / sqrt(4)
  ((2, 3), 2.0)
  >>> sorted(scores.SCORES)
  ['additive', 'bilinear', 'cosine', 'dot']
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
#: A single-head score function: ``score_fn(query [T, D], key [S, D], params) -> [T, S]``.
ScoreFn = Callable[[Array, Array, Any], Array]


def _check_pair(query: Array, key: Array, same_dim: bool = True) -> None:
  if query.ndim != 2 or key.ndim != 2:
    raise ValueError(
        "score functions take one head: query [q_len, key_dim] and key [kv_len, key_dim]; "
        f"got query {query.shape} and key {key.shape}")
  if same_dim and query.shape[-1] != key.shape[-1]:
    raise ValueError(
        f"query and key must share key_dim: got query {query.shape} and key {key.shape}")


def dot(
    query: Array, key: Array, params: Any = None, *, scale: float | None = None) -> Array:
  """Scaled dot product ``scale * q . k``, ``scale = 1/sqrt(key_dim)`` by default.

  Vaswani et al. 2017: the scale keeps the logits' variance near 1 for unit-variance inputs;
  ``scale=1.0`` gives the plain product ``q . k`` (Luong et al. 2015, "dot").
  query: [q_len, key_dim], key: [kv_len, key_dim] -> logits [q_len, kv_len] (float32 or wider).

  Example:
    >>> import jax.numpy as jnp
    >>> q, k = jnp.array([[1.0, 1.0, 1.0, 1.0]]), jnp.array([[2.0, 0.0, 0.0, 0.0]])
    >>> dot(q, k).tolist(), dot(q, k, scale=1.0).tolist()
    ([[1.0]], [[2.0]])
  """
  del params
  _check_pair(query, key)
  if scale is None:
    scale = query.shape[-1] ** -0.5
  dtype = _logits_dtype(query)
  # [q_len, key_dim] x [kv_len, key_dim] -> [q_len, kv_len]
  logits = jnp.einsum("td,sd->ts", query, key, preferred_element_type=dtype)
  return logits * jnp.asarray(scale, dtype)


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-6) -> Array:
  """``x / max(|x|, eps)`` along ``axis``, computed in float32 for low-precision inputs.

  Example:
    >>> l2_normalize(jnp.array([[3.0, 4.0], [0.0, 0.0]]))  # a zero row stays finite
    Array([[0.6, 0.8],
           [0. , 0. ]], dtype=float32)
  """
  x32 = x.astype(_logits_dtype(x))
  norm_sq = jnp.sum(x32 * x32, axis=axis, keepdims=True)
  # rsqrt(max(., eps^2)) rather than x / |x|: finite value and gradient at x = 0.
  return x32 * jax.lax.rsqrt(jnp.maximum(norm_sq, eps * eps))


def cosine(
    query: Array, key: Array, params: Any = None, *, scale: float | None = None,
    eps: float = 1e-6) -> Array:
  """Cosine similarity times an inverse temperature: logits in ``[-scale, scale]``.

  ``scale`` defaults to ``sqrt(key_dim)``: for unit-variance vectors that is the typical size of
  the scaled dot product's logits, so switching score keeps the softmax equally sharp.
  query: [q_len, key_dim], key: [kv_len, key_dim] -> logits [q_len, kv_len].

  Example:
    >>> q, k = jnp.array([[1.0, 0.0]]), jnp.array([[5.0, 0.0], [0.0, 2.0]])
    >>> cosine(q, k, scale=1.0)  # direction only: the key's length does not matter
    Array([[1., 0.]], dtype=float32)
  """
  del params
  _check_pair(query, key)
  if scale is None:
    scale = query.shape[-1] ** 0.5
  q = l2_normalize(query, eps=eps)
  k = l2_normalize(key, eps=eps)
  return jnp.einsum("td,sd->ts", q, k) * jnp.asarray(scale, q.dtype)


def additive(query: Array, key: Array, params: dict) -> Array:
  """Additive attention ``v . tanh(W_q q + W_k k)`` (Bahdanau, Cho & Bengio 2015).

  query: [q_len, query_dim], key: [kv_len, key_dim];
  params: ``w_query [query_dim, hidden]``, ``w_key [key_dim, hidden]``, ``v [hidden]``
  -> logits [q_len, kv_len]. Holds a [q_len, kv_len, hidden] intermediate.

  Example:
    >>> params = {"w_query": jnp.ones((2, 3)), "w_key": jnp.ones((2, 3)), "v": jnp.ones(3)}
    >>> additive(jnp.zeros((1, 2)), jnp.zeros((4, 2)), params)  # tanh(0) = 0
    Array([[0., 0., 0., 0.]], dtype=float32)
  """
  _check_pair(query, key, same_dim=False)
  dtype = _logits_dtype(query)
  q_TA = query.astype(dtype) @ params["w_query"].astype(dtype)  # [q_len, hidden]
  k_SA = key.astype(dtype) @ params["w_key"].astype(dtype)  # [kv_len, hidden]
  hidden_TSA = jnp.tanh(q_TA[:, None, :] + k_SA[None, :, :])  # [q_len, kv_len, hidden]
  return hidden_TSA @ params["v"].astype(dtype)  # [q_len, kv_len]


def bilinear(query: Array, key: Array, params: dict) -> Array:
  """Bilinear ("general") score ``q^T W k`` (Luong, Pham & Manning 2015).

  query: [q_len, query_dim], key: [kv_len, key_dim]; params: ``w [query_dim, key_dim]``
  -> logits [q_len, kv_len].

  Example:
    >>> q, k = jnp.array([[1.0, 2.0]]), jnp.array([[3.0, 4.0]])
    >>> bilinear(q, k, {"w": jnp.eye(2)})  # W = I: the plain dot product, 1*3 + 2*4
    Array([[11.]], dtype=float32)
  """
  _check_pair(query, key, same_dim=False)
  w = params["w"]
  if w.shape != (query.shape[-1], key.shape[-1]):
    raise ValueError(
        f"bilinear weight must be [query_dim, key_dim] = {(query.shape[-1], key.shape[-1])}; "
        f"got {w.shape}")
  dtype = _logits_dtype(query)
  # [q_len, query_dim] x [query_dim, key_dim] x [kv_len, key_dim] -> [q_len, kv_len]
  return jnp.einsum("td,de,se->ts", query.astype(dtype), w.astype(dtype), key.astype(dtype))


def _logits_dtype(x: Array):
  # Logits are formed in at least float32: bf16 logits lose the differences the softmax needs.
  return jnp.promote_types(x.dtype, jnp.float32)


#: The score names of the whole toolkit (the batched API, the modules, configs) and their
#: functions. "dot" is the scaled dot product ``scale * q . k`` everywhere (`dot`).
SCORES: dict[str, ScoreFn] = {
    "dot": dot,
    "cosine": cosine,
    "additive": additive,
    "bilinear": bilinear,
}
#: The scores without weights: the ones `attn_jax.dot_product_attention` takes by name.
PARAMETER_FREE = ("dot", "cosine")


def get_score(name: str) -> ScoreFn:
  """The score function registered under ``name`` (see `SCORES`); raises ValueError listing the
  known names.

  Example:
    >>> get_score("dot") is dot
    True
  """
  if name == "scaled_dot":
    raise ValueError(
        "the score 'scaled_dot' is now 'dot': the scaled dot product scale * q . k, scale "
        "1/sqrt(key_dim) by default (functools.partial(scores.dot, scale=...) to set it)")
  try:
    return SCORES[name]
  except KeyError:
    raise ValueError(f"unknown score {name!r}; expected one of {sorted(SCORES)}") from None
