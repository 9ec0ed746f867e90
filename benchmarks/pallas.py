"""The Pallas kernel's rows of the GPU check: implementation="pallas" against cuDNN and XLA.

Forward + backward (`jax.vjp` of a random cotangent), bfloat16, every program compiled ahead of
time and timed in interleaved rounds (`benchmarks.attention.time_interleaved`), peak device memory
of each program run alone in a fresh process (`benchmarks.attention.peak_memory`).

- dense causal at B8 L4096 N16 H128 and B1 L16384 N16 H128: attn_jax "pallas", "cudnn", "xla"
  and jax.nn's cuDNN; TFLOP/s on the causal half of the FLOPs (3.5 x forward for fwd + bwd).
- documents: 8 packed documents (causal) at B1 L16384 N16 H128, the segment ids traced (the
  block plan is worked out on device): "pallas" with ``mask_mod=mods.document`` against "xla"
  and jax.nn's XLA path with the dense [B, 1, T, S] mask.
- alibi: ALiBi (causal) at B1 L16384 N16 H128: "pallas" with ``score_mod=mods.alibi`` against
  "xla" and jax.nn's XLA path with the dense [1, N, T, S] bias (slopes constant).

Targets on an H100 / H200 (none measured yet): "pallas" >= 70 % of cuDNN's TFLOP/s on dense
causal at L4096; documents >= 4x faster than XLA with the dense mask; memory O(T x block).
``--allow-cpu`` (through `benchmarks.gpu_check`) runs the same rows at toy sizes, the kernel in
interpret mode: a check of this script, not a measurement.

  python -m benchmarks.pallas [--allow-cpu] [--out benchmarks/results/pallas_gpu.json]
"""

import argparse
import dataclasses
import functools
import json
import statistics
import subprocess
import sys

import jax
import jax.numpy as jnp

import attn_jax
from attn_jax.core import mods, positional
from benchmarks import attention


@dataclasses.dataclass(frozen=True)
class Case:
  name: str  # "causal", "documents" or "alibi"
  batch: int
  seq_len: int
  num_heads: int = 16
  head_dim: int = 128
  documents: int = 8
  variants: tuple[str, ...] = ()
  memory: tuple[str, ...] = ()  # variants whose peak memory is measured (fresh process)

  @property
  def id(self) -> str:
    return f"{self.name}_b{self.batch}_l{self.seq_len}_n{self.num_heads}_h{self.head_dim}"

  def attended_pairs(self) -> float:
    """Query-key pairs the mask allows (causal; within a document for "documents")."""
    if self.name == "documents":
      length = self.seq_len // self.documents
      return self.batch * self.documents * length * (length + 1) / 2
    return self.batch * self.seq_len * (self.seq_len + 1) / 2

  def flops(self) -> float:
    """Forward + backward FLOPs of the attended pairs (4 H per pair forward, 3.5 x that)."""
    return 3.5 * 4 * self.num_heads * self.head_dim * self.attended_pairs()


GPU_VARIANTS = {
    "causal": ("attn_jax[pallas]", "attn_jax[cudnn]", "attn_jax[xla]", "jax.nn[cudnn]"),
    "documents": ("attn_jax[pallas]", "attn_jax[xla]+mask", "jax.nn[xla]+mask"),
    "alibi": ("attn_jax[pallas]", "attn_jax[xla]+bias", "jax.nn[xla]+bias"),
}
GPU_CASES = [
    Case("causal", 8, 4096, variants=GPU_VARIANTS["causal"], memory=("attn_jax[pallas]",)),
    Case("causal", 1, 16384, variants=GPU_VARIANTS["causal"], memory=GPU_VARIANTS["causal"]),
    Case("documents", 1, 16384, variants=GPU_VARIANTS["documents"],
         memory=("attn_jax[pallas]", "jax.nn[xla]+mask")),
    Case("alibi", 1, 16384, variants=GPU_VARIANTS["alibi"],
         memory=("attn_jax[pallas]", "jax.nn[xla]+bias")),
]
#: Toy sizes for --allow-cpu (interpret mode; no cuDNN on CPU).
CPU_CASES = [
    Case("causal", 1, 128, 2, 32, variants=("attn_jax[pallas]", "attn_jax[xla]"),
         memory=("attn_jax[pallas]",)),
    Case("documents", 1, 128, 2, 32, variants=("attn_jax[pallas]", "attn_jax[xla]+mask",
                                               "jax.nn[xla]+mask")),
    Case("alibi", 1, 128, 2, 32, variants=("attn_jax[pallas]", "attn_jax[xla]+bias",
                                           "jax.nn[xla]+bias")),
]


