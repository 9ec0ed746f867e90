"""The headline experiment: every model on copy_memory and mqar over a range of distances.

python -m experiments.sweep --config=configs/long_range.py --workdir=DIR [--config.FIELD=V]

Writes DIR/results.json, DIR/results.md, DIR/accuracy_vs_distance.png, DIR/learning_curves.png
and DIR/attention_maps.png. Each finished configuration is kept as DIR/runs/NAME.json with the
key of its settings (`experiments.plan`): rerun on the same DIR, the sweep reuses a run only if
its key is unchanged and retrains everything else. Runs are spread over ``config.workers``
processes (one per CPU core pays off: much of a run is single-threaded compilation and small ops).
"""

import concurrent.futures
import json
import multiprocessing
import os
import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import cpu_flags, plots, settings
from experiments.plan import PlannedRun, plan

FLAGS = flags.FLAGS
# Rough relative cost per sequence and position^2, to start the longest runs first.
_MODEL_COST = {"transformer": 1.0, "lstm": 0.5, "lstm_attention": 1.5}
# Steps between the progress lines a long run prints.
_PROGRESS_EVERY = 500


def _define_flags() -> None:
  # Defined only when run as a program, so that tests can import this module.
  config_flags.DEFINE_config_file("config", None, "Path to a sweep config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Output directory.")
  flags.mark_flags_as_required(["config", "workdir"])


def _attention_example(program, state) -> dict[str, np.ndarray]:
  """A trained Transformer's attention on held-out copy example 0: weights [layers, N, L, L]."""
  import jax

  batch = program.eval_batch(state.seed_key, 0)
  _, attention = program.model(state)(batch.inputs[:1], return_attention=True)
  weights = np.stack([np.asarray(jax.device_get(w[0])) for w in attention])
  return {"inputs": np.asarray(batch.inputs[0]), "weights": weights}


def _per_seed(values, index: int):
  return values[index] if isinstance(values, list) else values


def run_one(run: PlannedRun, attention_path: str | None = None) -> list[dict]:
  """Trains one configuration for all its seeds (one vmapped program) and returns one record
  per seed, each with its learning curve; with ``attention_path``, saves the first seed's
  attention on a copy example."""
  import jax

  from attn_jax.training import train_seeds

  task = run.settings.task()
  program = run.settings.program(task)
  curves = {"train": [], "valid": []}

  def on_eval(step, metrics):
    curves["valid"].append((step, metrics))
    if step % _PROGRESS_EVERY == 0:  # a sign of life from long runs
      accs = " ".join(f"{a:.3f}" for a in np.atleast_1d(metrics["accuracy"]))
      print(f"  {run.name}: step {step}, validation accuracy {accs}", flush=True)

  result = train_seeds(program, run.seeds,
                       on_log=lambda step, m: curves["train"].append((step, m)),
                       on_eval=on_eval)
  if attention_path is not None:
    np.savez_compressed(attention_path,
                        **_attention_example(program, jax.tree.map(lambda x: x[0], result.state)))
  train_config = run.settings.train
  timing = {
      # The seeds run as one program: these times are the program's, shared by its seeds.
      "compile_s": round(result.compile_s, 2), "train_s": round(result.train_s, 2),
      "eval_s": round(result.eval_s, 2), "seeds_together": len(run.seeds),
      "step_ms": round(1e3 * result.train_s / max(result.steps, 1), 2),
      "step_gflop": None if result.step_flops is None else round(result.step_flops / 1e9, 4),
  }
  records = []
  for index, seed in enumerate(run.seeds):
    records.append({
        "group": run.group, "task": task.name, "model": run.model, "distance": task.distance,
        "seed": seed, "params": result.num_params, "steps": result.steps,
        "max_steps": train_config.num_steps, "batch_size": train_config.batch_size,
        "learning_rate": train_config.learning_rate,
        "wall_s": round(result.wall_s / len(run.seeds), 2), **timing,
        "metrics": {k: _per_seed(v, index) for k, v in result.eval_metrics.items()},
        "chance_accuracy": task.chance_accuracy, "reference": task.reference,
        "curve": {
            "train_step": [s for s, _ in curves["train"]],
            "train_loss": [_per_seed(m["loss"], index) for _, m in curves["train"]],
            "valid_step": [s for s, _ in curves["valid"]],
            "valid_accuracy": [_per_seed(m["accuracy"], index) for _, m in curves["valid"]],
        },
    })
  return records


