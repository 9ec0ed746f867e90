"""Orbax checkpoints of a `TrainState`.

orbax is imported when a `Checkpointer` is built, not at ``import attn_jax``: the library stays
light for users who never checkpoint.

The state is saved as a flat ``{name: array}`` dict whose names are the pytree paths (e.g.
``params.blocks.0.attention.query.kernel``) and restored into the structure of a freshly
initialised state, so orbax never has to understand the nnx / optax container types.
"""

import os
import re
from typing import Any

import jax
import numpy as np


def _flat_names(tree: Any) -> tuple[list[str], list[Any], Any]:
  paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  names = []
  for path, _ in paths_and_leaves:
    name = re.sub(r"[^0-9A-Za-z_]+", ".", jax.tree_util.keystr(path)).strip(".")
    names.append(name)
  if len(set(names)) != len(names):  # cannot happen for our states; guard against silent loss
    raise ValueError(f"checkpoint names collide: {sorted(names)}")
  return names, [leaf for _, leaf in paths_and_leaves], treedef


def _abstract(leaf: Any) -> Any:
  if isinstance(leaf, jax.Array):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
  return np.zeros(np.shape(leaf), np.asarray(leaf).dtype)


class Checkpointer:
  """Saves and restores states under ``directory`` (one sub-directory per step).

  Saving is synchronous on purpose: the training loop donates the state's buffers to the next
  step, so a background save could read memory that is being overwritten.

  Args:
    directory: where the checkpoints go (created if missing).
    max_to_keep: how many of the latest checkpoints are kept.

  Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as directory:
    ...   checkpointer = Checkpointer(directory)
    ...   checkpointer.save(7, {"w": jnp.arange(3.0), "step": jnp.int32(7)})
    ...   restored = checkpointer.restore(checkpointer.latest_step(), like={
    ...       "w": jnp.zeros(3), "step": jnp.int32(0)})
    ...   checkpointer.close()
    >>> restored["w"], int(restored["step"])
    (Array([0., 1., 2.], dtype=float32), 7)
  """

  def __init__(self, directory: str, *, max_to_keep: int = 2):
    import orbax.checkpoint as ocp  # lazily: see the module docstring

    self._ocp = ocp
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             enable_async_checkpointing=False, create=True),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    names, leaves, _ = _flat_names(state)
    # jax.Arrays go to orbax as they are: each process writes the shards it holds, so sharded
    # and multi-host states save without gathering onto one host.
    flat = dict(zip(names, leaves, strict=True))
    self._manager.save(step, args=self._ocp.args.StandardSave(flat), force=True)
    self._manager.wait_until_finished()

  def restore(self, step: int, like: Any) -> Any:
    """The state saved at ``step``, in the structure, dtypes and shardings of ``like``.

    ``like`` may live on another mesh than the saved state did: each array is read straight
    into ``like``'s layout."""
    names, leaves, treedef = _flat_names(like)
    abstract = {name: _abstract(leaf) for name, leaf in zip(names, leaves, strict=True)}
    flat = self._manager.restore(step, args=self._ocp.args.StandardRestore(abstract))
    missing = sorted(set(names) - set(flat))
    if missing:
      raise ValueError(f"checkpoint at step {step} lacks {missing}: was it written by another "
                       "model or task configuration?")
    return jax.tree.unflatten(treedef, [jax.numpy.asarray(flat[name]) if not
                                        isinstance(flat[name], jax.Array) else flat[name]
                                        for name in names])

  def close(self) -> None:
    self._manager.close()
