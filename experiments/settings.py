"""ConfigDict -> plain typed settings, validated once, before anything compiles.

The library never reads a ConfigDict: this module turns one into the dataclasses the library
takes (`TrainConfig`, a model spec, a task spec, a `MeshSpec`) and rejects unknown keys and invalid
values with a message naming the offending field.
"""

import dataclasses
import json
from typing import Any

from absl import logging

from attn_jax.tasks import CopyMemorySpec, MqarSpec, SelectiveCopySpec, Task, make_task
from attn_jax.training import MODEL_SPECS, Program, TrainConfig, make_model
from attn_jax.training.sharding import MeshSpec

TASK_SPECS = {"copy_memory": CopyMemorySpec, "mqar": MqarSpec,
              "selective_copy": SelectiveCopySpec}


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


  def to_dict(self) -> dict:
    """The settings that decide what a run computes, as plain JSON values: the model and its
    spec, the task, the training budget and the seed (not the mesh or cluster, which decide
    only where it runs: a checkpoint restores onto any mesh)."""
    return json.loads(json.dumps({
        "model": self.model, self.model: dataclasses.asdict(self.model_spec),
        "task": {"name": type(self.task_spec).__name__, **dataclasses.asdict(self.task_spec)},
        "train": dataclasses.asdict(self.train), "seed": self.seed,
    }))


# Fields that change what a run reports or how often it saves, not what it computes.
REPORTING_FIELDS = ("train.log_every", "train.eval_every", "train.eval_batches",
                    "train.checkpoint_every", "train.max_consecutive_nonfinite")


def _flatten(values: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in values.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def differences(saved: dict, current: dict, ignore: tuple[str, ...] = ()) -> list[str]:
  """``"field: saved -> current"`` for every dotted field whose value differs (a field only one
  side has counts as different), except those in ``ignore``."""
  old, new = _flatten(saved), _flatten(current)
  shown = lambda values, name: repr(values[name]) if name in values else "(absent)"
  return [f"{name}: {shown(old, name)} -> {shown(new, name)}"
          for name in sorted(set(old) | set(new))
          if name not in ignore and (name not in old or name not in new
                                     or old[name] != new[name])]


def _as_dict(section) -> dict:
  return dict(section.to_dict() if hasattr(section, "to_dict") else section)


def _train_config(section, name: str = "train") -> TrainConfig:
  """The `train` section; a warmup that does not fit ``num_steps`` is clamped, with a warning,
  so that ``--config.train.num_steps=5`` alone is a valid smoke run."""
  values = _as_dict(section)
  steps, warmup = values.get("num_steps"), values.get("warmup_steps")
  if (isinstance(steps, int) and isinstance(warmup, int) and steps >= 1
      and warmup >= steps):
    values["warmup_steps"] = steps // 10  # 10% of the run, 0 below 10 steps
    logging.warning("%s.warmup_steps=%d does not fit %s.num_steps=%d: warmup clamped to %d "
                    "steps", name, warmup, name, steps, values["warmup_steps"])
  return build(TrainConfig, values, name)


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
      train=_train_config(config.train),
      seed=seed,
      mesh=build(MeshSpec, mesh_values, "mesh"),
      distributed=distributed,
      cluster={k: v for k, v in cluster.items() if v is not None},
  )
  return settings
