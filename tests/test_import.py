"""`import attn_jax` stays light: no experiment-side dependency is imported by the library.

Checked in fresh interpreters, since this test process has long since imported everything.
"""

import json
import subprocess
import sys

import pytest

# Belong to experiments/ and attn_jax.training; the library must not pull them in.
EXPERIMENT_SIDE = ("absl", "ml_collections", "matplotlib", "orbax", "tqdm")


def _loaded_after(*statements: str) -> list[list[str]]:
  """For each statement in turn, in one fresh process: the EXPERIMENT_SIDE modules loaded so far."""
  snapshot = (f"print(json.dumps(sorted(m for m in sys.modules "
              f"if m.split('.')[0] in {EXPERIMENT_SIDE})))")
  code = "\n".join(["import json, sys", *(f"{s}\n{snapshot}" for s in statements)])
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=120)
  assert result.returncode == 0, result.stderr
  return [json.loads(line) for line in result.stdout.strip().splitlines()[-len(statements):]]


@pytest.fixture(scope="module")
def loaded() -> dict[str, list[str]]:
  (baseline,) = _loaded_after("import jax, numpy, flax.nnx, optax, chex")
  after_core, after_nn = _loaded_after("import attn_jax", "import attn_jax.nn")
  return {"baseline": baseline, "attn_jax": after_core, "attn_jax.nn": after_nn}


@pytest.mark.parametrize("module", ["attn_jax", "attn_jax.nn"])
def test_library_imports_no_experiment_side_module(module, loaded):
  modules = loaded[module]
  assert [m for m in modules if m.split(".")[0] != "absl"] == [], modules  # not even via deps
  # flax.nnx (through flax.linen), chex and optax import absl.logging / absl.testing themselves;
  # they are declared dependencies, so only absl modules beyond theirs count against attn_jax.
  assert set(modules) <= set(loaded["baseline"]), sorted(set(modules) - set(loaded["baseline"]))


def test_tasks_reachable_from_the_package_and_training_stays_lazy():
  code = ("import sys, jax, attn_jax\n"
          "batch = attn_jax.tasks.copy_memory(jax.random.key(0), batch_size=2, delay=5)\n"
          "assert batch.inputs.shape == (2, 25), batch.inputs.shape\n"
          "batch = attn_jax.tasks.mqar(jax.random.key(0), batch_size=2, seq_len=16, num_pairs=2,"
          " vocab_size=16)\n"
          "assert batch.inputs.shape == (2, 16), batch.inputs.shape\n"
          "assert 'attn_jax.training' not in sys.modules\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=120)
  assert result.returncode == 0, result.stderr
