"""Tables and figures of a sweep (matplotlib is imported here only, never by the library)."""

import collections

import numpy as np

MODEL_ORDER = ("transformer", "lstm_attention", "lstm")
TITLES = {"copy_memory": "Copying memory (x: delay)", "mqar": "MQAR (x: sequence length)",
          "control": "Control: short copy (x: delay)"}


def _group(records):
  table = collections.defaultdict(list)
  for r in records:
    table[(r.get("group", r["task"]), r["model"], r["distance"])].append(r)
  return table


def results_table(records) -> str:
  """Markdown: one row per (task, distance, model), seeds averaged."""
  lines = ["| task | distance | model | params | accuracy | loss | reference | wall s/seed |",
           "| --- | ---: | --- | ---: | ---: | ---: | --- | ---: |"]
  order = {m: i for i, m in enumerate(MODEL_ORDER)}
  for (group, model, distance), rs in sorted(
      _group(records).items(), key=lambda kv: (kv[0][0], kv[0][2], order.get(kv[0][1], 9))):
    acc = np.mean([r["metrics"]["accuracy"] for r in rs])
    loss = np.mean([r["metrics"]["loss"] for r in rs])
    ref = rs[0].get("reference", {})
    reference = (f"memoryless loss {ref['baseline_loss']:.4f}" if "baseline_loss" in ref
                 else f"chance acc {rs[0]['chance_accuracy']:.3f}")
    seeds = f" ({len(rs)} seeds)" if len(rs) > 1 else ""
    lines.append(f"| {group} | {distance} | {model}{seeds} | {rs[0]['params']:,} | {acc:.4f} | "
                 f"{loss:.4f} | {reference} | {np.mean([r['wall_s'] for r in rs]):.1f} |")
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
      ax.plot(x, [np.mean(a) for a in accs], marker="o", label=model)
      ax.fill_between(x, [min(a) for a in accs], [max(a) for a in accs], alpha=0.2)
      chance = table[keys[0]][0]["chance_accuracy"]
    if chance is not None:
      ax.axhline(chance, color="gray", linestyle="--", label="chance")
    ax.set_title(TITLES[group])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xscale("log")
    ax.set_xlabel("distance")
    ax.set_ylabel("accuracy on recalled tokens")
    ax.grid(alpha=0.3)
  axes[0][0].legend(loc="lower left")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def attention_maps(program, state, path: str) -> None:
  """A trained Transformer's heads on one held-out copy example: the rows of the 10 recalled
  positions over every key position. Attention that solves the task puts its mass on the first
  10 tokens (the data symbols)."""
  import jax
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  batch = program.eval_batch(state.seed_key, 0)
  model = program.model(state)
  _, attention = model(batch.inputs[:1], return_attention=True)  # layers x [1, N, L, L]
  seq_len = batch.inputs.shape[1]
  layers, heads = len(attention), attention[0].shape[1]
  fig, axes = plt.subplots(layers, heads, figsize=(3.2 * heads, 1.8 * layers + 0.6),
                           squeeze=False)
  for layer, weights in enumerate(attention):
    w = np.asarray(jax.device_get(weights[0]))  # [N, L, L]
    for head in range(heads):
      ax = axes[layer][head]
      ax.imshow(w[head, seq_len - 10:], aspect="auto", cmap="viridis", vmin=0, vmax=1,
                interpolation="nearest")
      ax.axvline(9.5, color="white", linewidth=0.8, linestyle=":")
      ax.set_title(f"layer {layer} head {head}", fontsize=8)
      ax.set_yticks([0, 9], ["L-10", "L-1"], fontsize=6)
      ax.set_xticks([0, 10, seq_len - 1], ["0", "10", str(seq_len - 1)], fontsize=6)
  fig.suptitle(f"Copying memory, delay {seq_len - 20}: recalled positions (rows) attend to "
               "keys (columns); dotted line: end of the 10 data symbols", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
