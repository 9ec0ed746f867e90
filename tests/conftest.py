"""Shared fixtures: PRNG keys, random query/key/value, a float64 scope."""

import importlib.metadata
import importlib.util
import math
import os


def _fast_cpu_compile_flags() -> None:
  """Make XLA compile faster on CPU; the suite's cost is compiling many small programs.

  - ``--xla_backend_optimization_level=0``: LLVM's optimisation passes dominate compile time and
    buy nothing at test sizes. IEEE semantics are unchanged (XLA's CPU backend is not fast-math).
  - ``--xla_cpu_use_fusion_emitters=false``: the older elemental emitters compile small fusions
    about twice as fast. XLA aborts on a flag it does not know, so this one is only set for the
    jaxlib minor versions it was checked with; extend the tuple after checking a new one.

  Skipped when a GPU plugin is installed (the flags would slow GPU kernels) or when XLA_FLAGS
  already mentions them. Must run before the first computation initialises the backend.
  """
  if any(importlib.util.find_spec(p) for p in ("jax_cuda12_plugin", "jax_cuda13_plugin",
                                                "jax_rocm60_plugin", "libtpu")):
    return
  flags = os.environ.get("XLA_FLAGS", "")
  extra = ["--xla_backend_optimization_level=0"]
  jaxlib_minor = tuple(int(x) for x in importlib.metadata.version("jaxlib").split(".")[:2])
  if jaxlib_minor in ((0, 10),):
    extra.append("--xla_cpu_use_fusion_emitters=false")
  extra = [f for f in extra if f.split("=")[0] not in flags]
  os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


_fast_cpu_compile_flags()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def random_qkv(
    batch: int | None = 2,
    q_len: int = 3,
    kv_len: int = 5,
    num_heads: int = 2,
    num_kv_heads: int | None = None,
    head_dim: int = 4,
    dtype=jnp.float32,
    seed: int = 0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Standard-normal query [B, T, N, H] and key/value [B, S, K, H] in ``dtype``.

  ``batch=None`` gives the unbatched layout [T, N, H] / [S, K, H]; ``num_kv_heads`` defaults to
  ``num_heads``. Drawn with numpy (cheaper than eager jax.random on CPU), then cast.
  """
  num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
  lead = () if batch is None else (batch,)
  rng = np.random.default_rng(seed)
  query = rng.standard_normal((*lead, q_len, num_heads, head_dim))
  key = rng.standard_normal((*lead, kv_len, num_kv_heads, head_dim))
  value = rng.standard_normal((*lead, kv_len, num_kv_heads, head_dim))
  return tuple(jnp.asarray(x, dtype) for x in (query, key, value))


@pytest.fixture
def prng_key() -> jax.Array:
  return jax.random.key(0)


@pytest.fixture
def rng() -> np.random.Generator:
  return np.random.default_rng(0)


@pytest.fixture
def make_qkv():
  """The `random_qkv` maker: ``make_qkv(batch=2, q_len=3, kv_len=5, num_heads=2, ...)``."""
  return random_qkv


@pytest.fixture
def x64():
  """Run the test body with 64-bit types enabled (for `check_grads`), restoring the flag after."""
  with jax.enable_x64(True):
    yield


def _t5_bucket(relative_position, bidirectional, num_buckets, max_distance):
  """Hugging Face T5 `_relative_position_bucket` for one int, float32 like torch."""
  bucket = 0
  if bidirectional:
    num_buckets //= 2
    bucket += num_buckets if relative_position > 0 else 0
    n = abs(relative_position)
  else:
    n = -min(relative_position, 0)
  max_exact = num_buckets // 2
  if n < max_exact:
    return bucket + n
  log_ratio = np.log(np.float32(n) / np.float32(max_exact)) / np.float32(
      math.log(max_distance / max_exact))
  large = max_exact + int(log_ratio * np.float32(num_buckets - max_exact))
  return bucket + min(large, num_buckets - 1)


@pytest.fixture
def hf_t5_bucket():
  """Hugging Face T5's bucket formula for one int: an independent check of the positional code."""
  return _t5_bucket
