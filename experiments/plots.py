"""Tables and figures of a sweep (matplotlib is imported here only, never by the library)."""

import collections

import numpy as np

MODEL_ORDER = ("transformer", "lstm_attention", "lstm")
MODEL_NAMES = {"transformer": "Transformer", "lstm_attention": "LSTM + attention", "lstm": "LSTM"}
COLORS = {"transformer": "tab:blue", "lstm_attention": "tab:orange", "lstm": "tab:green"}
MARKERS = {"transformer": "o", "lstm_attention": "s", "lstm": "^"}
TITLES = {"copy_memory": "Copying memory (x: delay)", "mqar": "MQAR (x: sequence length)",
          "control": "Control: MQAR, one pair (x: seq. length)"}
SOLVED = 0.99  # the accuracy counted as "solved" in the tables
# Figures are drawn for the documentation's 672 px column: 7 inches wide, saved at 192 dpi (sharp
# on high-density screens) and shown at half their pixel size, so 9-point text reads as 9 points.
PAGE_WIDTH, DPI = 7.0, 192
FONT = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "xtick.labelsize": 9,
        "ytick.labelsize": 9, "legend.fontsize": 9, "figure.titlesize": 9}


def _group(records):
  table = collections.defaultdict(list)
  for r in records:
    table[(r.get("group", r["task"]), r["model"], r["distance"])].append(r)
  return table


def _sorted_keys(table):
  model_order = {m: i for i, m in enumerate(MODEL_ORDER)}
  group_order = {g: i for i, g in enumerate(TITLES)}
  return sorted(table, key=lambda k: (group_order.get(k[0], 9), k[2], model_order.get(k[1], 9)))


def spread(values, digits: int = 3) -> str:
  """``mean [min, max]`` of ``values``."""
  return (f"{np.mean(values):.{digits}f} [{min(values):.{digits}f}, "
          f"{max(values):.{digits}f}]")


def _reference(r) -> str:
  ref = r.get("reference", {})
  parts = [f"chance {r['chance_accuracy']:.3f}"]
  if "value_set_accuracy" in ref:
    parts.append(f"value set {ref['value_set_accuracy']:.3f}")
  if "baseline_loss" in ref:
    parts.append(f"memoryless loss {ref['baseline_loss']:.4f}")
  return ", ".join(parts)


def results_table(records, summary: dict | None = None) -> str:
  """Markdown: one row per (group, distance, model) over its seeds: accuracy ``mean [min,
  max]``, how many seeds reached 0.99, loss, the references, steps and time; then the totals."""
  lines = [f"| task | distance | model | params | accuracy mean [min, max] | seeds >= {SOLVED} | "
           "exact match | loss | reference | lr | steps (budget) | compile s | train s |",
           "| --- | ---: | --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: "
           "| ---: |"]
  table = _group(records)
  for key in _sorted_keys(table):
    group, model, distance = key
    rs = table[key]
    accs = [r["metrics"]["accuracy"] for r in rs]
    mean = lambda name, rs=rs: np.mean([r["metrics"].get(name, np.nan) for r in rs])
    steps = sorted({r["steps"] for r in rs})
    lines.append(
        f"| {group} | {distance} | {model} | {rs[0]['params']:,} | {spread(accs)} | "
        f"{sum(a >= SOLVED for a in accs)}/{len(accs)} | {mean('exact_match'):.3f} | "
        f"{mean('loss'):.4f} | {_reference(rs[0])} | {rs[0].get('learning_rate', '')} | "
        f"{'/'.join(map(str, steps))} ({rs[0].get('max_steps', '')}) | "
        f"{rs[0].get('compile_s', 0):.1f} | {rs[0].get('train_s', 0):.1f} |")
  out = "\n".join(lines) + "\n"
  if summary:
    out += (
        f"\nSeeds per configuration: {len({r['seed'] for r in records})} "
        f"({', '.join(str(s) for s in sorted({r['seed'] for r in records}))}), trained together "
        "as one vmapped program; compile and train seconds are that program's.\n"
        f"Sweep wall time: **{summary['total_wall_s']:.0f} s** on {summary['workers']} worker "
        f"process(es) ({summary['runs_trained']} runs trained, {summary['runs_kept']} reused); "
        f"worker time {summary['compile_s']:.0f} s compiling, {summary['train_s']:.0f} s "
        f"training, {summary['eval_s']:.0f} s evaluating; load average "
        f"{summary.get('load_average_before')} before, {summary.get('load_average')} after.\n")
  return out


def _plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  plt.rcParams.update(FONT)
  return plt


