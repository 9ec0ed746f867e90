"""The GPU check: one command that runs the GPU tests and the GPU rows of the benchmarks.

On a machine with an NVIDIA GPU (sized to finish in under 5 minutes on one H100 / H200):

  pip install -e ".[dev,cuda]" && python -m benchmarks.gpu_check \
      --out benchmarks/results/gpu_check.json

1. Tests that need the GPU (`tests/gpu/`: cuDNN against the reference over the grid the default
   sends to cuDNN, fully masked rows, garbage at padding, gradients) and the every-implementation
   promises (`tests/test_unseen_positions.py`, `tests/core/test_cudnn_rules.py`).
2. Attention, forward + backward, bfloat16 TFLOP/s at B8 L2048 N16 H64, B4 L4096 N16 H128 and
   B1 L16384 N16 H128 for attn_jax's default, "cudnn", "xla", "chunked" and jax.nn's cuDNN; float32
   B1 L16384 N16 H64 time and peak device memory (`benchmarks.attention`'s measurement).
3. Programmable attention rows (`benchmarks.mods`, forward + backward at the GPU sizes).
4. The Pallas kernel's rows (`benchmarks.pallas`): dense causal bf16 TFLOP/s against cuDNN and
   XLA, packed documents and ALiBi against XLA with the dense mask / bias, peak device memory;
   and its tests compiled for the device (`tests/core/test_pallas*.py`, `tests/gpu`).

Everything lands in one JSON file. ``--allow-cpu`` runs the same steps at toy sizes on a machine
without a GPU: a check of the script itself, not of the GPU.
"""

import argparse
import os
import subprocess
import sys
import time
import types

import jax

from benchmarks import attention, mods, pallas

GPU_TESTS = ["tests/gpu", "tests/test_unseen_positions.py", "tests/core/test_cudnn_rules.py",
             "tests/core/test_pallas.py", "tests/core/test_pallas_lowering.py"]


def run_tests(paths) -> dict:
  start = time.perf_counter()
  result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-rs", *paths], capture_output=True, text=True, check=False)
  lines = result.stdout.strip().splitlines()
  print("\n".join(lines[-15:]), flush=True)
  return {"paths": paths, "returncode": result.returncode, "summary": lines[-1] if lines else "",
          "tail": lines[-40:], "seconds": round(time.perf_counter() - start, 1)}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="benchmarks/results/gpu_check.json")
  parser.add_argument("--allow-cpu", action="store_true",
                      help="run without a GPU at toy sizes (checks the script, not the GPU)")
  parser.add_argument("--skip-tests", action="store_true")
  args = parser.parse_args(argv)
  on_gpu = jax.default_backend() == "gpu"
  if not on_gpu and not args.allow_cpu:
    raise SystemExit(f"no GPU here (backend {jax.default_backend()!r}); pass --allow-cpu to "
                     "check the script at toy sizes")
  started = time.perf_counter()
  device = jax.devices()[0]
  report = {"machine": {"backend": jax.default_backend(), "device": device.device_kind,
                        "jax": jax.__version__, "cpu_count": os.cpu_count()}}
  if not args.skip_tests:
    report["tests"] = run_tests(GPU_TESTS)

  bench = types.SimpleNamespace(runs=3, budget_s=20.0, rss=True)
  if on_gpu:
    shapes, impls = attention.GPU_SHAPES, attention.GPU_IMPLS
  else:
    shapes = [attention.Shape(2, 256, 4, 64, "bfloat16"),
              attention.Shape(1, 1024, 4, 64, memory=("attn_jax[chunked]",))]
    impls = ("attn_jax[None]", "attn_jax[xla]", "attn_jax[chunked]", "jax.nn[xla]")
  print(attention.HEADER)
  chosen = {name: fn for name, fn in attention.implementations(on_gpu).items()
            if any(name.startswith(prefix) for prefix in impls)}
  report["attention"] = [row for shape in shapes
                         for row in attention.run_shape(shape, chosen, ["fwd_bwd"], bench)]
  report["mods"] = mods.run(mods.GPU_CASES if on_gpu else mods.QUICK_CASES, bench)
  report["pallas"] = pallas.run(on_gpu, bench)
  report["total_s"] = round(time.perf_counter() - started, 1)
  attention.write_json(args.out, report)
  print(f"total {report['total_s']} s")
  if report.get("tests", {}).get("returncode", 0) != 0:
    raise SystemExit("some GPU tests failed (see the JSON's tests.tail)")


if __name__ == "__main__":
  main()
