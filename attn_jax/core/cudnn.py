"""The cuDNN fused kernel (through `jax.nn.dot_product_attention`), held to attn_jax's semantics.

cuDNN computes the same softmax, but a fully masked row comes back as the mean of the value rows
and masked-out padding still flows through its arithmetic. We zero padding before the call and
fully masked rows after it, both with `where`, so the kernel's answer matches the reference.
"""

import jax
import jax.numpy as jnp

Array = jax.Array

_DTYPES = (jnp.bfloat16, jnp.float16)


def unsupported_reason(
    query: Array, key: Array, value: Array, bias: Array | None, mask: Array | None, *,
    score: str, local_window_size: tuple[int, int] | None, is_causal: bool,
) -> str | None:
  """Why cuDNN cannot serve these (4-D, validated) arguments, or None when it can."""
  if score != "dot":
    return f"cuDNN computes only the scaled dot product; got score={score!r}"
  try:
    devices = jax.devices()
  except RuntimeError:
    devices = []
  gpu = next((d for d in devices if d.platform == "gpu"), None)
  try:
    capability = tuple(int(x) for x in str(gpu.compute_capability).split("."))
  except (AttributeError, ValueError):  # no GPU, or not a CUDA one (ROCm reports "gfx...")
    return f"cuDNN needs an NVIDIA GPU; the default backend is {jax.default_backend()!r}"
  if capability < (8, 0):
    return f"cuDNN flash attention needs compute capability >= 8.0; got {capability}"
  if query.dtype not in _DTYPES:
    return f"cuDNN needs bfloat16 or float16 inputs; got {query.dtype}"
  head_dim = query.shape[-1]
  max_dim = 256 if capability >= (9, 0) else 128
  if head_dim % 8 or head_dim > max_dim or value.shape[-1] != head_dim:
    return (f"cuDNN needs head_dim a multiple of 8 and <= {max_dim}, equal for key and value; got "
            f"query {query.shape}, value {value.shape}")
  q_len, kv_len = query.shape[1], key.shape[1]
  if bias is not None and (bias.shape[2] != q_len or bias.shape[3] != kv_len):
    return f"cuDNN needs a bias with full [.., {q_len}, {kv_len}] lengths; got {bias.shape}"
  if bias is not None and (q_len % 2 or kv_len % 2):
    return f"cuDNN with a bias needs even lengths; got q_len {q_len}, kv_len {kv_len}"
  if mask is not None and (mask.shape[2] != q_len or mask.shape[3] != kv_len):
    return f"cuDNN needs a mask with full [.., {q_len}, {kv_len}] lengths; got {mask.shape}"
  if local_window_size is not None and local_window_size[1] != 0 and not is_causal:
    return f"cuDNN supports only left windows unless causal; got {local_window_size}"
  return None


def cudnn_attention(
    query: Array, key: Array, value: Array, bias: Array | None, mask: Array | None, *,
    combined_mask: Array | None, scale: float, is_causal: bool,
    query_seq_lengths: Array | None, key_value_seq_lengths: Array | None,
    local_window_size: tuple[int, int] | None,
) -> Array:
  """query [B, T, N, H], key/value [B, S, K, H] -> [B, T, N, H] via cuDNN.

  ``combined_mask`` is every mask folded into one [B|1, N|1, T, S] boolean (or None); it decides
  which key/value rows are padding and which query rows are fully masked.
  """
  row_BTN1 = None
  if combined_mask is not None:
    seen_BS11 = jnp.any(combined_mask, axis=(1, 2))[:, :, None, None]
    key = jnp.where(seen_BS11, key, jnp.zeros((), key.dtype))
    value = jnp.where(seen_BS11, value, jnp.zeros((), value.dtype))
    # A query row that may see no key must not reach the keys' gradient either (0 * NaN).
    row_BTN1 = jnp.swapaxes(jnp.any(combined_mask, axis=-1), 1, 2)[..., None]  # [B|1, T, N|1, 1]
    query = jnp.where(row_BTN1, query, jnp.zeros((), query.dtype))
  if bias is not None:
    bias = bias.astype(query.dtype)
  out = jax.nn.dot_product_attention(
      query, key, value, bias=bias, mask=mask, scale=scale, is_causal=is_causal,
      query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths,
      local_window_size=local_window_size, implementation="cudnn")
  if row_BTN1 is not None:
    out = jnp.where(row_BTN1, out, jnp.zeros((), out.dtype))
  return out

