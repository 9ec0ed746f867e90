"""Attention benchmark: attn_jax's implementations side by side with jax.nn, flax.nnx and einsum.

For each shape and each mode (forward; forward + backward via `jax.vjp`), every implementation is
compiled ahead of time (`jit(...).lower(...).compile()`), warmed up once, then timed to
`block_until_ready` in interleaved rounds (A B C A B C ...: load from other processes on a shared
machine hits every implementation alike); the table reports the median.

- attn_jax: `attn_jax.dot_product_attention` with implementation None (the default choice, shown
  as `attn_jax[None->chosen]`), "reference", "xla", "chunked" (and "cudnn" on GPU).
- jax.nn: `jax.nn.dot_product_attention` with implementation "xla" (and "cudnn" on GPU).
- flax.nnx: `flax.nnx.dot_product_attention` (no dropout, so it calls jax.nn's default path).
- einsum: softmax(q k^T / sqrt(H)) v written with two einsums.

Columns: ms (median wall time), cpu ms (median process CPU time, all threads: steadier than wall
time when other processes share the cores), TFLOP/s (FlashAttention's convention: forward
4*B*N*T*S*H, halved when causal; forward + backward 3.5x that; from wall time), x jax.nn (wall and
CPU time over jax.nn's: cuDNN's on GPU, XLA's on CPU), compile seconds, `temp MiB` (XLA's
`memory_analysis()` temporary buffers of the compiled program: what it allocates beyond inputs and
outputs), and `peak RSS MiB` (CPU, implementations marked for memory: the peak resident memory of
a fresh subprocess while it runs the case once after compiling; `+` the growth during the run).
Rows too big to run are compiled only, which still gives their `temp MiB`.

  python -m benchmarks.attention [--quick] [--shapes b1_l8192_n4_h64_f32 ...] [--modes fwd fwd_bwd]
      [--impls 'attn_jax[chunked]' jax.nn ...] [--out benchmarks/results/attention_cpu.json]
"""

import argparse
import dataclasses
import functools
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

import attn_jax

MODES = ("fwd", "fwd_bwd")


@dataclasses.dataclass(frozen=True)
class Shape:
  """One benchmark shape; `only` restricts the implementations that run (others compile only)."""

  batch: int
  seq_len: int
  num_heads: int
  head_dim: int
  dtype: str = "float32"
  is_causal: bool = False
  only: tuple[str, ...] = ()  # implementation names (prefixes) that run; () = all
  memory: tuple[str, ...] = ()  # implementation name prefixes whose peak RSS is measured (CPU)

  @property
  def name(self) -> str:
    dtype = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}[self.dtype]
    return (f"b{self.batch}_l{self.seq_len}_n{self.num_heads}_h{self.head_dim}_{dtype}"
            + ("_causal" if self.is_causal else ""))

  def flops(self, mode: str) -> float:
    forward = 4 * self.batch * self.num_heads * self.seq_len**2 * self.head_dim
    forward /= 2 if self.is_causal else 1
    return forward * (3.5 if mode == "fwd_bwd" else 1.0)


def parse_shape(text: str) -> Shape:
  """`b8_l256_n8_h64_f32[_causal][_chunked][_memory]` -> Shape."""
  match = re.fullmatch(r"b(\d+)_l(\d+)_n(\d+)_h(\d+)_(f32|bf16|f16)((?:_causal|_chunked|_memory)*)",
                       text)
  if not match:
    raise argparse.ArgumentTypeError(
        f"shape must look like b8_l256_n8_h64_f32[_causal][_chunked][_memory]; got {text}")
  b, length, n, h, dtype, flags = match.groups()
  dtype = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[dtype]
  only = ("attn_jax[chunked]", "attn_jax[None") if "_chunked" in flags else ()
  return Shape(int(b), int(length), int(n), int(h), dtype, "_causal" in flags, only,
               ("",) if "_memory" in flags else ())


CHUNKED_ONLY = ("attn_jax[chunked]", "attn_jax[None")
CPU_SHAPES = [
    Shape(8, 256, 8, 64),
    # Where the default moves from XLA to chunked on CPU (T * S = 1024^2 per head).
    Shape(1, 1024, 4, 64),
    Shape(1, 2048, 4, 64),
    Shape(1, 4096, 4, 64),
    Shape(1, 8192, 4, 64, memory=("attn_jax[chunked]", "jax.nn[xla]")),
    # jax.nn's XLA path needs ~19 GB here: compiled (for its temp size) but not run.
    Shape(1, 16384, 4, 64, only=CHUNKED_ONLY, memory=CHUNKED_ONLY),
]
CPU_QUICK = [
    Shape(2, 128, 4, 32),
    Shape(1, 1024, 4, 64, memory=("attn_jax[chunked]", "jax.nn[xla]")),
    Shape(1, 4096, 4, 64, only=CHUNKED_ONLY, memory=CHUNKED_ONLY),
]
GPU_IMPLS = ("attn_jax[None]", "attn_jax[cudnn]", "attn_jax[xla]", "attn_jax[chunked]",
             "jax.nn[cudnn]")
