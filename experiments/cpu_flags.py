"""Faster XLA compilation on CPU for the experiment entry points.

A sweep compiles some 70 small programs (init, train step and evaluation of every run); on a
2-core CPU that compilation is a large share of the wall time. Measured on this project's 2-core
AMD EPYC (jaxlib 0.10, CPU seconds; docs/experiments.md has the table):

- ``--xla_backend_optimization_level=1`` (default 2, LLVM's -O2): about half the compile time of
  a train step, no measurable change in step time.
- ``--xla_cpu_use_fusion_emitters=false``: the older elemental emitters compile small fusions
  faster again (about 40% less on top of the above), same step time. XLA aborts on a flag it
  does not know, so it is only set for the jaxlib minor versions it was checked with.

Level 0 would compile faster still but runs some train steps 3x slower, so it is left to the
test suite (tests/conftest.py), whose programs run for a few steps only.
"""

import importlib.metadata
import importlib.util
import os

_CHECKED_JAXLIB_MINORS = ((0, 10),)
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "libtpu")


def use_fast_cpu_compile() -> list[str]:
  """Adds the flags above to ``XLA_FLAGS`` and returns the ones added.

  No-op where an accelerator plugin is installed (the flags would slow GPU/TPU kernels' host
  code for no gain) and for flags ``XLA_FLAGS`` already sets. Takes effect only if called before
  the first computation initialises the backend; child processes inherit it.
  """
  if any(importlib.util.find_spec(p) for p in _ACCELERATOR_PLUGINS):
    return []
  flags = os.environ.get("XLA_FLAGS", "")
  extra = ["--xla_backend_optimization_level=1"]
  jaxlib_minor = tuple(int(x) for x in importlib.metadata.version("jaxlib").split(".")[:2])
  if jaxlib_minor in _CHECKED_JAXLIB_MINORS:
    extra.append("--xla_cpu_use_fusion_emitters=false")
  extra = [f for f in extra if f.split("=")[0] not in flags]
  if extra:
    os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()
  return extra
