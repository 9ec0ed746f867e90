"""jax's splash attention (TPU) behind attn_jax's semantics: ``implementation="splash"``.

Splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`) skips the blocks its mask
rules out, forward and backward, but takes only masks known at trace time (per head, shared by the
batch) and has no score hook. What it serves here: ``score="dot"``, no bias, no dense mask, no
sequence lengths, no ``score_mod``; ``is_causal``, ``local_window_size`` and a ``mask_mod`` that
closes over concrete values and does not depend on the batch index; lengths that are multiples of
`BLOCK` (its tiles); grouped-query heads through its multi-query kernel, one per key/value head.
The mask becomes splash's own mask objects (`CausalMask`, `LocalMask`, a `NumpyMask` of the
``mask_mod`` evaluated on the host), from which splash builds its block plan.

Query rows that see no key give zeros and keys no query sees are zeroed before the kernel (splash
itself returns a finite average there), as everywhere in attn_jax. On CPU the kernel runs in
Pallas interpret mode (slow: for tests).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.core import mods

Array = jax.Array

#: Splash's tile: query and key lengths must be multiples of it.
BLOCK = 128


def unsupported_reason(query, key, *, score: str, bias, mask, has_seq_lengths: bool,
                       score_mod, mask_mod) -> str | None:
  """Why splash cannot serve these (4-D, validated) arguments, or None."""
  backend = jax.default_backend()
  if backend not in ("tpu", "cpu"):
    return f"splash attention is a TPU kernel (interpreted on CPU); the backend is {backend!r}"
  batch, q_len, num_heads, _ = query.shape
  kv_len = key.shape[1]
  if score != "dot":
    return f"splash computes the scaled dot product only; got score={score!r}"
  if bias is not None or score_mod is not None:
    return "splash has no bias and no score hook (score_mod)"
  if mask is not None or has_seq_lengths:
    return "splash takes masks known at trace time only: no dense mask, no sequence lengths"
  if q_len % BLOCK or kv_len % BLOCK:
    return f"splash needs lengths that are multiples of {BLOCK}; got {q_len} and {kv_len}"
  if mask_mod is not None:
    with jax.ensure_compile_time_eval():
      dense = mods.dense_mask(mask_mod, batch, num_heads, q_len, kv_len)
    if isinstance(dense, jax.core.Tracer):
      return "splash needs a mask_mod over concrete values (it closes over a traced array)"
    if dense.shape[0] > 1:
      return "splash's mask is shared by the batch; this mask_mod depends on the batch index"
  return None


def _dense(mask_mod, batch, num_heads, q_len, kv_len) -> np.ndarray:
  with jax.ensure_compile_time_eval():
    return np.asarray(mods.dense_mask(mask_mod, batch, num_heads, q_len, kv_len))


def _head_masks(num_heads, q_len, kv_len, is_causal, window, dense):
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # noqa: PLC0415
      splash_attention_mask as sm,
  )
  shape = (q_len, kv_len)
  heads = []
  for h in range(num_heads):
    parts = []
    if window is not None:
      parts.append(sm.LocalMask(shape, (window[0], 0 if is_causal else window[1]), offset=0))
    elif is_causal:
      parts.append(sm.CausalMask(shape))
    if dense is not None:
      parts.append(sm.NumpyMask(np.broadcast_to(dense[0, h if dense.shape[1] > 1 else 0],
                                                shape).copy()))
    heads.append(functools.reduce(lambda a, b: a & b, parts) if parts else sm.FullMask(shape))
  return heads


def splash_attention(query: Array, key: Array, value: Array, *, scale: float,
                     is_causal: bool = False, local_window_size: tuple[int, int] | None = None,
                     mask_mod=None, interpret: bool | None = None) -> Array:
  """query [B, T, N, H], key/value [B, S, K, H] -> [B, T, N, H] through splash attention.

  Takes what `unsupported_reason` accepts. Example:
    >>> import jax.numpy as jnp
    >>> from attn_jax.core.splash import splash_attention
    >>> q = jnp.ones((1, 128, 2, 128))
    >>> splash_attention(q, q, q, scale=128**-0.5, is_causal=True).shape
    (1, 128, 2, 128)
  """
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # noqa: PLC0415
      splash_attention_kernel as sk,
  )
  batch, q_len, num_heads, head_dim = query.shape
  kv_len, kv_heads = key.shape[1], key.shape[2]
  groups = num_heads // kv_heads
  interpret = jax.default_backend() == "cpu" if interpret is None else interpret
  dense = None if mask_mod is None else _dense(mask_mod, batch, num_heads, q_len, kv_len)
  # What the combined mask lets each row / key see, for the zeroing (numpy, at trace time).
  t, s = np.arange(q_len)[:, None], np.arange(kv_len)[None, :]
  allowed = np.ones((1, q_len, kv_len), bool)
  if is_causal:
    allowed = allowed & (s <= t)
  if local_window_size is not None:
    allowed = allowed & (s >= t - local_window_size[0]) & (s <= t + local_window_size[1])
  if dense is not None:
    allowed = allowed & np.broadcast_to(dense[0], (dense.shape[1], q_len, kv_len))
  allowed = np.broadcast_to(allowed, (num_heads, q_len, kv_len))
  rows_seen = allowed.any(-1)  # [N, T]
  keys_seen = allowed.reshape(kv_heads, groups, q_len, kv_len).any(axis=(1, 2))  # [K, S]

  heads = _head_masks(num_heads, q_len, kv_len, is_causal, local_window_size, dense)
  sizes = sk.BlockSizes(block_q=BLOCK, block_kv=BLOCK, block_kv_compute=BLOCK, block_q_dkv=BLOCK,
                        block_kv_dkv=BLOCK, block_kv_dkv_compute=BLOCK, block_q_dq=BLOCK,
                        block_kv_dq=BLOCK)
  make = functools.partial(sk.make_splash_mqa if groups > 1 else sk.make_splash_mha,
                           block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
  # Splash takes the logits unscaled: the scale goes into the queries. [B, T, N, H] -> [B, N, T, H]
  q = jnp.swapaxes(query * jnp.asarray(scale, query.dtype), 1, 2)
  q = jnp.where(jnp.asarray(rows_seen)[None, :, :, None], q, jnp.zeros((), q.dtype))
  seen = jnp.asarray(keys_seen).T[None, :, :, None]  # [1, S, K, 1]
  k, v = (jnp.where(seen, x, jnp.zeros((), x.dtype)) for x in (key, value))
  k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [B, K, S, H]
  if groups == 1:
    kernel = make(_multi_head_mask(heads))
    out = jax.vmap(kernel)(q, k, v)  # [B, N, T, H]
  else:
    # One multi-query kernel per key/value head, over its G query heads.
    q = q.reshape(batch, kv_heads, groups, q_len, head_dim)
    kernels = [make(_multi_head_mask(heads[i * groups:(i + 1) * groups]))
               for i in range(kv_heads)]
    outs = [jax.vmap(kernel)(q[:, i], k[:, i], v[:, i]) for i, kernel in enumerate(kernels)]
    out = jnp.stack(outs, axis=1).reshape(batch, num_heads, q_len, -1)
  out = jnp.where(jnp.asarray(rows_seen)[None, :, :, None], out, jnp.zeros((), out.dtype))
  return jnp.swapaxes(out, 1, 2).astype(query.dtype)


def _multi_head_mask(heads):
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # noqa: PLC0415
      splash_attention_mask as sm,
  )
  return sm.MultiHeadMask(heads)
