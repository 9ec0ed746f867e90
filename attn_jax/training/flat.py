"""Parameters as one flat vector.

The optimizer, the non-finite guard and the checkpoint all see a single float32 vector instead of
one array per parameter. For the small models of the long-range experiments this matters on CPU:
XLA compiles one fused AdamW update instead of one per parameter, which cuts the train step's
compile time (measured in docs/experiments.md), and the arithmetic is the same elementwise math.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class FlatLayout:
  """How a pytree of arrays maps to one vector: leaf ``i`` is ``vector[offsets[i]:offsets[i+1]]``
  reshaped to ``shapes[i]`` and cast to ``dtypes[i]``."""

  treedef: Any
  shapes: tuple[tuple[int, ...], ...]
  dtypes: tuple[Any, ...]
  offsets: tuple[int, ...]

  @classmethod
  def of(cls, tree: Any) -> "FlatLayout":
    """The layout of ``tree`` (concrete or abstract arrays, e.g. from ``nnx.eval_shape``)."""
    leaves, treedef = jax.tree.flatten(tree)
    shapes = tuple(tuple(x.shape) for x in leaves)
    sizes = [math.prod(s) for s in shapes]
    return cls(treedef, shapes, tuple(x.dtype for x in leaves),
               tuple(int(o) for o in np.cumsum([0, *sizes])))

  @property
  def size(self) -> int:
    return self.offsets[-1]

  def ravel(self, tree: Any) -> jax.Array:
    """tree -> float32 [size]."""
    leaves = jax.tree.leaves(tree)
    return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])

  def unravel(self, vector: jax.Array) -> Any:
    """float32 [size] -> the tree (each leaf in its own shape and dtype)."""
    leaves = [vector[start:end].reshape(shape).astype(dtype)
              for start, end, shape, dtype in zip(self.offsets[:-1], self.offsets[1:],
                                                  self.shapes, self.dtypes, strict=True)]
    return jax.tree.unflatten(self.treedef, leaves)

  def leaf_mask(self, keep) -> np.ndarray:
    """float32 [size]: 1 on the entries of the leaves whose shape satisfies ``keep(shape)``."""
    parts = [np.full(math.prod(s), float(keep(s)), np.float32) for s in self.shapes]
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)


@dataclasses.dataclass(frozen=True)
class TreeLayout:
  """The `FlatLayout` interface for parameters kept as their pytree (no raveling).

  Used when parameters must keep their shapes, e.g. to shard attention heads over a device mesh
  (`attn_jax.training.sharding`): a flat vector has no head axis to split."""

  treedef: Any
  shapes: tuple[tuple[int, ...], ...]

  @classmethod
  def of(cls, tree: Any) -> "TreeLayout":
    leaves, treedef = jax.tree.flatten(tree)
    return cls(treedef, tuple(tuple(x.shape) for x in leaves))

  @property
  def size(self) -> int:
    return sum(math.prod(s) for s in self.shapes)

  def ravel(self, tree: Any) -> Any:
    return tree

  def unravel(self, tree: Any) -> Any:
    return tree

  def leaf_mask(self, keep) -> Any:
    """A pytree of float32 scalars: 1.0 on the leaves whose shape satisfies ``keep(shape)``."""
    return jax.tree.unflatten(self.treedef, [np.float32(keep(s)) for s in self.shapes])
