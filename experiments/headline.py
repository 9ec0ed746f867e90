"""The compact headline table of a finished sweep, as it appears in the README.

python -m experiments.headline DIR

Reads DIR/results.json and prints one markdown row per (task, distance): each model's held-out
accuracy as ``mean [min, max]`` over seeds with the number of seeds that reached 0.99, and the
references (chance; for MQAR the value-set baseline 1/num_pairs). The README and
docs/experiments.md quote this output for the committed run, so their numbers are the JSON's.
"""

import json
import os
import sys

from experiments import plots


def headline(results: dict) -> str:
  table = plots._group(results["runs"])  # noqa: SLF001 (one grouping, shared with the plots)
  rows = sorted({(g, d) for g, _, d in table},
                key=lambda k: (list(plots.TITLES).index(k[0]), k[1]))
  models = [m for m in plots.MODEL_ORDER if any(k[1] == m for k in table)]
  names = {"copy_memory": "copying memory, delay", "mqar": "MQAR, length",
           "control": "control (MQAR, 1 pair), length"}
  lines = ["| task | " + " | ".join(plots.MODEL_NAMES[m] for m in models)
           + " | chance | value set |",
           "| --- |" + " --- |" * len(models) + " ---: | ---: |"]
  for group, distance in rows:
    cells = []
    for model in models:
      rs = table.get((group, model, distance), [])
      accs = [r["metrics"]["accuracy"] for r in rs]
      cells.append(f"{plots.spread(accs)} {sum(a >= plots.SOLVED for a in accs)}/{len(accs)}"
                   if rs else "")
    first = next(table[(group, m, distance)][0] for m in models if (group, m, distance) in table)
    value_set = first.get("reference", {}).get("value_set_accuracy")
    lines.append(f"| {names.get(group, group)} {distance} | " + " | ".join(cells)
                 + f" | {first['chance_accuracy']:.3f} | "
                 + (f"{value_set:.3f}" if value_set is not None else "") + " |")
  params = []
  for group in ("copy_memory", "mqar"):
    per_model = {m: next((r["params"] for (g, mm, _), rs in table.items() for r in rs
                          if g == group and mm == m), None) for m in models}
    params.append(f"{group}: " + ", ".join(f"{plots.MODEL_NAMES[m]} {p:,}"
                                           for m, p in per_model.items() if p))
  return "\n".join(lines) + "\n\nParameters: " + "; ".join(params) + ".\n"


def main(argv) -> None:
  if len(argv) != 2:
    raise SystemExit("usage: python -m experiments.headline DIR")
  with open(os.path.join(argv[1], "results.json")) as f:
    print(headline(json.load(f)))


if __name__ == "__main__":
  main(sys.argv)