def _job(args) -> list[dict]:
  """Worker-process entry: run_one, then the records written to the run's file with its key."""
  run, attention_path, path = args
  records = run_one(run, attention_path)
  with open(path, "w") as f:
    json.dump({"key": run.key, "settings": run.settings.to_dict(), "records": records}, f)
  return records


def _kept(path: str, key: str) -> list[dict] | None:
  """The records of a finished run at ``path`` if it was trained under ``key``."""
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return None
  return saved["records"] if isinstance(saved, dict) and saved.get("key") == key else None


def _cost(run: PlannedRun) -> float:
  task = run.settings.task()
  train = run.settings.train
  return (task.seq_len ** 2 * train.num_steps * train.batch_size
          * _MODEL_COST.get(run.model, 1.0))


def _describe(records: list[dict]) -> str:
  accs = [r["metrics"]["accuracy"] for r in records]
  r = records[0]
  return (f"accuracy {np.mean(accs):.4f} [{min(accs):.4f}, {max(accs):.4f}]  steps {r['steps']}"
          f"  compile {r['compile_s']:.1f}s  train {r['train_s']:.1f}s")


def train_all(runs: list[PlannedRun], workdir: str, workers: int,
              attention_run: str | None = None) -> tuple[list[dict], dict]:
  """Trains (or reuses) every run; returns the records in plan order and a timing summary."""
  os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)
  started = time.perf_counter()
  jobs, done = [], {}
  for run in runs:
    path = os.path.join(workdir, "runs", run.name + ".json")
    attention_path = (os.path.join(workdir, "runs", run.name + ".attention.npz")
                      if run.name == attention_run else None)
    kept = _kept(path, run.key)
    if kept is not None and (attention_path is None or os.path.exists(attention_path)):
      done[run.name] = kept
      print(f"{run.name}: same settings as the finished run on disk, kept", flush=True)
    else:
      jobs.append((run, attention_path, path))
  jobs.sort(key=lambda job: -_cost(job[0]))  # longest first: the workers finish together
  print(f"{len(jobs)} runs to train on {workers} worker(s), {len(done)} kept", flush=True)
  if workers <= 1 or len(jobs) <= 1:
    for job in jobs:
      done[job[0].name] = _job(job)
      print(f"{job[0].name}: {_describe(done[job[0].name])}", flush=True)
  else:
    # spawn, not fork: a forked child would inherit the parent's XLA runtime threads.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
      futures = {pool.submit(_job, job): job[0].name for job in jobs}
      for future in concurrent.futures.as_completed(futures):
        name = futures[future]
        done[name] = future.result()
        print(f"[{len(done)}/{len(runs)}] {name}: {_describe(done[name])}", flush=True)
  records = [record for run in runs for record in done[run.name]]
  trained = {job[0].name for job in jobs}
  programs = [done[name][0] for name in trained]
  summary = {
      "total_wall_s": round(time.perf_counter() - started, 1), "workers": workers,
      "runs_trained": len(trained), "runs_kept": len(runs) - len(trained),
      # Worker seconds over the runs trained by this call (the workers run side by side).
      "compile_s": round(sum(r["compile_s"] for r in programs), 1),
      "train_s": round(sum(r["train_s"] for r in programs), 1),
      "eval_s": round(sum(r["eval_s"] for r in programs), 1),
      "load_average": [round(x, 2) for x in os.getloadavg()],
  }
  return records, summary


def sweep(config, workdir: str) -> dict:
  """Trains every run of the sweep ``config`` describes and writes the results to ``workdir``
  (the recall zoo's config: `experiments.zoo.run_zoo`)."""
  from experiments import zoo  # noqa: PLC0415

  if zoo.is_zoo(config):
    return zoo.run_zoo(config, workdir)
  runs = plan(config)
  attention_run = next((r.name for r in runs if r.group == "copy_memory"
                        and r.model == "transformer"
                        and r.distance == config.attention_map_delay), None)
  load_before = [round(x, 2) for x in os.getloadavg()]
  records, summary = train_all(runs, workdir, int(config.get("workers", 1)), attention_run)
  summary["load_average_before"] = load_before
  results = {"runs": records, **summary}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(plots.results_table(records, summary))
  plots.accuracy_vs_distance(records, os.path.join(workdir, "accuracy_vs_distance.png"))
  plots.learning_curves(records, os.path.join(workdir, "learning_curves.png"))
  if attention_run is not None:
    plots.attention_maps(os.path.join(workdir, "runs", attention_run + ".attention.npz"),
                         os.path.join(workdir, "attention_maps.png"))
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
