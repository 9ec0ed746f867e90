"""ConfigDict -> plain typed settings, validated once, before anything compiles.

The library never reads a ConfigDict: this module turns one into the dataclasses the library
takes (`TrainConfig`, a model spec, a task spec, a `MeshSpec`) and rejects unknown keys and invalid
values with a message naming the offending field.
"""

import dataclasses
from typing import Any

from attn_jax.tasks import CopyMemorySpec, MqarSpec, Task, make_task
from attn_jax.training import MODEL_SPECS, Program, TrainConfig, make_model
from attn_jax.training.sharding import MeshSpec

TASK_SPECS = {"copy_memory": CopyMemorySpec, "mqar": MqarSpec}


class ConfigError(ValueError):
  """A config that cannot run: unknown keys or invalid values."""


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """Everything one training run needs, as plain typed values."""

  model: str
  model_spec: Any
  task_spec: Any
  train: TrainConfig
  seed: int
  mesh: MeshSpec
  distributed: bool = False
  # jax.distributed.initialize arguments (empty: detected from the environment).
  cluster: dict = dataclasses.field(default_factory=dict)

  def task(self) -> Task:
    return make_task(self.task_spec)

  def program(self, task: Task | None = None) -> Program:
    task = self.task() if task is None else task
    spec = self.model_spec
    return Program(lambda rngs: make_model(spec, vocab_size=task.vocab_size,
                                           max_len=task.seq_len, rngs=rngs), task, self.train)


def _as_dict(section) -> dict:
  return dict(section.to_dict() if hasattr(section, "to_dict") else section)


def build(cls, section, name: str):
  """``cls(**section)``, with unknown keys and bad values reported as ``name.key``."""
  values = _as_dict(section)
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ConfigError(f"unknown key(s) {[f'{name}.{k}' for k in unknown]}; "
                      f"{name} takes {sorted(fields)}")
  try:
    return cls(**values)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"invalid {name}: {e}") from e


def task_spec(section):
  """A task section {name, ...settings} -> CopyMemorySpec | MqarSpec."""
  values = _as_dict(section)
  name = values.pop("name", None)
  if name not in TASK_SPECS:
    raise ConfigError(f"task.name must be one of {sorted(TASK_SPECS)}, got {name!r}")
  spec = build(TASK_SPECS[name], values, f"task ({name})")
  try:
    make_task(spec)  # the task's own checks (e.g. num_pairs that do not fit seq_len)
  except ValueError as e:
    raise ConfigError(f"invalid task: {e}") from e
  return spec


def model_spec(name: str, config) -> Any:
  if name not in MODEL_SPECS:
    raise ConfigError(f"model must be one of {sorted(MODEL_SPECS)}, got {name!r}")
  if name not in config:
    raise ConfigError(f"config has no section {name!r} for model {name!r}")
  return build(MODEL_SPECS[name], config[name], name)


ALLOWED_TOP = {"model", "seed", "task", "train", "mesh", *MODEL_SPECS}


def run_settings(config) -> RunSettings:
  """Validates a single-run config (configs/copy_memory.py, configs/mqar.py)."""
  unknown = sorted(set(_as_dict(config)) - ALLOWED_TOP)
  if unknown:
    raise ConfigError(f"unknown top-level key(s) {unknown}; expected {sorted(ALLOWED_TOP)}")
  seed = config.seed
  if not isinstance(seed, int) or seed < 0:
    raise ConfigError(f"seed must be an int >= 0, got {seed!r}")
  mesh_values = _as_dict(config.get("mesh", {}))
  distributed = bool(mesh_values.pop("distributed", False))
  cluster = {"coordinator_address": mesh_values.pop("coordinator_address", "") or None,
             "num_processes": mesh_values.pop("num_processes", 0) or None,
             "process_id": None if mesh_values.get("process_id", -1) < 0
             else mesh_values["process_id"]}
  mesh_values.pop("process_id", None)
  settings = RunSettings(
      model=config.model,
      model_spec=model_spec(config.model, config),
      task_spec=task_spec(config.task),
      train=build(TrainConfig, config.train, "train"),
      seed=seed,
      mesh=build(MeshSpec, mesh_values, "mesh"),
      distributed=distributed,
      cluster={k: v for k, v in cluster.items() if v is not None},
  )
  return settings