def program(case: Case, variant: str):
  """(function, arguments): forward + backward of one variant, as one jittable function."""
  keys = jax.random.split(jax.random.key(0), 4)
  shape = (case.batch, case.seq_len, case.num_heads, case.head_dim)
  q, k, v, d_out = (jax.random.normal(key, shape, jnp.bfloat16) for key in keys)
  length = case.seq_len // case.documents
  ids = jnp.repeat(jnp.arange(case.documents, dtype=jnp.int32), length)[None]  # [1, L]
  slopes = positional.alibi_slopes(case.num_heads)
  library, impl = variant.split("[")[0], variant.split("[")[1].split("]")[0]
  extra = variant.split("]")[1]
  if library == "jax.nn":
    base = functools.partial(jax.nn.dot_product_attention, implementation=impl, is_causal=True)
  else:
    base = functools.partial(attn_jax.dot_product_attention, implementation=impl, is_causal=True)

  if case.name == "causal":
    attend = lambda q, k, v, ids: base(q, k, v)
  elif case.name == "documents" and extra == "":  # the kernel: segment ids in a mask_mod
    attend = lambda q, k, v, ids: base(q, k, v, mask_mod=mods.document(ids))
  elif case.name == "documents":  # the dense [B, 1, T, S] mask
    attend = lambda q, k, v, ids: base(q, k, v, mask=ids[:, None, :, None] == ids[:, None, None])
  elif extra == "":  # alibi in the kernel
    attend = lambda q, k, v, ids: base(q, k, v, score_mod=mods.alibi(slopes))
  else:  # the dense [1, N, T, S] bias
    positions = jnp.arange(case.seq_len)
    bias = lambda: positional.alibi_bias(case.num_heads, positions, positions)[None]
    attend = lambda q, k, v, ids: base(q, k, v, bias=bias().astype(q.dtype))
  fn = lambda q, k, v, ids, d: jax.vjp(lambda q, k, v: attend(q, k, v, ids), q, k, v)[1](d)
  return fn, (q, k, v, ids, d_out)


def _compile(case, variant):
  fn, args = program(case, variant)
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, args


def measure_memory(case: Case, variant: str) -> dict:
  spec = json.dumps({"case": dataclasses.asdict(case), "variant": variant})
  result = subprocess.run([sys.executable, "-m", "benchmarks.pallas", "--memory-case", spec],
                          capture_output=True, text=True, check=False)
  if result.returncode != 0:
    return {"memory_error": result.stderr.strip().splitlines()[-1:]}
  return json.loads(result.stdout.strip().splitlines()[-1])


def memory_case(spec: str) -> None:
  """Child of `measure_memory`: compile, run once, print the peak memory as JSON."""
  spec = json.loads(spec)
  case = Case(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["case"].items()})
  compiled, args = _compile(case, spec["variant"])
  jax.block_until_ready(args)
  print(json.dumps(attention.peak_memory(lambda: compiled(*args))))


def run_case(case: Case, bench) -> list[dict]:
  compiled, rows = {}, {}
  for variant in case.variants:
    row = {"case": case.id, "variant": variant, "flops": case.flops()}
    try:
      fn, args = _compile(case, variant)
      compiled[variant] = functools.partial(fn, *args)
    except Exception as error:  # an implementation that cannot serve the case: say why
      row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    rows[variant] = row
  samples = attention.time_interleaved(compiled, (), bench.runs, bench.budget_s)
  for variant, seconds in samples.items():
    row = rows[variant]
    row.update(ms=1e3 * statistics.median(w for w, _ in seconds), runs=len(seconds))
    row["tflops"] = row["flops"] / (row["ms"] * 1e-3) / 1e12
  pallas = rows.get("attn_jax[pallas]", {})
  for variant, row in rows.items():
    if "ms" in row and "ms" in pallas and variant != "attn_jax[pallas]":
      row["pallas_speedup"] = row["ms"] / pallas["ms"]  # > 1: the Pallas kernel is faster
    if variant in case.memory and bench.rss and "ms" in row:
      row.update(measure_memory(case, variant))
    print(json.dumps(row), flush=True)
  return list(rows.values())


def run(on_gpu: bool, bench) -> list[dict]:
  return [row for case in (GPU_CASES if on_gpu else CPU_CASES) for row in run_case(case, bench)]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--allow-cpu", action="store_true", help="toy sizes, interpret mode")
  parser.add_argument("--out", default="benchmarks/results/pallas_gpu.json")
  parser.add_argument("--memory-case", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.memory_case:
    return memory_case(args.memory_case)
  on_gpu = jax.default_backend() == "gpu"
  if not on_gpu and not args.allow_cpu:
    raise SystemExit("no GPU here; pass --allow-cpu to check the script at toy sizes")
  bench = argparse.Namespace(runs=3, budget_s=20.0, rss=True)
  rows = run(on_gpu, bench)
  attention.write_json(args.out, {"device": jax.devices()[0].device_kind,
                                  "jax": jax.__version__, "rows": rows})
  return None


if __name__ == "__main__":
  main()
