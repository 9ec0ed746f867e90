"""The learning-rate search behind a sweep config's ``learning_rates``: the same small grid for
every model.

python -m experiments.lr_search --config=configs/long_range.py --workdir=DIR

For every task group in ``config.lr_search.distances``, every model and every learning rate of
``config.lr_search.learning_rates``, trains ``config.lr_search.seeds`` (seeds the sweep does not
report) at the listed distances with the group's budget, and picks per (group, model) the rate
with the best mean held-out accuracy over those distances and seeds (ties within 0.005: the lower
loss). Writes DIR/lr_search.json and DIR/lr_search.md (the grid, every result, the choice); the
choice is then copied by hand into the config's ``learning_rates``, so a sweep never depends on a
search having been run. Finished runs are kept and reused like the sweep's.
"""

import collections
import copy
import dataclasses
import json
import os

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import cpu_flags, plots, settings, sweep
from experiments.plan import plan

FLAGS = flags.FLAGS
TIE = 0.005


def _define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Path to a sweep config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Output directory.")
  flags.mark_flags_as_required(["config", "workdir"])


def search_plan(config):
  """Every run of the search: the sweep's plan at each learning rate of the grid."""
  search = config.lr_search
  distances = {group: tuple(d) for group, d in search.distances.items()}
  runs = []
  for rate in search.learning_rates:
    variant = copy.deepcopy(config)
    variant.unlock()
    variant.seeds = tuple(search.seeds)
    for group in distances:
      for model in variant.models:
        variant[group].learning_rates[model] = rate
    for run in plan(variant, groups=tuple(distances), distances=distances):
      runs.append(dataclasses.replace(run, tag=f"_lr{rate:g}"))
  return runs


def choose(records) -> dict[str, dict[str, float]]:
  """{group: {model: the chosen rate}} by mean accuracy (ties: mean loss)."""
  by_rate = collections.defaultdict(list)
  for r in records:
    by_rate[(r["group"], r["model"], r["learning_rate"])].append(r)
  choice = collections.defaultdict(dict)
  for group, model in sorted({k[:2] for k in by_rate}):
    scored = []
    for (g, m, rate), rs in by_rate.items():
      if (g, m) == (group, model):
        scored.append((np.mean([r["metrics"]["accuracy"] for r in rs]),
                       np.mean([r["metrics"]["loss"] for r in rs]), rate))
    best_acc = max(s[0] for s in scored)
    near = [s for s in scored if s[0] >= best_acc - TIE]
    choice[group][model] = min(near, key=lambda s: s[1])[2]
  return dict(choice)


def table(records, choice) -> str:
  """Markdown: per (group, model, rate), accuracy ``mean [min, max]`` at each distance."""
  cells = collections.defaultdict(list)
  for r in records:
    cells[(r["group"], r["model"], r["learning_rate"], r["distance"])].append(r)
  distances = collections.defaultdict(set)
  for group, _, _, distance in cells:
    distances[group].add(distance)
  lines = []
  for group in sorted(distances, key=lambda g: plan_order(g)):
    ds = sorted(distances[group])
    lines += [f"\n**{group}** (seeds {sorted({r['seed'] for r in records})}; accuracy mean "
              "[min, max] over seeds; loss in brackets)\n",
              "| model | learning rate | " + " | ".join(f"distance {d}" for d in ds)
              + " | chosen |",
              "| --- | ---: | " + " | ".join("---" for _ in ds) + " | --- |"]
    for model in plots.MODEL_ORDER:
      for rate in sorted({k[2] for k in cells if k[:2] == (group, model)}):
        row = []
        for d in ds:
          rs = cells.get((group, model, rate, d), [])
          row.append(f"{plots.spread([r['metrics']['accuracy'] for r in rs])} "
                     f"({np.mean([r['metrics']['loss'] for r in rs]):.3f})" if rs else "")
        mark = "**yes**" if choice.get(group, {}).get(model) == rate else ""
        lines.append(f"| {model} | {rate:g} | " + " | ".join(row) + f" | {mark} |")
  return "\n".join(lines) + "\n"


def plan_order(group: str) -> int:
  return list(plots.TITLES).index(group) if group in plots.TITLES else 9


def lr_search(config, workdir: str) -> dict:
  runs = search_plan(config)
  records, summary = sweep.train_all(runs, workdir, int(config.get("workers", 1)))
  choice = choose(records)
  results = {"grid": list(config.lr_search.learning_rates), "seeds": list(config.lr_search.seeds),
             "distances": {g: list(d) for g, d in config.lr_search.distances.items()},
             "chosen": choice, "runs": records, **summary}
  with open(os.path.join(workdir, "lr_search.json"), "w") as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(workdir, "lr_search.md"), "w") as f:
    f.write(f"Grid {results['grid']} on seeds {results['seeds']}; {summary['total_wall_s']:.0f} s "
            f"on {summary['workers']} worker(s).\n" + table(records, choice)
            + f"\nChosen: {json.dumps(choice)}\n")
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  cpu_flags.use_fast_cpu_compile()
  try:
    results = lr_search(FLAGS.config, FLAGS.workdir)
  except settings.ConfigError as e:
    raise app.UsageError(str(e)) from e
  print(f"chosen learning rates: {json.dumps(results['chosen'])}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
