"""The recall zoo: every mixer at several state sizes on MQAR and selective copying.

python -m experiments.sweep --config=configs/recall_zoo.py --workdir=DIR [--config.seeds='(a,b)']

The runs are those of the headline sweep (`experiments.sweep.train_all`: the seeds of a
configuration as one vmapped program, the same budget and early stop for every model of a task,
finished runs reused under the same settings key), over models that differ in their mixer alone
(`attn_jax.nn.MixerModel`). Every record carries the fields of the headline's records plus
``state_size`` (floats of recurrent state per sequence at the run's length), ``swept`` (the size
setting that varies) and, on MQAR, ``num_pairs``. Writes DIR/results.json, DIR/results.md,
DIR/state_size.png and DIR/learning_curves.png.
"""

import dataclasses
import json
import os

from flax import nnx

from attn_jax.training import MixerSpec, TrainConfig, make_model
from attn_jax.training.sharding import MeshSpec
from experiments import plan as plan_lib
from experiments import settings, zoo_plots
from experiments.plan import PlannedRun

# Zoo model names -> the mixer of `attn_jax.nn.mixers` each one runs.
ZOO_MODELS = {"transformer": "attention", "sliding_window": "sliding_window",
              "linear_attention": "linear_attention", "based": "based",
              "gated_linear": "gated_linear", "lstm": "lstm"}
TOP_LEVEL = {"recall_zoo", "finished_only", "models", "seeds", "workers", "model", "sizes",
             "learning_rates", "train", "mqar", "selective_copy", "lr_search"}
GROUPS = ("mqar", "selective_copy")


def is_zoo(config) -> bool:
  return bool(config.get("recall_zoo", False))


def _dict(section) -> dict:
  return plan_lib._dict(section)  # noqa: SLF001 (one conversion, shared with the sweep plan)


def task_sections(config, group: str) -> list[dict]:
  section = config[group]
  if group == "mqar":
    return plan_lib.task_grid("mqar", section)
  return [{"name": "selective_copy", "context_len": section.context_len,
           "num_tokens": section.num_tokens, "num_symbols": section.num_symbols}]


def _run_settings(config, group: str, model: str, task_values: dict, sizes: dict,
                  learning_rate: float) -> settings.RunSettings:
  train = {**_dict(config.train), **_dict(config[group].get("train")),
           "learning_rate": learning_rate}
  spec_values = {**_dict(config.model), **_dict(config[group].get("model")),
                 "mixer": ZOO_MODELS[model], **sizes}
  return settings.RunSettings(
      model=model, model_spec=settings.build(MixerSpec, spec_values, model),
      task_spec=settings.task_spec(task_values),
      train=settings.build(TrainConfig, train, f"{group}.train"), seed=0,
      mesh=settings.build(MeshSpec, {}, "mesh"))


def plan(config, *, learning_rates: dict | None = None, seeds=None, groups=GROUPS,
         keep=None) -> list[PlannedRun]:
  """Every run of the zoo (model x state size x task), validated before anything compiles.

  ``learning_rates`` ({model: rate}) and ``seeds`` replace the config's, and ``keep(run)``
  selects runs (the learning-rate search uses them).
  """
  unknown = sorted(set(_dict(config)) - TOP_LEVEL)
  if unknown:
    raise settings.ConfigError(f"unknown recall_zoo key(s) {unknown}")
  seeds = plan_lib.check_seeds(config.seeds if seeds is None else seeds)
  runs = []
  for model in config.models:
    if model not in ZOO_MODELS:
      raise settings.ConfigError(f"models: {model!r} is not one of {sorted(ZOO_MODELS)}")
    if model not in config.sizes:
      raise settings.ConfigError(f"sizes has no entry for model {model!r}")
  for group in groups:
    if not config[group].enabled:
      continue
    for task_values in task_sections(config, group):
      for model in config.models:
        sweep_field = config.sizes[model].field
        rates = _dict(config.learning_rates) if learning_rates is None else learning_rates
        if model not in rates:
          raise settings.ConfigError(f"learning_rates has no entry for model {model!r}")
        for value in config.sizes[model]["values"]:
          run_settings = _run_settings(config, group, model, task_values,
                                       {sweep_field: value}, rates[model])
          run = PlannedRun(group, model, run_settings, seeds,
                           plan_lib.settings_key(group, run_settings, seeds),
                           tag=f"_{sweep_field}{value}")
          if keep is None or keep(run):
            runs.append(run)
  return runs


def state_size(run: PlannedRun) -> int:
  """The run's model's recurrent state at the task's length (built abstractly: no arrays)."""
  task = run.settings.task()
  spec = run.settings.model_spec
  model = nnx.eval_shape(lambda: make_model(
      spec, vocab_size=task.vocab_size, max_len=task.seq_len, rngs=nnx.Rngs(0)))
  return int(model.state_size(task.seq_len))


def annotate(runs: list[PlannedRun], records: list[dict]) -> list[dict]:
  """Adds ``state_size``, ``swept``, ``mixer`` and (MQAR) ``num_pairs`` to the records, which
  come in the order of ``runs``, ``len(seeds)`` per run."""
  out = []
  index = 0
  for run in runs:
    size = state_size(run)
    spec = run.settings.model_spec
    for _ in run.seeds:
      record = dict(records[index])
      index += 1
      record["state_size"] = size
      record["mixer"] = spec.mixer
      record["swept"] = {field: getattr(spec, field) for field in ("d_model", "key_dim", "window")}
      record["model_spec"] = dataclasses.asdict(spec)
      task_spec = run.settings.task_spec
      if record["task"] == "mqar":
        record["num_pairs"] = task_spec.num_pairs
      out.append(record)
  return out


def run_zoo(config, workdir: str) -> dict:
  """Trains (or reuses) every run of the zoo and writes the results to ``workdir``."""
  from experiments import sweep  # noqa: PLC0415 (sweep imports this module)

  runs = plan(config)
  if config.get("finished_only", False):
    # Report an interrupted zoo: only the runs whose records are on disk under their key.
    runs = [r for r in runs if sweep._kept(  # noqa: SLF001 (the sweep's own reuse test)
        os.path.join(workdir, "runs", r.name + ".json"), r.key) is not None]
  load_before = [round(x, 2) for x in os.getloadavg()]
  records, summary = sweep.train_all(runs, workdir, int(config.get("workers", 1)))
  summary["load_average_before"] = load_before
  records = annotate(runs, records)
  results = {"runs": records, **summary, "finished_only": bool(config.get("finished_only")),
             "learning_rates": _dict(config.learning_rates),
             "lr_grid": list(config.lr_search.learning_rates),
             "seeds": list(config.seeds)}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(zoo_plots.results_table(records, summary))
  zoo_plots.state_size_plot(records, os.path.join(workdir, "state_size.png"))
  zoo_plots.learning_curves(records, os.path.join(workdir, "learning_curves.png"))
  return results
