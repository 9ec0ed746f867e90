"""The cuDNN fused kernel (through `jax.nn.dot_product_attention`), held to attn_jax's semantics.

cuDNN computes the same softmax, but a fully masked row comes back as the mean of the value rows
and masked-out padding still flows through its arithmetic. We zero padding before the call and
fully masked rows after it, both with `where`, so the kernel's answer matches the reference.
"""

import jax
import jax.numpy as jnp

Array = jax.Array

_DTYPES = (jnp.bfloat16, jnp.float16)

#: The first jax release whose cuDNN path keeps a sliding window without ``is_causal`` from
#: attending to future tokens (jax PR #39576, 2026: before it, cuDNN's non-causal sliding window
#: let query i see keys past i, forward and backward). No released version is known to carry the
#: fix, so None: the default never sends such a call to cuDNN. Set it to the release's
#: (major, minor, patch) once one does, after the GPU tests pass on it.
NONCAUSAL_WINDOW_FIXED_IN_JAX: tuple[int, int, int] | None = None


def jax_version() -> tuple[int, int, int]:
  """The installed jax's (major, minor, patch)."""
  parts = (jax.__version__.split("+")[0].split(".") + ["0", "0"])[:3]
  return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in parts)


def noncausal_window_is_fixed() -> bool:
  """Whether the installed jax carries the fix for cuDNN's non-causal sliding window."""
  fixed = NONCAUSAL_WINDOW_FIXED_IN_JAX
  return fixed is not None and jax_version() >= fixed


def device_capability() -> tuple[int, ...] | None:
  """The compute capability of the first NVIDIA GPU, e.g. (9, 0); None without one."""
  try:
    devices = jax.devices()
  except RuntimeError:
    return None
  gpu = next((d for d in devices if d.platform == "gpu"), None)
  try:
    return tuple(int(x) for x in str(gpu.compute_capability).split("."))
  except (AttributeError, ValueError):  # no GPU, or not a CUDA one (ROCm reports "gfx...")
    return None


def cudnn_version() -> int | None:
  """The cuDNN version as jax reads it (e.g. 91000 for 9.10.0); None where it finds none."""
  try:
    from jax._src.lib import cuda_versions  # noqa: PLC0415
  except ImportError:
    return None
  return None if cuda_versions is None else cuda_versions.cudnn_get_version()


def _jax_layout_check(query, key, value, bias_shape, has_seq_lengths) -> str | None:
  """jax's own shape and dtype checks of its cuDNN path (`check_layout`: pure, runs anywhere)."""
  try:
    from jax._src.cudnn import fused_attention_stablehlo as fused  # noqa: PLC0415
  except ImportError:  # another jax layout: our own rules above still apply
    return None
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)
  lengths = spec((query.shape[0],), jnp.int32) if has_seq_lengths else None
  bias = None if bias_shape is None else spec(bias_shape, query.dtype)
  try:
    fused.check_layout(query, key, value, bias, lengths, lengths, None, None, None, None,
                       fused.AttentionLayout.BTNH)
  except (ValueError, NotImplementedError) as e:
    return f"jax's cuDNN layout check: {e}"
  return None


