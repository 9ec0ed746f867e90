"""A sweep config -> the validated runs it asks for, each keyed by its settings.

A sweep config has top-level model sections and a `train` section, and one section per task group
(`copy_memory`, `mqar`, `control`). A group's section may override `train` (the budget: the same
for every model of the group, at every distance) and any model section
(``config.mqar.transformer`` over ``config.transformer``), and names each model's peak learning
rate in ``learning_rates`` (chosen by the same small search for every model; see
`experiments.lr_search`).
"""

import dataclasses
import hashlib
import json

import ml_collections

from experiments import settings

GROUPS = ("copy_memory", "mqar", "control")
TOP_LEVEL = {"models", "seeds", "workers", "attention_map_delay", "train", "lr_search",
             *settings.MODEL_SPECS, *GROUPS}


@dataclasses.dataclass(frozen=True)
class PlannedRun:
  """One configuration of the sweep, trained for every seed of ``seeds`` (one program).

  key: a digest of everything that decides the results (group, model, task, model sizes,
  budget, learning rate, seeds): a finished run is reused only under the same key."""

  group: str
  model: str
  settings: settings.RunSettings
  seeds: tuple[int, ...]
  key: str
  # Appended to the name (the learning-rate search runs one configuration at several rates).
  tag: str = ""

  @property
  def distance(self) -> int:
    return self.settings.task().distance

  @property
  def name(self) -> str:
    return f"{self.group}_{self.model}_{self.distance}{self.tag}"


def _dict(section) -> dict:
  if section is None:
    return {}
  return dict(section.to_dict() if hasattr(section, "to_dict") else section)


def settings_key(group: str, run_settings: settings.RunSettings, seeds) -> str:
  values = run_settings.to_dict()
  values.pop("seed")
  blob = json.dumps({"group": group, "seeds": list(seeds), **values}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_seeds(seeds) -> tuple[int, ...]:
  seeds = tuple(seeds)
  if not seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
    raise settings.ConfigError(f"seeds must be a non-empty tuple of ints >= 0, got {seeds!r}")
  if len(set(seeds)) != len(seeds):
    raise settings.ConfigError(f"seeds must be distinct, got {seeds!r}")
  return seeds


def task_grid(group: str, section) -> list[dict]:
  """The task sections of a group, one per distance."""
  if group == "control":
    return [_dict(section.task)]
  if group == "mqar":
    if len(section.seq_lens) != len(section.num_pairs):
      raise settings.ConfigError(
          f"mqar.seq_lens {tuple(section.seq_lens)} and mqar.num_pairs "
          f"{tuple(section.num_pairs)} must have the same length")
    extra = {"distractors": section.distractors} if "distractors" in section else {}
    return [{"name": "mqar", "seq_len": length, "num_pairs": pairs,
             "vocab_size": section.vocab_size, **extra}
            for length, pairs in zip(section.seq_lens, section.num_pairs, strict=True)]
  extra = {"recall_weight": section.recall_weight} if "recall_weight" in section else {}
  return [{"name": "copy_memory", "delay": delay, **extra} for delay in section.delays]


def learning_rate(config, group: str, model: str) -> float:
  """The group's chosen peak learning rate for ``model`` (its `learning_rates` entry)."""
  rates = _dict(config[group].get("learning_rates"))
  if model not in rates:
    raise settings.ConfigError(
        f"{group}.learning_rates has no entry for model {model!r} (it names {sorted(rates)})")
  return rates[model]


def plan(config, *, groups=GROUPS, distances: dict | None = None) -> list[PlannedRun]:
  """Every run of the sweep, validated before anything compiles.

  ``groups`` and ``distances`` (group -> the distances to keep) select a part of it (the
  learning-rate search uses them).
  """
  unknown = sorted(set(_dict(config)) - TOP_LEVEL)
  if unknown:
    raise settings.ConfigError(f"unknown sweep key(s) {unknown}")
  models = list(config.models)
  for model in models:
    if model not in settings.MODEL_SPECS:
      raise settings.ConfigError(f"models: {model!r} is not one of {sorted(settings.MODEL_SPECS)}")
  seeds = check_seeds(config.seeds)
  runs = []
  for group in groups:
    section = config.get(group)
    if section is None or not section.enabled:
      continue
    for task_values in task_grid(group, section):
      for model in models:
        single = {
            "model": model, "seed": 0, "task": task_values,
            "train": {**_dict(config.train), **_dict(section.get("train")),
                      "learning_rate": learning_rate(config, group, model)},
            model: {**_dict(config[model]), **_dict(section.get(model))},
        }
        run_settings = settings.run_settings(ml_collections.ConfigDict(single))
        planned = PlannedRun(group, model, run_settings, seeds,
                             settings_key(group, run_settings, seeds))
        if distances is None or planned.distance in distances.get(group, ()):
          runs.append(planned)
  return runs
