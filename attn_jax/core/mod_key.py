"""Mods as static arguments of a compiled program, keyed by what they compute.

The chunked kernel is compiled once per configuration, and the mods are part of it. Keyed on the
mod's identity, a cached program would go stale when a mod reads changed Python state (a flag, a
new array under the same closure), and every fresh but identical closure would recompile. Here a
mod is keyed by its traced program (`jax.make_jaxpr` on the dense index grid, which records every
Python value it read as a literal) and the shapes and dtypes of the arrays it closes over; those
arrays travel as ordinary (dynamic) arguments, so a new value never recompiles and is never stale.

A mask mod that closes over concrete values only is evaluated at trace time to plan the blocks
(`attn_jax.core.block_mask`): its closed-over values are baked into the program, so they are part
of its key.
"""

import hashlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.core import mods

Array = jax.Array


class ModKey:
  """A hashable stand-in for a mod, equal to another exactly when both compute the same.

  ``fn`` is the mod of the call that made the key. ``dynamic``: the arrays it closes over (those
  with ids ``array_ids``) are passed to the program as arguments (`rebind`); whatever else it
  holds is baked in and part of ``key``.
  """

  def __init__(self, fn: Callable, key: Any, dynamic: bool, array_ids: tuple[int, ...] = ()):
    self.fn, self.key, self.dynamic, self.array_ids = fn, key, dynamic, array_ids

  def __hash__(self) -> int:
    return hash(self.key)

  def __eq__(self, other) -> bool:
    return isinstance(other, ModKey) and self.key == other.key

  def __repr__(self) -> str:
    return f"ModKey({self.fn!r}, dynamic={self.dynamic})"


def _aval(x) -> tuple:
  return tuple(jnp.shape(x)), str(jnp.result_type(x))


def _value_digest(x) -> str:
  x = np.asarray(x)
  return hashlib.sha1(x.tobytes()).hexdigest() + str(x.dtype) + str(x.shape)


def _trace(fn: Callable, args) -> jax.extend.core.ClosedJaxpr:
  # A fresh wrapper: make_jaxpr caches on the function's identity, and would hand back the program
  # of an earlier trace of a mod whose Python state has changed since.
  return jax.make_jaxpr(lambda *a: fn(*a))(*args)


def key_mod(fn: Callable | None, grid: tuple[int, int, int, int], *,
            score: bool) -> tuple[ModKey | None, list]:
  """-> (key, closed-over arrays to pass as arguments) for a score mod (``score=True``) or a mask
  mod on the grid [B, N, T, S]; (None, []) for None.

  Traced twice: an array that is the same object both times is one the mod closes over (passed
  as an argument, keyed by shape and dtype); one made anew by each trace (``jnp.asarray`` of a
  numpy array or a Python list) is baked in, keyed by its value.
  """
  if fn is None:
    return None, []
  index = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in mods.grid_index(*grid)]
  args = [jax.ShapeDtypeStruct(grid, jnp.float32), *index] if score else index
  closed, again = _trace(fn, args), _trace(fn, args)
  consts = list(closed.consts)
  program = str(closed.jaxpr)
  is_tracer = lambda c: isinstance(c, jax.core.Tracer)
  if not score and not any(is_tracer(c) for c in consts):
    # Planned at trace time (`block_mask.is_static`): every value is part of the program.
    return ModKey(fn, ("baked", program, tuple(_value_digest(c) for c in consts)), False), []
  stable = {id(c) for c in again.consts}
  parts, arrays = [], []
  for c in consts:
    if id(c) in stable:
      parts.append(("argument", _aval(c)))
      arrays.append(c)
    elif is_tracer(c):  # made by this trace from traced values: never reused
      parts.append(("traced", id(c)))
    else:
      parts.append(("baked", _value_digest(c)))
  key = ModKey(fn, ("dynamic", program, tuple(parts)), True, tuple(id(c) for c in arrays))
  return key, arrays


def rebind(key: ModKey | None, arrays: list) -> Callable | None:
  """The mod of ``key`` computing with ``arrays`` (this call's closed-over arrays, as arguments of
  the program) in place of the ones it closes over: what runs inside the compiled program."""
  if key is None or not key.dynamic:
    return None if key is None else key.fn
  substitute = dict(zip(key.array_ids, arrays, strict=True))

  def mod(*args):
    spec = [jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)) for a in args]
    closed = _trace(key.fn, spec)
    consts = [substitute.get(id(c), c) for c in closed.consts]
    return jax.core.eval_jaxpr(closed.jaxpr, consts, *args)[0]

  return mod
