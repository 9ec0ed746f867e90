"""The block mask as a value: which (query block, key block) pairs can attend, computed once.

`create_block_mask` evaluates a ``mask_mod(b, h, q_idx, kv_idx)`` one row of blocks at a time
(never a [q_len, kv_len] array at once) and returns a `BlockMask`: a pytree whose leaves are the
block plan and the arrays the mod closes over, and whose static part is the sizes and the mod's
program (`attn_jax.core.block_plan.ModProgram`). It is built in numpy at trace time when the mod
closes over concrete values only, and on device when it closes over traced arrays (segment ids
under ``jit``); it may be created in one jitted function and passed to another, and new values of
the traced arrays never recompile. Pass it as ``block_mask=`` to `attn_jax.dot_product_attention`
any number of times (every layer of a model): the chunked kernel walks its lists, the dense
implementations evaluate its mod on the grid.

The plan (Bm = batch or 1, Hm = num_heads or 1, nQ = ceil(q_len / block_q), nK likewise):

- ``kind`` int8 [Bm, Hm, nQ, nK]: ``EMPTY`` (0, no pair may attend: skipped, no matmul, no
  exponential), ``PARTIAL`` (1, the kernel evaluates the mod per element) or ``FULL`` (2, every
  pair may attend: no per-element mask). The padding that rounds the lengths up to whole blocks
  counts as masked.
- forward and dQ walk: query block i of (b, h) visits key blocks
  ``kv_indices[b, h, i, :kv_count[b, h, i]]`` (ascending; the entries past the count list the
  empty blocks and are never read);
- dK / dV walk: key block j visits query blocks ``q_indices[b, h, j, :q_count[b, h, j]]``;
- ``max_kv_blocks``, ``max_q_blocks`` (static ints): bounds on every ``kv_count`` / ``q_count``,
  also when the counts of all heads of a (b, block) are merged (a kernel that visits every head
  of a block at once walks their union): exact when the plan was computed in numpy, else from the
  terms known at trace time (the number of blocks when none is);
- ``rows_seen`` bool [Bm, Hm, q_len]: query rows that may see some key (the others give zeros);
  ``keys_seen`` bool [Bm, Hm, kv_len]: key positions some query may see (the others never enter
  the arithmetic, so whatever they hold cannot leak).

Example:
  >>> import attn_jax
  >>> from attn_jax.core import mods
  >>> print(attn_jax.create_block_mask(mods.causal(), None, None, 8, 8, block_q=4, block_k=4))
  BlockMask(batch=None, num_heads=None, q_len=8, kv_len=8, block=(4, 4), sparsity=25.00%)
  b=0, h=0 (██ full, ░░ partial, blank: empty):
  ░░
  ██░░
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.core import block_plan
from attn_jax.core.block_plan import EMPTY, FULL, PARTIAL, ModProgram

Array = jax.Array
MaskMod = Callable[[Array, Array, Array, Array], Array]

#: Block size when the mask is only known on device (traced arrays), and for dense and causal.
DEFAULT_BLOCK = 512
#: Block sizes tried when the caller leaves them open and the mask is known at trace time: the
#: choice minimises the attended area of the live blocks plus BLOCK_OVERHEAD pairs per visited
#: block (smaller blocks waste less of a band's edges).
AUTO_BLOCKS = (512, 256, 128, 64)
#: The fixed cost of visiting a block, in attended pairs (a loop step and the rescaling of the
#: running sums), fitted on CPU to a causal window of 256 at L16384, forward + backward.
BLOCK_OVERHEAD = 32 * 32

_LEAVES = ("kind", "kv_count", "kv_indices", "q_count", "q_indices", "rows_seen", "keys_seen",
           "mask_consts", "dense")
_STATIC = ("batch", "num_heads", "q_len", "kv_len", "block_q", "block_k", "program",
           "max_kv_blocks", "max_q_blocks")


@jax.tree_util.register_pytree_node_class
class BlockMask:
  """The block plan of a mask (see the module doc for the fields). Make one with
  `create_block_mask`; the constructor takes the fields as they are.

  Example:
    >>> from attn_jax.core import mods
    >>> bm = create_block_mask(mods.causal(), None, None, 8, 8, block_q=4, block_k=4)
    >>> bm.kind[0, 0].tolist()  # 0 EMPTY, 1 PARTIAL, 2 FULL
    [[1, 0], [2, 1]]
    >>> bm.kv_count[0, 0].tolist(), bm.sparsity()
    ([1, 2], 0.25)
  """

  def __init__(self, kind, kv_count, kv_indices, q_count, q_indices, rows_seen, keys_seen,
               mask_consts, dense, *, batch, num_heads, q_len, kv_len, block_q, block_k, program,
               max_kv_blocks, max_q_blocks):
    self.kind, self.kv_count, self.kv_indices = kind, kv_count, kv_indices
    self.q_count, self.q_indices = q_count, q_indices
    self.rows_seen, self.keys_seen = rows_seen, keys_seen
    self.mask_consts, self.dense = tuple(mask_consts), dense
    self.batch, self.num_heads, self.q_len, self.kv_len = batch, num_heads, q_len, kv_len
    self.block_q, self.block_k, self.program = block_q, block_k, program
    self.max_kv_blocks, self.max_q_blocks = max_kv_blocks, max_q_blocks

  def tree_flatten(self):
    return (tuple(getattr(self, f) for f in _LEAVES), tuple(getattr(self, f) for f in _STATIC))

  @classmethod
  def tree_unflatten(cls, static, leaves):
    return cls(*leaves, **dict(zip(_STATIC, static, strict=True)))

  @property
  def shape(self) -> tuple[int, int, int, int]:
    """(Bm, Hm, q_len, kv_len): the sizes of `to_dense`."""
    return (self.batch or 1, self.num_heads or 1, self.q_len, self.kv_len)

  @property
  def num_blocks(self) -> tuple[int, int]:
    """(nQ, nK)."""
    return -(-self.q_len // self.block_q), -(-self.kv_len // self.block_k)

  def mask_mod(self, b, h, q_idx, kv_idx) -> Array:
    """The mask as a mod of index arrays (b and h are taken as 0 where batch / num_heads is None);
    the dense term of a block mask made for one chunked call included."""
    zero = lambda x, size: x if size else jnp.zeros_like(x)
    b, h = zero(jnp.asarray(b, jnp.int32), self.batch), zero(jnp.asarray(h, jnp.int32),
                                                              self.num_heads)
    q_idx, kv_idx = jnp.asarray(q_idx, jnp.int32), jnp.asarray(kv_idx, jnp.int32)
    out = jnp.ones((), bool)
    if self.program is not None:
      out = self.program(self.mask_consts, b, h, q_idx, kv_idx)
    if self.dense is not None:
      dense = self.dense
      index = (b if dense.shape[0] > 1 else 0, h if dense.shape[1] > 1 else 0,
               q_idx if dense.shape[2] > 1 else 0, kv_idx if dense.shape[3] > 1 else 0)
      out = out & dense[index]
    return out

  def to_dense(self) -> Array:
    """The mask on the full grid: bool [Bm, Hm, q_len, kv_len] (Bm = batch or 1, Hm likewise)."""
    bm, hm, t, s = self.shape
    out = jnp.ones((), bool)
    if self.program is not None:
      grid = [jnp.arange(n, dtype=jnp.int32).reshape([n if a == axis else 1 for a in range(4)])
              for axis, n in enumerate(self.shape)]
      out = self.program(self.mask_consts, *grid)
    if self.dense is not None:
      out = out & self.dense[..., :t, :s]
    return jnp.broadcast_to(out, (bm, hm, t, s))

  def sparsity(self):
    """The fraction of blocks no query may see (EMPTY), over every (b, h): a float (a scalar
    array when the plan is traced)."""
    if isinstance(self.kind, jax.core.Tracer):
      return jnp.mean(self.kind == EMPTY)
    return float(np.mean(np.asarray(self.kind) == EMPTY))

  def check_sizes(self, batch: int, num_heads: int, q_len: int, kv_len: int) -> None:
    """Raises ValueError unless this block mask was made for a call of these sizes."""
    wrong = [f"{name} {mine} (the call's {theirs})" for name, mine, theirs in (
        ("batch", self.batch, batch), ("num_heads", self.num_heads, num_heads),
        ("q_len", self.q_len, q_len), ("kv_len", self.kv_len, kv_len))
        if mine is not None and mine != theirs]
    if wrong:
      raise ValueError(f"block_mask was made for other sizes: {', '.join(wrong)}")

  def __repr__(self) -> str:
    sparsity = self.sparsity()
    head = (f"BlockMask(batch={self.batch}, num_heads={self.num_heads}, q_len={self.q_len}, "
            f"kv_len={self.kv_len}, block=({self.block_q}, {self.block_k})")
    if isinstance(self.kind, jax.core.Tracer):
      return head + ", traced)"
    return f"{head}, sparsity={100 * sparsity:.2f}%)\n" + _grid(np.asarray(self.kind)[0, 0])


def _grid(kind: np.ndarray, limit: int = 32) -> str:
  """Text drawing of kind [nQ, nK] (b = 0, h = 0), at most ``limit`` blocks a side."""
  chars = {EMPTY: "  ", PARTIAL: "░░", FULL: "██"}
  rows = ["".join(chars[int(k)] for k in row[:limit]).rstrip() + (" ..." if len(row) > limit
                                                                   else "")
          for row in kind[:limit]]
  if len(kind) > limit:
    rows.append("...")
  return "b=0, h=0 (██ full, ░░ partial, blank: empty):\n" + "\n".join(rows)


def _is_traced(*trees) -> bool:
  return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(trees))


def build(program: ModProgram | None, consts, dense, *, batch: int | None,
          num_heads: int | None, q_len: int, kv_len: int, block_q: int, block_k: int,
          bound: "BlockMask | None" = None) -> BlockMask:
  """The block mask of a traced program (see `ModProgram.trace`) and an optional dense term
  ``dense`` bool [Bm|1, Hm|1, T|1, S|1]: in numpy when nothing is traced, else on device.
  ``bound``: a numpy block mask of the same blocks whose live blocks contain these (the terms
  known at trace time), for the static trip counts of a traced plan."""
  block_q, block_k = min(block_q, q_len), min(block_k, kv_len)
  nq, nk = -(-q_len // block_q), -(-kv_len // block_k)
  shape = (batch or 1, num_heads or 1, q_len, kv_len)
  padded = None
  if dense is not None:
    widths = [(0, 0), (0, 0), (0, nq * block_q - q_len if dense.shape[2] > 1 else 0),
              (0, nk * block_k - kv_len if dense.shape[3] > 1 else 0)]
    padded = jnp.pad(dense, widths, constant_values=False)
  traced = _is_traced(consts, dense)
  summarize = lambda concrete: block_plan.summarize(shape, (block_q, block_k), program, consts,
                                                     padded, concrete=concrete)
  if traced:
    kind, rows_seen, keys_seen = summarize(False)
  else:
    with jax.ensure_compile_time_eval():
      kind, rows_seen, keys_seen = (np.asarray(x) for x in summarize(True))
  if traced and bound is None:
    steps = (nk, nq)
  else:
    source = np.asarray(kind if bound is None else bound.kind)
    live = block_plan.union(source, (1,)) != EMPTY  # [Bm, 1, nQ, nK]
    steps = (int(live.sum(axis=-1).max(initial=0)), int(live.sum(axis=-2).max(initial=0)))
  return BlockMask(kind, *block_plan.walk_lists(kind), rows_seen, keys_seen, consts, dense,
                   batch=batch, num_heads=num_heads, q_len=q_len, kv_len=kv_len,
                   block_q=block_q, block_k=block_k, program=program, max_kv_blocks=steps[0],
                   max_q_blocks=steps[1])


def choose_blocks(program: ModProgram | None, consts, *, batch, num_heads, q_len: int,
                  kv_len: int) -> tuple[int, int]:
  """Block sizes for a mask known at trace time (nothing traced): the cheapest of AUTO_BLOCKS,
  counting each live block's area plus BLOCK_OVERHEAD; DEFAULT_BLOCK otherwise."""
  if program is None or _is_traced(consts):
    return DEFAULT_BLOCK, DEFAULT_BLOCK

  def cost(block):
    bm = build(program, consts, None, batch=batch, num_heads=num_heads, q_len=q_len,
               kv_len=kv_len, block_q=block, block_k=block)
    live = int((block_plan.union(bm.kind, (0, 1)) != EMPTY).sum())
    return live * (bm.block_q * bm.block_k + BLOCK_OVERHEAD)

  block = min(AUTO_BLOCKS, key=cost)  # the first (largest) among equals
  return block, block


