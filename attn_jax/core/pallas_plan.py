"""What the Pallas kernel walks: block lists, and the mods as (jaxpr, arrays) pairs.

The kernel (`attn_jax.core.pallas_kernels`) takes plain arrays only. `KernelPlan` holds, per batch
row and key/value head (size 1 where the mask does not depend on them), the kind of every block
(`block_mask.EMPTY` / PARTIAL / FULL) and the two visiting orders: the key blocks each query block
visits (forward and dQ) and the query blocks each key block visits (dK / dV). `from_block_kinds` is
the one adapter from a block classification to those lists; `plan_for_call` feeds it from
`attn_jax.create_block_mask` (an exact plan of every mask term, in numpy where it can be), or
takes a ready `BlockMask`'s kinds.

A mod runs inside the kernel on index tiles, but a kernel cannot close over arrays: `convert`
traces the mod once at the tile shapes and returns its jaxpr and the arrays it closes over, which
become kernel inputs (float ones differentiated, the others not).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from attn_jax.core import block_mask as block_mask_lib
from attn_jax.core.block_mask import EMPTY, FULL, PARTIAL

Array = jax.Array


class KernelPlan(NamedTuple):
  """Block lists for the kernel (Bs: 1 or B; Ks: 1 or K, the key/value heads).

  kind: int32 [Bs, Ks, nQ, nK]; fwd_count [Bs, Ks, nQ] and fwd_order [Bs, Ks, nQ, nK]: query
  block i visits key blocks fwd_order[..., i, :fwd_count[..., i]]; bwd_count [Bs, Ks, nK] and
  bwd_order [Bs, Ks, nK, nQ]: key block j visits query blocks bwd_order[..., j, :bwd_count].
  """

  kind: Array
  fwd_count: Array
  fwd_order: Array
  bwd_count: Array
  bwd_order: Array


def from_block_kinds(kind, num_kv_heads: int, *, q_len: int, kv_len: int, block_q: int,
                     block_k: int) -> KernelPlan:
  """The adapter: block kinds int [B|1, H|1, nQ, nK] (H the query heads) -> `KernelPlan`.

  The kernel handles the G = H // num_kv_heads query heads of a key/value head together, so their
  kinds are merged (FULL where all are FULL, EMPTY where all are EMPTY). Blocks that reach past
  q_len / kv_len hold padding and are never FULL: the kernel masks the padding there.
  """
  xp = np if isinstance(kind, np.ndarray) else jnp
  kind = xp.asarray(kind).astype(np.int32)
  bs, hs, nq, nk = kind.shape
  if hs > 1:
    grouped = kind.reshape(bs, num_kv_heads, hs // num_kv_heads, nq, nk)
    low, high = grouped.min(axis=2), grouped.max(axis=2)
    kind = xp.where(low == FULL, FULL, xp.where(high == EMPTY, EMPTY, PARTIAL)).astype(np.int32)
  padded = np.zeros((nq, nk), bool)
  if nq * block_q != q_len:
    padded[-1, :] = True
  if nk * block_k != kv_len:
    padded[:, -1] = True
  if padded.any():
    kind = xp.where(padded & (kind == FULL), PARTIAL, kind).astype(np.int32)
  live = kind != EMPTY
  # A stable sort of "is empty" lists the live blocks first, in ascending order.
  fwd_order = xp.argsort(~live, axis=-1, stable=True).astype(np.int32)
  bwd_order = xp.argsort(~xp.swapaxes(live, -1, -2), axis=-1, stable=True).astype(np.int32)
  return KernelPlan(kind, live.sum(axis=-1).astype(np.int32), fwd_order,
                    live.sum(axis=-2).astype(np.int32), bwd_order)


def plan_for_call(batch: int, q_len: int, kv_len: int, kv_heads: int, groups: int, *,
                  block_q: int, block_k: int, mask_mod: Callable | None,
                  block_mask=None) -> KernelPlan:
  """The exact block plan of a call.

  ``mask_mod`` is every mask term of the call as one mod (causal, window, lengths, a dense mask,
  the user's mod: see `attn_jax.core.mods`), planned by `attn_jax.create_block_mask` (in numpy
  when it closes over concrete values only, on device otherwise). ``block_mask``: a
  `attn_jax.core.block_mask.BlockMask` of these blocks that is the call's only mask term: its
  kinds are used as they are (planned once, where it was created).
  """
  if block_mask is not None:
    kind = block_mask.kind
    if kind.shape[0] not in (1, batch):
      raise ValueError(f"block_mask is for batch {kind.shape[0]}; the call has {batch}")
  elif mask_mod is None:
    nq, nk = -(-q_len // block_q), -(-kv_len // block_k)
    kind = np.full((1, 1, nq, nk), FULL, np.int32)
  else:
    made = block_mask_lib.create_block_mask(mask_mod, batch, kv_heads * groups, q_len, kv_len,
                                            block_q=block_q, block_k=block_k)
    kind = made.kind
  return from_block_kinds(kind, kv_heads, q_len=q_len, kv_len=kv_len, block_q=block_q,
                          block_k=block_k)


class Converted(NamedTuple):
  """A mod as a jaxpr over (float arrays, other arrays, *args): see `convert`.

  Called with arrays (values), it is the mod. Called with kernel refs (``from_refs=True``), the
  arrays stay in memory and every point lookup ``x[i, j]`` of one becomes a load of the ref at
  index tiles, which the Triton lowering has (it has no gather): see `_eval_with_refs`.
  """

  jaxpr: Any  # the mod's jaxpr (a static setting of the kernel)
  is_float: tuple[bool, ...]  # which arrays are differentiated
  shapes: tuple[tuple[int, ...], ...]
  dtypes: tuple[Any, ...]

  def _consts(self, floats, others):
    floats, others = iter(floats), iter(others)
    return [next(floats) if f else next(others) for f in self.is_float]

  def __call__(self, floats, others, *args, from_refs: bool = False,
               floats_are_values: bool = False, seed=None, record=None):
    """``from_refs``: the arrays are kernel refs (the floats values instead with
    ``floats_are_values``). ``record``: a dict that receives every value loaded from a ref;
    ``seed``: such a dict, whose values are used instead of loading again (so that the loads can
    happen outside an autodiff trace, which cannot read refs it closes over)."""
    consts = self._consts(floats, others)
    if from_refs:
      is_ref = [not (f and floats_are_values) for f in self.is_float]
      return _eval_with_refs(self, consts, args, is_ref, seed, record)
    consts = [c.reshape(s).astype(d) for c, s, d in zip(consts, self.shapes, self.dtypes,
                                                         strict=True)]
    return jax.core.eval_jaxpr(self.jaxpr, consts, *args)[0]


def indexes_floats(conv: Converted | None) -> bool:
  """Whether the mod indexes one of its float arrays (a gather, whose gradient is a scatter)."""
  if conv is None:
    return False
  floats = {v for v, f in zip(conv.jaxpr.constvars, conv.is_float, strict=True) if f}
  return any(eqn.primitive.name in ("gather", "dynamic_slice") and eqn.invars[0] in floats
             for eqn in conv.jaxpr.eqns if eqn.invars and isinstance(eqn.invars[0], jex_core.Var))


def _trailing_one_source(jaxpr_producers, var):
  """The array a [..., 1] index component was broadcast from (jnp's indexing adds the axis)."""
  eqn = jaxpr_producers.get(var) if isinstance(var, jex_core.Var) else None
  if (eqn is not None and eqn.primitive.name == "broadcast_in_dim"
      and eqn.params["shape"][:-1] == tuple(eqn.invars[0].aval.shape)
      and eqn.params["broadcast_dimensions"] == tuple(range(len(eqn.params["shape"]) - 1))):
    return eqn.invars[0], False
  return var, True


def _eval_with_refs(conv: Converted, refs, args, is_ref, seed, record):
  """Evaluates the mod's jaxpr with its arrays as refs, on demand from the output (so that the
  index concatenations feeding a point lookup are never built: Triton has no concatenate)."""
  jaxpr = conv.jaxpr
  producers = {v: eqn for eqn in jaxpr.eqns for v in eqn.outvars}
  ref_of = {v: (r, shape, dtype) for v, r, shape, dtype, ref in zip(
      jaxpr.constvars, refs, conv.shapes, conv.dtypes, is_ref, strict=True)}
  loads = {v for v, ref in zip(jaxpr.constvars, is_ref, strict=True) if ref}
  env = dict(seed or {})
  env.update(zip(jaxpr.invars, args, strict=True))

  def read(v):
    if isinstance(v, jex_core.Literal):
      return v.val
    if v not in env:
      if v in ref_of:  # used as a whole: load it
        ref, shape, dtype = ref_of[v]
        env[v] = ref[...].reshape(shape).astype(dtype)
        if record is not None and v in loads:
          record[v] = env[v]
      else:
        compute(producers[v])
    return env[v]

  def point_indices(eqn):
    """The per-axis index arrays of a point lookup (gather / dynamic_slice), or None."""
    name, operand = eqn.primitive.name, eqn.invars[0]
    shape = tuple(operand.aval.shape)
    if name == "dynamic_slice" and all(s == 1 for s in eqn.params["slice_sizes"]):
      return [read(i) for i in eqn.invars[1:]]
    if name != "gather":
      return None
    dims = eqn.params["dimension_numbers"]
    if (dims.offset_dims or dims.operand_batching_dims
        or tuple(sorted(dims.collapsed_slice_dims)) != tuple(range(len(shape)))
        or sorted(dims.start_index_map) != list(range(len(shape)))):
      return None
    concat = producers.get(eqn.invars[1]) if isinstance(eqn.invars[1], jex_core.Var) else None
    if len(shape) == 1:
      parts = [eqn.invars[1]]
    elif concat is not None and concat.primitive.name == "concatenate" and all(
        x.aval.shape[-1] == 1 for x in concat.invars):
      parts = list(concat.invars)
    else:
      return None
    components = []
    for part in parts:
      source, squeeze = _trailing_one_source(producers, part)
      value = read(source)
      components.append(value.reshape(value.shape[:-1]) if squeeze else value)
    by_axis = dict(zip(dims.start_index_map, components, strict=True))
    return [by_axis[a] for a in range(len(shape))]

  def compute(eqn):
    operand = eqn.invars[0] if eqn.invars else None
    is_array = isinstance(operand, jex_core.Var) and operand in loads and ref_of[operand][1]
    index = point_indices(eqn) if is_array else None
    if index is not None:
      ref, _, dtype = ref_of[operand]
      out_shape = tuple(eqn.outvars[0].aval.shape)
      if eqn.primitive.name == "dynamic_slice":
        outs = [ref[tuple(index)].reshape(out_shape).astype(dtype)]
      else:
        shape = jnp.broadcast_shapes(*(jnp.shape(i) for i in index))
        loaded = ref[tuple(jnp.broadcast_to(i, shape) for i in index)]
        outs = [loaded.reshape(out_shape).astype(dtype)]
      if record is not None:
        record[eqn.outvars[0]] = outs[0]
    else:
      params = eqn.primitive.get_bind_params(eqn.params)
      outs = eqn.primitive.bind(*(read(x) for x in eqn.invars), **params)
      outs = outs if eqn.primitive.multiple_results else [outs]
    env.update(zip(eqn.outvars, outs, strict=True))

  return read(jaxpr.outvars[0])


def convert(fn: Callable, *example_args, differentiate: bool = True
            ) -> tuple[Converted, list, list]:
  """``fn`` traced at ``example_args`` -> (converted, float arrays, other arrays).

  Every array ``fn`` closes over, traced or concrete, becomes a kernel input: at least 1-D,
  booleans as int8 (``converted`` restores both). With ``differentiate=False`` the float arrays
  count among the others.
  """
  closed = jax.make_jaxpr(fn)(*example_args)
  consts = [jnp.asarray(c) for c in closed.consts]
  is_float = tuple(differentiate and bool(jnp.issubdtype(c.dtype, jnp.inexact)) for c in consts)
  shapes = tuple(tuple(c.shape) for c in consts)
  dtypes = tuple(c.dtype for c in consts)
  inputs = [(c.reshape(-1) if c.ndim == 0 else c) for c in consts]
  inputs = [c.astype(jnp.int8) if c.dtype == jnp.bool_ else c for c in inputs]
  floats = [c for c, f in zip(inputs, is_float, strict=True) if f]
  others = [c for c, f in zip(inputs, is_float, strict=True) if not f]
  return Converted(closed.jaxpr, is_float, shapes, dtypes), floats, others


def lookup_mod(x: Array, *, score: bool) -> Callable:
  """A dense bias (``score=True``: added to the score) or mask [B|1, N|1, T|1, S|1] as a mod:
  the entry at (b, h, q_idx, kv_idx), a size-1 axis shared."""
  def entry(b, h, q_idx, kv_idx):
    pick = lambda axis, i: i if x.shape[axis] > 1 else jnp.zeros_like(i)
    return x[pick(0, b), pick(1, h), pick(2, q_idx), pick(3, kv_idx)]

  if score:
    return lambda s, b, h, q_idx, kv_idx: s + entry(b, h, q_idx, kv_idx).astype(s.dtype)
  return entry
