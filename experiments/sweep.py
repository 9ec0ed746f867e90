"""The headline experiment: every model on copy_memory and mqar over a range of distances.

python -m experiments.sweep --config=configs/long_range.py --workdir=DIR [--config.FIELD=V]

Writes DIR/results.json, DIR/results.md, DIR/accuracy_vs_distance.png, DIR/attention_maps.png.
Each finished run is also kept as DIR/runs/NAME.json, so an interrupted sweep picks up where it
stopped when rerun on the same DIR. Runs are spread over ``config.workers`` processes (one per
CPU core pays off: most of a run is single-threaded compilation and small ops).
"""

import concurrent.futures
import json
import multiprocessing
import os
import time

import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import cpu_flags, plots, settings

FLAGS = flags.FLAGS
GROUPS = ("copy_memory", "mqar", "control")
# Rough relative cost per step and position^2, to start the longest runs first.
_MODEL_COST = {"transformer": 1.0, "lstm": 0.3, "lstm_attention": 3.0}


def _define_flags() -> None:
  # Defined only when run as a program, so that tests can import this module.
  config_flags.DEFINE_config_file("config", None, "Path to a sweep config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Output directory.")
  flags.mark_flags_as_required(["config", "workdir"])


def _dict(section) -> dict:
  if section is None:
    return {}
  return dict(section.to_dict() if hasattr(section, "to_dict") else section)


def plan(config) -> list[tuple[str, str, settings.RunSettings]]:
  """Every (group, model, run settings) of the sweep, validated before anything compiles.

  A group's section may override `train` and any model section (``config.mqar.transformer``
  over ``config.transformer``): settings belong to a task, and every model gets the same
  training budget on it.
  """
  unknown = sorted(set(_dict(config)) - {"models", "seeds", "workers", "attention_map_delay",
                                         "train", *settings.MODEL_SPECS, *GROUPS})
  if unknown:
    raise settings.ConfigError(f"unknown sweep key(s) {unknown}")
  runs = []
  models = list(config.models)
  for model in models:
    if model not in settings.MODEL_SPECS:
      raise settings.ConfigError(f"models: {model!r} is not one of {sorted(settings.MODEL_SPECS)}")
  for group in GROUPS:
    section = config.get(group)
    if section is None or not section.enabled:
      continue
    for task_values in _task_grid(group, section):
      for model in models:
        single = {
            "model": model, "seed": 0, "task": task_values,
            "train": {**_dict(config.train), **_dict(section.get("train"))},
            model: {**_dict(config[model]), **_dict(section.get(model))},
        }
        runs.append((group, model, settings.run_settings(ml_collections.ConfigDict(single))))
  return runs


def _task_grid(group: str, section) -> list[dict]:
  if group == "control":
    return [_dict(section.task)]
  if group == "mqar":
    if len(section.seq_lens) != len(section.num_pairs):
      raise settings.ConfigError(
          f"mqar.seq_lens {tuple(section.seq_lens)} and mqar.num_pairs "
          f"{tuple(section.num_pairs)} must have the same length")
    return [{"name": "mqar", "seq_len": length, "num_pairs": pairs,
             "vocab_size": section.vocab_size}
            for length, pairs in zip(section.seq_lens, section.num_pairs, strict=True)]
  extra = {"recall_weight": section.recall_weight} if "recall_weight" in section else {}
  return [{"name": "copy_memory", "delay": delay, **extra} for delay in section.delays]


def _attention_example(program, state) -> dict[str, np.ndarray]:
  """A trained Transformer's attention on held-out copy example 0: weights [layers, N, L, L]."""
  import jax

  batch = program.eval_batch(state.seed_key, 0)
  _, attention = program.model(state)(batch.inputs[:1], return_attention=True)
  weights = np.stack([np.asarray(jax.device_get(w[0])) for w in attention])
  return {"inputs": np.asarray(batch.inputs[0]), "weights": weights}


