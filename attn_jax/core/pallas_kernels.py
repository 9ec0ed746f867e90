"""The bodies of the three Pallas kernels: forward, dK / dV, dQ.

Layouts (per program, after the BlockSpecs): query, dO and the output [G, rows, H] for the G query
heads of one key/value head, key / value [cols, H], lse and delta [G, rows]; ``rows`` is one query
block (forward, dQ) or the whole padded query length (dK / dV), ``cols`` likewise for the keys.
Every key/value tile is loaded once and used by the G query heads (grouped-query attention).

The walk follows `pallas_plan.KernelPlan`: a ``fori_loop`` over the block list of the program's
row (or column) of blocks, so EMPTY blocks are never loaded; FULL blocks skip the per-element
mask; PARTIAL ones evaluate the mask on the block's index tiles and zero the query rows and key
columns that no pair of the block may use before any arithmetic (a NaN there would otherwise
reach the sums through 0 * NaN). Softmax statistics and every accumulation are float32; the
matmul operands keep the input dtype (as FlashAttention-2).
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from attn_jax.core.block_mask import FULL

F32 = jnp.float32


class Static(NamedTuple):
  """Static settings of one call (hashable)."""

  q_len: int  # T before padding
  kv_len: int  # S before padding
  block_q: int
  block_k: int
  groups: int  # G query heads per key/value head
  scale: float
  score_mod: Callable | None  # pallas_plan.Converted: (floats, others, score, b, h, q, kv)
  mask_mod: Callable | None  # pallas_plan.Converted: ((), others, b, h, q, kv)
  num_score_floats: int
  num_score_others: int
  num_mask_consts: int
  plan_per_batch: bool  # KernelPlan's Bs = B (else 1)
  plan_per_head: bool  # KernelPlan's Ks = K (else 1)
  differentiate_floats: bool = False  # some score-mod float array is differentiated


class Refs(NamedTuple):
  """The kernel inputs shared by the three kernels, unpacked (see `split_refs`)."""

  kind: object
  count: object
  order: object
  score_floats: list
  score_others: list
  mask_consts: list


def split_refs(st: Static, refs) -> tuple[Refs, list]:
  """refs = (kind, count, order, *score floats, *score others, *mask consts, *rest)."""
  n1, n2, n3 = st.num_score_floats, st.num_score_others, st.num_mask_consts
  kind, count, order, *refs = refs
  shared = Refs(kind, count, order, refs[:n1], refs[n1:n1 + n2], refs[n1 + n2:n1 + n2 + n3])
  return shared, refs[n1 + n2 + n3:]


def _plan_index(st: Static, b, k):
  return (b if st.plan_per_batch else 0), (k if st.plan_per_head else 0)


def _any(x, axis: int):
  # max over int32, not jnp.any: Triton has no boolean reduction.
  return jnp.max(x.astype(jnp.int32), axis=axis) > 0


def _load(refs) -> list:
  return [r[...] for r in refs]


class Tile:
  """One block pair (i, j) of one query head: index tiles, mask, logits and their VJP."""

  def __init__(self, st: Static, refs: Refs, b, h, i, j, masked: bool, float_values=None):
    """``float_values``: the score mod's float arrays as values (differentiated), else refs."""
    self.st = st
    rows = lax.broadcasted_iota(jnp.int32, (st.block_q, 1), 0)
    cols = lax.broadcasted_iota(jnp.int32, (1, st.block_k), 1)
    q_idx, kv_idx = i * st.block_q + rows, j * st.block_k + cols
    # The mods see real positions only: padding (masked below) is clamped onto the last one.
    self.index = (b, h, jnp.minimum(q_idx, st.q_len - 1), jnp.minimum(kv_idx, st.kv_len - 1))
    # The mods read their arrays from the refs (point lookups become loads at index tiles).
    self.score_floats = refs.score_floats if float_values is None else float_values
    self.floats_are_values = float_values is not None
    self.score_others = refs.score_others
    self.allowed = None
    if masked:
      ok = (q_idx < st.q_len) & (kv_idx < st.kv_len)
      if st.mask_mod is not None:
        ok = ok & st.mask_mod([], refs.mask_consts, *self.index, from_refs=True)
      self.allowed = jnp.broadcast_to(ok, (st.block_q, st.block_k))

  def clean_rows(self, x):
    """Query-side tile [bq, ...] with the rows that see no key of this block zeroed."""
    if self.allowed is None:
      return x
    return jnp.where(_any(self.allowed, axis=1)[:, None], x, jnp.zeros((), x.dtype))

  def clean_cols(self, x):
    """Key-side tile [bk, ...] with the keys no query of this block sees zeroed."""
    if self.allowed is None:
      return x
    return jnp.where(_any(self.allowed, axis=0)[:, None], x, jnp.zeros((), x.dtype))

  def logits(self, q, k, with_vjp: bool = False):
    """Masked logits [bq, bk] (float32); with ``with_vjp`` also d_logits -> (d_scores, d_floats),
    d_scores the gradient with respect to ``scale * q . k``."""
    st = self.st
    s = jnp.dot(q, k.T, preferred_element_type=F32) * st.scale
    vjp = None
    if st.score_mod is not None:
      values = self.floats_are_values
      record = {}

      def modded(x, floats, seed=None):
        if self.allowed is not None:  # a masked logit (garbage, 1e30) never reaches the mod
          x = jnp.where(self.allowed, x, 0.0)
        out = st.score_mod(floats, self.score_others, x, *self.index, from_refs=True,
                           floats_are_values=values, seed=seed,
                           record=None if seed is not None else record)
        return jnp.broadcast_to(out, x.shape).astype(F32)

      if not with_vjp:
        s = modded(s, self.score_floats)
      else:
        # The loads from refs happen here, outside the autodiff trace; vjp reuses them.
        modded(s, self.score_floats)
        if values:
          s, vjp = jax.vjp(lambda x, floats: modded(x, floats, record), s, self.score_floats)
        else:
          s, score_vjp = jax.vjp(lambda x: modded(x, self.score_floats, record), s)
          vjp = lambda d: (score_vjp(d)[0], [])
    if self.allowed is not None:  # `where`, not an additive mask: NaN and 1e30 are dropped
      s = jnp.where(self.allowed, s, -jnp.inf)
    if not with_vjp:
      return s
    return s, (vjp if vjp is not None else (lambda d: (d, [])))


