"""Data- and head-parallel training on a `jax.sharding` device mesh — JAX's own machinery only.

A mesh has two axes: ``data`` (the batch is split over it) and ``model`` (attention heads and the
MLP's hidden units are split over it; Megatron-style tensor parallelism, Shoeybi et al. 2019).
Parameters and optimizer state are replicated over ``data``; with ``model > 1`` the per-head
weights are sharded over ``model`` and everything else is replicated. `jax.jit` with explicit
in/out shardings then lets XLA's SPMD partitioner insert the collectives.

Several hosts: call `initialize_distributed()` first on every host (it wraps
`jax.distributed.initialize`); the mesh then spans every host's devices. Batches are sampled
*inside* the jitted step from (seed, step) and constrained to the ``data`` axis, so each device —
hence each process — computes only its own slice of the global batch, with no loader to
coordinate.
"""

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from attn_jax.training.program import VALID_STREAM

DATA, MODEL = "data", "model"

# Which axis of a parameter holds heads (or MLP hidden units), by the parameter's name in the
# module tree. Adam's moments mirror the parameters' tree, so the same rules place them too.
_MODEL_AXIS_BY_NAME = {
    ("attention", "qkv_kernel"): 1,  # [D, K, G + 2, H]: whole kv groups per shard
    ("attention", "query_bias"): 0,  # [N, H]
    ("attention", "value_bias"): 0,  # [K, H]
    ("attention", "out_kernel"): 0,  # [N, H, D]
    ("attention", "relative_table"): 1,  # [buckets, N]
    ("score_params", "w_query"): 0,  # [N, H, A]
    ("score_params", "w_key"): 0,
    ("score_params", "v"): 0,  # [N, A]
    ("score_params", "w"): 0,  # [N, H, H]
    ("up", "kernel"): 1,  # Mlp: [D, F]
    ("up", "bias"): 0,  # [F]
    ("down", "kernel"): 0,  # [F, D]
}


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  """Mesh axis sizes; -1 on one axis takes every device the other leaves."""

  data: int = 1
  model: int = 1

  def __post_init__(self):
    for name in ("data", "model"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or (value < 1 and value != -1):
        raise ValueError(f"mesh.{name} must be an int >= 1 or -1 (all devices), got {value!r}")
    if self.data == -1 and self.model == -1:
      raise ValueError("at most one of mesh.data and mesh.model may be -1")

  def resolve(self, num_devices: int) -> tuple[int, int]:
    """(data, model) with -1 filled in; raises ValueError unless data * model == num_devices."""
    data, model = self.data, self.model
    if data == -1:
      data = num_devices // model if num_devices % model == 0 else 0
    if model == -1:
      model = num_devices // data if num_devices % data == 0 else 0
    if data < 1 or model < 1 or data * model != num_devices:
      raise ValueError(
          f"mesh data={self.data} x model={self.model} does not fit the {num_devices} "
          f"available devices (the product must equal the device count)")
    return data, model


def make_mesh(spec: MeshSpec, devices=None) -> Mesh:
  """A ('data', 'model') mesh over ``devices`` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  data, model = spec.resolve(len(devices))
  return Mesh(np.asarray(devices).reshape(data, model), (DATA, MODEL))


def check_divisible(mesh: Mesh, *, batch_size: int, num_heads: int | None = None,
                    num_kv_heads: int | None = None, d_ff: int | None = None) -> None:
  """Raises ValueError (before anything compiles) when the batch or the heads do not split."""
  data, model = mesh.shape[DATA], mesh.shape[MODEL]
  if batch_size % data:
    raise ValueError(
        f"train.batch_size ({batch_size}) must be divisible by the mesh's data axis ({data})")
  if model > 1:
    for name, value in (("num_heads", num_heads), ("num_kv_heads", num_kv_heads),
                        ("d_ff", d_ff)):
      if value is None:
        raise ValueError(f"mesh.model = {model} > 1 needs a model with attention heads; "
                         f"this one has no {name}")
      if value % model:
        raise ValueError(
            f"{name} ({value}) must be divisible by the mesh's model axis ({model})")


def _names(path) -> tuple[str, ...]:
  out = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        out.append(str(getattr(entry, attr)))
        break
  return tuple(out)


def _spec_for(path, leaf, model_size: int) -> PartitionSpec:
  if model_size == 1 or np.ndim(leaf) == 0:
    return PartitionSpec()
  names = _names(path)
  for (parent, name), axis in _MODEL_AXIS_BY_NAME.items():
    # Match "<parent>.<name>" anywhere in the path (Variables add a trailing "value" entry).
    for i in range(len(names) - 1):
      if names[i] == parent and names[i + 1] == name and np.shape(leaf)[axis] % model_size == 0:
        spec = [None] * np.ndim(leaf)
        spec[axis] = MODEL
        return PartitionSpec(*spec)
  return PartitionSpec()


def state_shardings(state: Any, mesh: Mesh) -> Any:
  """A `NamedSharding` for every leaf of ``state``: replicated, or heads over ``model``."""
  model_size = mesh.shape[MODEL]
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(mesh, _spec_for(path, leaf, model_size)), state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Arrays [B, ...] split over ``data`` along the batch axis."""
  return NamedSharding(mesh, PartitionSpec(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def initialize_distributed(**kwargs) -> None:
  """`jax.distributed.initialize` (arguments from the environment on TPU pods and SLURM/Open MPI
  clusters, or ``coordinator_address``, ``num_processes``, ``process_id``)."""
  jax.distributed.initialize(**kwargs)


def constrain_batches(task, sharding: NamedSharding):
  """``task`` whose sampled batches are laid out by ``sharding`` (split over ``data``).

  The constraint sits inside the jitted step, right where the batch is sampled, so XLA
  partitions the sampling itself: each device draws only its slice (jax's threefry is
  partitionable), and the numbers are those of the unsharded batch.
  """
  def sample(key, batch_size):
    return jax.lax.with_sharding_constraint(task.sample(key, batch_size), sharding)

  return dataclasses.replace(task, sample=sample)


@dataclasses.dataclass(frozen=True)
class ShardedFns:
  """The jitted functions of a program placed on a mesh (state in, state out, same layout)."""

  init: Any
  train_step: Any
  evaluate: Any  # on the held-out stream
  validate: Any  # on the validation stream (early stopping)
  shardings: Any


def shard_program(program, mesh: Mesh) -> ShardedFns:
  """`init`, `train_step` (state donated), `evaluate` and `validate` (the held-out and the
  validation stream) of ``program`` jitted with explicit in/out shardings on ``mesh``; the batch
  is split over ``data``."""
  # Heads can only be split where parameters keep their shapes: no flat vector then.
  program = dataclasses.replace(
      program, task=constrain_batches(program.task, batch_sharding(mesh)),
      flat_params=program.flat_params and mesh.shape[MODEL] == 1)
  abstract = jax.eval_shape(program.init, 0)
  shardings = state_shardings(abstract, mesh)
  rep = replicated(mesh)
  return ShardedFns(
      init=jax.jit(program.init, out_shardings=shardings),
      train_step=jax.jit(program.train_step, in_shardings=(shardings,),
                         out_shardings=(shardings, rep), donate_argnums=0),
      evaluate=jax.jit(program.evaluate, in_shardings=(shardings,), out_shardings=rep),
      validate=jax.jit(lambda state: program.evaluate(state, VALID_STREAM),
                       in_shardings=(shardings,), out_shardings=rep),
      shardings=shardings,
  )
