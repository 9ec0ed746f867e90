"""The API reference's rules, as a small Sphinx extension.

- **Pages.** docs/api/index.md lists the documented modules in one autosummary directive; each gets
  a page from docs/_templates/autosummary/module.rst, which asks `api_members` what to show.
- **Every public name, documented once.** A module's public names are its ``__all__``, or else
  the functions, classes and constants it defines. A name is documented on the page of its home
  module when that module has a page, otherwise on the page of the module that exports it; other
  pages link to it. After reading, a public name without documentation, or a public submodule
  without a page, is a warning (an error under ``-W``).
- **Names in single backticks** (the docstrings' habit: `attend`, `nnx.Param`) are cross-references.
  A name Sphinx cannot find is looked up in Python, from the module whose docstring holds it: a
  documented object is linked under its documented name; an object outside the documentation
  (jax, flax, a private helper) is shown as code; a dotted name that exists nowhere
  (`attn_jax.core.atend`, `sharding.make_mash`) stays a "reference target not found" warning, so
  a renamed function breaks the build. A bare word that names nothing (`params`, `where`: an
  argument, a word set in code) is shown as code.
"""

import builtins
import functools
import importlib
import inspect
import re

from docutils import nodes
from docutils.parsers.rst.states import RSTStateMachine, state_classes
from public_api import API_INDEX, api_modules, kind_of, public_names
from sphinx.util import logging
from sphinx.util.docutils import NullReporter, new_document
from sphinx.util.inspect import stringify_signature
from sphinx.util.nodes import make_refnode

logger = logging.getLogger(__name__)

PACKAGE = "attn_jax"
KIND_ORDER = ("function", "class", "exception", "data", "module")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@functools.cache
def _members(modname: str, documented: tuple[str, ...]) -> tuple[dict, ...]:
  module = importlib.import_module(modname)
  members = []
  for name in public_names(module):
    value = getattr(module, name)
    kind = kind_of(value)
    target, here = f"{modname}.{name}", True
    if kind == "module":
      target, here = value.__name__, False
    else:
      home = _home_module(value, name, modname, documented)
      if home is not None:
        target, here = f"{home}.{name}", False
    # autosummary wants names under the page's module relative to it.
    rel = target[len(modname) + 1:] if target.startswith(modname + ".") else target
    members.append({"name": name, "kind": kind, "target": target, "rel": rel, "here": here,
                    "no_value": kind == "data" and _long_repr(value)})
  rank = {kind: i for i, kind in enumerate(KIND_ORDER)}
  members.sort(key=lambda m: (rank[m["kind"]], not m["here"]))
  return tuple(members)


def _home_module(value, name: str, modname: str, documented: tuple[str, ...]) -> str | None:
  """The other documented module that defines ``value`` as ``name``, if there is one."""
  for other in documented:
    if other == modname:
      continue
    module = importlib.import_module(other)
    if getattr(module, name, None) is value and name in public_names(module):
      home = getattr(value, "__module__", None)
      # A function or class lives where it is defined; a constant where its module defines it.
      if home == other or (kind_of(value) == "data" and not hasattr(module, "__all__")):
        return other
  # Defined in a module without a page (attn_jax.core.block_mask) and exported by several
  # pages (attn_jax, attn_jax.core): documented once, on the exporting page nearest to where it
  # is defined (the longest prefix of its module), and linked from the others.
  home = getattr(value, "__module__", None) or ""
  exporters = [m for m in documented
               if name in public_names(importlib.import_module(m))
               and getattr(importlib.import_module(m), name, None) is value
               and (home == m or home.startswith(m + "."))]
  if kind_of(value) != "data" and exporters:
    nearest = max(exporters, key=len)
    if nearest != modname:
      return nearest
  return None


def _long_repr(value) -> bool:
  text = repr(value)
  return len(text) > 80 or "<" in text


def on_config_inited(app, config):
  """Hands the page template what each module page shows: ``api_members[modname]`` is a list of
  dicts with the name, its kind, the full name it is documented under (``target``) and whether it
  is documented on this page (``here``) or linked."""
  modules = tuple(api_modules(app.srcdir))
  members = {modname: [dict(m) for m in _members(modname, modules)] for modname in modules}
  config.autosummary_context = {**config.autosummary_context, "api_members": members}


def skip_namedtuple_fields(app, what, name, obj, skip, options):
  """NamedTuple fields are listed in the class docstring; their own doc is just 'Alias for ...'."""
  if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
    return True
  return None


