"""Every public module, function and class of the API reference has an example, and it runs.

The public names are those the API reference documents (docs/api/index.md's modules and their
``__all__``, by the rule in docs/_ext/public_api.py). Each docstring's ``>>>`` lines run as
doctests, with ``jax``, ``jnp`` (``jax.numpy``), ``np`` (numpy), ``nnx`` and ``attn_jax``
already imported. A public name without an example fails, unless it is listed in the one
allowlist of known gaps, tests/docs/missing_examples_allowlist.txt; a listed name that has an
example (or no longer exists) fails too, so the list only shrinks.
"""

import doctest
import inspect
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attn_jax

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
import public_api  # noqa: E402

OBJECTS = public_api.documented_objects(ROOT / "docs")
GLOBALS = {"jax": jax, "jnp": jnp, "np": np, "nnx": nnx, "attn_jax": attn_jax}
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _docstrings(name: str, obj) -> list[tuple[str, str]]:
  """(name, docstring) of the object and, for a class, of its own public methods."""
  found = [(name, inspect.getdoc(obj) or "")]
  if inspect.isclass(obj):
    for attr, value in vars(obj).items():
      if (attr == "__call__" or not attr.startswith("_")) and inspect.isfunction(value):
        found.append((f"{name}.{attr}", inspect.getdoc(value) or ""))
  return found


def _examples(name: str, obj) -> list[doctest.DocTest]:
  parser = doctest.DocTestParser()
  globs = {**vars(inspect.getmodule(obj) or attn_jax), **GLOBALS}
  tests = []
  for doc_name, doc in _docstrings(name, obj):
    test = parser.get_doctest(doc, dict(globs), doc_name, inspect.getsourcefile(obj), 0)
    if test.examples:
      tests.append(test)
  return tests


def test_every_public_name_has_an_example():
  allowed = public_api.missing_examples_allowlist()
  without = {name for name, obj in OBJECTS.items() if not _examples(name, obj)}
  new_gaps = sorted(without - allowed)
  assert not new_gaps, ("public names without an `Example:` section (add one with `>>>` lines):\n"
                        + "\n".join(new_gaps))
  stale = sorted(allowed - without)
  assert not stale, ("tests/docs/missing_examples_allowlist.txt lists names that have an example "
                     "or do not exist; remove them:\n" + "\n".join(stale))


@pytest.mark.parametrize("name", [n for n, o in OBJECTS.items() if _examples(n, o)])
def test_docstring_examples_run(name):
  runner = doctest.DocTestRunner(optionflags=FLAGS)
  for test in _examples(name, OBJECTS[name]):
    runner.run(test)
  result = runner.summarize(verbose=False)
  assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"