def run_one(run_settings: settings.RunSettings, seeds: list[int],
            attention_path: str | None = None) -> list[dict]:
  """Trains one configuration for every seed (one vmapped program when several) and returns
  one record per seed; with ``attention_path``, saves seed 0's attention on a copy example."""
  import jax

  from attn_jax.training import train, train_seeds

  task = run_settings.task()
  program = run_settings.program(task)
  if len(seeds) == 1:
    result = train(program, seeds[0])
    per_seed, first_state = [result.eval_metrics], result.state
  else:
    result = train_seeds(program, seeds)
    per_seed = [{k: v[i] for k, v in result.eval_metrics.items()} for i in range(len(seeds))]
    first_state = jax.tree.map(lambda x: x[0], result.state)
  if attention_path is not None:
    np.savez_compressed(attention_path, **_attention_example(program, first_state))
  return [{
      "task": task.name, "model": run_settings.model, "distance": task.distance,
      "seed": seed, "params": result.num_params, "steps": run_settings.train.num_steps,
      # Seeds trained together share one wall time; each gets its share.
      "wall_s": round(result.wall_s / len(seeds), 2), "metrics": metrics,
      "chance_accuracy": task.chance_accuracy, "reference": task.reference,
      "batch_size": run_settings.train.batch_size,
  } for seed, metrics in zip(seeds, per_seed, strict=True)]


def _job(args) -> list[dict]:
  """Worker-process entry: run_one, then the records written to the run's file."""
  run_settings, seeds, attention_path, path = args
  records = run_one(run_settings, seeds, attention_path)
  with open(path, "w") as f:
    json.dump(records, f, indent=2)
  return records


def _cost(run_settings: settings.RunSettings) -> float:
  task = run_settings.task()
  train = run_settings.train
  return task.seq_len ** 2 * train.num_steps * train.batch_size * _MODEL_COST[run_settings.model]


def _describe(records: list[dict]) -> str:
  m = records[0]["metrics"]
  return (f"accuracy {m['accuracy']:.4f}  loss {m['loss']:.4f}  params {records[0]['params']:,}"
          f"  {records[0]['wall_s']:.1f}s/seed")


def sweep(config, workdir: str) -> dict:
  runs = plan(config)
  seeds = list(config.seeds)
  workers = int(config.get("workers", 1))
  os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)
  started = time.perf_counter()
  names, jobs, done = [], [], {}
  attention_path = os.path.join(workdir, "runs", "attention_example.npz")
  for group, model, run_settings in runs:
    distance = run_settings.task().distance
    name = f"{group}_{model}_{distance}"
    path = os.path.join(workdir, "runs", name + ".json")
    names.append((name, group))
    want_attention = (group == "copy_memory" and model == "transformer"
                      and distance == config.attention_map_delay)
    if os.path.exists(path) and (not want_attention or os.path.exists(attention_path)):
      with open(path) as f:
        done[name] = json.load(f)
      print(f"{name}: done earlier, kept", flush=True)
    else:
      jobs.append((name, (run_settings, seeds, attention_path if want_attention else None, path)))
  jobs.sort(key=lambda job: -_cost(job[1][0]))  # longest first: the workers finish together
  print(f"{len(jobs)} runs to train on {workers} worker(s), {len(done)} kept", flush=True)
  if workers <= 1:
    for name, args in jobs:
      done[name] = _job(args)
      print(f"{name}: {_describe(done[name])}", flush=True)
  else:
    # spawn, not fork: a forked child would inherit the parent's XLA runtime threads.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
      futures = {pool.submit(_job, args): name for name, args in jobs}
      for future in concurrent.futures.as_completed(futures):
        name = futures[future]
        done[name] = future.result()
        print(f"[{len(done)}/{len(names)}] {name}: {_describe(done[name])}", flush=True)
  all_records = []
  for name, group in names:
    for record in done[name]:
      all_records.append({**record, "group": group})
  results = {"runs": all_records, "total_wall_s": round(time.perf_counter() - started, 1),
             "workers": workers}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(plots.results_table(all_records))
  plots.accuracy_vs_distance(all_records, os.path.join(workdir, "accuracy_vs_distance.png"))
  if os.path.exists(attention_path):
    plots.attention_maps(attention_path, os.path.join(workdir, "attention_maps.png"))
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  cpu_flags.use_fast_cpu_compile()  # before the first computation; workers inherit it
  try:
    results = sweep(FLAGS.config, FLAGS.workdir)
  except settings.ConfigError as e:
    raise app.UsageError(str(e)) from e
  print(f"sweep done in {results['total_wall_s']} s; table in {FLAGS.workdir}/results.md")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
