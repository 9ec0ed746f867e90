"""Attention as a Pallas kernel with block skipping and in-kernel mods (implementation="pallas").

The structure of FlashAttention-2 (Dao 2023), as in jax's own ``pallas/ops/gpu/attention.py``: a
forward kernel with the online softmax that saves the per-row log-sum-exp, and a backward in two
kernels, dK / dV over key blocks and dQ over query blocks. On top of it: every kernel walks only
the live blocks of an exact block plan (`attn_jax.core.pallas_plan`), FULL blocks skip the
per-element mask, score and mask mods run inside the kernels on index tiles, the G query heads of
a key/value head share each key/value tile, and the arrays a score mod closes over receive
gradients as per-program partial sums reduced after the kernel (deterministic: no atomics).

Sinks need no kernel support: a sink is a virtual key with logit ``sinks[h]`` and no value, so
``lse' = logaddexp(lse, sinks[h])`` and ``out' = exp(lse - lse') out``, differentiated by JAX.

On CPU the kernels run in Pallas interpret mode (slow: for tests); on a GPU they compile through
the Triton lowering.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from attn_jax.core import mods, pallas_plan
from attn_jax.core.pallas_kernels import Static, dkdv_kernel, dq_kernel, forward_kernel

Array = jax.Array
F32 = jnp.float32

#: Block sizes on a GPU (query rows, key columns): FlashAttention-2's for head_dim 128; untuned.
GPU_BLOCK_Q, GPU_BLOCK_K = 128, 64
#: Block sizes in interpret mode (CPU): small, so that short test sequences have several blocks.
CPU_BLOCK = 32
#: Triton launch settings (forward, backward kernels): jax's attention kernel's for head_dim > 64;
#: untuned (no GPU measurement yet).
NUM_WARPS, NUM_STAGES = 8, 2


def _compiler_params(interpret: bool):
  # Triton, not Mosaic GPU: the lowering that runs on Ampere and Hopper alike.
  return None if interpret else pltriton.CompilerParams(num_warps=NUM_WARPS,
                                                        num_stages=NUM_STAGES)


def pallas_attention(
    query: Array, key: Array, value: Array, *, bias: Array | None = None,
    mask: Array | None = None, scale: float | None = None, is_causal: bool = False,
    query_seq_lengths: Array | None = None, key_value_seq_lengths: Array | None = None,
    local_window_size: tuple[int, int] | None = None, score_mod: Callable | None = None,
    mask_mod: Callable | None = None, sinks: Array | None = None, return_residual: bool = False,
    block_mask=None, block_q: int | None = None, block_k: int | None = None,
    interpret: bool | None = None,
) -> Array | tuple[Array, Array]:
  """Attention through the Pallas kernels; the numbers of `attn_jax.dot_product_attention`.

  query [B, T, N, H]; key, value [B, S, K, H], N a multiple of K. bias (float) and mask (bool):
  4-D broadcastable to [B, N, T, S]. query_seq_lengths / key_value_seq_lengths: int32 [B].
  local_window_size: (left, right). score_mod / mask_mod: see `attn_jax.core.mods`. sinks: float
  [N]. block_mask: a `attn_jax.create_block_mask` value; when it is the only mask term its plan
  and blocks are used as they are, else its mod joins the others in a plan made for this call.
  block_q / block_k: None for the defaults; interpret: None for "on CPU".
  Returns [B, T, N, H] in the query's dtype, and with ``return_residual`` also the log-sum-exp
  [B, T, N] (float32, -inf for a row that sees no key and no sink).

  Example:
    >>> import jax.numpy as jnp
    >>> from attn_jax.core.pallas_attention import pallas_attention
    >>> q = jnp.ones((1, 8, 2, 16))
    >>> pallas_attention(q, q, q, is_causal=True).shape
    (1, 8, 2, 16)
  """
  batch, q_len, num_heads, head_dim = query.shape
  _, kv_len, kv_heads, value_dim = value.shape
  groups = num_heads // kv_heads
  interpret = jax.default_backend() == "cpu" if interpret is None else bool(interpret)
  tiles = not interpret  # Triton: power-of-two tiles
  only_block_mask = block_mask is not None and not is_causal and all(
      x is None for x in (local_window_size, query_seq_lengths, key_value_seq_lengths, mask,
                          mask_mod))
  if only_block_mask and (interpret or all(_is_tile(b) for b in (block_mask.block_q,
                                                               block_mask.block_k))):
    block_q, block_k = block_mask.block_q, block_mask.block_k  # walk its plan as it is
  else:
    only_block_mask = False
  bq = _block(q_len, block_q or (CPU_BLOCK if interpret else GPU_BLOCK_Q), power_of_two=tiles)
  bk = _block(kv_len, block_k or (CPU_BLOCK if interpret else GPU_BLOCK_K), power_of_two=tiles)
  nq, nk = -(-q_len // bq), -(-kv_len // bk)
  window = None if local_window_size is None else mods.sliding_window(*local_window_size)
  lengths = None
  if query_seq_lengths is not None or key_value_seq_lengths is not None:
    lengths = mods.padding(query_seq_lengths, key_value_seq_lengths)
  all_masks = mods.and_masks(mods.causal() if is_causal else None, window, lengths,
                             None if mask is None else pallas_plan.lookup_mod(mask, score=False),
                             mask_mod, None if block_mask is None else block_mask.mask_mod)
  all_scores = mods.compose(None if bias is None else pallas_plan.lookup_mod(bias, score=True),
                            score_mod)
  plan = pallas_plan.plan_for_call(batch, q_len, kv_len, kv_heads, groups, block_q=bq,
                                   block_k=bk, mask_mod=all_masks,
                                   block_mask=block_mask if only_block_mask else None)

  index = (jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32),
           jax.ShapeDtypeStruct((bq, 1), jnp.int32), jax.ShapeDtypeStruct((1, bk), jnp.int32))
  score_conv = mask_conv = None
  floats, others, mask_consts = [], [], []
  if all_scores is not None:
    score_conv, floats, others = pallas_plan.convert(
        all_scores, jax.ShapeDtypeStruct((bq, bk), F32), *index)
  if all_masks is not None:
    mask_conv, _, mask_consts = pallas_plan.convert(all_masks, *index, differentiate=False)
  st = Static(q_len=q_len, kv_len=kv_len, block_q=bq, block_k=bk, groups=groups,
              scale=float(head_dim**-0.5 if scale is None else scale), score_mod=score_conv,
              mask_mod=mask_conv, num_score_floats=len(floats), num_score_others=len(others),
              num_mask_consts=len(mask_consts), plan_per_batch=plan.kind.shape[0] > 1,
              plan_per_head=plan.kind.shape[1] > 1)

  # [B, T, N, H] -> [B, N, T_pad, H]; [B, S, K, H] -> [B, K, S_pad, H]. A head_dim that is not a
  # power of two is zero-padded on a GPU (Triton's tiles): q . k and the output are unchanged.
  dim = max(16, pl.next_power_of_2(head_dim)) if tiles else head_dim
  vdim = max(16, pl.next_power_of_2(value_dim)) if tiles else value_dim
  to_heads = lambda x, length, d: jnp.pad(jnp.swapaxes(x, 1, 2), (
      (0, 0), (0, 0), (0, length - x.shape[1]), (0, d - x.shape[3])))
  q_t, k_t = to_heads(query, nq * bq, dim), to_heads(key, nk * bk, dim)
  v_t = to_heads(value, nk * bk, vdim)
  out_dtype = F32 if sinks is not None else query.dtype
  out, lse = _attend((st, interpret, out_dtype), q_t, k_t, v_t, plan, floats, others,
                     mask_consts)  # [B, N, T_pad, Hv], [B, N, T_pad]
  if sinks is not None:
    sink_lse = jnp.logaddexp(lse, jnp.asarray(sinks, F32)[None, :, None])
    out = out * jnp.exp(lse - sink_lse)[..., None]
    lse = sink_lse
  out = jnp.swapaxes(out[:, :, :q_len, :value_dim], 1, 2).astype(query.dtype)
  if return_residual:
    return out, jnp.swapaxes(lse[:, :, :q_len], 1, 2)
  return out


def _is_tile(block: int) -> bool:
  """A block size Triton takes: a power of two, at least 16."""
  return block >= 16 and block & (block - 1) == 0


def _block(size: int, want: int, *, power_of_two: bool) -> int:
  block = min(want, size)
  return max(16, pl.next_power_of_2(block)) if power_of_two else block


def _full(x: Array) -> pl.BlockSpec:
  """The whole array in every program (plans and mod arrays)."""
  return pl.BlockSpec(x.shape, lambda *_: (0,) * x.ndim)


def _shared(plan_arrays, floats, others, mask_consts):
  arrays = [*plan_arrays, *floats, *others, *mask_consts]
  return arrays, [_full(x) for x in arrays]


def _forward(static, q_t, k_t, v_t, plan, floats, others, mask_consts):
  st, interpret, out_dtype = static
  batch, num_heads, t_pad, _ = q_t.shape
  kv_heads, s_pad, vdim = v_t.shape[1], v_t.shape[2], v_t.shape[3]
  g, bq = st.groups, st.block_q
  arrays, specs = _shared((plan.kind, plan.fwd_count, plan.fwd_order), floats, others,
                          mask_consts)
  return pl.pallas_call(
      functools.partial(forward_kernel, st),
      grid=(batch, kv_heads, t_pad // bq),
      in_specs=[*specs, pl.BlockSpec((None, g, bq, q_t.shape[3]), lambda b, k, i: (b, k, i, 0)),
                pl.BlockSpec((None, None, s_pad, k_t.shape[3]), lambda b, k, i: (b, k, 0, 0)),
                pl.BlockSpec((None, None, s_pad, vdim), lambda b, k, i: (b, k, 0, 0))],
      out_specs=[pl.BlockSpec((None, g, bq, vdim), lambda b, k, i: (b, k, i, 0)),
                 pl.BlockSpec((None, g, bq), lambda b, k, i: (b, k, i))],
      out_shape=[jax.ShapeDtypeStruct((batch, num_heads, t_pad, vdim), out_dtype),
                 jax.ShapeDtypeStruct((batch, num_heads, t_pad), F32)],
      interpret=interpret, compiler_params=_compiler_params(interpret),
  )(*arrays, q_t, k_t, v_t)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(static, q_t, k_t, v_t, plan, floats, others, mask_consts):
  """-> out [B, N, T_pad, Hv], lse [B, N, T_pad] (both differentiable)."""
  return tuple(_forward(static, q_t, k_t, v_t, plan, floats, others, mask_consts))


def _attend_fwd(static, *primals):
  # symbolic_zeros: each primal says whether it is differentiated ("perturbed"). The gradient
  # into the score mod's float arrays is computed only when one is.
  perturbed = any(p.perturbed for p in jax.tree.leaves(primals[4], is_leaf=_is_primal))
  q_t, k_t, v_t, plan, floats, others, mask_consts = jax.tree.map(
      lambda p: p.value, primals, is_leaf=_is_primal)
  out, lse = _forward(static, q_t, k_t, v_t, plan, floats, others, mask_consts)
  # The flag travels in the residuals' structure (a static fact, not an array).
  flag = ((),) if perturbed else ()
  return (out, lse), (q_t, k_t, v_t, plan, floats, others, mask_consts, out, lse, flag)


def _is_primal(x) -> bool:
  return isinstance(x, jax.custom_derivatives.CustomVJPPrimal)


def _dense(cotangent, like):
  if isinstance(cotangent, jax.custom_derivatives.SymbolicZero):
    return jnp.zeros(like.shape, like.dtype)
  return cotangent


def _attend_bwd(static, residuals, cotangents):
  st, interpret, _ = static
  q_t, k_t, v_t, plan, floats, others, mask_consts, out, lse, flag = residuals
  st = st._replace(differentiate_floats=bool(flag) and bool(floats))
  if st.differentiate_floats and not interpret and pallas_plan.indexes_floats(st.score_mod):
    raise ValueError(
        "implementation='pallas' on a GPU cannot differentiate an array the score_mod indexes "
        "(ALiBi slopes, a relative-position table, a dense bias): Triton has no gather or "
        "scatter. Use implementation='chunked' for that gradient, or keep the array constant")
  d_out, d_lse = _dense(cotangents[0], out), _dense(cotangents[1], lse)
  batch, num_heads, t_pad, dim = q_t.shape
  kv_heads, s_pad, vdim = v_t.shape[1], v_t.shape[2], v_t.shape[3]
  g, bq, bk = st.groups, st.block_q, st.block_k
  finite = jnp.isfinite(lse)
  # delta = rowsum(dO * O), the softmax Jacobian's correction; a cotangent of lse adds
  # d_lse * p to d_logits, i.e. enters as -d_lse here.
  delta = jnp.sum(d_out.astype(F32) * out.astype(F32), axis=-1)
  delta = delta - jnp.where(finite, d_lse, 0.0)
  lse = jnp.where(finite, lse, 0.0)  # a row with no key has p = 0 everywhere anyway
  d_out = d_out.astype(q_t.dtype)

  arrays, specs = _shared((plan.kind, plan.bwd_count, plan.bwd_order), floats, others,
                          mask_consts)
  d_float_arrays = floats if st.differentiate_floats else []
  rows_all = lambda d: pl.BlockSpec((None, g, t_pad, d), lambda b, k, j: (b, k, 0, 0))
  stats_all = pl.BlockSpec((None, g, t_pad), lambda b, k, j: (b, k, 0))
  cols = lambda d: pl.BlockSpec((None, None, bk, d), lambda b, k, j: (b, k, j, 0))
  partial = lambda x: pl.BlockSpec((None, None, None, *x.shape),
                                   lambda b, k, j: (b, k, j) + (0,) * x.ndim)
  dk, dv, *d_floats = pl.pallas_call(
      functools.partial(dkdv_kernel, st),
      grid=(batch, kv_heads, s_pad // bk),
      in_specs=[*specs, rows_all(dim), rows_all(vdim), stats_all, stats_all, cols(dim),
                cols(vdim)],
      out_specs=[cols(dim), cols(vdim), *(partial(x) for x in d_float_arrays)],
      out_shape=[jax.ShapeDtypeStruct(k_t.shape, F32), jax.ShapeDtypeStruct(v_t.shape, F32),
                 *(jax.ShapeDtypeStruct((batch, kv_heads, s_pad // bk, *x.shape), F32)
                   for x in d_float_arrays)],
      interpret=interpret, compiler_params=_compiler_params(interpret),
  )(*arrays, q_t, d_out, lse, delta, k_t, v_t)

  arrays, specs = _shared((plan.kind, plan.fwd_count, plan.fwd_order), floats, others,
                          mask_consts)
  rows = lambda d: pl.BlockSpec((None, g, bq, d), lambda b, k, i: (b, k, i, 0))
  stats = pl.BlockSpec((None, g, bq), lambda b, k, i: (b, k, i))
  keys_all = lambda d: pl.BlockSpec((None, None, s_pad, d), lambda b, k, i: (b, k, 0, 0))
  dq = pl.pallas_call(
      functools.partial(dq_kernel, st),
      grid=(batch, kv_heads, t_pad // bq),
      in_specs=[*specs, rows(dim), rows(vdim), stats, stats, keys_all(dim), keys_all(vdim)],
      out_specs=rows(dim),
      out_shape=jax.ShapeDtypeStruct(q_t.shape, F32),
      interpret=interpret, compiler_params=_compiler_params(interpret),
  )(*arrays, q_t, d_out, lse, delta, k_t, v_t)
  # The per-program partial sums, reduced in a fixed order: deterministic.
  if st.differentiate_floats:
    d_floats = [jnp.sum(d, axis=(0, 1, 2)).astype(x.dtype) for d, x in zip(d_floats, floats,
                                                                            strict=True)]
  else:
    d_floats = [jnp.zeros(x.shape, x.dtype) for x in floats]
  return (dq.astype(q_t.dtype), dk.astype(k_t.dtype), dv.astype(v_t.dtype), None, d_floats,
          None, None)


_attend.defvjp(_attend_fwd, _attend_bwd, symbolic_zeros=True)


def unsupported_reason() -> str | None:
  """Why the kernels cannot run on the default backend, or None: they need the Triton lowering
  (GPU) or interpret mode (CPU); TPU kernels are Mosaic ones, which these are not."""
  backend = jax.default_backend()
  if backend in ("cpu", "gpu", "cuda", "rocm"):
    return None
  return (f"the Pallas kernel runs on GPU (Triton) or CPU (interpret mode); the default backend "
          f"is {backend!r}")
