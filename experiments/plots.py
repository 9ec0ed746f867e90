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

  return plt


def accuracy_vs_distance(records, path: str) -> None:
  """One panel per task group; per model the mean over seeds (line) and every seed (dots);
  chance dashed, the value-set baseline of MQAR dotted."""
  plt = _plt()
  table = _group(records)
  groups = [g for g in TITLES if any(k[0] == g for k in table)]
  fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.9), squeeze=False)
  for ax, group in zip(axes[0], groups, strict=True):
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
    ax.set_ylabel("accuracy on recalled tokens")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", fontsize=7)
  fig.suptitle("Held-out accuracy: line = mean over seeds, dots = each seed", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def learning_curves(records, path: str) -> None:
  """For the longest distance of each task group: training loss (top) and validation accuracy
  (bottom) against step, one line per seed, every model."""
  plt = _plt()
  table = _group(records)
  groups = [g for g in TITLES if any(k[0] == g for k in table)]
  fig, axes = plt.subplots(2, len(groups), figsize=(5 * len(groups), 6.4), squeeze=False,
                           sharex="col")
  for column, group in enumerate(groups):
    longest = max(k[2] for k in table if k[0] == group)
    loss_ax, acc_ax = axes[0][column], axes[1][column]
    for model in MODEL_ORDER:
      for index, r in enumerate(table.get((group, model, longest), [])):
        curve = r.get("curve", {})
        label = MODEL_NAMES[model] if index == 0 else None
        loss_ax.plot(curve.get("train_step", []), curve.get("train_loss", []),
                     color=COLORS[model], alpha=0.7, linewidth=1, label=label)
        acc_ax.plot(curve.get("valid_step", []), curve.get("valid_accuracy", []),
                    color=COLORS[model], alpha=0.7, linewidth=1, marker=".", markersize=3,
                    label=label)
    loss_ax.set_title(f"{TITLES[group].split(' (')[0]}, distance {longest}", fontsize=9)
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("training loss")
    acc_ax.set_ylabel("validation accuracy")
    acc_ax.set_xlabel("step")
    acc_ax.set_ylim(-0.02, 1.04)
    for ax in (loss_ax, acc_ax):
      ax.grid(alpha=0.3)
    acc_ax.legend(loc="center right", fontsize=7)
  fig.suptitle("Learning curves at the longest distance (one line per seed; a run stops once "
               "every seed is solved)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def attention_maps(example_path: str, path: str) -> None:
  """A trained Transformer's heads on one held-out copy example (saved by the sweep as
  ``inputs [L]`` and ``weights [layers, N, L, L]``): the rows of the 10 recalled positions over
  every key position, and a zoom on the first 10 keys. Attention that solves the task puts the
  mass of recalled position i on key i (the diagonal of the zoom)."""
  plt = _plt()
  example = np.load(example_path)
  inputs, weights = example["inputs"], example["weights"]
  layers, heads, seq_len = weights.shape[0], weights.shape[1], weights.shape[-1]
  fig, axes = plt.subplots(layers * heads, 2, figsize=(10, 1.9 * layers * heads + 0.8),
                           squeeze=False, gridspec_kw={"width_ratios": [4, 1]})
  for layer in range(layers):
    for head in range(heads):
      rows = weights[layer, head, seq_len - 10:]  # [10, L]: the recalled positions' weights
      full, zoom = axes[layer * heads + head]
      full.imshow(rows, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
      full.axvline(9.5, color="white", linewidth=0.8, linestyle=":")
      full.set_ylabel(f"layer {layer}\nhead {head}", fontsize=8)
      full.set_yticks([0, 9], ["L-10", "L-1"], fontsize=6)
      full.set_xticks([0, 10, seq_len - 11, seq_len - 1],
                      ["0", "10", str(seq_len - 11), str(seq_len - 1)], fontsize=6)
      zoom.imshow(rows[:, :10], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
      zoom.set_xticks(range(10), [str(t) for t in inputs[:10]], fontsize=6)
      zoom.set_yticks([])
      if layer == 0 and head == 0:
        full.set_title("recalled positions (rows) over all key positions (columns)", fontsize=8)
        zoom.set_title("first 10 keys (data symbols)", fontsize=8)
  mass = weights[:, :, seq_len - 10:, :10].sum(-1).max(axis=(0, 1)).mean()
  fig.suptitle(f"Copying memory, delay {seq_len - 20}: attention of the 10 recalled positions; "
               f"best head's mass on the first 10 tokens {mass:.3f} (dotted: end of the symbols)",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