GPU_SHAPES = [
    Shape(8, 2048, 16, 64, "bfloat16"),
    Shape(4, 4096, 16, 128, "bfloat16"),
    Shape(1, 16384, 16, 128, "bfloat16"),
    # float32: no cuDNN; the XLA paths against chunked, with each one's peak device memory.
    Shape(1, 16384, 16, 64, memory=("attn_jax[None]", "attn_jax[xla]", "attn_jax[chunked]")),
]
GPU_QUICK = [Shape(8, 1024, 16, 64, "bfloat16"), Shape(1, 4096, 16, 64)]


# ----------------------------------------------------------------------------- implementations


def einsum_attention(query, key, value, *, is_causal=False):
  """softmax(q k^T / sqrt(H)) v with two einsums; query [B, T, N, H], key/value [B, S, N, H]."""
  logits = jnp.einsum("btnh,bsnh->bnts", query, key,
                      preferred_element_type=jnp.float32) * query.shape[-1] ** -0.5
  if is_causal:
    t, s = logits.shape[-2:]
    logits = jnp.where(jnp.tril(jnp.ones((t, s), bool)), logits, -jnp.inf)
  weights = jax.nn.softmax(logits, axis=-1).astype(value.dtype)  # [B, N, T, S]
  return jnp.einsum("bnts,bsnh->btnh", weights, value)


def implementations(on_gpu: bool) -> dict:
  """name -> attention(query, key, value, *, is_causal) -> [B, T, N, H]."""
  impls = {}
  for impl in (None, "reference", "xla", "chunked", *(("cudnn",) if on_gpu else ())):
    impls[f"attn_jax[{impl}]"] = functools.partial(attn_jax.dot_product_attention,
                                                   implementation=impl)
  for impl in ("xla", *(("cudnn",) if on_gpu else ())):
    impls[f"jax.nn[{impl}]"] = functools.partial(jax.nn.dot_product_attention, implementation=impl)
  impls["flax.nnx"] = nnx.dot_product_attention
  impls["einsum"] = einsum_attention
  return impls


def program(attention, mode: str, is_causal: bool):
  """The function to jit: forward, or forward + backward (the vjp of a given cotangent)."""
  forward = functools.partial(attention, is_causal=is_causal)
  if mode == "fwd":
    return lambda q, k, v, d_out: forward(q, k, v)
  return lambda q, k, v, d_out: jax.vjp(forward, q, k, v)[1](d_out)


def make_inputs(shape: Shape):
  keys = jax.random.split(jax.random.key(0), 4)
  dims = (shape.batch, shape.seq_len, shape.num_heads, shape.head_dim)
  return [jax.random.normal(k, dims, jnp.dtype(shape.dtype)) for k in keys]  # q, k, v, d_out


# ----------------------------------------------------------------------------- measurement


def compile_case(attention, shape: Shape, mode: str, inputs):
  start = time.perf_counter()
  compiled = jax.jit(program(attention, mode, shape.is_causal)).lower(*inputs).compile()
  seconds = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  temp_mib = None if analysis is None else analysis.temp_size_in_bytes / 2**20
  return compiled, seconds, temp_mib


