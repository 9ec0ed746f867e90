"""Markdown tables from the committed benchmark JSON, and the README blocks that hold them.

The tables in README.md and benchmarks/README.md sit between ``<!-- report:NAME -->`` and
``<!-- /report:NAME -->`` markers and are this module's output, so the numbers in the docs are the
numbers in the JSON (tests/docs/test_benchmark_tables.py checks it).

  python -m benchmarks.report          # print every table
  python -m benchmarks.report --write  # rewrite the marked blocks of both READMEs
"""

import argparse
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
READMES = (ROOT / "README.md", ROOT / "benchmarks" / "README.md")
MARKER = re.compile(r"(<!-- report:(?P<name>[a-z_]+) -->\n)(.*?)(<!-- /report:(?P=name) -->)",
                    re.S)


def _load(name: str) -> dict:
  return json.loads((RESULTS / name).read_text())


def _num(value, digits=1, suffix="") -> str:
  return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def _memory(row: dict) -> str:
  if "peak_rss_mib" in row:
    return f"{row['peak_rss_mib']:,.0f} (+{row['rss_growth_mib']:,.0f})"
  if "peak_device_mib" in row:
    return f"{row['peak_device_mib']:,.0f} (device)"
  return "-"


def machine_line(report: dict) -> str:
  m = report["machine"]
  start, end = m.get("load_average_start"), m.get("load_average_end")
  load = "" if start is None else f", load average {start[0]:.1f} at the start"
  load += "" if end is None else f" and {end[0]:.1f} at the end"
  return (f"{m['backend']}, {m.get('cpu_count', '?')} cores ({m.get('cpu_model', 'CPU')}), "
          f"jax {m['jax']}{load}")