def constant_docstring(app, what, name, obj, options, lines):
  """A constant with no doc comment gets its type's docstring from autodoc ("dict() -> new empty
  dictionary"); say what it holds instead."""
  if what not in ("data", "attribute") or inspect.isclass(obj) or inspect.isroutine(obj):
    return
  type_doc = inspect.cleandoc(type(obj).__doc__ or "")
  if type_doc and "\n".join(lines).strip() == type_doc.strip():
    lines[:] = []
    if isinstance(obj, dict):
      lines.append("A dict with the keys " + ", ".join(f"``{k!r}``" for k in obj) + ".")


def _parse_rst(lines, settings) -> nodes.document:
  state_machine = RSTStateMachine(state_classes, "Body")
  document = new_document("", settings)
  document.reporter = NullReporter()
  state_machine.run(list(lines), document)
  return document


def _fixed_extract_summary(doc, settings):
  """`sphinx.ext.autosummary.extract_summary` with its first-sentence check fixed.

  Sphinx cuts the first stanza at each ". " and keeps the shortest prefix that parses without
  errors, but it parses the whole stanza each time instead of the prefix, so a period inside a
  literal (``q . k``) ends the summary mid-literal. Same algorithm, checking the prefix.
  ``settings`` is docutils' settings (Sphinx 9) or the document holding them (Sphinx 8).
  """
  from sphinx.ext import autosummary

  settings = getattr(settings, "settings", settings)
  stanza = []
  for line in doc:
    if not line or line.isspace():
      if stanza:
        break
      continue
    stanza.append(line)
  if not stanza:
    return ""
  node = _parse_rst(stanza, settings)
  if isinstance(node[0], nodes.section):
    return node[0].astext().strip()
  if not isinstance(node[0], nodes.paragraph):
    return stanza[0].strip()
  sentences = autosummary.periods_re.split(" ".join(stanza))
  summary = sentences[0].strip()
  for i in range(len(sentences)):
    summary = ". ".join(sentences[:i + 1]).rstrip(".") + "."
    if summary.endswith(autosummary.WELL_KNOWN_ABBREVIATIONS):
      continue
    if not any(_parse_rst([summary], settings).findall(nodes.system_message)):
      break
  return autosummary.literal_re.sub(".", summary)


def init_signature(app, what, name, obj, options, signature, return_annotation):
  """Flax NNX modules have a metaclass ``__call__(*args, **kwargs)``, which autodoc reports as the
  class signature; a reader needs the constructor's."""
  if what != "class" or signature != "(*args: Any, **kwargs: Any)":
    return None
  init = inspect.signature(obj.__init__)
  init = init.replace(parameters=list(init.parameters.values())[1:])  # drop self
  return stringify_signature(init, show_return_annotation=False), return_annotation


def drop_object_base(app, name, obj, options, bases):
  """"Bases: object" says nothing."""
  bases[:] = [base for base in bases if base is not object]


def check_coverage(app, env):
  """Every public name of every listed module documented; every public submodule has a page."""
  modules = api_modules(app.srcdir)
  objects = env.get_domain("py").objects
  for modname in modules:
    for member in _members(modname, tuple(modules)):
      if member["kind"] == "module":
        if member["target"] not in modules:
          logger.warning("API reference: %s.%s is a public module without a page; add %s to %s",
                         modname, member["name"], member["target"], API_INDEX)
      elif member["target"] not in objects:
        logger.warning("API reference: public name %s.%s is not documented (expected %s)",
                       modname, member["name"], member["target"])


# ----- names in single backticks -------------------------------------------------------------
_MISSING = object()


def _lookup(dotted: str, namespace: dict):
  first, *rest = dotted.split(".")
  value = namespace.get(first, _MISSING)
  if value is _MISSING:
    return _MISSING
  for part in rest:
    value = getattr(value, part, _MISSING)
    if value is _MISSING:
      return _MISSING
  return value


def _namespaces(node):
  """Where a backtick name is looked up: the documented object, its module and that module's
  packages, then the page's current module and its packages."""
  modules, owners = [], []
  source = node.source or ""
  match = re.search(r"docstring of ([\w.]+)", source)
  if match:
    dotted = match.group(1)
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
      try:
        owner = importlib.import_module(".".join(parts[:i]))
      except ImportError:
        continue
      obj = owner
      for part in parts[i:]:
        obj = getattr(obj, part, None)
      if obj is not None and obj is not owner:
        owners.append(obj)
      modules.append(owner.__name__)
      break
  if node.get("py:module"):
    modules.append(node["py:module"])
  spaces = []
  for owner in owners:
    spaces.append({k: getattr(owner, k) for k in dir(owner) if not k.startswith("__")})
  seen = set()
  for modname in modules:
    parts = modname.split(".")
    for i in range(len(parts), 0, -1):
      name = ".".join(parts[:i])
      if name not in seen:
        seen.add(name)
        module = importlib.import_module(name)
        spaces.append(vars(module))
  return spaces


