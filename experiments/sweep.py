"""The headline experiment: every model on copy_memory and mqar over a range of distances.

python -m experiments.sweep --config=configs/long_range.py --workdir=DIR

Writes DIR/results.json, DIR/results.md, DIR/accuracy_vs_distance.png, DIR/attention_maps.png.
Each finished run is also kept as DIR/runs/NAME.json, so an interrupted sweep picks up where it
stopped when rerun on the same DIR.
"""

import json
import os
import time

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import plots, settings

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a program, so that tests can import this module.
  config_flags.DEFINE_config_file("config", None, "Path to a sweep config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Output directory.")
  flags.mark_flags_as_required(["config", "workdir"])


def plan(config) -> list[tuple[str, str, settings.RunSettings]]:
  """Every (task, model, distance) run of the sweep, validated before anything compiles."""
  runs = []
  models = list(config.models)
  for task_name in ("copy_memory", "mqar", "control"):
    section = config.get(task_name)
    if section is None or not section.enabled:
      continue
    for task_values in _task_grid(task_name, section):
      for model in models:
        if model not in section.get("models", models):
          continue
        single = {
            "model": model, "seed": 0, "task": task_values,
            "train": dict(config.train.to_dict(), **section.get("train", {}).to_dict()),
            model: config[model].to_dict(),
        }
        runs.append((task_name, model, settings.run_settings(ml_collections.ConfigDict(single))))
  return runs


def _task_grid(task_name: str, section) -> list[dict]:
  if task_name == "mqar":
    return [{"name": "mqar", "seq_len": length, "num_pairs": pairs,
             "vocab_size": section.vocab_size}
            for length, pairs in zip(section.seq_lens, section.num_pairs, strict=True)]
  extra = {"recall_weight": section.recall_weight} if "recall_weight" in section else {}
  return [{"name": "copy_memory", "delay": delay, **extra} for delay in section.delays]


def run_one(run_settings: settings.RunSettings, seeds: list[int]) -> tuple[dict, object]:
  """Trains one configuration for every seed (one vmapped program when several)."""
  from attn_jax.training import train, train_seeds

  task = run_settings.task()
  program = run_settings.program(task)
  if len(seeds) == 1:
    result = train(program, seeds[0])
    per_seed = [result.eval_metrics]
    states = [result.state]
  else:
    result = train_seeds(program, seeds)
    per_seed = [{k: v[i] for k, v in result.eval_metrics.items()} for i in range(len(seeds))]
    import jax

    states = [jax.tree.map(lambda x, i=i: x[i], result.state) for i in range(len(seeds))]
  records = [{
      "task": task.name, "model": run_settings.model, "distance": task.distance,
      "seed": seed, "params": result.num_params, "steps": run_settings.train.num_steps,
      "wall_s": round(result.wall_s / len(seeds), 2), "metrics": metrics,
      "chance_accuracy": task.chance_accuracy, "reference": task.reference,
  } for seed, metrics in zip(seeds, per_seed, strict=True)]
  return records, (program, states[0])


def sweep(config, workdir: str) -> dict:
  runs = plan(config)
  seeds = list(config.seeds)
  os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)
  all_records, attention_source = [], None
  started = time.perf_counter()
  for index, (group, model, run_settings) in enumerate(runs):
    task_spec = run_settings.task_spec
    distance = getattr(task_spec, "delay", None) or getattr(task_spec, "seq_len", None)
    name = f"{group}_{model}_{distance}"
    path = os.path.join(workdir, "runs", name + ".json")
    want_attention = (group == "copy_memory" and model == "transformer"
                      and distance == config.attention_map_delay)
    if os.path.exists(path) and not want_attention:
      with open(path) as f:
        records = json.load(f)
      print(f"[{index + 1}/{len(runs)}] {name}: done earlier, kept", flush=True)
    else:
      print(f"[{index + 1}/{len(runs)}] {name} ...", flush=True)
      records, trained = run_one(run_settings, seeds)
      if want_attention:
        attention_source = trained
      with open(path, "w") as f:
        json.dump(records, f, indent=2)
      m = records[0]["metrics"]
      print(f"    accuracy {m['accuracy']:.4f}  loss {m['loss']:.4f}  "
            f"params {records[0]['params']}  {records[0]['wall_s']:.1f}s/seed", flush=True)
    for r in records:
      r["group"] = group
    all_records.extend(records)
  results = {"runs": all_records, "total_wall_s": round(time.perf_counter() - started, 1)}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(plots.results_table(all_records))
  plots.accuracy_vs_distance(all_records, os.path.join(workdir, "accuracy_vs_distance.png"))
  if attention_source is not None:
    plots.attention_maps(*attention_source, os.path.join(workdir, "attention_maps.png"))
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  try:
    results = sweep(FLAGS.config, FLAGS.workdir)
  except settings.ConfigError as e:
    raise app.UsageError(str(e)) from e
  print(f"sweep done in {results['total_wall_s']} s; table in {FLAGS.workdir}/results.md")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