def time_interleaved(compiled: dict, inputs, min_runs: int, budget_s: float,
                     min_time_s: float = 10.0, max_runs: int = 50) -> dict:
  """name -> (wall seconds, process CPU seconds) per run; rounds over all programs until
  min_runs, and on while the rounds took less than min_time_s in all (up to max_runs: cheap
  programs get many samples), but never past the time budget. CPU time (all threads) is steadier
  than wall time under load."""
  for fn in compiled.values():  # warm-up: first-run allocations, thread pools
    jax.block_until_ready(fn(*inputs))
  samples = {name: [] for name in compiled}
  start = time.perf_counter()
  while samples:
    for name, fn in compiled.items():
      wall, cpu = time.perf_counter(), time.process_time()
      jax.block_until_ready(fn(*inputs))
      samples[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    runs, elapsed = len(next(iter(samples.values()))), time.perf_counter() - start
    enough = runs >= min_runs and (elapsed >= min_time_s or runs >= max_runs)
    if enough or elapsed > budget_s:
      break
  return samples


def measure_rss(shape: Shape, impl: str, mode: str) -> dict:
  """Peak memory of one case run alone in a fresh process: resident memory on CPU, the device's
  peak bytes in use on an accelerator."""
  spec = json.dumps({"shape": dataclasses.asdict(shape), "impl": impl, "mode": mode})
  result = subprocess.run([sys.executable, "-m", "benchmarks.attention", "--rss-case", spec],
                          capture_output=True, text=True, check=False)
  if result.returncode != 0:
    return {"rss_error": result.stderr.strip().splitlines()[-1:]}
  return json.loads(result.stdout.strip().splitlines()[-1])


def rss_case(spec: str) -> None:
  """Child of `measure_rss`: compile, then run one case once; print its peak memory as JSON.

  CPU: the compiler's own memory (LLVM: a few hundred MiB) would mask the run's, so the
  high-water mark is reset after compiling (Linux >= 4.0: writing 5 to /proc/self/clear_refs);
  where that fails, the whole process's ru_maxrss is reported instead. Accelerators:
  ``memory_stats()["peak_bytes_in_use"]`` of the device (inputs included).
  """
  spec = json.loads(spec)
  shape = Shape(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["shape"].items()})
  inputs = make_inputs(shape)
  attention = implementations(on_gpu=jax.default_backend() == "gpu")[spec["impl"]]
  compiled, _, _ = compile_case(attention, shape, spec["mode"], inputs)
  jax.block_until_ready(inputs)
  print(json.dumps(peak_memory(lambda: compiled(*inputs))))