def _walk(st: Static, refs: Refs, pb, pk, line, count_ref, order_ref, kind_of, body, carry):
  """fori_loop over the live blocks of row/column ``line``: body(other, masked, carry)."""
  def step(t, carry):
    other = order_ref[pb, pk, line, t]
    kind = kind_of(other)
    return lax.cond(kind == FULL, lambda c: body(other, False, c),
                    lambda c: body(other, True, c), carry)

  return lax.fori_loop(0, count_ref[pb, pk, line], step, carry)


def forward_kernel(st: Static, *refs):
  """Grid (B, K, nQ). refs: shared, q [G, bq, H], k [S_pad, H], v [S_pad, Hv] -> o [G, bq, Hv],
  lse [G, bq] (-inf for a row that sees no key)."""
  shared, (q_ref, k_ref, v_ref, o_ref, lse_ref) = split_refs(st, refs)
  b, kh, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  pb, pk = _plan_index(st, b, kh)
  groups, bq, bk = st.groups, st.block_q, st.block_k
  qs = [q_ref[g] for g in range(groups)]

  def body(j, masked, carry):
    k = k_ref[pl.ds(j * bk, bk), :]
    v = v_ref[pl.ds(j * bk, bk), :]
    new = []
    for g in range(groups):
      m, denom, acc = carry[g]
      tile = Tile(st, shared, b, kh * groups + g, i, j, masked)
      logits = tile.logits(tile.clean_rows(qs[g]), tile.clean_cols(k))
      m_new = jnp.maximum(m, jnp.max(logits, axis=1))
      # Rows with no allowed key so far keep m = -inf; shift them by 0 so exp gives 0, not NaN.
      m_safe = jnp.where(jnp.isneginf(m_new), 0.0, m_new)
      p = jnp.exp(logits - m_safe[:, None])
      rescale = jnp.exp(m - m_safe)
      pv = jnp.dot(p.astype(v.dtype), tile.clean_cols(v), preferred_element_type=F32)
      new.append((m_new, denom * rescale + jnp.sum(p, axis=1), acc * rescale[:, None] + pv))
    return tuple(new)

  init = tuple((jnp.full((bq,), -jnp.inf, F32), jnp.zeros((bq,), F32),
                jnp.zeros((bq, v_ref.shape[-1]), F32)) for _ in range(groups))
  stats = _walk(st, shared, pb, pk, i, shared.count, shared.order,
                lambda j: shared.kind[pb, pk, i, j], body, init)
  for g, (m, denom, acc) in enumerate(stats):
    has_keys = denom > 0
    safe = jnp.where(has_keys, denom, 1.0)
    o_ref[g] = (acc / safe[:, None]).astype(o_ref.dtype)
    lse_ref[g] = jnp.where(has_keys, m + jnp.log(safe), -jnp.inf)


