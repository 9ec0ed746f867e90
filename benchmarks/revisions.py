"""Before / after: the chunked kernel of a git revision against the working tree, in one process.

The revision's ``attn_jax`` is extracted with ``git archive`` into a temporary directory and
renamed ``attn_jax_<rev>`` (imports rewritten), so both versions run side by side in the same
process and the same interleaved rounds: forward + backward (`jax.vjp` of a random cotangent),
B1 N4 H64 float32, default blocks.

Cases: dense8k and causal8k (B1 L8192, no mask / is_causal), window16k (causal sliding window of
256 as a mask mod, L16384), doc8k (8 packed documents, segment ids traced, L8192).

  python -m benchmarks.revisions --rev main --cases dense8k causal8k [--out results/x.json]
"""

import argparse
import importlib
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp

from attn_jax.core import chunked, mods
from benchmarks import attention

LENGTHS = {"dense8k": 8192, "causal8k": 8192, "window16k": 16384, "doc8k": 8192}


def load_revision(rev: str):
  """(chunked, mods) modules of ``rev``'s attn_jax, imported as attn_jax_<rev>."""
  name = "attn_jax_" + re.sub(r"\W", "_", rev)
  root = pathlib.Path(tempfile.mkdtemp())
  archive = subprocess.run(["git", "archive", rev, "attn_jax"], capture_output=True, check=True)
  subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
  (root / "attn_jax").rename(root / name)
  for path in (root / name).rglob("*.py"):
    path.write_text(re.sub(r"\battn_jax\b", name, path.read_text()))
  sys.path.insert(0, str(root))
  return (importlib.import_module(f"{name}.core.chunked"),
          importlib.import_module(f"{name}.core.mods"))


def program(lib_chunked, lib_mods, case: str):
  length = LENGTHS[case]
  q, k, v, d = (jax.random.normal(key, (1, length, 4, 64))
                for key in jax.random.split(jax.random.key(0), 4))
  ids = jnp.repeat(jnp.arange(8, dtype=jnp.int32), length // 8)[None]
  options = {"dense8k": lambda ids: {}, "causal8k": lambda ids: {"is_causal": True},
             "window16k": lambda ids: {"mask_mod": lib_mods.sliding_window(256, 0)},
             "doc8k": lambda ids: {"mask_mod": lib_mods.document(ids)}}[case]
  attend = lambda q, k, v, ids: lib_chunked.chunked_attention(q, k, v, **options(ids))
  fn = lambda q, k, v, ids, d: jax.vjp(lambda q, k, v: attend(q, k, v, ids), q, k, v)[1](d)
  args = (q, k, v, ids, d)
  compiled = jax.jit(fn).lower(*args).compile()
  return lambda: compiled(*args)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rev", default="main")
  parser.add_argument("--cases", nargs="+", choices=sorted(LENGTHS), default=sorted(LENGTHS))
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--budget-s", type=float, default=120.0)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  before = load_revision(args.rev)
  machine = {"backend": jax.default_backend(), "cpu_count": os.cpu_count(),
             "cpu_model": attention._cpu_model(), "jax": jax.__version__,
             "load_average_start": os.getloadavg()}
  programs = {}
  for case in args.cases:
    programs[f"{case}/{args.rev}"] = program(*before, case)
    programs[f"{case}/working tree"] = program(chunked, mods, case)
  samples = attention.time_interleaved(programs, (), args.runs, args.budget_s)
  machine["load_average_end"] = os.getloadavg()
  rows = [{"program": name, "runs": len(s), "ms": 1e3 * statistics.median(w for w, _ in s),
           "cpu_ms": 1e3 * statistics.median(c for _, c in s)} for name, s in samples.items()]
  for row in rows:
    print(f"{row['program']:<28} {row['ms']:9.0f} ms {row['cpu_ms']:9.0f} CPU ms")
  if args.out:
    attention.write_json(args.out, {"machine": machine, "rev": args.rev, "results": rows})


if __name__ == "__main__":
  main()