def create_block_mask(mask_mod: MaskMod, batch: int | None, num_heads: int | None, q_len: int,
                      kv_len: int, *, block_q: int | None = None,
                      block_k: int | None = None) -> BlockMask:
  """The block plan of ``mask_mod`` for calls of these sizes, computed once.

  mask_mod: ``mask_mod(b, h, q_idx, kv_idx) -> bool`` (True = may attend; `attn_jax.core.mods`),
  elementwise code that may close over arrays (traced or not). batch, num_heads: the sizes of the
  calls, or None where the mask does not depend on ``b`` / ``h`` (it is then evaluated at 0).
  q_len, kv_len: T and S. block_q, block_k: block sizes; None: chosen for the mask when it is
  known at trace time (see AUTO_BLOCKS), else DEFAULT_BLOCK.

  Returns a `BlockMask` to pass as ``block_mask=`` to `attn_jax.dot_product_attention`.

  Example:
    >>> import jax.numpy as jnp
    >>> from attn_jax.core import mods
    >>> ids = jnp.asarray([[0, 0, 0, 0, 1, 1, 1, 1]])  # two packed documents
    >>> bm = create_block_mask(mods.document(ids), None, None, 8, 8, block_q=2, block_k=2)
    >>> bm.sparsity()
    0.5
    >>> bm.to_dense().shape
    (1, 1, 8, 8)
  """
  for name, size in (("batch", batch), ("num_heads", num_heads)):
    if size is not None and size < 1:
      raise ValueError(f"{name} must be None or positive; got {size}")
  if q_len < 1 or kv_len < 1:
    raise ValueError(f"q_len and kv_len must be positive; got {q_len} and {kv_len}")
  if any(b is not None and b < 1 for b in (block_q, block_k)):
    raise ValueError(f"block sizes must be positive; got block_q={block_q}, block_k={block_k}")
  if not callable(mask_mod):
    raise ValueError(f"mask_mod must be callable; got {mask_mod!r}")
  program, consts = ModProgram.trace(mask_mod)
  if block_q is None and block_k is None:
    block_q, block_k = choose_blocks(program, consts, batch=batch, num_heads=num_heads,
                                     q_len=q_len, kv_len=kv_len)
  return build(program, consts, None, batch=batch, num_heads=num_heads, q_len=q_len,
               kv_len=kv_len, block_q=block_q or DEFAULT_BLOCK, block_k=block_k or DEFAULT_BLOCK)


__all__ = ["EMPTY", "FULL", "PARTIAL", "BlockMask", "create_block_mask"]