def accuracy_vs_distance(records, path: str) -> None:
  """One panel per task group; per model the mean over seeds (line) and every seed (dots);
  chance dashed, the value-set baseline of MQAR dotted."""
  plt = _plt()
  table = _group(records)
  groups = [g for g in TITLES if any(k[0] == g for k in table)]
  fig, axes = plt.subplots(len(groups), 1, figsize=(PAGE_WIDTH, 2.3 * len(groups) + 0.4),
                           squeeze=False, layout="constrained")
  for ax, group in zip(axes[:, 0], groups, strict=True):
    first = None
    for offset, model in enumerate(MODEL_ORDER):
      keys = sorted((k for k in table if k[0] == group and k[1] == model), key=lambda k: k[2])
      if not keys:
        continue
      first = table[keys[0]][0]
      x = np.array([k[2] for k in keys], float)
      accs = [[r["metrics"]["accuracy"] for r in table[k]] for k in keys]
      ax.plot(x, [np.mean(a) for a in accs], color=COLORS[model], marker=MARKERS[model],
              markersize=[9, 6, 4][offset], label=MODEL_NAMES[model])
      # Every seed, nudged sideways per model so that coinciding seeds stay visible.
      for xi, a in zip(x, accs, strict=True):
        ax.scatter(np.full(len(a), xi * 1.04 ** (offset - 1)), a, s=10, color=COLORS[model],
                   alpha=0.6, linewidths=0)
    if first is not None:
      ax.axhline(first["chance_accuracy"], color="gray", linestyle="--", label="chance")
      value_set = first.get("reference", {}).get("value_set_accuracy")
      if value_set is not None:
        ax.axhline(value_set, color="gray", linestyle=":",
                   label="value set (1 / pairs)")
    ax.set_title(TITLES[group])
    ax.set_ylim(-0.02, 1.04)
    distances = sorted({k[2] for k in table if k[0] == group})
    if len(distances) > 1:
      ax.set_xscale("log")
    ax.set_xticks(distances, [str(d) for d in distances])  # the swept values, not powers of 10
    ax.minorticks_off()
    ax.set_xlabel("distance")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
  fig.savefig(path, dpi=DPI)
  plt.close(fig)


def learning_curves(records, path: str) -> None:
  """For the longest distance of each task group: training loss (top) and validation accuracy
  (bottom) against step, one line per seed, every model."""
  plt = _plt()
  table = _group(records)
  groups = [g for g in TITLES if any(k[0] == g for k in table)]
  fig, axes = plt.subplots(len(groups), 2, figsize=(PAGE_WIDTH, 2.2 * len(groups) + 0.5),
                           squeeze=False, sharex="row", layout="constrained")
  for row, group in enumerate(groups):
    longest = max(k[2] for k in table if k[0] == group)
    loss_ax, acc_ax = axes[row]
    for model in MODEL_ORDER:
      for index, r in enumerate(table.get((group, model, longest), [])):
        curve = r.get("curve", {})
        label = MODEL_NAMES[model] if index == 0 else None
        # A run that stopped after two logs has two points, not a curve: markers only.
        for ax, x, y in ((loss_ax, "train_step", "train_loss"),
                         (acc_ax, "valid_step", "valid_accuracy")):
          steps = curve.get(x, [])
          ax.plot(steps, curve.get(y, []), color=COLORS[model], alpha=0.7, linewidth=1,
                  linestyle="-" if len(steps) > 2 else "none", marker="o",
                  markersize=3 if ax is acc_ax or len(steps) <= 2 else 0, label=label)
    name = TITLES[group].split(" (")[0].replace("Control: ", "control, ")
    loss_ax.set_title(f"{name}, distance {longest}: training loss")
    acc_ax.set_title("validation accuracy")
    loss_ax.set_yscale("log")
    acc_ax.set_ylim(-0.02, 1.04)
    for ax in (loss_ax, acc_ax):
      ax.grid(alpha=0.3)
      ax.set_xlabel("step")
  handles, labels = axes[0][1].get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside lower center", ncols=len(labels))
  fig.savefig(path, dpi=DPI)
  plt.close(fig)


def attention_maps(example_path: str, path: str) -> None:
  """A trained Transformer's heads on one held-out copy example (saved by the sweep as
  ``inputs [L]`` and ``weights [layers, N, L, L]``): the rows of the 10 recalled positions over
  every key position, and a zoom on the first 10 keys. Attention that solves the task puts the
  mass of recalled position i on key i (the diagonal of the zoom)."""
  plt = _plt()
  example = np.load(example_path)
  weights = example["weights"]  # (example["inputs"] holds the tokens)
  layers, heads, seq_len = weights.shape[0], weights.shape[1], weights.shape[-1]
  fig, axes = plt.subplots(layers * heads, 2, figsize=(PAGE_WIDTH, 1.25 * layers * heads + 0.9),
                           squeeze=False, gridspec_kw={"width_ratios": [3, 1]},
                           layout="constrained")
  for layer in range(layers):
    for head in range(heads):
      rows = weights[layer, head, seq_len - 10:]  # [10, L]: the recalled positions' weights
      full, zoom = axes[layer * heads + head]
      full.imshow(rows, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
      full.axvline(9.5, color="white", linewidth=0.8, linestyle=":")
      full.set_ylabel(f"layer {layer}\nhead {head}")
      full.set_yticks([0, 9], ["L-10", "L-1"])
      # Few ticks, far apart: neighbouring labels (509, 519) would run together.
      full.set_xticks([0, seq_len // 2, seq_len - 1], ["0", str(seq_len // 2), str(seq_len - 1)])
      zoom.imshow(rows[:, :10], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
      zoom.set_xticks([0, 9], ["0", "9"])  # key positions (the data symbols)
      zoom.set_yticks([])
      if layer == 0 and head == 0:
        full.set_title("recalled rows over all key positions")
        zoom.set_title("first 10 keys")
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