def attention_table(report: dict, mode: str = "fwd_bwd", impls=None) -> str:
  """One row per (shape, implementation): times, ratios to jax.nn, memory."""
  lines = ["| shape | implementation | ms | CPU ms | x jax.nn (wall / CPU) | TFLOP/s | "
           "XLA temp MiB | peak memory MiB (+run) |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for row in report["results"]:
    if row["mode"] != mode or (impls and not any(row["impl"].startswith(i) for i in impls)):
      continue
    reference = "jax.nn[cudnn]" if "x_jax.nn[cudnn]" in row else "jax.nn[xla]"
    ratio = "-"
    if f"x_{reference}" in row:
      ratio = f"{row[f'x_{reference}']:.2f} / {row[f'x_{reference}_cpu']:.2f}"
    impl = row["impl"] + (" (compiled only)" if "skipped" in row else "")
    lines.append(
        f"| {row['shape']} | {impl} | {_num(row.get('ms'))} | {_num(row.get('cpu_ms'))} | "
        f"{ratio} | {_num(row.get('tflops'), 3)} | {_num(row.get('temp_mib'), 0)} | "
        f"{_memory(row)} |")
  return "\n".join(lines)


def mods_table(report: dict) -> str:
  """One row per (case, variant); the mod's speed-up over each anchor."""
  lines = ["| case | variant | L | ms | CPU ms | mod x faster (wall / CPU) | peak memory MiB "
           "(+run) |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
  for row in report["results"]:
    speedup = "-"
    if "speedup_of_mod" in row:
      speedup = f"{row['speedup_of_mod']:.2f} / {row['speedup_of_mod_cpu']:.2f}"
    lines.append(f"| {row['case']} | {row['variant']} | {row['seq_len']} | {_num(row['ms'])} | "
                 f"{_num(row['cpu_ms'])} | {speedup} | {_memory(row)} |")
  return "\n".join(lines)


def _row(report, **match) -> dict:
  return next(r for r in report["results"] if all(r.get(k) == v for k, v in match.items()))


def mods_targets(report: dict) -> str:
  """The programmable-attention targets, each with its measured figure (wall-time based)."""
  doc = _row(report, case="document", variant="chunked+document")
  doc_nomask = _row(report, case="document", variant="chunked")
  doc_nn = _row(report, case="document", variant="jax.nn+mask")
  window = _row(report, case="window", variant="chunked+window")
  full = _row(report, case="window", variant="chunked")
  alibi = _row(report, case="alibi", variant="chunked+alibi")
  softcap = _row(report, case="softcap", variant="chunked+softcap")
  plain = _row(report, case="softcap", variant="chunked")
  window_ratio = window["ms"] / full["ms"] / (256 / window["seq_len"])
  share = 100 * doc["peak_rss_mib"] / doc_nn["peak_rss_mib"]
  alibi_gb = alibi["peak_rss_mib"] * 2**20 / 1e9
  # (target, goal, measured as shown, met)
  rows = [
      ("document masking, 8 documents, B1 L8192: x faster than chunked without the mask",
       ">= 4", f"{doc_nomask['ms'] / doc['ms']:.2f}", doc_nomask["ms"] / doc["ms"] >= 4),
      ("... x faster than jax.nn with the dense mask", ">= 6", f"{doc_nn['ms'] / doc['ms']:.1f}",
       doc_nn["ms"] / doc["ms"] >= 6),
      ("... peak memory, share of jax.nn's (peak RSS)", "<= 10 %", f"{share:.1f} %", share <= 10),
      ("sliding window 256 at L16384: time / (window / length x full time)", "<= 1.5",
       f"{window_ratio:.2f}", window_ratio <= 1.5),
      ("ALiBi score mod, B1 L16384 N4 H64, forward + backward: peak memory", "<= 2.5 GB",
       f"{alibi['peak_rss_mib'] / 1024:.2f} GiB", alibi_gb <= 2.5),
      ("soft-capping at L8192: time / unmodified chunked time", "<= 1.3",
       f"{softcap['ms'] / plain['ms']:.2f}", softcap["ms"] / plain["ms"] <= 1.3),
  ]
  lines = ["| target | goal | measured | met |", "| --- | ---: | ---: | --- |"]
  lines += [f"| {what} | {goal} | {got} | {'yes' if met else '**not met**'} |"
            for what, goal, got, met in rows]
  return "\n".join(lines)


TRAIN_STEP_MODELS = {"encoder": "Transformer encoder (d_model 64, 4 heads, d_ff 256, 2 layers)",
                     "lstm": "LSTM (hidden 128, zero carry on both sides)"}


def train_step_table(report: dict) -> str:
  """attn_jax's train step against flax.nnx's, per model."""
  lines = ["| model | attn_jax ms | flax.nnx ms | ratio (wall) | ratio (CPU time) | target |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
  for name, row in report["results"].items():
    met = "" if row["meets_target"] else " (not met)"
    lines.append(f"| {TRAIN_STEP_MODELS.get(name, name)} | {row['ours_ms']:.1f} | "
                 f"{row['flax_ms']:.1f} | {row['ratio']:.3f} | {row['cpu_ratio']:.3f} | "
                 f"<= {row['target_ratio']}{met} |")
  return "\n".join(lines)


def train_step_machine(report: dict) -> str:
  m = report["machine"]
  return (f"{m['backend']}, {m['cpu_count']} cores, jax {m['jax']}, flax {m['flax']}, load "
          f"average {m['load_average'][0]:.1f} at the start and {m['load_average_end'][0]:.1f} "
          "at the end")


def tables() -> dict[str, str]:
  """Every marked block's content, by name."""
  attention = _load("attention_cpu.json")
  mods = _load("mods_cpu.json")
  train_step = _load("train_step_cpu.json")
  defaults = ("attn_jax[None", "attn_jax[chunked]", "attn_jax[xla]", "jax.nn[xla]")
  return {
      "attention_machine": machine_line(attention),
      "attention_key": attention_table(attention, impls=defaults),
      "attention_fwd_bwd": attention_table(attention),
      "attention_fwd": attention_table(attention, mode="fwd"),
      "mods_machine": machine_line(mods),
      "mods": mods_table(mods),
      "mods_targets": mods_targets(mods),
      "train_step_machine": train_step_machine(train_step),
      "train_step": train_step_table(train_step),
  }


def rewrite(text: str, content: dict[str, str]) -> str:
  """``text`` with every marked block replaced by its table."""
  return MARKER.sub(lambda m: f"{m.group(1)}{content[m.group('name')]}\n{m.group(4)}", text)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--write", action="store_true", help="rewrite the READMEs' marked blocks")
  args = parser.parse_args(argv)
  content = tables()
  if not args.write:
    for name, table in content.items():
      print(f"## {name}\n\n{table}\n")
    return
  for path in READMES:
    path.write_text(rewrite(path.read_text(), content))
    print(f"rewrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
  main()
