"""What the API reference documents, without Sphinx: the listed modules and their public names.

Shared by the documentation build (docs/_ext/api_reference.py, docs/_ext/site_check.py) and the
test that runs every docstring example (tests/docs/test_docstring_examples.py), so the two agree
on what "public" means.
"""

import ast
import importlib
import inspect
import re
import types
from pathlib import Path

API_INDEX = "api/index.md"
# The one list of public names still without an ``Example:`` section (one dotted name a line;
# ``#`` starts a comment). A name listed here is exempt from the example checks; a public name
# missing from it without an example, or a listed name that has one, fails them.
MISSING_EXAMPLES = Path(__file__).resolve().parents[2] / "tests/docs/missing_examples_allowlist.txt"
_AUTOSUMMARY_ENTRY = re.compile(r"^\s{3,}(attn_jax[\w.]*)\s*$")


def api_modules(srcdir) -> list[str]:
  """The modules docs/api/index.md lists in its autosummary directive, in order."""
  lines = (Path(srcdir) / API_INDEX).read_text(encoding="utf-8").splitlines()
  return [m[1] for m in map(_AUTOSUMMARY_ENTRY.match, lines) if m]


def _defined_names(module: types.ModuleType) -> list[str]:
  """Top-level names a module's own source defines (def, class, assignment), in source order."""
  try:
    tree = ast.parse(inspect.getsource(module))
  except (OSError, TypeError):
    return []
  names = []
  for node in tree.body:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
      names.append(node.name)
    elif isinstance(node, ast.Assign):
      names += [t.id for t in node.targets if isinstance(t, ast.Name)]
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
      names.append(node.target.id)
  return names


def public_names(module: types.ModuleType) -> list[str]:
  """``__all__``, or the public functions, classes and constants the module defines.

  Assignments of a class or a module (``Array = jax.Array``) are local aliases, not API.
  """
  if hasattr(module, "__all__"):
    return list(module.__all__)
  names = []
  for name in _defined_names(module):
    if name.startswith("_") or name in names or not hasattr(module, name):
      continue
    value = getattr(module, name)
    if inspect.ismodule(value):
      continue
    defined_elsewhere = getattr(value, "__module__", None) != module.__name__
    if (inspect.isclass(value) or inspect.isfunction(value)) and defined_elsewhere:
      continue  # an alias of something defined elsewhere
    names.append(name)
  return names


def kind_of(value) -> str:
  if inspect.ismodule(value):
    return "module"
  if inspect.isclass(value):
    return "exception" if issubclass(value, BaseException) else "class"
  if inspect.isfunction(value) or inspect.isbuiltin(value):
    return "function"
  return "data"


def documented_objects(srcdir) -> dict[str, object]:
  """Every listed module and every public function and class of them, by the full name of its
  home (``attn_jax.core.attention.attend`` for ``attn_jax.core.attend``), each once."""
  found = {}
  for modname in api_modules(srcdir):
    module = importlib.import_module(modname)
    found.setdefault(modname, module)
    for name in public_names(module):
      value = getattr(module, name)
      if kind_of(value) in ("function", "class", "exception"):
        found.setdefault(f"{value.__module__}.{value.__qualname__}", value)
  return found


def missing_examples_allowlist() -> set[str]:
  """The names in tests/docs/missing_examples_allowlist.txt."""
  lines = MISSING_EXAMPLES.read_text(encoding="utf-8").splitlines()
  return {line.split("#")[0].strip() for line in lines} - {""}
