"""Programmable attention benchmark: score_mod / mask_mod on the chunked kernel, side by side.

Each case runs, in one process, a mod on attn_jax's chunked kernel and its anchors: the same
chunked call without the mod, and `jax.nn.dot_product_attention` with the equivalent dense mask or
bias. Forward + backward (`jax.vjp` of a random cotangent, gradients into the mods' closed-over
arrays included), float32; every program compiled ahead of time and timed in interleaved rounds
(`benchmarks.attention.time_interleaved`); peak memory of each program run alone in a fresh
process (resident memory on CPU, the device's peak on a GPU).

Cases (the targets they check, CPU):
- document: 8 equal documents packed in B1 L8192 N4 H64, segment ids traced (as under jit);
  >= 4x faster than the unmasked chunked call (ideal 8x), >= 6x faster than jax.nn with the dense
  mask, peak memory <= 10 % of jax.nn's.
- window: sliding window of 256 (causal) at B1 L16384 N4 H64; time <= 1.5 x (256 / 16384) of
  the full chunked call's.
- alibi: ALiBi as a score mod with learnable slopes at B1 L16384 N4 H64; peak memory <= 2.5 GB
  (a dense float32 bias alone would be 4.3 GB).
- softcap: soft-capping at B1 L8192 N4 H64; <= 1.3x the unmodified chunked call's time.
- mha_alibi, mha_relative: one training step of `attn_jax.nn.MultiHeadAttention` with ALiBi /
  T5 relative positions at L16384 (gradients into every parameter, the relative table included).

  python -m benchmarks.mods [--cases document window ...] [--out benchmarks/results/mods_cpu.json]
"""

import argparse
import dataclasses
import functools
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

import attn_jax
from attn_jax.core import chunked, mods, positional
from attn_jax.nn import MultiHeadAttention
from benchmarks import attention


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  seq_len: int
  num_heads: int = 4
  head_dim: int = 64
  documents: int = 8
  window: int = 256
  variants: tuple[str, ...] = ()
  memory: tuple[str, ...] = ()  # variants whose peak memory is measured
  # Timed after the interleaved rounds of the others: jax.nn's dense program allocates and frees
  # gigabytes per call, which slows whatever runs next in the process (measured: the document mod
  # 0.38 s alone, 0.83 s interleaved with it).
  alone: tuple[str, ...] = ()


CASES = {
    "document": Case("document", 8192, variants=("chunked+document", "chunked", "jax.nn+mask"),
                     memory=("chunked+document", "jax.nn+mask"), alone=("jax.nn+mask",)),
    "window": Case("window", 16384, variants=("chunked+window", "chunked")),
    "alibi": Case("alibi", 16384, variants=("chunked+alibi",), memory=("chunked+alibi",)),
    "softcap": Case("softcap", 8192, variants=("chunked+softcap", "chunked")),
    "mha_alibi": Case("mha_alibi", 16384, head_dim=16, variants=("mha+alibi",),
                      memory=("mha+alibi",)),
    "mha_relative": Case("mha_relative", 16384, head_dim=16, variants=("mha+relative",),
                         memory=("mha+relative",)),
}
QUICK_CASES = [dataclasses.replace(c, seq_len=1024, window=64) for c in CASES.values()]
GPU_CASES = list(CASES.values())


def _inputs(case: Case):
  keys = jax.random.split(jax.random.key(0), 4)
  shape = (1, case.seq_len, case.num_heads, case.head_dim)
  return [jax.random.normal(k, shape, jnp.float32) for k in keys]  # q, k, v, d_out


def _segment_ids(case: Case):
  length = case.seq_len // case.documents
  return jnp.repeat(jnp.arange(case.documents, dtype=jnp.int32), length)[None]  # [1, L]