def peak_memory(run_once) -> dict:
  """Runs ``run_once()`` (compiled already) and returns its peak memory: the resident set's
  high-water mark on CPU, reset first so the compiler's own memory does not count (Linux >= 4.0:
  writing 5 to /proc/self/clear_refs; else the whole process's ru_maxrss), or the device's
  ``peak_bytes_in_use`` on an accelerator (inputs included)."""
  if jax.default_backend() != "cpu":
    jax.block_until_ready(run_once())
    stats = jax.devices()[0].memory_stats() or {}
    return {"peak_device_mib": stats.get("peak_bytes_in_use", float("nan")) / 2**20,
            "rss_method": "device memory_stats peak_bytes_in_use"}
  try:
    with open("/proc/self/clear_refs", "w") as clear_refs:
      clear_refs.write("5")
    method = "VmHWM after reset"
  except OSError:
    method = "ru_maxrss"
  before_kib = _status_kib("VmRSS")
  jax.block_until_ready(run_once())
  peak_kib = (_status_kib("VmHWM") if method == "VmHWM after reset"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
  return {"peak_rss_mib": peak_kib / 1024, "rss_growth_mib": (peak_kib - before_kib) / 1024,
          "rss_method": method}


def write_json(path: str, report: dict) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as out:
    json.dump(report, out, indent=1)
  print(f"wrote {path}")


def _status_kib(field: str) -> int:
  with open("/proc/self/status") as status:
    return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


# ----------------------------------------------------------------------------- driver


def run_shape(shape: Shape, impls: dict, modes, args) -> list[dict]:
  inputs = make_inputs(shape)
  chosen = attn_jax.select_implementation(*inputs[:3], is_causal=shape.is_causal)
  rows = []
  for mode in modes:
    compiled, info = {}, {}
    for name, attention in impls.items():
      runs = not shape.only or any(name.startswith(prefix) for prefix in shape.only)
      display = f"attn_jax[None->{chosen}]" if name == "attn_jax[None]" else name
      row = {"shape": shape.name, "impl": display, "mode": mode, "flops": shape.flops(mode)}
      try:
        fn, row["compile_s"], row["temp_mib"] = compile_case(attention, shape, mode, inputs)
        if runs:
          compiled[name] = fn
        else:
          row["skipped"] = "compiled only (too big to run here)"
      except Exception as error:  # an implementation that cannot serve the shape: say why
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
      info[name] = row
    samples = time_interleaved(compiled, inputs, args.runs, args.budget_s)
    for name, seconds in samples.items():
      row = info[name]
      row["ms"] = 1e3 * statistics.median(wall for wall, _ in seconds)
      row["cpu_ms"] = 1e3 * statistics.median(cpu for _, cpu in seconds)
      row["runs"] = len(seconds)
      row["tflops"] = row["flops"] / (row["ms"] * 1e-3) / 1e12
    for name, row in info.items():
      for reference in ("jax.nn[xla]", "jax.nn[cudnn]"):
        if "ms" in row and "ms" in info.get(reference, {}):
          row[f"x_{reference}"] = row["ms"] / info[reference]["ms"]
          row[f"x_{reference}_cpu"] = row["cpu_ms"] / info[reference]["cpu_ms"]
      measured = any(name.startswith(prefix) for prefix in shape.memory)
      if measured and args.rss and "ms" in row:
        row.update(measure_rss(shape, name, mode))
      rows.append(row)
      print_row(row)
    del compiled
  return rows


HEADER = (f"{'shape':<22} {'impl':<24} {'mode':<7} {'ms':>9} {'cpu ms':>9} {'TFLOP/s':>7} "
          f"{'x jax.nn':>8} {'(cpu)':>6} {'compile s':>9} {'temp MiB':>8} {'peak RSS MiB':>15}")


def print_row(row: dict) -> None:
  def num(key, width, digits):
    return f"{row[key]:{width}.{digits}f}" if row.get(key) is not None else f"{'-':>{width}}"

  rss = "-"
  if "peak_rss_mib" in row:
    rss = f"{row['peak_rss_mib']:.0f} (+{row['rss_growth_mib']:.0f})"
  elif "peak_device_mib" in row:
    rss = f"{row['peak_device_mib']:.0f} (device)"
  reference = "jax.nn[cudnn]" if "x_jax.nn[cudnn]" in row else "jax.nn[xla]"
  row = {**row, "ratio": row.get(f"x_{reference}"), "cpu_ratio": row.get(f"x_{reference}_cpu")}
  note = row.get("skipped") or row.get("error") or ""
  print(f"{row['shape']:<22} {row['impl']:<24} {row['mode']:<7} {num('ms', 9, 1)} "
        f"{num('cpu_ms', 9, 1)} {num('tflops', 7, 3)} {num('ratio', 8, 2)} "
        f"{num('cpu_ratio', 6, 2)} {num('compile_s', 9, 1)} {num('temp_mib', 8, 0)} {rss:>15} "
        f"{note}", flush=True)


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as cpuinfo:
      models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    return models[0]
  except (OSError, IndexError):
    return platform.processor()


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="small shapes, 2 runs: a smoke test")
  parser.add_argument("--shapes", nargs="+", type=parse_shape,
                      help="e.g. b1_l8192_n4_h64_f32 (_causal, _chunked: chunked only, _memory)")
  parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
  parser.add_argument("--impls", nargs="+", default=None,
                      help="only implementations whose name starts with one of these, e.g. "
                           "'attn_jax[chunked]' 'jax.nn'")
  parser.add_argument("--runs", type=int, default=None, help="timed runs per case (default 5)")
  parser.add_argument("--budget-s", type=float, default=60.0,
                      help="stop adding rounds after this long (at least one timed run)")
  parser.add_argument("--no-rss", dest="rss", action="store_false",
                      help="skip the subprocess peak-RSS measurement")
  parser.add_argument("--out", default=None, help="JSON output path")
  parser.add_argument("--rss-case", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.rss_case:
    rss_case(args.rss_case)
    return
  on_gpu = jax.default_backend() == "gpu"
  args.runs = args.runs or (2 if args.quick else 5)
  shapes = args.shapes or ({(False, False): CPU_SHAPES, (False, True): CPU_QUICK,
                            (True, False): GPU_SHAPES, (True, True): GPU_QUICK}[on_gpu, args.quick])
  device = jax.devices()[0]
  machine = {
      "backend": jax.default_backend(), "device": device.device_kind,
      "cpu_count": os.cpu_count(), "platform": platform.platform(),
      "cpu_model": _cpu_model(), "jax": jax.__version__,
      "load_average_start": os.getloadavg(),
      "note": "2-core CPU shared with other processes: timings are noisy; implementations are "
              "interleaved round by round so that load hits them alike",
  }
  print(f"{machine['backend']} ({machine['device']}, {machine['cpu_count']} CPUs), jax "
        f"{jax.__version__}, load average {machine['load_average_start']}")
  print(HEADER)
  impls = {name: fn for name, fn in implementations(on_gpu).items()
           if not args.impls or any(name.startswith(prefix) for prefix in args.impls)}
  rows = [row for shape in shapes for row in run_shape(shape, impls, args.modes, args)]
  machine["load_average_end"] = os.getloadavg()
  report = {
      "machine": machine,
      "flops": "forward 4*B*N*T*S*H (halved when causal); forward+backward 3.5x forward",
      "memory": "temp_mib: compiled.memory_analysis().temp_size_in_bytes; peak_rss_mib: peak "
                "resident memory of a fresh process while it runs the case once, after compiling "
                "(VmHWM reset through /proc/self/clear_refs; rss_method says if ru_maxrss was "
                "used instead); rss_growth_mib: that peak minus the RSS just before the run",
      "timing": f"median of >= {args.runs} interleaved runs, more while the rounds take under 10 s "
                f"(at most 50), fewer if {args.budget_s} s run out, "
                "after one warm-up run, block_until_ready",
      "results": rows,
  }
  if args.out:
    write_json(args.out, report)


if __name__ == "__main__":
  main()
