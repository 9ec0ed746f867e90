"""Tables and figures of a sweep (matplotlib is imported here only, never by the library)."""

import collections

import numpy as np

MODEL_ORDER = ("transformer", "lstm_attention", "lstm")
MARKERS = {"transformer": {"marker": "o", "markersize": 10},
           "lstm_attention": {"marker": "s", "markersize": 6},
           "lstm": {"marker": "^", "markersize": 4}}
TITLES = {"copy_memory": "Copying memory (x: delay)", "mqar": "MQAR (x: sequence length)",
          "control": "Control: MQAR, one pair (x: seq. length)"}


def _group(records):
  table = collections.defaultdict(list)
  for r in records:
    table[(r.get("group", r["task"]), r["model"], r["distance"])].append(r)
  return table


def results_table(records) -> str:
  """Markdown: one row per (task, distance, model), seeds averaged."""
  lines = ["| task | distance | model | params | accuracy | exact match | loss | reference | "
           "wall s/seed |",
           "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |"]
  model_order = {m: i for i, m in enumerate(MODEL_ORDER)}
  group_order = {g: i for i, g in enumerate(TITLES)}
  for (group, model, distance), rs in sorted(
      _group(records).items(),
      key=lambda kv: (group_order.get(kv[0][0], 9), kv[0][2], model_order.get(kv[0][1], 9))):
    mean = lambda key, rs=rs: np.mean([r["metrics"].get(key, np.nan) for r in rs])
    ref = rs[0].get("reference", {})
    reference = (f"memoryless loss {ref['baseline_loss']:.4f}" if "baseline_loss" in ref
                 else f"chance acc {rs[0]['chance_accuracy']:.3f}")
    seeds = f" ({len(rs)} seeds)" if len(rs) > 1 else ""
    lines.append(
        f"| {group} | {distance} | {model}{seeds} | {rs[0]['params']:,} | "
        f"{mean('accuracy'):.4f} | {mean('exact_match'):.4f} | {mean('loss'):.4f} | "
        f"{reference} | {np.mean([r['wall_s'] for r in rs]):.1f} |")
  return "\n".join(lines) + "\n"


def accuracy_vs_distance(records, path: str) -> None:
  """One panel per task, one line per model (mean over seeds, min-max band), chance dashed."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  table = _group(records)
  groups = [g for g in TITLES if any(k[0] == g for k in table)]
  fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.8), squeeze=False)
  for ax, group in zip(axes[0], groups, strict=True):
    chance = None
    for model in MODEL_ORDER:
      keys = sorted(k for k in table if k[0] == group and k[1] == model)
      if not keys:
        continue
      x = [k[2] for k in keys]
      accs = [[r["metrics"]["accuracy"] for r in table[k]] for k in keys]
      # Nested marker sizes keep models that coincide (e.g. all at 1.0) visible.
      ax.plot(x, [np.mean(a) for a in accs], label=model, **MARKERS.get(model, {}))
      ax.fill_between(x, [min(a) for a in accs], [max(a) for a in accs], alpha=0.2)
      chance = table[keys[0]][0]["chance_accuracy"]
    if chance is not None:
      ax.axhline(chance, color="gray", linestyle="--", label="chance")
    ax.set_title(TITLES[group])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xscale("log")
    distances = sorted({k[2] for k in table if k[0] == group})
    ax.set_xticks(distances, [str(d) for d in distances])  # the swept values, not powers of 10
    ax.minorticks_off()
    ax.set_xlabel("distance")
    ax.set_ylabel("accuracy on recalled tokens")
    ax.grid(alpha=0.3)
  axes[0][0].legend(loc="lower left")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def attention_maps(example_path: str, path: str) -> None:
  """A trained Transformer's heads on one held-out copy example (saved by the sweep as
  ``inputs [L]`` and ``weights [layers, N, L, L]``): the rows of the 10 recalled positions over
  every key position, and a zoom on the first 10 keys. Attention that solves the task puts the
  mass of recalled position i on key i (the diagonal of the zoom)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

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
