"""The recall zoo's table and figures (matplotlib is imported here only)."""

import collections

import numpy as np

from experiments.plots import SOLVED, _plt, spread

ORDER = ("transformer", "sliding_window", "based", "linear_attention", "gated_linear", "lstm")
NAMES = {"transformer": "Attention", "sliding_window": "Sliding window",
         "linear_attention": "Linear attention", "based": "Based (Taylor)",
         "gated_linear": "Gated linear", "lstm": "LSTM"}
COLORS = {"transformer": "tab:blue", "sliding_window": "tab:cyan", "based": "tab:purple",
          "linear_attention": "tab:red", "gated_linear": "tab:orange", "lstm": "tab:green"}
MARKERS = {"transformer": "o", "sliding_window": "v", "based": "D", "linear_attention": "s",
           "gated_linear": "P", "lstm": "^"}


def task_label(record) -> str:
  if record["task"] == "mqar":
    return f"MQAR L={record['distance']}, {record['num_pairs']} pairs"
  return f"Selective copy L={record['distance']}"


def _tasks(records) -> list[str]:
  keys = sorted({(r["task"] != "mqar", r["distance"], task_label(r)) for r in records})
  return [k[2] for k in keys]


def _group(records):
  """{(task label, model): {state_size: [records of its seeds]}}."""
  table = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in records:
    table[(task_label(r), r["model"])][r["state_size"]].append(r)
  return table


def _models(records):
  present = {r["model"] for r in records}
  return [m for m in ORDER if m in present] + sorted(present - set(ORDER))


def _swept(r) -> str:
  spec = r.get("model_spec", {})
  if r["model"] == "sliding_window":
    return f"window {spec.get('window')}"
  if r["model"] in ("based", "linear_attention", "gated_linear"):
    return f"d {spec.get('d_model')}, key {spec.get('key_dim')}"
  return f"d {spec.get('d_model')}"


def results_table(records, summary: dict | None = None) -> str:
  """Markdown: per task, one row per (model, state size) over its seeds."""
  table = _group(records)
  lines = []
  for task in _tasks(records):
    first = next(r for r in records if task_label(r) == task)
    value_set = first.get("reference", {}).get("value_set_accuracy")
    lines += [f"### {task}", "",
              f"Chance {first['chance_accuracy']:.3f}"
              + (f", value set {value_set:.3f}" if value_set is not None else "")
              + f"; budget {first['max_steps']} steps of {first['batch_size']}.", "",
              f"| model | size | state (floats) | params | accuracy mean [min, max] | "
              f"seeds >= {SOLVED} | lr | steps | compile s | train s |",
              "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for model in _models(records):
      for size, rs in sorted(table.get((task, model), {}).items()):
        accs = [r["metrics"]["accuracy"] for r in rs]
        lines.append(
            f"| {NAMES.get(model, model)} | {_swept(rs[0])} | {size:,} | {rs[0]['params']:,} | "
            f"{spread(accs)} | {sum(a >= SOLVED for a in accs)}/{len(accs)} | "
            f"{rs[0]['learning_rate']:g} | {rs[0]['steps']} | {rs[0]['compile_s']:.1f} | "
            f"{rs[0]['train_s']:.1f} |")
    lines.append("")
  out = "\n".join(lines)
  if summary:
    seeds = sorted({r["seed"] for r in records})
    out += (f"\nSeeds: {', '.join(map(str, seeds))} (one vmapped program per configuration). "
            f"Zoo wall time **{summary['total_wall_s']:.0f} s** on {summary['workers']} worker "
            f"process(es) ({summary['runs_trained']} runs trained, {summary['runs_kept']} "
            f"reused); worker time {summary['compile_s']:.0f} s compiling, "
            f"{summary['train_s']:.0f} s training; load average "
            f"{summary.get('load_average_before')} before, {summary.get('load_average')} "
            "after.\n")
  return out


def state_size_plot(records, path: str) -> None:
  """Accuracy against state size (log x), one panel per task, one line per mixer (mean over
  seeds; dots: every seed), as Based's Figure 2."""
  plt = _plt()
  table = _group(records)
  tasks = _tasks(records)
  fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), squeeze=False)
  for ax, task in zip(axes[0], tasks, strict=True):
    first = next(r for r in records if task_label(r) == task)
    for model in _models(records):
      by_size = table.get((task, model))
      if not by_size:
        continue
      sizes = sorted(by_size)
      accs = [[r["metrics"]["accuracy"] for r in by_size[s]] for s in sizes]
      ax.plot(sizes, [np.mean(a) for a in accs], color=COLORS.get(model), label=NAMES.get(model),
              marker=MARKERS.get(model, "o"), markersize=5)
      for s, a in zip(sizes, accs, strict=True):
        ax.scatter(np.full(len(a), s), a, s=8, color=COLORS.get(model), alpha=0.5,
                   linewidths=0)
    ax.axhline(first["chance_accuracy"], color="gray", linestyle="--", linewidth=0.8,
               label="chance")
    value_set = first.get("reference", {}).get("value_set_accuracy")
    if value_set is not None:
      ax.axhline(value_set, color="gray", linestyle=":", linewidth=0.8, label="value set")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(plt.NullFormatter())  # decades only: no crowded labels
    ax.set_ylim(-0.02, 1.04)
    ax.set_title(task, fontsize=9)
    ax.set_xlabel("recurrent state (floats per sequence)")
    ax.set_ylabel("held-out accuracy")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=6, loc="best")
  fig.suptitle("Recall against state size: line = mean over seeds, dots = each seed",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def learning_curves(records, path: str) -> None:
  """Validation accuracy against step per task, every mixer at its largest state, each seed."""
  plt = _plt()
  table = _group(records)
  tasks = _tasks(records)
  fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.5), squeeze=False)
  for ax, task in zip(axes[0], tasks, strict=True):
    for model in _models(records):
      by_size = table.get((task, model))
      if not by_size:
        continue
      for index, r in enumerate(by_size[max(by_size)]):
        curve = r.get("curve", {})
        ax.plot(curve.get("valid_step", []), curve.get("valid_accuracy", []),
                color=COLORS.get(model), alpha=0.7, linewidth=1,
                label=NAMES.get(model) if index == 0 else None)
    ax.set_title(f"{task} (largest state)", fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(-0.02, 1.04)
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=6, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