def program(case: Case, variant: str):
  """(function, arguments) of one variant: forward + backward, as one jittable function."""
  query, key, value, d_out = _inputs(case)
  slopes = positional.alibi_slopes(case.num_heads)

  def vjp(attend, extra=None, differentiate_extra=False):
    """attend(q, k, v[, extra]) -> its VJP of d_out, into extra too if ``differentiate_extra``."""
    if extra is None:
      return (lambda q, k, v, d: jax.vjp(attend, q, k, v)[1](d)), (query, key, value, d_out)
    if differentiate_extra:
      fn = lambda q, k, v, e, d: jax.vjp(attend, q, k, v, e)[1](d)
    else:
      fn = lambda q, k, v, e, d: jax.vjp(lambda q, k, v: attend(q, k, v, e), q, k, v)[1](d)
    return fn, (query, key, value, extra, d_out)

  if variant == "chunked":
    return vjp(lambda q, k, v: chunked.chunked_attention(q, k, v))
  if variant == "chunked+document":  # ids traced: the block plan is worked out on device
    return vjp(lambda q, k, v, ids: chunked.chunked_attention(q, k, v, mask_mod=mods.document(ids)),
               _segment_ids(case))
  if variant == "jax.nn+mask":
    def dense(q, k, v, ids):
      mask = ids[:, None, :, None] == ids[:, None, None, :]  # [1, 1, L, L]
      return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    return vjp(dense, _segment_ids(case))
  if variant == "chunked+window":
    return vjp(lambda q, k, v: chunked.chunked_attention(
        q, k, v, mask_mod=mods.sliding_window(case.window, 0)))
  if variant == "chunked+alibi":
    return vjp(lambda q, k, v, s: chunked.chunked_attention(q, k, v, score_mod=mods.alibi(s)),
               slopes, differentiate_extra=True)
  if variant == "chunked+softcap":
    return vjp(lambda q, k, v: chunked.chunked_attention(q, k, v, score_mod=mods.softcap(30.0)))
  if variant in ("mha+alibi", "mha+relative"):
    width = case.num_heads * case.head_dim
    mha = MultiHeadAttention(num_heads=case.num_heads, in_features=width,
                             positional=variant.split("+")[1], implementation="chunked",
                             rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(mha, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(1), (1, case.seq_len, width))

    def step(params, x):  # the gradient a training step takes
      loss = lambda p: jnp.mean(nnx.merge(graphdef, p, rest)(x, is_causal=True) ** 2)
      return jax.grad(loss)(params)

    return step, (params, x)
  raise ValueError(f"unknown variant {variant!r}")


def _compile(case, variant):
  fn, args = program(case, variant)
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  analysis = compiled.memory_analysis()
  return compiled, args, time.perf_counter() - start, (
      None if analysis is None else analysis.temp_size_in_bytes / 2**20)


def measure_memory(case: Case, variant: str) -> dict:
  spec = json.dumps({"case": dataclasses.asdict(case), "variant": variant})
  result = subprocess.run([sys.executable, "-m", "benchmarks.mods", "--memory-case", spec],
                          capture_output=True, text=True, check=False)
  if result.returncode != 0:
    return {"memory_error": result.stderr.strip().splitlines()[-1:]}
  return json.loads(result.stdout.strip().splitlines()[-1])


def memory_case(spec: str) -> None:
  """Child of `measure_memory`: compile, run once, print the peak (`attention.peak_memory`)."""
  spec = json.loads(spec)
  case = Case(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["case"].items()})
  compiled, args, _, _ = _compile(case, spec["variant"])
  jax.block_until_ready(args)
  print(json.dumps(attention.peak_memory(lambda: compiled(*args))))


def run_case(case: Case, bench) -> list[dict]:
  compiled, rows = {}, {}
  for variant in case.variants:
    fn, variant_args, compile_s, temp_mib = _compile(case, variant)
    compiled[variant] = functools.partial(fn, *variant_args)
    rows[variant] = {"case": case.name, "variant": variant, "seq_len": case.seq_len,
                     "compile_s": round(compile_s, 2), "temp_mib": temp_mib}
  interleaved = {v: fn for v, fn in compiled.items() if v not in case.alone}
  samples = attention.time_interleaved(interleaved, (), bench.runs, bench.budget_s)
  for variant in case.alone:
    samples.update(attention.time_interleaved({variant: compiled[variant]}, (), bench.runs,
                                              bench.budget_s))
  for variant, seconds in samples.items():
    rows[variant].update(ms=1e3 * statistics.median(w for w, _ in seconds),
                         cpu_ms=1e3 * statistics.median(c for _, c in seconds),
                         runs=len(seconds))
  base = rows[case.variants[0]]
  for variant, row in rows.items():
    if variant != case.variants[0] and "ms" in row:
      row["speedup_of_mod"] = row["ms"] / base["ms"]  # > 1: the modded call is faster
      row["speedup_of_mod_cpu"] = row["cpu_ms"] / base["cpu_ms"]
    if variant in case.memory and bench.rss:
      row.update(measure_memory(case, variant))
    print(json.dumps(row), flush=True)
  return list(rows.values())


def run(cases, bench) -> list[dict]:
  return [row for case in cases for row in run_case(case, bench)]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
  parser.add_argument("--quick", action="store_true", help="L1024: a smoke test")
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--budget-s", type=float, default=60.0)
  parser.add_argument("--no-rss", dest="rss", action="store_false")
  parser.add_argument("--out", default=None)
  parser.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.memory_case:
    memory_case(args.memory_case)
    return
  cases = [CASES[name] for name in args.cases]
  if args.quick:
    cases = [dataclasses.replace(c, seq_len=1024, window=64) for c in cases]
  machine = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
             "cpu_count": os.cpu_count(), "cpu_model": attention._cpu_model(),
             "jax": jax.__version__, "attn_jax": attn_jax.__version__,
             "load_average_start": os.getloadavg()}
  print(json.dumps(machine))
  rows = run(cases, args)
  machine["load_average_end"] = os.getloadavg()
  report = {"machine": machine, "timing": f"median of >= {args.runs} interleaved runs",
            "speedup_of_mod": "this variant's time over the case's first variant's (the mod on "
                              "chunked): > 1 where the mod is faster, < 1 where it costs time",
            "results": rows}
  if args.out:
    attention.write_json(args.out, report)


if __name__ == "__main__":
  main()