def unsupported_reason(
    query: Array, key: Array, value: Array, bias: Array | None, mask: Array | None, *,
    score: str, is_causal: bool, local_window_size: tuple[int, int] | None,
    has_seq_lengths: bool, has_mods: bool = False, has_sinks: bool = False,
    return_residual: bool = False, has_dropout: bool = False,
) -> str | None:
  """Why cuDNN cannot serve these (4-D, validated) arguments, or None when it can.

  Mirrors the checks `jax.nn.dot_product_attention(implementation="cudnn")` makes (jax 0.10:
  `jax/_src/nn/functions.py` and `jax/_src/cudnn/fused_attention_stablehlo.py`), for a call
  that may be differentiated (the backward pass adds the even-length rule for biases), and
  refuses what that path accepts but computes wrong: a sliding window without ``is_causal``
  (see NONCAUSAL_WINDOW_FIXED_IN_JAX). Also refused: attention sinks and dropout (jax.nn's cuDNN
  call has neither) and ``return_residual`` (jax returns cuDNN's log-sum-exp rounded to the
  input's bfloat16 / float16 and without gradient; attn_jax's residual is float32 and
  differentiable).
  """
  if score != "dot":
    return f"cuDNN computes only the scaled dot product; got score={score!r}"
  if has_mods:
    return "cuDNN takes no score_mod or mask_mod (use 'chunked', 'xla' or 'reference')"
  # jax.nn's cuDNN path has no attention sinks; its residual is not passed through this wrapper
  # (fully masked rows would need their -inf), and attn_jax's dropout is its own.
  if has_sinks:
    return "cuDNN (through jax.nn) has no attention sinks (use 'chunked', 'xla' or 'reference')"
  if return_residual:
    return "attn_jax's cuDNN path returns no residual (use 'chunked', 'xla' or 'reference')"
  if has_dropout:
    return "attn_jax's cuDNN path takes no dropout (use 'chunked', 'xla' or 'reference')"
  if local_window_size is not None and not is_causal and not noncausal_window_is_fixed():
    return (f"cuDNN's sliding window without is_causal attends to future tokens in this jax "
            f"({jax.__version__}; fixed by jax PR #39576, in no known release); got "
            f"local_window_size={local_window_size}, is_causal=False")
  capability = device_capability()
  if capability is None:
    return f"cuDNN needs an NVIDIA GPU; the default backend is {jax.default_backend()!r}"
  if capability < (8, 0):
    return f"cuDNN flash attention needs compute capability >= 8.0; got {capability}"
  version = cudnn_version()
  if version is None:
    return "cuDNN is not detected (install jax with its CUDA plugin)"
  if capability == (10, 3) and version < 91100:
    return f"compute capability 10.3 needs cuDNN >= 9.11; got {version}"
  if query.dtype not in _DTYPES:
    return f"cuDNN needs bfloat16 or float16 inputs; got {query.dtype}"
  head_dim = query.shape[-1]
  max_dim = 256 if capability >= (9, 0) else 128
  if head_dim % 8 or head_dim > max_dim:
    return f"cuDNN needs head_dim a multiple of 8 and <= {max_dim}; got query {query.shape}"
  q_len, kv_len = query.shape[1], key.shape[1]
  # jax folds a boolean mask into the bias: what reaches cuDNN is their broadcast sum.
  shapes = [x.shape for x in (bias, mask) if x is not None]
  bias_shape = jnp.broadcast_shapes(*shapes) if shapes else None
  if bias_shape is not None and bias_shape[2:] != (q_len, kv_len):
    return (f"cuDNN needs bias and mask to cover the full [{q_len}, {kv_len}] lengths; got "
            f"{' and '.join(str(s) for s in shapes)}")
  # jax's training-mode check demands even lengths "with a bias", and its cuDNN path always
  # passes one (an empty placeholder when there is none): every differentiable call needs them.
  if q_len % 2 or kv_len % 2:
    return (f"cuDNN's backward pass (as jax calls it) needs even lengths; got q_len {q_len}, "
            f"kv_len {kv_len}")
  # A right window works only under jax's plain CAUSAL mask type (the causal mask hides it);
  # with sequence lengths the type is PADDING_CAUSAL, which refuses it.
  if local_window_size is not None and local_window_size[1] != 0 and (
      not is_causal or has_seq_lengths):
    return (f"cuDNN supports a right window only with is_causal and no sequence lengths; got "
            f"local_window_size={local_window_size}, is_causal={is_causal}, sequence lengths "
            f"{'given' if has_seq_lengths else 'absent'}")
  return _jax_layout_check(query, key, value, bias_shape, has_seq_lengths)


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

