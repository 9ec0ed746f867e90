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

Example:
  Every device on the data axis (here the one CPU device; on 8 devices each step's batch is split
  8 ways):

  >>> from attn_jax.training import sharding
  >>> mesh = sharding.make_mesh(sharding.MeshSpec(data=-1))
  >>> mesh.axis_names, mesh.shape["data"] == len(jax.devices())
  (('data', 'model'), True)
"""

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from attn_jax.tasks import Task
from attn_jax.training.program import VALID_STREAM, Program

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
  """Mesh axis sizes; -1 on one axis takes every device the other leaves.

  Attributes:
    data: devices along the batch (data-parallel) axis, or -1.
    model: devices along the heads (model-parallel) axis, or -1.

  Example:
    >>> MeshSpec(data=-1, model=2).resolve(8)
    (4, 2)
  """

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
  """A ('data', 'model') mesh over ``devices`` (default: every device of every process).

  Args:
    spec: the axis sizes; their product must be the device count.
    devices: the devices to lay out (default ``jax.devices()``).

  Returns:
    A `jax.sharding.Mesh` with axes ``("data", "model")``.

  Example:
    >>> mesh = make_mesh(MeshSpec(data=-1), devices=jax.devices()[:1])
    >>> dict(mesh.shape)
    {'data': 1, 'model': 1}
  """
  devices = jax.devices() if devices is None else list(devices)
  data, model = spec.resolve(len(devices))
  return Mesh(np.asarray(devices).reshape(data, model), (DATA, MODEL))


def check_divisible(mesh: Mesh, *, batch_size: int, num_heads: int | None = None,
                    num_kv_heads: int | None = None, d_ff: int | None = None) -> None:
  """Raises ValueError (before anything compiles) when the batch or the heads do not split.

  Args:
    mesh: the ``("data", "model")`` mesh.
    batch_size: must be divisible by the data axis.
    num_heads: with a model axis > 1, must be divisible by it (likewise ``num_kv_heads`` and
      ``d_ff``).
    num_kv_heads: the key/value heads.
    d_ff: the feed-forward width.

  Example:
    >>> mesh = make_mesh(MeshSpec(), devices=jax.devices()[:1])
    >>> check_divisible(mesh, batch_size=32)  # one device: anything splits
  """
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
  """A `NamedSharding` for every leaf of ``state``: replicated, or heads over ``model``.

  Args:
    state: a pytree (a `TrainState`, or its abstract shapes).
    mesh: the ``("data", "model")`` mesh.

  Returns:
    A pytree of `jax.sharding.NamedSharding` like ``state``.

  Example:
    >>> mesh = make_mesh(MeshSpec(), devices=jax.devices()[:1])
    >>> state_shardings({"w": jnp.ones((4, 2))}, mesh)["w"].spec
    P()
  """
  model_size = mesh.shape[MODEL]
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(mesh, _spec_for(path, leaf, model_size)), state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Arrays [B, ...] split over ``data`` along the batch axis.

  Example:
    >>> batch_sharding(make_mesh(MeshSpec(), devices=jax.devices()[:1])).spec
    P('data',)
  """
  return NamedSharding(mesh, PartitionSpec(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  """Arrays held whole by every device of ``mesh``.

  Example:
    >>> replicated(make_mesh(MeshSpec(), devices=jax.devices()[:1])).spec
    P()
  """
  return NamedSharding(mesh, PartitionSpec())


def initialize_distributed(**kwargs: Any) -> None:
  """`jax.distributed.initialize` (arguments from the environment on TPU pods and SLURM/Open MPI
  clusters, or ``coordinator_address``, ``num_processes``, ``process_id``)."""
  jax.distributed.initialize(**kwargs)


def constrain_batches(task: Task, sharding: NamedSharding) -> Task:
  """``task`` whose sampled batches are laid out by ``sharding`` (split over ``data``).

  The constraint sits inside the jitted step, right where the batch is sampled, so XLA
  partitions the sampling itself: each device draws only its slice (jax's threefry is
  partitionable), and the numbers are those of the unsharded batch.

  Args:
    task: the task whose batches to lay out.
    sharding: usually `batch_sharding` of the mesh.

  Returns:
    The task with its ``sample`` wrapped; everything else unchanged.

  Example:
    >>> from attn_jax import tasks
    >>> mesh = make_mesh(MeshSpec(), devices=jax.devices()[:1])
    >>> task = tasks.make_task(tasks.CopyMemorySpec(delay=5))
    >>> split = constrain_batches(task, batch_sharding(mesh))
    >>> batch = jax.jit(split.sample, static_argnums=1)(jax.random.key(0), 4)
    >>> bool((batch.inputs == task.sample(jax.random.key(0), 4).inputs).all())
    True
  """
  def sample(key, batch_size):
    return jax.lax.with_sharding_constraint(task.sample(key, batch_size), sharding)

  return dataclasses.replace(task, sample=sample)


@dataclasses.dataclass(frozen=True)
class ShardedFns:
  """The jitted functions of a program placed on a mesh (state in, state out, same layout).

  Attributes:
    init: ``seed -> TrainState``, laid out on the mesh.
    train_step: ``state -> (state, metrics)``; the state's buffers are donated.
    evaluate: ``state -> metrics`` on the held-out stream.
    validate: ``state -> metrics`` on the validation stream (early stopping).
    shardings: the `NamedSharding` of every leaf of the state.

  Example:
    `shard_program` makes one; its fields are the functions:

    >>> ShardedFns.__dataclass_fields__.keys()
    dict_keys(['init', 'train_step', 'evaluate', 'validate', 'shardings'])
  """

  init: Any
  train_step: Any
  evaluate: Any  # on the held-out stream
  validate: Any  # on the validation stream (early stopping)
  shardings: Any


def shard_program(program: Program, mesh: Mesh) -> ShardedFns:
  """`init`, `train_step` (state donated), `evaluate` and `validate` (the held-out and the
  validation stream) of ``program`` jitted with explicit in/out shardings on ``mesh``; the batch
  is split over ``data``.

  Args:
    program: what to train.
    mesh: the ``("data", "model")`` mesh.

  Returns:
    The `ShardedFns`.

  Example:
    >>> from attn_jax import nn, tasks, training
    >>> task = tasks.make_task(tasks.CopyMemorySpec(delay=5))  # L = 25, vocab 10
    >>> model_fn = lambda rngs: nn.TransformerEncoder(
    ...     vocab_size=10, max_len=25, num_layers=1, num_heads=2, d_model=8, d_ff=16, rngs=rngs)
    >>> config = training.TrainConfig(num_steps=3, batch_size=4, warmup_steps=1)
    >>> program = training.Program(model_fn, task, config)
    >>> mesh = training.sharding.make_mesh(training.sharding.MeshSpec(),
    ...                                    devices=jax.devices()[:1])
    >>> fns = training.sharding.shard_program(program, mesh)
    >>> state, metrics = fns.train_step(fns.init(0))
    >>> int(state.step)
    1
  """
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