def dkdv_kernel(st: Static, *refs):
  """Grid (B, K, nK). refs: shared, q [G, T_pad, H], do [G, T_pad, Hv], lse, delta [G, T_pad],
  k [bk, H], v [bk, Hv] -> dk [bk, H], dv [bk, Hv] (float32), and per score-mod float array its
  gradient summed over this program's blocks (reduced over the programs after the kernel)."""
  shared, rest = split_refs(st, refs)
  q_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref, dk_ref, dv_ref, *dfloat_refs = rest
  b, kh, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  pb, pk = _plan_index(st, b, kh)
  groups, bq = st.groups, st.block_q
  k, v = k_ref[...], v_ref[...]
  float_values = _load(shared.score_floats) if st.differentiate_floats else None

  def body(i, masked, carry):
    dk, dv, dfloats = carry
    rows = pl.ds(i * bq, bq)
    for g in range(groups):
      tile = Tile(st, shared, b, kh * groups + g, i, j, masked, float_values)
      q, do = tile.clean_rows(q_ref[g, rows, :]), tile.clean_rows(do_ref[g, rows, :])
      k_g, v_g = tile.clean_cols(k), tile.clean_cols(v)
      logits, vjp = tile.logits(q, k_g, with_vjp=True)
      p = jnp.exp(logits - lse_ref[g, rows][:, None])  # masked entries exactly 0
      dv = dv + jnp.dot(p.astype(do.dtype).T, do, preferred_element_type=F32)
      dp = jnp.dot(do, v_g.T, preferred_element_type=F32)
      d_scores, d_floats = vjp(p * (dp - delta_ref[g, rows][:, None]))
      d_scaled = (d_scores * st.scale).astype(q.dtype)
      dk = dk + jnp.dot(d_scaled.T, q, preferred_element_type=F32)
      if st.differentiate_floats:
        dfloats = [a + d.reshape(a.shape).astype(F32) for a, d in zip(dfloats, d_floats,
                                                                      strict=True)]
    return dk, dv, dfloats

  init = (jnp.zeros(dk_ref.shape, F32), jnp.zeros(dv_ref.shape, F32),
          [jnp.zeros(r.shape, F32) for r in dfloat_refs])
  dk, dv, dfloats = _walk(st, shared, pb, pk, j, shared.count, shared.order,
                          lambda i: shared.kind[pb, pk, i, j], body, init)
  dk_ref[...] = dk
  dv_ref[...] = dv
  for r, d in zip(dfloat_refs, dfloats, strict=True):
    r[...] = d


def dq_kernel(st: Static, *refs):
  """Grid (B, K, nQ). refs: shared, q [G, bq, H], do [G, bq, Hv], lse, delta [G, bq],
  k [S_pad, H], v [S_pad, Hv] -> dq [G, bq, H] (float32)."""
  shared, (q_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref, dq_ref) = split_refs(st, refs)
  b, kh, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  pb, pk = _plan_index(st, b, kh)
  groups, bk = st.groups, st.block_k
  qs, dos = [q_ref[g] for g in range(groups)], [do_ref[g] for g in range(groups)]
  lses, deltas = [lse_ref[g] for g in range(groups)], [delta_ref[g] for g in range(groups)]

  def body(j, masked, dqs):
    k = k_ref[pl.ds(j * bk, bk), :]
    v = v_ref[pl.ds(j * bk, bk), :]
    new = []
    for g in range(groups):
      tile = Tile(st, shared, b, kh * groups + g, i, j, masked)
      q, do = tile.clean_rows(qs[g]), tile.clean_rows(dos[g])
      k_g, v_g = tile.clean_cols(k), tile.clean_cols(v)
      logits, vjp = tile.logits(q, k_g, with_vjp=True)
      p = jnp.exp(logits - lses[g][:, None])
      dp = jnp.dot(do, v_g.T, preferred_element_type=F32)
      d_scores, _ = vjp(p * (dp - deltas[g][:, None]))
      d_scaled = (d_scores * st.scale).astype(k.dtype)
      new.append(dqs[g] + jnp.dot(d_scaled, k_g, preferred_element_type=F32))
    return tuple(new)

  init = tuple(jnp.zeros(dq_ref.shape[1:], F32) for _ in range(groups))
  dqs = _walk(st, shared, pb, pk, i, shared.count, shared.order,
              lambda j: shared.kind[pb, pk, i, j], body, init)
  for g in range(groups):
    dq_ref[g] = dqs[g]