@functools.cache
def _importable(name: str) -> bool:
  try:
    importlib.import_module(name)
  except ImportError:
    return False
  return True


def _resolve_python(target: str, node, srcdir):
  for namespace in _namespaces(node):
    value = _lookup(target, namespace)
    if value is not _MISSING:
      return value
  # Text outside any docstring (a module's summary line in an autosummary table): the name of
  # one public object of the documented modules.
  found = {id(v): v for v in (
      _lookup(target, vars(importlib.import_module(m))) for m in api_modules(srcdir))
      if v is not _MISSING}
  if len(found) == 1:
    return next(iter(found.values()))
  root = target.split(".")[0]
  try:
    module = importlib.import_module(root)
  except ImportError:
    return getattr(builtins, target, _MISSING)
  return _lookup(target, {root: module})


def _import_dotted(fullname: str):
  """The object at ``fullname`` (longest importable module prefix, then attributes)."""
  parts = fullname.split(".")
  for split in range(len(parts), 0, -1):
    try:
      value = importlib.import_module(".".join(parts[:split]))
    except ImportError:
      continue
    for part in parts[split:]:
      value = getattr(value, part, _MISSING)
    return value
  return _MISSING


def _documented_by_identity(app, env) -> dict[int, str]:
  """id(object) -> the full name it is documented under (first one wins); built once per run,
  after every page has been read (on the app: ids mean nothing in a pickled environment)."""
  cache = getattr(app, "_api_reference_identity", None)
  if cache is None:
    cache = {}
    for fullname, entry in env.get_domain("py").objects.items():
      value = _import_dotted(fullname) if entry.objtype != "module" else _MISSING
      # Small constants are shared objects (interned strings, small ints): never link by them.
      if value is not _MISSING and not isinstance(value, int | float | str | bytes | None):
        cache.setdefault(id(value), fullname)
    app._api_reference_identity = cache
  return cache


def resolve_backtick_name(app, env, node, contnode):
  if node.get("refdomain") != "py":
    return None
  reftype = node.get("reftype")
  if reftype in ("func", "meth", "attr", "data", "exc", "mod"):
    # An explicit role ({py:func}`attn_jax.create_block_mask`) naming a re-export of a name
    # documented under another module: linked by identity, like a backtick name. A name that
    # exists nowhere stays a warning.
    target = node.get("reftarget", "").removesuffix("()")
    if not target.startswith(PACKAGE + ".") or not _IDENTIFIER.match(target):
      return None
    value = _import_dotted(target)
    fullname = None if value is _MISSING else _documented_by_identity(app, env).get(id(value))
    if fullname is None:
      return None
    entry = env.get_domain("py").objects[fullname]
    return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode,
                        fullname)
  if reftype not in ("obj", "class"):
    return None
  target = node.get("reftarget", "")
  if target.endswith("()"):
    target = target[:-2]
  if not _IDENTIFIER.match(target):
    return contnode  # an expression in backticks (`train(program, seed)`): code, not a name
  root = target.split(".")[0]
  if node.get("reftype") == "class" and root != PACKAGE and _importable(root):
    # A type in a signature, spelled where Python defines it (jax.jaxlib._jax.Array): external.
    return contnode
  value = _resolve_python(target, node, app.srcdir)
  if value is _MISSING:
    # A dotted name that exists nowhere is a broken reference: Sphinx reports it. A bare word
    # (`params`, `where`) is an argument or a word set in code, not a claim about an object.
    return None if "." in target else contnode
  fullname = _documented_by_identity(app, env).get(id(value))
  if fullname is None and inspect.ismodule(value):
    fullname = value.__name__ if value.__name__ in env.get_domain("py").objects else None
  if fullname is None:
    return contnode  # real, but not part of these docs (jax, flax, a private helper)
  entry = env.get_domain("py").objects[fullname]
  return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode,
                      fullname)


def setup(app):
  from sphinx.ext import autosummary

  autosummary.extract_summary = _fixed_extract_summary
  app.connect("autodoc-process-docstring", constant_docstring)
  app.connect("autodoc-process-signature", init_signature)
  app.connect("autodoc-process-bases", drop_object_base)
  app.connect("config-inited", on_config_inited)
  app.connect("autodoc-skip-member", skip_namedtuple_fields)
  app.connect("env-check-consistency", check_coverage)
  # After Sphinx's own resolvers (priority 500), before the built-in-types fallback.
  app.connect("missing-reference", resolve_backtick_name, priority=600)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
