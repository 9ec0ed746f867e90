"""The learning-rate search behind the recall zoo's ``learning_rates``: the same grid for every
model.

python -m experiments.zoo_search --config=configs/recall_zoo.py --workdir=DIR

Trains every model at its middle state size on the middle MQAR difficulty, at every rate of
``config.lr_search.learning_rates``, on ``config.lr_search.seeds`` (seeds the zoo does not
report), with the zoo's budget cut to ``config.lr_search.num_steps`` steps; picks per model the
rate with the best mean held-out accuracy (ties within 0.005: the lower loss). Writes
DIR/lr_search.json and DIR/lr_search.md; the choice is copied by hand into the config, so the
zoo never depends on a search having been run.
"""

import copy
import dataclasses
import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import cpu_flags, lr_search, settings, sweep, zoo

FLAGS = flags.FLAGS


def search_plan(config):
  """The zoo's runs at the middle size and middle MQAR length, once per rate of the grid."""
  mqar_lengths = sorted(config.mqar.seq_lens)
  middle_length = mqar_lengths[len(mqar_lengths) // 2]

  def keep(run):
    values = tuple(config.sizes[run.model]["values"])
    field = config.sizes[run.model].field
    middle = getattr(run.settings.model_spec, field) == values[len(values) // 2]
    return middle and run.group == "mqar" and run.distance == middle_length

  config = copy.deepcopy(config)
  config.unlock()
  config.train.num_steps = config.lr_search.num_steps
  runs = []
  for rate in config.lr_search.learning_rates:
    rates = {model: rate for model in config.models}
    for run in zoo.plan(config, learning_rates=rates, seeds=tuple(config.lr_search.seeds),
                        keep=keep):
      runs.append(dataclasses.replace(run, tag=f"{run.tag}_lr{rate:g}"))
  return runs


def search(config, workdir: str) -> dict:
  runs = search_plan(config)
  records, summary = sweep.train_all(runs, workdir, int(config.get("workers", 1)))
  for r in records:
    r["group"] = "zoo"  # one choice per model over both tasks
  choice = lr_search.choose(records).get("zoo", {})
  out = {"grid": list(config.lr_search.learning_rates), "seeds": list(config.lr_search.seeds),
         "choice": choice, "runs": records, **summary}
  with open(os.path.join(workdir, "lr_search.json"), "w") as f:
    json.dump(out, f, indent=1)
  lines = ["| model | task | length | lr | accuracy (seeds) | loss |",
           "| --- | --- | ---: | ---: | --- | ---: |"]
  for r in sorted(records, key=lambda r: (r["model"], r["task"], r["learning_rate"], r["seed"])):
    lines.append(f"| {r['model']} | {r['task']} | {r['distance']} | {r['learning_rate']:g} | "
                 f"{r['metrics']['accuracy']:.3f} (seed {r['seed']}) | "
                 f"{r['metrics']['loss']:.3f} |")
  lines.append(f"\nChoice: {choice}; wall {summary['total_wall_s']} s, load "
               f"{summary['load_average']}.\n")
  with open(os.path.join(workdir, "lr_search.md"), "w") as f:
    f.write("\n".join(lines))
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  cpu_flags.use_fast_cpu_compile()
  try:
    out = search(FLAGS.config, FLAGS.workdir)
  except settings.ConfigError as e:
    raise app.UsageError(str(e)) from e
  print(f"choice {out['choice']}; table in {FLAGS.workdir}/lr_search.md")


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Path to the zoo config.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Output directory.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
